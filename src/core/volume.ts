// The volume: the one file of a mount, as plain async operations over the block
// cache, the flusher and the block store. docs/SEMANTICS.md is its contract.
import { sha256Digest } from '../ebs/checksum';
import { BLOCK_SIZE_BYTES, BLOCKS_PER_GIB, type SnapshotClient } from '../ebs/client';
import { BlockCache, BlockLocks, type CachedBlock } from './block-cache';
import { blockSegments } from './block-segments';
import { BlockStore } from './block-store';
import { FileOperationError } from './file-errors';
import { Flusher } from './flusher';
import { directCopyWritesAtOnce, type CoreLimits } from './limits';
import type { SnapshotReader } from './snapshot-reader';
import { ZERO_BLOCK } from './transfer';
import type { VolumeFile, VolumeStats } from './volume-file';
import { describeError } from '../errors';

/** How long close() lets in-flight uploads finish. */
const CLOSE_WAIT_MS = 60_000;
/** Zero blocks (truncated regions) the cache may track beyond its buffers. */
const ZERO_ENTRIES_MAX = 1 << 20;

export interface VolumeOptions {
  client: SnapshotClient;
  snapshotId: string;
  volumeSizeGiB: number;
  /** The snapshot's state directory: the journal and the local copy. */
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
  private readonly locks = new BlockLocks();
  private readonly cache: BlockCache;
  private readonly flusher: Flusher;
  private lastUploadError?: string;
  private readonly log: (line: string) => void;
  private bytesWritten = 0;

  /**
   * Opens the volume over its state directory. A journal left by an earlier
   * mount of the snapshot is replayed, and blocks that were being sent are
   * settled and sent again (block-store.ts).
   */
  static async open(options: VolumeOptions): Promise<Volume> {
    const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
    const { store, resend } = await BlockStore.open({
      directory: options.stateDirectory,
      diskBudget: options.limits.diskCacheSizeBytes,
      directCopyWritesAtOnce: directCopyWritesAtOnce(options.limits),
      parent: options.parent,
      log,
    });
    const volume = new Volume(options, store, log);
    for (const index of resend) await volume.resend(index);
    return volume;
  }

