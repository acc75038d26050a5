// `ebs-fuse mount`: start a snapshot (or resume one, or open a completed one
// read-only), present it as one file over FUSE until SIGINT, SIGTERM or an
// external umount, then flush, complete and report.
import { execFileSync } from 'node:child_process';
import { constants as fsConstants, existsSync, promises as fs, realpathSync, statSync } from 'node:fs';
import { totalmem } from 'node:os';
import path from 'node:path';
import type { Command } from 'commander';
import { FINISH_TIMEOUT_MS, MIN_CACHE_SIZE_BYTES } from '../core/limits';
import type { DiskBudget } from '../core/local-copy';
import { defaultStateDir, openReadOnlySnapshot, SnapshotSession } from '../core/session';
import type { VolumeFile, VolumeStats } from '../core/volume-file';
import type { SnapshotStatus, StartSnapshotParams } from '../ebs/client';
import { addConnectionOptions, openSnapshotClient, type ConnectionOptions, type OpenedClient } from './connection';
import { describeError, UserError } from '../errors';
import { GIB_BYTES, MIB_BYTES } from '../units';
import { EXIT_INTERRUPTED } from './interrupt';
import { completionNote, log } from './log';
import { FuseMount, FuseUnavailableError, loadFuseNative, type FuseMountStats } from '../fuse/fuse-mount';
import { isMountPoint } from '../fuse/mountinfo';
import {
  addSnapshotOptions,
  parseInteger,
  parseSizeBytes,
  parseSnapshotId,
  parseVolumeSizeGiB,
  snapshotParams,
  type SnapshotOptionValues,
} from './options';
import { backgroundLogFile, defaultLogFile, redirectOutputToLog, runInBackground } from './background';
import { MountRecordFile, type MountProgress } from './mount-record';
import { startFlushProgress, startMountedStatus, type Reporter } from './progress';

export const DEFAULT_FILE_NAME = 'snapshot.img';
export const DEFAULT_CACHE_SIZE = '256MiB';
export const DEFAULT_UPLOAD_CONCURRENCY = 64;
const UPLOAD_CONCURRENCY_MAX = 1024;
const FILE_NAME_MAX_BYTES = 255;
/** The kernel sends release shortly after the last close; wait that long before calling the file busy. */
const RELEASE_GRACE_MS = 2000;
/** While an external lazy umount waits for the file to be closed, remind this often. */
const BUSY_REMINDER_INTERVAL_MS = 30_000;
/**
 * SIGINT and SIGTERM end the mount as the contract says; SIGHUP (the terminal
 * closed) does the same rather than killing the process in the middle of it.
 */
const UNMOUNT_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

interface MountFlags extends SnapshotOptionValues, ConnectionOptions {
  size?: string;
  resume?: string;
  snapshotId?: string;
  readOnly?: boolean;
  fileName: string;
  cacheSize: string;
  diskCacheSize: string;
  uploadConcurrency: string;
  stateDir?: string;
  complete: boolean;
  background?: boolean;
  logFile?: string;
}

interface ValidatedMount {
  mountpoint: string;
  fileName: string;
  cacheSizeBytes: number;
  diskCacheSizeBytes: DiskBudget;
  uploadConcurrency: number;
  stateDir: string;
  complete: boolean;
}

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
    .option('--upload-concurrency <n>', 'PutSnapshotBlock requests in flight', String(DEFAULT_UPLOAD_CONCURRENCY))
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
    `(block copies ${mib(stats.localCopyBytesWritten)} MiB, journal ${mib(stats.journalBytesWritten)} MiB) ` +
    `for ${mib(stats.bytesWritten)} MiB written through the mount`
  );
}

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`;
}

function validateFileName(name: string): string {
  if (name.length === 0 || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) {
    throw new UserError(`--file-name must be a plain file name without "/", not "${name}"`);
  }
  if (Buffer.byteLength(name) > FILE_NAME_MAX_BYTES) {
    throw new UserError(`--file-name is longer than ${FILE_NAME_MAX_BYTES} bytes`);
  }
  return name;
}

function validateCacheSize(value: string): number {
  const bytes = parseSizeBytes(value, '--cache-size');
  if (bytes < MIN_CACHE_SIZE_BYTES) {
    throw new UserError(`--cache-size must be at least ${MIN_CACHE_SIZE_BYTES / MIB_BYTES}MiB, not ${value}`);
  }
  if (bytes > totalmem()) {
    throw new UserError(`--cache-size ${value} is more than this machine's memory (${Math.floor(totalmem() / MIB_BYTES)}MiB)`);
  }
  return bytes;
}

