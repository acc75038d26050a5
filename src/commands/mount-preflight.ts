// Everything `ebs-fuse mount` checks before it starts a snapshot: the flags and
// their combinations, the mountpoint, FUSE and libfuse, fusermount, and a state
// directory that can be written. Failing here costs nothing; failing after
// StartSnapshot would leave a pending snapshot behind.
import { constants as fsConstants, existsSync, promises as fs, realpathSync, statSync } from 'node:fs';
import { totalmem } from 'node:os';
import path from 'node:path';
import { CACHE_SIZE_MIN_BYTES, TRANSFER_CONCURRENCY_MAX } from '../core/limits';
import type { DiskBudget } from '../core/local-copy';
import { defaultStateDir } from '../core/session';
import type { StartSnapshotParams } from '../ebs/client';
import { describeError, UserError } from '../errors';
import { chooseFuseBinding, FuseUnavailableError, loadFuseNative } from '../fuse/fuse-mount';
import { isMountPoint } from '../fuse/mountinfo';
import { MIB_BYTES } from '../units';
import type { ConnectionOptions } from './connection';
import { parseInteger, parseSizeBytes, parseSnapshotId, parseVolumeSizeGiB, snapshotParams, type SnapshotOptionValues } from './options';

const FILE_NAME_MAX_BYTES = 255;

export interface MountFlags extends SnapshotOptionValues, ConnectionOptions {
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

export interface ValidatedMount {
  mountpoint: string;
  fileName: string;
  cacheSizeBytes: number;
  diskCacheSizeBytes: DiskBudget;
  uploadConcurrency: number;
  stateDir: string;
  complete: boolean;
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
  if (bytes < CACHE_SIZE_MIN_BYTES) {
    throw new UserError(`--cache-size must be at least ${CACHE_SIZE_MIN_BYTES / MIB_BYTES}MiB, not ${value}`);
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
  let libfuse3Missing: string | undefined;
  try {
    const choice = chooseFuseBinding();
    libfuse3Missing = choice.fallbackReason;
    if (choice.name === 'fuse-native') loadFuseNative();
  } catch (error) {
    if (error instanceof FuseUnavailableError) {
      const neither = libfuse3Missing === undefined ? '' : `, and the libfuse 3 path is not either (${libfuse3Missing})`;
      throw new UserError(`FUSE is not usable: ${error.message}${neither}; install libfuse with: apt-get install libfuse2 libfuse3-3`);
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

export type MountMode =
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

export async function validate(mountpoint: string, flags: MountFlags): Promise<{ mode: MountMode; mount: ValidatedMount }> {
  const mode = mountMode(flags);
  const mount: ValidatedMount = {
    mountpoint: '',
    fileName: validateFileName(flags.fileName),
    cacheSizeBytes: validateCacheSize(flags.cacheSize),
    diskCacheSizeBytes: flags.diskCacheSize.trim() === 'auto' ? 'auto' : parseSizeBytes(flags.diskCacheSize, '--disk-cache-size'),
    uploadConcurrency: parseInteger(flags.uploadConcurrency, '--upload-concurrency', 1, TRANSFER_CONCURRENCY_MAX),
    stateDir: path.resolve(flags.stateDir ?? defaultStateDir()),
    complete: flags.complete,
  };
  checkFuseAvailable();
  mount.mountpoint = await validateMountpoint(mountpoint);
  if (mode.kind !== 'read-only') await validateStateDir(mount.stateDir);
  return { mode, mount };
}
