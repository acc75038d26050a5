// Outage: local-ebs is killed (SIGKILL) while dd writes and fsyncs, and started
// again on the same port and data directory after a pause (30 s in `npm run
// soak`, 8 s here). Each dd either succeeds, or fails with EIO and succeeds when
// run again; acknowledged data reads back during the outage; the completed
// snapshot equals the intended image: never a wrong byte.
import { strict as assert } from 'node:assert';
import { ScenarioContext } from './support';
import { runOutage, MIB } from './reliability-support';

const OUTAGE_MS = 8000;

describe('reliability: local-ebs killed during writes and restarted', function () {
  this.timeout(240_000);
  const context = ScenarioContext.forSuite();

  it(`an outage of ${OUTAGE_MS / 1000} s: success or EIO then a successful retry, never a wrong byte`, async () => {
    const seed = Date.now() % 1_000_000;
    process.stderr.write(`      outage seed ${seed}\n`);
    const outcome = await runOutage(context, {
      seed,
      outageMs: OUTAGE_MS,
      chunks: 5,
      chunkBytes: 12 * MIB,
      cacheSize: '64MiB',
      attemptsPerChunk: 4,
    });
    assert.equal(outcome.bytesLost, 0);
    assert.ok(outcome.readDuringOutageMs >= 0, 'the read during the outage ran');
    // Served from memory or the read-back store: far below the retry policy's waits.
    assert.ok(outcome.readDuringOutageMs < 5000, `a read during the outage took ${outcome.readDuringOutageMs} ms`);
    process.stderr.write(`      ${outcome.eioFailures} dd runs failed with EIO and were run again\n`);
  });
});