async function validateMountpoint(mountpoint: string): Promise<string> {
  let stat;
  try {
    stat = await fs.stat(mountpoint);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new UserError(`mountpoint ${mountpoint} does not exist; create it with: mkdir -p ${mountpoint}`);
    if (code === 'ENOTCONN') {
      throw new UserError(`mountpoint ${mountpoint} is a dead FUSE mount left by a crashed process; run: fusermount -uz ${mountpoint}`);
    }
    throw new UserError(`cannot use mountpoint ${mountpoint}: ${describeError(error)}`);
  }
  if (!stat.isDirectory()) throw new UserError(`mountpoint ${mountpoint} is not a directory`);
  const absolute = realpathSync(mountpoint);
  if (await isMountPoint(absolute)) {
    throw new UserError(`mountpoint ${mountpoint} is already mounted; unmount it first (umount ${mountpoint}) or pick another directory`);
  }
  const entries = await fs.readdir(absolute);
  if (entries.length > 0) throw new UserError(`mountpoint ${mountpoint} is not empty; use an empty directory`);
  return absolute;
}

function checkFuseAvailable(): void {
  if (!existsSync('/dev/fuse')) {
    throw new UserError('/dev/fuse is missing: load the FUSE module (modprobe fuse), or in a container pass --device /dev/fuse');
  }
  // Anything else there (a plain file in a container image) would only fail at mount time, after StartSnapshot.
  if (!statSync('/dev/fuse').isCharacterDevice()) {
    throw new UserError(
      '/dev/fuse is not the FUSE device: load the FUSE module (modprobe fuse), or in a container pass --device /dev/fuse',
    );
  }
  try {
    loadFuseNative();
  } catch (error) {
    if (error instanceof FuseUnavailableError) {
      throw new UserError(`libfuse 2 is not usable: ${error.message}; install it with: apt-get install libfuse2`);
    }
    throw error;
  }
  if (!commandExists('fusermount')) {
    throw new UserError('fusermount is missing (needed to unmount); install it with: apt-get install fuse3');
  }
}

/** Bytes the state directory must take before a snapshot is started: its record and one block. */
const STATE_DIR_PROBE_BYTES = 524288;

/**
 * Checks before StartSnapshot that the state directory can be created and
 * written, so that an unusable one does not leave a started snapshot behind.
 */
async function validateStateDir(stateDir: string): Promise<void> {
  const unusable = (error: unknown): UserError => {
    const code = (error as NodeJS.ErrnoException).code;
    const problem =
      code === 'EROFS'
        ? 'it is on a read-only file system'
        : code === 'EACCES' || code === 'EPERM'
          ? 'it is not writable'
          : code === 'ENOSPC' || code === 'EDQUOT'
            ? 'its file system is full'
            : code === 'ENOTDIR'
              ? 'a file is in the way'
              : describeError(error);
    const fix =
      code === 'ENOSPC' || code === 'EDQUOT'
        ? 'free space there, or pass --state-dir DIR on a file system with room for the data you will write'
        : 'pass --state-dir DIR on a writable file system';
    return new UserError(`cannot use the state directory ${stateDir}: ${problem}; ${fix}`);
  };
  // One level at a time: a recursive mkdir reports ENOENT for a read-only parent.
  const missing: string[] = [];
  for (let directory = stateDir; !existsSync(directory); directory = path.dirname(directory)) missing.unshift(directory);
  for (const directory of missing) {
    try {
      await fs.mkdir(directory, { mode: 0o700 });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw unusable(error);
    }
  }
  const probe = path.join(stateDir, `.write-test-${process.pid}`);
  try {
    await fs.access(stateDir, fsConstants.W_OK);
    await fs.writeFile(probe, Buffer.alloc(STATE_DIR_PROBE_BYTES), { mode: 0o600 });
  } catch (error) {
    throw unusable(error);
  } finally {
    await fs.rm(probe, { force: true }).catch(() => undefined);
  }
}

