// The flusher: uploads dirty blocks as PutSnapshotBlock calls, at most
// `concurrency` PUTs at once and never two of one block, and decides which dirty
// blocks go in the background (write-back). What the snapshot holds is the
// block store's record; the flusher tells it each step of an upload.
import { Semaphore } from 'async-mutex';
import { sha256DigestOffThread } from '../ebs/checksum';
import type { SnapshotClient } from '../ebs/client';
import type { BlockCache, BlockLocks, CachedBlock } from './block-cache';
import { ZERO_DIGEST, type BlockStore } from './block-store';
import { ChangeSignal } from './signal';
import { isZeroBlock, ZERO_BLOCK } from './transfer';
import { describeError } from '../errors';

/** Streamed blocks sent together at most (noteWritten). */
const STREAM_BATCH_BLOCKS_MAX = 16;
/**
 * Uploads prepared while every PUT slot is taken: a quarter of the slots, at
 * most this many. Without service latency, 16 ahead of 64 slots only queued
 * more at a busy server (6 % less throughput and up to 9 % more CPU per GiB
 * than none ahead), while 4 measured alike with none.
 */
const PREPARED_AHEAD_MAX = 4;

export interface FlusherOptions {
  client: SnapshotClient;
  snapshotId: string;
  cache: BlockCache;
  locks: BlockLocks;
  store: BlockStore;
  concurrency: number;
  /** Dirty blocks not uploading beyond this count are uploaded in the background. */
  dirtyHighWaterBlocks: number;
  /**
   * The contract's zero-block rule: an all-zero block may be skipped only in a
   * fresh snapshot with no parent, not encrypted, and only if it was never sent.
   */
  zeroSkipAllowed: boolean;
  /** Told once per final upload failure, for the one clear log line. */
  onUploadFailed: (blockIndex: number, message: string) => void;
}

export class Flusher {
  /** When the service last acknowledged a PUT (the snapshot's idle timer restarts). */
  lastPutAckMs = Date.now();
  /** Wakes waiters (fsync, writers) whenever an upload ends, well or badly. */
  readonly uploadEnded = new ChangeSignal();
  blocksUploaded = 0;
  /** Final upload failures so far; each failure carries its number. */
  failureCount = 0;
  zeroBlocksSkipped = 0;
  private readonly queue = new Set<number>();
  /** Blocks to PUT even as never-sent zeros (the keep-alive's block 0); at most one. */
  private readonly zeroSkipExempt = new Set<number>();
  /** Uploads begun and not ended: preparing, waiting for a PUT slot, in their PUT or writing their copy. */
  private inFlight = 0;
  /**
   * The PUTs in flight, `concurrency` at most. An upload takes its slot only for
   * the PUT: the hash and the durable intent before it, and the copy after it,
   * run outside, so a slot freed is taken by a PUT ready to go. With 16 slots
   * and 50 ms per PUT the mount sent 6 % more per second than when each slot
   * also carried those steps (docs/BENCHMARKS.md).
   */
  private readonly putSlots: Semaphore;
  private stopped = false;
  /** Blocks a stream finished since the last streamed batch went (some may have gone otherwise since). */
  private streamedWaiting = 0;

  constructor(private readonly options: FlusherOptions) {
    this.putSlots = new Semaphore(options.concurrency);
  }

  get uploadsInFlight(): number {
    return this.inFlight;
  }

  /** Asks for the block's current generation to be uploaded. */
  enqueue(block: CachedBlock): void {
    block.flushWantedGeneration = Math.max(block.flushWantedGeneration, block.writeGeneration);
    if (!block.isDirty || this.stopped) return;
    this.queue.add(block.index);
    this.pump();
  }

  /** The next upload of the block is sent even if it is all zeros and was never sent. */
  exemptFromZeroSkip(index: number): void {
    this.zeroSkipExempt.clear();
    this.zeroSkipExempt.add(index);
  }

  /**
   * After a write to the block. A block that a stream (dd, cp, qemu-img) has
   * just written whole, front to back, is done with: once a batch of them waits
   * and the batch has upload slots, the batch goes without waiting for the
   * high-water mark, so the uploads overlap the writes from the first blocks
   * on. A batch, not each block as it completes: one at a time, every intent got
   * a journal commit of its own, and the mount spent 18 % more CPU per GiB
   * (docs/BENCHMARKS.md). Random writers write in other orders and wait for
   * write-back, where rewrites coalesce.
   */
  noteWritten(block: CachedBlock): void {
    if (!block.streamedWholeSinceUpload || !this.isQueueable(block)) return;
    this.streamedWaiting += 1;
    this.sendStreamedBatch();
  }

