// The volume: the one file of a mount, as plain async operations over the block
// cache, the flusher and the read-back store. docs/SEMANTICS.md is its contract.
import { BLOCK_SIZE_BYTES, BLOCKS_PER_GIB, type SnapshotClient } from '../ebs/client';
import { linearChecksumBase64 } from '../ebs/checksum';
import { BlockCache, BlockLocks, type CachedBlock } from './block-cache';
import { blockSegments } from './block-segments';
import { FileOperationError } from './file-errors';
import { Flusher } from './flusher';
import { Journal, type JournalReplay } from './journal';
import type { CoreLimits } from './limits';
import { ReadbackStore } from './readback-store';
import type { SnapshotReader } from './snapshot-reader';
import type { VolumeFile, VolumeStats } from './volume-file';

/** How long close() lets in-flight uploads finish. */
const CLOSE_WAIT_MS = 60_000;
/** Zero blocks (truncated regions) the cache may track beyond its buffers. */
const ZERO_ENTRIES_MAX = 1 << 20;

export interface VolumeOptions {
  client: SnapshotClient;
  snapshotId: string;
  volumeSizeGiB: number;
  /** Directory for the read-back store (the snapshot's state directory). */
  stateDirectory: string;
  limits: CoreLimits;
  zeroSkipAllowed: boolean;
  /** The parent snapshot of an incremental mount: what unwritten blocks read as. */
  parent?: SnapshotReader;
  /** Retries so far by the client's retry policy, for status lines. */
  retryCount?: () => number;
  log?: (line: string) => void;
}

export class Volume implements VolumeFile {
  readonly sizeBytes: number;
  readonly readOnly = false;
  private readonly blockCount: number;
  private readonly locks = new BlockLocks();
  private readonly cache: BlockCache;
  private readonly flusher: Flusher;
  /** Blocks whose latest uploaded content is in the read-back store. */
  private readonly storedBlocks = new Set<number>();
  private readonly dirtyHighWaterBlocks: number;
  private lastUploadError?: string;
  private readonly log: (line: string) => void;

  /**
   * Opens the volume over its state directory: the read-back store and the
   * journal. A journal left by an earlier mount of the snapshot is replayed:
   * acknowledged blocks read back from the store, and blocks that were being
   * sent are queued to be sent again.
   */
  static async open(options: VolumeOptions): Promise<Volume> {
    const readback = new ReadbackStore(options.stateDirectory);
    const { journal, replay } = await Journal.open(options.stateDirectory, () => readback.sync());
    const volume = new Volume(options, readback, journal, replay);
    for (const index of [...replay.unacknowledged.keys()].sort((a, b) => a - b)) await volume.resend(index);
    return volume;
  }

  private constructor(
    private readonly options: VolumeOptions,
    private readonly readback: ReadbackStore,
    private readonly journal: Journal,
    replay: JournalReplay,
  ) {
    for (const index of [...replay.acknowledged.keys(), ...replay.unacknowledged.keys()]) this.storedBlocks.add(index);
    this.blockCount = options.volumeSizeGiB * BLOCKS_PER_GIB;
    this.sizeBytes = this.blockCount * BLOCK_SIZE_BYTES;
    this.log = options.log ?? ((line) => process.stderr.write(`${line}\n`));
    const capacityBlocks = Math.max(2, Math.floor(options.limits.cacheSizeBytes / BLOCK_SIZE_BYTES));
    this.dirtyHighWaterBlocks = Math.max(1, Math.floor(capacityBlocks * options.limits.dirtyHighWaterRatio));
    this.cache = new BlockCache({
      capacityBlocks,
      writerWaitTimeoutMs: options.limits.writerWaitTimeoutMs,
      zeroEntriesMax: ZERO_ENTRIES_MAX,
      requestWriteback: () => this.writeBack(this.options.limits.uploadConcurrency),
      isLocked: (index) => this.locks.isLocked(index),
    });
    this.flusher = new Flusher(
      {
      client: options.client,
      snapshotId: options.snapshotId,
      cache: this.cache,
      locks: this.locks,
      readback,
      journal,
      stateDirectory: options.stateDirectory,
      concurrency: options.limits.uploadConcurrency,
      zeroSkipAllowed: options.zeroSkipAllowed,
      storedBlocks: this.storedBlocks,
      mergeBase: (block) => this.mergeBase(block),
      progressPercent: () => this.progressPercent(),
      onUploadFailed: (index, message) => this.reportUploadFailure(index, message),
      },
      new Map(replay.acknowledged),
      this.storedBlocks,
    );
  }