function commandExists(name: string): boolean {
  for (const directory of (process.env.PATH ?? '').split(':')) {
    if (directory && existsSync(path.join(directory, name))) return true;
  }
  return false;
}

type MountMode =
  { kind: 'new'; params: StartSnapshotParams } | { kind: 'resume'; snapshotId: string } | { kind: 'read-only'; snapshotId: string };

/** Flags that only make sense when starting a snapshot. */
const START_ONLY_FLAGS: Array<[keyof MountFlags, string]> = [
  ['size', '--size'],
  ['parentSnapshotId', '--parent-snapshot-id'],
  ['description', '--description'],
  ['tag', '--tag'],
  ['timeout', '--timeout'],
  ['encrypted', '--encrypted'],
  ['kmsKeyArn', '--kms-key-arn'],
  ['clientToken', '--client-token'],
];

function mountMode(flags: MountFlags): MountMode {
  const refuseStartFlags = (mode: string): void => {
    for (const [key, flag] of START_ONLY_FLAGS) {
      if (flags[key] !== undefined) throw new UserError(`${flag} cannot be combined with ${mode}: it applies only to a new snapshot`);
    }
  };
  if (flags.resume !== undefined) {
    if (flags.snapshotId !== undefined || flags.readOnly)
      throw new UserError('--resume cannot be combined with --snapshot-id or --read-only');
    refuseStartFlags('--resume');
    return { kind: 'resume', snapshotId: parseSnapshotId(flags.resume, '--resume') };
  }
  if (flags.snapshotId !== undefined || flags.readOnly) {
    if (flags.snapshotId === undefined) throw new UserError('--read-only needs --snapshot-id SNAPSHOT_ID: the completed snapshot to show');
    if (!flags.readOnly) {
      throw new UserError(
        '--snapshot-id mounts a completed snapshot and needs --read-only; to change it, start a child with --size and --parent-snapshot-id',
      );
    }
    refuseStartFlags('--read-only');
    if (!flags.complete) throw new UserError('--no-complete cannot be combined with --read-only: nothing is written');
    return { kind: 'read-only', snapshotId: parseSnapshotId(flags.snapshotId, '--snapshot-id') };
  }
  if (flags.size === undefined) {
    throw new UserError(
      '--size GIB is required: the size of the volume, from 1 to 65536 GiB (or --resume SNAPSHOT_ID, or --snapshot-id SNAPSHOT_ID --read-only)',
    );
  }
  return { kind: 'new', params: snapshotParams(parseVolumeSizeGiB(flags.size), flags) };
}

