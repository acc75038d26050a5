// The product under measurement: `ebs-fuse mount` and `ebs-fuse upload` as users
// run them (node dist/cli.js, against local-ebs on 127.0.0.1), and the bench's
// null-client mount (scripts/bench/null-mount.ts). Each runs under
// rusage-exec.py, so its peak RSS and CPU seconds are exact.
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { Cleanup } from './cleanup';
import { dd } from './data';
import { environmentWithoutAws, type LocalEbs } from './local-ebs';
import { registerFuseMountpoint } from './mounts';
import { describeExit, spawnTracked, type Rusage, type Tracked } from './proc';
import { BENCH_DIR, CLI_PATH, REPO_ROOT } from './paths';
import { MIB } from './stats';

const READY_TIMEOUT_MS = 60_000;
/** The final flush of 2 GiB at a few tens of MB/s still fits. */
const FINISH_TIMEOUT_MS = 15 * 60_000;

export interface MountSettings {
  /** Names the mountpoint, state dir and rusage file. */
  name: string;
  scratch: string;
  volumeSizeGiB: number;
  /** The product against this server; absent (and no localDataDir): the null-client mount. */
  server?: LocalEbs;
  /** The product with `--local DIR`: local-ebs embedded in the mount's own process. */
  localDataDir?: string;
  /** Passed as --cache-size (product) or CACHE_SIZE (null mount); default: the product's default. */
  cacheSize?: string;
  /** Where the state directory (journal, local copy) goes; default: scratch. */
  stateParent?: string;
  /** Flags for node itself, e.g. --cpu-prof. */
  nodeFlags?: string[];
  /** Null mount only: false makes its client acknowledge without hashing. */
  nullClientVerifies?: boolean;
  /** More flags for `ebs-fuse mount` (product only), e.g. --disk-cache-size. */
  extraArgs?: string[];
}

export interface Finished {
  snapshotId: string;
  status: string;
  /** From the unmount signal to the process's exit, seconds. */
  finishSeconds: number;
  endedAtNs: bigint;
  rusage: Rusage;
  /** The null mount's own JSON line (puts, distinctBlocks, checksumListDigest of what it was sent, fuse counters). */
  report?: { puts: number; distinctBlocks: number; checksumListDigest: string; fuse: { writeCalls: number; largestWriteBytes: number } };
  stderr: string;
}

export class RunningMount {
  private constructor(
    readonly process: Tracked,
    readonly snapshotId: string,
    readonly filePath: string,
    /** Spawn to the `SNAPSHOT_ID PATH` line, seconds. */
    readonly startSeconds: number,
    private readonly unregisterMountpoint: () => Promise<void>,
  ) {}

  static async start(cleanup: Cleanup, settings: MountSettings): Promise<RunningMount> {
    const mountpoint = path.join(settings.scratch, `mnt-${settings.name}`);
    const stateDir = path.join(settings.stateParent ?? settings.scratch, `state-${settings.name}`);
    await mkdir(mountpoint, { recursive: true });
    const unregisterMountpoint = registerFuseMountpoint(cleanup, mountpoint);
    const rusageFile = path.join(settings.scratch, `${settings.name}.rusage.json`);
    let tracked: Tracked;
    if (settings.server || settings.localDataDir) {
      const target = settings.server ? ['--endpoint', settings.server.endpoint] : ['--local', settings.localDataDir!];
      const args = [
        ...(settings.nodeFlags ?? []),
        CLI_PATH,
        'mount',
        mountpoint,
        '--size',
        String(settings.volumeSizeGiB),
        ...target,
        '--state-dir',
        stateDir,
      ];
      if (settings.cacheSize) args.push('--cache-size', settings.cacheSize);
      args.push(...(settings.extraArgs ?? []));
      tracked = spawnTracked(cleanup, `ebs-fuse mount (${settings.name})`, process.execPath, args, {
        cwd: REPO_ROOT,
        env: settings.server ? settings.server.cliEnvironment() : environmentWithoutAws(),
        rusageFile,
      });
    } else {
      const args = [
        ...(settings.nodeFlags ?? []),
        '-r',
        'tsx/cjs',
        path.join(BENCH_DIR, 'null-mount.ts'),
        mountpoint,
        String(settings.volumeSizeGiB),
        stateDir,
      ];
      if (settings.cacheSize) args.push(settings.cacheSize);
      const env = { ...process.env, NULL_CLIENT_VERIFY: settings.nullClientVerifies === false ? '0' : '1' };
      tracked = spawnTracked(cleanup, `null mount (${settings.name})`, process.execPath, args, { cwd: REPO_ROOT, rusageFile, env });
    }
    let line: string;
    try {
      line = await tracked.waitForLine(0, READY_TIMEOUT_MS);
    } catch (error) {
      await tracked.kill();
      await unregisterMountpoint();
      throw error;
    }
    const startSeconds = Number(process.hrtime.bigint() - tracked.startedAtNs) / 1e9;
    const [snapshotId, filePath] = line.split(' ');
    return new RunningMount(tracked, snapshotId, filePath, startSeconds, unregisterMountpoint);
  }

