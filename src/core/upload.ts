// `ebs-fuse upload`: a file or block device to a new snapshot, then
// CompleteSnapshot. Plain async code over a SnapshotClient, so it is tested
// without the CLI.
//
// Only blocks that can hold data are looked at: the file's data extents
// (SEEK_DATA/SEEK_HOLE through native/build/extents) and, with a parent, the
// parent's blocks. They go in ascending order through a bounded pool: each is
// read (512 KiB), classified, maybe compared with the parent's block, and PUT
// or skipped. Results go back into block order for the LINEAR checksum, which
// is hashed as it goes, so memory is bounded by the concurrency, not the size.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { sha256Digest } from '../ebs/checksum';
import {
  BLOCK_SIZE_BYTES,
  BLOCKS_PER_GIB,
  MAX_VOLUME_SIZE_GIB,
  type BlockEntry,
  type SnapshotClient,
  type SnapshotStatus,
  type StartSnapshotParams,
} from '../ebs/client';
import { describeError, UserError } from '../errors';
import { forEachBounded, GIB_BYTES, InOrder, isZeroBlock, newTransferStats, SnapshotBlockList, ZERO_BLOCK, type TransferStats } from './transfer';

/** Where native/build-extents.sh builds the extents helper (same from dist/core and src/core). */
export const DEFAULT_EXTENTS_HELPER = path.resolve(__dirname, '..', '..', 'native', 'build', 'extents');
const EXTENTS_HELPER_MISSING_WHY =
  'it is built on install only where a C compiler exists (apt-get install gcc, then run native/build-extents.sh in the ebs-fuse package)';
/** Extents per helper call: bounds its output (and our memory) for a fragmented file. */
const EXTENTS_PER_CALL = 4096;
const EXTENTS_HELPER_TIMEOUT_MS = 60_000;
const EXTENTS_HELPER_OUTPUT_MAX_BYTES = 1024 * 1024;
/** Results that may wait for an earlier block's slow PUT, per unit of concurrency. */
const WINDOW_PER_CONCURRENCY = 4;

export interface UploadOptions {
  filePath: string;
  /** --size; only a size at least the file's is accepted. Default: the file's size rounded up to whole GiB. */
  volumeSizeGiB?: number;
  /** The snapshot options; the volume size is worked out here. */
  snapshot: Omit<StartSnapshotParams, 'volumeSizeGiB'>;
  /** Blocks being read, compared and PUT at once. */
  concurrency: number;
  log?: (line: string) => void;
  /** Updated in place while the upload runs, for a progress display. */
  stats?: TransferStats;
  /** Stops the upload: no new block starts, and the snapshot stays pending. */
  signal?: AbortSignal;
  /** Tests point this elsewhere to run without hole detection. */
  extentsHelperPath?: string;
  /** Called once StartSnapshot answered. */
  onStarted?: (snapshotId: string, volumeSizeGiB: number) => void;
}

export interface UploadResult {
  snapshotId: string;
  volumeSizeGiB: number;
  /** What CompleteSnapshot answered. */
  status: SnapshotStatus;
  /** PUTs, one per block: the ChangedBlocksCount. */
  blocksPut: number;
  /** Blocks of the file's data extents read from it. */
  dataBlocksRead: number;
  /** All-zero data blocks not sent, by the zero-block rule. */
  zeroBlocksSkipped: number;
  /** Blocks not sent because they equal the parent's. */
  blocksEqualToParent: number;
  /** GetSnapshotBlock calls to compare with the parent. */
  parentBlocksFetched: number;
  /** False when the file's holes could not be told (no helper, or no SEEK_DATA): every byte was read. */
  holesDetected: boolean;
}

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

interface Candidate {
  index: number;
  /** Inside a data extent of the file: read it. Otherwise a hole (or past the file's end). */
  inData: boolean;
  /** The parent holds data for this block. */
  parentToken?: string;
}

