// The block store: what the snapshot holds for each block, and where the mount
// finds a block's bytes once they have left memory. It owns the record of
// acknowledged blocks (ChangedBlocksCount and LINEAR), the journal, the local
// copy and the parent. The volume asks it for base content; the flusher tells
// it each step of an upload. Neither keeps block records of its own.
//
// Where a block not in memory reads from (base()):
//   its local copy → else, if acknowledged as all zeros, zeros (the fact is kept,
//   not the bytes) → else, if acknowledged or unsettled, NOWHERE (EIO: a pending
//   snapshot cannot be read through the EBS API) → else the parent → else zeros.
//
// Crash and resume. A block whose last journal record is an intent is settled
// at open, in this order:
//   1. its new content lies in a local-copy slot that hashes right: send it again;
//   2. it had no acknowledged content (or zeros): send that old content again
//      (zeros, or the parent's block), so the service ends with the old content;
//   3. its old acknowledged content lies in a slot that hashes right: send that again;
//   4. otherwise the service holds the old or the new content and nobody can
//      tell which: the block is unsettled, reads of it fail, and completion
//      leaves out the LINEAR checksum (it is optional; the count stays exact)
//      unless the block is written and acknowledged again.
import { linearChecksumBase64, sha256Digest } from '../ebs/checksum';
import { BLOCK_SIZE_BYTES } from '../ebs/client';
import { FileOperationError } from './file-errors';
import { Journal, NO_SLOT, RECORD_BYTES, type CompactBlock, type JournalReplay } from './journal';
import { LocalCopy, type CopyKind, type DiskBudget } from './local-copy';
import type { SnapshotReader } from './snapshot-reader';
import { ZERO_BLOCK } from './transfer';

export type BlockBase = 'zeros' | 'copy' | 'parent' | 'nowhere';

/** When the copy of a block is written: before its PUT (crash-exact), after its ack, or not at all. */
export type CopyPlan = 'before' | 'after' | 'none';

export const ZERO_DIGEST = sha256Digest(ZERO_BLOCK);

/** The journal is compacted once it is this many times its compacted size... */
const COMPACT_RATIO = 2;
/** ...and at least this large. */
const COMPACT_MIN_BYTES = 4 * 1024 * 1024;
/** Blocks held nowhere that get a log line of their own; the rest are counted. */
const NOWHERE_LOG_LINES_MAX = 20;

export interface BlockStoreOptions {
  directory: string;
  diskBudget: DiskBudget;
  /** Copy writes past the page cache at once (local-copy.ts); more wait their turn. */
  directCopyWritesAtOnce: number;
  parent?: SnapshotReader;
  log: (line: string) => void;
}

export interface BlockStoreStats {
  localCopyBlocks: number;
  localCopyFileBytes: number;
  localCopyBytesWritten: number;
  localCopyWriteCount: number;
  journalBytes: number;
  journalBytesWritten: number;
  heldNowhereErrors: number;
  unsettledBlocks: number;
}

export class BlockStore {
  /** Raw SHA-256 of the latest acknowledged content of every block PUT. */
  private readonly acked: Map<number, Buffer>;
  /** The last intent of blocks not acknowledged since: being sent, failed, or unsettled. */
  private readonly intents = new Map<number, { digest: Buffer; slot: number }>();
  /** Blocks whose content on the service is one of two (case 4 above). */
  private readonly unsettled = new Set<number>();
  /** Blocks with an upload in progress: their copies are not displaced meanwhile. */
  private readonly uploading = new Set<number>();
  private readonly loggedNowhere = new Set<number>();
  private heldNowhereErrors = 0;
  private compacting?: Promise<void>;
  private readonly isBusy = (blockIndex: number): boolean => this.uploading.has(blockIndex);

  private constructor(
    private readonly options: BlockStoreOptions,
    private readonly journal: Journal,
    private readonly localCopy: LocalCopy,
    replay: JournalReplay,
  ) {
    this.acked = new Map(replay.acknowledged);
  }

  /** Opens the state, settles blocks left in flight (above), and returns those to send again. */
  static async open(options: BlockStoreOptions): Promise<{ store: BlockStore; resend: number[] }> {
    // eslint-disable-next-line prefer-const -- the journal's sync callback closes over it before it is assigned
    let localCopy: LocalCopy | undefined;
    const { journal, replay } = await Journal.open(options.directory, async () => localCopy?.sync());
    localCopy = new LocalCopy(options.directory, options.diskBudget, replay.slotCount, {
      mode: 'direct',
      directAtOnce: options.directCopyWritesAtOnce,
    });
    const store = new BlockStore(options, journal, localCopy, replay);
    const resend = await store.settle(replay);
    // A fresh start after compaction; a full disk just leaves the longer journal.
    if (replay.acknowledged.size + replay.unacknowledged.size > 0) await store.compactNow().catch(() => undefined);
    return { store, resend };
  }

