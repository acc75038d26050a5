// Shared drivers of the reliability scenarios: they run real mounts
// (`node dist/cli.js mount`) against a real local-ebs process, and are used both
// by test/scenarios/reliability-*.test.ts (short runs) and by `npm run soak`
// (test/soak, long runs). Every driver returns the figures the soak adds up:
// requests sent and faults injected (counted by local-ebs), bytes verified, and
// bytes lost (any byte that read back wrong; must be 0).
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { RetryingSnapshotClient } from '../../src/ebs/retry';
import { isMountPoint } from '../../src/fuse/mountinfo';
import { getLocalEbsStats } from '../../src/local-ebs/admin-client';
import type { LocalEbsStats } from '../../src/local-ebs/server';
import { startLocalEbsProcess } from '../support/local-ebs-process';
import { MountProcess, runCli, cliEnvironment, type CliResult } from '../support/mount-process';
import { SeededRandom } from '../support/random';
import { createZeroImage, mustRun, sh, type CommandResult, type ScenarioContext, GIB, MIB } from './support';

export { GIB, MIB };

/** The totals `npm run soak` prints. */
export interface Figures {
  requestsSent: number;
  /** Every fault local-ebs drew, a drawn latency included. */
  faultsInjected: number;
  /** The same by kind (500, throttle, reset, latency, deny, ...). */
  faultsByKind?: Record<string, number>;
  bytesVerified: number;
  bytesLost: number;
}

export function emptyFigures(): Figures {
  return { requestsSent: 0, faultsInjected: 0, faultsByKind: {}, bytesVerified: 0, bytesLost: 0 };
}

export function addFigures(into: Figures, more: Figures): void {
  into.requestsSent += more.requestsSent;
  into.faultsInjected += more.faultsInjected;
  into.bytesVerified += more.bytesVerified;
  into.bytesLost += more.bytesLost;
  into.faultsByKind ??= {};
  for (const [kind, count] of Object.entries(more.faultsByKind ?? {})) into.faultsByKind[kind] = (into.faultsByKind[kind] ?? 0) + count;
}

function sum(record: Record<string, number>): number {
  return Object.values(record).reduce((total, value) => total + value, 0);
}

/**
 * Counts what a local-ebs process served. Its counters live in the process, so
 * they are read before every stop or kill and added up here.
 */
export class ServerCounter {
  requests = 0;
  faults = 0;
  readonly faultsByKind: Record<string, number> = {};

  add(stats: LocalEbsStats): void {
    this.requests += sum(stats.requests);
    this.faults += sum(stats.faultsInjected);
    for (const [kind, count] of Object.entries(stats.faultsInjected)) this.faultsByKind[kind] = (this.faultsByKind[kind] ?? 0) + count;
  }

  /** Faults by kind counted here, less those a server had counted at `before` (read from the first server). */
  since(before: LocalEbsStats): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [kind, count] of Object.entries(this.faultsByKind)) out[kind] = count - (before.faultsInjected[kind] ?? 0);
    return out;
  }

  /** Reads the running server's counters (call once per server process, just before it goes). */
  async collect(context: ScenarioContext): Promise<void> {
    this.add(await getLocalEbsStats(context.localEbs.endpoint, context.localEbs.credentials));
  }

  /**
   * A workload's last step: the running server's counters read (a server already
   * gone is no failure here), and the requests and faults since `before` written
   * into the outcome.
   */
  async settle(context: ScenarioContext, outcome: Figures, before: LocalEbsStats): Promise<void> {
    await this.collect(context).catch(() => undefined);
    outcome.requestsSent = this.requests - sum(before.requests);
    outcome.faultsInjected = this.faults - sum(before.faultsInjected);
    outcome.faultsByKind = this.since(before);
  }
}

/**
 * Stops local-ebs with SIGKILL (its counters are read first), waits, and starts
 * it again on the same port, with the same data directory unless another is
 * given (an empty one makes every snapshot disappear).
 */
export async function restartLocalEbs(
  context: ScenarioContext,
  counter: ServerCounter,
  options: { pauseMs: number; dataDir?: string; faults?: string; whilePaused?: () => Promise<void> },
): Promise<void> {
  const { port, dataDir } = context.localEbs;
  await counter.collect(context).catch(() => undefined);
  await context.localEbs.kill9();
  const pausedUntil = Date.now() + options.pauseMs;
  await options.whilePaused?.();
  const left = pausedUntil - Date.now();
  if (left > 0) await delay(left);
  context.localEbs = await startLocalEbsProcess({
    dataDir: options.dataDir ?? dataDir,
    faults: options.faults,
    // Later flags win in commander: the same port, so the mount's endpoint stays valid.
    extraArgs: ['--port', String(port)],
  });
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The pid of the mount process, from the lock file of its snapshot's state (docs/SEMANTICS.md). */
export async function mountPid(stateDir: string, snapshotId: string): Promise<number> {
  const pid = Number.parseInt(await readFile(path.join(stateDir, snapshotId, 'lock'), 'utf8'), 10);
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`no pid in the lock of ${snapshotId}`);
  return pid;
}

/** Samples a process's VmRSS from /proc every intervalMs until stopped or the process is gone. */
export class RssSampler {
  maxBytes = 0;
  samples = 0;
  private timer?: NodeJS.Timeout;
  private readonly file: string;

  constructor(
    pid: number,
    private readonly intervalMs = 100,
  ) {
    this.file = `/proc/${pid}/status`;
  }