  private constructor(
    private readonly options: VolumeOptions,
    private readonly store: BlockStore,
    log: (line: string) => void,
  ) {
    this.sizeBytes = options.volumeSizeGiB * BLOCKS_PER_GIB * BLOCK_SIZE_BYTES;
    this.log = log;
    const capacityBlocks = Math.max(2, Math.floor(options.limits.cacheSizeBytes / BLOCK_SIZE_BYTES));
    this.cache = new BlockCache({
      capacityBlocks,
      writerWaitTimeoutMs: options.limits.writerWaitTimeoutMs,
      zeroEntriesMax: ZERO_ENTRIES_MAX,
      requestWriteback: () => this.flusher.writeBack(),
      isLocked: (index) => this.locks.isLocked(index),
    });
    this.flusher = new Flusher({
      client: options.client,
      snapshotId: options.snapshotId,
      cache: this.cache,
      locks: this.locks,
      store,
      concurrency: options.limits.uploadConcurrency,
      dirtyHighWaterBlocks: Math.max(1, Math.floor(capacityBlocks * options.limits.dirtyHighWaterRatio)),
      zeroSkipAllowed: options.zeroSkipAllowed,
      onUploadFailed: (index, message) => this.reportUploadFailure(index, message),
    });
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
      this.flusher.noteWritten(await this.writeBlockRange(index, inBlock, data.subarray(fromStart, fromStart + count)));
    }
    this.flusher.writeBackIfOverHighWater();
    this.bytesWritten += end - offsetBytes;
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
    const candidates = new Set<number>(this.store.knownBlocks());
    for (const block of this.cache.values()) candidates.add(block.index);
    for (const index of [...candidates].filter((candidate) => candidate >= firstWhole).sort((a, b) => a - b)) {
      const cached = this.cache.peek(index);
      // Already acknowledged as zeros: nothing to change.
      if (cached && cached.isClean && cached.data === null) continue;
      await this.locks.with(index, async () => this.cache.zero(this.cache.get(index) ?? this.cache.insert(index)));
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

  /** ChangedBlocksCount and LINEAR checksum (unless a block is unsettled) of everything acknowledged. */
  completionFigures(): { changedBlocksCount: number; linearChecksumBase64?: string } {
    return this.store.completionFigures();
  }

  stats(): VolumeStats {
    return {
      dirtyBlocks: this.cache.dirtyCount,
      uploadingBlocks: this.flusher.uploadsInFlight,
      cachedBlocks: this.cache.size,
      blocksUploaded: this.flusher.blocksUploaded,
      bytesUploaded: this.flusher.blocksUploaded * BLOCK_SIZE_BYTES,
      distinctBlocksPut: this.store.acknowledgedCount,
      retries: this.options.retryCount?.() ?? 0,
      lastUploadError: this.lastUploadError,
      bytesWritten: this.bytesWritten,
      ...this.store.stats(),
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

  /**
   * Sends a block with known content again, to restart the snapshot's idle
   * timer: a clean block in memory, else one the local copy or the zero record
   * gives, else (nothing acknowledged, no parent) block 0 as the zeros it reads
   * as. Rejects when no block's content is known.
   */
  async keepAlive(): Promise<void> {
    for (const block of this.cache.cleanLeastRecentFirst()) {
      if (block.baseMerged && this.store.wasAttempted(block.index)) return this.resend(block.index);
    }
    const known = this.store.keepAliveCandidate();
    if (known !== undefined) return this.resend(known);
    if (this.store.acknowledgedCount === 0 && !this.options.parent) return this.resend(0, { evenIfZero: true });
    throw new Error('no acknowledged block is in memory or in the local copy to send again');
  }

  /**
   * Sends a block again with its current content: after a crash for a block
   * that was in flight, and to restart the snapshot's idle timer.
   */
  private async resend(index: number, options: { evenIfZero?: boolean } = {}): Promise<void> {
    await this.locks.with(index, async () => {
      let block = this.cache.get(index);
      if (!block) {
        block = this.cache.insert(index);
        try {
          // Empty written ranges: the whole content is the block's base.
          await this.cache.makeWritable(block, this.store.hasBase(index));
        } catch (error) {
          this.cache.discardUnwritten(block);
          throw error;
        }
      }
      // A block that was never sent and reads as zeros would be skipped by the
      // zero-block rule; the idle keep-alive needs a real PUT.
      if (options.evenIfZero) this.flusher.exemptFromZeroSkip(index);
      this.cache.markForResend(block);
      this.flusher.enqueue(block);
    });
  }

  /**
   * After a final flush that failed: stops uploading and writes every dirty
   * block to the local copy, so that `--resume` or `ebs-fuse complete` can send
   * it. Says how many blocks were kept and how many could not be (no room, or a
   * block written in part whose other bytes are held nowhere).
   */
  async preserveDirty(): Promise<{ keptBlocks: number; lostBlocks: number }> {
    await this.flusher.stop(CLOSE_WAIT_MS);
    let keptBlocks = 0;
    let lostBlocks = 0;
    for (const block of [...this.cache.values()]) {
      if (!block.isDirty) continue;
      const kept = await this.locks.with(block.index, async () => {
        try {
          if (!block.baseMerged) this.cache.mergeBase(block, await this.store.readBlock(block.index, 'write'));
        } catch {
          return false;
        }
        const body = block.data ?? ZERO_BLOCK;
        return this.store.preserve(block.index, sha256Digest(body), body);
      });
      if (kept) keptBlocks += 1;
      else lostBlocks += 1;
    }
    await this.store.syncCopies();
    return { keptBlocks, lostBlocks };
  }

  /** Stops uploading (in-flight PUTs end first, bounded) and closes the files. */
  async close(): Promise<void> {
    await this.flusher.stop(CLOSE_WAIT_MS);
    await this.store.close();
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
          if (!block.baseMerged) this.cache.mergeBase(block, await this.store.readBlock(index, 'read'));
          copyOut(block, inBlock, count, out, outOffset);
        } else {
          (await this.store.readRange(index, inBlock, count)).copy(out, outOffset);
        }
      });
      return;
    }
    (await this.store.readRange(index, inBlock, count)).copy(out, outOffset);
  }

  /** Resolves with the block written. */
  private async writeBlockRange(index: number, inBlock: number, source: Buffer): Promise<CachedBlock> {
    return this.locks.with(index, async () => {
      let block = this.cache.get(index);
      const isNew = !block;
      if (!block) block = this.cache.insert(index);
      let copied: boolean;
      try {
        copied = await this.cache.makeWritable(block, isNew && this.store.hasBase(index), source);
        // Too many scattered pieces: merge the base first, so that a failure
        // (a base held nowhere) leaves the block as it was.
        if (!block.baseMerged && block.writtenRanges.length >= this.options.limits.writtenRangesPerBlockMax) {
          this.cache.mergeBase(block, await this.store.readBlock(index, 'write'));
        }
      } catch (error) {
        if (isNew) this.cache.discardUnwritten(block);
        throw error;
      }
      if (!copied) source.copy(block.data!, inBlock);
      this.cache.noteWritten(block, inBlock, source.length);
      return block;
    });
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
      // An upload that carried the data may still be writing its local copy:
      // wait for it, so that the sync below makes that copy's record durable too.
      const copying = targets.some(({ block, generation }) => block.uploading && block.uploadGeneration <= generation);
      if (pending.length === 0 && !copying) {
        await this.syncJournal();
        this.lastUploadError = undefined;
        return;
      }
      const failed = pending.find(
        ({ block }) => !block.uploading && block.lastFailure !== undefined && block.lastFailure.sequence > failuresBefore,
      );
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
      await this.store.sync();
    } catch (error) {
      throw new FileOperationError('EIO', `cannot make the state durable: ${describeError(error)}`);
    }
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
