// Measurements that explain the main figures rather than compare with them:
//   - SHA-256 in Node on one core, in 512 KiB blocks (what the flusher, the SDK's
//     SigV4 payload hash and local-ebs each pay per block);
//   - local-ebs alone under a load generator: the product's AwsSnapshotClient
//     with N PUTs in flight, distinct blocks read from the data file, no FUSE and
//     no cache in the way. If this is not far above the mount's rate, the server
//     on the same two cores is what limits the end-to-end figures.
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { sha256Base64 } from '../../src/ebs/checksum';
import type { Cleanup } from './lib/cleanup';
import { LocalEbs, putsBetween } from './lib/local-ebs';
import type { Rusage } from './lib/proc';
import { megabytesPerSecond } from './lib/stats';

export interface DiagnosticsSettings {
  scratch: string;
  dataFile: string;
  /** Bytes the load generator sends. */
  loadBytes: number;
  loadConcurrency: number;
  log: (line: string) => void;
}

export interface LoadResult {
  concurrency: number;
  puts: number;
  seconds: number;
  putsPerSecond: number;
  megabytesPerSecond: number;
  /** The bench process (client side: SDK, signing, hashing) CPU seconds. */
  clientCpuSeconds: number;
  serverRusage: Rusage;
}

export interface DiagnosticsResult {
  sha256MegabytesPerSecond: number;
  load: LoadResult;
}

export function measureSha256(totalBytes: number): number {
  const block = Buffer.alloc(BLOCK_SIZE_BYTES, 0xa5);
  const blocks = Math.max(1, Math.floor(totalBytes / BLOCK_SIZE_BYTES));
  const startNs = process.hrtime.bigint();
  for (let i = 0; i < blocks; i += 1) createHash('sha256').update(block).digest();
  return megabytesPerSecond(blocks * BLOCK_SIZE_BYTES, Number(process.hrtime.bigint() - startNs) / 1e9);
}

export async function runLoadGenerator(cleanup: Cleanup, settings: DiagnosticsSettings): Promise<LoadResult> {
  const server = await LocalEbs.start(cleanup, settings.scratch, 'loadgen');
  const client = server.client(settings.loadConcurrency);
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
  const load = await runLoadGenerator(cleanup, settings);
  settings.log(`diagnostics: local-ebs alone ${load.putsPerSecond.toFixed(0)} PUT/s (${load.megabytesPerSecond.toFixed(0)} MB/s) at ${load.concurrency} in flight`);
  return { sha256MegabytesPerSecond, load };
}
