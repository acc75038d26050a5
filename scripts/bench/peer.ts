// Baseline 8: the mount against the simplest uploader a user could write, a
// 16-thread boto3 script (boto3_peer.py), each against its own fresh local-ebs
// with the same random file, paired in each round. The mount's figure is dd
// bs=1M conv=fsync from its start to the completed snapshot; the peer's is the
// script from its start to its completion.
import path from 'node:path';
import type { Cleanup } from './lib/cleanup';
import { dd } from './lib/data';
import { RunningMount } from './lib/ebs-fuse';
import { LocalEbs } from './lib/local-ebs';
import { BENCH_DIR, REPO_ROOT } from './lib/paths';
import { describeExit, spawnTracked } from './lib/proc';
import { GIB, MIB } from './lib/stats';

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
  rounds: Array<{ mountMBps: number; peerMBps: number }>;
}

export async function runPeer(cleanup: Cleanup, settings: PeerSettings): Promise<PeerResult> {
  const rounds: PeerResult['rounds'] = [];
  for (let round = 1; round <= settings.rounds; round += 1) {
    if (cleanup.interrupted) throw new Error('interrupted');
    const peerMBps = await peer(cleanup, settings, `peer-${round}`);
    const mountMBps = await mount(cleanup, settings, `peer-mount-${round}`);
    settings.log(`peer round ${round}: boto3 16 threads ${peerMBps.toFixed(0)} MB/s, mount ${mountMBps.toFixed(0)} MB/s`);
    rounds.push({ mountMBps, peerMBps });
  }
  return { rounds };
}

async function peer(cleanup: Cleanup, settings: PeerSettings, name: string): Promise<number> {
  const server = await LocalEbs.start(cleanup, settings.scratch, name);
  const tracked = spawnTracked(cleanup, `boto3 peer (${name})`, SYSTEM_PYTHON, [path.join(BENCH_DIR, 'boto3_peer.py'), settings.dataFile, server.endpoint], {
    cwd: REPO_ROOT,
    env: server.cliEnvironment(),
  });
  const exit = await tracked.waitForExit(TIMEOUT_MS);
  await server.stop();
  if (exit.code !== 0 || !/^snap-[0-9a-f]+$/.test(tracked.stdoutLines[0] ?? '')) {
    throw new Error(`the boto3 peer ended with ${describeExit(exit)}: ${tracked.stderr().trim().slice(-2000)}`);
  }
  return settings.dataBytes / 1e6 / tracked.elapsedSeconds;
}

async function mount(cleanup: Cleanup, settings: PeerSettings, name: string): Promise<number> {
  const server = await LocalEbs.start(cleanup, settings.scratch, name);
  const running = await RunningMount.start(cleanup, { name, scratch: settings.scratch, volumeSizeGiB: Math.max(1, Math.ceil(settings.dataBytes / GIB)), server });
  const startNs = process.hrtime.bigint();
  await dd(cleanup, { input: settings.dataFile, output: running.filePath, blockSizeBytes: MIB, count: Math.ceil(settings.dataBytes / MIB), conv: 'fsync', timeoutMs: TIMEOUT_MS });
  const finished = await running.finish();
  await server.stop();
  return settings.dataBytes / 1e6 / (Number(finished.endedAtNs - startNs) / 1e9);
}

/** The table of baseline 8 and the ratio of goal 1 of the performance issue (mount ≥ 1.0 × the peer). */
export function renderPeer(result: PeerResult): string {
  const ratios = result.rounds.map((round) => round.mountMBps / round.peerMBps);
  const sorted = [...ratios].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  return [
    '## 8. The mount against a 16-thread boto3 uploader (same file, each on a fresh local-ebs)',
    '',
    '| round | boto3 peer MB/s | mount MB/s | mount / peer |',
    '|---|---|---|---|',
    ...result.rounds.map((round, index) => `| ${index + 1} | ${round.peerMBps.toFixed(0)} | ${round.mountMBps.toFixed(0)} | ${ratios[index].toFixed(2)} |`),
    '',
    `- Goal: mount ≥ 1.0 × the peer: median ${median.toFixed(2)}: ${median >= 1 ? 'MET' : 'NOT MET'}`,
  ].join('\n');
}
