// `npm run bench`: every baseline and target of docs/BENCHMARKS.md in one invocation on this
// machine, printed as tables with the verdict on each target. Only 127.0.0.1 is
// ever contacted; everything started is stopped and removed at the end, on a
// failure and on Ctrl-C. Sizes come from environment variables (see usage()).
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, statfs, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { runDiagnostics } from './diagnostics';
import { checksumListDigest } from './null-client';
import { runExt4 } from './ext4';
import { buildNullfs } from './lib/ceilings';
import { Cleanup } from './lib/cleanup';
import { countNonZeroBlocks, createRandomFile, nonZeroBlockChecksums } from './lib/data';
import { CLI_PATH, REPO_ROOT } from './lib/paths';
import { run } from './lib/proc';
import { GIB, MIB } from './lib/stats';
import { renderReport, type Results, type Settings } from './report';
import { renderLocalCopy, runLocalCopy, type LocalCopyResult } from './local-copy';
import { renderPeer, runPeer, type PeerResult } from './peer';
import { runSparse } from './sparse';
import { runThroughput } from './throughput';
import { renderGoals } from './goals';
import { renderLatency, runLatency, type LatencyResult } from './latency';
import { renderRandomWrites, runRandomWrites, type RandomResult } from './random-writes';

const GROUPS = ['throughput', 'ext4', 'sparse', 'local-copy', 'peer', 'latency', 'random', 'diagnostics'] as const;
type Group = (typeof GROUPS)[number];

function usage(): string {
  return [
    'npm run bench [-- --help]; settings by environment variable (default):',
    '  BENCH_DATA_MIB=2048          dd / upload size of baselines 1-4',
    '  BENCH_ROUNDS=5               rounds of baselines 1-4 (each round runs every variant once)',
    '  BENCH_EXT4_FILES=20000       files copied in baseline 5',
    '  BENCH_EXT4_FILE_MAX_KIB=16   their sizes are uniform in 0..this',
    '  BENCH_EXT4_VOLUME_GIB=4      volume (and image) size of baseline 5',
    '  BENCH_EXT4_ROUNDS=1          rounds of baseline 5',
    '  BENCH_SPARSE_MIB=1024        dd size of baseline 6',
    '  BENCH_SPARSE_GIB=16384       the large volume of baseline 6 (compared with 1 GiB)',
    '  BENCH_SPARSE_ROUNDS=3        runs per volume size in baseline 6',
    '  BENCH_LOCAL_COPY_MIB=1024    dd size of baseline 7 (the local copy)',
    '  BENCH_LOCAL_COPY_ROUNDS=3    paired rounds of baseline 7 (its ext4 part copies BENCH_EXT4_FILES files)',
    '  BENCH_PEER_MIB=512           file size of baseline 8 (the mount against a 16-thread boto3 uploader)',
    '  BENCH_PEER_ROUNDS=3          paired rounds of baseline 8 (each also runs the mount with --local)',
    '  BENCH_LATENCY_MIB=1024       bytes of each run of baseline 9 (upload and mount under latency)',
    '  BENCH_LATENCY_MS=50,100      the PUT latencies of baseline 9 (each also runs without)',
    '  BENCH_LATENCY_CONCURRENCY=16,64,128   the --upload-concurrency settings of baseline 9',
    '  BENCH_LATENCY_ROUNDS=3       rounds of each setting of baseline 9 (the median decides)',
    '  BENCH_RANDOM_MIB=272         the range fio writes in baseline 10',
    '  BENCH_RANDOM_CACHE_MIB=32,64,128,256,512   the --cache-size settings of baseline 10',
    '  BENCH_RANDOM_JOBS=1,5        the fio job counts of baseline 10',
    '  BENCH_RANDOM_ROUNDS=3        runs of each baseline 10 setting whose data fits in the cache (goal 7 takes the median)',
    '  BENCH_LOAD_MIB=1024          bytes the local-ebs load generator sends',
    '  BENCH_LOAD_CONCURRENCY=64    its PUTs in flight',
    `  BENCH_ONLY=${GROUPS.join(',')}`,
    '  BENCH_SCRATCH=$TMPDIR        where temp files go (needs ~3x BENCH_DATA_MIB free)',
    '  BENCH_JSON=FILE              also write every raw figure as JSON',
    '  BENCH_TMPFS=1                also run baseline 2 with its state on /dev/shm (0: skip)',
    '  BENCH_TIME_LIMIT_MIN=45      stop and clean up after this long',
    "  BENCH_VERBOSE=1              pass the children's stderr through",
  ].join('\n');
}

