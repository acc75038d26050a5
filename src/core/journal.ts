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
//   next group commit (which first makes the read-back store durable), at the
//   latest before fsync returns.
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
  private pending: Buffer[] = [];
  private appendedSeq = 0;
  private durableSeq = 0;
  private commitRunning?: Promise<void>;

  private constructor(
    private readonly handle: fs.FileHandle,
    private sizeBytes: number,
    /** Runs before each commit writes: the read-back store must be durable first. */
    private readonly beforeCommit: () => Promise<void>,
  ) {}

  static fileIn(directory: string): string {
    return path.join(directory, 'journal.log');
  }

  /** Opens (creating) the journal, replays it and cuts a torn tail. */
  static async open(directory: string, beforeCommit: () => Promise<void>): Promise<{ journal: Journal; replay: JournalReplay }> {
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
      return { journal: new Journal(handle, validBytes, beforeCommit), replay };
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

  /** Resolves once the intent (and everything before it) is durable. */
  async recordIntent(blockIndex: number, digest: Buffer): Promise<void> {
    await this.waitDurable(this.append(TYPE_INTENT, blockIndex, digest));
  }

  recordAck(blockIndex: number, digest: Buffer): void {
    this.append(TYPE_ACK, blockIndex, digest);
  }

  /** Makes every record appended so far durable. */
  async sync(): Promise<void> {
    await this.waitDurable(this.appendedSeq);
  }

  async close(): Promise<void> {
    await this.sync();
    await this.handle.close();
  }

  private append(type: number, blockIndex: number, digest: Buffer): number {
    const record = Buffer.alloc(RECORD_BYTES);
    record[0] = type;
    record.writeUInt32LE(blockIndex, 1);
    digest.copy(record, 5);
    record.writeUInt32LE(crc32(record.subarray(0, 37)), 37);
    this.pending.push(record);
    this.appendedSeq += 1;
    return this.appendedSeq;
  }

  /** Group commit: one sync covers every record appended while the previous one ran. */
  private async waitDurable(seq: number): Promise<void> {
    while (this.durableSeq < seq) {
      if (!this.commitRunning) {
        this.commitRunning = this.commit().finally(() => {
          this.commitRunning = undefined;
        });
      }
      await this.commitRunning;
    }
  }

  private async commit(): Promise<void> {
    const records = this.pending.splice(0, RECORDS_PER_COMMIT_MAX);
    if (records.length === 0) return;
    const lastSeq = this.durableSeq + records.length;
    try {
      await this.beforeCommit();
      const bytes = Buffer.concat(records);
      let written = 0;
      while (written < bytes.length) {
        const { bytesWritten } = await this.handle.write(bytes, written, bytes.length - written, this.sizeBytes + written);
        written += bytesWritten;
      }
      await this.handle.datasync();
      this.sizeBytes += bytes.length;
      this.durableSeq = lastSeq;
    } catch (error) {
      // Keep the records for the next commit; a partial write is overwritten then.
      this.pending.unshift(...records);
      throw error;
    }
  }
}