  private async settle(replay: JournalReplay): Promise<number[]> {
    // The newest claim first; a slot another block took already is passed over.
    const adoptClaim = (blockIndex: number, digest: Buffer | undefined): boolean => {
      const claims = replay.slotClaims.get(blockIndex) ?? [];
      for (let at = claims.length - 1; at >= 0; at -= 1) {
        if (digest && claims[at].digest.equals(digest) && this.localCopy.adopt(blockIndex, claims[at].slot, digest)) return true;
      }
      return false;
    };
    const verifiedCopy = async (blockIndex: number, digest: Buffer | undefined): Promise<boolean> =>
      adoptClaim(blockIndex, digest) && (await this.localCopy.readRange(blockIndex, 0, BLOCK_SIZE_BYTES)) !== undefined;
    const resend: number[] = [];
    for (const [blockIndex, newDigest] of replay.unacknowledged) {
      const oldDigest = this.acked.get(blockIndex);
      this.intents.set(blockIndex, { digest: newDigest, slot: NO_SLOT });
      if ((await verifiedCopy(blockIndex, newDigest)) || oldDigest === undefined || oldDigest.equals(ZERO_DIGEST)) {
        resend.push(blockIndex);
      } else if (await verifiedCopy(blockIndex, oldDigest)) {
        resend.push(blockIndex);
      } else {
        this.unsettled.add(blockIndex);
      }
    }
    // Copies of acknowledged content, checked on first read.
    for (const [blockIndex, digest] of this.acked) {
      if (!replay.unacknowledged.has(blockIndex)) adoptClaim(blockIndex, digest);
    }
    return resend.sort((a, b) => a - b);
  }

  /** Where a block that is not in memory reads from. */
  base(blockIndex: number): BlockBase {
    if (this.localCopy.holds(blockIndex)) return 'copy';
    if (this.unsettled.has(blockIndex)) return 'nowhere';
    const digest = this.acked.get(blockIndex);
    if (digest) return digest.equals(ZERO_DIGEST) ? 'zeros' : 'nowhere';
    if (this.options.parent?.has(blockIndex)) return 'parent';
    return 'zeros';
  }

  /** True when a block not in memory reads as something other than zeros (or cannot be read). */
  hasBase(blockIndex: number): boolean {
    return this.base(blockIndex) !== 'zeros';
  }

  /** `count` bytes at `inBlock` of a block not in memory; EIO when it is held nowhere. */
  async readRange(blockIndex: number, inBlock: number, count: number): Promise<Buffer> {
    return (await this.readBase(blockIndex, inBlock, count, 'read')) ?? Buffer.alloc(count);
  }

  /** The whole base of a block (null for zeros), to merge under partial writes; EIO when held nowhere. */
  readBlock(blockIndex: number, purpose: 'read' | 'write'): Promise<Buffer | null> {
    return this.readBase(blockIndex, 0, BLOCK_SIZE_BYTES, purpose);
  }

  private async readBase(blockIndex: number, inBlock: number, count: number, purpose: 'read' | 'write'): Promise<Buffer | null> {
    for (;;) {
      const base = this.base(blockIndex);
      if (base === 'zeros') return null;
      if (base === 'parent') return this.options.parent!.readRange(blockIndex, inBlock, count);
      if (base === 'nowhere') throw this.heldNowhere(blockIndex, purpose);
      // A copy that fails its check is dropped: ask again where the block is.
      const bytes = await this.localCopy.readRange(blockIndex, inBlock, count);
      if (bytes) return bytes;
    }
  }

  /** A PUT may have been sent for the block: the service may hold it even without an ack. */
  wasAttempted(blockIndex: number): boolean {
    return this.acked.has(blockIndex) || this.intents.has(blockIndex);
  }

  /** Every block the snapshot may hold content for (for truncation). */
  *knownBlocks(): Generator<number> {
    yield* this.acked.keys();
    yield* this.intents.keys();
    if (this.options.parent) yield* this.options.parent.blockIndexes();
  }

  /** An acknowledged block whose content the local copy or the zero record gives, for a keep-alive PUT. */
  keepAliveCandidate(): number | undefined {
    for (const [blockIndex, digest] of this.acked) {
      if (this.uploading.has(blockIndex)) continue;
      if (digest.equals(ZERO_DIGEST) || this.localCopy.heldDigest(blockIndex)?.equals(digest)) return blockIndex;
    }
    return undefined;
  }

  get acknowledgedCount(): number {
    return this.acked.size;
  }

  // ---- one upload, step by step (the flusher) ----

