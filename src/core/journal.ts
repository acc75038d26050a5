// The journal: an append-only record, per snapshot, of what was sent, what the
// service acknowledged and where the local copy keeps which block, so that a
// mount that died can be resumed and completed with the right ChangedBlocksCount
// and LINEAR checksum. It is compacted to one or two records per block, so its
// size follows the blocks written, never the count of PUTs.
//
// Record (45 bytes): type u8 | block index u32 LE | slot u32 LE | SHA-256 (32) | CRC-32 u32 LE of the first 41 bytes.
// `slot` is a slot of the local copy (local-copy.ts) or NO_SLOT.
// - INTENT: made durable BEFORE the block is sent, and before its bytes are
//   written to `slot` when it has one. A block whose last record is an INTENT
//   may or may not be on the service; a resume settles it (block-store.ts).
// - ACK: appended after the service acknowledged the PUT; `slot` holds that
//   content when the local copy kept it. Made durable by the next sync()
//   (fsync, close, or once many are pending), which first makes the local copy durable.
// - COPY: the acknowledged content of the block was also written to `slot`
//   afterwards. Durable like an ACK.
// Replay trusts no copy blindly: a slot's bytes must hash to the digest
// (block-store.ts verifies), so a slot taken over by another block, or torn by
// a crash, is never read as the block's content.
// A torn record at the tail (a crash mid-append) fails its CRC and is cut off.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { fsyncDirectory, writeFully } from '../durable-file';
import { describeError } from '../errors';

export const RECORD_BYTES = 45;
const CRC_COVERED_BYTES = 41;
export const NO_SLOT = 0xffffffff;
const TYPE_INTENT = 1;
const TYPE_ACK = 2;
const TYPE_COPY = 3;
/** Records written per group commit at most, to bound one write's size. */
const RECORDS_PER_COMMIT_MAX = 4096;
const FILE_NAME = 'blocks.journal';

export interface SlotClaim {
  slot: number;
  digest: Buffer;
}

export interface JournalReplay {
  /** Latest acknowledged digest of each block. */
  acknowledged: Map<number, Buffer>;
  /** Blocks whose last record is an intent, with the digest that was being sent. */
  unacknowledged: Map<number, Buffer>;
  /**
   * Per block, the local-copy slots records said held it, oldest first. Acks
   * reach the file after intents appended later, so file order is not the order
   * of events: a claim is only a place to look, and the bytes must hash right.
   */
  slotClaims: Map<number, SlotClaim[]>;
  /** One past the highest slot named. */
  slotCount: number;
  /** Records cut off as torn at the tail. */
  tornBytes: number;
}

/** One block's lasting state, for compaction. */
export interface CompactBlock {
  blockIndex: number;
  acked?: { digest: Buffer; slot: number };
  inFlight?: { digest: Buffer; slot: number };
}

type RecordKind = 'intent' | 'ack';

export class Journal {
  /** Records not yet written, by kind: intents need a quick commit, acks wait for the local copy. */
  private readonly pending: Record<RecordKind, Buffer[]> = { intent: [], ack: [] };
  private readonly appendedSeq = { intent: 0, ack: 0 };
  private readonly durableSeq = { intent: 0, ack: 0 };
  /** Commits and compactions run one at a time, in this chain. */
  private running?: Promise<void>;
  private backgroundSync?: Promise<void>;
  /** Bytes written to the file since open, compactions included, for the benchmarks. */
  bytesWritten = 0;

  private constructor(
    private readonly directory: string,
    private handle: fs.FileHandle,
    private sizeBytesValue: number,
    /** Runs before acks are written: the local copies they vouch for must be durable first. */
    private readonly beforeAcks: () => Promise<void>,
  ) {}

  static fileIn(directory: string): string {
    return path.join(directory, FILE_NAME);
  }

  get sizeBytes(): number {
    return this.sizeBytesValue;
  }

