// Faults: local-ebs answers 10% of requests with 500, 5% with throttling, resets
// 1% of connections and adds 0-50 ms to each. dd (with fsync) and an ext4 file
// system built on the mounted file (mkfs.ext4 -E nodiscard, loop mount, copy
// files) must come out byte-identical in the completed snapshot, with no fsync,
// close or upload failing: the retry policy absorbs every fault.
import { strict as assert } from 'node:assert';
import { getLocalEbsStats } from '../../src/local-ebs/admin-client';
import { ScenarioContext } from './support';
import { finalFailureLines, runDdWorkload, runExt4Workload, ISSUE_FAULTS, MIB } from './reliability-support';

describe(`reliability: faults ${ISSUE_FAULTS}`, function () {
  this.timeout(240_000);
  const context = new ScenarioContext();

  before(async () => {
    await context.setUp(ISSUE_FAULTS);
  });

  after(async () => {
    await context.tearDown();
  });

  it('dd with fsync at random offsets and sizes: byte-identical snapshot, no fsync failed', async () => {
    const seed = Date.now() % 1_000_000;
    process.stderr.write(`      dd seed ${seed}\n`);
    const outcome = await runDdWorkload(context, { seed, chunks: 8, spanBytes: 96 * MIB, maxChunkBytes: 16 * MIB, cacheSize: '32MiB' });
    assert.equal(outcome.bytesLost, 0);
    assert.deepEqual(finalFailureLines(outcome.mountStderr), []);
    // The faults were there to absorb: the test would prove nothing without them.
    assert.ok(outcome.faultsInjected >= 10, `only ${outcome.faultsInjected} faults were injected`);
  });

  it('mkfs.ext4 -E nodiscard, loop mount, copy files: byte-identical snapshot, e2fsck clean, same tree, no fsync failed', async () => {
    const seed = Date.now() % 1_000_000;
    process.stderr.write(`      ext4 seed ${seed}\n`);
    const outcome = await runExt4Workload(context, { seed, files: 300, largeFiles: 3, cacheSize: '64MiB' });
    assert.equal(outcome.bytesLost, 0);
    assert.deepEqual(finalFailureLines(outcome.mountStderr), []);
    assert.ok(outcome.faultsInjected >= 10, `only ${outcome.faultsInjected} faults were injected`);
    const stats = await getLocalEbsStats(context.localEbs.endpoint, context.localEbs.credentials);
    for (const kind of ['500', 'throttle', 'reset']) assert.ok((stats.faultsInjected[kind] ?? 0) > 0, `no ${kind} fault was injected: ${JSON.stringify(stats.faultsInjected)}`);
  });
});
