// Baseline 7: what the local copy costs. For a sequential dd and for the ext4
// workload of baseline 5, with the default --disk-cache-size (auto: on this
// machine's disk it keeps a copy of every block, as the read-back store of
// earlier versions did) and with 0 (no copy at all), paired in each round:
// - bytes the mount wrote to its state directory per GiB written through it
//   (its own closing `local disk:` line: block copies plus journal);
// - end-to-end MB/s of the dd, from its start to the completed snapshot.
import path from 'node:path';
import type { Cleanup } from './lib/cleanup';
import { RunningMount } from './lib/ebs-fuse';
import { LocalEbs } from './lib/local-ebs';
import { GIB, MIB } from './lib/stats';
import { fileSystemWorkload, makeTree } from './ext4';

export const BUDGETS = ['auto', '0'] as const;
export type Budget = (typeof BUDGETS)[number];
/** The goal: with budget 0, a sequential dd writes at most this much to local disk per GiB. */
export const SEQUENTIAL_BUDGET_ZERO_MAX_BYTES_PER_GIB = 64 * MIB;

export interface LocalCopySettings {
  scratch: string;
  dataFile: string;
  dataBytes: number;
  rounds: number;
  ext4Files: number;
  ext4FileSizeMaxBytes: number;
  ext4VolumeGiB: number;
  log: (line: string) => void;
}

export interface LocalDiskSample {
  /** MB/s from the start of the workload to the completed snapshot (dd only). */
  megabytesPerSecond?: number;
  bytesThroughMount: number;
  copyBytes: number;
  journalBytes: number;
}

export interface LocalCopyResult {
  rounds: Array<Record<'dd' | 'ext4', Record<Budget, LocalDiskSample>>>;
}

export async function runLocalCopy(cleanup: Cleanup, settings: LocalCopySettings): Promise<LocalCopyResult> {
  const treeRoot = path.join(settings.scratch, 'local-copy-tree');
  await makeTree(treeRoot, settings.ext4Files, settings.ext4FileSizeMaxBytes);
  const rounds: LocalCopyResult['rounds'] = [];
  for (let round = 1; round <= settings.rounds; round += 1) {
    if (cleanup.interrupted) throw new Error('interrupted');
    const ddSamples = {} as Record<Budget, LocalDiskSample>;
    const ext4Samples = {} as Record<Budget, LocalDiskSample>;
    for (const budget of BUDGETS) {
      ddSamples[budget] = await sequential(cleanup, settings, `lc-dd-${budget}-${round}`, budget);
      settings.log(
        `local copy round ${round}: dd, --disk-cache-size ${budget}: ${ddSamples[budget].megabytesPerSecond!.toFixed(0)} MB/s, ${perGiB(ddSamples[budget]).toFixed(1)} MiB to local disk per GiB`,
      );
      ext4Samples[budget] = await fileSystem(cleanup, settings, `lc-ext4-${budget}-${round}`, budget, treeRoot);
      settings.log(
        `local copy round ${round}: ext4 + cp, --disk-cache-size ${budget}: ${perGiB(ext4Samples[budget]).toFixed(1)} MiB to local disk per GiB`,
      );
    }
    rounds.push({ dd: ddSamples, ext4: ext4Samples });
  }
  return { rounds };
}

/** MiB written to the state directory per GiB written through the mount. */
export function perGiB(sample: LocalDiskSample): number {
  return (sample.copyBytes + sample.journalBytes) / MIB / (sample.bytesThroughMount / GIB);
}

async function sequential(cleanup: Cleanup, settings: LocalCopySettings, name: string, budget: Budget): Promise<LocalDiskSample> {
  const server = await LocalEbs.start(cleanup, settings.scratch, name);
  const mount = await RunningMount.start(cleanup, {
    name,
    scratch: settings.scratch,
    volumeSizeGiB: Math.max(1, Math.ceil(settings.dataBytes / GIB)),
    server,
    extraArgs: ['--disk-cache-size', budget],
  });
  const { finished, seconds } = await mount.ddThenFinish(cleanup, settings.dataFile, settings.dataBytes, 10 * 60_000);
  await server.stop();
  return { ...localDisk(finished.stderr), megabytesPerSecond: settings.dataBytes / 1e6 / seconds };
}

async function fileSystem(
  cleanup: Cleanup,
  settings: LocalCopySettings,
  name: string,
  budget: Budget,
  treeRoot: string,
): Promise<LocalDiskSample> {
  const server = await LocalEbs.start(cleanup, settings.scratch, name);
  const mount = await RunningMount.start(cleanup, {
    name,
    scratch: settings.scratch,
    volumeSizeGiB: settings.ext4VolumeGiB,
    server,
    extraArgs: ['--disk-cache-size', budget],
  });
  await fileSystemWorkload(cleanup, mount.filePath, path.join(settings.scratch, `inner-${name}`), treeRoot);
  const finished = await mount.finish();
  await server.stop();
  return localDisk(finished.stderr);
}

/** The mount's closing `local disk:` line. */
function localDisk(stderr: string): Omit<LocalDiskSample, 'megabytesPerSecond'> {
  const match =
    /local disk: [\d.]+ MiB written to the state directory \(block copies ([\d.]+) MiB in \d+ writes, journal ([\d.]+) MiB\) for ([\d.]+) MiB written through the mount/.exec(
      stderr,
    );
  if (!match) throw new Error(`the mount printed no local disk line: ${stderr.slice(-500)}`);
  return { copyBytes: Number(match[1]) * MIB, journalBytes: Number(match[2]) * MIB, bytesThroughMount: Number(match[3]) * MIB };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** The table and the verdicts of baseline 7, as printed after the main report. */
export function renderLocalCopy(result: LocalCopyResult): string {
  const lines = [
    '## 7. The local copy (--disk-cache-size), medians of paired rounds',
    '',
    '| workload | budget | MiB to local disk per GiB through the mount | MB/s end to end |',
    '|---|---|---|---|',
  ];
  for (const workload of ['dd', 'ext4'] as const) {
    for (const budget of BUDGETS) {
      const samples = result.rounds.map((round) => round[workload][budget]);
      const rate = workload === 'dd' ? median(samples.map((sample) => sample.megabytesPerSecond!)).toFixed(0) : '-';
      lines.push(
        `| ${workload === 'dd' ? 'sequential dd bs=1M' : 'mkfs.ext4 + cp -a'} | ${budget} | ${median(samples.map(perGiB)).toFixed(1)} | ${rate} |`,
      );
    }
  }
  const zeroPerGiB = median(result.rounds.map((round) => perGiB(round.dd['0'])));
  const ratios = result.rounds.map((round) => round.dd['0'].megabytesPerSecond! / round.dd.auto.megabytesPerSecond!);
  lines.push(
    '',
    `- Goal: with budget 0 a sequential dd writes at most ${SEQUENTIAL_BUDGET_ZERO_MAX_BYTES_PER_GIB / MIB} MiB per GiB to local disk: ` +
      `${zeroPerGiB.toFixed(1)} MiB: ${zeroPerGiB <= SEQUENTIAL_BUDGET_ZERO_MAX_BYTES_PER_GIB / MIB ? 'MET' : 'NOT MET'}`,
    `- Throughput with budget 0 / with a copy of every block (auto on this disk), paired per round: ` +
      `${ratios.map((ratio) => ratio.toFixed(2)).join(', ')} (median ${median(ratios).toFixed(2)})`,
  );
  return lines.join('\n');
}