  /** Opens (creating) the journal, replays it and cuts a torn tail. */
  static async open(directory: string, beforeAcks: () => Promise<void>): Promise<{ journal: Journal; replay: JournalReplay }> {
    const file = Journal.fileIn(directory);
    const handle = await fs.open(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    try {
      const content = await handle.readFile();
      const replay = Journal.replay(content);
      const validBytes = content.length - replay.tornBytes;
      if (replay.tornBytes > 0) {
        await handle.truncate(validBytes);
        await handle.datasync();
      }
      return { journal: new Journal(directory, handle, validBytes, beforeAcks), replay };
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  static replay(content: Buffer): JournalReplay {
    const acknowledged = new Map<number, Buffer>();
    const unacknowledged = new Map<number, Buffer>();
    const slotClaims = new Map<number, SlotClaim[]>();
    let slotCount = 0;
    let offset = 0;
    for (; offset + RECORD_BYTES <= content.length; offset += RECORD_BYTES) {
      const record = content.subarray(offset, offset + RECORD_BYTES);
      if (crc32(record.subarray(0, CRC_COVERED_BYTES)) !== record.readUInt32LE(CRC_COVERED_BYTES)) break;
      const type = record[0];
      const blockIndex = record.readUInt32LE(1);
      const slot = record.readUInt32LE(5);
      const digest = Buffer.from(record.subarray(9, CRC_COVERED_BYTES));
      if (type === TYPE_INTENT) unacknowledged.set(blockIndex, digest);
      else if (type === TYPE_ACK) {
        acknowledged.set(blockIndex, digest);
        if (unacknowledged.get(blockIndex)?.equals(digest)) unacknowledged.delete(blockIndex);
      } else if (type !== TYPE_COPY) break;
      if (slot !== NO_SLOT) {
        const claims = (slotClaims.get(blockIndex) ?? []).filter((claim) => claim.slot !== slot || !claim.digest.equals(digest));
        claims.push({ slot, digest });
        slotClaims.set(blockIndex, claims);
        slotCount = Math.max(slotCount, slot + 1);
      }
    }
    return { acknowledged, unacknowledged, slotClaims, slotCount, tornBytes: content.length - offset };
  }

  /**
   * Resolves once the intent is durable. Intents are committed on their own
   * (one fdatasync of the journal for all that arrived meanwhile), without
   * syncing the local copy: an intent does not vouch for any copy.
   */
  async recordIntent(blockIndex: number, digest: Buffer, slot: number): Promise<void> {
    const seq = this.append('intent', encode(TYPE_INTENT, blockIndex, slot, digest));
    await this.waitDurable(() => this.durableSeq.intent >= seq, false);
  }

  /** Acks become durable with the next sync(), after the local copy. */
  recordAck(blockIndex: number, digest: Buffer, slot: number): void {
    this.append('ack', encode(TYPE_ACK, blockIndex, slot, digest));
  }

  /** The acknowledged content of the block now also lies in `slot`; durable like an ack. */
  recordCopy(blockIndex: number, digest: Buffer, slot: number): void {
    this.append('ack', encode(TYPE_COPY, blockIndex, slot, digest));
  }

  /** Makes every record appended so far durable, the local copy first. */
  async sync(): Promise<void> {
    const intents = this.appendedSeq.intent;
    const acks = this.appendedSeq.ack;
    await this.waitDurable(() => this.durableSeq.intent >= intents && this.durableSeq.ack >= acks, true);
  }

  /**
   * Replaces the file by one holding only `blocks` (the whole lasting state,
   * taken at the call): a new file, synced, renamed over the old one. Every
   * record appended before the call is covered by `blocks`, so it counts as
   * durable once the new file is. On failure the old file stays in use.
   */
  async compact(blocks: Iterable<CompactBlock>): Promise<void> {
    const records: Buffer[] = [];
    for (const block of blocks) {
      if (block.acked) records.push(encode(TYPE_ACK, block.blockIndex, block.acked.slot, block.acked.digest));
      if (block.inFlight) records.push(encode(TYPE_INTENT, block.blockIndex, block.inFlight.slot, block.inFlight.digest));
    }
    const covered = { intent: this.appendedSeq.intent, ack: this.appendedSeq.ack };
    await this.serialized(async () => {
      await this.beforeAcks();
      const file = Journal.fileIn(this.directory);
      const temporary = `${file}.compact`;
      const handle = await fs.open(temporary, 'w', 0o600);
      try {
        await writeFully(handle, Buffer.concat(records), 0);
        this.bytesWritten += records.length * RECORD_BYTES;
        await handle.datasync();
        await fs.rename(temporary, file);
        await fsyncDirectory(this.directory);
      } catch (error) {
        await handle.close();
        await fs.rm(temporary, { force: true });
        throw error;
      }
      await this.handle.close();
      this.handle = handle;
      this.sizeBytesValue = records.length * RECORD_BYTES;
      // Records appended before the call are in the new file: drop them unwritten.
      for (const kind of ['intent', 'ack'] as const) {
        const coveredPending = covered[kind] - this.durableSeq[kind];
        if (coveredPending > 0) {
          this.pending[kind].splice(0, coveredPending);
          this.durableSeq[kind] = covered[kind];
        }
      }
    });
  }

  async close(): Promise<void> {
    await this.sync();
    await this.handle.close();
  }

  private append(kind: RecordKind, record: Buffer): number {
    this.pending[kind].push(record);
    this.appendedSeq[kind] += 1;
    if (this.pending.ack.length >= RECORDS_PER_COMMIT_MAX && !this.backgroundSync) {
      // Bounds the records held in memory. A failure here is met again, and
      // reported, by the next fsync's sync().
      this.backgroundSync = this.sync()
        .catch(() => undefined)
        .finally(() => {
          this.backgroundSync = undefined;
        });
    }
    return this.appendedSeq[kind];
  }

  /**
   * Group commit: one commit covers every record appended while the previous one
   * ran. Replay does not depend on the order of intents and acks in the file:
   * an ack clears only an intent with its own digest.
   */
  private async waitDurable(done: () => boolean, withAcks: boolean): Promise<void> {
    while (!done()) await this.serialized(() => this.commit(withAcks));
  }

  /** Runs `task` after every commit or compaction already running. */
  private serialized(task: () => Promise<void>): Promise<void> {
    // `running` never rejects: the caller of each task gets its failure, and
    // the next task runs either way.
    const next = (this.running ?? Promise.resolve()).then(task);
    const settled: Promise<void> = next.then(
      () => this.finishedRunning(settled),
      () => this.finishedRunning(settled),
    );
    this.running = settled;
    return next;
  }

  private finishedRunning(settled: Promise<void>): void {
    if (this.running === settled) this.running = undefined;
  }

  private async commit(withAcks: boolean): Promise<void> {
    const intents = this.pending.intent.splice(0, RECORDS_PER_COMMIT_MAX);
    const acks = withAcks ? this.pending.ack.splice(0, RECORDS_PER_COMMIT_MAX) : [];
    if (intents.length === 0 && acks.length === 0) return;
    try {
      if (acks.length > 0) await this.beforeAcks();
      const bytes = Buffer.concat([...intents, ...acks]);
      await writeFully(this.handle, bytes, this.sizeBytesValue);
      this.bytesWritten += bytes.length;
      await this.handle.datasync();
      this.sizeBytesValue += bytes.length;
      this.durableSeq.intent += intents.length;
      this.durableSeq.ack += acks.length;
    } catch (error) {
      // Keep the records for the next commit; a partial write is overwritten then.
      this.pending.intent.unshift(...intents);
      this.pending.ack.unshift(...acks);
      throw new Error(journalFailure(error, Journal.fileIn(this.directory)), { cause: error });
    }
  }
}

/** Why the journal refused a record, and what to do, on one line; nothing is sent without it. */
function journalFailure(error: unknown, file: string): string {
  const code = (error as NodeJS.ErrnoException).code;
  const message = describeError(error);
  const fix = code === 'ENOSPC' || code === 'EDQUOT' ? 'free space there' : 'check that directory and its file system';
  return `cannot write the journal ${file} (${message}); ${fix}: the data stays in memory and the next fsync tries again`;
}

function encode(type: number, blockIndex: number, slot: number, digest: Buffer): Buffer {
  const record = Buffer.alloc(RECORD_BYTES);
  record[0] = type;
  record.writeUInt32LE(blockIndex, 1);
  record.writeUInt32LE(slot, 5);
  digest.copy(record, 9);
  record.writeUInt32LE(crc32(record.subarray(0, CRC_COVERED_BYTES)), CRC_COVERED_BYTES);
  return record;
}