/** Uploads the file to a new snapshot and completes it. */
export async function uploadFile(client: SnapshotClient, options: UploadOptions): Promise<UploadResult> {
  const log = options.log ?? (() => undefined);
  const helper = options.extentsHelperPath ?? DEFAULT_EXTENTS_HELPER;
  const source = await inspectSource(options.filePath, helper);
  const fileGiB = Math.max(1, Math.ceil(source.sizeBytes / GIB_BYTES));
  if (fileGiB > MAX_VOLUME_SIZE_GIB) {
    throw new UserError(`${source.path} is ${source.sizeBytes} bytes, more than the ${MAX_VOLUME_SIZE_GIB} GiB EBS allows`);
  }
  if (options.volumeSizeGiB !== undefined && options.volumeSizeGiB < fileGiB) {
    throw new UserError(
      `--size ${options.volumeSizeGiB} is smaller than ${source.path} (${source.sizeBytes} bytes, ${fileGiB} GiB rounded up); --size may only make the volume larger`,
    );
  }

  let parent: SnapshotBlockList | undefined;
  const parentId = options.snapshot.parentSnapshotId;
  if (parentId !== undefined) {
    try {
      parent = await SnapshotBlockList.open(client, parentId);
    } catch (error) {
      throw new UserError(`cannot read the parent snapshot ${parentId}: ${describeError(error)}`);
    }
    if (options.volumeSizeGiB !== undefined && options.volumeSizeGiB < parent.volumeSizeGiB) {
      throw new UserError(`--size ${options.volumeSizeGiB} is smaller than the parent snapshot ${parentId} (${parent.volumeSizeGiB} GiB); a child is at least as large as its parent`);
    }
  }
  const volumeSizeGiB = Math.max(options.volumeSizeGiB ?? fileGiB, parent?.volumeSizeGiB ?? 0);
  if (parent && volumeSizeGiB > (options.volumeSizeGiB ?? fileGiB)) {
    log(`the volume is ${volumeSizeGiB} GiB, the size of the parent ${parentId}; past the end of ${source.path} it reads as zeros`);
  }

  const handle = await fs.open(source.path, 'r').catch((error: unknown) => {
    throw new UserError(`cannot read ${source.path}: ${describeError(error)}`);
  });
  try {
    const started = await client.startSnapshot({ ...options.snapshot, volumeSizeGiB });
    const snapshotId = started.snapshotId;
    options.onStarted?.(snapshotId, volumeSizeGiB);
    const encrypted = options.snapshot.encrypted === true || options.snapshot.kmsKeyArn !== undefined || started.kmsKeyArn !== undefined;
    const run = new UploadRun(client, snapshotId, source, handle, volumeSizeGiB, parent, {
      // The zero-block rule (docs/SEMANTICS.md): where nothing below this snapshot
      // holds the block it reads as zeros anyway, unless encryption changes what an
      // absent block means, so a written zero block is sent there.
      zeroSkipAllowed: !encrypted,
      concurrency: options.concurrency,
      stats: options.stats ?? newTransferStats(),
      helper,
      log,
      signal: options.signal,
    });
    try {
      await run.putAll();
    } catch (error) {
      const why = options.signal?.aborted ? 'was interrupted' : `failed: ${describeError(error)}`;
      throw new UserError(
        `uploading ${source.path} to ${snapshotId} ${why}; the snapshot stays pending until EBS fails it after ` +
          `${options.snapshot.timeoutMinutes ?? 60} idle minutes: run the upload again`,
      );
    }
    const figures = run.completionFigures();
    let status: SnapshotStatus;
    try {
      status = await client.completeSnapshot({ snapshotId, ...figures });
    } catch (error) {
      throw new UserError(`CompleteSnapshot of ${snapshotId} failed after every block was uploaded: ${describeError(error)}; the snapshot stays pending: run the upload again`);
    }
    return {
      snapshotId,
      volumeSizeGiB,
      status,
      blocksPut: figures.changedBlocksCount,
      dataBlocksRead: run.dataBlocksRead,
      zeroBlocksSkipped: run.zeroBlocksSkipped,
      blocksEqualToParent: run.blocksEqualToParent,
      parentBlocksFetched: run.parentBlocksFetched,
      holesDetected: run.holesDetected,
    };
  } finally {
    await handle.close().catch(() => undefined);
  }
}

class UploadRun {
  dataBlocksRead = 0;
  zeroBlocksSkipped = 0;
  blocksEqualToParent = 0;
  parentBlocksFetched = 0;
  holesDetected = true;
  private blocksPut = 0;
  private readonly linear = createHash('sha256');
  private readonly volumeBlocks: number;

  constructor(
    private readonly client: SnapshotClient,
    private readonly snapshotId: string,
    private readonly source: UploadSource,
    private readonly handle: fs.FileHandle,
    volumeSizeGiB: number,
    private readonly parent: SnapshotBlockList | undefined,
    private readonly settings: {
      zeroSkipAllowed: boolean;
      concurrency: number;
      stats: TransferStats;
      helper: string;
      log: (line: string) => void;
      signal?: AbortSignal;
    },
  ) {
    this.volumeBlocks = volumeSizeGiB * BLOCKS_PER_GIB;
    settings.stats.volumeBytes = volumeSizeGiB * GIB_BYTES;
  }

