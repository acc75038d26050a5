// `ebs-fuse upload FILE`: a file or block device to a new snapshot; prints the
// snapshot ID once it is completed. `ebs-fuse upload - --size GIB` reads the
// image from standard input instead, once, front to back.
import type { Command } from 'commander';
import { DEFAULT_LIMITS, TRANSFER_CONCURRENCY_MAX } from '../core/limits';
import { newTransferStats } from '../core/transfer';
import { uploadFile, uploadStream, type UploadResult } from '../core/upload';
import { addConnectionOptions, openSnapshotClient, type ConnectionOptions } from './connection';
import { BLOCK_SIZE_BYTES } from '../ebs/client';
import { describeError, UserError } from '../errors';
import { formatMB } from '../units';
import { completionNote, log } from './log';
import { onInterrupt, transferFailure } from './interrupt';
import { addSnapshotOptions, parseInteger, parseVolumeSizeGiB, snapshotParams, type SnapshotOptionValues } from './options';
import { startTransferProgress } from './transfer-progress';

interface UploadFlags extends SnapshotOptionValues, ConnectionOptions {
  size?: string;
  uploadConcurrency: string;
}

export function registerUploadCommand(program: Command): void {
  const command = program
    .command('upload')
    .argument('<file>', 'a file or block device, or - for standard input (with --size)')
    .description('upload FILE (holes cost nothing) or standard input to a new snapshot, complete it, and print its ID')
    .option(
      '--size <gib>',
      "volume size in GiB; default FILE's size rounded up to whole GiB, and only larger is accepted; required with -",
    );
  addSnapshotOptions(command);
  command.option('--upload-concurrency <n>', 'blocks read and PUT at once', String(DEFAULT_LIMITS.uploadConcurrency));
  addConnectionOptions(command);
  command.action(async (file: string, flags: UploadFlags) => {
    process.exitCode = await runUpload(file, flags);
  });
}

async function runUpload(file: string, flags: UploadFlags): Promise<number> {
  const volumeSizeGiB = flags.size === undefined ? undefined : parseVolumeSizeGiB(flags.size);
  const fromStdin = file === '-';
  if (fromStdin && volumeSizeGiB === undefined)
    throw new UserError('upload - needs --size GIB: the size of standard input is not known before it ends');
  if (fromStdin && process.stdin.isTTY)
    throw new UserError('upload - reads the image from standard input, which is a terminal: pipe or redirect the image into it');
  const name = fromStdin ? 'standard input' : file;
  // The size is worked out from the file; 1 only stands in while the options are checked.
  const snapshot = snapshotParams(1, flags);
  const concurrency = parseInteger(flags.uploadConcurrency, '--upload-concurrency', 1, TRANSFER_CONCURRENCY_MAX);

  const opened = await openSnapshotClient(flags, { maxSockets: concurrency, log });
  const stats = newTransferStats();
  const progress = startTransferProgress(
    { phase: 'uploading', moved: 'sent' },
    { stats, retries: () => opened.client.retryCount },
    process.stderr,
  );
  const abort = new AbortController();
  let snapshotId: string | undefined;
  const interrupt = onInterrupt((signal) => {
    log(`${signal}: stopping the upload${snapshotId ? ` (${snapshotId} stays pending)` : ''}; send it again to stop at once`);
    abort.abort(new UserError(`interrupted by ${signal}`));
  });
  const startedAtMs = Date.now();
  try {
    const common = {
      snapshot,
      concurrency,
      log,
      stats,
      signal: abort.signal,
      onStarted: (id: string, gib: number) => {
        snapshotId = id;
        log(`uploading ${name} to ${id} (${gib} GiB) via ${opened.endpointDescription}`);
      },
    };
    let result: UploadResult;
    let bytesRead: number | undefined;
    if (fromStdin) {
      const streamed = await uploadStream(opened.client, { ...common, stream: process.stdin, name, volumeSizeGiB: volumeSizeGiB! });
      bytesRead = streamed.bytesRead;
      result = streamed;
    } else {
      result = await uploadFile(opened.client, { ...common, filePath: file, volumeSizeGiB });
    }
    progress.stop();
    // A pipe that ends early (its writer failed) looks like a short image: the count lets a script check.
    if (bytesRead !== undefined) log(`standard input ended after ${bytesRead} bytes`);
    const seconds = ((Date.now() - startedAtMs) / 1000).toFixed(1);
    const parentPart = snapshot.parentSnapshotId === undefined ? '' : `, ${result.blocksEqualToParent} equal to the parent`;
    log(
      `${result.snapshotId}: ${result.blocksPut} blocks sent (${formatMB(result.blocksPut * BLOCK_SIZE_BYTES)}), ` +
        `${result.zeroBlocksSkipped} zero blocks skipped${parentPart}, in ${seconds} s`,
    );
    const note = completionNote(result.snapshotId, result.status);
    if (note) log(note);
    if (result.status === 'error') return 1;
    process.stdout.write(`${result.snapshotId}\n`);
    return 0;
  } catch (error) {
    progress.stop();
    throw transferFailure(error, abort.signal.aborted, `upload ${name} via ${opened.endpointDescription}`);
  } finally {
    interrupt.remove();
    await opened.close().catch((error: unknown) => log(`closing the client: ${describeError(error)}`));
  }
}
