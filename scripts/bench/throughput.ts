// Baselines 1–4 and 7: `dd bs=1M conv=fsync` of the same random file into each
// null file system, the null-client mount and the real mount, and `ebs-fuse
// upload` of that file, in rounds. Every round runs each variant once, so the
// ratios are paired run by run (same minute, same background load); the report
// shows the median of each figure and of each per-round ratio.
import type { Cleanup } from './lib/cleanup';
import { mountCeiling, type CeilingKind, type CeilingMount } from './lib/ceilings';
import { cpuBetween, readMachineCpu, type MachineCpu } from './lib/cpu';
import { dd } from './lib/data';
import { RunningMount, runUpload } from './lib/ebs-fuse';
import { LocalEbs, putsBetween } from './lib/local-ebs';
import type { Rusage } from './lib/proc';
import { megabytesPerSecond } from './lib/stats';

export const CEILING_KINDS: CeilingKind[] = ['nullfs3', 'nullfs2', 'noop-raw', 'noop-adapter'];
const DD_BLOCK_BYTES = 1024 * 1024;

export interface ThroughputSettings {
  scratch: string;
  dataFile: string;
  dataBytes: number;
  /** Non-zero 512 KiB blocks of dataFile: what a sequential dd must PUT, exactly. */
  nonZeroBlocks: number;
  /** checksumListDigest() of nonZeroBlockChecksums(dataFile, dataBytes): what every null client must have been sent. */
  expectedChecksumListDigest: string;
  rounds: number;
  /** Whether `ebs-fuse upload` exists in this checkout (older commits, for comparisons). */
  uploadAvailable: boolean;
  binaries: { nullfs3: string; nullfs2: string };
  /** A tmpfs directory for the state of a second null-client mount, or none. */
  tmpfsStateParent?: string;
  log: (line: string) => void;
}

export interface CeilingSample {
  seconds: number;
  megabytesPerSecond: number;
  /** The whole machine's CPU during the dd. */
  machine: MachineCpu;
}

export interface MountSample {
  /** dd alone, seconds. */
  ddSeconds: number;
  /** From the start of dd to the completed snapshot (the process's exit), seconds. */
  totalSeconds: number;
  megabytesPerSecond: number;
  /** Spawn to writable. */
  startSeconds: number;
  /** Unmount signal to completed. */
  finishSeconds: number;
  puts: number;
  distinctBlocks: number;
  rusage: Rusage;
  serverRusage?: Rusage;
  /** The whole machine's CPU from the start of dd to the completed snapshot. */
  machine: MachineCpu;
}

export interface UploadSample {
  seconds: number;
  megabytesPerSecond: number;
  puts: number;
  distinctBlocks: number;
  rusage: Rusage;
  serverRusage: Rusage;
  /** The whole machine's CPU from the spawn of upload to its exit. */
  machine: MachineCpu;
}

export interface ThroughputRound {
  ceilings: Record<CeilingKind, CeilingSample>;
  nullMount: MountSample;
  /** The null-client mount with its state directory on tmpfs: fdatasync costs nothing there. */
  nullMountTmpfs?: MountSample;
  /** The null-client mount whose client acknowledges without hashing, as the AWS client now sends. */
  nullMountNoVerify: MountSample;
  mount: MountSample;
  upload?: UploadSample;
}

export interface ThroughputResult {
  rounds: ThroughputRound[];
  /** The largest write each ceiling file system saw: proves the write size claimed. */
  largestWriteBytes: Record<CeilingKind, number>;
  nullMountLargestWriteBytes: number;
}

