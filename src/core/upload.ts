// `ebs-fuse upload`: a file, a block device or a stream to a new snapshot, then
// CompleteSnapshot. Plain async code over a SnapshotClient, so it is tested
// without the CLI.
//
// Only blocks that can hold data are looked at: the source's data blocks
// (upload-source.ts) and, with a parent, the parent's blocks. They go in
// ascending order through a bounded pool: each is read (512 KiB), classified,
// maybe compared with the parent's block, and PUT or skipped. Results go back
// into block order for the LINEAR checksum, which is hashed as it goes, so
// memory is bounded by the concurrency, not the size.
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { sha256Digest } from '../ebs/checksum';
import {
  BLOCK_SIZE_BYTES,
  BLOCKS_PER_GIB,
  VOLUME_SIZE_MAX_GIB,
  type BlockEntry,
  type SnapshotClient,
  type SnapshotStatus,
  type StartSnapshotParams,
} from '../ebs/client';
import { describeError, UserError } from '../errors';
import { GIB_BYTES } from '../units';
import { forEachBounded, InOrder, isZeroBlock, newTransferStats, SnapshotBlockList, ZERO_BLOCK, type TransferStats } from './transfer';
import {
  DEFAULT_EXTENTS_HELPER,
  FileBlockSource,
  StreamBlockSource,
  StreamTooLongError,
  type BlockSource,
  type DataBlock,
} from './upload-source';

export { DEFAULT_EXTENTS_HELPER, listExtents } from './upload-source';

/** Results that may wait for an earlier block's slow PUT, per unit of concurrency. */
const WINDOW_PER_CONCURRENCY = 4;

/** What uploadFile and uploadStream share. */
export interface UploadCommonOptions {
  /** The snapshot options; the volume size is worked out here. */
  snapshot: Omit<StartSnapshotParams, 'volumeSizeGiB'>;
  /** Blocks being read, compared and PUT at once. */
  concurrency: number;
  log?: (line: string) => void;
  /** Updated in place while the upload runs, for a progress display. */
  stats?: TransferStats;
  /** Stops the upload: no new block starts, and the snapshot stays pending. */
  signal?: AbortSignal;
  /** Called once StartSnapshot answered. */
  onStarted?: (snapshotId: string, volumeSizeGiB: number) => void;
}

export interface UploadOptions extends UploadCommonOptions {
  filePath: string;
  /** --size; only a size at least the file's is accepted. Default: the file's size rounded up to whole GiB. */
  volumeSizeGiB?: number;
  /** Tests point this elsewhere to run without hole detection. */
  extentsHelperPath?: string;
}

