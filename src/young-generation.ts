// A cap on V8's young generation, set from inside the running process.
//
// V8 doubles the young generation's two semi-spaces (1 → 2 → 4 → 8 → 16 MiB in
// Node 20) as objects keep surviving scavenges, which a mount with 64 PUTs in
// flight always does sooner or later. The last doubling adds 16 MiB of resident
// memory beside the block cache, and that alone decided whether the mount kept
// its bound of --cache-size + 150 MiB (docs/BENCHMARKS.md). The maximum
// (--max-semi-space-size) is fixed when the heap is set up, so only a node
// command line could lower it; the growth factor is read at each doubling,
// so once the semi-spaces reach the cap, a factor of 1 stops them there.
import { PerformanceObserver } from 'node:perf_hooks';
import { getHeapSpaceStatistics, setFlagsFromString } from 'node:v8';

/** Both semi-spaces together: V8's `new_space` as getHeapSpaceStatistics reports it. */
export const YOUNG_GENERATION_CAP_BYTES = 16 * 1024 * 1024;

function youngGenerationBytes(): number {
  return getHeapSpaceStatistics().find((space) => space.space_name === 'new_space')?.space_size ?? 0;
}

/**
 * Stops the young generation's growth once it has reached `capBytes`. A doubling
 * happens only in a scavenge, and each is reported before the next can run
 * out of room, so the cap holds to one doubling at most of where it is checked.
 */
export function capYoungGeneration(capBytes: number = YOUNG_GENERATION_CAP_BYTES): void {
  const stopIfReached = (): boolean => {
    if (youngGenerationBytes() < capBytes) return false;
    setFlagsFromString('--semi-space-growth-factor=1');
    return true;
  };
  if (stopIfReached()) return;
  const observer = new PerformanceObserver(() => {
    if (stopIfReached()) observer.disconnect();
  });
  observer.observe({ entryTypes: ['gc'] });
}
