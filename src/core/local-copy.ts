// The local copy: uploaded blocks kept on local disk within a byte budget,
// because a pending snapshot cannot be read through the EBS API. Reads of a
// block no longer in memory, and partial writes that need its other bytes,
// find it here; a block kept nowhere cannot be read (block-store.ts).
//
// One file of 512 KiB slots. Which blocks stay (docs/SEMANTICS.md, "The local copy"):
// - three classes, each in least-recently-used order, kept in this order of
//   preference: `rewritten` (written in pieces again after an upload: file-system
//   metadata such as superblocks, bitmaps, inode tables and directories, the
//   blocks most likely to be read or partly rewritten once more), `pieces`
//   (written in small or scattered writes once) and `whole` (written whole as
//   part of a stream of large in-order writes: file data, an image being copied);
// - a new copy takes a free slot, else the slot of the least recently used copy
//   of the least preferred class that is not preferred over its own;
// - a slot being written, or whose block is being uploaded, is never taken.
// The budget is fixed (--disk-cache-size) or `auto`: the file grows only while
// its file system keeps the reserve free, so a copy never fills the disk. A
// copy that cannot be written (ENOSPC, EIO) is dropped: the upload goes on.
//
// Copies are written with O_DIRECT where the file system takes it: through the
// page cache each copy cost the mount more kernel time than the rest of its
// block's path. The block cache's buffers are page-aligned and go to disk as
// they are, copies for consecutive slots in one write; any other buffer goes
// through a few aligned staging buffers (staging-buffers.ts), allocated at the
// first such copy.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { sha256Digest } from '../ebs/checksum';
import { writeFully, writevFully } from '../durable-file';
import { BLOCK_SIZE_BYTES } from '../ebs/client';
import { isPageAligned, openDirect, StagingBuffers } from '../staging-buffers';
import { ConsecutiveWrites } from './consecutive-writes';

export type CopyKind = 'whole' | 'pieces' | 'rewritten';

/** The classes a copy of each kind may displace, least preferred first. */
const DISPLACEABLE: Record<CopyKind, CopyKind[]> = {
  whole: ['whole'],
  pieces: ['whole', 'pieces'],
  rewritten: ['whole', 'pieces', 'rewritten'],
};

/** `auto`: free space in the directory's file system less the reserve (autoReserveBytes). */
export type DiskBudget = number | 'auto';

/** The reserve `auto` leaves free: a tenth of the file system, at least this. */
const AUTO_RESERVE_MIN_BYTES = 64 * 1024 * 1024;
const AUTO_RESERVE_RATIO = 0.1;
/** How long a free-space figure is trusted before statfs is asked again. */
const STATFS_TRUSTED_MS = 1000;
const FILE_NAME = 'local-copy.img';
/**
 * Copy writes that take this long on average mean the disk is behind (the page
 * cache throttling its writers): a write to the page cache takes well under a
 * millisecond, and a loaded event loop or thread pool adds tens, not hundreds.
 */
const SLOW_WRITE_AVERAGE_MS = 500;
/** Weight of the newest write in that average. */
const WRITE_TIME_WEIGHT = 0.2;
/** How copies reach the file: past the page cache where the file system allows, else through it. */
export type CopyWriteMode = 'direct' | 'buffered';

/**
 * Copy writes from page-aligned buffers in flight at once; copies that come
 * meanwhile go out together (consecutive-writes.ts). With one, a dd of 1 GiB
 * through the mount sent its 2048 copies in about 1000 writes, with two in about
 * 1450. A write per copy, many at once, contended for the file's inode lock,
 * which ext4 takes exclusively for a write that extends the file (docs/BENCHMARKS.md).
 */
const DIRECT_WRITES_IN_FLIGHT_MAX = 1;
/** The most slots one such write covers: 8 MiB. */
const DIRECT_WRITE_SLOTS_MAX = 16;