  /** After a write: uploads the coldest dirty blocks beyond the high-water mark. */
  writeBackIfOverHighWater(): void {
    const dirtyNotUploading = this.options.cache.dirtyCount - this.inFlight - this.queue.size;
    if (dirtyNotUploading > this.options.dirtyHighWaterBlocks) this.writeBack(dirtyNotUploading - this.options.dirtyHighWaterBlocks);
  }

  /**
   * Queues up to `count` dirty blocks (at most one upload window), least
   * recently used or changed first within each tier (the cache's dirty order):
   * 1. written whole since their last upload: a stream has passed over them
   *    (dd, cp, a random writer's finished block), so they are the least likely
   *    to be written again, and uploading them early costs no second PUT;
   * 2. other blocks whose content is complete (base merged);
   * 3. blocks still waiting for their base (the merge reads it).
   * A block whose base is held nowhere is left for fsync to report: uploading
   * it cannot succeed until it is written whole.
   */
  writeBack(count = this.uploadWindow): void {
    this.queueColdest(count, false);
  }

  /** Queues up to `count` blocks by writeBack's tiers, or only streamed ones; returns how many. */
  private queueColdest(count: number, onlyStreamed: boolean): number {
    let wanted = Math.min(count, this.slotsFree);
    const queueable = wanted;
    // One pass over the cache (this runs after every write above the high-water
    // mark): tier 1 is queued as found, tiers 2 and 3 are kept, in LRU order, for after.
    const later: [CachedBlock[], CachedBlock[]] = [[], []];
    for (const block of this.options.cache.dirtyLeastRecentFirst()) {
      if (wanted <= 0) return queueable;
      if (!this.isQueueable(block)) continue;
      if (onlyStreamed && !block.streamedWholeSinceUpload) continue;
      const tier = writeBackTier(block);
      if (tier === 1) {
        this.enqueue(block);
        wanted -= 1;
        continue;
      }
      if (tier === 3 && this.options.store.base(block.index) === 'nowhere') continue;
      const kept = later[tier - 2];
      if (kept.length < wanted) kept.push(block);
    }
    for (const block of [...later[0], ...later[1]]) {
      if (wanted <= 0) break;
      this.enqueue(block);
      wanted -= 1;
    }
    return queueable - wanted;
  }

  /**
   * Uploads begun at once, at most: the PUT slots and those prepared while the
   * slots are full. Each holds its block's buffer, which the cache counts
   * within its capacity.
   */
  private get uploadWindow(): number {
    return this.options.concurrency + this.quarterOfPutSlots(PREPARED_AHEAD_MAX);
  }

  /** A quarter of the PUT slots, at least 1 and at most `max`. */
  private quarterOfPutSlots(max: number): number {
    return Math.max(1, Math.min(max, Math.floor(this.options.concurrency / 4)));
  }

  /** Uploads that may still be queued before the window is full. */
  private get slotsFree(): number {
    return Math.max(0, this.uploadWindow - this.inFlight - this.queue.size);
  }

  /** Dirty, and neither uploading nor queued. */
  private isQueueable(block: CachedBlock): boolean {
    return block.isDirty && !block.uploading && !this.queue.has(block.index);
  }

  /** A quarter of the PUT slots, at most 16 blocks: the intents one journal commit carries. */
  private get streamBatchBlocks(): number {
    return this.quarterOfPutSlots(STREAM_BATCH_BLOCKS_MAX);
  }

  private sendStreamedBatch(): void {
    const batch = this.streamBatchBlocks;
    if (this.stopped || this.streamedWaiting < batch || this.slotsFree < batch) return;
    const wanted = Math.min(this.streamedWaiting, this.slotsFree);
    const queued = this.queueColdest(wanted, true);
    // Fewer found than counted: the rest went by write-back or fsync meanwhile.
    this.streamedWaiting = queued < wanted ? 0 : this.streamedWaiting - queued;
  }