  start(): this {
    const sample = async (): Promise<void> => {
      const text = await readFile(this.file, 'utf8').catch(() => undefined);
      if (text === undefined) return;
      const match = /^VmRSS:\s+(\d+) kB$/m.exec(text);
      if (match) {
        this.samples += 1;
        this.maxBytes = Math.max(this.maxBytes, Number(match[1]) * 1024);
      }
      if (this.timer) this.timer = setTimeout(() => void sample(), this.intervalMs);
    };
    this.timer = setTimeout(() => void sample(), 0);
    return this;
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}

// ---------------------------------------------------------------------------
// Writes: one dd per chunk, replayed on a local image to know what to expect.

export interface WriteChunk {
  offsetBytes: number;
  lengthBytes: number;
  /** Where in the source file the bytes come from; ignored for zeros. */
  sourceOffsetBytes: number;
  zeros: boolean;
  /** dd's bs: the size of each write(2). */
  ddBlockBytes: number;
}

/** dd arguments for a chunk: byte offsets, no truncation, fsync before exit. */
export function ddArgs(source: string, target: string, chunk: WriteChunk, fsync = true): string[] {
  return [
    `if=${chunk.zeros ? '/dev/zero' : source}`,
    `of=${target}`,
    `bs=${chunk.ddBlockBytes}`,
    `count=${chunk.lengthBytes}`,
    `skip=${chunk.zeros ? 0 : chunk.sourceOffsetBytes}`,
    `seek=${chunk.offsetBytes}`,
    'iflag=skip_bytes,count_bytes,fullblock',
    'oflag=seek_bytes',
    fsync ? 'conv=notrunc,fsync' : 'conv=notrunc',
    'status=none',
  ];
}

/** The bytes a chunk writes. */
export function chunkBytes(source: Buffer, chunk: WriteChunk): Buffer {
  if (chunk.zeros) return Buffer.alloc(chunk.lengthBytes);
  return source.subarray(chunk.sourceOffsetBytes, chunk.sourceOffsetBytes + chunk.lengthBytes);
}

export async function writeAt(file: string, offsetBytes: number, data: Buffer): Promise<void> {
  const handle = await open(file, 'r+');
  try {
    let written = 0;
    while (written < data.length) {
      written += (await handle.write(data, written, data.length - written, offsetBytes + written)).bytesWritten;
    }
  } finally {
    await handle.close();
  }
}

export async function readAt(file: string, offsetBytes: number, length: number): Promise<Buffer> {
  const handle = await open(file, 'r');
  try {
    const out = Buffer.alloc(length);
    let read = 0;
    while (read < length) {
      const { bytesRead } = await handle.read(out, read, length - read, offsetBytes + read);
      if (bytesRead === 0) break;
      read += bytesRead;
    }
    return out.subarray(0, read);
  } finally {
    await handle.close();
  }
}

export interface RunningCommand {
  pid: number;
  done: Promise<CommandResult>;
}

/** Starts a command with a time limit and keeps its pid (to watch it through /proc). */
export function startCommand(command: string, args: string[], timeoutMs = 120_000): RunningCommand {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs, killSignal: 'SIGKILL' });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const done = new Promise<CommandResult>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
  return { pid: child.pid!, done };
}

/** dd's output file offset (dd reopens of= as its fd 1), or undefined once it exited. */
export async function outputPosition(pid: number): Promise<number | undefined> {
  const text = await readFile(`/proc/${pid}/fdinfo/1`, 'utf8').catch(() => undefined);
  const match = text === undefined ? null : /^pos:\s+(\d+)$/m.exec(text);
  return match ? Number(match[1]) : undefined;
}

/** Polls until `done` says so, the command ended, or the limit passed; true if it is still running. */
async function waitWhileRunning(command: RunningCommand, done: (position: number) => boolean, timeoutMs: number): Promise<boolean> {
  let ended = false;
  void command.done.then(
    () => (ended = true),
    () => (ended = true),
  );
  const deadline = Date.now() + timeoutMs;
  while (!ended && Date.now() < deadline) {
    const position = await outputPosition(command.pid);
    if (position !== undefined && done(position)) return !ended;
    await delay(2);
  }
  return !ended;
}

/** Compares `length` bytes at `offset` of two files with cmp; the first differing offset or -1. */
export async function compareRange(expected: string, actual: string, offsetBytes: number, lengthBytes: number): Promise<number> {
  if (lengthBytes <= 0) return -1;
  const result = await sh('cmp', ['-i', String(offsetBytes), '-n', String(lengthBytes), expected, actual], { timeoutMs: 120_000 });
  if (result.code === 0) return -1;
  const match = /byte (\d+)/.exec(result.stdout);
  if (result.code === 1 && match) return offsetBytes + Number(match[1]) - 1;
  throw new Error(`cmp ${expected} ${actual} failed: ${result.stdout}${result.stderr}`);
}

/**
 * Compares [from, to) block by block, passing over blocks the mount answers with
 * EIO (held nowhere); throws on any readable byte that differs. Returns the bytes compared.
 */
async function compareReadableBlocks(expected: string, actual: string, from: number, to: number, what: string): Promise<number> {
  let compared = 0;
  for (let offset = from; offset < to;) {
    const end = Math.min(to, (Math.floor(offset / BLOCK_SIZE_BYTES) + 1) * BLOCK_SIZE_BYTES);
    const shown = await readAtUnlessEio(actual, offset, end - offset);
    if (shown) {
      const want = await readAt(expected, offset, end - offset);
      if (!shown.equals(want)) throw new Error(`${what} differs from the acknowledged data in the block at byte ${offset}`);
      compared += shown.length;
    }
    offset = end;
  }
  return compared;
}

/** The range as the mount shows it, with blocks held nowhere (EIO) filled in from `fallback`. */
async function readHeldBlocks(file: string, offsetBytes: number, fallback: Buffer): Promise<Buffer> {
  const out = Buffer.from(fallback);
  for (let at = 0; at < out.length;) {
    const end = Math.min(out.length, (Math.floor((offsetBytes + at) / BLOCK_SIZE_BYTES) + 1) * BLOCK_SIZE_BYTES - offsetBytes);
    const shown = await readAtUnlessEio(file, offsetBytes + at, end - at);
    if (shown) shown.copy(out, at);
    at = end;
  }
  return out;
}

async function readAtUnlessEio(file: string, offsetBytes: number, length: number): Promise<Buffer | undefined> {
  try {
    return await readAt(file, offsetBytes, length);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EIO') return undefined;
    throw error;
  }
}

