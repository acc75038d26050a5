// A mount's snapshot from StartSnapshot to CompleteSnapshot: the state directory,
// the volume, and the final flush. Plain async code, so it is tested without FUSE.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { SnapshotClient, StartSnapshotParams } from '../ebs/client';
import { UserError } from '../errors';
import { DEFAULT_LIMITS, type CoreLimits } from './limits';
import { Volume } from './volume';
import type { FinishResult, VolumeFile, VolumeStats } from './volume-file';

export interface SessionTuning extends Partial<CoreLimits> {
  /** Parent folder of the per-snapshot state directories. */
  stateDir: string;
  retryCount?: () => number;
  log?: (line: string) => void;
}

export class SnapshotSession {
  private constructor(
    readonly snapshotId: string,
    readonly stateDirectory: string,
    private readonly client: SnapshotClient,
    private readonly volume: Volume,
  ) {}

  static async start(client: SnapshotClient, params: StartSnapshotParams, tuning: SessionTuning): Promise<SnapshotSession> {
    const started = await client.startSnapshot(params);
    const stateDirectory = path.join(tuning.stateDir, started.snapshotId);
    try {
      await fs.mkdir(stateDirectory, { recursive: true, mode: 0o700 });
      await fs.chmod(stateDirectory, 0o700);
      await writeFileAtomic(path.join(stateDirectory, 'snapshot.json'), `${JSON.stringify({ snapshotId: started.snapshotId, params }, null, 2)}\n`);
    } catch (error) {
      throw new UserError(`cannot use state directory ${stateDirectory}: ${(error as Error).message}`);
    }
    const limits = limitsFrom(tuning);
    const volume = new Volume({
      client,
      snapshotId: started.snapshotId,
      volumeSizeGiB: started.volumeSizeGiB,
      stateDirectory,
      limits,
      zeroSkipAllowed: params.parentSnapshotId === undefined && !params.encrypted,
      retryCount: tuning.retryCount,
      log: tuning.log,
    });
    return new SnapshotSession(started.snapshotId, stateDirectory, client, volume);
  }

  get file(): VolumeFile {
    return this.volume;
  }

  stats(): VolumeStats {
    return this.volume.stats();
  }

  /**
   * Flushes every dirty block, then completes the snapshot unless complete=false.
   * When the flush fails the snapshot stays pending and the state is kept.
   */
  async finish(options: { complete: boolean; timeoutMs: number }): Promise<FinishResult> {
    try {
      await this.volume.flushAll(options.timeoutMs);
    } catch (error) {
      throw new UserError(
        `could not upload every block of ${this.snapshotId} (${(error as Error).message}); ` +
          `the snapshot stays pending and its state is kept in ${this.stateDirectory}`,
      );
    }
    if (!options.complete) {
      await this.volume.close();
      return { snapshotId: this.snapshotId, status: 'pending' };
    }
    const figures = this.volume.completionFigures();
    const status = await this.client.completeSnapshot({
      snapshotId: this.snapshotId,
      changedBlocksCount: figures.changedBlocksCount,
      linearChecksumBase64: figures.linearChecksumBase64,
    });
    await this.volume.close();
    if (status !== 'error') await fs.rm(this.stateDirectory, { recursive: true, force: true });
    return { snapshotId: this.snapshotId, status };
  }

  async close(): Promise<void> {
    await this.volume.close();
  }
}

function limitsFrom(tuning: Partial<CoreLimits>): CoreLimits {
  const limits: CoreLimits = { ...DEFAULT_LIMITS };
  for (const key of Object.keys(DEFAULT_LIMITS) as Array<keyof CoreLimits>) {
    const value = tuning[key];
    if (value !== undefined) limits[key] = value;
  }
  return limits;
}

async function writeFileAtomic(file: string, content: string): Promise<void> {
  const temporary = `${file}.tmp`;
  const handle = await fs.open(temporary, 'w', 0o600);
  try {
    await handle.writeFile(content);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await fs.rename(temporary, file);
}
