// A mount's snapshot from StartSnapshot to CompleteSnapshot: the state directory,
// the volume, and the final flush. Plain async code, so it is tested without FUSE.
//
// State directory, one per snapshot (mode 0700):
//   snapshot.json   what StartSnapshot was asked, and the status once completed
//   lock            the pid of the process using the state
//   blocks.journal  intents and acknowledgements of PUTs, and local-copy slots (journal.ts)
//   local-copy.img  the local copy of uploaded blocks, within --disk-cache-size (local-copy.ts)
import { existsSync, promises as fs } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { BLOCK_SIZE_BYTES, BLOCKS_PER_GIB, type SnapshotClient, type StartSnapshotParams } from '../ebs/client';
import { makeDirectories, writeFileAtomic } from '../durable-file';
import { describeError, UserError } from '../errors';
import { claimPidFile } from '../pid-file';
import { removeFreeingLater } from '../remove-file';
import { DEFAULT_LIMITS, type CoreLimits } from './limits';
import { LocalCopy } from './local-copy';
import { ReadOnlyVolume } from './read-only-volume';
import { SnapshotReader } from './snapshot-reader';
import { Volume } from './volume';
import type { FinishResult, VolumeFile, VolumeStats } from './volume-file';

export interface SessionTuning extends Partial<CoreLimits> {
  /** Parent folder of the per-snapshot state directories. */
  stateDir: string;
  /** The snapshot's idle timeout; defaults to its Timeout parameter (AWS's default 60 min). */
  idleTimeoutMs?: number;
  retryCount?: () => number;
  log?: (line: string) => void;
}

interface StateRecord {
  snapshotId: string;
  volumeSizeGiB: number;
  params: StartSnapshotParams;
  status: 'pending' | 'completed';
}

/** $XDG_STATE_HOME/ebs-fuse, else ~/.local/state/ebs-fuse (the XDG default). */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdgStateHome = env.XDG_STATE_HOME;
  // The XDG spec says a relative value is invalid and must be ignored.
  if (xdgStateHome && path.isAbsolute(xdgStateHome)) return path.join(xdgStateHome, 'ebs-fuse');
  return path.join(homedir(), '.local', 'state', 'ebs-fuse');
}

const STATE_FILE = 'snapshot.json';
/** Parent blocks kept in memory for reads and merges (16 MiB), beside the block cache. */
const PARENT_CACHED_BLOCKS = 32;
/** Blocks a read-only mount fetches ahead of a sequential reader. */
const READ_AHEAD_BLOCKS = 8;
/** AWS's default StartSnapshot Timeout. */
const SERVICE_DEFAULT_TIMEOUT_MINUTES = 60;
/** The keep-alive PUT goes out once this share of the idle timeout has passed without a PUT. */
const KEEP_ALIVE_AFTER_RATIO = 0.5;
const LOCK_FILE = 'lock';

export class SnapshotSession {
  private readonly keepAliveTimer: NodeJS.Timeout;
  private keepAliveWarned = false;

  private constructor(
    readonly snapshotId: string,
    readonly stateDirectory: string,
    private readonly state: StateRecord,
    private readonly client: SnapshotClient,
    private readonly volume: Volume,
    private readonly idleTimeoutMs: number,
    private readonly log: (line: string) => void,
  ) {
    // Check often enough that a PUT always lands well inside the idle timeout.
    this.keepAliveTimer = setInterval(() => void this.keepAlive(), Math.max(50, Math.min(60_000, idleTimeoutMs / 10)));
    this.keepAliveTimer.unref();
  }

  static async start(client: SnapshotClient, params: StartSnapshotParams, tuning: SessionTuning): Promise<SnapshotSession> {
    const started = await client.startSnapshot(params);
    const stateDirectory = path.join(tuning.stateDir, started.snapshotId);
    const state: StateRecord = { snapshotId: started.snapshotId, volumeSizeGiB: started.volumeSizeGiB, params, status: 'pending' };
    try {
      await makeDirectories(stateDirectory);
      await fs.chmod(stateDirectory, 0o700);
      await writeFileAtomic(path.join(stateDirectory, STATE_FILE), `${JSON.stringify(state, null, 2)}\n`, 0o600);
    } catch (error) {
      throw new UserError(`cannot use the state directory ${stateDirectory}: ${describeError(error)}`);
    }
    return SnapshotSession.open(client, stateDirectory, state, tuning);
  }

  /** Continues a pending snapshot from the state an earlier mount left on this machine. */
  static async resume(client: SnapshotClient, snapshotId: string, tuning: SessionTuning): Promise<SnapshotSession> {
    const stateDirectory = path.join(tuning.stateDir, snapshotId);
    const state = await readState(stateDirectory, snapshotId);
    if (state.status === 'completed') throw new UserError(`${snapshotId} is already completed; there is nothing to resume`);
    // The journal of versions before the local copy: its records mean something else.
    if (existsSync(path.join(stateDirectory, 'journal.log'))) {
      throw new UserError(
        `the state of ${snapshotId} in ${stateDirectory} was written by an earlier ebs-fuse (journal.log); resume or complete it with that version`,
      );
    }
    return SnapshotSession.open(client, stateDirectory, state, tuning);
  }