/** Counts the bytes that differ between two buffers of equal length. */
export function differingBytes(a: Buffer, b: Buffer): number {
  let count = 0;
  for (let i = 0; i < a.length; i += 1) if (a[i] !== b[i]) count += 1;
  return count;
}

// ---------------------------------------------------------------------------
// Crash: kill -9 of the mount at chosen points, --resume, go on, complete.

export type KillPoint =
  /** While dd writes, once `fraction` of its bytes went through write(2). */
  | { during: 'write'; fraction: number }
  /** After dd's last write, while its fsync (or close) runs. */
  | { during: 'fsync' }
  /** After dd exited 0: everything it wrote was acknowledged by its fsync. */
  | { during: 'after' };

export interface CrashStep {
  chunk: WriteChunk;
  kill?: KillPoint;
  /**
   * After a kill in the middle of this chunk, write it again once resumed (as
   * the dd that was interrupted is run to its end); otherwise leave whatever survived.
   */
  redo: boolean;
}

export interface CrashPlan {
  name: string;
  volumeGiB: number;
  cacheSize: string;
  sourceBytes: number;
  steps: CrashStep[];
  /** Kill during the final flush, this long after SIGINT. */
  killInFinalFlushAfterMs?: number;
  /**
   * --disk-cache-size of the mounts. A bounded local copy leaves blocks held
   * nowhere (reads of them fail with EIO), so checks through the mount skip
   * those, every interrupted chunk is written again, and the completed snapshot
   * is the full check.
   */
  diskCacheSize?: string;
}

export interface CrashOutcome extends Figures {
  snapshotId: string;
  kills: number;
  /** Kills that landed where they were meant to (dd still running for write/fsync). */
  killsOnTarget: number;
}

/** A random plan: chunks over a small span so that they overlap, kills at random points. */
export function randomCrashPlan(
  seed: number,
  options: { chunks: number; kills: number; spanBytes: number; maxChunkBytes: number; finalFlushKill: boolean; diskCacheSize?: string },
): CrashPlan {
  const random = new SeededRandom(seed);
  const sourceBytes = options.maxChunkBytes * 2;
  // A block held nowhere can only be written whole: with a bounded local copy, chunks cover whole blocks.
  const unitBytes = options.diskCacheSize === undefined ? 1 : BLOCK_SIZE_BYTES;
  const ddSizes = options.diskCacheSize === undefined ? [4096, 65536, 131072, MIB, 4 * MIB] : [131072, MIB, 4 * MIB];
  const steps: CrashStep[] = [];
  for (let i = 0; i < options.chunks; i += 1) {
    const lengthBytes = random.int(1, Math.floor(options.maxChunkBytes / unitBytes)) * unitBytes;
    steps.push({
      chunk: {
        offsetBytes: random.int(0, Math.floor((options.spanBytes - lengthBytes) / unitBytes)) * unitBytes,
        lengthBytes,
        sourceOffsetBytes: random.int(0, sourceBytes - lengthBytes),
        zeros: random.next() < 0.15,
        ddBlockBytes: ddSizes[random.int(0, ddSizes.length)],
      },
      redo: options.diskCacheSize !== undefined || random.next() < 0.5,
    });
  }
  const killable = steps.map((_, i) => i);
  for (let k = 0; k < options.kills && killable.length > 0; k += 1) {
    const [at] = killable.splice(random.int(0, killable.length), 1);
    const roll = random.next();
    steps[at].kill = roll < 0.6 ? { during: 'write', fraction: random.next() } : roll < 0.8 ? { during: 'fsync' } : { during: 'after' };
  }
  return {
    name: `seed ${seed}`,
    volumeGiB: 1,
    cacheSize: ['16MiB', '32MiB', '64MiB'][random.int(0, 3)],
    sourceBytes,
    steps,
    // The final flush of a plan whose dd runs all closed (each close uploads) lasts some tens of ms.
    killInFinalFlushAfterMs: options.finalFlushKill && random.next() < 0.5 ? random.int(0, 60) : undefined,
    diskCacheSize: options.diskCacheSize,
  };
}

/** Logs one line of a scenario (the soak prints them; tests keep quiet unless EBS_FUSE_TEST_VERBOSE). */
export type ScenarioLog = (line: string) => void;

export const quietLog: ScenarioLog = (line) => {
  if (process.env.EBS_FUSE_TEST_VERBOSE) process.stderr.write(`      ${line}\n`);
};

/**
 * Runs a crash plan on one snapshot: each kill is followed by the clean-up the
 * mount's own error message asks for and a `--resume` on the same mountpoint;
 * after each resume everything acknowledged reads back, and at the end the
 * completed snapshot (read with GetSnapshotBlock) equals the intended image.
 */