interface DirectFile {
  handle: fs.FileHandle;
  /** Copies from page-aligned buffers: consecutive slots are written together. */
  consecutive: ConsecutiveWrites;
  /** For copies of buffers that are not page-aligned; undefined until the first, null where none can be had. */
  staging?: StagingBuffers | null;
  /** A write was refused for its alignment (EINVAL): copies go through the page cache from then on. */
  refused: boolean;
}

interface Entry {
  slot: number;
  digest: Buffer;
  kind: CopyKind;
  /** Written by this process, or read back and hashed since the state was opened. */
  verified: boolean;
}

/** The reserve `auto` keeps free on a file system of `fileSystemBytes`. */
export function autoReserveBytes(fileSystemBytes: number): number {
  return Math.max(AUTO_RESERVE_MIN_BYTES, Math.floor(fileSystemBytes * AUTO_RESERVE_RATIO));
}

export class LocalCopy {
  private readonly byBlock = new Map<number, Entry>();
  /** Per class, block indexes from least to most recently used (Map order). */
  private readonly lru: Record<CopyKind, Map<number, Entry>> = { whole: new Map(), pieces: new Map(), rewritten: new Map() };
  private readonly freeSlots = new Set<number>();
  /** Slots handed out by allocate() and not yet committed or released. */
  private readonly reservedSlots = new Set<number>();
  /**
   * Slots of copies superseded by newer content whose ack may not be durable
   * yet: until it is, a crash leaves the old ack in the journal, and its copy
   * must still be there to settle the block (block-store.ts). Freed by reuseRetired().
   */
  private retiredSlots: number[] = [];
  /** Slots the file extends over; it never shrinks while the state lives. */
  private slotCount: number;
  private writesInFlightCount = 0;
  private averageWriteMs = 0;
  private unsynced = false;
  private freeSpace?: { bytes: number; reserveBytes: number; atMs: number };
  /** The statfs in progress: allocations waiting for a fresh figure share it. */
  private freeSpaceRefresh?: Promise<void>;
  private handle?: Promise<fs.FileHandle>;
  /** Resolves to undefined where O_DIRECT cannot be had. */
  private direct?: Promise<DirectFile | undefined>;
  /** Bytes written to the file since open, for the benchmarks. */
  bytesWritten = 0;
  /** Writes to the file since open: fewer than the copies where consecutive ones went together. */
  diskWriteCount = 0;
  /** Copies written past the page cache. */
  directWriteCount = 0;
  /** Of those, copies that went through a staging buffer (their buffer was not page-aligned). */
  stagedWriteCount = 0;

  constructor(
    private readonly directory: string,
    private readonly budget: DiskBudget,
    /** Slots the state already uses (replayed from the journal). */
    existingSlotCount: number,
    /**
     * directAtOnce: copy writes through a staging buffer at once (limits.ts:
     * directCopyWritesAtOnce); more wait their turn. Copies from page-aligned
     * buffers need none (DIRECT_WRITES_IN_FLIGHT_MAX).
     */
    private readonly writes: { mode: CopyWriteMode; directAtOnce: number },
  ) {
    this.slotCount = existingSlotCount;
    for (let slot = 0; slot < existingSlotCount; slot += 1) this.freeSlots.add(slot);
  }

  static fileIn(directory: string): string {
    return path.join(directory, FILE_NAME);
  }

  /** False when the budget allows no copy at all. */
  get enabled(): boolean {
    return this.budget === 'auto' || this.budget >= BLOCK_SIZE_BYTES;
  }

  get blocksHeld(): number {
    return this.byBlock.size;
  }

  /** Bytes the file takes on disk at most (every slot ever used). */
  get fileBytes(): number {
    return this.slotCount * BLOCK_SIZE_BYTES;
  }

  /** True while copy writes take over SLOW_WRITE_AVERAGE_MS on average and more are waiting. */
  get isBehind(): boolean {
    return this.averageWriteMs > SLOW_WRITE_AVERAGE_MS && this.writesInFlightCount > 0;
  }