  private static async open(
    client: SnapshotClient,
    stateDirectory: string,
    state: StateRecord,
    tuning: SessionTuning,
  ): Promise<SnapshotSession> {
    await takeLock(stateDirectory);
    try {
      const parentId = state.params.parentSnapshotId;
      const parent =
        parentId === undefined
          ? undefined
          : await SnapshotReader.open(client, parentId, { cachedBlocksMax: PARENT_CACHED_BLOCKS, readAheadBlocks: 0 });
      const volume = await Volume.open({
        parent,
        client,
        snapshotId: state.snapshotId,
        volumeSizeGiB: state.volumeSizeGiB,
        stateDirectory,
        limits: limitsFrom(tuning),
        zeroSkipAllowed: state.params.parentSnapshotId === undefined && !state.params.encrypted,
        retryCount: tuning.retryCount,
        log: tuning.log,
      });
      const idleTimeoutMs = tuning.idleTimeoutMs ?? (state.params.timeoutMinutes ?? SERVICE_DEFAULT_TIMEOUT_MINUTES) * 60_000;
      const log = tuning.log ?? ((line: string) => process.stderr.write(`${line}\n`));
      return new SnapshotSession(state.snapshotId, stateDirectory, state, client, volume, idleTimeoutMs, log);
    } catch (error) {
      await releaseLock(stateDirectory);
      throw new UserError(`cannot open the state of ${state.snapshotId} in ${stateDirectory}: ${describeError(error)}`);
    }
  }

  get file(): VolumeFile {
    return this.volume;
  }

  get volumeSizeGiB(): number {
    return this.state.volumeSizeGiB;
  }

  stats(): VolumeStats {
    return this.volume.stats();
  }

  /**
   * Flushes every dirty block, then completes the snapshot unless complete=false.
   * When the flush fails the snapshot stays pending and the state is kept.
   */
  async finish(options: { complete: boolean; timeoutMs: number }): Promise<FinishResult> {
    // No keep-alive PUT may race the final flush and CompleteSnapshot.
    clearInterval(this.keepAliveTimer);
    try {
      await this.volume.flushAll(options.timeoutMs);
    } catch (error) {
      const kept = await this.preserveDirty();
      throw new UserError(
        `could not upload every block of ${this.snapshotId} (${describeError(error)})${kept}${await this.closeAfterFailure()}; ` +
          `the snapshot stays pending and its state is kept in ${this.stateDirectory}; ` +
          `continue with 'ebs-fuse mount MOUNTPOINT --resume ${this.snapshotId}' or 'ebs-fuse complete ${this.snapshotId}'`,
      );
    }
    if (!options.complete) {
      await this.closeOrExplain('after the final flush');
      return { snapshotId: this.snapshotId, status: 'pending' };
    }
    const figures = this.volume.completionFigures();
    if (figures.linearChecksumBase64 === undefined) {
      this.log(
        `ebs-fuse: completing ${this.snapshotId} without its LINEAR checksum: ${this.volume.stats().unsettledBlocks} blocks were being uploaded ` +
          'when an earlier mount stopped and were not written again, so which content the snapshot holds for them is not known (the count is exact)',
      );
    }
    let status;
    try {
      status = await this.client.completeSnapshot({ snapshotId: this.snapshotId, ...figures });
    } catch (error) {
      const closing = await this.closeAfterFailure();
      if (closing && error instanceof Error) error.message += closing;
      throw error;
    }
    await this.closeOrExplain(`after CompleteSnapshot answered ${status}`);
    if (status !== 'error') {
      try {
        await this.forgetData();
      } catch (error) {
        throw new UserError(
          `${this.snapshotId} is ${status}, but its state in ${this.stateDirectory} could not be cleared: ${describeError(error)}`,
        );
      }
    }
    return { snapshotId: this.snapshotId, status };
  }

  /** Keeps the blocks not uploaded for a resume; says how many, as a clause to append. */
  private async preserveDirty(): Promise<string> {
    try {
      const { keptBlocks, lostBlocks } = await this.volume.preserveDirty();
      if (lostBlocks === 0) return keptBlocks === 0 ? '' : `; the ${keptBlocks} blocks not uploaded are kept in the local copy`;
      return `; ${keptBlocks} blocks not uploaded are kept in the local copy, ${lostBlocks} could not be kept (no room within --disk-cache-size, or their other bytes are held nowhere) and are lost`;
    } catch (error) {
      return `; keeping the blocks not uploaded in ${this.stateDirectory} failed: ${describeError(error)}`;
    }
  }

  /** Closes the state after a failure; says what went wrong doing so, as a clause to append. */
  private async closeAfterFailure(): Promise<string> {
    try {
      await this.close();
      return '';
    } catch (error) {
      return `; closing its state in ${this.stateDirectory} failed too: ${describeError(error)}`;
    }
  }

