// Baseline 6: the same dd of random data into a small and a huge volume. Mount
// time (spawn to writable) and completion time (unmount signal to completed)
// must not grow with the volume size. Runs alternate between the sizes, each
// against a fresh local-ebs.
import type { Cleanup } from './lib/cleanup';
import { dd } from './lib/data';
import { RunningMount } from './lib/ebs-fuse';
import { LocalEbs, putsBetween } from './lib/local-ebs';
import type { Rusage } from './lib/proc';

const DD_BLOCK_BYTES = 1024 * 1024;

export interface SparseSettings {
  scratch: string;
  dataFile: string;
  dataBytes: number;
  /** Volume sizes compared, GiB: the first is the reference. */
  volumeSizesGiB: [number, number];
  rounds: number;
  log: (line: string) => void;
}

export interface SparseSample {
  volumeSizeGiB: number;
  startSeconds: number;
  ddSeconds: number;
  finishSeconds: number;
  puts: number;
  rusage: Rusage;
}

export interface SparseResult {
  samples: SparseSample[];
}

export async function runSparse(cleanup: Cleanup, settings: SparseSettings): Promise<SparseResult> {
  const samples: SparseSample[] = [];
  for (let round = 1; round <= settings.rounds; round += 1) {
    // Alternate which size goes first, so a drift in background load hits both alike.
    const order = round % 2 === 1 ? settings.volumeSizesGiB : [settings.volumeSizesGiB[1], settings.volumeSizesGiB[0]];
    for (const volumeSizeGiB of order) {
      if (cleanup.interrupted) throw new Error('interrupted');
      const name = `sparse-${volumeSizeGiB}-${round}`;
      const server = await LocalEbs.start(cleanup, settings.scratch, name);
      const mount = await RunningMount.start(cleanup, { name, scratch: settings.scratch, volumeSizeGiB, server });
      const before = await server.stats();
      const ddSeconds = await dd(cleanup, {
        input: settings.dataFile,
        output: mount.filePath,
        blockSizeBytes: DD_BLOCK_BYTES,
        count: Math.ceil(settings.dataBytes / DD_BLOCK_BYTES),
        // As users write: dd truncates the file first, which must not cost more on a bigger volume either.
        conv: 'fsync',
        timeoutMs: 10 * 60_000,
      });
      const finished = await mount.finish();
      const puts = putsBetween(before, await server.stats());
      await server.stop();
      samples.push({
        volumeSizeGiB,
        startSeconds: mount.startSeconds,
        ddSeconds,
        finishSeconds: finished.finishSeconds,
        puts,
        rusage: finished.rusage,
      });
      settings.log(
        `sparse round ${round}: ${volumeSizeGiB} GiB volume: mount ${mount.startSeconds.toFixed(2)} s, completion ${finished.finishSeconds.toFixed(2)} s`,
      );
    }
  }
  return { samples };
}
