// `ebs-fuse download SNAPSHOT_ID FILE`: a completed snapshot into a sparse file.
import path from 'node:path';
import type { Command } from 'commander';
import { downloadSnapshot } from '../core/download';
import { TRANSFER_CONCURRENCY_MAX } from '../core/limits';
import { newTransferStats } from '../core/transfer';
import { addConnectionOptions, openSnapshotClient, type ConnectionOptions } from './connection';
import { describeError, UserError } from '../errors';
import { log } from './log';
import { onInterrupt, transferFailure } from './interrupt';
import { parseInteger, parseSnapshotId } from './options';
import { startTransferProgress } from './transfer-progress';

export const DEFAULT_DOWNLOAD_CONCURRENCY = 64;

interface DownloadFlags extends ConnectionOptions {
  force?: boolean;
  downloadConcurrency: string;
}

export function registerDownloadCommand(program: Command): void {
  const command = program
    .command('download')
    .argument('<snapshot-id>', 'a completed snapshot')
    .argument('<file>', 'the file to write (sparse where the snapshot has no data)')
    .description('write a completed snapshot to FILE, checking every block against its checksum')
    .option('--force', 'replace FILE if it exists')
    .option('--download-concurrency <n>', 'GetSnapshotBlock requests in flight', String(DEFAULT_DOWNLOAD_CONCURRENCY));
  addConnectionOptions(command);
  command.action(async (snapshotId: string, file: string, flags: DownloadFlags) => {
    process.exitCode = await runDownload(snapshotId, file, flags);
  });
}

async function runDownload(snapshotIdArgument: string, file: string, flags: DownloadFlags): Promise<number> {
  const snapshotId = parseSnapshotId(snapshotIdArgument, 'SNAPSHOT_ID');
  const concurrency = parseInteger(flags.downloadConcurrency, '--download-concurrency', 1, TRANSFER_CONCURRENCY_MAX);
  const filePath = path.resolve(file);

  const opened = await openSnapshotClient(flags, { maxSockets: concurrency, log });
  const stats = newTransferStats();
  const progress = startTransferProgress(
    { phase: 'downloading', moved: 'fetched' },
    { stats, retries: () => opened.client.retryCount },
    process.stderr,
  );
  const abort = new AbortController();
  const interrupt = onInterrupt((signal) => {
    log(`${signal}: stopping the download and removing what was written`);
    abort.abort(new UserError(`interrupted by ${signal}`));
    // Calls in back-off end at once, so the temporary file goes soon.
    void opened.close();
  });
  const startedAtMs = Date.now();
  try {
    const result = await downloadSnapshot(opened.client, {
      snapshotId,
      filePath,
      force: flags.force === true,
      concurrency,
      stats,
      signal: abort.signal,
    });
    progress.stop();
    const seconds = ((Date.now() - startedAtMs) / 1000).toFixed(1);
    log(
      `${snapshotId} (${result.volumeSizeGiB} GiB) written to ${file}: ${result.blocksFetched} blocks fetched ` +
        `(${result.zeroBlocksNotWritten} of them zeros, left as holes), ${opened.client.retryCount} retries, in ${seconds} s`,
    );
    return 0;
  } catch (error) {
    progress.stop();
    throw transferFailure(error, abort.signal.aborted, `download ${snapshotId} via ${opened.endpointDescription}`);
  } finally {
    interrupt.remove();
    await opened.close().catch((error: unknown) => log(`closing the client: ${describeError(error)}`));
  }
}
