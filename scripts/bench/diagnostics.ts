// Measurements that explain the main figures rather than compare with them:
//   - SHA-256 in Node on one core, in 512 KiB blocks (what the flusher, the SDK's
//     SigV4 payload hash and local-ebs each pay per block);
//   - local-ebs alone under a load generator: the product's AwsSnapshotClient
//     with N PUTs in flight, distinct blocks read from the data file, no FUSE and
//     no cache in the way. If this is not far above the mount's rate, the server
//     on the same two cores is what limits the end-to-end figures. Run twice:
//     with the client's own signed PutSnapshotBlock and with the SDK's, whose
//     client CPU per GiB says what the signed PUT saves;
//   - a write-size sweep (dd bs=16K, 32K, 64K, and 1M, which FUSE splits into 128 KiB
//     calls) on the C libfuse 2 null file system, fuse-native's no-op handler and
//     the null-client mount: a line fit of time against write calls splits each
//     one's cost into a per-call part and a per-byte part, which says what 1 MiB
//     writes (libfuse 3) would buy;
//   - CPU profiles (node --cpu-prof) of one null-client mount and one real mount
//     of the dd, sorted into hashing, copies, GC, promises, I/O calls and idle;
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { sha256Base64 } from '../../src/ebs/checksum';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { Cleanup } from './lib/cleanup';
import { dd } from './lib/data';
import { mountCeiling } from './lib/ceilings';
import { RunningMount } from './lib/ebs-fuse';
import { summarizeProfile, type ProfileSummary } from './lib/profile';
import { LocalEbs, putsBetween } from './lib/local-ebs';
import type { Rusage } from './lib/proc';
import { megabytesPerSecond } from './lib/stats';

export interface DiagnosticsSettings {
  scratch: string;
  dataFile: string;
  binaries: { nullfs3: string; nullfs2: string };
  /** Bytes of each dd of the write-size sweep. */
  sweepBytes: number;
  /** Bytes of the profiled dd runs. */
  profileBytes: number;
  /** Bytes the load generator sends. */
  loadBytes: number;
  loadConcurrency: number;
  log: (line: string) => void;
}

export interface LoadResult {
  /** Whether PutSnapshotBlock went through the SDK rather than as the client's own signed PUT. */
  putThroughSdk: boolean;
  concurrency: number;
  puts: number;
  seconds: number;
  putsPerSecond: number;
  megabytesPerSecond: number;
  /** The bench process (client side: SDK, signing, hashing) CPU seconds. */
  clientCpuSeconds: number;
  serverRusage: Rusage;
}

export interface ProfiledRun {
  what: string;
  megabytesPerSecond: number;
  profile: ProfileSummary;
}

export interface SweepPoint {
  callBytes: number;
  calls: number;
  seconds: number;
}

export interface SweepLine {
  what: string;
  points: SweepPoint[];
  /** Fitted: seconds = perCallMicroseconds × calls + perGiBSeconds × GiB. */
  perCallMicroseconds: number;
  perGiBSeconds: number;
  /** The fit's prediction with 1 MiB calls. */
  predictedMegabytesPerSecondAt1MiB: number;
  megabytesPerSecondAt128KiB: number;
}

export interface DiagnosticsResult {
  sha256MegabytesPerSecond: number;
  load: LoadResult[];
  sweep: SweepLine[];
  profiles: ProfiledRun[];
}

/** dd block sizes of the sweep and the FUSE write size each becomes (libfuse 2 caps at 128 KiB). */
const SWEEP_DD_BLOCKS: Array<{ ddBytes: number; callBytes: number }> = [
  { ddBytes: 16 * 1024, callBytes: 16 * 1024 },
  { ddBytes: 32 * 1024, callBytes: 32 * 1024 },
  { ddBytes: 64 * 1024, callBytes: 64 * 1024 },
  { ddBytes: 1024 * 1024, callBytes: 128 * 1024 },
];

