/*
 * The block cache: 512 KiB blocks of the volume held in memory, in LRU order.
 *
 * Block states. A state is derived from the fields of CachedBlock, never stored;
 * every change of state is one of the BlockCache methods below the table.
 *
 * | state           | uploading | generations          | in memory | evictable | a write...                     | an upload ack...  |
 * |-----------------|-----------|----------------------|-----------|-----------|--------------------------------|-------------------|
 * | absent          | -         | -                    | no        | -         | creates the block, dirty       | -                 |
 * | clean           | no        | written == acked     | yes       | yes       | makes it dirty                 | -                 |
 * | dirty           | no        | written > acked      | yes       | no        | keeps it dirty                 | -                 |
 * | uploading       | yes       | written == uploading | yes       | no        | copies the buffer first (COW), | makes it clean    |
 * |                 |           |                      |           |           | making it dirty-uploading      |                   |
 * | dirty-uploading | yes       | written > uploading  | yes       | no        | writes the entry's own copy    | leaves it dirty   |
 * | held nowhere    | -         | -                    | no        | -         | creates the block, dirty; its  | -                 |
 * |                 |           |                      |           |           | other bytes cannot be merged   |                   |
 *
 * - "Absent" and "held nowhere" are both "not in memory"; which one it is, and
 *   where an absent block's bytes are (local copy, zeros, parent), is the block
 *   store's record (block-store.ts). A held-nowhere block was uploaded and then
 *   left memory without a local copy: reading it, or merging it under a partial
 *   write, fails with EIO; a write that covers it whole makes it dirty again.
 * - A failed upload returns the block to dirty, with the failure kept on the block
 *   until a later upload of it succeeds: dirty data is never dropped.
 * - Only clean blocks are evicted.
 * - Besides the LRU of every entry, the cache keeps its clean blocks and its
 *   dirty ones (not uploading) each in an order of its own (`reindex`), so that
 *   eviction and write-back look only at the blocks they may take: a streaming
 *   write keeps the cache full, and a scan of the whole LRU for every buffer and
 *   every batch of uploads cost the mount several percent of its CPU. A block
 *   joins the end of its order when it is used and when its state changes: the
 *   least recently used or changed comes first.
 * - `data === null` means the block is all zeros and holds no buffer: truncation
 *   makes such blocks without touching memory.
 * - A block created by a partial write holds only the bytes written (writtenRanges)
 *   until its base content (local copy, parent or zeros) is merged in, so a
 *   block that ends up fully overwritten never reads its base at all.
 * - `generationRanges` follows what one generation's writes covered, so an
 *   upload can tell a block written whole (a stream: `dd`, `cp`, file data, in
 *   writes of any size) from one written only in part (file-system metadata:
 *   bitmaps, inode tables, directories, a superblock), which the local copy keeps first.
 *   `inStreamOrderSinceUpload` adds whether those writes came front to back, so
 *   that the flusher can send streamed blocks early, in batches (flusher.ts).
 * - At most one upload of a block is in flight (`uploading`).
 * - Memory: block buffers, whether held by the cache or only by an in-flight
 *   upload after a copy-on-write, never exceed the capacity; a writer that needs
 *   a buffer waits, bounded in time, for an eviction.
 */
import { Mutex } from 'async-mutex';
import { LRUCache } from 'lru-cache';
import { BLOCK_SIZE_BYTES } from '../ebs/client';
import { AlignedBuffers } from '../staging-buffers';
import { FileOperationError } from './file-errors';
import { ChangeSignal } from './signal';

/** Ranges tracked per block for generationRanges; past this the block counts as written in pieces. */
const GENERATION_RANGES_MAX = 64;

export interface UploadFailure {
  /** Orders failures against the start of an fsync (a clock's millisecond cannot). */
  sequence: number;
  message: string;
}

/** What an upload takes from a block: a stable view of one generation. */
export interface UploadView {
  data: Buffer | null;
  generation: number;
  /** How the block was written since the last upload began. */
  written: 'whole' | 'pieces';
}