  /**
   * Whether and when this content gets a copy, and of which class: `written`
   * says how the block was written since its last upload.
   */
  copyPlan(blockIndex: number, digest: Buffer, written: 'whole' | 'pieces'): { plan: CopyPlan; kind: CopyKind } {
    // A block sent before and written again is file-system metadata or a hot
    // spot, the likeliest to be read or rewritten in part once more, however it
    // was written this time; a block written in part comes next.
    const kind: CopyKind = this.wasAttempted(blockIndex) ? 'rewritten' : written === 'whole' ? 'whole' : 'pieces';
    if (!this.copyWanted(blockIndex, digest)) return { plan: 'none', kind };
    // A copy made before the PUT lets a resume send a block written in part
    // again exactly; one written whole is copied after its ack, off the upload's path.
    return { plan: written === 'whole' ? 'after' : 'before', kind };
  }

  private copyWanted(blockIndex: number, digest: Buffer): boolean {
    return this.localCopy.enabled && !digest.equals(ZERO_DIGEST) && !this.localCopy.heldDigest(blockIndex)?.equals(digest);
  }

  /**
   * Makes the intent durable, then (with plan 'before') writes the copy; the
   * PUT may go out once this resolves. Resolves with the slot written, or NO_SLOT.
   */
  async announce(blockIndex: number, digest: Buffer, body: Buffer, copy: { plan: CopyPlan; kind: CopyKind }): Promise<number> {
    this.uploading.add(blockIndex);
    let slot = copy.plan === 'before' ? ((await this.localCopy.allocate(copy.kind, this.isBusy)) ?? NO_SLOT) : NO_SLOT;
    this.intents.set(blockIndex, { digest, slot });
    try {
      await this.journal.recordIntent(blockIndex, digest, slot);
    } catch (error) {
      if (slot !== NO_SLOT) this.localCopy.release(slot);
      this.uploading.delete(blockIndex);
      throw error;
    }
    if (slot !== NO_SLOT && !(await this.localCopy.write(slot, body))) slot = NO_SLOT;
    return slot;
  }

  /** The PUT failed: the intent stays (the service may hold the block), the new copy goes. */
  putFailed(slot: number): void {
    if (slot !== NO_SLOT) this.localCopy.release(slot);
  }

  /** The service acknowledged `digest`; `slot` holds it when a copy was written before the PUT. */
  acknowledged(blockIndex: number, digest: Buffer, slot: number, kind: CopyKind): void {
    this.acked.set(blockIndex, digest);
    this.intents.delete(blockIndex);
    this.unsettled.delete(blockIndex);
    let ackSlot = slot;
    if (slot !== NO_SLOT) this.localCopy.commit(blockIndex, slot, digest, kind);
    else if (this.localCopy.heldDigest(blockIndex)?.equals(digest)) ackSlot = this.localCopy.heldSlot(blockIndex)!;
    else this.localCopy.retire(blockIndex);
    this.journal.recordAck(blockIndex, digest, ackSlot);
    this.compactIfLarge();
  }

  /**
   * A copy of acknowledged content, made only when its class can have a slot
   * (local-copy.ts), and skipped while the disk is behind:
   * it serves later reads, never the crash guarantees, so it must not slow the uploads.
   */
  async copyAfterAck(blockIndex: number, digest: Buffer, body: Buffer, kind: CopyKind): Promise<void> {
    if (this.localCopy.isBehind) return;
    const slot = await this.localCopy.allocate(kind, this.isBusy);
    if (slot === undefined || !(await this.localCopy.write(slot, body))) return;
    if (!this.acked.get(blockIndex)?.equals(digest)) {
      this.localCopy.release(slot);
      return;
    }
    this.localCopy.commit(blockIndex, slot, digest, kind);
    this.journal.recordCopy(blockIndex, digest, slot);
  }

  /**
   * Keeps content that could not be uploaded (a final flush that failed) in the
   * local copy, announced by an intent, so that a resume sends it (case 1 above).
   * False when no slot could be had or written.
   */
  async preserve(blockIndex: number, digest: Buffer, body: Buffer): Promise<boolean> {
    const slot = await this.localCopy.allocate('rewritten', this.isBusy);
    if (slot === undefined) return false;
    this.intents.set(blockIndex, { digest, slot });
    try {
      await this.journal.recordIntent(blockIndex, digest, slot);
    } catch {
      this.localCopy.release(slot);
      return false;
    }
    if (!(await this.localCopy.write(slot, body))) return false;
    this.localCopy.commit(blockIndex, slot, digest, 'rewritten');
    return true;
  }

  /** Makes the local copy durable now (after preserve()). */
  async syncCopies(): Promise<void> {
    await this.localCopy.sync();
  }

  /** The upload of the block has ended, well or badly. */
  uploadEnded(blockIndex: number): void {
    this.uploading.delete(blockIndex);
  }