  async read(offsetBytes: number, length: number): Promise<Buffer> {
    const end = Math.min(this.sizeBytes, offsetBytes + length);
    if (offsetBytes >= end) return Buffer.alloc(0);
    const out = Buffer.alloc(end - offsetBytes);
    for (const { index, inBlock, count, fromStart } of blockSegments(offsetBytes, end)) {
      await this.readInto(index, inBlock, count, out, fromStart);
    }
    return out;
  }

  async write(offsetBytes: number, data: Buffer): Promise<number> {
    if (offsetBytes >= this.sizeBytes) {
      throw new FileOperationError('ENOSPC', `write at ${offsetBytes} is at or past the end of the volume (${this.sizeBytes} bytes)`);
    }
    const end = Math.min(this.sizeBytes, offsetBytes + data.length);
    for (const { index, inBlock, count, fromStart } of blockSegments(offsetBytes, end)) {
      await this.writeBlockRange(index, inBlock, data.subarray(fromStart, fromStart + count));
    }
    this.writeBackIfOverHighWater();
    return end - offsetBytes;
  }

  async fsync(): Promise<void> {
    await this.flushDirty(Number.POSITIVE_INFINITY);
  }

  async truncate(lengthBytes: number): Promise<void> {
    if (lengthBytes > this.sizeBytes) {
      throw new FileOperationError('EFBIG', `cannot truncate to ${lengthBytes} bytes: the volume is fixed at ${this.sizeBytes} bytes`);
    }
    if (lengthBytes < 0) throw new FileOperationError('EINVAL', 'negative length');
    const firstWhole = Math.ceil(lengthBytes / BLOCK_SIZE_BYTES);
    if (lengthBytes % BLOCK_SIZE_BYTES !== 0) {
      const index = firstWhole - 1;
      const inBlock = lengthBytes - index * BLOCK_SIZE_BYTES;
      await this.writeBlockRange(index, inBlock, Buffer.alloc(BLOCK_SIZE_BYTES - inBlock));
    }
    // Only blocks that may hold data need zeroing; the rest already read as zeros.
    const candidates = new Set<number>([...this.storedBlocks, ...this.flusher.attemptedBlocks, ...(this.options.parent?.blockIndexes() ?? [])]);
    for (const block of this.cache.values()) candidates.add(block.index);
    for (const index of [...candidates].filter((candidate) => candidate >= firstWhole).sort((a, b) => a - b)) {
      const cached = this.cache.peek(index);
      // Already acknowledged as zeros: nothing to change.
      if (cached && cached.isClean && cached.data === null) continue;
      await this.locks.with(index, async () => this.zeroBlock(index));
    }
  }

  /**
   * Uploads every dirty block (not only those dirty at the call) until none is
   * left; used at unmount. Rejects on the first final failure or at the deadline.
   */
  async flushAll(timeoutMs: number): Promise<void> {
    const deadlineMs = Date.now() + timeoutMs;
    for (;;) {
      await this.flushDirty(deadlineMs);
      if (![...this.cache.values()].some((block) => block.isDirty || block.uploading)) return;
    }
  }

  /** ChangedBlocksCount and LINEAR checksum of everything acknowledged so far. */
  completionFigures(): { changedBlocksCount: number; linearChecksumBase64: string } {
    return { changedBlocksCount: this.flusher.putDigests.size, linearChecksumBase64: linearChecksumBase64(this.flusher.putDigests) };
  }

  stats(): VolumeStats {
    return {
      dirtyBlocks: this.cache.dirtyCount,
      uploadingBlocks: this.flusher.uploadsInFlight,
      cachedBlocks: this.cache.size,
      blocksUploaded: this.flusher.blocksUploaded,
      bytesUploaded: this.flusher.blocksUploaded * BLOCK_SIZE_BYTES,
      distinctBlocksPut: this.flusher.putDigests.size,
      retries: this.options.retryCount?.() ?? 0,
      lastUploadError: this.lastUploadError,
    };
  }

  /** Block buffers alive now (cache and upload-only copies); for memory tests. */
  get buffersInUse(): number {
    return this.cache.buffersInUse;
  }