export class CachedBlock {
  data: Buffer | null = null;
  /** False while only writtenRanges of `data` are meaningful. */
  baseMerged = true;
  /** Sorted, disjoint [start, end) byte ranges written while !baseMerged. */
  writtenRanges: Array<[number, number]> = [];
  writeGeneration = 0;
  ackedGeneration = 0;
  uploadGeneration = 0;
  uploading = false;
  /** The in-flight upload holds `data`: a write must copy it first. */
  dataSharedWithUpload = false;
  /** A flush wants at least this generation acknowledged. */
  flushWantedGeneration = 0;
  /** What writes covered since the last upload began; null once too scattered to track. */
  generationRanges: Array<[number, number]> | null = [];
  /** Every write since the last upload began started at 0 or within what was already written: a stream's order. */
  inStreamOrderSinceUpload = true;
  lastFailure?: UploadFailure;

  constructor(readonly index: number) {}

  get isDirty(): boolean {
    return this.writeGeneration > this.ackedGeneration;
  }

  get isClean(): boolean {
    return !this.uploading && !this.isDirty;
  }

  /** Every byte was written since the last upload began: a stream passed over it, and it is likely done. */
  get writtenWholeSinceUpload(): boolean {
    return this.generationRanges !== null && coversWhole(this.generationRanges);
  }

  /** Written whole, front to back, since the last upload began (dd, cp, a file's data through a loop device). */
  get streamedWholeSinceUpload(): boolean {
    return this.inStreamOrderSinceUpload && this.writtenWholeSinceUpload;
  }

  /** True when [start, end) lies inside one written range. */
  isRangeWritten(start: number, end: number): boolean {
    return this.writtenRanges.some(([from, to]) => from <= start && end <= to);
  }
}

/** Per-block locks for absent and cached blocks alike; entries live only while used. */
export class BlockLocks {
  private readonly locks = new Map<number, { mutex: Mutex; users: number }>();

  async with<T>(index: number, task: () => Promise<T>): Promise<T> {
    let lock = this.locks.get(index);
    if (!lock) {
      lock = { mutex: new Mutex(), users: 0 };
      this.locks.set(index, lock);
    }
    lock.users += 1;
    try {
      return await lock.mutex.runExclusive(task);
    } finally {
      lock.users -= 1;
      if (lock.users === 0) this.locks.delete(index);
    }
  }

  isLocked(index: number): boolean {
    return this.locks.has(index);
  }
}

export interface BlockCacheOptions {
  capacityBlocks: number;
  writerWaitTimeoutMs: number;
  /** Entries kept beyond the buffer capacity: zero blocks made by truncation cost no buffer. */
  zeroEntriesMax: number;
  /** Asked to upload some dirty blocks when a writer finds no clean block to evict. */
  requestWriteback: () => void;
  isLocked: (index: number) => boolean;
}

export class BlockCache {
  private readonly entries: LRUCache<number, CachedBlock>;
  /** The clean blocks in `entries`, least recently used or changed first: all that eviction may take. */
  private readonly cleanInUseOrder = new Map<number, CachedBlock>();
  /** The dirty blocks in `entries` that are not uploading, least recently used or changed first: all that write-back may take. */
  private readonly dirtyInUseOrder = new Map<number, CachedBlock>();
  /** Block buffers alive: cached data plus buffers only an upload still holds. */
  private buffersHeld = 0;
  /** Blocks whose latest write is not acknowledged, uploading or not. */
  private dirtyBlocks = 0;
  /** Buffers given back, for reuse; with buffersHeld never more than the capacity. */
  private readonly freeBuffers: Buffer[] = [];
  /**
   * Where new buffers come from: page-aligned, so that the local copy writes a
   * block to disk past the page cache straight from its buffer, not through a
   * staging copy (local-copy.ts); plain ones where no aligned memory can be had.
   */
  private readonly alignedBuffers: AlignedBuffers;
  /** Wakes writers waiting for room; notified when a buffer is freed or a block turns clean. */
  private readonly roomSignal = new ChangeSignal();
  /**
   * A writer's wait for room ran out and none has been made since. Until some is,
   * a writer that finds the cache full fails at once: one write call that the
   * kernel splits (a 1 MiB dd write is eight FUSE writes) or the next write of a
   * program that retries would otherwise wait the whole bound again each time.
   */
  private fullAfterWait = false;

