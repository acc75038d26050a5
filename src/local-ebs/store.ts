// The durable store behind local-ebs. Layout under the data directory:
//
//   store.json                     {"format":"local-ebs-store","version":2}
//   snapshots/<snap-id>/meta.json  snapshot metadata, replaced atomically
//   snapshots/<snap-id>/blocks.dat block data: slot s at byte offset s × 524288
//   snapshots/<snap-id>/blocks.log append-only (index, slot, digest) records, see block-log.ts
//
// A PUT takes a free slot, writes the block there, then joins a group commit: one
// fdatasync of blocks.dat, then the records appended to blocks.log and one fdatasync
// of it, for every PUT to that snapshot that arrived while the previous commit ran.
// Only then is the block visible and the 201 sent. After a crash the log replays up
// to its first torn record; data written to slots no replayed record names is just
// free space. A slot that an overwrite frees is reused only after the overwriting
// record is durable, so no record that a replay can reach ever names reused data.
// Storage grows with the distinct blocks written, never with VolumeSize; a child
// snapshot shares its parent's blocks by reading them from the parent.
import { close, fdatasync, ftruncate, open, read, write, promises as fsp } from 'node:fs';
import { promisify } from 'node:util';
import path from 'node:path';
import { BLOCK_SIZE_BYTES, type SnapshotStatus } from '../ebs/client';
import { encodeRecords, replayLog, type BlockRecord } from './block-log';
import { fsyncDirectory, makeDirectories, writeFileAtomic } from '../durable-file';
import { SNAPSHOT_ID_PATTERN, type Tag } from './validation';
import { openDirect, StagingBuffers } from '../staging-buffers';

// The callback API on plain descriptors: FileHandle objects cost the event loop
// measurably more per block at hundreds of PUTs per second.
const fsOpen = promisify(open);
const fsWrite = promisify(write);
const fsRead = promisify(read);
const fsFdatasync = promisify(fdatasync);
const fsFtruncate = promisify(ftruncate);
const fsClose = promisify(close);

const STORE_FORMAT = 'local-ebs-store';
const STORE_VERSION = 2;
/** A bound on one group commit, so one slow fdatasync never holds an unbounded batch. */
const RECORDS_PER_COMMIT_MAX = 4096;
/** Snapshots whose blocks are written past the page cache at the same moment (each writes one at a time). */
const DIRECT_WRITES_AT_ONCE = 2;

export interface SnapshotMeta {
  snapshotId: string;
  ownerId: string;
  volumeSizeGiB: number;
  parentSnapshotId?: string;
  description?: string;
  tags?: Tag[];
  encrypted: boolean;
  kmsKeyArn?: string;
  timeoutMinutes: number;
  clientToken?: string;
  /** The StartSnapshot parameters in a canonical form, to tell a ClientToken retry from a conflict. */
  requestFingerprint?: string;
  startTimeMs: number;
  status: SnapshotStatus;
  statusMessage?: string;
  /** Set at completion: what CompleteSnapshot was checked against. */
  changedBlocksCount?: number;
  linearChecksumBase64?: string;
}

export class StoredSnapshot {
  /** Latest digest per block index written to this snapshot (not inherited ones). */
  readonly ownBlocks = new Map<number, Buffer>();
  /** Where each of ownBlocks lives in blocks.dat. */
  readonly slots = new Map<number, number>();
  /** Slots below nextSlot that hold no live block. */
  readonly freeSlots: number[] = [];
  nextSlot = 0;
  dataFd: number | undefined;
  /** blocks.dat with O_DIRECT; null where the file system refused it. */
  directFd: number | null | undefined;
  private dataFdOpening: Promise<number> | undefined;
  private dataWrites: Promise<void> = Promise.resolve();
  logFd: number | undefined;
  logBytes = 0;

  constructor(
    public meta: SnapshotMeta,
    readonly directory: string,
  ) {}

  get id(): string {
    return this.meta.snapshotId;
  }

  get logFile(): string {
    return path.join(this.directory, 'blocks.log');
  }

  get dataFile(): string {
    return path.join(this.directory, 'blocks.dat');
  }

