// The few file-system steps that local-ebs's store and the mount's state directory
// rest their durability on: a file is fsync'd before it is renamed into place, and
// the directory is fsync'd before anything that depends on the new name is acknowledged.
import { promises as fsp } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';

/** Writes all of `bytes` at `positionBytes` (a write may take fewer bytes than asked). */
export async function writeFully(handle: fsp.FileHandle, bytes: Buffer, positionBytes: number): Promise<void> {
  let written = 0;
  while (written < bytes.length) {
    const { bytesWritten } = await handle.write(bytes, written, bytes.length - written, positionBytes + written);
    written += bytesWritten;
  }
}

/** Writes all of `buffers`, back to back from `positionBytes`, with pwritev (like writeFully). */
export async function writevFully(
  handle: { writev(buffers: Buffer[], position: number): Promise<{ bytesWritten: number }> },
  buffers: Buffer[],
  positionBytes: number,
): Promise<void> {
  let rest = buffers;
  let position = positionBytes;
  while (rest.length > 0) {
    const { bytesWritten } = await handle.writev(rest, position);
    if (bytesWritten <= 0) throw new Error(`pwritev at ${position} wrote nothing`);
    position += bytesWritten;
    let skipped = bytesWritten;
    while (rest.length > 0 && skipped >= rest[0].length) {
      skipped -= rest[0].length;
      rest = rest.slice(1);
    }
    if (skipped > 0) rest = [rest[0].subarray(skipped), ...rest.slice(1)];
  }
}

export async function fsyncDirectory(directory: string): Promise<void> {
  const handle = await fsp.open(directory, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Writes `data` to a temporary name, fsyncs it, renames it over `file`, fsyncs the directory. */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const temporary = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  const handle = await fsp.open(temporary, 'wx', mode);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } catch (error) {
    await handle.close();
    await fsp.rm(temporary, { force: true });
    throw error;
  }
  await handle.close();
  try {
    await fsp.rename(temporary, file);
  } catch (error) {
    await fsp.rm(temporary, { force: true });
    throw error;
  }
  await fsyncDirectory(path.dirname(file));
}

/**
 * `mkdir -p`, one level at a time from the root. Node's own recursive mkdir
 * never returns when a parent refuses new entries with ENOENT (a path under
 * /proc): this one fails with that error.
 */
export async function makeDirectories(directory: string, mode = 0o700): Promise<void> {
  const absolute = path.resolve(directory);
  const levels: string[] = [];
  for (let at = absolute; at !== path.dirname(at); at = path.dirname(at)) levels.unshift(at);
  for (const level of levels) {
    try {
      await fsp.mkdir(level, { mode });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
  }
}