async function validate(mountpoint: string, flags: MountFlags): Promise<{ mode: MountMode; mount: ValidatedMount }> {
  const mode = mountMode(flags);
  const mount: ValidatedMount = {
    mountpoint: '',
    fileName: validateFileName(flags.fileName),
    cacheSizeBytes: validateCacheSize(flags.cacheSize),
    diskCacheSizeBytes: flags.diskCacheSize.trim() === 'auto' ? 'auto' : parseSizeBytes(flags.diskCacheSize, '--disk-cache-size'),
    uploadConcurrency: parseInteger(flags.uploadConcurrency, '--upload-concurrency', 1, UPLOAD_CONCURRENCY_MAX),
    stateDir: path.resolve(flags.stateDir ?? defaultStateDir()),
    complete: flags.complete,
  };
  checkFuseAvailable();
  mount.mountpoint = await validateMountpoint(mountpoint);
  if (mode.kind !== 'read-only') await validateStateDir(mount.stateDir);
  return { mode, mount };
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
      ...(backgroundLogFile() ? { logFile: backgroundLogFile() } : {}),
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

/** What the kernel sent: the write size shows whether big_writes took effect. */
function kernelRequestsLine(stats: FuseMountStats): string {
  return (
    `kernel requests: ${stats.writeCalls} writes (${stats.writeBytes} bytes, largest ${stats.largestWriteBytes}), ` +
    `${stats.readCalls} reads, ${stats.fsyncCalls} fsyncs, ${stats.flushCalls} flushes`
  );
}

/**
 * Resolves when the mount should end: SIGINT or SIGTERM with the file closed,
 * or an external umount once the file is closed (a lazy umount leaves it open).
 * A signal while the file is open (dd still running, a loop device attached)
 * says so and keeps serving, since unmounting then would lose later writes.
 */
function waitForUnmountRequest(fuseMount: FuseMount, externallyUnmounted: Promise<void>): Promise<void> {
  return new Promise<void>((resolve) => {
    let done = false;
    let external = false;
    let checking = false;
    let reminder: NodeJS.Timeout | undefined;
    const finish = (): void => {
      if (done) return;
      done = true;
      if (reminder) clearInterval(reminder);
      for (const signal of UNMOUNT_SIGNALS) process.off(signal, onSignal);
      resolve();
    };
    const onSignal = (signal: NodeJS.Signals): void => {
      if (external) {
        log(`${signal}: flushing although ${fuseMount.filePath} is still open`);
        finish();
        return;
      }
      if (checking) return;
      checking = true;
      void fuseMount.waitForHandlesClosed(RELEASE_GRACE_MS).then((closed) => {
        checking = false;
        if (closed) {
          log(`${signal}: unmounting ${fuseMount.mountpoint}`);
          finish();
          return;
        }
        log(
          `${fuseMount.mountpoint} is busy: ${fuseMount.filePath} is still open (${plural(fuseMount.openHandleCount(), 'handle')}; ` +
            `a loop device? see losetup -j ${fuseMount.filePath}); close it, then press Ctrl-C again`,
        );
      });
    };
    for (const signal of UNMOUNT_SIGNALS) process.on(signal, onSignal);
    void externallyUnmounted.then(async () => {
      external = true;
      log(`${fuseMount.mountpoint} was unmounted`);
      if (fuseMount.openHandleCount() > 0) {
        reminder = setInterval(() => {
          log(`waiting for ${plural(fuseMount.openHandleCount(), 'open handle')} of ${fuseMount.filePath} to close before the final flush`);
        }, BUSY_REMINDER_INTERVAL_MS);
      }
      for (;;) {
        if (done) return;
        if (await fuseMount.waitForHandlesClosed(BUSY_REMINDER_INTERVAL_MS)) break;
      }
      finish();
    });
  });
}

/** A crash while mounted would leave a dead mount ("Transport endpoint is not connected"). */
function installLastResortUnmount(fuseMount: FuseMount): void {
  const onFatal = (error: unknown): void => {
    log(`internal error: ${describeError(error)}`);
    if (process.argv.includes('--verbose') && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
    try {
      execFileSync('fusermount', ['-uz', fuseMount.mountpoint], { stdio: 'ignore', timeout: 10_000 });
    } catch {
      // Nothing more to do on the way out.
    }
    process.exit(1);
  };
  process.on('uncaughtException', onFatal);
  process.on('unhandledRejection', onFatal);
}
