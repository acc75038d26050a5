// The journal: an append-only record, per snapshot, of what was sent and what
// the service acknowledged, so that a mount that died can be resumed and
// completed with the right ChangedBlocksCount and LINEAR checksum.
//
// Record (41 bytes): type u8 | block index u32 LE | SHA-256 (32) | CRC-32 u32 LE of the first 37 bytes.
// - INTENT: made durable BEFORE the block's bytes are written to the read-back
//   store and sent. A block whose last record is an INTENT may or may not be on
//   the service, and its read-back copy may be old, new or torn, so a resume sends
//   it again with whatever the read-back store holds (what the file then shows).
// - ACK: appended after the service acknowledged the PUT; made durable by the
//   next sync() (fsync, close, or once many are pending), which first makes the
//   read-back store durable.
// A torn record at the tail (a crash mid-append) fails its CRC and is cut off.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { crc32 } from 'node:zlib';

const RECORD_BYTES = 41;
const TYPE_INTENT = 1;
const TYPE_ACK = 2;
/** Records written per group commit at most, to bound one write's size. */
const RECORDS_PER_COMMIT_MAX = 4096;

export interface JournalReplay {
  /** Latest acknowledged digest of each block. */
  acknowledged: Map<number, Buffer>;
  /** Blocks whose last record is an intent, with the digest that was being sent. */
  unacknowledged: Map<number, Buffer>;
  /** Records cut off as torn at the tail. */
  tornBytes: number;
}

export class Journal {
  /** Records not yet written, by kind: intents need a quick commit, acks wait for the read-back store. */
  private readonly pending: Record<'intent' | 'ack', Buffer[]> = { intent: [], ack: [] };
  private readonly appendedSeq = { intent: 0, ack: 0 };
  private readonly durableSeq = { intent: 0, ack: 0 };
  private commitRunning?: { promise: Promise<void>; withAcks: boolean };
  private backgroundSync?: Promise<void>;

  private constructor(
    private readonly handle: fs.FileHandle,
    private sizeBytes: number,
    /** Runs before acks are written: the read-back copies they vouch for must be durable first. */
    private readonly beforeAcks: () => Promise<void>,
  ) {}

  static fileIn(directory: string): string {
    return path.join(directory, 'journal.log');
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
      return { journal: new Journal(handle, validBytes, beforeAcks), replay };
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  static replay(content: Buffer): JournalReplay {
    const acknowledged = new Map<number, Buffer>();
    const unacknowledged = new Map<number, Buffer>();
    let offset = 0;
    for (; offset + RECORD_BYTES <= content.length; offset += RECORD_BYTES) {
      const record = content.subarray(offset, offset + RECORD_BYTES);
      if (crc32(record.subarray(0, 37)) !== record.readUInt32LE(37)) break;
      const type = record[0];
      const index = record.readUInt32LE(1);
      const digest = Buffer.from(record.subarray(5, 37));
      if (type === TYPE_INTENT) unacknowledged.set(index, digest);
      else if (type === TYPE_ACK) {
        acknowledged.set(index, digest);
        if (unacknowledged.get(index)?.equals(digest)) unacknowledged.delete(index);
      } else break;
    }
    return { acknowledged, unacknowledged, tornBytes: content.length - offset };
  }

  /**
   * Resolves once the intent is durable. Intents are committed on their own
   * (one fdatasync of the journal for all that arrived meanwhile), without
   * syncing the read-back store: that costs a flush of every dirty read-back
   * page, and an intent does not vouch for the read-back copy.
   */
  async recordIntent(blockIndex: number, digest: Buffer): Promise<void> {
    const seq = this.append('intent', TYPE_INTENT, blockIndex, digest);
    await this.waitDurable(() => this.durableSeq.intent >= seq, false);
  }

  /**
   * Acks become durable with the next sync() (fsync, close), after the read-back
   * store; many pending ones start a sync in the background, bounding memory.
   */
  recordAck(blockIndex: number, digest: Buffer): void {
    this.append('ack', TYPE_ACK, blockIndex, digest);
    if (this.pending.ack.length >= RECORDS_PER_COMMIT_MAX && !this.backgroundSync) {
      // A failure here is met again, and reported, by the next fsync's sync().
      this.backgroundSync = this.sync()
        .catch(() => undefined)
        .finally(() => {
          this.backgroundSync = undefined;
        });
    }
  }

  /** Makes every record appended so far durable, the read-back store first. */
  async sync(): Promise<void> {
    const intents = this.appendedSeq.intent;
    const acks = this.appendedSeq.ack;
    await this.waitDurable(() => this.durableSeq.intent >= intents && this.durableSeq.ack >= acks, true);
  }

  async close(): Promise<void> {
    await this.sync();
    await this.handle.close();
  }

  private append(kind: 'intent' | 'ack', type: number, blockIndex: number, digest: Buffer): number {
    const record = Buffer.alloc(RECORD_BYTES);
    record[0] = type;
    record.writeUInt32LE(blockIndex, 1);
    digest.copy(record, 5);
    record.writeUInt32LE(crc32(record.subarray(0, 37)), 37);
    this.pending[kind].push(record);
    this.appendedSeq[kind] += 1;
    return this.appendedSeq[kind];
  }

  /**
   * Group commit: one commit covers every record appended while the previous one
   * ran. Replay does not depend on the order of intents and acks in the file:
   * an ack clears only an intent with its own digest.
   */
  private async waitDurable(done: () => boolean, withAcks: boolean): Promise<void> {
    while (!done()) {
      if (!this.commitRunning) {
        const promise = this.commit(withAcks).finally(() => {
          this.commitRunning = undefined;
        });
        this.commitRunning = { promise, withAcks };
      }
      await this.commitRunning.promise;
    }
  }

  private async commit(withAcks: boolean): Promise<void> {
    const intents = this.pending.intent.splice(0, RECORDS_PER_COMMIT_MAX);
    const acks = withAcks ? this.pending.ack.splice(0, RECORDS_PER_COMMIT_MAX) : [];
    if (intents.length === 0 && acks.length === 0) return;
    try {
      if (acks.length > 0) await this.beforeAcks();
      const bytes = Buffer.concat([...intents, ...acks]);
      let written = 0;
      while (written < bytes.length) {
        const { bytesWritten } = await this.handle.write(bytes, written, bytes.length - written, this.sizeBytes + written);
        written += bytesWritten;
      }
      await this.handle.datasync();
      this.sizeBytes += bytes.length;
      this.durableSeq.intent += intents.length;
      this.durableSeq.ack += acks.length;
    } catch (error) {
      // Keep the records for the next commit; a partial write is overwritten then.
      this.pending.intent.unshift(...intents);
      this.pending.ack.unshift(...acks);
      throw error;
    }
  }
}
