// Turns the measurements into the printed tables and the verdict on each target
// (docs/BENCHMARKS.md). Every ratio is computed here from the figures of this run.
import type { DiagnosticsResult } from './diagnostics';
import type { Ext4Result } from './ext4';
import type { Rusage } from './lib/proc';
import { fixed, GIB, max, median, MIB, min } from './lib/stats';
import type { SparseResult } from './sparse';
import type { ThroughputResult, ThroughputRound } from './throughput';

export interface Machine {
  cpus: number;
  cpuModel: string;
  memoryGiB: number;
  kernel: string;
  node: string;
  libfuse2: string;
  libfuse3: string;
  loadBefore: number[];
  loadAfter?: number[];
  startedAt: string;
  elapsedSeconds?: number;
}

export interface Settings {
  dataBytes: number;
  rounds: number;
  cacheSizeBytes: number;
  ext4Files: number;
  ext4FileSizeMaxBytes: number;
  ext4VolumeGiB: number;
  ext4Rounds: number;
  sparseBytes: number;
  sparseVolumesGiB: [number, number];
  sparseRounds: number;
  loadBytes: number;
  loadConcurrency: number;
  localCopyBytes: number;
  localCopyRounds: number;
  peerBytes: number;
  peerRounds: number;
  latencyBytes: number;
  latenciesMs: number[];
  latencyConcurrencies: number[];
  latencyRounds: number;
  randomBytes: number;
  randomCacheSizesMiB: number[];
  randomJobCounts: number[];
  randomFittingRounds: number;
}

export interface Results {
  machine: Machine;
  settings: Settings;
  nonZeroBlocks: number;
  sparseNonZeroBlocks: number;
  uploadAvailable: boolean;
  throughput?: ThroughputResult;
  ext4?: Ext4Result;
  sparse?: SparseResult;
  diagnostics?: DiagnosticsResult;
}

interface Target {
  name: string;
  measured: string;
  met: boolean | undefined;
}

const RSS_HEADROOM_BYTES = 150 * MIB;

