// `ebs-fuse mount`: start a snapshot (or resume one, or open a completed one
// read-only), present it as one file over FUSE until SIGINT, SIGTERM or an
// external umount, then flush, complete and report.
import path from 'node:path';
import type { Command } from 'commander';
import { DEFAULT_LIMITS, FINISH_TIMEOUT_MS } from '../core/limits';
import { defaultStateDir, openReadOnlySnapshot, SnapshotSession } from '../core/session';
import type { VolumeFile, VolumeStats } from '../core/volume-file';
import type { SnapshotStatus } from '../ebs/client';
import { describeError, UserError } from '../errors';
import { DEFAULT_FILE_NAME, FuseMount, type FuseMountStats } from '../fuse/fuse-mount';
import { GIB_BYTES, MIB_BYTES } from '../units';
import { capYoungGeneration } from '../young-generation';
import { backgroundLogFile, defaultLogFile, redirectOutputToLog, runInBackground } from './background';
import { addConnectionOptions, openSnapshotClient, type OpenedClient } from './connection';
import { EXIT_INTERRUPTED } from './interrupt';
import { completionNote, log } from './log';
import { validate, type MountFlags, type MountMode, type ValidatedMount } from './mount-preflight';
import { MountRecordFile, type MountProgress } from './mount-record';
import { installLastResortUnmount, UNMOUNT_SIGNALS, waitForUnmountRequest } from './mount-signals';
import { addSnapshotOptions } from './options';
import { startFlushProgress, startMountedStatus, type Reporter } from './progress';

export const DEFAULT_CACHE_SIZE = `${DEFAULT_LIMITS.cacheSizeBytes / MIB_BYTES}MiB`;
export function registerMountCommand(program: Command): void {
  const command = program
    .command('mount')
    .argument('<mountpoint>', 'an existing, empty directory')
    .description(
      'start a snapshot and mount it as MOUNTPOINT/snapshot.img; Ctrl-C, `umount MOUNTPOINT` or `ebs-fuse unmount MOUNTPOINT` completes it',
    )
    .option('--size <gib>', 'volume size in GiB (1-65536) of a new snapshot; the file is exactly this large')
    .option('--resume <snapshot-id>', 'continue a pending snapshot that an earlier mount on this machine left (from --state-dir)')
    .option('--snapshot-id <snapshot-id>', 'with --read-only: mount this completed snapshot')
    .option('--read-only', 'mount a completed snapshot (--snapshot-id) read-only; nothing is written or completed');
  addSnapshotOptions(command);
  command
    .option('--file-name <name>', 'name of the file in the mountpoint', DEFAULT_FILE_NAME)
    .option('--cache-size <size>', 'memory for the block cache (written and recently used blocks), e.g. 256MiB, 2GiB', DEFAULT_CACHE_SIZE)
    .option(
      '--disk-cache-size <size>',
      'local disk for copies of uploaded blocks, which reads and partial rewrites need once a block has left memory ' +
        "(a pending snapshot cannot be read back), e.g. 4GiB; 0 keeps none; auto: what the state directory's file system " +
        'has free beyond a reserve of 10% of it (at least 64MiB)',
      'auto',
    )
    .option('--upload-concurrency <n>', 'PutSnapshotBlock requests in flight', String(DEFAULT_LIMITS.uploadConcurrency))
    .option(
      '--state-dir <dir>',
      'where pending snapshots keep their state (default $XDG_STATE_HOME/ebs-fuse, else ~/.local/state/ebs-fuse)',
    )
    .option('--no-complete', 'leave the snapshot pending at unmount instead of completing it')
    .option('--background', 'return once the file can be written, leaving the mount running; end it with `ebs-fuse unmount MOUNTPOINT`')
    .option(
      '--log-file <file>',
      'with --background: where the mount logs (default STATE_DIR/logs/MOUNTPOINT-HASH.log; 8 MiB, then one older file)',
    );
  addConnectionOptions(command);
  command.action(async (mountpoint: string, flags: MountFlags) => {
    let exitCode: number;
    try {
      const childLogFile = backgroundLogFile();
      if (flags.logFile !== undefined && !flags.background && childLogFile === undefined)
        throw new UserError('--log-file applies only with --background');
      if (flags.background) {
        const stateDir = path.resolve(flags.stateDir ?? defaultStateDir());
        const logFile = path.resolve(flags.logFile ?? defaultLogFile(stateDir, path.resolve(mountpoint)));
        process.exit(
          await runInBackground(
            process.argv.slice(2).filter((arg) => arg !== '--background'),
            logFile,
            mountpoint,
          ),
        );
      }
      if (childLogFile !== undefined) redirectOutputToLog(childLogFile);
      exitCode = await runMount(mountpoint, flags);
    } catch (error) {
      // Reported here rather than by cli.ts: a failed FUSE mount may leave a libuv handle that would keep the process alive.
      log(describeError(error));
      if (process.argv.includes('--verbose') && !(error instanceof UserError) && error instanceof Error && error.stack) {
        process.stderr.write(`${error.stack}\n`);
      }
      exitCode = error instanceof UserError ? error.exitCode : 1;
    }
    // fuse-native keeps a libuv handle alive after an external umount; end explicitly.
    process.exit(exitCode);
  });
}