  constructor(private readonly options: BlockCacheOptions) {
    // Eviction is ours (only clean blocks may go), so the LRU's own bound must
    // never be reached: it covers every buffer plus the zero entries. A count
    // bound (`max`) would make lru-cache allocate its tables for all of them up
    // front, 28 MiB for the million zero entries a mount allows; a size bound
    // of one per entry lets the tables grow with the entries actually held.
    this.entries = new LRUCache<number, CachedBlock>({
      maxSize: options.capacityBlocks + options.zeroEntriesMax,
      sizeCalculation: () => 1,
    });
    this.alignedBuffers = new AlignedBuffers(options.capacityBlocks, BLOCK_SIZE_BYTES);
  }

  get size(): number {
    return this.entries.size;
  }

  get dirtyCount(): number {
    return this.dirtyBlocks;
  }

  get buffersInUse(): number {
    return this.buffersHeld;
  }

  /** Looks a block up and marks it most recently used. */
  get(index: number): CachedBlock | undefined {
    const block = this.entries.get(index);
    if (block) this.reindex(block);
    return block;
  }

  /** Looks a block up without changing its recency. */
  peek(index: number): CachedBlock | undefined {
    return this.entries.peek(index);
  }

  /** Clean blocks, least recently used or changed first. */
  cleanLeastRecentFirst(): IterableIterator<CachedBlock> {
    return this.cleanInUseOrder.values();
  }

  /** Dirty blocks that are not uploading, least recently used or changed first. */
  dirtyLeastRecentFirst(): IterableIterator<CachedBlock> {
    return this.dirtyInUseOrder.values();
  }

  *values(): Generator<CachedBlock> {
    for (const block of this.entries.values()) if (block) yield block;
  }

  // ---- transitions; each caller holds the block's lock unless it says otherwise ----

  /** absent → an entry with no buffer, not yet written. */
  insert(index: number): CachedBlock {
    if (this.entries.size >= this.entries.maxSize) this.evictClean(() => true);
    if (this.entries.size >= this.entries.maxSize) {
      throw new FileOperationError('EIO', `block cache holds ${this.entries.size} blocks, its limit; flush first`);
    }
    const block = new CachedBlock(index);
    this.entries.set(index, block);
    this.reindex(block);
    return block;
  }

  /** Forgets an entry that was inserted but never written (its write failed). */
  discardUnwritten(block: CachedBlock): void {
    if (block.writeGeneration === 0 && block.data === null && this.entries.peek(block.index) === block) this.remove(block);
  }

  /**
   * Gives the block a buffer of its own to write into: a zeroed one for a block
   * without a buffer (whose base, when it has one, is merged later), or a copy
   * of the one an upload holds. `whole`, a write about to cover the block, is
   * copied in here whenever a new buffer is taken, instead of zeros or the
   * upload's bytes. Resolves with whether it was; if not, the caller copies the write.
   */
  async makeWritable(block: CachedBlock, baseToMergeLater: boolean, whole?: Buffer): Promise<boolean> {
    const fillsBlock = whole?.length === BLOCK_SIZE_BYTES;
    if (block.data === null) {
      await this.reserveBuffer();
      // Filled in the same turn as the buffer is handed out: a reader in between
      // would see a reused buffer's old bytes.
      block.data = fillsBlock ? this.copyBuffer(whole) : this.newBuffer();
      if (fillsBlock) return true;
      if (baseToMergeLater) {
        block.baseMerged = false;
        block.writtenRanges = [];
      }
      return false;
    }
    if (block.dataSharedWithUpload) {
      await this.reserveBuffer();
      block.data = this.copyBuffer(fillsBlock ? whole : block.data);
      block.dataSharedWithUpload = false;
      return fillsBlock;
    }
    return false;
  }

  /**
   * Records a write of [inBlock, inBlock + length) already copied into the
   * buffer: clean → dirty, uploading → dirty-uploading.
   */
  noteWritten(block: CachedBlock, inBlock: number, length: number): void {
    if (!block.baseMerged && coversWhole((block.writtenRanges = addRange(block.writtenRanges, inBlock, inBlock + length)))) {
      block.writtenRanges = [];
      block.baseMerged = true;
    }
    const before = block.generationRanges;
    const appends =
      before !== null && (before.length === 0 ? inBlock === 0 : before.length === 1 && before[0][0] === 0 && inBlock <= before[0][1]);
    if (!appends) block.inStreamOrderSinceUpload = false;
    const covered = block.generationRanges && addRange(block.generationRanges, inBlock, inBlock + length);
    block.generationRanges = covered && covered.length <= GENERATION_RANGES_MAX ? covered : null;
    this.noteChanged(block);
  }