  /**
   * Writes one block's data at its slot, one write to blocks.dat at a time, past
   * the page cache where the file system allows (O_DIRECT, through `staging`).
   * Buffered, the copy into fresh page-cache pages was 25-40 % of local-ebs's
   * CPU, and pool threads queued on the file's inode lock spun
   * (rwsem_spin_on_owner, a tenth); the group commit's fdatasync still makes
   * the data durable either way (docs/BENCHMARKS.md).
   */
  writeData(slot: number, data: Buffer, staging: StagingBuffers | undefined): Promise<void> {
    const written = this.dataWrites.then(async () => {
      const position = slot * BLOCK_SIZE_BYTES;
      const direct = staging && (await this.directDataFd());
      if (staging && direct !== undefined) {
        await staging.withCopyOf(data, (aligned) => fsWrite(direct, aligned, 0, aligned.length, position));
      } else {
        await fsWrite(await this.writableDataFd(), data, 0, data.length, position);
      }
    });
    this.dataWrites = written.catch(() => undefined);
    return written;
  }

  /** blocks.dat opened with O_DIRECT, or undefined where the file system refuses it. */
  private async directDataFd(): Promise<number | undefined> {
    if (this.directFd === undefined) {
      // The buffered descriptor too: the group commit's fdatasync goes through it.
      await this.writableDataFd();
      this.directFd = (await openDirect((flags) => fsOpen(this.dataFile, flags))) ?? null;
    }
    return this.directFd ?? undefined;
  }

  takeSlot(): number {
    return this.freeSlots.pop() ?? this.nextSlot++;
  }

  /** One descriptor for writing blocks.dat, however many PUTs ask at once. */
  async writableDataFd(): Promise<number> {
    if (this.dataFd !== undefined) return this.dataFd;
    this.dataFdOpening ??= fsOpen(this.dataFile, 'r+')
      .then((fd) => {
        this.dataFd = fd;
        return fd;
      })
      .finally(() => (this.dataFdOpening = undefined));
    return this.dataFdOpening;
  }
}

interface QueuedRecord {
  snapshot: StoredSnapshot;
  record: BlockRecord;
  resolve: () => void;
  reject: (error: unknown) => void;
}

export class SnapshotStore {
  private readonly snapshots = new Map<string, StoredSnapshot>();
  private readonly commitQueue: QueuedRecord[] = [];
  /** Aligned memory for the O_DIRECT block writes: one per snapshot written at once, at most this many. */
  private readonly staging = StagingBuffers.allocate(DIRECT_WRITES_AT_ONCE, BLOCK_SIZE_BYTES);
  /** Set and cleared synchronously with the queue check, so no record is ever left unserved. */
  private committing = false;
  private commitDone: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(
    readonly dataDir: string,
    private readonly log: (line: string) => void,
  ) {}

  private get snapshotsDir(): string {
    return path.join(this.dataDir, 'snapshots');
  }

  static async open(dataDir: string, log: (line: string) => void): Promise<SnapshotStore> {
    const store = new SnapshotStore(path.resolve(dataDir), log);
    await store.recover();
    return store;
  }

  get(snapshotId: string): StoredSnapshot | undefined {
    return this.snapshots.get(snapshotId);
  }

  all(): IterableIterator<StoredSnapshot> {
    return this.snapshots.values();
  }

  /** Durable before it resolves: a crash after this leaves the snapshot in place. */
  async create(meta: SnapshotMeta): Promise<StoredSnapshot> {
    this.assertOpen();
    if (!SNAPSHOT_ID_PATTERN.test(meta.snapshotId) || this.snapshots.has(meta.snapshotId)) {
      throw new Error(`cannot create snapshot ${meta.snapshotId}`);
    }
    const directory = path.join(this.snapshotsDir, meta.snapshotId);
    await fsp.mkdir(directory);
    const snapshot = new StoredSnapshot(meta, directory);
    for (const file of [snapshot.logFile, snapshot.dataFile]) {
      const fd = await fsOpen(file, 'wx', 0o600);
      await fsFdatasync(fd);
      await fsClose(fd);
    }
    // meta.json appears last: a directory without it is an unfinished create, removed at start.
    await writeFileAtomic(path.join(directory, 'meta.json'), JSON.stringify(meta), 0o600);
    await fsyncDirectory(this.snapshotsDir);
    this.snapshots.set(meta.snapshotId, snapshot);
    return snapshot;
  }

  async updateMeta(snapshot: StoredSnapshot, meta: SnapshotMeta): Promise<void> {
    this.assertOpen();
    await writeFileAtomic(path.join(snapshot.directory, 'meta.json'), JSON.stringify(meta), 0o600);
    snapshot.meta = meta;
    if (meta.status !== 'pending') await this.closeFiles(snapshot);
  }