export interface UploadStreamOptions extends UploadCommonOptions {
  /** Read once, front to back; a byte past the volume's end fails the upload. */
  stream: Readable | NodeJS.ReadableStream;
  /** For messages, e.g. "standard input". */
  name?: string;
  /** A stream's size is not known up front, so the volume's is given. */
  volumeSizeGiB: number;
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

interface Candidate {
  index: number;
  /** A data block of the source: read it (a stream's comes read). Otherwise a hole, or past the end. */
  inData: boolean;
  data?: Buffer;
  /** The parent holds data for this block. */
  parentToken?: string;
}

/** Uploads the file to a new snapshot and completes it. */
export async function uploadFile(client: SnapshotClient, options: UploadOptions): Promise<UploadResult> {
  const log = options.log ?? (() => undefined);
  const source = await FileBlockSource.open(options.filePath, options.extentsHelperPath ?? DEFAULT_EXTENTS_HELPER, log);
  try {
    const { path: filePath, sizeBytes } = source.source;
    const fileGiB = Math.max(1, Math.ceil(sizeBytes / GIB_BYTES));
    if (fileGiB > VOLUME_SIZE_MAX_GIB) {
      throw new UserError(`${filePath} is ${sizeBytes} bytes, more than the ${VOLUME_SIZE_MAX_GIB} GiB EBS allows`);
    }
    if (options.volumeSizeGiB !== undefined && options.volumeSizeGiB < fileGiB) {
      throw new UserError(
        `--size ${options.volumeSizeGiB} is smaller than ${filePath} (${sizeBytes} bytes, ${fileGiB} GiB rounded up); --size may only make the volume larger`,
      );
    }
    return await uploadBlocks(client, source, options.volumeSizeGiB, fileGiB, options);
  } finally {
    await source.close();
  }
}

/**
 * Uploads a stream, read once front to back, to a new snapshot of
 * volumeSizeGiB and completes it. A short stream leaves the rest of the volume
 * zeros; a longer one fails the upload, and nothing is completed.
 */
export async function uploadStream(client: SnapshotClient, options: UploadStreamOptions): Promise<UploadResult & { bytesRead: number }> {
  const source = new StreamBlockSource(options.stream, options.name ?? 'the stream');
  const result = await uploadBlocks(client, source, options.volumeSizeGiB, 1, options);
  return { ...result, bytesRead: source.bytesRead };
}

/** The volume's size, its parent, StartSnapshot, every block, CompleteSnapshot. */
async function uploadBlocks(
  client: SnapshotClient,
  source: BlockSource,
  requestedGiB: number | undefined,
  sourceGiB: number,
  options: UploadCommonOptions,
): Promise<UploadResult> {
  const log = options.log ?? (() => undefined);
  let parent: SnapshotBlockList | undefined;
  const parentId = options.snapshot.parentSnapshotId;
  if (parentId !== undefined) {
    try {
      parent = await SnapshotBlockList.open(client, parentId);
    } catch (error) {
      throw new UserError(`cannot read the parent snapshot ${parentId}: ${describeError(error)}`);
    }
    if (requestedGiB !== undefined && requestedGiB < parent.volumeSizeGiB) {
      throw new UserError(
        `--size ${requestedGiB} is smaller than the parent snapshot ${parentId} (${parent.volumeSizeGiB} GiB); a child is at least as large as its parent`,
      );
    }
  }
  const volumeSizeGiB = Math.max(requestedGiB ?? sourceGiB, parent?.volumeSizeGiB ?? 0);
  if (parent && volumeSizeGiB > (requestedGiB ?? sourceGiB)) {
    log(`the volume is ${volumeSizeGiB} GiB, the size of the parent ${parentId}; past the end of ${source.name} it reads as zeros`);
  }

  const started = await client.startSnapshot({ ...options.snapshot, volumeSizeGiB });
  const snapshotId = started.snapshotId;
  options.onStarted?.(snapshotId, volumeSizeGiB);
  const encrypted = options.snapshot.encrypted === true || options.snapshot.kmsKeyArn !== undefined || started.kmsKeyArn !== undefined;
  const run = new UploadRun(client, snapshotId, source, volumeSizeGiB, parent, {
    // The zero-block rule (docs/SEMANTICS.md): where nothing below this snapshot
    // holds the block it reads as zeros anyway, unless encryption changes what an
    // absent block means, so a written zero block is sent there.
    zeroSkipAllowed: !encrypted,
    concurrency: options.concurrency,
    stats: options.stats ?? newTransferStats(),
    signal: options.signal,
  });
  const stays = `stays pending until EBS fails it after ${options.snapshot.timeoutMinutes ?? 60} idle minutes`;
  try {
    await run.putAll();
  } catch (error) {
    if (error instanceof StreamTooLongError)
      throw new UserError(`${error.message}; ${snapshotId} was not completed and ${stays}: run it again with a larger --size`);
    const why = options.signal?.aborted ? 'was interrupted' : `failed: ${describeError(error)}`;
    throw new UserError(`uploading ${source.name} to ${snapshotId} ${why}; the snapshot ${stays}: run the upload again`);
  }
  const figures = run.completionFigures();
  let status: SnapshotStatus;
  try {
    status = await client.completeSnapshot({ snapshotId, ...figures });
  } catch (error) {
    throw new UserError(
      `CompleteSnapshot of ${snapshotId} failed after every block was uploaded: ${describeError(error)}; the snapshot stays pending: run the upload again`,
    );
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
    holesDetected: source.holesDetected,
  };
}

class UploadRun {
  dataBlocksRead = 0;
  zeroBlocksSkipped = 0;
  blocksEqualToParent = 0;
  parentBlocksFetched = 0;
  private blocksPut = 0;
  private readonly linear = createHash('sha256');
  private readonly volumeBlocks: number;

  constructor(
    private readonly client: SnapshotClient,
    private readonly snapshotId: string,
    private readonly source: BlockSource,
    volumeSizeGiB: number,
    private readonly parent: SnapshotBlockList | undefined,
    private readonly settings: {
      zeroSkipAllowed: boolean;
      concurrency: number;
      stats: TransferStats;
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
      data = candidate.data ?? (await this.source.readBlock(candidate.index));
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

  /** Blocks to look at, ascending: the source's data blocks merged with the parent's blocks. */
  private async *candidates(): AsyncGenerator<Candidate> {
    const data: AsyncIterator<DataBlock> = this.source.dataBlocks(this.volumeBlocks);
    const parentBlocks: AsyncIterator<BlockEntry> | undefined = this.parent?.entries();
    let dataBlock = await data.next();
    let parentEntry = parentBlocks ? await parentBlocks.next() : undefined;
    try {
      for (;;) {
        const nextDataIndex = dataBlock.done ? Infinity : dataBlock.value.index;
        const nextParentIndex = parentEntry && !parentEntry.done ? parentEntry.value.blockIndex : Infinity;
        const index = Math.min(nextDataIndex, nextParentIndex);
        if (index === Infinity || index >= this.volumeBlocks) return;
        const candidate: Candidate = { index, inData: index === nextDataIndex };
        if (index === nextParentIndex) {
          candidate.parentToken = parentEntry!.done ? undefined : parentEntry!.value.blockToken;
          parentEntry = await parentBlocks!.next();
        }
        if (candidate.inData && !dataBlock.done) {
          candidate.data = dataBlock.value.data;
          dataBlock = await data.next();
        }
        yield candidate;
      }
    } finally {
      await data.return?.(undefined);
      await parentBlocks?.return?.(undefined);
    }
  }
}
