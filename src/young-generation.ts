// A cap on V8's young generation, set from inside the running process.
//
// V8 doubles the young generation's two semi-spaces (1 → 2 → 4 → 8 → 16 MiB in
// Node 20) as objects keep surviving scavenges, which a mount with 64 PUTs in
// flight always does sooner or later. The last doubling adds 16 MiB of resident
// memory beside the block cache, which had put the mount over its bound of
// --cache-size + 150 MiB in some runs (docs/BENCHMARKS.md). The maximum
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

/** V8's own --semi-space-growth-factor: each doubling doubles. */
const V8_SEMI_SPACE_GROWTH_FACTOR = 2;

/**
 * Keeps the young generation from growing past `capBytes`. It is checked after
 * every GC, and V8 doubles it only after survivors worth its whole size since
 * the last doubling, so no two doublings fall between two checks. V8 also
 * shrinks it when allocation runs slow (an idle mount), so below the cap
 * growth is let back in, and a mount that writes again gets its 16 MiB again
 * (a shrink to a size that is not a power-of-two share of the cap can make
 * the next doubling pass the cap once, by less than the cap).
 */
export function capYoungGeneration(capBytes: number = YOUNG_GENERATION_CAP_BYTES): void {
  let growthStopped = false;
  const check = (): void => {
    const atCap = youngGenerationBytes() >= capBytes;
    if (atCap === growthStopped) return;
    growthStopped = atCap;
    setFlagsFromString(`--semi-space-growth-factor=${atCap ? 1 : V8_SEMI_SPACE_GROWTH_FACTOR}`);
  };
  new PerformanceObserver(check).observe({ entryTypes: ['gc'] });
}