  /**
   * Resolves once the block is durable and visible in snapshot.ownBlocks. Concurrent
   * PUTs of one index become visible in the order their records reach the log.
   */
  async putBlock(snapshot: StoredSnapshot, blockIndex: number, digest: Buffer, data: Buffer): Promise<void> {
    this.assertOpen();
    if (data.length !== BLOCK_SIZE_BYTES) throw new Error('a block is 524288 bytes');
    if (snapshot.meta.status !== 'pending') throw new Error(`snapshot ${snapshot.id} is ${snapshot.meta.status}`);
    const slot = snapshot.takeSlot();
    try {
      await snapshot.writeData(slot, data, this.staging);
      await new Promise<void>((resolve, reject) => {
        this.commitQueue.push({ snapshot, record: { blockIndex, slot, digest }, resolve, reject });
        if (!this.committing) {
          this.committing = true;
          this.commitDone = this.commitLoop();
        }
      });
    } catch (error) {
      // Never named by a durable record: free again.
      snapshot.freeSlots.push(slot);
      throw error;
    }
  }

  /** The block at `blockIndex` that `snapshot` itself wrote. */
  async readBlock(snapshot: StoredSnapshot, blockIndex: number): Promise<Buffer> {
    const slot = snapshot.slots.get(blockIndex);
    if (slot === undefined) throw new Error(`snapshot ${snapshot.id} has no block ${blockIndex}`);
    const fd = await fsOpen(snapshot.dataFile, 'r');
    try {
      const data = Buffer.allocUnsafe(BLOCK_SIZE_BYTES);
      const { bytesRead } = await fsRead(fd, data, 0, BLOCK_SIZE_BYTES, slot * BLOCK_SIZE_BYTES);
      if (bytesRead !== BLOCK_SIZE_BYTES) throw new Error(`snapshot ${snapshot.id}: block ${blockIndex} is short (${bytesRead} bytes)`);
      return data;
    } finally {
      await fsClose(fd);
    }
  }

  /** Waits for queued commits, then closes every file. */
  async close(): Promise<void> {
    while (this.committing) await this.commitDone;
    this.closed = true;
    for (const snapshot of this.snapshots.values()) await this.closeFiles(snapshot);
  }

  private assertOpen(): void {
    if (this.closed) throw new Error('the local-ebs store is closed');
  }

  private async closeFiles(snapshot: StoredSnapshot): Promise<void> {
    for (const fd of [snapshot.dataFd, snapshot.directFd, snapshot.logFd])
      if (typeof fd === 'number') await fsClose(fd).catch(() => undefined);
    snapshot.dataFd = undefined;
    snapshot.directFd = undefined;
    snapshot.logFd = undefined;
  }

  private async commitLoop(): Promise<void> {
    // The emptiness check and clearing `committing` happen in one synchronous step.
    try {
      while (this.commitQueue.length > 0) await this.commitBatch();
    } finally {
      this.committing = false;
    }
  }

  private async commitBatch(): Promise<void> {
    const batch = this.commitQueue.splice(0, RECORDS_PER_COMMIT_MAX);
    const bySnapshot = new Map<StoredSnapshot, QueuedRecord[]>();
    for (const queued of batch) {
      const list = bySnapshot.get(queued.snapshot);
      if (list) list.push(queued);
      else bySnapshot.set(queued.snapshot, [queued]);
    }
    await Promise.all(
      [...bySnapshot].map(async ([snapshot, items]) => {
        try {
          // Data first: a durable record must never name a slot whose data is not.
          await fsFdatasync(snapshot.dataFd!);
          await this.appendToLog(
            snapshot,
            items.map((item) => item.record),
          );
        } catch (error) {
          for (const item of items) item.reject(error);
          return;
        }
        // Visible only now, in log order, so memory never shows what the disk may lose.
        for (const { record, resolve } of items) {
          const replaced = snapshot.slots.get(record.blockIndex);
          snapshot.ownBlocks.set(record.blockIndex, record.digest);
          snapshot.slots.set(record.blockIndex, record.slot);
          // The record that supersedes it is durable: its old slot may be reused.
          if (replaced !== undefined) snapshot.freeSlots.push(replaced);
          resolve();
        }
      }),
    );
  }

  private async appendToLog(snapshot: StoredSnapshot, records: BlockRecord[]): Promise<void> {
    if (snapshot.meta.status !== 'pending') throw new Error(`snapshot ${snapshot.id} is ${snapshot.meta.status}`);
    snapshot.logFd ??= await fsOpen(snapshot.logFile, 'r+');
    const fd = snapshot.logFd;
    const bytes = encodeRecords(records);
    try {
      await fsWrite(fd, bytes, 0, bytes.length, snapshot.logBytes);
      await fsFdatasync(fd);
    } catch (error) {
      // Cut back what may have reached the file, so that a replay after a later
      // success cannot surface records that were refused.
      await fsFtruncate(fd, snapshot.logBytes).catch(() => undefined);
      throw error;
    }
    snapshot.logBytes += bytes.length;
  }