export function table(header: string[], rows: string[][]): string {
  const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`];
  for (const row of rows) lines.push(`| ${row.join(' | ')} |`);
  return lines.join('\n');
}

function spread(values: number[], digits: number): string {
  return values.length > 1 ? `${fixed(min(values), digits)}–${fixed(max(values), digits)}` : '';
}

export function cpuSeconds(usage: Rusage): number {
  return usage.userCpuSeconds + usage.systemCpuSeconds;
}

function mib(bytes: number): string {
  return fixed(bytes / MIB, 0);
}

function signed(value: number): string {
  return `${value >= 0 ? '+' : '−'}${fixed(Math.abs(value), 0)}`;
}

function signedSeconds(value: number): string {
  return `${value >= 0 ? '+' : '−'}${fixed(Math.abs(value), 2)} s`;
}

export function verdict(met: boolean | undefined): string {
  if (met === undefined) return 'not measured';
  return met ? 'met' : 'NOT met';
}

/** Median of a per-round ratio, and its range. */
export function pairedRatio(
  rounds: ThroughputRound[],
  numerator: (round: ThroughputRound) => number | undefined,
  denominator: (round: ThroughputRound) => number | undefined,
): number[] {
  const ratios: number[] = [];
  for (const round of rounds) {
    const top = numerator(round);
    const bottom = denominator(round);
    if (top !== undefined && bottom !== undefined) ratios.push(top / bottom);
  }
  return ratios;
}

export function renderReport(results: Results): string {
  const { machine, settings } = results;
  const sections: string[] = [];
  const targets: Target[] = [];
  const rssLimitBytes = settings.cacheSizeBytes + RSS_HEADROOM_BYTES;
  const peakRss: Array<{ what: string; bytes: number }> = [];

  sections.push(
    [
      `Machine: ${machine.cpus} × ${machine.cpuModel}, ${fixed(machine.memoryGiB, 1)} GiB RAM, Linux ${machine.kernel}, Node ${machine.node}, libfuse ${machine.libfuse2} and ${machine.libfuse3}.`,
      `Load average (1, 5, 15 min) at the start: ${machine.loadBefore.map((v) => v.toFixed(2)).join(', ')}` +
        (machine.loadAfter ? `; at the end: ${machine.loadAfter.map((v) => v.toFixed(2)).join(', ')}` : '') +
        (machine.elapsedSeconds !== undefined ? `. The whole run took ${fixed(machine.elapsedSeconds / 60, 1)} min.` : '.'),
      `MB/s is 10^6 bytes per second, as dd prints it; every dd is \`dd bs=1M conv=fsync\` reading a random file from the page cache.`,
    ].join('\n'),
  );

  const throughput = results.throughput;
  if (throughput) {
    const rounds = throughput.rounds;
    const n = rounds.length;
    const dataGiB = settings.dataBytes / GIB;
    const rate = (values: number[]): string[] => [fixed(median(values), 0), spread(values, 0)];
    const ceiling = (kind: keyof ThroughputRound['ceilings']): number[] => rounds.map((round) => round.ceilings[kind].megabytesPerSecond);
    const nullMount = rounds.map((round) => round.nullMount);
    const mount = rounds.map((round) => round.mount);
    const uploads = rounds.flatMap((round) => (round.upload ? [round.upload] : []));
    const rows: string[][] = [
      [
        '1a',
        'C null file system, libfuse 3, 1 MiB writes',
        ...rate(ceiling('nullfs3')),
        `largest write ${throughput.largestWriteBytes.nullfs3} B`,
      ],
      [
        '1b',
        'C null file system, libfuse 2, big_writes',
        ...rate(ceiling('nullfs2')),
        `largest write ${throughput.largestWriteBytes.nullfs2} B`,
      ],
      [
        '1c',
        'fuse-native, no-op write handler',
        ...rate(ceiling('noop-raw')),
        `largest write ${throughput.largestWriteBytes['noop-raw']} B`,
      ],
      [
        '1d',
        'src/fuse adapter (FuseMount) over a no-op file',
        ...rate(ceiling('noop-adapter')),
        `largest write ${throughput.largestWriteBytes['noop-adapter']} B`,
      ],
      [
        '2',
        'mount, null snapshot client: dd start → completed',
        ...rate(nullMount.map((s) => s.megabytesPerSecond)),
        `dd alone ${fixed(median(nullMount.map((s) => settings.dataBytes / s.ddSeconds / 1e6)), 0)} MB/s; unmount → completed ${fixed(median(nullMount.map((s) => s.finishSeconds)), 2)} s`,
      ],
      [
        '2n',
        'the same, client acknowledging without hashing (as the AWS client now sends)',
        ...rate(rounds.map((round) => round.nullMountNoVerify.megabytesPerSecond)),
        `dd alone ${fixed(median(rounds.map((round) => settings.dataBytes / round.nullMountNoVerify.ddSeconds / 1e6)), 0)} MB/s`,
      ],
      ...(rounds.some((round) => round.nullMountTmpfs)
        ? [
            [
              '2t',
              'the same, state directory on tmpfs (diagnostic: no disk)',
              ...rate(rounds.flatMap((round) => (round.nullMountTmpfs ? [round.nullMountTmpfs.megabytesPerSecond] : []))),
              `dd alone ${fixed(median(rounds.flatMap((round) => (round.nullMountTmpfs ? [settings.dataBytes / round.nullMountTmpfs.ddSeconds / 1e6] : []))), 0)} MB/s`,
            ],
          ]
        : []),
      [
        '3',
        'mount → local-ebs: dd start → completed',
        ...rate(mount.map((s) => s.megabytesPerSecond)),
        `dd alone ${fixed(median(mount.map((s) => settings.dataBytes / s.ddSeconds / 1e6)), 0)} MB/s; unmount → completed ${fixed(median(mount.map((s) => s.finishSeconds)), 2)} s; mount start ${fixed(median(mount.map((s) => s.startSeconds)), 2)} s (not in the figure)`,
      ],
      uploads.length > 0
        ? [
            '4',
            '`ebs-fuse upload` → local-ebs: start → exit',
            ...rate(uploads.map((s) => s.megabytesPerSecond)),
            `${fixed(median(uploads.map((s) => s.seconds)), 2)} s`,
          ]
        : ['4', '`ebs-fuse upload`', 'n/a', '', 'not in this checkout'],
    ];
    sections.push(
      `### Throughput: ${fixed(dataGiB, 2)} GiB, medians of ${n} rounds\n\n${table(['#', 'what', 'MB/s', 'min–max', 'notes'], rows)}`,
    );

    const ratioRows: string[][] = [];
    const addRatio = (name: string, ratios: number[]): void => {
      ratioRows.push([name, fixed(median(ratios), 3), spread(ratios, 3)]);
    };
    const r3over4 = pairedRatio(
      rounds,
      (r) => r.mount.megabytesPerSecond,
      (r) => r.upload?.megabytesPerSecond,
    );
    const r2over1a = pairedRatio(
      rounds,
      (r) => r.nullMount.megabytesPerSecond,
      (r) => r.ceilings.nullfs3.megabytesPerSecond,
    );
    const r2over1b = pairedRatio(
      rounds,
      (r) => r.nullMount.megabytesPerSecond,
      (r) => r.ceilings.nullfs2.megabytesPerSecond,
    );
    if (r3over4.length > 0) addRatio('3 / 4: mount end to end / upload', r3over4);
    addRatio('2 / 1a: null-client mount / C libfuse 3', r2over1a);
    addRatio('2 / 1b: null-client mount / C libfuse 2 big_writes', r2over1b);
    addRatio(
      '2 / 1c: null-client mount / fuse-native no-op',
      pairedRatio(
        rounds,
        (r) => r.nullMount.megabytesPerSecond,
        (r) => r.ceilings['noop-raw'].megabytesPerSecond,
      ),
    );
    addRatio(
      '1c / 1b: fuse-native no-op / C libfuse 2 big_writes',
      pairedRatio(
        rounds,
        (r) => r.ceilings['noop-raw'].megabytesPerSecond,
        (r) => r.ceilings.nullfs2.megabytesPerSecond,
      ),
    );
    addRatio(
      '1c / 1a: fuse-native no-op / C libfuse 3',
      pairedRatio(
        rounds,
        (r) => r.ceilings['noop-raw'].megabytesPerSecond,
        (r) => r.ceilings.nullfs3.megabytesPerSecond,
      ),
    );
    addRatio(
      '1d / 1c: src/fuse adapter / fuse-native no-op',
      pairedRatio(
        rounds,
        (r) => r.ceilings['noop-adapter'].megabytesPerSecond,
        (r) => r.ceilings['noop-raw'].megabytesPerSecond,
      ),
    );
    const r2nOver1b = pairedRatio(
      rounds,
      (r) => r.nullMountNoVerify.megabytesPerSecond,
      (r) => r.ceilings.nullfs2.megabytesPerSecond,
    );
    const r2nOver1a = pairedRatio(
      rounds,
      (r) => r.nullMountNoVerify.megabytesPerSecond,
      (r) => r.ceilings.nullfs3.megabytesPerSecond,
    );
    addRatio(
      '2n / 2: client not hashing / hashing',
      pairedRatio(
        rounds,
        (r) => r.nullMountNoVerify.megabytesPerSecond,
        (r) => r.nullMount.megabytesPerSecond,
      ),
    );
    addRatio('2n / 1b: null-client mount, client not hashing / C libfuse 2 big_writes', r2nOver1b);
    addRatio('2n / 1a: null-client mount, client not hashing / C libfuse 3', r2nOver1a);
    if (rounds.some((round) => round.nullMountTmpfs)) {
      addRatio(
        '2t / 2: state on tmpfs / state on disk',
        pairedRatio(
          rounds,
          (r) => r.nullMountTmpfs?.megabytesPerSecond,
          (r) => r.nullMount.megabytesPerSecond,
        ),
      );
      addRatio(
        '2t / 1b: null-client mount, state on tmpfs / C libfuse 2 big_writes',
        pairedRatio(
          rounds,
          (r) => r.nullMountTmpfs?.megabytesPerSecond,
          (r) => r.ceilings.nullfs2.megabytesPerSecond,
        ),
      );
    }
    addRatio(
      '3 / 2: mount end to end / null-client mount',
      pairedRatio(
        rounds,
        (r) => r.mount.megabytesPerSecond,
        (r) => r.nullMount.megabytesPerSecond,
      ),
    );
    sections.push(
      `### Ratios, paired round by round (median of ${n} per-round ratios)\n\n${table(['ratio', 'median', 'min–max'], ratioRows)}`,
    );

    // How much of the machine each variant kept busy: near 100% means this machine's CPUs are the limit.
    const cpuRows: string[][] = [];
    const addCpu = (name: string, samples: Array<{ machine: { busySeconds: number; iowaitSeconds: number }; seconds: number }>): void => {
      if (samples.length === 0) return;
      cpuRows.push([
        name,
        fixed(median(samples.map((s) => (s.machine.busySeconds / s.seconds / machine.cpus) * 100)), 0),
        fixed(median(samples.map((s) => s.machine.busySeconds / dataGiB)), 2),
        fixed(median(samples.map((s) => (s.machine.iowaitSeconds / s.seconds / machine.cpus) * 100)), 0),
      ]);
    };
    addCpu(
      '1a C libfuse 3',
      rounds.map((r) => r.ceilings.nullfs3),
    );
    addCpu(
      '1b C libfuse 2, big_writes',
      rounds.map((r) => r.ceilings.nullfs2),
    );
    addCpu(
      '1c fuse-native no-op',
      rounds.map((r) => r.ceilings['noop-raw']),
    );
    addCpu(
      '1d src/fuse adapter, no-op file',
      rounds.map((r) => r.ceilings['noop-adapter']),
    );
    addCpu(
      '2 null-client mount',
      nullMount.map((s) => ({ machine: s.machine, seconds: s.totalSeconds })),
    );
    addCpu(
      '2n null-client mount, client not hashing',
      rounds.map((r) => ({ machine: r.nullMountNoVerify.machine, seconds: r.nullMountNoVerify.totalSeconds })),
    );
    addCpu(
      '2t null-client mount, state on tmpfs',
      rounds.flatMap((r) => (r.nullMountTmpfs ? [{ machine: r.nullMountTmpfs.machine, seconds: r.nullMountTmpfs.totalSeconds }] : [])),
    );
    addCpu(
      '3 mount → local-ebs',
      mount.map((s) => ({ machine: s.machine, seconds: s.totalSeconds })),
    );
    addCpu(
      '4 upload → local-ebs',
      uploads.map((s) => ({ machine: s.machine, seconds: s.seconds })),
    );
    sections.push(
      `### The whole machine's CPU during each variant (/proc/stat; every process, including anything else running)\n\n` +
        table(['variant', `busy % of ${machine.cpus} CPUs`, 'busy CPU s per GiB', 'iowait %'], cpuRows),
    );

    // Where the time of one write call goes: each layer's median dd time per call, minus the layer below.
    const perCallMicroseconds = (seconds: number[], callBytes: number): number =>
      (median(seconds) / (settings.dataBytes / callBytes)) * 1e6;
    const smallCall = 131072;
    const c1a = perCallMicroseconds(
      rounds.map((r) => r.ceilings.nullfs3.seconds),
      1048576,
    );
    const c1b = perCallMicroseconds(
      rounds.map((r) => r.ceilings.nullfs2.seconds),
      smallCall,
    );
    const c1c = perCallMicroseconds(
      rounds.map((r) => r.ceilings['noop-raw'].seconds),
      smallCall,
    );
    const c1d = perCallMicroseconds(
      rounds.map((r) => r.ceilings['noop-adapter'].seconds),
      smallCall,
    );
    const c2 = perCallMicroseconds(
      nullMount.map((s) => s.ddSeconds),
      smallCall,
    );
    const c2n = perCallMicroseconds(
      rounds.map((r) => r.nullMountNoVerify.ddSeconds),
      smallCall,
    );
    const tmpfsRuns = rounds.flatMap((r) => (r.nullMountTmpfs ? [r.nullMountTmpfs.ddSeconds] : []));
    const c2t = tmpfsRuns.length > 0 ? perCallMicroseconds(tmpfsRuns, smallCall) : Number.NaN;
    const c3 = perCallMicroseconds(
      mount.map((s) => s.ddSeconds),
      smallCall,
    );
    const callRows: string[][] = [
      ['1a C libfuse 3 (per 1 MiB call)', fixed(c1a, 0), ''],
      ['1b C libfuse 2, big_writes', fixed(c1b, 0), 'kernel + libfuse'],
      ['1c fuse-native no-op', fixed(c1c, 0), `${signed(c1c - c1b)} vs 1b: fuse-native's hand-off from the FUSE thread to JS and back`],
      ['1d src/fuse adapter, no-op file', fixed(c1d, 0), `${signed(c1d - c1c)} vs 1c: the adapter (per-op timers, handle table, counters)`],
    ];
    if (tmpfsRuns.length > 0)
      callRows.push([
        '2t null-client mount, state on tmpfs',
        fixed(c2t, 0),
        `${signed(c2t - c1d)} vs 1d: the core (locks, copy, cache, hashing, uploads) on the event loop`,
      ]);
    callRows.push([
      '2 null-client mount, state on disk',
      fixed(c2, 0),
      tmpfsRuns.length > 0 ? `${signed(c2 - c2t)} vs 2t: the read-back store and journal on disk (write + fdatasync before each PUT)` : '',
    ]);
    callRows.push([
      '2n null-client mount, client not hashing',
      fixed(c2n, 0),
      `${signed(c2n - c2)} vs 2: the null client's SHA-256 of each block`,
    ]);
    callRows.push(['3 mount → local-ebs', fixed(c3, 0), `${signed(c3 - c2)} vs 2: HTTP, the SDK, and local-ebs on the same two cores`]);
    sections.push(
      `### Microseconds per 128 KiB write call (median dd time / write calls; dd alone, without the final flush)\n\n${table(['layer', 'µs per call', 'what the difference is'], callRows)}`,
    );

    const putRows: string[][] = [];
    const exact = (samples: Array<{ puts: number; distinctBlocks: number }>): boolean =>
      samples.every((s) => s.puts === results.nonZeroBlocks && s.distinctBlocks === results.nonZeroBlocks);
    putRows.push([
      '2',
      nullMount.map((s) => s.puts).join(', '),
      nullMount.map((s) => s.distinctBlocks).join(', '),
      String(results.nonZeroBlocks),
      exact(nullMount) ? 'yes' : 'NO',
    ]);
    putRows.push([
      '3',
      mount.map((s) => s.puts).join(', '),
      mount.map((s) => s.distinctBlocks).join(', '),
      String(results.nonZeroBlocks),
      exact(mount) ? 'yes' : 'NO',
    ]);
    if (uploads.length > 0)
      putRows.push([
        '4',
        uploads.map((s) => s.puts).join(', '),
        uploads.map((s) => s.distinctBlocks).join(', '),
        String(results.nonZeroBlocks),
        exact(uploads) ? 'yes' : 'NO',
      ]);
    sections.push(
      `### PUTs of the sequential dd (counted at local-ebs; for 2, by the null client)\n\n` +
        table(['#', 'PUTs per run', 'blocks in the snapshot', 'non-zero blocks of the data', 'equal in every run'], putRows),
    );
    targets.push({
      name: 'Sequential dd: PUTs = distinct non-zero blocks written, exactly',
      measured:
        `${results.nonZeroBlocks} non-zero blocks; PUTs per run: mount ${mount.map((s) => s.puts).join(', ')}` +
        (uploads.length > 0 ? `; upload ${uploads.map((s) => s.puts).join(', ')}` : ''),
      met: exact(mount) && exact(nullMount) && (uploads.length === 0 || exact(uploads)),
    });

    const resourceRows: string[][] = [];
    const addResources = (name: string, samples: Array<{ rusage: Rusage }>, server?: Array<Rusage | undefined>): void => {
      const peaks = samples.map((s) => s.rusage.maxRssBytes);
      const cpuPerGiB = samples.map((s) => cpuSeconds(s.rusage) / dataGiB);
      const serverCpu = (server ?? []).flatMap((usage) => (usage ? [cpuSeconds(usage) / dataGiB] : []));
      resourceRows.push([
        name,
        mib(max(peaks)),
        mib(median(peaks)),
        fixed(median(cpuPerGiB), 2),
        fixed(median(samples.map((s) => s.rusage.userCpuSeconds / dataGiB)), 2),
        fixed(median(samples.map((s) => s.rusage.systemCpuSeconds / dataGiB)), 2),
        serverCpu.length > 0 ? fixed(median(serverCpu), 2) : '',
      ]);
      for (const peak of peaks) peakRss.push({ what: name, bytes: peak });
    };
    addResources('2 null-client mount', nullMount);
    addResources(
      '2n null-client mount, client not hashing',
      rounds.map((r) => r.nullMountNoVerify),
    );
    const tmpfsSamples = rounds.flatMap((round) => (round.nullMountTmpfs ? [round.nullMountTmpfs] : []));
    if (tmpfsSamples.length > 0) addResources('2t null-client mount, state on tmpfs', tmpfsSamples);
    addResources(
      '3 ebs-fuse mount',
      mount,
      mount.map((s) => s.serverRusage),
    );
    if (uploads.length > 0)
      addResources(
        '4 ebs-fuse upload',
        uploads,
        uploads.map((s) => s.serverRusage),
      );
    sections.push(
      `### Resources (exact, from wait4: peak RSS = VmHWM at exit; CPU = user + system, all threads)\n\n` +
        table(
          ['process', 'peak RSS MiB (max)', 'peak RSS MiB (median)', 'CPU s/GiB', 'user s/GiB', 'system s/GiB', 'local-ebs CPU s/GiB'],
          resourceRows,
        ),
    );

    if (r3over4.length > 0) {
      targets.push({
        name: 'End to end through the mount (3) ≥ 0.9 × upload (4)',
        measured: `3/4 = ${fixed(median(r3over4), 3)} (3: ${fixed(median(mount.map((s) => s.megabytesPerSecond)), 0)} MB/s, 4: ${fixed(median(uploads.map((s) => s.megabytesPerSecond)), 0)} MB/s)`,
        met: median(r3over4) >= 0.9,
      });
    } else {
      targets.push({
        name: 'End to end through the mount (3) ≥ 0.9 × upload (4)',
        measured: '`ebs-fuse upload` not available',
        met: undefined,
      });
    }
    const nullNoVerifyRate = median(rounds.map((r) => r.nullMountNoVerify.megabytesPerSecond));
    targets.push({
      name: 'Null-client mount (2) ≥ 0.75 × C null file system, libfuse 2 big_writes (1b): the same 128 KiB writes',
      measured:
        `2/1b = ${fixed(median(r2over1b), 3)} (2: ${fixed(median(nullMount.map((s) => s.megabytesPerSecond)), 0)} MB/s, 1b: ${fixed(median(ceiling('nullfs2')), 0)} MB/s); ` +
        `without the null client's hash 2n/1b = ${fixed(median(r2nOver1b), 3)} (${fixed(nullNoVerifyRate, 0)} MB/s)`,
      met: median(r2over1b) >= 0.75,
    });
    targets.push({
      name: "Null-client mount (2) ≥ 0.75 × C null file system, libfuse 3 1 MiB writes (1a): the machine's ceiling",
      measured: `2/1a = ${fixed(median(r2over1a), 3)} (1a: ${fixed(median(ceiling('nullfs3')), 0)} MB/s); 2n/1a = ${fixed(median(r2nOver1a), 3)}`,
      met: median(r2over1a) >= 0.75,
    });
  }

  const ext4 = results.ext4;
  if (ext4) {
    const rows: string[][] = [];
    const mountRounds = ext4.rounds.map((r) => r.mount);
    const uploadRounds = ext4.rounds.flatMap((r) => (r.upload ? [r.upload] : []));
    rows.push([
      '5a',
      'on the mounted file: mount start → completed',
      fixed(median(mountRounds.map((s) => s.wallSeconds)), 1),
      fixed(median(mountRounds.map((s) => s.workloadSeconds)), 1),
      fixed(median(mountRounds.map((s) => s.finishSeconds)), 1),
      mountRounds.map((s) => s.puts).join(', '),
      mountRounds.map((s) => s.distinctBlocks).join(', '),
      fixed(median(mountRounds.map((s) => s.puts / s.distinctBlocks)), 3),
    ]);
    if (uploadRounds.length > 0) {
      rows.push([
        '5b',
        'local image file, then `ebs-fuse upload`',
        fixed(median(uploadRounds.map((s) => s.wallSeconds)), 1),
        fixed(median(uploadRounds.map((s) => s.workloadSeconds)), 1),
        fixed(median(uploadRounds.map((s) => s.uploadSeconds)), 1),
        uploadRounds.map((s) => s.puts).join(', '),
        `${uploadRounds.map((s) => s.distinctBlocks).join(', ')} (non-zero in the image: ${uploadRounds.map((s) => s.nonZeroBlocks).join(', ')})`,
        fixed(median(uploadRounds.map((s) => s.puts / s.distinctBlocks)), 3),
      ]);
    }
    for (const s of mountRounds) peakRss.push({ what: '5a ebs-fuse mount (ext4)', bytes: s.rusage.maxRssBytes });
    for (const s of uploadRounds) peakRss.push({ what: '5b ebs-fuse upload (ext4 image)', bytes: s.rusage.maxRssBytes });
    const tree = ext4.tree;
    sections.push(
      `### mkfs.ext4 + loop mount + cp -a of ${tree.files} files (${tree.directories} directories, ${mib(tree.bytes)} MiB) + umount, ${settings.ext4VolumeGiB} GiB volume, ${ext4.rounds.length} round(s)\n\n` +
        table(
          ['#', 'what', 'wall s', 'mkfs+cp+umount s', 'completion / upload s', 'PUTs', 'blocks in the snapshot', 'PUTs / blocks'],
          rows,
        ) +
        (uploadRounds.length > 0
          ? `\n\nWall time 5a / 5b: ${fixed(median(mountRounds.map((s) => s.wallSeconds)) / median(uploadRounds.map((s) => s.wallSeconds)), 3)}.`
          : ''),
    );
    const worst = max(mountRounds.map((s) => s.puts / s.distinctBlocks));
    targets.push({
      name: 'mkfs + copy with the default cache: PUTs ≤ 1.25 × distinct blocks touched',
      measured: `PUTs / blocks = ${mountRounds.map((s) => fixed(s.puts / s.distinctBlocks, 3)).join(', ')}`,
      met: worst <= 1.25,
    });
  }

  const sparse = results.sparse;
  if (sparse) {
    const [small, large] = settings.sparseVolumesGiB;
    const of = (size: number): SparseResult['samples'] => sparse.samples.filter((s) => s.volumeSizeGiB === size);
    const rows: string[][] = [];
    for (const size of [small, large]) {
      const samples = of(size);
      rows.push([
        `${size} GiB`,
        fixed(median(samples.map((s) => s.startSeconds)), 2),
        spread(
          samples.map((s) => s.startSeconds),
          2,
        ),
        fixed(median(samples.map((s) => s.ddSeconds)), 2),
        fixed(median(samples.map((s) => s.finishSeconds)), 2),
        spread(
          samples.map((s) => s.finishSeconds),
          2,
        ),
        samples.map((s) => s.puts).join(', '),
        mib(max(samples.map((s) => s.rusage.maxRssBytes))),
      ]);
      for (const s of samples) peakRss.push({ what: `6 ebs-fuse mount (${size} GiB volume)`, bytes: s.rusage.maxRssBytes });
    }
    const startDelta = median(of(large).map((s) => s.startSeconds)) - median(of(small).map((s) => s.startSeconds));
    const finishDelta = median(of(large).map((s) => s.finishSeconds)) - median(of(small).map((s) => s.finishSeconds));
    sections.push(
      `### Sparse: dd of ${mib(settings.sparseBytes)} MiB into a ${small} GiB and a ${large} GiB volume, ${of(small).length} runs each, alternating\n\n` +
        table(['volume', 'mount s', 'min–max', 'dd s', 'unmount → completed s', 'min–max', 'PUTs', 'peak RSS MiB'], rows) +
        `\n\nDifference ${large} GiB − ${small} GiB: mount ${signedSeconds(startDelta)}, completion ${signedSeconds(finishDelta)}. Non-zero blocks written: ${results.sparseNonZeroBlocks}.`,
    );
    targets.push({
      name: `Sparse: mount and completion for ${large} GiB within 2 s of ${small} GiB`,
      measured: `mount ${signedSeconds(startDelta)}, completion ${signedSeconds(finishDelta)}`,
      met: startDelta <= 2 && finishDelta <= 2,
    });
  }

  if (peakRss.length > 0) {
    const worst = peakRss.reduce((a, b) => (b.bytes > a.bytes ? b : a));
    targets.push({
      name: `Peak RSS ≤ --cache-size + 150 MiB (${mib(rssLimitBytes)} MiB) in every benchmark`,
      measured: `largest: ${mib(worst.bytes)} MiB (${worst.what})`,
      met: peakRss.every((p) => p.bytes <= rssLimitBytes),
    });
  }

  const diagnostics = results.diagnostics;
  if (diagnostics) {
    const rows: string[][] = [['SHA-256 in Node, one core, 512 KiB blocks', `${fixed(diagnostics.sha256MegabytesPerSecond, 0)} MB/s`]];
    for (const load of diagnostics.load) {
      const loadGiB = (load.puts * 524288) / GIB;
      rows.push([
        `local-ebs alone: ${load.puts} PUTs from the product's AwsSnapshotClient, ${load.concurrency} in flight, no FUSE; PutSnapshotBlock ${load.putThroughSdk ? 'through the SDK' : 'as its own signed PUT (the default)'}`,
        `${fixed(load.putsPerSecond, 0)} PUT/s = ${fixed(load.megabytesPerSecond, 0)} MB/s; client CPU ${fixed(load.clientCpuSeconds / loadGiB, 2)} s/GiB, ` +
          `local-ebs CPU ${fixed(cpuSeconds(load.serverRusage) / loadGiB, 2)} s/GiB, local-ebs peak RSS ${mib(load.serverRusage.maxRssBytes)} MiB`,
      ]);
    }
    sections.push(`### Diagnostics\n\n${table(['measurement', 'figure'], rows)}`);
    if (diagnostics.sweep.length > 0) {
      const sweepRows = diagnostics.sweep.map((line) => [
        line.what,
        line.points.map((p) => `${p.callBytes / 1024} KiB: ${fixed(p.seconds, 2)} s`).join(', '),
        fixed(line.perCallMicroseconds, 0),
        fixed(line.perGiBSeconds, 2),
        fixed(line.megabytesPerSecondAt128KiB, 0),
        fixed(line.predictedMegabytesPerSecondAt1MiB, 0),
      ]);
      const sweepGiB = (diagnostics.sweep[0].points[0].calls * diagnostics.sweep[0].points[0].callBytes) / GIB;
      sections.push(
        `#### Write-size sweep: ${fixed(sweepGiB, 2)} GiB by dd at 16, 32, 64 and 128 KiB FUSE writes; time = per call × calls + per GiB × GiB (least squares)\n\n` +
          table(
            ['file system', 'dd seconds by write size', 'µs per call', 's per GiB', 'MB/s at 128 KiB', 'MB/s predicted at 1 MiB'],
            sweepRows,
          ),
      );
    }
    for (const run of diagnostics.profiles) {
      const gib = settings.dataBytes / GIB;
      const profileRows = run.profile.categories.map((entry) => [
        entry.category,
        fixed(entry.seconds, 2),
        fixed((entry.seconds / run.profile.totalSeconds) * 100, 0),
      ]);
      sections.push(
        `#### Main thread of the ${run.what}, one profiled run of ${fixed(gib, 2)} GiB (${fixed(run.megabytesPerSecond, 0)} MB/s under the profiler), ` +
          `${fixed(run.profile.totalSeconds, 1)} s from start to exit\n\n` +
          table(["where the main thread's time went", 'seconds', '%'], profileRows) +
          `\n\nLargest self times: ${run.profile.topFunctions
            .slice(0, 8)
            .map((f) => `${f.name} ${fixed(f.seconds, 2)} s`)
            .join('; ')}.`,
      );
    }
  }

  // BENCH_ONLY may leave no group with a target (local-copy prints its own verdicts).
  if (targets.length > 0)
    sections.push(
      `### Targets\n\n${table(
        ['target', 'measured', 'verdict'],
        targets.map((t) => [t.name, t.measured, verdict(t.met)]),
      )}`,
    );
  return sections.join('\n\n');
}
