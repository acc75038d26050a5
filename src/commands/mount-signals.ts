// How a running mount ends: SIGINT, SIGTERM or SIGHUP with the file closed, or an
// external umount once the file is closed; a signal while the file is open says it
// is busy and keeps serving. And the last resort when the process dies mounted.
import { execFileSync } from 'node:child_process';
import { describeError } from '../errors';
import { FILE_RELEASE_GRACE_MS, fileBusyMessage, type FuseMount } from '../fuse/fuse-mount';
import { log } from './log';

/** While an external lazy umount waits for the file to be closed, remind this often. */
const BUSY_REMINDER_INTERVAL_MS = 30_000;
/**
 * SIGINT and SIGTERM end the mount as the contract says; SIGHUP (the terminal
 * closed) does the same rather than killing the process in the middle of it.
 */
export const UNMOUNT_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`;
}

/**
 * Resolves when the mount should end: SIGINT or SIGTERM with the file closed,
 * or an external umount once the file is closed (a lazy umount leaves it open).
 * A signal while the file is open (dd still running, a loop device attached)
 * says so and keeps serving, since unmounting then would lose later writes.
 */
export function waitForUnmountRequest(fuseMount: FuseMount, externallyUnmounted: Promise<void>): Promise<void> {
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
      void fuseMount.waitForHandlesClosed(FILE_RELEASE_GRACE_MS).then((closed) => {
        checking = false;
        if (closed) {
          log(`${signal}: unmounting ${fuseMount.mountpoint}`);
          finish();
          return;
        }
        log(`${fileBusyMessage(fuseMount.mountpoint, fuseMount.filePath, fuseMount.openHandleCount())}; close it, then press Ctrl-C again`);
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
export function installLastResortUnmount(fuseMount: FuseMount): void {
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
