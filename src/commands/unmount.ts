// `ebs-fuse unmount MOUNTPOINT`: ends an ebs-fuse mount (background or not)
// as Ctrl-C would, waits until its snapshot is completed (or left pending with
// --no-complete), prints `SNAPSHOT_ID STATUS` and exits 0 only if the mount
// ended as asked. It reads the mount's record (mount-record.ts) and signals its
// process; a plain `umount` keeps working beside it.
import type { Command } from 'commander';
import { describeError, UserError } from '../errors';
import { fileBusyMessage } from '../fuse/fuse-mount';
import { isMountPoint } from '../fuse/mountinfo';
import {
  mountProcessAlive,
  readRecord,
  removeRecord,
  RECORD_INTERVAL_MS,
  resolveMountpoint,
  runtimeDir,
  type MountRecord,
} from './mount-record';

/** A signal while the file is open leaves the mount serving; past this it is reported busy. */
const BUSY_AFTER_MS = 5000;
/** The mount's own final flush and completion limit (30 min) with room for its retries. */
const WAIT_LIMIT_MS = 35 * 60_000;
const POLL_INTERVAL_MS = 200;

export function registerUnmountCommand(program: Command): void {
  program
    .command('unmount')
    .argument('<mountpoint>', 'where `ebs-fuse mount` mounted the snapshot')
    .description(
      'end an ebs-fuse mount: upload what is left, complete the snapshot (unless mounted with --no-complete), print SNAPSHOT_ID STATUS',
    )
    .action(async (mountpoint: string) => {
      process.exitCode = await runUnmount(mountpoint);
    });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The line for a mount whose process died without ending it. */
function goneMessage(record: MountRecord, mountpoint: string): string {
  const gone = `the ebs-fuse process of ${mountpoint} (pid ${record.pid}) is gone without ending its mount`;
  // A read-only mount wrote nothing: there is nothing to resume.
  if (record.readOnly) return `${gone}; run fusermount -uz ${mountpoint}`;
  return (
    `${gone}: ${record.snapshotId} stays pending; run fusermount -uz ${mountpoint}, then ebs-fuse mount ${mountpoint} --resume ${record.snapshotId}` +
    (record.stateDir ? ` --state-dir ${record.stateDir}` : '')
  );
}

async function runUnmount(mountpointArgument: string): Promise<number> {
  const mountpoint = resolveMountpoint(mountpointArgument);
  const record = readRecord(mountpoint);
  if (record === undefined) {
    throw new UserError(
      (await isMountPoint(mountpoint))
        ? `${mountpoint} is mounted, but not by an ebs-fuse mount this user started (no record in ${runtimeDir()})`
        : `${mountpoint} is not mounted`,
    );
  }
  if (!mountProcessAlive(record)) {
    if (record.phase === 'ended') {
      removeRecord(record);
      throw new UserError(
        `${mountpoint} is not mounted: its ebs-fuse mount already ended (${record.snapshotId} ${record.endStatus ?? 'error'})`,
      );
    }
    throw new UserError(goneMessage(record, mountpoint));
  }

  if (record.phase === 'mounted') {
    try {
      process.kill(record.pid, 'SIGTERM');
    } catch (error) {
      throw new UserError(`cannot signal the ebs-fuse process of ${mountpoint} (pid ${record.pid}): ${describeError(error)}`);
    }
  }
  const signalledAtMs = Date.now();
  for (;;) {
    await sleep(POLL_INTERVAL_MS);
    const now = readRecord(mountpoint) ?? record;
    const alive = mountProcessAlive(now);
    if (now.phase === 'ended' && (!alive || Date.now() - Date.parse(now.updatedAt) > 10 * RECORD_INTERVAL_MS)) {
      process.stdout.write(`${now.snapshotId} ${now.endStatus ?? 'error'}\n`);
      if (!alive) removeRecord(now);
      return now.exitCode ?? 1;
    }
    if (!alive) {
      // The process may have written its end and exited between the two reads.
      const last = readRecord(mountpoint);
      if (last?.phase === 'ended') continue;
      throw new UserError(goneMessage(now, mountpoint));
    }
    const waitedMs = Date.now() - signalledAtMs;
    if (now.phase === 'mounted' && waitedMs > BUSY_AFTER_MS) {
      throw new UserError(
        `${fileBusyMessage(mountpoint, now.filePath, now.progress.openHandles)}; close it, then run ebs-fuse unmount again`,
      );
    }
    if (waitedMs > WAIT_LIMIT_MS) {
      throw new UserError(
        `${mountpoint} is still ${now.phase} after ${WAIT_LIMIT_MS / 60_000} minutes; it goes on: see ebs-fuse status ${mountpoint}`,
      );
    }
  }
}