function integerSetting(name: string, fallback: number, minimum: number, maximum: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < minimum || value > maximum)
    throw new Error(`${name} must be an integer from ${minimum} to ${maximum}, not "${text}"`);
  return value;
}

function integerListSetting(name: string, fallback: number[], minimum: number, maximum: number): number[] {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const values = text.split(',').map((item) => Number(item.trim()));
  if (values.length === 0 || values.some((value) => !Number.isInteger(value) || value < minimum || value > maximum)) {
    throw new Error(`${name} must be a comma-separated list of integers from ${minimum} to ${maximum}, not "${text}"`);
  }
  return values;
}

function log(line: string): void {
  process.stderr.write(`bench: ${line}\n`);
}

function commandOutput(command: string, args: string[]): string {
  try {
    return execFileSync(command, args, { encoding: 'utf8', timeout: 10_000 }).trim();
  } catch {
    return 'unknown';
  }
}

/** A directory on /dev/shm for one null-client mount's state, when tmpfs has room for it (twice the data, to be safe). */
async function tmpfsScratch(cleanup: Cleanup, dataBytes: number): Promise<string | undefined> {
  const shm = '/dev/shm';
  if (process.env.BENCH_TMPFS === '0' || !existsSync(shm)) return undefined;
  const { bavail, bsize } = await statfs(shm);
  if (bavail * bsize < 2 * dataBytes) {
    log(`${shm} has too little room for a ${dataBytes / MIB} MiB read-back store: the tmpfs variant of baseline 2 is skipped`);
    return undefined;
  }
  const directory = await mkdtemp(path.join(shm, 'ebs-fuse-bench-'));
  cleanup.add(`remove ${directory}`, () => rm(directory, { recursive: true, force: true }));
  return directory;
}