export async function runCrashPlan(context: ScenarioContext, plan: CrashPlan, log: ScenarioLog = quietLog): Promise<CrashOutcome> {
  const work = path.join(context.scratch, `crash-${plan.name.replace(/\W+/g, '-')}-${Date.now()}`);
  await mkdir(work);
  const mountpoint = path.join(work, 'mnt');
  await mkdir(mountpoint);
  const stateDir = path.join(work, 'state');
  const sourceFile = path.join(work, 'source.bin');
  const source = randomBytes(plan.sourceBytes);
  await writeFile(sourceFile, source);
  const expected = path.join(work, 'expected.img');
  await createZeroImage(expected, plan.volumeGiB * GIB);
  const spanBytes = Math.max(...plan.steps.map(({ chunk }) => chunk.offsetBytes + chunk.lengthBytes));
  const outcome: CrashOutcome = { ...emptyFigures(), snapshotId: '', kills: 0, killsOnTarget: 0 };
  const counter = new ServerCounter();
  const statsBefore = await getLocalEbsStats(context.localEbs.endpoint, context.localEbs.credentials);
  const mountArgs = [
    '--cache-size',
    plan.cacheSize,
    ...(plan.diskCacheSize === undefined ? [] : ['--disk-cache-size', plan.diskCacheSize]),
  ];
  const bounded = plan.diskCacheSize !== undefined;

  let mount = await MountProcess.start({ mountpoint, sizeGiB: plan.volumeGiB, endpoint: context.endpoint, stateDir, args: mountArgs });
  const snapshotId = mount.snapshotId;
  outcome.snapshotId = snapshotId;
  log(`${plan.name}: ${snapshotId}, ${plan.steps.length} chunks over ${(spanBytes / MIB).toFixed(1)} MiB, cache ${plan.cacheSize}`);

  /** Checks the mount against the expected image over the span, except one range. */
  const verify = async (except?: WriteChunk): Promise<void> => {
    const ranges: Array<[number, number]> = except
      ? [
          [0, except.offsetBytes],
          [except.offsetBytes + except.lengthBytes, spanBytes],
        ]
      : [[0, spanBytes]];
    for (const [from, to] of ranges) {
      if (bounded) {
        outcome.bytesVerified += await compareReadableBlocks(
          expected,
          mount.filePath,
          from,
          to,
          `${plan.name}: after resume, ${snapshotId}`,
        );
        continue;
      }
      const differsAt = await compareRange(expected, mount.filePath, from, to - from);
      if (differsAt >= 0) {
        const length = Math.min(to - differsAt, BLOCK_SIZE_BYTES);
        outcome.bytesLost += differingBytes(await readAt(expected, differsAt, length), await readAt(mount.filePath, differsAt, length));
        throw new Error(`${plan.name}: after resume, ${snapshotId} differs from the acknowledged data at byte ${differsAt}`);
      }
      outcome.bytesVerified += Math.max(0, to - from);
    }
  };

  const resume = async (): Promise<void> => {
    // A kill in the final flush can land while the mount's own `umount` child
    // runs; that child outlives it and may still clean the mountpoint.
    await unmountCommandsEnded(mountpoint, 10_000);
    // The mountpoint is a dead FUSE mount now, or clean; on a dead one the mount command says what to do.
    if (await isMountPoint(mountpoint).catch(() => false)) {
      const refused = await runCli(
        ['mount', mountpoint, '--resume', snapshotId, '--endpoint', context.endpoint.endpoint, '--state-dir', stateDir],
        {
          env: cliEnvironment(context.endpoint),
        },
      );
      const match = /run: (fusermount -uz \S+)$/m.exec(refused.stderr);
      if (refused.code !== 1 || !match)
        throw new Error(`${plan.name}: mount on the dead mountpoint did not say how to clean it: ${refused.stderr}`);
      const [command, ...args] = match[1].split(' ');
      await mustRun(command, args);
    }
    mount = await MountProcess.start({ mountpoint, endpoint: context.endpoint, stateDir, args: ['--resume', snapshotId, ...mountArgs] });
    if (mount.snapshotId !== snapshotId) throw new Error(`--resume mounted ${mount.snapshotId}, not ${snapshotId}`);
  };

  const kill = async (): Promise<void> => {
    mount.signal('SIGKILL');
    await mount.waitForExit(30_000);
    outcome.kills += 1;
  };

  try {
    for (const [index, step] of plan.steps.entries()) {
      const { chunk, kill: killPoint } = step;
      const dd = startCommand('dd', ddArgs(sourceFile, mount.filePath, chunk));
      if (!killPoint) {
        const result = await dd.done;
        if (result.code !== 0) throw new Error(`${plan.name}: chunk ${index}: dd failed: ${result.stderr.trim()}`);
        await writeAt(expected, chunk.offsetBytes, chunkBytes(source, chunk));
        continue;
      }
      const end = chunk.offsetBytes + chunk.lengthBytes;
      let onTarget = false;
      if (killPoint.during === 'write') {
        const threshold = chunk.offsetBytes + Math.floor(killPoint.fraction * chunk.lengthBytes);
        onTarget = await waitWhileRunning(dd, (position) => position >= threshold, 60_000);
      } else if (killPoint.during === 'fsync') {
        onTarget = await waitWhileRunning(dd, (position) => position >= end, 60_000);
      } else {
        onTarget = (await dd.done).code === 0;
      }
      await kill();
      if (onTarget) outcome.killsOnTarget += 1;
      const result = await dd.done;
      const chunkAcknowledged = result.code === 0;
      log(
        `${plan.name}: chunk ${index}: killed ${killPoint.during}${killPoint.during === 'write' ? ` at ${(killPoint.fraction * 100).toFixed(0)}%` : ''}; dd ${chunkAcknowledged ? 'had finished' : 'failed'}`,
      );
      if (chunkAcknowledged) await writeAt(expected, chunk.offsetBytes, chunkBytes(source, chunk));
      await resume();
      await verify(chunkAcknowledged ? undefined : chunk);
      if (chunkAcknowledged) continue;
      // Every byte of the interrupted range reads as before or as written: nothing else.
      const before = await readAt(expected, chunk.offsetBytes, chunk.lengthBytes);
      const written = chunkBytes(source, chunk);
      // Blocks held nowhere are left out (EIO); their content is checked in the completed snapshot.
      const shown = bounded
        ? await readHeldBlocks(mount.filePath, chunk.offsetBytes, before)
        : await readAt(mount.filePath, chunk.offsetBytes, chunk.lengthBytes);
      let foreign = 0;
      for (let i = 0; i < shown.length; i += 1) if (shown[i] !== before[i] && shown[i] !== written[i]) foreign += 1;
      if (foreign > 0 || shown.length !== chunk.lengthBytes) {
        outcome.bytesLost += foreign;
        throw new Error(`${plan.name}: chunk ${index}: ${foreign} bytes of the interrupted range read as neither the old nor the new data`);
      }
      outcome.bytesVerified += shown.length;
      if (step.redo) {
        const again = await mustRun('dd', ddArgs(sourceFile, mount.filePath, chunk));
        if (again.code !== 0) throw new Error('unreachable');
        await writeAt(expected, chunk.offsetBytes, written);
      } else {
        // What the resumed mount shows is what the snapshot must hold.
        await writeAt(expected, chunk.offsetBytes, shown);
      }
    }

    let result: CliResult;
    if (plan.killInFinalFlushAfterMs !== undefined) {
      mount.signal('SIGINT');
      await delay(plan.killInFinalFlushAfterMs);
      const endedAlready = !mount.running;
      if (!endedAlready) await kill();
      log(`${plan.name}: killed ${plan.killInFinalFlushAfterMs} ms after SIGINT${endedAlready ? ' (too late: it had finished)' : ''}`);
      if (endedAlready) {
        result = await mount.waitForExit();
      } else {
        const completed = await resumeUnlessCompleted();
        result = completed ?? (await finish());
      }
    } else {
      result = await finish();
    }
    const lines = result.stdout.trim().split('\n');
    if (result.code !== 0 || lines[lines.length - 1] !== `${snapshotId} completed`) {
      throw new Error(`${plan.name}: the mount ended with ${result.code}: ${result.stdout} ${result.stderr}`);
    }
    const snapshotBytes = await compareSnapshot(context, snapshotId, expected, plan.volumeGiB);
    outcome.bytesLost += snapshotBytes.lost;
    outcome.bytesVerified += snapshotBytes.verified;
    if (snapshotBytes.lost > 0)
      throw new Error(`${plan.name}: ${snapshotId} differs from the intended image in ${snapshotBytes.lost} bytes`);
    return outcome;
  } finally {
    await mount.cleanup();
    await counter.settle(context, outcome, statsBefore);
    await rm(work, { recursive: true, force: true });
  }

  async function finish(): Promise<CliResult> {
    // Before the final flush: the whole span reads as intended.
    await verify();
    return mount.stop('SIGINT');
  }

  /** After a kill in the final flush: resume and finish, or learn that the completion had gone through. */
  async function resumeUnlessCompleted(): Promise<CliResult | undefined> {
    try {
      await resume();
    } catch (error) {
      if (/already completed/.test((error as Error).message))
        return { code: 0, signal: null, stdout: `${snapshotId} completed`, stderr: '' };
      throw error;
    }
    return undefined;
  }
}

