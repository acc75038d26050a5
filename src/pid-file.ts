// The one pid-file lock, used by a mount's state directory and a local-ebs data
// directory alike: the file is created exclusively with its holder's record; a
// file whose process is gone is taken over; a live holder is reported, never
// displaced.

import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';

/**
 * Creates `file` with `content` in one step, or returns false if it exists: the
 * content is written under a temporary name and hard-linked into place, so no
 * other claimer ever reads the file empty (and takes it for a dead holder's).
 */
async function createWithContent(file: string, content: string): Promise<boolean> {
  const temporary = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  await fsp.writeFile(temporary, content, { flag: 'wx', mode: 0o600 });
  try {
    await fsp.link(temporary, file);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw error;
  } finally {
    await fsp.rm(temporary, { force: true });
  }
}

/** Whether a process with this pid exists (EPERM: it does, as another user's). */
export function isProcessAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Creates `file` holding `content`. Resolves with undefined when this process
 * now holds it, or with the holder's pid and text when a live process does.
 * `pidOf` reads a pid from a file's text (undefined for one that has none).
 * With `takeOverOwn`, a file naming this very process counts as free (a lock
 * this process left behind). A second attempt follows the removal of a dead
 * holder's file; a race lost twice resolves with `{ pid: undefined }`.
 */
export async function claimPidFile(
  file: string,
  content: string,
  options: { pidOf: (text: string) => number | undefined; takeOverOwn: boolean },
): Promise<{ pid: number | undefined; text: string } | undefined> {
  for (let attempt = 0; attempt < 2; attempt++) {
    if (await createWithContent(file, content)) return undefined;
    const text = await fsp.readFile(file, 'utf8').catch(() => '');
    const pid = options.pidOf(text);
    const ownAndFree = options.takeOverOwn && pid === process.pid;
    if (pid !== undefined && !ownAndFree && isProcessAlive(pid)) return { pid, text };
    await fsp.rm(file, { force: true });
  }
  return { pid: undefined, text: '' };
}
