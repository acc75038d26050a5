// A completed snapshot served read-only: every read goes to the snapshot
// reader's clean cache (with sequential read-ahead); every change is EROFS.
import { BLOCK_SIZE_BYTES, BLOCKS_PER_GIB } from '../ebs/client';
import { blockSegments } from './block-segments';
import { FileOperationError } from './file-errors';
import type { SnapshotReader } from './snapshot-reader';
import type { VolumeFile } from './volume-file';

export class ReadOnlyVolume implements VolumeFile {
  readonly sizeBytes: number;
  readonly readOnly = true;

  constructor(private readonly reader: SnapshotReader) {
    this.sizeBytes = reader.volumeSizeGiB * BLOCKS_PER_GIB * BLOCK_SIZE_BYTES;
  }

  async read(offsetBytes: number, length: number): Promise<Buffer> {
    const end = Math.min(this.sizeBytes, offsetBytes + length);
    if (offsetBytes >= end) return Buffer.alloc(0);
    const out = Buffer.alloc(end - offsetBytes);
    for (const { index, inBlock, count, fromStart } of blockSegments(offsetBytes, end)) {
      if (this.reader.has(index)) (await this.reader.readRange(index, inBlock, count)).copy(out, fromStart);
    }
    return out;
  }

  async write(): Promise<number> {
    throw new FileOperationError('EROFS', 'the snapshot is mounted read-only');
  }

  async fsync(): Promise<void> {}

  async truncate(): Promise<void> {
    throw new FileOperationError('EROFS', 'the snapshot is mounted read-only');
  }
}