/** What the mount wrote to local disk, against what was written through it: the price of the local copy. */
function localDiskLine(stats: VolumeStats): string {
  const mib = (bytes: number): string => (bytes / MIB_BYTES).toFixed(2);
  return (
    `local disk: ${mib(stats.localCopyBytesWritten + stats.journalBytesWritten)} MiB written to the state directory ` +
    `(block copies ${mib(stats.localCopyBytesWritten)} MiB in ${stats.localCopyWriteCount} writes, journal ${mib(stats.journalBytesWritten)} MiB) ` +
    `for ${mib(stats.bytesWritten)} MiB written through the mount`
  );
}

/** What is mounted: a session that ends in a flush, or a completed snapshot with nothing to finish. */
interface MountTarget {
  snapshotId: string;
  volumeSizeGiB: number;
  file: VolumeFile;
  session?: SnapshotSession;
}

async function openTarget(mode: MountMode, opened: OpenedClient, settings: ValidatedMount): Promise<MountTarget> {
  const tuning = {
    stateDir: settings.stateDir,
    cacheSizeBytes: settings.cacheSizeBytes,
    diskCacheSizeBytes: settings.diskCacheSizeBytes,
    uploadConcurrency: settings.uploadConcurrency,
    retryCount: () => opened.client.retryCount,
    log,
  };
  try {
    if (mode.kind === 'read-only') {
      const file = await openReadOnlySnapshot(opened.client, mode.snapshotId, settings.cacheSizeBytes);
      return { snapshotId: mode.snapshotId, volumeSizeGiB: file.sizeBytes / GIB_BYTES, file };
    }
    const session =
      mode.kind === 'new'
        ? await SnapshotSession.start(opened.client, mode.params, tuning)
        : await SnapshotSession.resume(opened.client, mode.snapshotId, tuning);
    return { snapshotId: session.snapshotId, volumeSizeGiB: session.volumeSizeGiB, file: session.file, session };
  } catch (error) {
    if (error instanceof UserError) throw error;
    const what = mode.kind === 'new' ? 'start a snapshot' : `open ${mode.snapshotId}`;
    throw new UserError(`cannot ${what} at ${opened.endpointDescription}: ${describeError(error)}`);
  }
}