  /** Copies the base into every byte not written, then forgets the ranges. */
  mergeBase(block: CachedBlock, base: Buffer | null): void {
    const data = block.data;
    if (data === null) throw new Error(`mergeBase of block ${block.index}, which has no buffer`);
    let cursor = 0;
    for (const [from, to] of [...block.writtenRanges, [BLOCK_SIZE_BYTES, BLOCK_SIZE_BYTES] as [number, number]]) {
      if (from > cursor) {
        if (base) base.copy(data, cursor, cursor, from);
        else data.fill(0, cursor, from);
      }
      cursor = Math.max(cursor, to);
    }
    block.writtenRanges = [];
    block.baseMerged = true;
  }

  /** any → dirty zeros without a buffer (truncation). */
  zero(block: CachedBlock): void {
    if (block.data !== null && !block.dataSharedWithUpload) this.releaseBuffer(block.data);
    block.data = null;
    block.dataSharedWithUpload = false;
    block.baseMerged = true;
    block.writtenRanges = [];
    block.generationRanges = null;
    block.inStreamOrderSinceUpload = false;
    this.noteChanged(block);
  }

  /** clean → dirty with the same content, so that it is sent again (resume, keep-alive). */
  markForResend(block: CachedBlock): void {
    if (!block.isDirty) this.noteChanged(block);
  }

  /** dirty → uploading: the upload takes the buffer as it is; later writes copy it first. */
  beginUpload(block: CachedBlock): UploadView {
    if (block.uploading) throw new Error(`block ${block.index}: a second upload while one is in flight`);
    if (!block.isDirty || !block.baseMerged) throw new Error(`block ${block.index}: upload of a block that is clean or not merged`);
    block.uploading = true;
    block.uploadGeneration = block.writeGeneration;
    block.dataSharedWithUpload = block.data !== null;
    const written = block.writtenWholeSinceUpload ? 'whole' : 'pieces';
    block.generationRanges = [];
    block.inStreamOrderSinceUpload = true;
    this.reindex(block);
    return { data: block.data, generation: block.writeGeneration, written };
  }

  /** The service acknowledged `generation`: uploading → clean, or dirty-uploading stays dirty. */
  acknowledge(block: CachedBlock, generation: number): void {
    if (!block.uploading) throw new Error(`block ${block.index}: an ack without an upload`);
    const wasDirty = block.isDirty;
    block.ackedGeneration = Math.max(block.ackedGeneration, generation);
    block.lastFailure = undefined;
    if (wasDirty && !block.isDirty) this.dirtyBlocks -= 1;
    this.checkCounts();
  }

  /** The upload failed for good, or could not start (base held nowhere): the block stays dirty and carries the failure. */
  failUpload(block: CachedBlock, failure: UploadFailure): void {
    block.lastFailure = failure;
  }

  /** uploading → clean or dirty: the upload lets go of `data`, the buffer it took. */
  endUpload(block: CachedBlock, data: Buffer | null): void {
    block.uploading = false;
    if (block.data === data) block.dataSharedWithUpload = false;
    // A copy-on-write during the upload left `data` held by the upload alone, which has ended.
    else if (data !== null) this.releaseBuffer(data);
    this.reindex(block);
    if (block.isClean) this.roomMade();
  }

  private roomMade(): void {
    this.fullAfterWait = false;
    this.roomSignal.notify();
  }

  private noteChanged(block: CachedBlock): void {
    if (!block.isDirty) this.dirtyBlocks += 1;
    block.writeGeneration += 1;
    this.reindex(block);
  }

  /** Files the block in the order of its state, as the most recent there (see the notes under the table). */
  private reindex(block: CachedBlock): void {
    this.unindex(block);
    if (!block.uploading) (block.isDirty ? this.dirtyInUseOrder : this.cleanInUseOrder).set(block.index, block);
  }

  private unindex(block: CachedBlock): void {
    this.cleanInUseOrder.delete(block.index);
    this.dirtyInUseOrder.delete(block.index);
  }