  async putAll(): Promise<void> {
    const stats = this.settings.stats;
    // Hashed in block order as results come back in order: LINEAR needs ascending indexes.
    const inOrder = new InOrder<{ index: number; digest?: Buffer }>(({ index, digest }) => {
      if (digest) {
        this.linear.update(digest);
        this.blocksPut += 1;
      }
      stats.doneBytes = (index + 1) * BLOCK_SIZE_BYTES;
    });
    const concurrency = this.settings.concurrency;
    await forEachBounded(
      this.candidates(),
      { concurrency, windowMax: concurrency * WINDOW_PER_CONCURRENCY },
      async (candidate, sequence) => inOrder.complete(sequence, { index: candidate.index, digest: await this.process(candidate) }),
      this.settings.signal,
    );
    stats.doneBytes = stats.volumeBytes;
  }

  completionFigures(): { changedBlocksCount: number; linearChecksumBase64: string } {
    return { changedBlocksCount: this.blocksPut, linearChecksumBase64: this.linear.digest('base64') };
  }

  /** PUTs the block or skips it; resolves with the digest PUT, if any. */
  private async process(candidate: Candidate): Promise<Buffer | undefined> {
    let data: Buffer | undefined;
    if (candidate.inData) {
      data = await this.readBlock(candidate.index);
      this.dataBlocksRead += 1;
      if (isZeroBlock(data)) data = undefined;
    }
    if (data === undefined) {
      // Zeros over the parent's data must be sent, or the parent's data would show through.
      // A hole is never written, so it is never sent otherwise.
      if (candidate.parentToken === undefined && (this.settings.zeroSkipAllowed || !candidate.inData)) {
        if (candidate.inData) this.skipped('zero');
        return undefined;
      }
      return this.put(candidate.index, ZERO_BLOCK);
    }
    if (candidate.parentToken !== undefined) {
      this.parentBlocksFetched += 1;
      const parentData = await this.client.getSnapshotBlock(this.parent!.snapshotId, candidate.index, candidate.parentToken);
      if (parentData.equals(data)) {
        this.skipped('parent');
        return undefined;
      }
    }
    return this.put(candidate.index, data);
  }

  private skipped(why: 'zero' | 'parent'): void {
    if (why === 'zero') this.zeroBlocksSkipped += 1;
    else this.blocksEqualToParent += 1;
    this.settings.stats.blocksSkipped += 1;
  }

  private async put(index: number, data: Buffer): Promise<Buffer> {
    const digest = sha256Digest(data);
    await this.client.putSnapshotBlock({
      snapshotId: this.snapshotId,
      blockIndex: index,
      data,
      checksumBase64: digest.toString('base64'),
      progressPercent: Math.min(100, Math.floor((100 * index) / this.volumeBlocks)),
    });
    this.settings.stats.blocksTransferred += 1;
    this.settings.stats.bytesTransferred += BLOCK_SIZE_BYTES;
    return digest;
  }

  /** One block of the file, zero-filled past its end. */
  private async readBlock(index: number): Promise<Buffer> {
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

  /** Blocks to look at, ascending: the file's data blocks merged with the parent's blocks. */
  private async *candidates(): AsyncGenerator<Candidate> {
    const data = this.dataBlockRanges()[Symbol.asyncIterator]();
    const parentBlocks: AsyncIterator<BlockEntry> | undefined = this.parent?.entries();
    let range = await data.next();
    let nextDataIndex = range.done ? Infinity : range.value[0];
    let parentEntry = parentBlocks ? await parentBlocks.next() : undefined;
    try {
      for (;;) {
        const nextParentIndex = parentEntry && !parentEntry.done ? parentEntry.value.blockIndex : Infinity;
        const index = Math.min(nextDataIndex, nextParentIndex);
        if (index === Infinity || index >= this.volumeBlocks) return;
        const candidate: Candidate = { index, inData: index === nextDataIndex };
        if (index === nextParentIndex) {
          candidate.parentToken = parentEntry!.done ? undefined : parentEntry!.value.blockToken;
          parentEntry = await parentBlocks!.next();
        }
        if (candidate.inData) {
          nextDataIndex += 1;
          if (!range.done && nextDataIndex >= range.value[1]) {
            range = await data.next();
            nextDataIndex = range.done ? Infinity : range.value[0];
          }
        }
        yield candidate;
      }
    } finally {
      await data.return?.(undefined);
      await parentBlocks?.return?.(undefined);
    }
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
        listing = await listExtents(this.settings.helper, this.source.path, start);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
        this.settings.log(`${this.settings.helper} is missing: ${EXTENTS_HELPER_MISSING_WHY}; reading every byte of ${this.source.path}, holes too`);
        listing = { sizeBytes: size, extents: [], holesUnsupported: true };
        helperMissing = true;
      }
      if (listing.holesUnsupported) {
        this.holesDetected = false;
        if (this.source.kind === 'file' && !helperMissing) this.settings.log(`${this.source.path}'s filesystem cannot tell holes (no SEEK_DATA): reading every byte`);
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
          else if (fields[0] === 'data' && fields.length === 3) listing.extents.push({ offsetBytes: Number(fields[1]), lengthBytes: Number(fields[2]) });
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
