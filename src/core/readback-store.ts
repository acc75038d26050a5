// A pending snapshot cannot be read through the API, so every block the flusher
// uploads is first written here: the local copy that reads fall back to once the
// block has left the memory cache. Segment files are sparse, so disk use grows
// with the blocks written, not with the volume; segments keep each file far
// below ext4's 16 TiB file-size limit for volumes up to 64 TiB.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { BLOCK_SIZE_BYTES } from '../ebs/client';

/** 2^21 blocks of 512 KiB: 1 TiB per segment file. */
const BLOCKS_PER_SEGMENT = 2 ** 21;

export class ReadbackStore {
  private readonly segments = new Map<number, Promise<fs.FileHandle>>();
  /** Segments written since the last sync(). */
  private readonly unsyncedSegments = new Set<number>();

  constructor(private readonly directory: string) {}

  async writeBlock(blockIndex: number, data: Buffer): Promise<void> {
    const { segment, offsetBytes } = locate(blockIndex);
    const handle = await this.open(segment);
    let written = 0;
    while (written < data.length) {
      const { bytesWritten } = await handle.write(data, written, data.length - written, offsetBytes + written);
      written += bytesWritten;
    }
    this.unsyncedSegments.add(segment);
  }

  /** Reads `length` bytes at `offsetInBlock` of a block that was written here. */
  async readRange(blockIndex: number, offsetInBlock: number, length: number): Promise<Buffer> {
    const { segment, offsetBytes } = locate(blockIndex);
    const handle = await this.open(segment);
    const buffer = Buffer.alloc(length);
    let read = 0;
    while (read < length) {
      const { bytesRead } = await handle.read(buffer, read, length - read, offsetBytes + offsetInBlock + read);
      // A short file means the block was never fully written: the rest stays zero.
      if (bytesRead === 0) break;
      read += bytesRead;
    }
    return buffer;
  }

  /** Makes every block written so far durable. */
  async sync(): Promise<void> {
    const segments = [...this.unsyncedSegments];
    this.unsyncedSegments.clear();
    await Promise.all(segments.map(async (segment) => (await this.open(segment)).datasync()));
  }

  async close(): Promise<void> {
    const handles = [...this.segments.values()];
    this.segments.clear();
    await Promise.all(handles.map(async (pending) => (await pending).close()));
  }

  private open(segment: number): Promise<fs.FileHandle> {
    let handle = this.segments.get(segment);
    if (!handle) {
      const file = path.join(this.directory, `readback-${String(segment).padStart(2, '0')}.img`);
      handle = fs.open(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
      // A failed open must not stay cached as a rejected promise.
      handle.catch(() => this.segments.delete(segment));
      this.segments.set(segment, handle);
    }
    return handle;
  }
}

function locate(blockIndex: number): { segment: number; offsetBytes: number } {
  const segment = Math.floor(blockIndex / BLOCKS_PER_SEGMENT);
  return { segment, offsetBytes: (blockIndex % BLOCKS_PER_SEGMENT) * BLOCK_SIZE_BYTES };
}
