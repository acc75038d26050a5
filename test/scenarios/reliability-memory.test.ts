// Bounded memory under a slow server: every PUT takes 200 ms and only 4 are in
// flight (about 10 MiB/s), while dd writes as fast as FUSE takes it. The mount
// process's RSS, sampled from /proc every 100 ms for the whole run (writes,
// fsync, final flush), stays under --cache-size + 150 MiB; the writer waits for
// uploads (dd takes at least as long as the uploads that had to make room)
// instead of the cache growing; no write or fsync fails or times out.
import { strict as assert } from 'node:assert';
import { ScenarioContext } from './support';
import { runMemory, MIB } from './reliability-support';

const CACHE_SIZE_BYTES = 32 * MIB;
const RSS_ALLOWANCE_BYTES = 150 * MIB;
const PUT_LATENCY_MS = 200;

describe('reliability: memory stays bounded under a slow server', function () {
  this.timeout(240_000);
  const context = ScenarioContext.forSuite(`latency=${PUT_LATENCY_MS}ms,ops=put`);

  for (const { uploadConcurrency, writeBytes } of [
    // Uploads at about 10 MiB/s: dd is far faster and must wait.
    { uploadConcurrency: 4, writeBytes: 96 * MIB },
    // The default concurrency: 64 PUTs in flight, blocks churning through the cache quickly.
    { uploadConcurrency: 64, writeBytes: 256 * MIB },
  ]) {
    it(`RSS < --cache-size + 150 MiB, writers wait, no ETIMEDOUT/EIO (latency=${PUT_LATENCY_MS}ms, --upload-concurrency ${uploadConcurrency})`, async () => {
      const outcome = await runMemory(context, {
        cacheSizeBytes: CACHE_SIZE_BYTES,
        uploadConcurrency,
        putLatencyMs: PUT_LATENCY_MS,
        writeBytes,
      });
      process.stderr.write(
        `      max RSS ${(outcome.maxRssBytes / MIB).toFixed(0)} MiB (${outcome.samples} samples); ` +
          `dd ${(outcome.writeMs / 1000).toFixed(1)} s, at least ${(outcome.writeLowerBoundMs / 1000).toFixed(1)} s if the cache stays bounded\n`,
      );
      assert.equal(outcome.ddStderr, '');
      assert.equal(outcome.bytesLost, 0);
      assert.ok(outcome.samples >= 20, `only ${outcome.samples} RSS samples`);
      assert.ok(outcome.maxRssBytes < CACHE_SIZE_BYTES + RSS_ALLOWANCE_BYTES, `max RSS ${(outcome.maxRssBytes / MIB).toFixed(1)} MiB`);
      assert.ok(outcome.writeMs >= outcome.writeLowerBoundMs, `dd took ${outcome.writeMs} ms: the cache must have grown past its size`);
    });
  }
});
