// `ebs-fuse download`: a completed snapshot into a local file. Plain async code
// over a SnapshotClient, so it is tested without the CLI.
//
// The block list is read a page at a time; blocks are fetched by a bounded pool
// (the client checks each block against the checksum that comes with it, and the
// retry policy fetches a corrupted one again, so bad bytes are never written).
// Only blocks holding something other than zeros are written, into a temporary
// file beside the target; then it is cut to the volume size, synced, and only
// then given the target's name, so a failed download never leaves a file that
// looks complete.
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { BLOCK_SIZE_BYTES, type SnapshotClient } from '../ebs/client';
import { writeFully } from '../durable-file';
import { describeError, UserError } from '../errors';
import { GIB_BYTES } from '../units';
import {
  forEachBounded,
  InOrder,
  isZeroBlock,
  LIST_PAGE_SIZE_MAX,
  newTransferStats,
  SnapshotBlockList,
  type TransferStats,
} from './transfer';

/** Fetched blocks that may wait for an earlier slow one, per unit of concurrency. */
const WINDOW_PER_CONCURRENCY = 4;

export interface DownloadOptions {
  snapshotId: string;
  filePath: string;
  /** Replace an existing file. Without it, an existing file is an error. */
  force: boolean;
  /** GetSnapshotBlock calls in flight at once. */
  concurrency: number;
  /** Updated in place while the download runs, for a progress display. */
  stats?: TransferStats;
  /** Stops the download; the temporary file is removed. */
  signal?: AbortSignal;
  /** ListSnapshotBlocks page size; tests make it small to exercise paging. */
  listPageSize?: number;
}

export interface DownloadResult {
  snapshotId: string;
  filePath: string;
  volumeSizeGiB: number;
  /** GetSnapshotBlock calls that returned a block (retries not counted). */
  blocksFetched: number;
  /** Fetched blocks holding only zeros, left as holes. */
  zeroBlocksNotWritten: number;
}

/** Downloads the snapshot into filePath (sparse where the snapshot has no data). */
export async function downloadSnapshot(client: SnapshotClient, options: DownloadOptions): Promise<DownloadResult> {
  const target = options.filePath;
  await checkTarget(target, options.force);

  let list: SnapshotBlockList;
  try {
    list = await SnapshotBlockList.open(client, options.snapshotId, options.listPageSize ?? LIST_PAGE_SIZE_MAX);
  } catch (error) {
    throw new UserError(`cannot read snapshot ${options.snapshotId}: ${describeError(error)}`);
  }
  const stats = options.stats ?? newTransferStats();
  const volumeBytes = list.volumeSizeGiB * GIB_BYTES;
  stats.volumeBytes = volumeBytes;

  // Hidden and clearly unfinished, in the target's directory so the rename stays on one filesystem.
  const temporary = path.join(path.dirname(target), `.${path.basename(target)}.ebs-fuse-partial-${randomBytes(6).toString('hex')}`);
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(temporary, 'wx', 0o644);
  } catch (error) {
    throw new UserError(`cannot create ${temporary} to download into: ${describeError(error)}`);
  }
  const result: DownloadResult = {
    snapshotId: options.snapshotId,
    filePath: target,
    volumeSizeGiB: list.volumeSizeGiB,
    blocksFetched: 0,
    zeroBlocksNotWritten: 0,
  };
  let closed = false;
  try {
    const inOrder = new InOrder<number>((index) => {
      stats.doneBytes = (index + 1) * BLOCK_SIZE_BYTES;
    });
    const concurrency = options.concurrency;
    try {
      await forEachBounded(
        list.entries(),
        { concurrency, windowMax: concurrency * WINDOW_PER_CONCURRENCY },
        async ({ blockIndex, blockToken }, sequence) => {
          const data = await client.getSnapshotBlock(options.snapshotId, blockIndex, blockToken);
          result.blocksFetched += 1;
          stats.blocksTransferred += 1;
          stats.bytesTransferred += data.length;
          // The file starts empty and sparse: a zero block needs no write.
          if (isZeroBlock(data)) {
            result.zeroBlocksNotWritten += 1;
            stats.blocksSkipped += 1;
          } else {
            await writeFully(handle, data, blockIndex * BLOCK_SIZE_BYTES);
          }
          inOrder.complete(sequence, blockIndex);
        },
        options.signal,
      );
    } catch (error) {
      if (options.signal?.aborted) throw new UserError(`the download of ${options.snapshotId} was interrupted; ${target} was not written`);
      throw new UserError(`downloading ${options.snapshotId} failed: ${describeError(error)}; ${target} was not written`);
    }
    try {
      await handle.truncate(volumeBytes);
      await handle.sync();
      closed = true;
      await handle.close();
      await giveName(temporary, target, options.force);
    } catch (error) {
      if (error instanceof UserError) throw error;
      throw new UserError(`cannot write ${target}: ${describeError(error)}`);
    }
    stats.doneBytes = volumeBytes;
    await syncDirectory(path.dirname(target));
    return result;
  } finally {
    if (!closed) await handle.close().catch(() => undefined);
    // After a successful rename the temporary name is gone already.
    await fs.rm(temporary, { force: true }).catch(() => undefined);
  }
}

/** Refuses an existing target without force, and anything but a regular file with it. */
async function checkTarget(target: string, force: boolean): Promise<void> {
  let stat;
  try {
    stat = await fs.stat(target);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      const directory = path.dirname(target);
      const parent = await fs.stat(directory).catch(() => undefined);
      if (!parent?.isDirectory()) throw new UserError(`cannot download into ${target}: ${directory} is not a directory`);
      return;
    }
    throw new UserError(`cannot use ${target}: ${describeError(error)}`);
  }
  if (!stat.isFile()) throw new UserError(`${target} exists and is not a regular file; download writes a regular file`);
  if (!force) throw new UserError(`${target} already exists; pass --force to replace it`);
}

/**
 * Without force, a hard link gives the name only if nobody took it meanwhile
 * (rename would silently replace a file created during the download).
 */
async function giveName(temporary: string, target: string, force: boolean): Promise<void> {
  if (force) {
    await fs.rename(temporary, target);
    return;
  }
  try {
    await fs.link(temporary, target);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new UserError(`${target} appeared while downloading; pass --force to replace it`);
    // Some filesystems have no hard links: check, then rename.
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP') throw error;
    if (
      await fs.stat(target).then(
        () => true,
        () => false,
      )
    )
      throw new UserError(`${target} appeared while downloading; pass --force to replace it`);
    await fs.rename(temporary, target);
    return;
  }
  await fs.unlink(temporary);
}

/** Makes the new name durable; a filesystem that cannot sync a directory is no reason to fail. */
async function syncDirectory(directory: string): Promise<void> {
  const handle = await fs.open(directory, 'r').catch(() => undefined);
  if (!handle) return;
  await handle.sync().catch(() => undefined);
  await handle.close().catch(() => undefined);
}
