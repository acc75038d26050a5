// The per-snapshot append-only log of (block index, slot, content digest) records.
// Each record carries its own check value, so a record torn by a crash (a short
// tail, or a tail whose bytes never reached the disk) is recognised on replay and
// cut off. Only records that were fully written and fdatasync'd were ever
// acknowledged, and they all precede the first bad record, so cutting there loses
// nothing acknowledged.
import { createHash } from 'node:crypto';

export const RECORD_BYTES = 48;
const RECORD_MAGIC = 0xeb02;
const CHECKED_BYTES = 44;

export interface BlockRecord {
  blockIndex: number;
  /** Where the data is: byte offset slot × 524288 of the snapshot's blocks.dat. */
  slot: number;
  digest: Buffer;
}

function checkValue(record: Buffer): number {
  return createHash('sha256').update(record.subarray(0, CHECKED_BYTES)).digest().readUInt32BE(0);
}

/** Layout: magic u16 BE, reserved u16 (0), block index u32 BE, slot u32 BE, SHA-256 digest (32), check u32 BE. */
export function encodeRecord(record: BlockRecord, target: Buffer = Buffer.alloc(RECORD_BYTES), offset = 0): Buffer {
  if (record.digest.length !== 32) throw new Error('a block digest is 32 bytes');
  const view = target.subarray(offset, offset + RECORD_BYTES);
  view.writeUInt16BE(RECORD_MAGIC, 0);
  view.writeUInt16BE(0, 2);
  view.writeUInt32BE(record.blockIndex, 4);
  view.writeUInt32BE(record.slot, 8);
  record.digest.copy(view, 12);
  view.writeUInt32BE(checkValue(view), CHECKED_BYTES);
  return target;
}

export function encodeRecords(records: readonly BlockRecord[]): Buffer {
  const buffer = Buffer.alloc(records.length * RECORD_BYTES);
  records.forEach((record, i) => encodeRecord(record, buffer, i * RECORD_BYTES));
  return buffer;
}

export interface ReplayResult {
  records: BlockRecord[];
  /** Bytes of the log that hold valid records; the rest is a torn tail. */
  validBytes: number;
}

export function replayLog(contents: Buffer): ReplayResult {
  const records: BlockRecord[] = [];
  let offset = 0;
  while (offset + RECORD_BYTES <= contents.length) {
    const view = contents.subarray(offset, offset + RECORD_BYTES);
    if (view.readUInt16BE(0) !== RECORD_MAGIC || view.readUInt16BE(2) !== 0 || view.readUInt32BE(CHECKED_BYTES) !== checkValue(view)) break;
    records.push({ blockIndex: view.readUInt32BE(4), slot: view.readUInt32BE(8), digest: Buffer.from(view.subarray(12, 44)) });
    offset += RECORD_BYTES;
  }
  return { records, validBytes: offset };
}