export async function runThroughput(cleanup: Cleanup, settings: ThroughputSettings): Promise<ThroughputResult> {
  const { scratch, dataFile, dataBytes } = settings;
  const count = Math.ceil(dataBytes / DD_BLOCK_BYTES);
  const volumeSizeGiB = Math.max(1, Math.ceil(dataBytes / 2 ** 30));
  const ddTimeoutMs = 10 * 60_000;

  const mounts = new Map<CeilingKind, CeilingMount>();
  for (const kind of CEILING_KINDS) mounts.set(kind, await mountCeiling(cleanup, kind, scratch, settings.binaries));

  const rounds: ThroughputRound[] = [];
  let nullMountLargestWriteBytes = 0;
  for (let round = 1; round <= settings.rounds; round += 1) {
    if (cleanup.interrupted) throw new Error('interrupted');
    const ceilings = {} as Record<CeilingKind, CeilingSample>;
    for (const kind of CEILING_KINDS) {
      const cpuBefore = await readMachineCpu();
      const seconds = await dd(cleanup, {
        input: dataFile,
        output: mounts.get(kind)!.filePath,
        blockSizeBytes: DD_BLOCK_BYTES,
        count,
        conv: 'fsync,notrunc',
        timeoutMs: ddTimeoutMs,
      });
      const machine = cpuBetween(cpuBefore, await readMachineCpu());
      ceilings[kind] = { seconds, megabytesPerSecond: megabytesPerSecond(dataBytes, seconds), machine };
      settings.log(`round ${round}: ${kind} ${ceilings[kind].megabytesPerSecond.toFixed(0)} MB/s`);
    }

    const nullMount = await measureMount(cleanup, settings, { name: `null-${round}`, volumeSizeGiB, count, ddTimeoutMs });
    nullMountLargestWriteBytes = Math.max(nullMountLargestWriteBytes, nullMount.largestWriteBytes);
    settings.log(`round ${round}: null-client mount ${nullMount.sample.megabytesPerSecond.toFixed(0)} MB/s`);
    const nullMountNoVerify = (
      await measureMount(cleanup, settings, {
        name: `null-noverify-${round}`,
        volumeSizeGiB,
        count,
        ddTimeoutMs,
        nullClientVerifies: false,
      })
    ).sample;
    settings.log(`round ${round}: null-client mount, client not hashing ${nullMountNoVerify.megabytesPerSecond.toFixed(0)} MB/s`);
    let nullMountTmpfs: MountSample | undefined;
    if (settings.tmpfsStateParent) {
      nullMountTmpfs = (
        await measureMount(cleanup, settings, {
          name: `null-tmpfs-${round}`,
          volumeSizeGiB,
          count,
          ddTimeoutMs,
          stateParent: settings.tmpfsStateParent,
        })
      ).sample;
      settings.log(`round ${round}: null-client mount, state on tmpfs ${nullMountTmpfs.megabytesPerSecond.toFixed(0)} MB/s`);
    }

    const server = await LocalEbs.start(cleanup, scratch, `mount-${round}`);
    const mount = (await measureMount(cleanup, settings, { name: `mount-${round}`, volumeSizeGiB, count, ddTimeoutMs, server })).sample;
    settings.log(`round ${round}: ebs-fuse mount ${mount.megabytesPerSecond.toFixed(0)} MB/s, ${mount.puts} PUTs`);

    let upload: UploadSample | undefined;
    if (settings.uploadAvailable) {
      upload = await measureUpload(cleanup, settings, `upload-${round}`);
      settings.log(`round ${round}: ebs-fuse upload ${upload.megabytesPerSecond.toFixed(0)} MB/s, ${upload.puts} PUTs`);
    }
    rounds.push({ ceilings, nullMount: nullMount.sample, nullMountNoVerify, nullMountTmpfs, mount, upload });
  }

  const largestWriteBytes = {} as Record<CeilingKind, number>;
  for (const [kind, mount] of mounts) largestWriteBytes[kind] = (await mount.stop()).largestWriteBytes;
  return { rounds, largestWriteBytes, nullMountLargestWriteBytes };
}

async function measureMount(
  cleanup: Cleanup,
  settings: ThroughputSettings,
  options: {
    name: string;
    volumeSizeGiB: number;
    count: number;
    ddTimeoutMs: number;
    server?: LocalEbs;
    stateParent?: string;
    nullClientVerifies?: boolean;
  },
): Promise<{ sample: MountSample; largestWriteBytes: number }> {
  const { server } = options;
  const mount = await RunningMount.start(cleanup, {
    name: options.name,
    scratch: settings.scratch,
    volumeSizeGiB: options.volumeSizeGiB,
    server,
    stateParent: options.stateParent,
    nullClientVerifies: options.nullClientVerifies,
  });
  const before = server ? await server.stats() : undefined;
  const cpuBefore = await readMachineCpu();
  const ddStartNs = process.hrtime.bigint();
  const ddSeconds = await dd(cleanup, {
    input: settings.dataFile,
    output: mount.filePath,
    blockSizeBytes: DD_BLOCK_BYTES,
    count: options.count,
    conv: 'fsync',
    timeoutMs: options.ddTimeoutMs,
  });
  const finished = await mount.finish();
  const machine = cpuBetween(cpuBefore, await readMachineCpu());
  const totalSeconds = Number(finished.endedAtNs - ddStartNs) / 1e9;
  let puts: number;
  let distinctBlocks: number;
  let serverRusage: Rusage | undefined;
  if (server) {
    puts = putsBetween(before!, await server.stats());
    distinctBlocks = await server.countSnapshotBlocks(finished.snapshotId);
    serverRusage = await server.stop();
  } else {
    const report = finished.report!;
    // Checked here, after the time measured, for a client that hashed nothing
    // as for one that hashed every body: a mount sending a wrong checksum fails the bench.
    if (report.checksumListDigest !== settings.expectedChecksumListDigest) {
      throw new Error(`${options.name}: the null client was not sent the SHA-256 of each block written`);
    }
    puts = report.puts;
    distinctBlocks = report.distinctBlocks;
  }
  return {
    sample: {
      ddSeconds,
      totalSeconds,
      megabytesPerSecond: megabytesPerSecond(settings.dataBytes, totalSeconds),
      startSeconds: mount.startSeconds,
      finishSeconds: finished.finishSeconds,
      puts,
      distinctBlocks,
      rusage: finished.rusage,
      serverRusage,
      machine,
    },
    largestWriteBytes: finished.report?.fuse.largestWriteBytes ?? 0,
  };
}

async function measureUpload(cleanup: Cleanup, settings: ThroughputSettings, name: string): Promise<UploadSample> {
  const server = await LocalEbs.start(cleanup, settings.scratch, name);
  const before = await server.stats();
  const cpuBefore = await readMachineCpu();
  const result = await runUpload(cleanup, server, settings.scratch, name, settings.dataFile);
  const machine = cpuBetween(cpuBefore, await readMachineCpu());
  const puts = putsBetween(before, await server.stats());
  const distinctBlocks = await server.countSnapshotBlocks(result.snapshotId);
  const serverRusage = await server.stop();
  return {
    seconds: result.seconds,
    megabytesPerSecond: megabytesPerSecond(settings.dataBytes, result.seconds),
    puts,
    distinctBlocks,
    rusage: result.rusage,
    serverRusage,
    machine,
  };
}