/** Runs one mount to its end; resolves with the exit code. Errors before mounting are thrown. */
async function runMount(mountpointArgument: string, flags: MountFlags): Promise<number> {
  const { mode, mount: settings } = await validate(mountpointArgument, flags);
  capYoungGeneration();

  const opened: OpenedClient = await openSnapshotClient(flags, { maxSockets: settings.uploadConcurrency, log });
  let target: MountTarget;
  try {
    target = await openTarget(mode, opened, settings);
  } catch (error) {
    await opened.close().catch(() => undefined);
    throw error;
  }
  const { snapshotId, session } = target;

  let externalUnmount: () => void = () => undefined;
  const externallyUnmounted = new Promise<void>((resolve) => (externalUnmount = resolve));
  let fuseMount: FuseMount;
  try {
    fuseMount = await FuseMount.mount({
      mountpoint: settings.mountpoint,
      fileName: settings.fileName,
      file: target.file,
      log,
      onExternalUnmount: () => externalUnmount(),
    });
  } catch (error) {
    await session?.close().catch(() => undefined);
    await opened.close().catch(() => undefined);
    const consequence =
      mode.kind === 'new'
        ? `; snapshot ${snapshotId} was started but nothing was written: it stays pending until EBS times it out`
        : mode.kind === 'resume'
          ? `; ${snapshotId} stays pending with its state kept`
          : '';
    throw new UserError(`${describeError(error)}${consequence}`);
  }
  installLastResortUnmount(fuseMount);
  // Once the terminal is gone, writes to it fail with EIO; the flush must go on regardless.
  process.stdout.on('error', () => undefined);
  process.stderr.on('error', () => undefined);

  // The signal handlers go in before the line is out: whoever reads it may send SIGINT at once,
  // and without a handler that would kill the process and leave a dead mount.
  const unmountRequested = waitForUnmountRequest(fuseMount, externallyUnmounted);
  const progress = (): MountProgress => mountProgress(session?.stats(), fuseMount.stats());
  const record = MountRecordFile.create(
    {
      mountpoint: fuseMount.mountpoint,
      filePath: fuseMount.filePath,
      snapshotId,
      readOnly: !session,
      complete: settings.complete,
      endpoint: opened.endpointDescription,
      ...(session ? { stateDir: settings.stateDir } : {}),
      logFile: backgroundLogFile(),
      progress: progress(),
    },
    log,
  );
  record.keepUpdated(progress);
  process.stdout.write(`${snapshotId} ${fuseMount.filePath}\n`);
  const ending = !session ? 'unmount' : settings.complete ? 'complete it' : 'leave it pending';
  log(
    `snapshot ${snapshotId} (${target.volumeSizeGiB} GiB${session ? '' : ', read-only'}) via ${opened.endpointDescription}; ` +
      `${session ? 'write' : 'read'} ${fuseMount.filePath}, then press Ctrl-C or run \`umount ${fuseMount.mountpoint}\` to ${ending}`,
  );
  let statusLines: Reporter = session ? startMountedStatus(session, process.stderr) : { stop: () => undefined };

  await unmountRequested;
  statusLines.stop();
  record.update({ phase: 'flushing', progress: progress() });

  try {
    await fuseMount.unmount();
  } catch (error) {
    log(`${describeError(error)}; ${session ? 'flushing' : 'ending'} anyway`);
  }
  log(kernelRequestsLine(fuseMount.stats()));

  if (!session) {
    process.stdout.write(`${snapshotId} completed\n`);
    record.end('completed', 0, progress());
    await opened.close().catch((error: unknown) => log(`closing the client: ${describeError(error)}`));
    return 0;
  }

  let interruptions = 0;
  const onSignalDuringFlush = (signal: NodeJS.Signals): void => {
    // A closed terminal is no request to abandon the flush.
    if (signal === 'SIGHUP') return;
    interruptions += 1;
    if (interruptions === 1) {
      const stats = session.stats();
      log(
        `${signal}: still uploading ${stats.dirtyBlocks + stats.uploadingBlocks} blocks of ${snapshotId}; ` +
          'send it again to stop now (the snapshot stays pending and data not yet uploaded is lost)',
      );
      return;
    }
    log(`stopped before the final flush finished: ${snapshotId} stays pending and is not complete`);
    process.stdout.write(`${snapshotId} error\n`);
    record.end('error', EXIT_INTERRUPTED, progress());
    process.exit(EXIT_INTERRUPTED);
  };
  for (const signal of UNMOUNT_SIGNALS) process.on(signal, onSignalDuringFlush);

  statusLines = startFlushProgress(session, process.stderr);
  let exitCode: number;
  let endStatus: SnapshotStatus = 'error';
  try {
    const result = await session.finish({ complete: settings.complete, timeoutMs: FINISH_TIMEOUT_MS });
    statusLines.stop();
    log(localDiskLine(session.stats()));
    process.stdout.write(`${snapshotId} ${result.status}\n`);
    endStatus = result.status;
    if (!settings.complete) {
      log(`${snapshotId} left pending as asked; complete it later with: ebs-fuse complete ${snapshotId} --state-dir ${settings.stateDir}`);
      exitCode = result.status === 'pending' ? 0 : 1;
    } else {
      const note = completionNote(snapshotId, result.status);
      if (note) log(note);
      exitCode = result.status === 'error' ? 1 : 0;
    }
  } catch (error) {
    statusLines.stop();
    process.stdout.write(`${snapshotId} error\n`);
    // finish() explains a failed flush itself; a failed CompleteSnapshot needs the way out said here.
    log(
      error instanceof UserError
        ? error.message
        : `CompleteSnapshot of ${snapshotId} failed: ${describeError(error)}; its state is kept, retry with: ebs-fuse complete ${snapshotId} --state-dir ${settings.stateDir}`,
    );
    exitCode = 1;
  }
  for (const signal of UNMOUNT_SIGNALS) process.off(signal, onSignalDuringFlush);
  record.end(endStatus, exitCode, progress());
  await opened.close().catch((error: unknown) => log(`closing the client: ${describeError(error)}`));
  return exitCode;
}

function mountProgress(volume: VolumeStats | undefined, kernel: FuseMountStats): MountProgress {
  return {
    dirtyBlocks: volume?.dirtyBlocks ?? 0,
    uploadingBlocks: volume?.uploadingBlocks ?? 0,
    blocksUploaded: volume?.blocksUploaded ?? 0,
    bytesUploaded: volume?.bytesUploaded ?? 0,
    retries: volume?.retries ?? 0,
    ...(volume?.lastUploadError ? { lastUploadError: volume.lastUploadError } : {}),
    openHandles: kernel.openHandles,
    largestWriteBytes: kernel.largestWriteBytes,
  };
}

/** What the kernel sent, and through which FUSE path: the write size shows whether 1 MiB writes (libfuse 3) or big_writes took effect. */
function kernelRequestsLine(stats: FuseMountStats): string {
  return (
    `kernel requests through ${stats.binding}: ${stats.writeCalls} writes (${stats.writeBytes} bytes, largest ${stats.largestWriteBytes}), ` +
    `${stats.readCalls} reads, ${stats.fsyncCalls} fsyncs, ${stats.flushCalls} flushes`
  );
}