  holds(blockIndex: number): boolean {
    return this.byBlock.has(blockIndex);
  }

  heldDigest(blockIndex: number): Buffer | undefined {
    return this.byBlock.get(blockIndex)?.digest;
  }

  /** Slot of the held copy, for the journal. */
  heldSlot(blockIndex: number): number | undefined {
    return this.byBlock.get(blockIndex)?.slot;
  }

  /** Takes a replayed slot as the block's copy, to be verified on first read; false when the slot is taken. */
  adopt(blockIndex: number, slot: number, digest: Buffer): boolean {
    if (!this.freeSlots.delete(slot)) return false;
    this.retire(blockIndex);
    this.insert(blockIndex, { slot, digest, kind: 'pieces', verified: false });
    return true;
  }

  /**
   * A slot for a new copy of `kind`, by the policy at the top of this file, or
   * undefined when none may be had. `isBusy(block)` protects blocks being uploaded.
   */
  async allocate(kind: CopyKind, isBusy: (blockIndex: number) => boolean): Promise<number | undefined> {
    if (!this.enabled) return undefined;
    let slot: number | undefined = this.freeSlots.values().next().value;
    if (slot !== undefined) this.freeSlots.delete(slot);
    if (slot === undefined && (await this.mayGrow())) slot = this.slotCount++;
    if (slot === undefined) {
      for (const victimKind of DISPLACEABLE[kind]) {
        for (const [blockIndex, entry] of this.lru[victimKind]) {
          if (isBusy(blockIndex)) continue;
          this.remove(blockIndex);
          slot = entry.slot;
          break;
        }
        if (slot !== undefined) break;
      }
    }
    if (slot !== undefined) this.reservedSlots.add(slot);
    return slot;
  }

  /** Writes a block into a slot from allocate(); false (the slot freed) when the disk refused. */
  async write(slot: number, data: Buffer): Promise<boolean> {
    this.writesInFlightCount += 1;
    const startedMs = Date.now();
    try {
      if (!(await this.writeDirect(slot, data))) {
        this.diskWriteCount += 1;
        await writeFully(await this.open(), data, slot * BLOCK_SIZE_BYTES);
      }
      this.bytesWritten += data.length;
      this.unsynced = true;
      this.averageWriteMs += WRITE_TIME_WEIGHT * (Date.now() - startedMs - this.averageWriteMs);
      return true;
    } catch {
      this.release(slot);
      return false;
    } finally {
      this.writesInFlightCount -= 1;
    }
  }

  /** False when the copy must go through the page cache instead. */
  private async writeDirect(slot: number, data: Buffer): Promise<boolean> {
    const direct = data.length === BLOCK_SIZE_BYTES ? await this.directFile() : undefined;
    if (!direct || direct.refused) return false;
    let staging: StagingBuffers | undefined;
    if (!isPageAligned(data)) {
      if (direct.staging === undefined) direct.staging = StagingBuffers.allocate(this.writes.directAtOnce, BLOCK_SIZE_BYTES) ?? null;
      if (direct.staging === null) return false;
      staging = direct.staging;
    }
    const positionBytes = slot * BLOCK_SIZE_BYTES;
    try {
      if (staging) {
        this.diskWriteCount += 1;
        await staging.withCopyOf(data, (aligned) => writeFully(direct.handle, aligned, positionBytes));
      } else await direct.consecutive.write(slot, data);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EINVAL') throw error;
      direct.refused = true;
      return false;
    }
    this.directWriteCount += 1;
    if (staging) this.stagedWriteCount += 1;
    return true;
  }

  /** The written slot becomes the block's copy; the copy it replaces is retired. */
  commit(blockIndex: number, slot: number, digest: Buffer, kind: CopyKind): void {
    if (!this.reservedSlots.delete(slot)) throw new Error(`commit of slot ${slot}, which was not allocated`);
    this.retire(blockIndex);
    this.insert(blockIndex, { slot, digest, kind, verified: true });
  }

