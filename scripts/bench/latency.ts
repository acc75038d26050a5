// Baseline 9: throughput under service latency. local-ebs adds a fixed delay to
// every PutSnapshotBlock (--faults latency=Nms) while `ebs-fuse upload` and the
// mount (dd bs=1M conv=fsync, to the completed snapshot) run at several
// --upload-concurrency settings, each on a fresh server; the same runs without
// latency are the reference. Performance goal 4: each reaches
// ≥ 0.8 × min(its own rate without latency, concurrency × 512 KiB / latency).
// Each setting runs `rounds` times, the rounds interleaved so that a noisy
// moment of the machine lands on one sample of several settings rather than on
// every sample of one; the median decides.
import type { Cleanup } from './lib/cleanup';
import { RunningMount, runUpload } from './lib/ebs-fuse';
import { LocalEbs } from './lib/local-ebs';
import { fixed, GIB, megabytesPerSecond, median, MIB } from './lib/stats';

const BLOCK_BYTES = 512 * 1024;
const TIMEOUT_MS = 15 * 60_000;
export const LATENCY_GOAL_RATIO = 0.8;

export interface LatencySettings {
  scratch: string;
  /** A file of exactly dataBytes random bytes. */
  dataFile: string;
  dataBytes: number;
  latenciesMs: number[];
  concurrencies: number[];
  rounds: number;
  log: (line: string) => void;
}

export type LatencyPath = 'upload' | 'mount';

export interface LatencySample {
  path: LatencyPath;
  latencyMs: number;
  concurrency: number;
  /** The median of the rounds. */
  megabytesPerSecond: number;
  roundsMBps: number[];
}

export interface LatencyResult {
  samples: LatencySample[];
}

export async function runLatency(cleanup: Cleanup, settings: LatencySettings): Promise<LatencyResult> {
  const samples: LatencySample[] = [];
  for (const latencyMs of [0, ...settings.latenciesMs]) {
    for (const concurrency of settings.concurrencies) {
      for (const path of ['upload', 'mount'] as const)
        samples.push({ path, latencyMs, concurrency, megabytesPerSecond: 0, roundsMBps: [] });
    }
  }
  for (let round = 1; round <= settings.rounds; round += 1) {
    for (const sample of samples) {
      const { path, latencyMs, concurrency } = sample;
      if (cleanup.interrupted) throw new Error('interrupted');
      const name = `latency-${path}-${latencyMs}-${concurrency}-${round}`;
      const server = await LocalEbs.start(
        cleanup,
        settings.scratch,
        name,
        latencyMs > 0 ? { faults: `latency=${latencyMs}ms,ops=put` } : {},
      );
      const seconds =
        path === 'upload'
          ? await upload(cleanup, settings, server, name, concurrency)
          : await mount(cleanup, settings, server, name, concurrency);
      await server.stop();
      const rate = megabytesPerSecond(settings.dataBytes, seconds);
      sample.roundsMBps.push(rate);
      sample.megabytesPerSecond = median(sample.roundsMBps);
      settings.log(`latency ${latencyMs} ms, ${concurrency} in flight, round ${round}: ${path} ${fixed(rate, 0)} MB/s`);
    }
  }
  return { samples };
}

async function upload(cleanup: Cleanup, settings: LatencySettings, server: LocalEbs, name: string, concurrency: number): Promise<number> {
  const result = await runUpload(cleanup, server, settings.scratch, name, settings.dataFile, ['--upload-concurrency', String(concurrency)]);
  return result.seconds;
}

async function mount(cleanup: Cleanup, settings: LatencySettings, server: LocalEbs, name: string, concurrency: number): Promise<number> {
  const running = await RunningMount.start(cleanup, {
    name,
    scratch: settings.scratch,
    volumeSizeGiB: Math.max(1, Math.ceil(settings.dataBytes / GIB)),
    server,
    extraArgs: ['--upload-concurrency', String(concurrency)],
  });
  const { seconds } = await running.ddThenFinish(cleanup, settings.dataFile, settings.dataBytes, TIMEOUT_MS);
  return seconds;
}

/** Each run under latency against its bound, min(the same path and concurrency without latency, the concurrency bound); goal 4 holds when every share is ≥ 0.8. */
export function latencyShares(
  result: LatencyResult,
): Array<LatencySample & { referenceMBps: number; concurrencyBoundMBps: number; share: number }> {
  return result.samples
    .filter((s) => s.latencyMs > 0)
    .map((s) => {
      const referenceMBps = result.samples.find(
        (r) => r.path === s.path && r.concurrency === s.concurrency && r.latencyMs === 0,
      )!.megabytesPerSecond;
      const concurrencyBoundMBps = (s.concurrency * BLOCK_BYTES) / 1e6 / (s.latencyMs / 1000);
      return { ...s, referenceMBps, concurrencyBoundMBps, share: s.megabytesPerSecond / Math.min(referenceMBps, concurrencyBoundMBps) };
    });
}

export function renderLatency(result: LatencyResult, dataBytes: number): string {
  const rounds = result.samples[0]?.roundsMBps.length ?? 0;
  const runs = latencyShares(result);
  const rows = runs.map(
    (s) =>
      `| ${s.path} | ${s.latencyMs} | ${s.concurrency} | ${fixed(s.megabytesPerSecond, 0)} | ${s.roundsMBps.map((r) => fixed(r, 0)).join(', ')} | ${fixed(s.referenceMBps, 0)} | ${fixed(s.concurrencyBoundMBps, 0)} | ${fixed(s.share, 2)} |`,
  );
  const shares = runs.map((s) => s.share);
  return [
    `## 9. Under service latency: ${dataBytes / MIB} MiB, local-ebs --faults latency=N ms on every PUT, fresh server per run, medians of ${rounds} rounds`,
    '',
    '| path | latency ms | in flight | MB/s | rounds, MB/s | MB/s without latency | concurrency × 512 KiB / latency, MB/s | share of the bound |',
    '|---|---|---|---|---|---|---|---|',
    ...rows,
    '',
    `- Goal: every run ≥ ${LATENCY_GOAL_RATIO} × min(without latency, the concurrency bound): lowest share ${fixed(Math.min(...shares), 2)}, median ${fixed(median(shares), 2)}`,
  ].join('\n');
}