  /** Takes no more work and waits (at most timeoutMs) for uploads in flight to end. */
  async stop(timeoutMs: number): Promise<void> {
    this.stopped = true;
    this.queue.clear();
    const deadlineMs = Date.now() + timeoutMs;
    while (this.inFlight > 0 && Date.now() < deadlineMs) await this.uploadEnded.wait(deadlineMs - Date.now());
  }

  private pump(): void {
    while (this.inFlight < this.uploadWindow && this.queue.size > 0) {
      const index: number = this.queue.values().next().value!;
      this.queue.delete(index);
      this.inFlight += 1;
      void this.upload(index).finally(() => {
        this.inFlight -= 1;
        this.uploadEnded.notify();
        this.pump();
        this.sendStreamedBatch();
      });
    }
  }

  private async upload(index: number): Promise<void> {
    const { cache, locks, store } = this.options;
    // Take a stable view of the block under its lock; the PUT itself runs unlocked
    // and later writes copy the buffer instead of changing what is being sent.
    let taken;
    try {
      taken = await locks.with(index, async () => {
        const block = cache.peek(index);
        if (!block || !block.isDirty || block.uploading) return undefined;
        try {
          if (!block.baseMerged) cache.mergeBase(block, await store.readBlock(index, 'write'));
        } catch (error) {
          this.fail(block, error);
          return undefined;
        }
        return { block, view: cache.beginUpload(block) };
      });
    } catch (error) {
      // beginUpload's invariants: a bug, carried by the block so that fsync reports it.
      const block = cache.peek(index);
      if (block) this.fail(block, error);
      else this.options.onUploadFailed(index, describeError(error));
      return;
    }
    if (!taken) return;
    const { block, view } = taken;
    try {
      await this.send(block, view.data ?? ZERO_BLOCK, view.written, view.generation);
    } catch (error) {
      this.fail(block, error);
    } finally {
      store.uploadEnded(index);
      cache.endUpload(block, view.data);
    }
    // Rewritten while uploading, and somebody is waiting for the newer content.
    if (block.lastFailure === undefined && block.isDirty && block.flushWantedGeneration > block.ackedGeneration) this.enqueue(block);
  }

  private async send(block: CachedBlock, body: Buffer, written: 'whole' | 'pieces', generation: number): Promise<void> {
    const { cache, store } = this.options;
    const index = block.index;
    const isZero = isZeroBlock(body);
    if (this.options.zeroSkipAllowed && isZero && !store.wasAttempted(index) && !this.zeroSkipExempt.delete(index)) {
      // Never sent and all zeros: the snapshot already reads zeros there.
      this.zeroBlocksSkipped += 1;
      cache.acknowledge(block, generation);
      return;
    }
    // Off the event loop: the next FUSE write need not wait behind this hash.
    const digest = isZero ? ZERO_DIGEST : await sha256DigestOffThread(body);
    const copy = store.copyPlan(index, digest, written);
    const slot = await store.announce(index, digest, body, copy);
    try {
      await this.putSlots.runExclusive(() =>
        this.options.client.putSnapshotBlock({
          snapshotId: this.options.snapshotId,
          blockIndex: index,
          data: body,
          checksumBase64: digest.toString('base64'),
          progressPercent: this.progressPercent(),
        }),
      );
    } catch (error) {
      store.putFailed(slot);
      throw error;
    }
    store.acknowledged(index, digest, slot, copy.kind);
    cache.acknowledge(block, generation);
    this.lastPutAckMs = Date.now();
    this.blocksUploaded += 1;
    // The ack is already visible to fsync; the block stays `uploading` (not
    // evictable, writes copy first) only while this copy is written.
    if (copy.plan === 'after') await store.copyAfterAck(index, digest, body, copy.kind);
  }

  private fail(block: CachedBlock, error: unknown): void {
    const message = describeError(error);
    this.failureCount += 1;
    this.options.cache.failUpload(block, { sequence: this.failureCount, message });
    this.options.onUploadFailed(block.index, message);
  }

  /** The x-amz-Progress figure: blocks acknowledged against those acknowledged or still dirty. */
  private progressPercent(): number {
    const done = this.blocksUploaded;
    return Math.min(100, Math.floor((100 * done) / Math.max(1, done + this.options.cache.dirtyCount)));
  }
}

function writeBackTier(block: CachedBlock): 1 | 2 | 3 {
  if (!block.baseMerged) return 3;
  return block.writtenWholeSinceUpload ? 1 : 2;
}
