// Where `ebs-fuse upload` gets its blocks: a file or block device, read where
// it holds data (SEEK_DATA/SEEK_HOLE through native/build/extents), or a
// stream (standard input, a Readable) read once front to back. Either yields
// its data blocks in ascending index; the upload merges them with a parent's.
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { BLOCK_SIZE_BYTES } from '../ebs/client';
import { describeError, UserError } from '../errors';

/** Where native/build-extents.sh builds the extents helper (same from dist/core and src/core). */
export const DEFAULT_EXTENTS_HELPER = path.resolve(__dirname, '..', '..', 'native', 'build', 'extents');
const EXTENTS_HELPER_MISSING_WHY =
  'it is built on install only where a C compiler exists (apt-get install gcc, then run native/build-extents.sh in the ebs-fuse package)';
/** Extents per helper call: bounds its output (and our memory) for a fragmented file. */
const EXTENTS_PER_CALL = 4096;
const EXTENTS_HELPER_TIMEOUT_MS = 60_000;
const EXTENTS_HELPER_OUTPUT_MAX_BYTES = 1024 * 1024;

/** The file or device being uploaded. */
export interface UploadSource {
  path: string;
  kind: 'file' | 'block device';
  sizeBytes: number;
}

interface Extent {
  offsetBytes: number;
  lengthBytes: number;
}

/** A block that may hold data; a stream's comes with its bytes, a file's is read when its turn comes. */
export interface DataBlock {
  index: number;
  data?: Buffer;
}

/** An upload's data, ascending by block. */
export interface BlockSource {
  /** For messages: the file's path, or "standard input". */
  readonly name: string;
  /** False when a file's holes could not be told (no helper, or no SEEK_DATA): every byte was read. */
  readonly holesDetected: boolean;
  /** Blocks at or past volumeBlocks are the source's to refuse or leave out. */
  dataBlocks(volumeBlocks: number): AsyncGenerator<DataBlock>;
  /** The bytes of a block dataBlocks() gave without them, zero-filled past the end. */
  readBlock(index: number): Promise<Buffer>;
  close(): Promise<void>;
}

/** A file or block device: only its data extents are read, each block when its turn comes. */
export class FileBlockSource implements BlockSource {
  holesDetected = true;

  private constructor(
    readonly source: UploadSource,
    private readonly handle: fs.FileHandle,
    private readonly helper: string,
    private readonly log: (line: string) => void,
  ) {}

  static async open(filePath: string, helper: string, log: (line: string) => void): Promise<FileBlockSource> {
    const source = await inspectSource(filePath, helper);
    const handle = await fs.open(source.path, 'r').catch((error: unknown) => {
      throw new UserError(`cannot read ${source.path}: ${describeError(error)}`);
    });
    return new FileBlockSource(source, handle, helper, log);
  }

  get name(): string {
    return this.source.path;
  }

  async *dataBlocks(volumeBlocks: number): AsyncGenerator<DataBlock> {
    for await (const [first, end] of this.dataBlockRanges()) {
      for (let index = first; index < Math.min(end, volumeBlocks); index++) yield { index };
      if (end >= volumeBlocks) return;
    }
  }

  /** One block of the file, zero-filled past its end. */
  async readBlock(index: number): Promise<Buffer> {
    const block = Buffer.alloc(BLOCK_SIZE_BYTES);
    const start = index * BLOCK_SIZE_BYTES;
    const wanted = Math.min(BLOCK_SIZE_BYTES, this.source.sizeBytes - start);
    let filled = 0;
    while (filled < wanted) {
      const { bytesRead } = await this.handle.read(block, filled, wanted - filled, start + filled);
      // The file shrank under us: what is gone reads as zeros, as past the end.
      if (bytesRead === 0) break;
      filled += bytesRead;
    }
    return block;
  }

  async close(): Promise<void> {
    await this.handle.close().catch(() => undefined);
  }

  /** [first, end) block ranges of the file's data, ascending and merged. */
  private async *dataBlockRanges(): AsyncGenerator<[number, number]> {
    let pending: [number, number] | undefined;
    for await (const extent of this.dataExtents()) {
      const first = Math.floor(extent.offsetBytes / BLOCK_SIZE_BYTES);
      const end = Math.ceil((extent.offsetBytes + extent.lengthBytes) / BLOCK_SIZE_BYTES);
      if (pending && first <= pending[1]) {
        pending[1] = Math.max(pending[1], end);
        continue;
      }
      if (pending) yield pending;
      pending = [first, end];
    }
    if (pending) yield pending;
  }

  private async *dataExtents(): AsyncGenerator<Extent> {
    const size = this.source.sizeBytes;
    let start = 0;
    while (start < size) {
      let listing: ExtentListing;
      let helperMissing = false;
      try {
        listing = await listExtents(this.helper, this.source.path, start);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
        this.log(`${this.helper} is missing: ${EXTENTS_HELPER_MISSING_WHY}; reading every byte of ${this.source.path}, holes too`);
        listing = { sizeBytes: size, extents: [], holesUnsupported: true };
        helperMissing = true;
      }
      if (listing.holesUnsupported) {
        this.holesDetected = false;
        if (this.source.kind === 'file' && !helperMissing)
          this.log(`${this.source.path}'s filesystem cannot tell holes (no SEEK_DATA): reading every byte`);
        yield { offsetBytes: start, lengthBytes: size - start };
        return;
      }
      for (const extent of listing.extents) {
        const end = Math.min(size, extent.offsetBytes + extent.lengthBytes);
        if (extent.offsetBytes >= end) continue;
        yield { offsetBytes: extent.offsetBytes, lengthBytes: end - extent.offsetBytes };
      }
      if (listing.extents.length < EXTENTS_PER_CALL) return;
      const last = listing.extents[listing.extents.length - 1];
      start = last.offsetBytes + last.lengthBytes;
    }
  }
}