/**
 * Downloads a completed snapshot with GetSnapshotBlock and compares it with the
 * expected image: the bytes compared, and the bytes that differ (lost).
 */
export async function compareSnapshot(
  context: ScenarioContext,
  snapshotId: string,
  expectedImage: string,
  volumeGiB: number,
): Promise<{ verified: number; lost: number }> {
  const downloaded = context.file(`${snapshotId}-${Date.now()}.img`);
  try {
    await downloadSnapshot(context, snapshotId, downloaded);
    const differsAt = await compareRange(expectedImage, downloaded, 0, volumeGiB * GIB);
    if (differsAt < 0) return { verified: volumeGiB * GIB, lost: 0 };
    const result = await sh('sh', ['-c', 'cmp -l "$0" "$1" | wc -l', expectedImage, downloaded], { timeoutMs: 300_000 });
    const lost = Number.parseInt(result.stdout.trim(), 10);
    return { verified: volumeGiB * GIB, lost: Number.isFinite(lost) && lost > 0 ? lost : 1 };
  } finally {
    await rm(downloaded, { force: true });
  }
}

// ---------------------------------------------------------------------------
// Faults: dd and ext4 workloads against a faulty server; no fsync may fail.

/** The fault mix of the reliability scenarios (docs/RELIABILITY.md). */
export const RELIABILITY_FAULTS = '500=0.1,throttle=0.05,reset=0.01,latency=0-50ms';

/** Lines in a mount's stderr that mean an fsync, close or upload finally failed. */
export function finalFailureLines(stderr: string): string[] {
  return stderr
    .split('\n')
    .filter((line) => /upload of block \d+ failed|could not upload|failed unexpectedly|cannot make the state durable/.test(line));
}

export interface WorkloadOutcome extends Figures {
  snapshotId: string;
  /** The mount's own count of retries (its last status line). */
  mountStderr: string;
}

/** Random chunks over `spanBytes`, written with dd conv=fsync; the snapshot must equal the image. */
export async function runDdWorkload(
  context: ScenarioContext,
  options: { seed: number; chunks: number; spanBytes: number; maxChunkBytes: number; cacheSize: string; log?: ScenarioLog },
): Promise<WorkloadOutcome> {
  const log = options.log ?? quietLog;
  const random = new SeededRandom(options.seed);
  const work = path.join(context.scratch, `dd-${options.seed}-${Date.now()}`);
  await mkdir(work);
  const sourceFile = path.join(work, 'source.bin');
  const source = randomBytes(options.maxChunkBytes * 2);
  await writeFile(sourceFile, source);
  const expected = path.join(work, 'expected.img');
  await createZeroImage(expected, GIB);
  const counter = new ServerCounter();
  const statsBefore = await getLocalEbsStats(context.localEbs.endpoint, context.localEbs.credentials);
  const mount = await context.mount(1, ['--cache-size', options.cacheSize]);
  const outcome: WorkloadOutcome = { ...emptyFigures(), snapshotId: mount.snapshotId, mountStderr: '' };
  try {
    const ddSizes = [4096, 65536, 131072, MIB, 4 * MIB];
    for (let i = 0; i < options.chunks; i += 1) {
      const lengthBytes = random.int(1, options.maxChunkBytes);
      const chunk: WriteChunk = {
        offsetBytes: random.int(0, options.spanBytes - lengthBytes),
        lengthBytes,
        sourceOffsetBytes: random.int(0, source.length - lengthBytes),
        zeros: random.next() < 0.1,
        ddBlockBytes: ddSizes[random.int(0, ddSizes.length)],
      };
      const result = await sh('dd', ddArgs(sourceFile, mount.filePath, chunk));
      if (result.code !== 0)
        throw new Error(`dd ${i} failed (an fsync or write failed): ${result.stderr.trim()}; mount stderr:\n${mount.stderr}`);
      await writeAt(expected, chunk.offsetBytes, chunkBytes(source, chunk));
    }
    const differsAt = await compareRange(expected, mount.filePath, 0, options.spanBytes);
    if (differsAt >= 0) throw new Error(`the mount differs from the written data at byte ${differsAt}`);
    outcome.bytesVerified += options.spanBytes;
    const result = await mount.stop('SIGINT');
    outcome.mountStderr = result.stderr;
    if (result.code !== 0) throw new Error(`the mount ended with ${result.code}: ${result.stderr}`);
    const compared = await compareSnapshot(context, mount.snapshotId, expected, 1);
    addFigures(outcome, { requestsSent: 0, faultsInjected: 0, bytesVerified: compared.verified, bytesLost: compared.lost });
    log(`dd workload ${options.seed}: ${mount.snapshotId}, ${options.chunks} chunks, ${compared.lost} bytes lost`);
    return outcome;
  } finally {
    await mount.cleanup();
    await counter.settle(context, outcome, statsBefore);
    await rm(work, { recursive: true, force: true });
  }
}

