import { readFile } from 'node:fs/promises';

const MOUNTINFO_PATH = '/proc/self/mountinfo';

/** mountinfo escapes space, tab, newline and backslash as \ooo octal. */
function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

/** The mount points listed in a /proc/self/mountinfo text (5th field of each line). */
export function parseMountPoints(mountinfoText: string): string[] {
  const points: string[] = [];
  for (const line of mountinfoText.split('\n')) {
    const fields = line.split(' ');
    if (fields.length >= 5) points.push(unescapeMountField(fields[4]));
  }
  return points;
}

/** Whether `absolutePath` (already resolved with realpath) is a mount point now. */
export async function isMountPoint(absolutePath: string): Promise<boolean> {
  return parseMountPoints(await readFile(MOUNTINFO_PATH, 'utf8')).includes(absolutePath);
}

export interface UnmountWatcher {
  stop(): void;
}

/**
 * fuse-native has no destroy hook, so an external `umount` is only visible in
 * the mount table: poll it and call `onGone` once the mount point leaves it.
 */
export function watchForUnmount(absolutePath: string, intervalMs: number, onGone: () => void): UnmountWatcher {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const poll = async (): Promise<void> => {
    let mounted = true;
    try {
      mounted = await isMountPoint(absolutePath);
    } catch {
      // An unreadable mount table says nothing either way; look again next time.
    }
    if (stopped) return;
    if (!mounted) {
      stopped = true;
      onGone();
      return;
    }
    timer = setTimeout(() => void poll(), intervalMs);
    // The FUSE session keeps the process alive while mounted; the watcher must not.
    timer.unref();
  };
  timer = setTimeout(() => void poll(), intervalMs);
  timer.unref();
  return {
    stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
    },
  };
}
