// `ebs-fuse upload FILE`: a file or block device to a new snapshot; prints the
// snapshot ID once it is completed.
import type { Command } from 'commander';
import { newTransferStats } from '../core/transfer';
import { uploadFile } from '../core/upload';
import { addConnectionOptions, openSnapshotClient, type ConnectionOptions } from '../ebs/connection';
import { describeError, UserError } from '../errors';
import { EXIT_INTERRUPTED, onInterrupt } from './interrupt';
import { DEFAULT_UPLOAD_CONCURRENCY } from './mount';
import { addSnapshotOptions, parseInteger, parseVolumeSizeGiB, snapshotParams, type SnapshotOptionValues } from './options';
import { startTransferProgress } from './transfer-progress';

/** As the mount's --upload-concurrency. */
const UPLOAD_CONCURRENCY_MAX = 1024;

interface UploadFlags extends SnapshotOptionValues, ConnectionOptions {
  size?: string;
  uploadConcurrency: string;
}

export function registerUploadCommand(program: Command): void {
  const command = program
    .command('upload')
    .argument('<file>', 'a file or block device')
    .description('upload FILE (holes cost nothing) to a new snapshot, complete it, and print its ID')
    .option('--size <gib>', "volume size in GiB; default FILE's size rounded up to whole GiB, and only larger is accepted");
  addSnapshotOptions(command);
  command.option('--upload-concurrency <n>', 'blocks read and PUT at once', String(DEFAULT_UPLOAD_CONCURRENCY));
  addConnectionOptions(command);
  command.action(async (file: string, flags: UploadFlags) => {
    process.exitCode = await runUpload(file, flags);
  });
}

function log(line: string): void {
  process.stderr.write(line.startsWith('ebs-fuse:') ? `${line}\n` : `ebs-fuse: ${line}\n`);
}

async function runUpload(file: string, flags: UploadFlags): Promise<number> {
  const volumeSizeGiB = flags.size === undefined ? undefined : parseVolumeSizeGiB(flags.size);
  // The size is worked out from the file; 1 only stands in while the options are checked.
  const snapshot = snapshotParams(1, flags);
  const concurrency = parseInteger(flags.uploadConcurrency, '--upload-concurrency', 1, UPLOAD_CONCURRENCY_MAX);

  const opened = await openSnapshotClient(flags, { maxSockets: concurrency, log });
  const stats = newTransferStats();
  const progress = startTransferProgress({ phase: 'uploading', moved: 'sent' }, { stats, retries: () => opened.client.retryCount }, process.stderr);
  const abort = new AbortController();
  let snapshotId: string | undefined;
  const interrupt = onInterrupt((signal) => {
    log(`${signal}: stopping the upload${snapshotId ? ` (${snapshotId} stays pending)` : ''}; send it again to stop at once`);
    abort.abort(new UserError(`interrupted by ${signal}`));
  });
  const startedAtMs = Date.now();
  try {
    const result = await uploadFile(opened.client, {
      filePath: file,
      volumeSizeGiB,
      snapshot,
      concurrency,
      log,
      stats,
      signal: abort.signal,
      onStarted: (id, gib) => {
        snapshotId = id;
        log(`uploading ${file} to ${id} (${gib} GiB) via ${opened.endpointDescription}`);
      },
    });
    progress.stop();
    const seconds = ((Date.now() - startedAtMs) / 1000).toFixed(1);
    const parentPart = snapshot.parentSnapshotId === undefined ? '' : `, ${result.blocksEqualToParent} equal to the parent`;
    log(
      `${result.snapshotId}: ${result.blocksPut} blocks sent (${((result.blocksPut * 524288) / 1e6).toFixed(1)} MB), ` +
        `${result.zeroBlocksSkipped} zero blocks skipped${parentPart}, in ${seconds} s`,
    );
    if (result.status === 'error') {
      log(`EBS put snapshot ${result.snapshotId} into the error state at completion; it cannot be used`);
      return 1;
    }
    if (result.status === 'pending') log(`EBS accepted the completion of ${result.snapshotId} and is still processing it`);
    process.stdout.write(`${result.snapshotId}\n`);
    return 0;
  } catch (error) {
    progress.stop();
    if (abort.signal.aborted) throw new UserError(describeError(error), EXIT_INTERRUPTED);
    if (error instanceof UserError) throw error;
    throw new UserError(`cannot upload ${file} via ${opened.endpointDescription}: ${describeError(error)}`);
  } finally {
    interrupt.remove();
    await opened.close().catch((error: unknown) => log(`closing the client: ${describeError(error)}`));
  }
}