/** Files of random sizes (some empty, some several MiB) under `root`; returns their total bytes. */
export async function makeFileTree(root: string, seed: number, files: number, largeFiles: number): Promise<number> {
  const random = new SeededRandom(seed);
  let total = 0;
  for (let i = 0; i < files; i += 1) {
    const folder = path.join(root, `dir-${i % 10}`, `sub-${i % 3}`);
    await mkdir(folder, { recursive: true });
    const data = randomBytes(random.int(0, 40_000));
    total += data.length;
    await writeFile(path.join(folder, `file-${i}.bin`), data);
  }
  for (let i = 0; i < largeFiles; i += 1) {
    const data = randomBytes(random.int(MIB, 6 * MIB));
    total += data.length;
    await writeFile(path.join(root, `large-${i}.bin`), data);
  }
  return total;
}

/**
 * mkfs.ext4 -E nodiscard on the mounted file, a loop mount, a tree copied in,
 * umount. The mount's content is then read out through FUSE: the completed
 * snapshot must equal it byte for byte, pass e2fsck, and hold the same tree.
 */
export async function runExt4Workload(
  context: ScenarioContext,
  options: { seed: number; files: number; largeFiles: number; cacheSize: string; log?: ScenarioLog },
): Promise<WorkloadOutcome> {
  const log = options.log ?? quietLog;
  const work = path.join(context.scratch, `ext4-${options.seed}-${Date.now()}`);
  await mkdir(work);
  const tree = path.join(work, 'tree');
  await makeFileTree(tree, options.seed, options.files, options.largeFiles);
  const inner = path.join(work, 'inner');
  await mkdir(inner);
  const check = path.join(work, 'check');
  await mkdir(check);
  const shown = path.join(work, 'shown.img');
  const downloaded = path.join(work, 'downloaded.img');
  const counter = new ServerCounter();
  const statsBefore = await getLocalEbsStats(context.localEbs.endpoint, context.localEbs.credentials);
  const mount = await context.mount(1, ['--cache-size', options.cacheSize]);
  const outcome: WorkloadOutcome = { ...emptyFigures(), snapshotId: mount.snapshotId, mountStderr: '' };
  try {
    await mustRun('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', mount.filePath], { timeoutMs: 120_000 });
    await mustRun('mount', ['-o', 'loop', mount.filePath, inner]);
    try {
      await mustRun('cp', ['-a', tree, path.join(inner, 'tree')], { timeoutMs: 240_000 });
    } finally {
      await sh('umount', [inner]);
    }
    await waitForLoopDetachedQuietly(mount.filePath);
    // An explicit fsync of the whole file must succeed too.
    await mustRun('dd', ['if=/dev/null', `of=${mount.filePath}`, 'conv=notrunc,fsync', 'status=none']);
    await mustRun('cp', ['--sparse=always', mount.filePath, shown], { timeoutMs: 120_000 });
    const result = await mount.stop('SIGINT');
    outcome.mountStderr = result.stderr;
    if (result.code !== 0) throw new Error(`the mount ended with ${result.code}: ${result.stderr}`);
    const compared = await compareSnapshot(context, mount.snapshotId, shown, 1);
    addFigures(outcome, { requestsSent: 0, faultsInjected: 0, bytesVerified: compared.verified, bytesLost: compared.lost });
    if (compared.lost > 0) throw new Error(`${mount.snapshotId} differs from what the mount showed in ${compared.lost} bytes`);
    await downloadSnapshot(context, mount.snapshotId, downloaded);
    const fsck = await sh('e2fsck', ['-fn', downloaded], { timeoutMs: 120_000 });
    if (fsck.code !== 0) throw new Error(`e2fsck -fn of ${mount.snapshotId}: ${fsck.stdout}${fsck.stderr}`);
    await mustRun('mount', ['-o', 'loop,ro', downloaded, check]);
    try {
      const diff = await sh('diff', ['-r', tree, path.join(check, 'tree')], { timeoutMs: 120_000 });
      if (diff.code !== 0) throw new Error(`the tree in ${mount.snapshotId} differs: ${diff.stdout.slice(0, 2000)}${diff.stderr}`);
    } finally {
      await sh('umount', [check]);
    }
    log(`ext4 workload ${options.seed}: ${mount.snapshotId}, ${options.files} files, ${compared.lost} bytes lost`);
    return outcome;
  } finally {
    for (const point of [inner, check]) if (await isMountPoint(point).catch(() => false)) await sh('umount', ['-l', point]);
    for (const file of [mount.filePath, downloaded]) await detachLoops(file);
    await mount.cleanup();
    await counter.settle(context, outcome, statsBefore);
    await rm(work, { recursive: true, force: true });
  }
}

async function detachLoops(file: string): Promise<void> {
  const attached = await sh('losetup', ['-j', file]);
  for (const line of attached.stdout.split('\n')) {
    const device = line.split(':')[0];
    if (device) await sh('losetup', ['-d', device]);
  }
}