async function main(): Promise<number> {
  if (process.argv.includes('--help') || process.argv.includes('-h')) {
    process.stdout.write(`${usage()}\n`);
    return 0;
  }
  const settings: Settings = {
    dataBytes: integerSetting('BENCH_DATA_MIB', 2048, 16, 65536) * MIB,
    rounds: integerSetting('BENCH_ROUNDS', 5, 1, 50),
    cacheSizeBytes: 256 * MIB,
    ext4Files: integerSetting('BENCH_EXT4_FILES', 20_000, 100, 1_000_000),
    ext4FileSizeMaxBytes: integerSetting('BENCH_EXT4_FILE_MAX_KIB', 16, 1, 1024) * 1024,
    ext4VolumeGiB: integerSetting('BENCH_EXT4_VOLUME_GIB', 4, 1, 1024),
    ext4Rounds: integerSetting('BENCH_EXT4_ROUNDS', 1, 1, 20),
    sparseBytes: integerSetting('BENCH_SPARSE_MIB', 1024, 16, 65536) * MIB,
    sparseVolumesGiB: [1, integerSetting('BENCH_SPARSE_GIB', 16384, 2, 65536)],
    sparseRounds: integerSetting('BENCH_SPARSE_ROUNDS', 3, 1, 50),
    loadBytes: integerSetting('BENCH_LOAD_MIB', 1024, 16, 65536) * MIB,
    localCopyBytes: integerSetting('BENCH_LOCAL_COPY_MIB', 1024, 16, 65536) * MIB,
    localCopyRounds: integerSetting('BENCH_LOCAL_COPY_ROUNDS', 3, 1, 20),
    peerBytes: integerSetting('BENCH_PEER_MIB', 512, 16, 65536) * MIB,
    peerRounds: integerSetting('BENCH_PEER_ROUNDS', 3, 1, 20),
    loadConcurrency: integerSetting('BENCH_LOAD_CONCURRENCY', 64, 1, 1024),
    latencyBytes: integerSetting('BENCH_LATENCY_MIB', 1024, 16, 65536) * MIB,
    latenciesMs: integerListSetting('BENCH_LATENCY_MS', [50, 100], 1, 60_000),
    latencyConcurrencies: integerListSetting('BENCH_LATENCY_CONCURRENCY', [16, 64, 128], 1, 1024),
    latencyRounds: integerSetting('BENCH_LATENCY_ROUNDS', 3, 1, 20),
    randomBytes: integerSetting('BENCH_RANDOM_MIB', 272, 16, 65536) * MIB,
    randomCacheSizesMiB: integerListSetting('BENCH_RANDOM_CACHE_MIB', [32, 64, 128, 256, 512], 16, 65536),
    randomJobCounts: integerListSetting('BENCH_RANDOM_JOBS', [1, 5], 1, 64),
    randomFittingRounds: integerSetting('BENCH_RANDOM_ROUNDS', 3, 1, 20),
  };
  if (settings.sparseBytes > settings.sparseVolumesGiB[0] * GIB) throw new Error('BENCH_SPARSE_MIB must fit in the 1 GiB volume');
  const groups = new Set<Group>(
    (process.env.BENCH_ONLY ?? GROUPS.join(','))
      .split(',')
      .map((name) => name.trim())
      .filter(Boolean)
      .map((name) => {
        if (!(GROUPS as readonly string[]).includes(name)) throw new Error(`BENCH_ONLY: unknown group "${name}"; use ${GROUPS.join(',')}`);
        return name as Group;
      }),
  );
  const timeLimitMs = integerSetting('BENCH_TIME_LIMIT_MIN', 45, 1, 24 * 60) * 60_000;

  if (process.getuid?.() !== 0) throw new Error('the bench mounts file systems and loop devices: run it as root');
  if (!existsSync('/dev/fuse')) throw new Error('/dev/fuse is missing');
  if (!existsSync(CLI_PATH)) throw new Error(`${CLI_PATH} is missing: run scripts/setup.sh (npm run bench does)`);

  const cleanup = new Cleanup();
  cleanup.installSignalHandlers(log);
  const startedAtMs = Date.now();
  const deadline = setTimeout(() => {
    log(`time limit of ${timeLimitMs / 60_000} min reached: stopping and cleaning up`);
    cleanup.interrupted = true;
    void cleanup.runAll().finally(() => process.exit(1));
  }, timeLimitMs);
  deadline.unref();

  const cpus = os.cpus();
  const results: Results = {
    machine: {
      cpus: cpus.length,
      cpuModel: cpus[0]?.model.trim() ?? 'unknown',
      memoryGiB: os.totalmem() / GIB,
      kernel: os.release(),
      node: process.version,
      libfuse2: commandOutput('pkg-config', ['--modversion', 'fuse']),
      libfuse3: commandOutput('pkg-config', ['--modversion', 'fuse3']),
      loadBefore: os.loadavg(),
      startedAt: new Date(startedAtMs).toISOString(),
    },
    settings,
    nonZeroBlocks: 0,
    sparseNonZeroBlocks: 0,
    uploadAvailable: false,
  };

  const scratchParent = process.env.BENCH_SCRATCH || os.tmpdir();
  const scratch = await mkdtemp(path.join(scratchParent, 'ebs-fuse-bench-'));
  cleanup.add(`remove ${scratch}`, () => rm(scratch, { recursive: true, force: true }));

  let localCopy: LocalCopyResult | undefined;
  let peer: PeerResult | undefined;
  let latency: LatencyResult | undefined;
  let random: RandomResult | undefined;
  try {
    // `ebs-fuse upload --help` would print the program's help even without the command: read the command list.
    const help = await run(cleanup, process.execPath, [CLI_PATH, '--help'], { allowFailure: true, cwd: REPO_ROOT, timeoutMs: 30_000 });
    results.uploadAvailable = /^\s+upload\b/m.test(help.stdout) && process.env.BENCH_SKIP_UPLOAD !== '1';
    if (!results.uploadAvailable) log('`ebs-fuse upload` is not available in this build: baseline 4 and 5b are skipped');

    log('building the C null file systems');
    const binaries = await buildNullfs(cleanup);

    const dataFile = path.join(scratch, 'random.bin');
    const dataBytes = Math.max(settings.dataBytes, settings.sparseBytes, settings.loadBytes, settings.localCopyBytes);
    log(`writing ${dataBytes / MIB} MiB of random data`);
    await createRandomFile(dataFile, dataBytes);
    results.sparseNonZeroBlocks = await countNonZeroBlocks(dataFile, settings.sparseBytes);

    if (groups.has('throughput')) {
      log(`baselines 1-4: ${settings.rounds} rounds of ${settings.dataBytes / MIB} MiB`);
      const tmpfsStateParent = await tmpfsScratch(cleanup, settings.dataBytes);
      // `ebs-fuse upload` sends a whole file, so baseline 4 needs one of exactly
      // BENCH_DATA_MIB when the shared file is larger (another group's size).
      let throughputFile = dataFile;
      if (dataBytes > settings.dataBytes) {
        throughputFile = path.join(scratch, 'throughput.bin');
        await createRandomFile(throughputFile, settings.dataBytes);
      }
      const expectedChecksums = await nonZeroBlockChecksums(throughputFile, settings.dataBytes);
      results.nonZeroBlocks = expectedChecksums.size;
      results.throughput = await runThroughput(cleanup, {
        scratch,
        dataFile: throughputFile,
        dataBytes: settings.dataBytes,
        nonZeroBlocks: results.nonZeroBlocks,
        expectedChecksumListDigest: checksumListDigest(expectedChecksums),
        rounds: settings.rounds,
        uploadAvailable: results.uploadAvailable,
        binaries,
        tmpfsStateParent,
        log,
      });
    }
    if (groups.has('ext4')) {
      log(`baseline 5: ext4 with ${settings.ext4Files} files`);
      results.ext4 = await runExt4(cleanup, {
        scratch,
        fileCount: settings.ext4Files,
        fileSizeMaxBytes: settings.ext4FileSizeMaxBytes,
        volumeSizeGiB: settings.ext4VolumeGiB,
        rounds: settings.ext4Rounds,
        uploadAvailable: results.uploadAvailable,
        log,
      });
    }
    if (groups.has('sparse')) {
      log(`baseline 6: sparse, ${settings.sparseVolumesGiB.join(' vs ')} GiB`);
      results.sparse = await runSparse(cleanup, {
        scratch,
        dataFile,
        dataBytes: settings.sparseBytes,
        volumeSizesGiB: settings.sparseVolumesGiB,
        rounds: settings.sparseRounds,
        log,
      });
    }
    if (groups.has('local-copy')) {
      log(`baseline 7: the local copy, ${settings.localCopyRounds} paired rounds`);
      localCopy = await runLocalCopy(cleanup, {
        scratch,
        dataFile,
        dataBytes: settings.localCopyBytes,
        rounds: settings.localCopyRounds,
        ext4Files: settings.ext4Files,
        ext4FileSizeMaxBytes: settings.ext4FileSizeMaxBytes,
        ext4VolumeGiB: settings.ext4VolumeGiB,
        log,
      });
    }
    if (groups.has('peer')) {
      log(`baseline 8: the mount against a 16-thread boto3 uploader, ${settings.peerRounds} paired rounds`);
      // Its own file of exactly the size, so that both read the same bytes and no more.
      const peerFile = path.join(scratch, 'peer.bin');
      await createRandomFile(peerFile, settings.peerBytes);
      peer = await runPeer(cleanup, { scratch, dataFile: peerFile, dataBytes: settings.peerBytes, rounds: settings.peerRounds, log });
    }
    if (groups.has('latency')) {
      log(`baseline 9: under latency ${settings.latenciesMs.join(', ')} ms at ${settings.latencyConcurrencies.join(', ')} in flight`);
      const latencyFile = path.join(scratch, 'latency.bin');
      await createRandomFile(latencyFile, settings.latencyBytes);
      latency = await runLatency(cleanup, {
        scratch,
        dataFile: latencyFile,
        dataBytes: settings.latencyBytes,
        latenciesMs: settings.latenciesMs,
        concurrencies: settings.latencyConcurrencies,
        rounds: settings.latencyRounds,
        log,
      });
    }
    if (groups.has('random')) {
      log(`baseline 10: fio random writes over ${settings.randomBytes / MIB} MiB, caches ${settings.randomCacheSizesMiB.join(', ')} MiB`);
      random = await runRandomWrites(cleanup, {
        scratch,
        rangeBytes: settings.randomBytes,
        cacheSizesMiB: settings.randomCacheSizesMiB,
        jobCounts: settings.randomJobCounts,
        fittingRounds: settings.randomFittingRounds,
        log,
      });
    }
    if (groups.has('diagnostics')) {
      log('diagnostics');
      results.diagnostics = await runDiagnostics(cleanup, {
        scratch,
        dataFile,
        binaries,
        sweepBytes: Math.min(settings.dataBytes, GIB),
        profileBytes: settings.dataBytes,
        loadBytes: settings.loadBytes,
        loadConcurrency: settings.loadConcurrency,
        log,
      });
    }
  } finally {
    clearTimeout(deadline);
    await cleanup.runAll();
  }

  results.machine.loadAfter = os.loadavg();
  results.machine.elapsedSeconds = (Date.now() - startedAtMs) / 1000;
  if (process.env.BENCH_JSON)
    await writeFile(process.env.BENCH_JSON, `${JSON.stringify({ ...results, localCopy, peer, latency, random }, null, 2)}\n`);
  process.stdout.write(`${renderReport(results)}\n`);
  if (localCopy) process.stdout.write(`\n${renderLocalCopy(localCopy)}\n`);
  if (peer) process.stdout.write(`\n${renderPeer(peer)}\n`);
  if (latency) process.stdout.write(`\n${renderLatency(latency, settings.latencyBytes)}\n`);
  if (random) process.stdout.write(`\n${renderRandomWrites(random)}\n`);
  process.stdout.write(`\n${renderGoals({ results, peer, latency, random })}\n`);
  return 0;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    log(error instanceof Error ? error.message : String(error));
    if (process.env.BENCH_VERBOSE && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
    process.exit(1);
  },
);