/** Bytes of a stream past the volume's end: the upload fails and nothing is completed. */
export class StreamTooLongError extends UserError {}

/**
 * A stream read once, front to back, into 512 KiB blocks: one block is filled
 * at a time, so memory is that block plus what the upload has in flight. A
 * short stream leaves the rest of the volume as if zero; one byte past the
 * volume's end is a StreamTooLongError.
 */
export class StreamBlockSource implements BlockSource {
  readonly holesDetected = true;
  /** Bytes read from the stream so far. */
  bytesRead = 0;

  constructor(
    private readonly stream: Readable | NodeJS.ReadableStream,
    readonly name: string,
  ) {}

  async *dataBlocks(volumeBlocks: number): AsyncGenerator<DataBlock> {
    let block = Buffer.alloc(BLOCK_SIZE_BYTES);
    let filled = 0;
    let index = 0;
    for await (const piece of this.stream) {
      const chunk = typeof piece === 'string' ? Buffer.from(piece) : (piece as Buffer);
      for (let offset = 0; offset < chunk.length;) {
        if (index >= volumeBlocks) {
          throw new StreamTooLongError(`${this.name} is longer than the volume (${volumeBlocks * BLOCK_SIZE_BYTES} bytes, --size)`);
        }
        const taken = Math.min(BLOCK_SIZE_BYTES - filled, chunk.length - offset);
        chunk.copy(block, filled, offset, offset + taken);
        filled += taken;
        offset += taken;
        this.bytesRead += taken;
        if (filled === BLOCK_SIZE_BYTES) {
          yield { index, data: block };
          index += 1;
          block = Buffer.alloc(BLOCK_SIZE_BYTES);
          filled = 0;
        }
      }
    }
    if (filled > 0) yield { index, data: block };
  }

  readBlock(index: number): Promise<Buffer> {
    return Promise.reject(new Error(`block ${index} of ${this.name} was not read in order: a stream is read once`));
  }

  async close(): Promise<void> {
    // The stream belongs to the caller (standard input, or a Readable passed in).
  }
}

interface ExtentListing {
  sizeBytes: number;
  extents: Extent[];
  /** The filesystem cannot tell holes: everything from the start is data. */
  holesUnsupported: boolean;
}

/** One call of the helper: at most EXTENTS_PER_CALL extents at or after startBytes. */
export function listExtents(helper: string, filePath: string, startBytes: number): Promise<ExtentListing> {
  return new Promise((resolve, reject) => {
    execFile(
      helper,
      [filePath, String(startBytes), String(EXTENTS_PER_CALL)],
      { timeout: EXTENTS_HELPER_TIMEOUT_MS, maxBuffer: EXTENTS_HELPER_OUTPUT_MAX_BYTES, encoding: 'utf8' },
      (error, stdout, stderr) => {
        if (error) {
          if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
            reject(error);
            return;
          }
          reject(new UserError(`cannot list the data extents of ${filePath}: ${stderr.trim() || error.message}`));
          return;
        }
        const listing: ExtentListing = { sizeBytes: -1, extents: [], holesUnsupported: false };
        for (const line of stdout.split('\n')) {
          const fields = line.split(' ');
          if (fields[0] === 'size' && fields.length === 2) listing.sizeBytes = Number(fields[1]);
          else if (fields[0] === 'data' && fields.length === 3)
            listing.extents.push({ offsetBytes: Number(fields[1]), lengthBytes: Number(fields[2]) });
          else if (fields[0] === 'unsupported') listing.holesUnsupported = true;
        }
        const numbers = [listing.sizeBytes, ...listing.extents.flatMap((extent) => [extent.offsetBytes, extent.lengthBytes])];
        if (!numbers.every((value) => Number.isSafeInteger(value) && value >= 0)) {
          reject(new Error(`${helper} printed output that is not an extent list: ${JSON.stringify(stdout.slice(0, 200))}`));
          return;
        }
        resolve(listing);
      },
    );
  });
}

/** What is being uploaded and its size; a one-line UserError for anything unusable. */
export async function inspectSource(filePath: string, helper = DEFAULT_EXTENTS_HELPER): Promise<UploadSource> {
  let stat;
  try {
    stat = await fs.stat(filePath);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new UserError(`${filePath} does not exist`);
    throw new UserError(`cannot use ${filePath}: ${describeError(error)}`);
  }
  if (stat.isDirectory()) throw new UserError(`${filePath} is a directory; upload takes a file or a block device`);
  if (stat.isFile()) return { path: filePath, kind: 'file', sizeBytes: stat.size };
  if (!stat.isBlockDevice()) throw new UserError(`${filePath} is neither a regular file nor a block device`);
  // stat says 0 for a device; the helper seeks to its end.
  let listing: ExtentListing;
  try {
    listing = await listExtents(helper, filePath, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new UserError(`${helper} is missing, which finds the size of a block device: ${EXTENTS_HELPER_MISSING_WHY}`);
    }
    throw error;
  }
  if (listing.sizeBytes <= 0) throw new UserError(`${filePath} is an empty block device`);
  return { path: filePath, kind: 'block device', sizeBytes: listing.sizeBytes };
}
