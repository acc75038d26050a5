// A VolumeFile held in memory, with the behaviour of the contract (short
// writes at the end, ENOSPC past it, truncation that never changes the size)
// and switchable faults. It stands in for the core only in the adapter's own
// tests, where the thing under test is the FUSE translation.
import { FileOperationError } from '../../src/core/file-errors';
import type { VolumeFile } from '../../src/core/volume-file';

const CHUNK_BYTES = 524288;

export class MemoryVolumeFile implements VolumeFile {
  /** When set, fsync rejects with EIO (and data stays as written). */
  failFsync = false;
  /** Added before write resolves, to check the adapter answers only afterwards. */
  writeDelayMs = 0;
  /** Added before fsync settles, to outlast fuse-native's 15 s default timeout. */
  fsyncDelayMs = 0;
  /** When set, read rejects with it (a failure that is not a FileOperationError). */
  readFailure: Error | undefined;
  /** When set, write rejects with it. */
  writeFailure: Error | undefined;
  fsyncCalls = 0;
  private readonly chunks = new Map<number, Buffer>();

  constructor(
    readonly sizeBytes: number,
    readonly readOnly = false,
  ) {}

  async read(offsetBytes: number, length: number): Promise<Buffer> {
    if (this.readFailure) throw this.readFailure;
    const end = Math.min(offsetBytes + length, this.sizeBytes);
    const out = Buffer.alloc(Math.max(0, end - offsetBytes));
    for (let position = offsetBytes; position < end;) {
      const index = Math.floor(position / CHUNK_BYTES);
      const within = position - index * CHUNK_BYTES;
      const count = Math.min(CHUNK_BYTES - within, end - position);
      this.chunks.get(index)?.copy(out, position - offsetBytes, within, within + count);
      position += count;
    }
    return out;
  }

  async write(offsetBytes: number, data: Buffer): Promise<number> {
    if (this.writeFailure) throw this.writeFailure;
    if (this.readOnly) throw new FileOperationError('EROFS', 'read-only');
    if (offsetBytes >= this.sizeBytes) throw new FileOperationError('ENOSPC', 'past the end');
    const end = Math.min(offsetBytes + data.length, this.sizeBytes);
    const copy = Buffer.from(data.subarray(0, end - offsetBytes));
    for (let position = offsetBytes; position < end;) {
      const index = Math.floor(position / CHUNK_BYTES);
      const within = position - index * CHUNK_BYTES;
      const count = Math.min(CHUNK_BYTES - within, end - position);
      let chunk = this.chunks.get(index);
      if (!chunk) {
        chunk = Buffer.alloc(CHUNK_BYTES);
        this.chunks.set(index, chunk);
      }
      copy.copy(chunk, within, position - offsetBytes, position - offsetBytes + count);
      position += count;
    }
    if (this.writeDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.writeDelayMs));
    return end - offsetBytes;
  }

  async fsync(): Promise<void> {
    this.fsyncCalls += 1;
    if (this.fsyncDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.fsyncDelayMs));
    if (this.failFsync) throw new FileOperationError('EIO', 'injected upload failure');
  }

  async truncate(lengthBytes: number): Promise<void> {
    if (this.readOnly) throw new FileOperationError('EROFS', 'read-only');
    if (lengthBytes > this.sizeBytes) throw new FileOperationError('EFBIG', 'past the size');
    for (const [index, chunk] of this.chunks) {
      const start = index * CHUNK_BYTES;
      if (start >= lengthBytes) this.chunks.delete(index);
      else if (start + CHUNK_BYTES > lengthBytes) chunk.fill(0, lengthBytes - start);
    }
  }
}
