// Baseline 8: the mount against the simplest uploader a user could write, a
// 16-thread boto3 script (boto3_peer.py), each against its own fresh local-ebs
// with the same random file, paired in each round. The mount's figure is dd
// bs=1M conv=fsync from its start to the completed snapshot; the peer's is the
// script from its start to its completion. Each round also runs the mount with
// `--local` (local-ebs embedded in the mount's process) for goal 6.
import { rm } from 'node:fs/promises';
import path from 'node:path';
import type { Cleanup } from './lib/cleanup';
import { RunningMount } from './lib/ebs-fuse';
import { LocalEbs } from './lib/local-ebs';
import { BENCH_DIR, REPO_ROOT } from './lib/paths';
import { describeExit, spawnTracked } from './lib/proc';
import { GIB, median } from './lib/stats';

/** Debian's python3, where python3-boto3 is installed. */
const SYSTEM_PYTHON = '/usr/bin/python3';
const TIMEOUT_MS = 15 * 60_000;

export interface PeerSettings {
  scratch: string;
  dataFile: string;
  dataBytes: number;
  rounds: number;
  log: (line: string) => void;
}

export interface PeerResult {
  rounds: Array<{ mountMBps: number; peerMBps: number; embeddedMountMBps: number }>;
}

export async function runPeer(cleanup: Cleanup, settings: PeerSettings): Promise<PeerResult> {
  const rounds: PeerResult['rounds'] = [];
  for (let round = 1; round <= settings.rounds; round += 1) {
    if (cleanup.interrupted) throw new Error('interrupted');
    const peerMBps = await peer(cleanup, settings, `peer-${round}`);
    const mountMBps = await mount(cleanup, settings, `peer-mount-${round}`, 'separate');
    const embeddedMountMBps = await mount(cleanup, settings, `peer-local-${round}`, 'embedded');
    settings.log(
      `peer round ${round}: boto3 16 threads ${peerMBps.toFixed(0)} MB/s, mount ${mountMBps.toFixed(0)} MB/s, mount --local ${embeddedMountMBps.toFixed(0)} MB/s`,
    );
    rounds.push({ mountMBps, peerMBps, embeddedMountMBps });
  }
  return { rounds };
}

async function peer(cleanup: Cleanup, settings: PeerSettings, name: string): Promise<number> {
  const server = await LocalEbs.start(cleanup, settings.scratch, name);
  const tracked = spawnTracked(
    cleanup,
    `boto3 peer (${name})`,
    SYSTEM_PYTHON,
    [path.join(BENCH_DIR, 'boto3_peer.py'), settings.dataFile, server.endpoint],
    {
      cwd: REPO_ROOT,
      env: server.cliEnvironment(),
    },
  );
  const exit = await tracked.waitForExit(TIMEOUT_MS);
  await server.stop();
  if (exit.code !== 0 || !/^snap-[0-9a-f]+$/.test(tracked.stdoutLines[0] ?? '')) {
    throw new Error(`the boto3 peer ended with ${describeExit(exit)}: ${tracked.stderr().trim().slice(-2000)}`);
  }
  return settings.dataBytes / 1e6 / tracked.elapsedSeconds;
}

/** The mount against a local-ebs process of its own ('separate'), or with `--local` and a fresh data directory ('embedded'). */
async function mount(cleanup: Cleanup, settings: PeerSettings, name: string, server: 'separate' | 'embedded'): Promise<number> {
  const separate = server === 'separate' ? await LocalEbs.start(cleanup, settings.scratch, name) : undefined;
  const localDataDir = path.join(settings.scratch, `${name}-embedded-local-ebs`);
  if (!separate) cleanup.add(`remove ${localDataDir}`, () => rm(localDataDir, { recursive: true, force: true }));
  const running = await RunningMount.start(cleanup, {
    name,
    scratch: settings.scratch,
    volumeSizeGiB: Math.max(1, Math.ceil(settings.dataBytes / GIB)),
    server: separate,
    localDataDir: separate ? undefined : localDataDir,
  });
  const { seconds } = await running.ddThenFinish(cleanup, settings.dataFile, settings.dataBytes, TIMEOUT_MS);
  await separate?.stop();
  return settings.dataBytes / 1e6 / seconds;
}

/** The table of baseline 8 and the ratio of performance goal 1 (mount ≥ 1.0 × the peer). */
export function renderPeer(result: PeerResult): string {
  const ratios = result.rounds.map((round) => round.mountMBps / round.peerMBps);
  const embeddedRatios = result.rounds.map((round) => round.embeddedMountMBps / round.mountMBps);
  return [
    '## 8. The mount against a 16-thread boto3 uploader (same file, each on a fresh local-ebs), and with --local',
    '',
    '| round | boto3 peer MB/s | mount MB/s | mount / peer | mount --local MB/s | --local / separate |',
    '|---|---|---|---|---|---|',
    ...result.rounds.map(
      (round, index) =>
        `| ${index + 1} | ${round.peerMBps.toFixed(0)} | ${round.mountMBps.toFixed(0)} | ${ratios[index].toFixed(2)} | ${round.embeddedMountMBps.toFixed(0)} | ${embeddedRatios[index].toFixed(2)} |`,
    ),
    '',
    `- Goal 1: mount ≥ 1.0 × the peer: median ${median(ratios).toFixed(2)}`,
    `- Goal 6: mount --local ≥ 0.9 × the mount against a separate local-ebs: median ${median(embeddedRatios).toFixed(2)}`,
  ].join('\n');
}
