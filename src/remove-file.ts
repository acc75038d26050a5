// Removing a file of many GiB without waiting for its space to come back.
//
// Where a file system discards freed extents synchronously (ext4 without a
// journal mounted with `discard`, as on this project's test machines), the
// unlink that drops a file's last reference waits for the device to discard
// every extent: 0.2 s per GiB here (docs/BENCHMARKS.md). The local copy can be
// hundreds of GiB, so a mount would sit that long after its snapshot is
// completed. The blocks are freed by whoever drops the last reference, so a
// short-lived `cat` holds one while the name is removed and this process closes
// its own; the freeing then runs in `cat`, which exits as soon as its input
// ends, right after the name is gone.
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';

/** How the file went: its space freed by a holder process, freed here, or there was no file. */
export type Removal = 'freed by a holder' | 'freed here' | 'absent';

/** Removes `file`; its name is gone when this resolves, its space may come back a moment later. */
export async function removeFreeingLater(file: string): Promise<Removal> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(file, 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 'absent';
    throw error;
  }
  let holder: ChildProcess | undefined;
  try {
    holder = await startHolder(handle.fd);
  } finally {
    await handle.close();
  }
  try {
    await fs.rm(file, { force: true });
  } finally {
    // Only now: a holder gone before the unlink would leave the freeing to this process.
    holder?.stdin?.end();
  }
  return holder ? 'freed by a holder' : 'freed here';
}

/** A `cat` holding `fd` until its input ends, or undefined where it cannot be started. */
function startHolder(fd: number): Promise<ChildProcess | undefined> {
  return new Promise((resolve) => {
    // In `/`, so that it keeps no other file system busy than the file's own.
    const holder = spawn('cat', [], { cwd: '/', stdio: ['pipe', 'ignore', 'ignore', fd], detached: true });
    holder.once('error', () => resolve(undefined));
    holder.once('spawn', () => {
      // Its exit is nothing to wait for; a pipe it closed early is nothing to report.
      holder.unref();
      holder.stdin?.on('error', () => undefined);
      resolve(holder);
    });
  });
}
