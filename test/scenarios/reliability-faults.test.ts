// Faults: local-ebs answers 10% of requests with 500, 5% with throttling, resets
// 1% of connections and adds 0-50 ms to each. dd (with fsync) and an ext4 file
// system built on the mounted file (mkfs.ext4 -E nodiscard, loop mount, copy
// files) must come out byte-identical in the completed snapshot, with no fsync,
// close or upload failing: the retry policy absorbs every fault.
import { strict as assert } from 'node:assert';
import { ScenarioContext } from './support';
import { finalFailureLines, runDdWorkload, runExt4Workload, RELIABILITY_FAULTS, MIB } from './reliability-support';

/** The faults were there to absorb: the test proves nothing without them (about 15 % of some hundred requests). */
function expectErrorFaults(byKind: Record<string, number>): void {
  const errors = (byKind['500'] ?? 0) + (byKind.throttle ?? 0) + (byKind.reset ?? 0);
  process.stderr.write(`      faults injected: ${JSON.stringify(byKind)}\n`);
  assert.ok(errors >= 5, `only ${errors} error faults were injected: ${JSON.stringify(byKind)}`);
}

describe(`reliability: faults ${RELIABILITY_FAULTS}`, function () {
  this.timeout(240_000);
  const context = ScenarioContext.forSuite(RELIABILITY_FAULTS);

  it('dd with fsync at random offsets and sizes: byte-identical snapshot, no fsync failed', async () => {
    const seed = Date.now() % 1_000_000;
    process.stderr.write(`      dd seed ${seed}\n`);
    const outcome = await runDdWorkload(context, { seed, chunks: 8, spanBytes: 96 * MIB, maxChunkBytes: 16 * MIB, cacheSize: '32MiB' });
    assert.equal(outcome.bytesLost, 0);
    assert.deepEqual(finalFailureLines(outcome.mountStderr), []);
    expectErrorFaults(outcome.faultsByKind ?? {});
  });

  it('mkfs.ext4 -E nodiscard, loop mount, copy files: byte-identical snapshot, e2fsck clean, same tree, no fsync failed', async () => {
    const seed = Date.now() % 1_000_000;
    process.stderr.write(`      ext4 seed ${seed}\n`);
    const outcome = await runExt4Workload(context, { seed, files: 300, largeFiles: 3, cacheSize: '64MiB' });
    assert.equal(outcome.bytesLost, 0);
    assert.deepEqual(finalFailureLines(outcome.mountStderr), []);
    expectErrorFaults(outcome.faultsByKind ?? {});
  });
});