async function waitForLoopDetachedQuietly(file: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while ((await sh('losetup', ['-j', file])).stdout.trim() !== '') {
    if (Date.now() > deadline) throw new Error(`a loop device still uses ${file}`);
    await delay(200);
  }
}

/**
 * Writes a completed snapshot into `outFile` (sparse, the volume's size) with
 * ListSnapshotBlocks + GetSnapshotBlock through the retry policy, so that the
 * server's injected faults do not fail the read-back; every block is checked
 * against its checksum by the client.
 */
export async function downloadSnapshot(context: ScenarioContext, snapshotId: string, outFile: string): Promise<number> {
  return context.download(snapshotId, outFile, new RetryingSnapshotClient(context.client()));
}

// ---------------------------------------------------------------------------
// Outage: local-ebs killed during writes, restarted after a pause.

export interface OutageOutcome extends Figures {
  snapshotId: string;
  /** dd runs that failed (with EIO) and were run again. */
  eioFailures: number;
  /** Chunks whose dd succeeded the first time although the outage overlapped it. */
  chunks: number;
  /** A read of acknowledged data during the outage came back right, and how long it took. */
  readDuringOutageMs: number;
}

/**
 * Writes chunks with dd conv=fsync one after another; once the second chunk is
 * being written, local-ebs is killed (SIGKILL) and started again on the same
 * port and data directory after `outageMs`. A dd that fails must fail with EIO
 * and succeed when run again; the completed snapshot must equal the image.
 */
