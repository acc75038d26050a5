// Baseline 10: PUTs per distinct block under random writes, against --cache-size.
// fio writes 64 KiB blocks in random order over the first BENCH_RANDOM_MIB of a
// mounted file, with one job and with five (each job covers the whole range
// once, so five write every byte five times); then the mount completes. PUTs
// are counted at local-ebs, distinct blocks by ListSnapshotBlocks. Goal 7 of the
// performance goals: ≤ 1.5 PUTs per block whenever the data fits in the cache.
// Settings where the data fits run `fittingRounds` times, and the goal takes
// their medians: with several jobs the count depends on timing (while every
// close was an fsync, 608 to 927 PUTs at one setting), so one run is one draw.
import type { Cleanup } from './lib/cleanup';
import { RunningMount } from './lib/ebs-fuse';
import { LocalEbs, putsBetween } from './lib/local-ebs';
import { run } from './lib/proc';
import { fixed, GIB, max, median, MIB, min } from './lib/stats';

const FIO_TIMEOUT_MS = 15 * 60_000;
export const RANDOM_GOAL_PUTS_PER_BLOCK = 1.5;

export interface RandomSettings {
  scratch: string;
  rangeBytes: number;
  cacheSizesMiB: number[];
  jobCounts: number[];
  /** Runs of each setting where the data fits in the cache; the others run once. */
  fittingRounds: number;
  log: (line: string) => void;
}

export interface RandomSample {
  cacheSizeMiB: number;
  jobs: number;
  /** The median of the rounds. */
  puts: number;
  /** Every round's count, in run order. */
  putsPerRound: number[];
  distinctBlocks: number;
  /** The median of the rounds. */
  fioSeconds: number;
}

interface RandomRound {
  puts: number;
  distinctBlocks: number;
  fioSeconds: number;
}

export interface RandomResult {
  rangeBytes: number;
  samples: RandomSample[];
}

export async function runRandomWrites(cleanup: Cleanup, settings: RandomSettings): Promise<RandomResult> {
  const samples: RandomSample[] = [];
  for (const jobs of settings.jobCounts) {
    for (const cacheSizeMiB of settings.cacheSizesMiB) {
      const rounds = cacheSizeMiB * MIB >= settings.rangeBytes ? settings.fittingRounds : 1;
      const results: RandomRound[] = [];
      for (let round = 1; round <= rounds; round += 1) results.push(await runRound(cleanup, settings, jobs, cacheSizeMiB, round));
      const sample: RandomSample = {
        cacheSizeMiB,
        jobs,
        puts: median(results.map((r) => r.puts)),
        putsPerRound: results.map((r) => r.puts),
        distinctBlocks: median(results.map((r) => r.distinctBlocks)),
        fioSeconds: median(results.map((r) => r.fioSeconds)),
      };
      settings.log(
        `random writes, ${jobs} job(s), cache ${cacheSizeMiB} MiB: ${sample.putsPerRound.join(', ')} PUTs for ${sample.distinctBlocks} blocks`,
      );
      samples.push(sample);
    }
  }
  return { rangeBytes: settings.rangeBytes, samples };
}

async function runRound(
  cleanup: Cleanup,
  settings: RandomSettings,
  jobs: number,
  cacheSizeMiB: number,
  round: number,
): Promise<RandomRound> {
  if (cleanup.interrupted) throw new Error('interrupted');
  const name = `random-${jobs}-${cacheSizeMiB}-${round}`;
  const server = await LocalEbs.start(cleanup, settings.scratch, name);
  const mount = await RunningMount.start(cleanup, {
    name,
    scratch: settings.scratch,
    volumeSizeGiB: Math.max(1, Math.ceil(settings.rangeBytes / GIB)),
    server,
    cacheSize: `${cacheSizeMiB}MiB`,
  });
  const before = await server.stats();
  const startNs = process.hrtime.bigint();
  await run(
    cleanup,
    'fio',
    [
      '--name=random',
      `--filename=${mount.filePath}`,
      '--rw=randwrite',
      '--bs=64k',
      `--size=${settings.rangeBytes / MIB}M`,
      `--numjobs=${jobs}`,
      '--ioengine=psync',
      '--randseed=7',
      '--output-format=terse',
    ],
    { timeoutMs: FIO_TIMEOUT_MS },
  );
  const fioSeconds = Number(process.hrtime.bigint() - startNs) / 1e9;
  const finished = await mount.finish();
  const result: RandomRound = {
    puts: putsBetween(before, await server.stats()),
    distinctBlocks: await server.countSnapshotBlocks(finished.snapshotId),
    fioSeconds,
  };
  await server.stop();
  return result;
}

/** The runs whose data fits in the cache, where goal 7 applies. */
export function fittingSamples(result: RandomResult): RandomSample[] {
  return result.samples.filter((s) => s.cacheSizeMiB * MIB >= result.rangeBytes);
}

export function renderRandomWrites(result: RandomResult): string {
  const rows = result.samples.map(
    (s) =>
      `| ${s.jobs} | ${s.cacheSizeMiB} | ${s.cacheSizeMiB * MIB >= result.rangeBytes ? 'yes' : 'no'} | ${s.puts} | ${putsSpread(s)} | ${s.distinctBlocks} | ${fixed(s.puts / s.distinctBlocks, 2)} | ${fixed(s.fioSeconds, 1)} |`,
  );
  const fitting = fittingSamples(result);
  const worst = fitting.length > 0 ? Math.max(...fitting.map((s) => s.puts / s.distinctBlocks)) : undefined;
  return [
    `## 10. Random writes: fio 64 KiB randwrite over ${result.rangeBytes / MIB} MiB (each job covers it once), PUTs per distinct block against --cache-size`,
    '',
    '| fio jobs | --cache-size MiB | data fits | PUTs (median) | rounds: min–max of n | blocks in the snapshot | PUTs / block | fio s |',
    '|---|---|---|---|---|---|---|---|',
    ...rows,
    '',
    worst === undefined
      ? '- Goal 7 not judged: no cache size given holds the data'
      : `- Goal: ≤ ${RANDOM_GOAL_PUTS_PER_BLOCK} PUTs per block where the data fits (median of each setting's rounds): worst ${fixed(worst, 2)}`,
  ].join('\n');
}

function putsSpread(sample: RandomSample): string {
  const counts = sample.putsPerRound;
  return counts.length === 1 ? '1 round' : `${min(counts)}–${max(counts)} of ${counts.length}`;
}