  /** When the service last acknowledged a PUT. */
  get lastPutAckMs(): number {
    return this.flusher.lastPutAckMs;
  }

  /** How many blocks the service has acknowledged (candidates for resend). */
  acknowledgedBlockIndexes(): IterableIterator<number> {
    return this.flusher.putDigests.keys();
  }

  /**
   * Sends a block again with its current content: after a crash for a block
   * that was in flight, and to restart the snapshot's idle timer.
   */
  async resend(index: number, options: { evenIfZero?: boolean } = {}): Promise<void> {
    // A block that was never sent and reads as zeros would be skipped by the
    // zero-block rule; the idle keep-alive needs a real PUT.
    if (options.evenIfZero) this.flusher.attemptedBlocks.add(index);
    await this.locks.with(index, async () => {
      let block = this.cache.get(index);
      if (!block) {
        block = this.cache.insert(index);
        try {
          await this.cache.reserveBuffer();
        } catch (error) {
          this.cache.discardUnwritten(block);
          throw error;
        }
        block.data = this.cache.newBuffer();
        // Empty written ranges: the whole content comes from the read-back store.
        block.baseMerged = !this.hasBase(index);
        block.writtenRanges = [];
      }
      if (!block.isDirty) this.cache.noteWritten(block);
      this.flusher.enqueue(block);
    });
  }

  /** Stops uploading (in-flight PUTs end first, bounded) and closes the files. */
  async close(): Promise<void> {
    await this.flusher.stop(CLOSE_WAIT_MS);
    await this.journal.close();
    await this.readback.close();
  }

  private async readInto(index: number, inBlock: number, count: number, out: Buffer, outOffset: number): Promise<void> {
    const cached = this.cache.get(index);
    if (cached) {
      if (cached.baseMerged || cached.isRangeWritten(inBlock, inBlock + count)) {
        copyOut(cached, inBlock, count, out, outOffset);
        return;
      }
      await this.locks.with(index, async () => {
        const block = this.cache.peek(index);
        if (block) {
          if (!block.baseMerged) await this.mergeBase(block);
          copyOut(block, inBlock, count, out, outOffset);
        } else {
          (await this.readBase(index, inBlock, count)).copy(out, outOffset);
        }
      });
      return;
    }
    (await this.readBase(index, inBlock, count)).copy(out, outOffset);
  }

  /** True when a block not in memory reads as something other than zeros. */
  private hasBase(index: number): boolean {
    return this.storedBlocks.has(index) || (this.options.parent?.has(index) ?? false);
  }

  /** Content of a block that is not in memory: the read-back store, else the parent, else zeros. */
  private async readBase(index: number, inBlock: number, count: number): Promise<Buffer> {
    if (this.storedBlocks.has(index)) return this.readback.readRange(index, inBlock, count);
    if (this.options.parent?.has(index)) return this.options.parent.readRange(index, inBlock, count);
    return Buffer.alloc(count);
  }

  private async mergeBase(block: CachedBlock): Promise<void> {
    let base: Buffer | null = null;
    if (this.storedBlocks.has(block.index)) base = await this.readback.readRange(block.index, 0, BLOCK_SIZE_BYTES);
    else if (this.options.parent?.has(block.index)) base = await this.options.parent.readBlock(block.index);
    block.mergeBase(base);
  }

  private async writeBlockRange(index: number, inBlock: number, source: Buffer): Promise<void> {
    await this.locks.with(index, async () => {
      let block = this.cache.get(index);
      const isNew = !block;
      if (!block) block = this.cache.insert(index);
      try {
        await this.ensureWritableBuffer(block, isNew);
      } catch (error) {
        if (isNew) this.cache.discardUnwritten(block);
        throw error;
      }
      const data = block.data!;
      source.copy(data, inBlock);
      if (!block.baseMerged) {
        const whole = block.addWrittenRange(inBlock, inBlock + source.length);
        if (whole) {
          block.writtenRanges = [];
          block.baseMerged = true;
        } else if (block.writtenRanges.length > this.options.limits.writtenRangesPerBlockMax) {
          await this.mergeBase(block);
        }
      }
      this.cache.noteWritten(block);
    });
  }

