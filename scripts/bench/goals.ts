// The performance goals, each as the ratio this run measured and a
// verdict, in one table at the end of `npm run bench`. A goal whose group did
// not run (BENCH_ONLY) says so instead of a verdict.
import { latencyShares, LATENCY_GOAL_RATIO, type LatencyResult } from './latency';
import type { PeerResult } from './peer';
import { fittingSamples, RANDOM_GOAL_PUTS_PER_BLOCK, type RandomResult } from './random-writes';
import { cpuSeconds, pairedRatio, table, verdict, type Results } from './report';
import { fixed, median } from './lib/stats';
import { WRITE_MAX_BYTES as LIBFUSE2_WRITE_MAX_BYTES } from '../../src/fuse/fuse-mount';

export interface GoalInputs {
  results: Results;
  peer?: PeerResult;
  latency?: LatencyResult;
  random?: RandomResult;
}

interface Goal {
  name: string;
  measured: string;
  met: boolean | undefined;
}

const NOT_RUN = (group: string): { measured: string; met: undefined } => ({
  measured: `not run (BENCH_ONLY without ${group})`,
  met: undefined,
});

export function renderGoals({ results, peer, latency, random }: GoalInputs): string {
  const goals: Goal[] = [];
  const rounds = results.throughput?.rounds;

  const peerRatios = peer?.rounds.map((r) => r.mountMBps / r.peerMBps);
  goals.push({
    name: '1. mount ≥ 1.0 × a 16-thread boto3 uploader (baseline 8)',
    ...(peerRatios
      ? {
          measured: `median ${fixed(median(peerRatios), 2)} (${peerRatios.map((r) => fixed(r, 2)).join(', ')})`,
          met: median(peerRatios) >= 1,
        }
      : NOT_RUN('peer')),
  });

  const mountOverUpload =
    rounds &&
    pairedRatio(
      rounds,
      (r) => r.mount.megabytesPerSecond,
      (r) => r.upload?.megabytesPerSecond,
    );
  goals.push({
    name: '2. mount ≥ 0.9 × `ebs-fuse upload` (3/4)',
    ...(mountOverUpload && mountOverUpload.length > 0
      ? {
          measured: `median ${fixed(median(mountOverUpload), 2)} (${mountOverUpload.map((r) => fixed(r, 2)).join(', ')})`,
          met: median(mountOverUpload) >= 0.9,
        }
      : NOT_RUN('throughput')),
  });

  // "At the same write size": the C null file system of the libfuse the mount went through, told by
  // the largest write the mount saw (1 MiB through libfuse 3, 128 KiB through fuse-native).
  const mountGotLargeWrites = (results.throughput?.nullMountLargestWriteBytes ?? 0) > LIBFUSE2_WRITE_MAX_BYTES;
  const nullOverC =
    rounds &&
    pairedRatio(
      rounds,
      (r) => r.nullMount.megabytesPerSecond,
      (r) => (mountGotLargeWrites ? r.ceilings.nullfs3 : r.ceilings.nullfs2).megabytesPerSecond,
    );
  goals.push({
    name: mountGotLargeWrites
      ? '3. null-client mount ≥ 0.75 × C null file system at the same write size: libfuse 3, 1 MiB writes (2/1a)'
      : '3. null-client mount ≥ 0.75 × C null file system at the same write size: libfuse 2, 128 KiB writes (2/1b)',
    ...(nullOverC
      ? {
          measured: `median ${fixed(median(nullOverC), 3)} (${nullOverC.map((r) => fixed(r, 3)).join(', ')})`,
          met: median(nullOverC) >= 0.75,
        }
      : NOT_RUN('throughput')),
  });

  const shares = latency && latencyShares(latency);
  const worstShare = shares && shares.reduce((a, b) => (b.share < a.share ? b : a));
  goals.push({
    name: `4. under latency, upload and mount ≥ ${LATENCY_GOAL_RATIO} × min(rate without latency, concurrency × 512 KiB / latency) (baseline 9)`,
    ...(worstShare
      ? {
          measured: `lowest ${fixed(worstShare.share, 2)} (${worstShare.path}, ${worstShare.latencyMs} ms, ${worstShare.concurrency} in flight); median ${fixed(median(shares.map((s) => s.share)), 2)}`,
          met: worstShare.share >= LATENCY_GOAL_RATIO,
        }
      : NOT_RUN('latency')),
  });

  const cpuRatios =
    rounds &&
    pairedRatio(
      rounds,
      (r) => cpuSeconds(r.mount.rusage),
      (r) => (r.upload ? cpuSeconds(r.upload.rusage) : undefined),
    );
  goals.push({
    name: "5. the mount process's CPU per GiB ≤ 1.3 × upload's (wait4, user + system)",
    ...(cpuRatios && cpuRatios.length > 0
      ? {
          measured: `median ${fixed(median(cpuRatios), 2)} (${cpuRatios.map((r) => fixed(r, 2)).join(', ')})`,
          met: median(cpuRatios) <= 1.3,
        }
      : NOT_RUN('throughput')),
  });

  const embeddedRatios = peer?.rounds.map((r) => r.embeddedMountMBps / r.mountMBps);
  goals.push({
    name: '6. mount --local (embedded) ≥ 0.9 × mount against a separate local-ebs (baseline 8)',
    ...(embeddedRatios
      ? {
          measured: `median ${fixed(median(embeddedRatios), 2)} (${embeddedRatios.map((r) => fixed(r, 2)).join(', ')})`,
          met: median(embeddedRatios) >= 0.9,
        }
      : NOT_RUN('peer')),
  });

  const fitting = random && fittingSamples(random);
  const worstFit =
    fitting && fitting.length > 0 ? fitting.reduce((a, b) => (b.puts / b.distinctBlocks > a.puts / a.distinctBlocks ? b : a)) : undefined;
  goals.push({
    name: `7. random 64 KiB writes: PUTs ≤ ${RANDOM_GOAL_PUTS_PER_BLOCK} × distinct blocks when the data fits in the cache (baseline 10)`,
    ...(worstFit
      ? {
          measured: `worst ${fixed(worstFit.puts / worstFit.distinctBlocks, 2)} (${worstFit.jobs} job(s), ${worstFit.cacheSizeMiB} MiB cache: median ${worstFit.puts} PUTs of ${worstFit.putsPerRound.join(', ')}, ${worstFit.distinctBlocks} blocks)`,
          met: worstFit.puts / worstFit.distinctBlocks <= RANDOM_GOAL_PUTS_PER_BLOCK,
        }
      : random
        ? { measured: 'no cache size given holds the data', met: undefined }
        : NOT_RUN('random')),
  });

  return `## The performance goals\n\n${table(
    ['goal', 'measured in this run', 'verdict'],
    goals.map((g) => [g.name, g.measured, verdict(g.met)]),
  )}`;
}