  /** The block's content changed without a new copy: its copy no longer holds it, but stays until reuseRetired(). */
  retire(blockIndex: number): void {
    const entry = this.remove(blockIndex);
    if (entry) this.retiredSlots.push(entry.slot);
  }

  /** Slots retired so far; after the acks that retired them are durable, give them to reuseRetired(). */
  takeRetired(): number[] {
    const slots = this.retiredSlots;
    this.retiredSlots = [];
    return slots;
  }

  reuseRetired(slots: number[]): void {
    for (const slot of slots) this.freeSlots.add(slot);
  }

  /** Gives back slots from takeRetired() whose acks did not become durable. */
  keepRetired(slots: number[]): void {
    this.retiredSlots.push(...slots);
  }

  /** Gives back a slot from allocate() that holds nothing of use. */
  release(slot: number): void {
    if (this.reservedSlots.delete(slot)) this.freeSlots.add(slot);
  }

  /** Forgets a copy that does not hold what it should (it failed its hash). */
  private drop(blockIndex: number): void {
    const entry = this.remove(blockIndex);
    if (entry) this.freeSlots.add(entry.slot);
  }

  /**
   * Bytes of the held copy, or undefined when it holds none. A copy not written
   * by this process is hashed against its digest first; one that does not match
   * (torn by a crash, or its slot reused) is dropped, never returned.
   */
  async readRange(blockIndex: number, inBlock: number, count: number): Promise<Buffer | undefined> {
    const entry = this.byBlock.get(blockIndex);
    if (!entry) return undefined;
    const handle = await this.open();
    if (!entry.verified) {
      const whole = await readAt(handle, entry.slot * BLOCK_SIZE_BYTES, BLOCK_SIZE_BYTES);
      if (this.byBlock.get(blockIndex) !== entry) return this.readRange(blockIndex, inBlock, count);
      if (!sha256Digest(whole).equals(entry.digest)) {
        this.drop(blockIndex);
        return undefined;
      }
      entry.verified = true;
      this.touch(blockIndex, entry);
      return inBlock === 0 && count === BLOCK_SIZE_BYTES ? whole : Buffer.from(whole.subarray(inBlock, inBlock + count));
    }
    const bytes = await readAt(handle, entry.slot * BLOCK_SIZE_BYTES + inBlock, count);
    // Taken for another block while the read ran: what was read may be that block's.
    if (this.byBlock.get(blockIndex) !== entry) return this.readRange(blockIndex, inBlock, count);
    this.touch(blockIndex, entry);
    return bytes;
  }

  /** Makes every copy written so far durable (before the journal vouches for them). */
  async sync(): Promise<void> {
    if (!this.unsynced || !this.handle) return;
    this.unsynced = false;
    try {
      // One inode behind both descriptors: this also flushes the O_DIRECT writes
      // out of the device's cache and makes the blocks they allocated durable.
      await (await this.handle).datasync();
    } catch (error) {
      this.unsynced = true;
      throw error;
    }
  }

  async close(): Promise<void> {
    const direct = this.direct;
    this.direct = undefined;
    const directFile = await direct?.catch(() => undefined);
    if (directFile) await directFile.handle.close();
    const handle = this.handle;
    this.handle = undefined;
    if (handle) await (await handle).close();
  }

  private insert(blockIndex: number, entry: Entry): void {
    this.byBlock.set(blockIndex, entry);
    this.lru[entry.kind].set(blockIndex, entry);
  }

  private remove(blockIndex: number): Entry | undefined {
    const entry = this.byBlock.get(blockIndex);
    if (!entry) return undefined;
    this.byBlock.delete(blockIndex);
    this.lru[entry.kind].delete(blockIndex);
    return entry;
  }