  // ---- completion, durability, status ----

  /**
   * ChangedBlocksCount and LINEAR checksum of everything acknowledged. The
   * checksum is left out while a block is unsettled: its content is one of two.
   */
  completionFigures(): { changedBlocksCount: number; linearChecksumBase64?: string } {
    if (this.unsettled.size > 0) return { changedBlocksCount: this.acked.size };
    return { changedBlocksCount: this.acked.size, linearChecksumBase64: linearChecksumBase64(this.acked) };
  }

  get unsettledCount(): number {
    return this.unsettled.size;
  }

  /** Makes every acknowledgement so far durable (the local copy first). */
  async sync(): Promise<void> {
    const retired = this.localCopy.takeRetired();
    try {
      await this.journal.sync();
    } catch (error) {
      this.localCopy.keepRetired(retired);
      throw error;
    }
    // The acks that retired these copies are durable now: their slots may be reused.
    this.localCopy.reuseRetired(retired);
  }

  stats(): BlockStoreStats {
    return {
      localCopyBlocks: this.localCopy.blocksHeld,
      localCopyFileBytes: this.localCopy.fileBytes,
      localCopyBytesWritten: this.localCopy.bytesWritten,
      localCopyWriteCount: this.localCopy.diskWriteCount,
      journalBytes: this.journal.sizeBytes,
      journalBytesWritten: this.journal.bytesWritten,
      heldNowhereErrors: this.heldNowhereErrors,
      unsettledBlocks: this.unsettled.size,
    };
  }

  async close(): Promise<void> {
    await this.compacting;
    await this.journal.close();
    await this.localCopy.close();
  }

  private heldNowhere(blockIndex: number, purpose: 'read' | 'write'): FileOperationError {
    this.heldNowhereErrors += 1;
    const startBytes = blockIndex * BLOCK_SIZE_BYTES;
    const where = `block ${blockIndex} (bytes ${startBytes}-${startBytes + BLOCK_SIZE_BYTES - 1})`;
    const cause = this.unsettled.has(blockIndex)
      ? 'was being uploaded when an earlier mount stopped, and which of its two contents the snapshot holds is not known'
      : 'was uploaded and is no longer in memory or in the local copy, and a pending snapshot cannot be read through the EBS API';
    const what = purpose === 'read' ? 'a read of it' : 'a partial write to it (which needs its other bytes)';
    const message = `${where} is held nowhere: it ${cause}`;
    if (!this.loggedNowhere.has(blockIndex) && this.loggedNowhere.size < NOWHERE_LOG_LINES_MAX) {
      this.loggedNowhere.add(blockIndex);
      this.options.log(
        `ebs-fuse: ${message}; ${what} fails with EIO. Mount with a larger --disk-cache-size to keep more blocks, or write the whole block again` +
          (this.loggedNowhere.size === NOWHERE_LOG_LINES_MAX ? ' (further blocks held nowhere are only counted in the status)' : ''),
      );
    }
    return new FileOperationError('EIO', message);
  }

  private compactIfLarge(): void {
    if (this.compacting) return;
    const compactBytes = (this.acked.size + this.intents.size) * RECORD_BYTES;
    if (this.journal.sizeBytes < Math.max(COMPACT_MIN_BYTES, COMPACT_RATIO * compactBytes)) return;
    // A failure leaves the longer journal in use; the next acks try again.
    this.compacting = this.compactNow()
      .catch(() => undefined)
      .finally(() => {
        this.compacting = undefined;
      });
  }

  private compactNow(): Promise<void> {
    return this.journal.compact(this.lastingState());
  }

  private *lastingState(): Generator<CompactBlock> {
    for (const [blockIndex, digest] of this.acked) {
      const held = this.localCopy.heldDigest(blockIndex)?.equals(digest) ? this.localCopy.heldSlot(blockIndex)! : NO_SLOT;
      const intent = this.intents.get(blockIndex);
      yield { blockIndex, acked: { digest, slot: held }, inFlight: intent && this.inFlightRecord(blockIndex, intent) };
    }
    for (const [blockIndex, intent] of this.intents) {
      if (!this.acked.has(blockIndex)) yield { blockIndex, inFlight: this.inFlightRecord(blockIndex, intent) };
    }
  }

  /** An intent as compaction keeps it: with the slot that holds its content, if any. */
  private inFlightRecord(blockIndex: number, intent: { digest: Buffer; slot: number }): { digest: Buffer; slot: number } {
    if (intent.slot !== NO_SLOT) return intent;
    const held = this.localCopy.heldDigest(blockIndex)?.equals(intent.digest) ? this.localCopy.heldSlot(blockIndex)! : NO_SLOT;
    return { digest: intent.digest, slot: held };
  }
}
