// `ebs-fuse status [MOUNTPOINT] [--json]`: the ebs-fuse mounts of this user,
// from their records (mount-record.ts): snapshot, phase, progress and last
// error. A mount whose process is gone without ending is listed as `died`
// until its mountpoint is cleaned up; records of mounts that ended are removed.
import type { Command } from 'commander';
import { UserError } from '../errors';
import { formatMB } from '../units';
import { isMountPoint } from '../fuse/mountinfo';
import {
  readRecord,
  readRecords,
  removeRecord,
  resolveMountpoint,
  stateOf,
  type MountProgress,
  type MountRecord,
  type MountState,
} from './mount-record';

/** How long `status` leaves the record of an ended mount for the `unmount` that waits on it. */
const ENDED_RECORD_KEPT_MS = 60_000;

interface StatusFlags {
  json?: boolean;
}

/** One mount as `status --json` prints it: the record's fields, its progress flattened, and its state. */
export type MountStatus = Pick<
  MountRecord,
  | 'mountpoint'
  | 'filePath'
  | 'snapshotId'
  | 'pid'
  | 'readOnly'
  | 'complete'
  | 'endpoint'
  | 'stateDir'
  | 'logFile'
  | 'startedAt'
  | 'updatedAt'
> &
  Omit<MountProgress, 'lastUploadError' | 'largestWriteBytes'> & {
    state: MountState;
    lastError: string | null;
  };

export function registerStatusCommand(program: Command): void {
  program
    .command('status')
    .argument('[mountpoint]', 'only this mount')
    .description('list running ebs-fuse mounts with their snapshot, progress and last error')
    .option('--json', 'print a JSON array, one object per mount')
    .action(async (mountpoint: string | undefined, flags: StatusFlags) => {
      const mounts = mountpoint === undefined ? await allMounts() : [await oneMount(mountpoint)];
      process.stdout.write(flags.json ? `${JSON.stringify(mounts, null, 2)}\n` : mounts.map((mount) => `${statusLine(mount)}\n`).join(''));
    });
}

function toStatus(record: MountRecord, state: MountState): MountStatus {
  const { mountpoint, filePath, snapshotId, pid, readOnly, complete, endpoint, stateDir, logFile, startedAt, updatedAt } = record;
  const { lastUploadError, largestWriteBytes: _kernelOnly, ...progress } = record.progress;
  return {
    mountpoint,
    filePath,
    snapshotId,
    state,
    pid,
    readOnly,
    complete,
    endpoint,
    stateDir,
    logFile,
    startedAt,
    updatedAt,
    ...progress,
    lastError: lastUploadError ?? null,
  };
}

/** Live and died mounts; an ended record (after a minute), or a died one whose mountpoint was cleaned up, is removed. */
async function allMounts(): Promise<MountStatus[]> {
  const mounts: MountStatus[] = [];
  for (const record of readRecords()) {
    const state = stateOf(record);
    if (state === 'ended') {
      // An unmount waiting for this mount reads its end here: left to it for a while.
      if (Date.now() - Date.parse(record.updatedAt) > ENDED_RECORD_KEPT_MS) removeRecord(record);
      continue;
    }
    if (state === 'died' && !(await isMountPoint(record.mountpoint))) {
      removeRecord(record);
      continue;
    }
    mounts.push(toStatus(record, state));
  }
  return mounts;
}

async function oneMount(mountpointArgument: string): Promise<MountStatus> {
  const mountpoint = resolveMountpoint(mountpointArgument);
  const record = readRecord(mountpoint);
  const state = record ? stateOf(record) : undefined;
  if (!record || state === 'ended') throw new UserError(`${mountpoint} is not an ebs-fuse mount that is running`);
  return toStatus(record, state!);
}

function statusLine(mount: MountStatus): string {
  const parts = [
    `${mount.mountpoint} ${mount.snapshotId} ${mount.state}${mount.readOnly ? ' (read-only)' : ''}`,
    `${formatMB(mount.bytesUploaded)} uploaded`,
    `${mount.dirtyBlocks} dirty`,
    `${mount.uploadingBlocks} uploading`,
    `${mount.retries} retries`,
  ];
  if (mount.lastError) parts.push(`last error: ${mount.lastError}`);
  if (mount.state === 'died') {
    parts.push(
      mount.readOnly
        ? `process ${mount.pid} is gone (fusermount -uz ${mount.mountpoint})`
        : `process ${mount.pid} is gone; the snapshot stays pending (ebs-fuse mount --resume ${mount.snapshotId})`,
    );
  }
  return parts.join(', ');
}