  private remove(block: CachedBlock): void {
    this.entries.delete(block.index);
    this.unindex(block);
  }

  private checkCounts(): void {
    if (this.dirtyBlocks < 0 || this.buffersHeld < 0 || this.buffersHeld > this.options.capacityBlocks) {
      throw new Error(
        `block cache counts out of bounds: ${this.dirtyBlocks} dirty, ${this.buffersHeld} buffers of ${this.options.capacityBlocks}`,
      );
    }
  }

  // ---- buffers ----

  /**
   * Accounts for one more block buffer, first evicting clean blocks or waiting
   * (at most writerWaitTimeoutMs) for uploads to make some clean.
   */
  private async reserveBuffer(): Promise<void> {
    const deadlineMs = Date.now() + this.options.writerWaitTimeoutMs;
    while (this.buffersHeld >= this.options.capacityBlocks) {
      if (this.evictClean((block) => block.data !== null)) continue;
      this.options.requestWriteback();
      if (this.fullAfterWait) {
        throw new FileOperationError(
          'EIO',
          `the block cache is still full of dirty blocks: no upload has finished since a write waited ${this.options.writerWaitTimeoutMs} ms for one`,
        );
      }
      const remainingMs = deadlineMs - Date.now();
      if (remainingMs <= 0 || !(await this.roomSignal.wait(remainingMs))) {
        if (this.buffersHeld < this.options.capacityBlocks) break;
        this.fullAfterWait = true;
        throw new FileOperationError(
          'EIO',
          `the block cache is full of dirty blocks and no upload finished within ${this.options.writerWaitTimeoutMs} ms`,
        );
      }
    }
    this.buffersHeld += 1;
    this.checkCounts();
  }

  /** A zeroed buffer for a block, reused when one was given back; the caller reserved it. */
  private newBuffer(): Buffer {
    const reused = this.freeBuffers.pop();
    return reused ? reused.fill(0) : (this.alignedBuffers.take() ?? Buffer.alloc(BLOCK_SIZE_BYTES));
  }

  /** A copy of `source` (copy-on-write, or a write of a whole block), in a reused buffer when one was given back; the caller reserved it. */
  private copyBuffer(source: Buffer): Buffer {
    const target = this.freeBuffers.pop() ?? this.alignedBuffers.take();
    if (!target) return Buffer.from(source);
    source.copy(target);
    return target;
  }

  /**
   * Ends a reservation. `buffer`, when given, is referenced by nothing any more
   * and is kept for reuse: a dropped buffer is freed only when V8 collects it,
   * which it does after tens of MiB of such garbage, so under a steady stream of
   * writes the process would hold that much beyond the cache.
   */
  private releaseBuffer(buffer?: Buffer): void {
    this.buffersHeld -= 1;
    this.checkCounts();
    if (buffer?.length === BLOCK_SIZE_BYTES && this.buffersHeld + this.freeBuffers.length < this.options.capacityBlocks) {
      this.freeBuffers.push(buffer);
    }
    this.roomMade();
  }

  /** Evicts the least recently used clean, unlocked block that matches; false when none. */
  private evictClean(matches: (block: CachedBlock) => boolean): boolean {
    for (const block of this.cleanInUseOrder.values()) {
      // A locked block is in use by a write or read that holds the entry.
      if (!matches(block) || this.options.isLocked(block.index)) continue;
      this.remove(block);
      // Clean and unlocked: no upload and no reader holds the buffer.
      if (block.data !== null) this.releaseBuffer(block.data);
      return true;
    }
    return false;
  }
}

/** Sorted, disjoint ranges with [start, end) added. */
function addRange(ranges: Array<[number, number]>, start: number, end: number): Array<[number, number]> {
  const merged: Array<[number, number]> = [];
  let next: [number, number] = [start, end];
  for (const range of ranges) {
    if (range[1] < next[0] || range[0] > next[1]) merged.push(range);
    else next = [Math.min(range[0], next[0]), Math.max(range[1], next[1])];
  }
  merged.push(next);
  return merged.sort((a, b) => a[0] - b[0]);
}

function coversWhole(ranges: Array<[number, number]>): boolean {
  return ranges.length === 1 && ranges[0][0] === 0 && ranges[0][1] === BLOCK_SIZE_BYTES;
}