export async function runOutage(
  context: ScenarioContext,
  options: {
    seed: number;
    outageMs: number;
    chunks: number;
    chunkBytes: number;
    cacheSize: string;
    attemptsPerChunk: number;
    log?: ScenarioLog;
  },
): Promise<OutageOutcome> {
  const log = options.log ?? quietLog;
  const work = path.join(context.scratch, `outage-${options.seed}-${Date.now()}`);
  await mkdir(work);
  const sourceFile = path.join(work, 'source.bin');
  const source = randomBytes(options.chunks * options.chunkBytes);
  await writeFile(sourceFile, source);
  const expected = path.join(work, 'expected.img');
  await createZeroImage(expected, GIB);
  const counter = new ServerCounter();
  const statsBefore = await getLocalEbsStats(context.localEbs.endpoint, context.localEbs.credentials);
  const random = new SeededRandom(options.seed);
  const mount = await context.mount(1, ['--cache-size', options.cacheSize]);
  const outcome: OutageOutcome = {
    ...emptyFigures(),
    snapshotId: mount.snapshotId,
    eioFailures: 0,
    chunks: options.chunks,
    readDuringOutageMs: -1,
  };
  // Chunks in a shuffled order over the span, each at an odd offset.
  const chunks: WriteChunk[] = Array.from({ length: options.chunks }, (_, i) => ({
    offsetBytes: i * (options.chunkBytes + 4096) + random.int(0, 4096),
    lengthBytes: options.chunkBytes,
    sourceOffsetBytes: i * options.chunkBytes,
    zeros: false,
    ddBlockBytes: MIB,
  }));
  const spanBytes = Math.max(...chunks.map((chunk) => chunk.offsetBytes + chunk.lengthBytes));
  let outage: Promise<void> | undefined;
  try {
    for (const [index, chunk] of chunks.entries()) {
      for (let attempt = 1; ; attempt += 1) {
        const dd = startCommand('dd', ddArgs(sourceFile, mount.filePath, chunk), 300_000);
        if (index === 1 && attempt === 1) {
          // Kill the server once this dd is writing: uploads are in flight.
          await waitWhileRunning(dd, (position) => position > chunk.offsetBytes + options.chunkBytes / 4, 60_000);
          outage = restartLocalEbs(context, counter, {
            pauseMs: options.outageMs,
            whilePaused: async () => {
              // Reads never wait for the network: acknowledged data is served during the outage.
              const started = Date.now();
              const first = chunks[0];
              const shown = await readAt(mount.filePath, first.offsetBytes, first.lengthBytes);
              outcome.readDuringOutageMs = Date.now() - started;
              if (!shown.equals(chunkBytes(source, first))) throw new Error('acknowledged data read back wrong during the outage');
              outcome.bytesVerified += shown.length;
            },
          });
          outage.catch(() => undefined);
        }
        const result = await dd.done;
        if (result.code === 0) break;
        if (!/Input\/output error/.test(result.stderr)) throw new Error(`dd ${index} failed, but not with EIO: ${result.stderr.trim()}`);
        outcome.eioFailures += 1;
        log(`outage ${options.seed}: dd ${index} attempt ${attempt}: EIO (${result.stderr.trim().split('\n')[0]})`);
        if (attempt >= options.attemptsPerChunk)
          throw new Error(`dd ${index} still failed after ${attempt} attempts: ${result.stderr.trim()}`);
        // Retry once the server is back, as a person would.
        if (outage) await outage;
        await delay(1000);
      }
      await writeAt(expected, chunk.offsetBytes, chunkBytes(source, chunk));
    }
    if (outage) await outage;
    const differsAt = await compareRange(expected, mount.filePath, 0, spanBytes);
    if (differsAt >= 0) throw new Error(`the mount differs from the written data at byte ${differsAt}`);
    outcome.bytesVerified += spanBytes;
    const result = await mount.stop('SIGINT');
    if (result.code !== 0) throw new Error(`the mount ended with ${result.code}: ${result.stderr}`);
    const compared = await compareSnapshot(context, mount.snapshotId, expected, 1);
    outcome.bytesVerified += compared.verified;
    outcome.bytesLost += compared.lost;
    log(`outage ${options.seed}: ${options.outageMs / 1000} s, ${outcome.eioFailures} EIO then retried, ${compared.lost} bytes lost`);
    return outcome;
  } finally {
    if (outage) await outage.catch(() => undefined);
    await mount.cleanup();
    await counter.settle(context, outcome, statsBefore);
    await rm(work, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------
// Memory: a slow server and a fast writer; RSS sampled for the whole run.

export interface MemoryOutcome extends Figures {
  snapshotId: string;
  maxRssBytes: number;
  samples: number;
  writeMs: number;
  /** The least time the write can take if the cache holds at most its size (uploads bound it). */
  writeLowerBoundMs: number;
  ddStderr: string;
}

export async function runMemory(
  context: ScenarioContext,
  options: { cacheSizeBytes: number; uploadConcurrency: number; putLatencyMs: number; writeBytes: number; log?: ScenarioLog },
): Promise<MemoryOutcome> {
  const log = options.log ?? quietLog;
  const work = path.join(context.scratch, `memory-${Date.now()}`);
  await mkdir(work);
  const sourceFile = path.join(work, 'source.bin');
  await writeFile(sourceFile, randomBytes(options.writeBytes));
  const expected = path.join(work, 'expected.img');
  await createZeroImage(expected, GIB);
  const counter = new ServerCounter();
  const statsBefore = await getLocalEbsStats(context.localEbs.endpoint, context.localEbs.credentials);
  const stateDir = path.join(context.scratch, 'state');
  const mount = await context.mount(1, [
    '--cache-size',
    `${options.cacheSizeBytes / MIB}MiB`,
    '--upload-concurrency',
    String(options.uploadConcurrency),
  ]);
  const sampler = new RssSampler(await mountPid(stateDir, mount.snapshotId), 100).start();
  const outcome: MemoryOutcome = {
    ...emptyFigures(),
    snapshotId: mount.snapshotId,
    maxRssBytes: 0,
    samples: 0,
    writeMs: 0,
    writeLowerBoundMs: 0,
    ddStderr: '',
  };
  try {
    const started = Date.now();
    const dd = await sh('dd', [`if=${sourceFile}`, `of=${mount.filePath}`, 'bs=1M', 'conv=notrunc,fsync', 'status=none'], {
      timeoutMs: 600_000,
    });
    outcome.writeMs = Date.now() - started;
    outcome.ddStderr = dd.stderr;
    if (dd.code !== 0) throw new Error(`dd failed: ${dd.stderr.trim()}`);
    await mustRun('dd', [`if=${sourceFile}`, `of=${expected}`, 'bs=1M', 'conv=notrunc', 'status=none']);
    // Uploads go at most concurrency blocks per latency; whatever the cache cannot hold had to be uploaded first.
    const uploadBytesPerMs = (options.uploadConcurrency * BLOCK_SIZE_BYTES) / options.putLatencyMs;
    outcome.writeLowerBoundMs = Math.max(0, options.writeBytes - options.cacheSizeBytes) / uploadBytesPerMs;
    const result = await mount.stop('SIGINT', 600_000);
    if (result.code !== 0) throw new Error(`the mount ended with ${result.code}: ${result.stderr}`);
    sampler.stop();
    const compared = await compareSnapshot(context, mount.snapshotId, expected, 1);
    outcome.bytesVerified += compared.verified;
    outcome.bytesLost += compared.lost;
    outcome.maxRssBytes = sampler.maxBytes;
    outcome.samples = sampler.samples;
    log(
      `memory: ${options.writeBytes / MIB} MiB through a ${options.cacheSizeBytes / MIB} MiB cache in ${(outcome.writeMs / 1000).toFixed(1)} s ` +
        `(at least ${(outcome.writeLowerBoundMs / 1000).toFixed(1)} s), max RSS ${(sampler.maxBytes / MIB).toFixed(0)} MiB over ${sampler.samples} samples`,
    );
    return outcome;
  } finally {
    sampler.stop();
    await mount.cleanup();
    await counter.settle(context, outcome, statsBefore);
    await rm(work, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------
// Permanent failures: what a program sees from fsync and close.

export interface FsyncCloseResult {
  writeError: string | null;
  fsyncError: string | null;
  fsyncMs: number;
  closeError: string | null;
  closeMs: number;
}

// Runs in a separate node: write, then fsync and close timed apart, errors as codes.
const WRITER_SCRIPT = `
const fs = require('fs');
const [file, offset, dataFile] = process.argv.slice(1);
const data = dataFile === '-' ? Buffer.alloc(0) : fs.readFileSync(dataFile);
const out = { writeError: null, fsyncError: null, fsyncMs: 0, closeError: null, closeMs: 0 };
const fd = fs.openSync(file, 'r+');
try { let done = 0; while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, Number(offset) + done); } catch (e) { out.writeError = e.code; }
let started = Date.now();
try { fs.fsyncSync(fd); } catch (e) { out.fsyncError = e.code; }
out.fsyncMs = Date.now() - started;
started = Date.now();
try { fs.closeSync(fd); } catch (e) { out.closeError = e.code; }
out.closeMs = Date.now() - started;
process.stdout.write(JSON.stringify(out));
`;

/** Writes `dataFile` at `offsetBytes` of `file` (or nothing, for '-'), then fsync and close, each timed. */
export async function writeFsyncClose(file: string, offsetBytes: number, dataFile: string, timeoutMs = 300_000): Promise<FsyncCloseResult> {
  const result = await sh(process.execPath, ['-e', WRITER_SCRIPT, file, String(offsetBytes), dataFile], { timeoutMs });
  if (result.code !== 0) throw new Error(`the writer failed (${result.code}): ${result.stderr}`);
  return JSON.parse(result.stdout) as FsyncCloseResult;
}

/** Waits (at most timeoutMs) until no umount or fusermount of `mountpoint` is running on this machine. */
async function unmountCommandsEnded(mountpoint: string, timeoutMs: number): Promise<void> {
  const deadlineMs = Date.now() + timeoutMs;
  const running = async (): Promise<boolean> => {
    for (const pid of await readdir('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
      if (/^(umount|fusermount3?)$/.test(path.basename(argv[0])) && argv.includes(mountpoint)) return true;
    }
    return false;
  };
  while ((await running()) && Date.now() < deadlineMs) await delay(50);
}