  /**
   * The sequential write of the end-to-end baselines: `dd bs=1M conv=fsync` of
   * `bytes` of `file` into the mounted file, then finish(); seconds from dd's start
   * to the completed snapshot.
   */
  async ddThenFinish(cleanup: Cleanup, file: string, bytes: number, timeoutMs: number): Promise<{ finished: Finished; seconds: number }> {
    const startNs = process.hrtime.bigint();
    await dd(cleanup, { input: file, output: this.filePath, blockSizeBytes: MIB, count: Math.ceil(bytes / MIB), conv: 'fsync', timeoutMs });
    const finished = await this.finish();
    return { finished, seconds: Number(finished.endedAtNs - startNs) / 1e9 };
  }

  /** SIGINT (as Ctrl-C or `umount` would), then the final flush and completion; rejects unless completed. */
  async finish(): Promise<Finished> {
    const signalledAtNs = process.hrtime.bigint();
    this.process.signal('SIGINT');
    const exit = await this.process.waitForExit(FINISH_TIMEOUT_MS);
    await this.unregisterMountpoint();
    const endedAtNs = this.process.exitedAtNs!;
    const statusLine = this.process.stdoutLines[1] ?? '';
    const [snapshotId, status] = statusLine.split(' ');
    if (exit.code !== 0 || snapshotId !== this.snapshotId || status !== 'completed') {
      throw new Error(
        `${this.process.name} ended with ${describeExit(exit)} and "${statusLine}": ${this.process.stderr().trim().slice(-2000)}`,
      );
    }
    const reportLine = this.process.stdoutLines[2];
    return {
      snapshotId,
      status,
      finishSeconds: Number(endedAtNs - signalledAtNs) / 1e9,
      endedAtNs,
      rusage: await this.process.rusage(),
      report: reportLine ? (JSON.parse(reportLine) as Finished['report']) : undefined,
      stderr: this.process.stderr(),
    };
  }
}

export interface UploadResult {
  snapshotId: string;
  seconds: number;
  rusage: Rusage;
}

/** `ebs-fuse upload FILE` to the server; wall time from spawn to exit. */
export async function runUpload(
  cleanup: Cleanup,
  server: LocalEbs,
  scratch: string,
  name: string,
  file: string,
  extraArgs: string[] = [],
): Promise<UploadResult> {
  const tracked = spawnTracked(
    cleanup,
    `ebs-fuse upload (${name})`,
    process.execPath,
    [CLI_PATH, 'upload', file, '--endpoint', server.endpoint, ...extraArgs],
    { cwd: REPO_ROOT, env: server.cliEnvironment(), rusageFile: path.join(scratch, `${name}.rusage.json`) },
  );
  const exit = await tracked.waitForExit(FINISH_TIMEOUT_MS);
  const snapshotId = tracked.stdoutLines[0]?.trim() ?? '';
  if (exit.code !== 0 || !/^snap-[0-9a-f]+$/.test(snapshotId)) {
    throw new Error(`ebs-fuse upload ended with ${describeExit(exit)} and "${snapshotId}": ${tracked.stderr().trim().slice(-2000)}`);
  }
  return { snapshotId, seconds: tracked.elapsedSeconds, rusage: await tracked.rusage() };
}
