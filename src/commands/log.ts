// What every command says on standard error: one line, prefixed `ebs-fuse:`,
// and the words for how a CompleteSnapshot ended, which upload, complete and
// mount all report the same way.
import type { SnapshotStatus } from '../ebs/client';

export function log(line: string): void {
  process.stderr.write(line.startsWith('ebs-fuse:') ? `${line}\n` : `ebs-fuse: ${line}\n`);
}

/** The line for a completion that did not end `completed`, or undefined when it did. */
export function completionNote(snapshotId: string, status: SnapshotStatus): string | undefined {
  if (status === 'error') return `EBS put snapshot ${snapshotId} into the error state at completion; it cannot be used`;
  // AWS may answer CompleteSnapshot with pending while it finishes processing.
  if (status === 'pending') return `EBS accepted the completion of ${snapshotId} and is still processing it`;
  return undefined;
}
