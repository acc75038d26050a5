// `ebs-fuse complete SNAPSHOT_ID`: completes a pending snapshot from the state
// a mount left (after --no-complete, a failed final flush, or a crash), without
// mounting: uploads what the journal says is not acknowledged, then
// CompleteSnapshot with the count and LINEAR checksum over every run.
import path from 'node:path';
import type { Command } from 'commander';
import { FINISH_TIMEOUT_MS } from '../core/limits';
import { SnapshotSession } from '../core/session';
import { addConnectionOptions, openSnapshotClient, type ConnectionOptions } from './connection';
import { describeError, UserError } from '../errors';
import { completionNote, log } from './log';
import { defaultStateDir } from '../core/session';
import { parseSnapshotId } from './options';
import { startFlushProgress } from './progress';

interface CompleteFlags extends ConnectionOptions {
  stateDir?: string;
}

export function registerCompleteCommand(program: Command): void {
  const command = program
    .command('complete')
    .argument('<snapshot-id>', 'a pending snapshot that a mount on this machine left')
    .description('complete a pending snapshot from its local state (--state-dir), without mounting')
    .option(
      '--state-dir <dir>',
      'where pending snapshots keep their state (default $XDG_STATE_HOME/ebs-fuse, else ~/.local/state/ebs-fuse)',
    );
  addConnectionOptions(command);
  command.action(async (snapshotId: string, flags: CompleteFlags) => {
    process.exitCode = await runComplete(snapshotId, flags);
  });
}

async function runComplete(snapshotIdArgument: string, flags: CompleteFlags): Promise<number> {
  const snapshotId = parseSnapshotId(snapshotIdArgument, 'SNAPSHOT_ID');
  const stateDir = path.resolve(flags.stateDir ?? defaultStateDir());
  const opened = await openSnapshotClient(flags, { log });
  try {
    let session: SnapshotSession;
    try {
      session = await SnapshotSession.resume(opened.client, snapshotId, { stateDir, log, retryCount: () => opened.client.retryCount });
    } catch (error) {
      if (error instanceof UserError) throw error;
      throw new UserError(`cannot open ${snapshotId} at ${opened.endpointDescription}: ${describeError(error)}`);
    }
    const progress = startFlushProgress(session, process.stderr);
    let status;
    try {
      ({ status } = await session.finish({ complete: true, timeoutMs: FINISH_TIMEOUT_MS }));
    } catch (error) {
      // finish() explains a failed flush itself; a failed CompleteSnapshot needs the way out said here.
      if (error instanceof UserError) throw error;
      throw new UserError(
        `CompleteSnapshot of ${snapshotId} failed: ${describeError(error)}; its state is kept in ${stateDir}, run this again`,
      );
    } finally {
      progress.stop();
    }
    process.stdout.write(`${snapshotId} ${status}\n`);
    const note = completionNote(snapshotId, status);
    if (note) log(note);
    return status === 'error' ? 1 : 0;
  } finally {
    await opened.close().catch((error: unknown) => log(`closing the client: ${describeError(error)}`));
  }
}