  private async recover(): Promise<void> {
    await makeDirectories(this.dataDir);
    await this.checkFormat();
    await makeDirectories(this.snapshotsDir);
    for (const name of await fsp.readdir(this.snapshotsDir)) {
      if (!SNAPSHOT_ID_PATTERN.test(name)) continue;
      const snapshot = await this.loadSnapshot(name);
      if (snapshot) this.snapshots.set(snapshot.id, snapshot);
    }
  }

  private async checkFormat(): Promise<void> {
    const file = path.join(this.dataDir, 'store.json');
    let text: string | undefined;
    try {
      text = await fsp.readFile(file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
    if (text === undefined) {
      await writeFileAtomic(file, JSON.stringify({ format: STORE_FORMAT, version: STORE_VERSION }), 0o600);
      return;
    }
    let parsed: { format?: unknown; version?: unknown } = {};
    try {
      parsed = JSON.parse(text) as typeof parsed;
    } catch {
      // fall through to the error below
    }
    if (parsed.format !== STORE_FORMAT || parsed.version !== STORE_VERSION) {
      throw new Error(`${file} is not a local-ebs store of version ${STORE_VERSION}; use another directory`);
    }
  }

  private async loadSnapshot(snapshotId: string): Promise<StoredSnapshot | undefined> {
    const directory = path.join(this.snapshotsDir, snapshotId);
    let metaText: string;
    try {
      metaText = await fsp.readFile(path.join(directory, 'meta.json'), 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      // StartSnapshot never answered for it: meta.json is written last.
      await fsp.rm(directory, { recursive: true, force: true });
      return undefined;
    }
    for (const name of await fsp.readdir(directory)) {
      if (name.endsWith('.tmp')) await fsp.rm(path.join(directory, name), { force: true });
    }
    let meta: SnapshotMeta;
    try {
      meta = JSON.parse(metaText) as SnapshotMeta;
    } catch {
      this.log(`local-ebs: ignoring snapshot ${snapshotId}: its meta.json is not valid JSON`);
      return undefined;
    }
    if (meta.snapshotId !== snapshotId || !Number.isInteger(meta.volumeSizeGiB)) {
      this.log(`local-ebs: ignoring snapshot ${snapshotId}: its meta.json does not describe it`);
      return undefined;
    }
    const snapshot = new StoredSnapshot(meta, directory);
    const contents = await fsp.readFile(snapshot.logFile);
    const replay = replayLog(contents);
    if (replay.validBytes < contents.length) {
      this.log(
        `local-ebs: snapshot ${snapshotId}: cut a torn log tail of ${contents.length - replay.validBytes} byte(s) (unacknowledged writes)`,
      );
      await this.truncate(snapshot.logFile, replay.validBytes);
    }
    snapshot.logBytes = replay.validBytes;
    for (const record of replay.records) {
      snapshot.ownBlocks.set(record.blockIndex, record.digest);
      snapshot.slots.set(record.blockIndex, record.slot);
    }
    const used = new Set(snapshot.slots.values());
    for (const slot of used) snapshot.nextSlot = Math.max(snapshot.nextSlot, slot + 1);
    for (let slot = snapshot.nextSlot - 1; slot >= 0; slot--) if (!used.has(slot)) snapshot.freeSlots.push(slot);
    // Data past the last live slot was never acknowledged.
    const dataBytes = snapshot.nextSlot * BLOCK_SIZE_BYTES;
    const stat = await fsp.stat(snapshot.dataFile);
    if (stat.size < dataBytes) {
      // Cannot happen while data is made durable before its record; say so rather than serve a hole.
      throw new Error(`snapshot ${snapshotId}: blocks.dat holds ${stat.size} bytes but its log names ${dataBytes}`);
    }
    if (stat.size > dataBytes) await this.truncate(snapshot.dataFile, dataBytes);
    return snapshot;
  }

  private async truncate(file: string, bytes: number): Promise<void> {
    const fd = await fsOpen(file, 'r+');
    try {
      await fsFtruncate(fd, bytes);
      await fsFdatasync(fd);
    } finally {
      await fsClose(fd);
    }
  }
}