  private touch(blockIndex: number, entry: Entry): void {
    const order = this.lru[entry.kind];
    order.delete(blockIndex);
    order.set(blockIndex, entry);
  }

  private async mayGrow(): Promise<boolean> {
    if (this.budget !== 'auto') return (this.slotCount + 1) * BLOCK_SIZE_BYTES <= this.budget;
    if (!this.freeSpace || Date.now() - this.freeSpace.atMs > STATFS_TRUSTED_MS) {
      // One statfs for all who ask meanwhile: each taking its own would replace the
      // figure that the others' growth was already counted against.
      this.freeSpaceRefresh ??= this.refreshFreeSpace().finally(() => {
        this.freeSpaceRefresh = undefined;
      });
      await this.freeSpaceRefresh;
    }
    if (!this.freeSpace || this.freeSpace.bytes - BLOCK_SIZE_BYTES < this.freeSpace.reserveBytes) return false;
    // Until statfs is asked again, count our own growth against the figure.
    this.freeSpace.bytes -= BLOCK_SIZE_BYTES;
    return true;
  }

  /** Leaves freeSpace unset when statfs fails: then nothing grows. */
  private async refreshFreeSpace(): Promise<void> {
    const nowMs = Date.now();
    try {
      // Slots grown into but not yet written take no space in statfs's figure yet; with
      // many writes in flight that would let the file overshoot the reserve by as many blocks.
      // The file's size on disk is read first and the slots grown last: a write or a
      // slot landing between the calls then counts twice (a little less room), never
      // not at all (an overshoot).
      const allocatedBytes = this.handle ? (await (await this.handle).stat()).blocks * 512 : 0;
      const stats = await fs.statfs(this.directory);
      const unwrittenBytes = Math.max(0, this.slotCount * BLOCK_SIZE_BYTES - allocatedBytes);
      this.freeSpace = {
        bytes: stats.bavail * stats.bsize - unwrittenBytes,
        reserveBytes: autoReserveBytes(stats.blocks * stats.bsize),
        atMs: nowMs,
      };
    } catch {
      this.freeSpace = undefined;
    }
  }

  private directFile(): Promise<DirectFile | undefined> {
    if (!this.direct) {
      const opening = this.openDirect();
      // A failed open is tried again by the next write; a file system without O_DIRECT is not.
      opening.catch(() => {
        if (this.direct === opening) this.direct = undefined;
      });
      this.direct = opening;
    }
    return this.direct;
  }

  private async openDirect(): Promise<DirectFile | undefined> {
    if (this.writes.mode !== 'direct') return undefined;
    // The buffered handle first: it creates the file, and stat and sync use it.
    await this.open();
    const handle = await openDirect((flags) => fs.open(LocalCopy.fileIn(this.directory), flags));
    if (!handle) return undefined;
    const consecutive = new ConsecutiveWrites(
      (buffers, positionBytes) => {
        this.diskWriteCount += 1;
        return writevFully(handle, buffers, positionBytes);
      },
      BLOCK_SIZE_BYTES,
      DIRECT_WRITES_IN_FLIGHT_MAX,
      DIRECT_WRITE_SLOTS_MAX,
    );
    return { handle, consecutive, refused: false };
  }

  private open(): Promise<fs.FileHandle> {
    if (!this.handle) {
      const handle = fs.open(LocalCopy.fileIn(this.directory), fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
      // A failed open must not stay cached as a rejected promise.
      handle.catch(() => {
        if (this.handle === handle) this.handle = undefined;
      });
      this.handle = handle;
    }
    return this.handle;
  }
}

async function readAt(handle: fs.FileHandle, positionBytes: number, length: number): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  let read = 0;
  while (read < length) {
    const { bytesRead } = await handle.read(buffer, read, length - read, positionBytes + read);
    // Past the end of the sparse file: the rest reads as zeros.
    if (bytesRead === 0) break;
    read += bytesRead;
  }
  return buffer;
}