/** Least squares of seconds on calls; the intercept is the per-byte part for the fixed byte count. */
function fitLine(what: string, points: SweepPoint[], bytes: number): SweepLine {
  const n = points.length;
  const meanCalls = points.reduce((sum, p) => sum + p.calls, 0) / n;
  const meanSeconds = points.reduce((sum, p) => sum + p.seconds, 0) / n;
  let numerator = 0;
  let denominator = 0;
  for (const p of points) {
    numerator += (p.calls - meanCalls) * (p.seconds - meanSeconds);
    denominator += (p.calls - meanCalls) ** 2;
  }
  const perCallSeconds = numerator / denominator;
  const fixedSeconds = meanSeconds - perCallSeconds * meanCalls;
  const gib = bytes / 2 ** 30;
  const at1MiB = perCallSeconds * (bytes / 1048576) + fixedSeconds;
  const at128KiB = points.find((p) => p.callBytes === 131072)?.seconds ?? Number.NaN;
  return {
    what,
    points,
    perCallMicroseconds: perCallSeconds * 1e6,
    perGiBSeconds: fixedSeconds / gib,
    predictedMegabytesPerSecondAt1MiB: megabytesPerSecond(bytes, at1MiB),
    megabytesPerSecondAt128KiB: megabytesPerSecond(bytes, at128KiB),
  };
}

async function sweepWriteSizes(cleanup: Cleanup, settings: DiagnosticsSettings): Promise<SweepLine[]> {
  const bytes = settings.sweepBytes;
  const ddInto = async (output: string, ddBytes: number, conv: string): Promise<number> =>
    dd(cleanup, {
      input: settings.dataFile,
      output,
      blockSizeBytes: ddBytes,
      count: Math.ceil(bytes / ddBytes),
      conv,
      timeoutMs: 10 * 60_000,
    });
  const lines: SweepLine[] = [];
  for (const kind of ['nullfs2', 'noop-raw'] as const) {
    const mount = await mountCeiling(cleanup, kind, settings.scratch, settings.binaries);
    const points: SweepPoint[] = [];
    for (const { ddBytes, callBytes } of SWEEP_DD_BLOCKS) {
      points.push({ callBytes, calls: bytes / callBytes, seconds: await ddInto(mount.filePath, ddBytes, 'fsync,notrunc') });
    }
    await mount.stop();
    lines.push(fitLine(kind === 'nullfs2' ? 'C libfuse 2 null file system' : 'fuse-native no-op handler', points, bytes));
  }
  const points: SweepPoint[] = [];
  for (const { ddBytes, callBytes } of SWEEP_DD_BLOCKS) {
    const mount = await RunningMount.start(cleanup, {
      name: `sweep-${ddBytes}`,
      scratch: settings.scratch,
      volumeSizeGiB: Math.max(1, Math.ceil(bytes / 2 ** 30)),
      nullClientVerifies: false,
    });
    const seconds = await ddInto(mount.filePath, ddBytes, 'fsync');
    await mount.finish();
    points.push({ callBytes, calls: bytes / callBytes, seconds });
  }
  lines.push(fitLine('null-client mount, client not hashing (2n), dd alone', points, bytes));
  return lines;
}

async function profiledMount(cleanup: Cleanup, settings: DiagnosticsSettings, real: boolean): Promise<ProfiledRun> {
  const name = real ? 'profile-mount' : 'profile-null';
  const directory = path.join(settings.scratch, `${name}-cpuprofile`);
  await mkdir(directory, { recursive: true });
  const server = real ? await LocalEbs.start(cleanup, settings.scratch, name) : undefined;
  const mount = await RunningMount.start(cleanup, {
    name,
    scratch: settings.scratch,
    volumeSizeGiB: Math.max(1, Math.ceil(settings.profileBytes / 2 ** 30)),
    server,
    nodeFlags: ['--cpu-prof', `--cpu-prof-dir=${directory}`],
  });
  const startNs = process.hrtime.bigint();
  await dd(cleanup, {
    input: settings.dataFile,
    output: mount.filePath,
    blockSizeBytes: 1024 * 1024,
    count: Math.ceil(settings.profileBytes / (1024 * 1024)),
    conv: 'fsync',
    timeoutMs: 10 * 60_000,
  });
  const finished = await mount.finish();
  if (server) await server.stop();
  return {
    what: real ? 'ebs-fuse mount → local-ebs' : 'null-client mount',
    megabytesPerSecond: megabytesPerSecond(settings.profileBytes, Number(finished.endedAtNs - startNs) / 1e9),
    profile: await summarizeProfile(directory),
  };
}