  /** Gives the block a buffer of its own to write into, allocating or copying as needed. */
  private async ensureWritableBuffer(block: CachedBlock, isNew: boolean): Promise<void> {
    if (block.data === null) {
      await this.cache.reserveBuffer();
      block.data = this.cache.newBuffer();
      // A block that was absent and may have content elsewhere gets that content
      // merged in lazily; a zero block (null data in the cache) is known to be zeros.
      if (isNew && this.hasBase(block.index)) {
        block.baseMerged = false;
        block.writtenRanges = [];
      }
      return;
    }
    if (block.dataSharedWithUpload) {
      await this.cache.reserveBuffer();
      block.data = this.cache.copyBuffer(block.data);
      block.dataSharedWithUpload = false;
    }
  }

  /** Makes the block all zeros without holding a buffer; called under its lock. */
  private zeroBlock(index: number): void {
    const block = this.cache.get(index) ?? this.cache.insert(index);
    if (block.data !== null && !block.dataSharedWithUpload) this.cache.releaseBuffer(block.data);
    block.data = null;
    block.dataSharedWithUpload = false;
    block.baseMerged = true;
    block.writtenRanges = [];
    this.cache.noteWritten(block);
  }

  /** Waits until every block dirty at the call is acknowledged; EIO on a failure. */
  private async flushDirty(deadlineMs: number): Promise<void> {
    const failuresBefore = this.flusher.failureCount;
    const targets: Array<{ block: CachedBlock; generation: number }> = [];
    for (const block of this.cache.values()) {
      if (!block.isDirty) continue;
      targets.push({ block, generation: block.writeGeneration });
      this.flusher.enqueue(block);
    }
    for (;;) {
      const pending = targets.filter(({ block, generation }) => block.ackedGeneration < generation);
      if (pending.length === 0) {
        await this.syncJournal();
        this.lastUploadError = undefined;
        return;
      }
      const failed = pending.find(({ block }) => !block.uploading && block.lastFailure !== undefined && block.lastFailure.sequence > failuresBefore);
      if (failed) {
        throw new FileOperationError('EIO', `upload of block ${failed.block.index} failed: ${failed.block.lastFailure!.message}`);
      }
      // A block rewritten during its upload needs one more PUT.
      for (const { block } of pending) if (!block.uploading) this.flusher.enqueue(block);
      const remainingMs = deadlineMs - Date.now();
      if (remainingMs <= 0) {
        throw new FileOperationError('EIO', `${pending.length} dirty blocks were not acknowledged in time`);
      }
      await this.flusher.uploadEnded.wait(Math.min(remainingMs, 1000));
    }
  }

  private async syncJournal(): Promise<void> {
    try {
      await this.journal.sync();
    } catch (error) {
      throw new FileOperationError('EIO', `cannot make the journal durable: ${(error as Error).message}`);
    }
  }

  private writeBackIfOverHighWater(): void {
    const dirtyNotUploading = this.cache.dirtyCount - this.flusher.uploadsInFlight - this.flusher.queuedBlocks;
    if (dirtyNotUploading > this.dirtyHighWaterBlocks) this.writeBack(dirtyNotUploading - this.dirtyHighWaterBlocks);
  }

  /** Queues up to `count` of the least recently used dirty blocks for upload. */
  private writeBack(count: number): void {
    const room = this.options.limits.uploadConcurrency - this.flusher.uploadsInFlight - this.flusher.queuedBlocks;
    let wanted = Math.min(count, room);
    if (wanted <= 0) return;
    for (const block of this.cache.leastRecentFirst()) {
      if (wanted <= 0) break;
      if (!block.isDirty || block.uploading) continue;
      this.flusher.enqueue(block);
      wanted -= 1;
    }
  }

  private progressPercent(): number {
    const done = this.flusher.blocksUploaded;
    return Math.min(100, Math.floor((100 * done) / Math.max(1, done + this.cache.dirtyCount)));
  }

  private reportUploadFailure(index: number, message: string): void {
    if (this.lastUploadError === undefined) this.log(`ebs-fuse: upload of block ${index} failed: ${message}`);
    this.lastUploadError = message;
  }
}

function copyOut(block: CachedBlock, inBlock: number, count: number, out: Buffer, outOffset: number): void {
  if (block.data === null) out.fill(0, outOffset, outOffset + count);
  else block.data.copy(out, outOffset, inBlock, inBlock + count);
}
