// The flusher: uploads dirty blocks as PutSnapshotBlock calls, at most
// `concurrency` at once and never two of one block. It owns what the snapshot
// has acknowledged: the digest of every block PUT (for ChangedBlocksCount and
// the LINEAR checksum) and which blocks were ever sent.
import { sha256Digest } from '../ebs/checksum';
import { BLOCK_SIZE_BYTES, type SnapshotClient } from '../ebs/client';
import { BlockCache, type BlockLocks, type CachedBlock } from './block-cache';
import type { Journal } from './journal';
import type { ReadbackStore } from './readback-store';
import { ChangeSignal } from './signal';

const ZERO_BLOCK = Buffer.alloc(BLOCK_SIZE_BYTES);

export interface FlusherOptions {
  client: SnapshotClient;
  snapshotId: string;
  cache: BlockCache;
  locks: BlockLocks;
  readback: ReadbackStore;
  journal: Journal;
  /** Where the read-back store and the journal live, for the message when they fail. */
  stateDirectory: string;
  concurrency: number;
  /**
   * The contract's zero-block rule: an all-zero block may be skipped only in a
   * fresh snapshot with no parent, not encrypted, and only if it was never sent.
   */
  zeroSkipAllowed: boolean;
  /** Blocks whose latest content is in the read-back store (shared with the volume). */
  storedBlocks: Set<number>;
  /** Merges a block's base content in before it is hashed; called under its lock. */
  mergeBase: (block: CachedBlock) => Promise<void>;
  /** The x-amz-Progress figure for the next PUT. */
  progressPercent: () => number;
  /** Told once per final upload failure, for the one clear log line. */
  onUploadFailed: (blockIndex: number, message: string) => void;
}

export class Flusher {
  /** Raw SHA-256 of the latest acknowledged content of every block PUT. */
  readonly putDigests: Map<number, Buffer>;
  /** Blocks a PUT was ever attempted for: the service may hold them even if no ack came. */
  readonly attemptedBlocks: Set<number>;
  /** When the service last acknowledged a PUT (the snapshot's idle timer restarts). */
  lastPutAckMs = Date.now();
  /** Wakes waiters (fsync, writers) whenever an upload ends, well or badly. */
  readonly uploadEnded = new ChangeSignal();
  blocksUploaded = 0;
  /** Final upload failures so far; each failure carries its number. */
  failureCount = 0;
  zeroBlocksSkipped = 0;
  private readonly queue = new Set<number>();
  private inFlight = 0;
  private stopped = false;

  constructor(
    private readonly options: FlusherOptions,
    acknowledged: Map<number, Buffer> = new Map(),
    attempted: Iterable<number> = [],
  ) {
    this.putDigests = acknowledged;
    this.attemptedBlocks = new Set(attempted);
  }

  get uploadsInFlight(): number {
    return this.inFlight;
  }

  get queuedBlocks(): number {
    return this.queue.size;
  }

  /** Asks for the block's current generation to be uploaded. */
  enqueue(block: CachedBlock): void {
    block.flushWantedGeneration = Math.max(block.flushWantedGeneration, block.writeGeneration);
    if (!block.isDirty || this.stopped) return;
    this.queue.add(block.index);
    this.pump();
  }

  /** Takes no more work and waits (at most timeoutMs) for uploads in flight to end. */
  async stop(timeoutMs: number): Promise<void> {
    this.stopped = true;
    this.queue.clear();
    const deadlineMs = Date.now() + timeoutMs;
    while (this.inFlight > 0 && Date.now() < deadlineMs) await this.uploadEnded.wait(deadlineMs - Date.now());
  }

  private pump(): void {
    while (this.inFlight < this.options.concurrency && this.queue.size > 0) {
      const index: number = this.queue.values().next().value!;
      this.queue.delete(index);
      this.inFlight += 1;
      void this.upload(index).finally(() => {
        this.inFlight -= 1;
        this.uploadEnded.notify();
        this.pump();
      });
    }
  }

  private async upload(index: number): Promise<void> {
    const { cache, locks } = this.options;
    // Take a stable view of the block under its lock; the PUT itself runs unlocked
    // and later writes copy the buffer instead of changing what is being sent.
    const taken = await locks.with(index, async () => {
      const block = cache.peek(index);
      if (!block || !block.isDirty || block.uploading) return undefined;
      if (!block.baseMerged) await this.options.mergeBase(block);
      block.uploading = true;
      block.uploadGeneration = block.writeGeneration;
      block.dataSharedWithUpload = block.data !== null;
      return { block, data: block.data, generation: block.writeGeneration };
    });
    if (!taken) return;
    const { block, data, generation } = taken;
    try {
      await this.send(index, data ?? ZERO_BLOCK);
      cache.noteAcknowledged(block, generation);
      block.lastFailure = undefined;
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      this.failureCount += 1;
      block.lastFailure = { sequence: this.failureCount, message };
      this.options.onUploadFailed(index, message);
    } finally {
      block.uploading = false;
      if (block.data === data) block.dataSharedWithUpload = false;
      // A copy-on-write during the upload left `data` held by the upload alone, which has ended.
      else if (data !== null) cache.releaseBuffer(data);
      if (block.isClean) cache.roomSignal.notify();
    }
    // Rewritten while uploading, and somebody is waiting for the newer content.
    if (block.lastFailure === undefined && block.isDirty && block.flushWantedGeneration > block.ackedGeneration) this.enqueue(block);
  }

  private async send(index: number, body: Buffer): Promise<void> {
    const { storedBlocks, readback } = this.options;
    if (this.options.zeroSkipAllowed && !this.attemptedBlocks.has(index) && body.equals(ZERO_BLOCK)) {
      // Never sent and all zeros: the snapshot already reads zeros there.
      this.zeroBlocksSkipped += 1;
      return;
    }
    const digest = sha256Digest(body);
    // The intent is durable before the read-back copy changes: a crash in between
    // must leave a journal that says the block is in flight, so that a resume sends
    // again whatever the copy then holds. (With the copy first, a crash before the
    // intent was durable left new bytes under an old ack: the resumed mount showed
    // them, but they never reached the snapshot.) The copy is written before the
    // PUT, since an acknowledged block may be evicted and reads must still find it;
    // the ack's group commit makes the copy durable before the ack.
    this.attemptedBlocks.add(index);
    try {
      await this.options.journal.recordIntent(index, digest);
      await readback.writeBlock(index, body);
    } catch (error) {
      throw new Error(localStorageFailure(error, this.options.stateDirectory));
    }
    storedBlocks.add(index);
    await this.options.client.putSnapshotBlock({
      snapshotId: this.options.snapshotId,
      blockIndex: index,
      data: body,
      checksumBase64: digest.toString('base64'),
      progressPercent: this.options.progressPercent(),
    });
    this.putDigests.set(index, digest);
    this.options.journal.recordAck(index, digest);
    this.lastPutAckMs = Date.now();
    this.blocksUploaded += 1;
  }
}

/** Why the state directory refused a block, and what to do, on one line; the block is not sent. */
function localStorageFailure(error: unknown, stateDirectory: string): string {
  const code = (error as NodeJS.ErrnoException).code;
  const message = error instanceof Error ? error.message.split('\n')[0] : String(error);
  const fix = code === 'ENOSPC' || code === 'EDQUOT' ? 'free space there' : 'check that directory and its file system';
  return `cannot keep the block in the state directory ${stateDirectory} (${message}); ${fix}: the data stays in memory and the next fsync tries again`;
}