export function measureSha256(totalBytes: number): number {
  const block = Buffer.alloc(BLOCK_SIZE_BYTES, 0xa5);
  const blocks = Math.max(1, Math.floor(totalBytes / BLOCK_SIZE_BYTES));
  const startNs = process.hrtime.bigint();
  for (let i = 0; i < blocks; i += 1) createHash('sha256').update(block).digest();
  return megabytesPerSecond(blocks * BLOCK_SIZE_BYTES, Number(process.hrtime.bigint() - startNs) / 1e9);
}

export async function runLoadGenerator(cleanup: Cleanup, settings: DiagnosticsSettings, putThroughSdk: boolean): Promise<LoadResult> {
  const server = await LocalEbs.start(cleanup, settings.scratch, putThroughSdk ? 'loadgen-sdk' : 'loadgen');
  const client = server.client(settings.loadConcurrency, { putThroughSdk });
  const input = await open(settings.dataFile, 'r');
  try {
    const blockCount = Math.floor(settings.loadBytes / BLOCK_SIZE_BYTES);
    const { snapshotId } = await client.startSnapshot({ volumeSizeGiB: Math.max(1, Math.ceil(settings.loadBytes / 2 ** 30)) });
    const before = await server.stats();
    let next = 0;
    const cpuBefore = process.cpuUsage();
    const startNs = process.hrtime.bigint();
    const worker = async (): Promise<void> => {
      for (;;) {
        const blockIndex = next;
        next += 1;
        if (blockIndex >= blockCount) return;
        const data = Buffer.alloc(BLOCK_SIZE_BYTES);
        await input.read(data, 0, BLOCK_SIZE_BYTES, blockIndex * BLOCK_SIZE_BYTES);
        await client.putSnapshotBlock({ snapshotId, blockIndex, data, checksumBase64: sha256Base64(data) });
      }
    };
    await Promise.all(Array.from({ length: settings.loadConcurrency }, worker));
    const seconds = Number(process.hrtime.bigint() - startNs) / 1e9;
    const cpu = process.cpuUsage(cpuBefore);
    const puts = putsBetween(before, await server.stats());
    client.close();
    const serverRusage = await server.stop();
    return {
      putThroughSdk,
      concurrency: settings.loadConcurrency,
      puts,
      seconds,
      putsPerSecond: puts / seconds,
      megabytesPerSecond: megabytesPerSecond(blockCount * BLOCK_SIZE_BYTES, seconds),
      clientCpuSeconds: (cpu.user + cpu.system) / 1e6,
      serverRusage,
    };
  } finally {
    await input.close();
    client.close();
  }
}

export async function runDiagnostics(cleanup: Cleanup, settings: DiagnosticsSettings): Promise<DiagnosticsResult> {
  const sha256MegabytesPerSecond = measureSha256(1024 * 1024 * 1024);
  settings.log(`diagnostics: SHA-256 ${sha256MegabytesPerSecond.toFixed(0)} MB/s on one core`);
  const load: LoadResult[] = [];
  for (const putThroughSdk of [false, true]) {
    const result = await runLoadGenerator(cleanup, settings, putThroughSdk);
    settings.log(
      `diagnostics: local-ebs alone, PUTs ${putThroughSdk ? 'through the SDK' : 'signed by the client'}: ${result.putsPerSecond.toFixed(0)} PUT/s (${result.megabytesPerSecond.toFixed(0)} MB/s) at ${result.concurrency} in flight`,
    );
    load.push(result);
  }
  const sweep = await sweepWriteSizes(cleanup, settings);
  for (const line of sweep) {
    settings.log(
      `diagnostics: ${line.what}: ${line.perCallMicroseconds.toFixed(0)} µs per write call + ${line.perGiBSeconds.toFixed(2)} s per GiB`,
    );
  }
  const profiles: ProfiledRun[] = [];
  for (const real of [false, true]) {
    const run = await profiledMount(cleanup, settings, real);
    settings.log(`diagnostics: profiled ${run.what}: ${run.megabytesPerSecond.toFixed(0)} MB/s`);
    profiles.push(run);
  }
  return { sha256MegabytesPerSecond, load, sweep, profiles };
}