  /** Closes the state, naming the step and the directory when that fails. */
  private async closeOrExplain(step: string): Promise<void> {
    try {
      await this.close();
    } catch (error) {
      throw new UserError(`closing the state of ${this.snapshotId} in ${this.stateDirectory} ${step} failed: ${describeError(error)}`);
    }
  }

  /**
   * A pending snapshot with no PUT for its Timeout turns to `error`: an idle
   * mount would lose everything. Before that, send an acknowledged block again
   * with its known content (LINEAR and the count do not change); with nothing
   * acknowledged yet and no parent, send block 0 as the zeros it reads as.
   */
  private async keepAlive(): Promise<void> {
    if (Date.now() - this.volume.lastPutAckMs < this.idleTimeoutMs * KEEP_ALIVE_AFTER_RATIO) return;
    if (this.volume.stats().uploadingBlocks > 0) return;
    try {
      await this.volume.keepAlive();
    } catch (error) {
      if (this.keepAliveWarned) return;
      this.keepAliveWarned = true;
      this.log(
        `ebs-fuse: warning: cannot keep ${this.snapshotId} alive (${describeError(error)}); it turns to 'error' after ${Math.round(this.idleTimeoutMs / 60_000)} min without a PUT`,
      );
    }
  }

  /** Stops uploads and closes the state, keeping it for a resume. */
  async close(): Promise<void> {
    clearInterval(this.keepAliveTimer);
    try {
      await this.volume.close();
    } finally {
      await releaseLock(this.stateDirectory);
    }
  }

  /** After completion only snapshot.json stays, so a resume can say it is done. */
  private async forgetData(): Promise<void> {
    this.state.status = 'completed';
    await writeFileAtomic(path.join(this.stateDirectory, STATE_FILE), `${JSON.stringify(this.state, null, 2)}\n`, 0o600);
    for (const entry of await fs.readdir(this.stateDirectory)) {
      const file = path.join(this.stateDirectory, entry);
      // The local copy can be hundreds of GiB: its space may come back after this mount has exited.
      if (file === LocalCopy.fileIn(this.stateDirectory)) await removeFreeingLater(file);
      else if (entry !== STATE_FILE && entry !== LOCK_FILE) await fs.rm(file, { force: true });
    }
  }
}

async function readState(stateDirectory: string, snapshotId: string): Promise<StateRecord> {
  let text: string;
  try {
    text = await fs.readFile(path.join(stateDirectory, STATE_FILE), 'utf8');
  } catch {
    throw new UserError(
      `no local state for ${snapshotId} in ${path.dirname(stateDirectory)}: only a snapshot started by a mount with this --state-dir can be resumed`,
    );
  }
  const state = JSON.parse(text) as StateRecord;
  if (state.snapshotId !== snapshotId || !(state.volumeSizeGiB >= 1 && state.volumeSizeGiB * BLOCKS_PER_GIB > 0)) {
    throw new UserError(`the state in ${stateDirectory} is not that of ${snapshotId}`);
  }
  return state;
}

/** One process at a time per snapshot state; a lock left by a dead process is taken over. */
async function takeLock(stateDirectory: string): Promise<void> {
  const holder = await claimPidFile(path.join(stateDirectory, LOCK_FILE), `${process.pid}\n`, {
    pidOf: (text) => {
      const pid = Number.parseInt(text, 10);
      return Number.isInteger(pid) ? pid : undefined;
    },
    takeOverOwn: true,
  });
  if (holder === undefined) return;
  if (holder.pid === undefined) throw new UserError(`cannot lock the state in ${stateDirectory}`);
  throw new UserError(`the state in ${stateDirectory} is in use by process ${holder.pid}`);
}

async function releaseLock(stateDirectory: string): Promise<void> {
  await fs.rm(path.join(stateDirectory, LOCK_FILE), { force: true });
}

/** A completed snapshot as a read-only file: nothing local, nothing to finish. */
export async function openReadOnlySnapshot(client: SnapshotClient, snapshotId: string, cacheSizeBytes: number): Promise<VolumeFile> {
  const cachedBlocksMax = Math.max(2 * READ_AHEAD_BLOCKS, Math.floor(cacheSizeBytes / BLOCK_SIZE_BYTES));
  const reader = await SnapshotReader.open(client, snapshotId, { cachedBlocksMax, readAheadBlocks: READ_AHEAD_BLOCKS });
  return new ReadOnlyVolume(reader);
}

function limitsFrom(tuning: Partial<CoreLimits>): CoreLimits {
  const limits: CoreLimits = { ...DEFAULT_LIMITS };
  const take = <K extends keyof CoreLimits>(key: K): void => {
    const value = tuning[key];
    if (value !== undefined) limits[key] = value;
  };
  for (const key of Object.keys(DEFAULT_LIMITS) as Array<keyof CoreLimits>) take(key);
  return limits;
}
