// Crash: `kill -9` of the mount process, then `ebs-fuse mount --resume` on the
// same mountpoint (after the clean-up its error message asks for). Every byte
// an fsync acknowledged reads back after the resume, an interrupted write reads
// as old or new data and nothing else, and the completed snapshot, read back
// with GetSnapshotBlock, equals the intended image byte for byte. local-ebs
// checks ChangedBlocksCount and the LINEAR checksum at completion, so a
// completion that succeeds also proves both cover the blocks of every run.
// The single kill after an fsync is in mount-resume-readonly.test.ts.
import { strict as assert } from 'node:assert';
import { setLocalEbsFaults } from '../../src/local-ebs/admin-client';
import { ScenarioContext } from './support';
import { randomCrashPlan, runCrashPlan, MIB, type CrashPlan } from './reliability-support';

/** Seeds of the random plans in `npm test`; `npm run soak` runs many more. */
const TEST_SEEDS = [1, 2, 3].map((n) => (Date.now() + n * 7919) % 1_000_000);

describe('reliability: kill -9 of the mount and --resume', function () {
  this.timeout(180_000);
  const context = new ScenarioContext();

  before(async () => {
    // PUTs take a little while, so that a kill finds uploads in flight (intents without acks).
    await context.setUp('latency=0-20ms,ops=put');
  });

  after(async () => {
    await context.tearDown();
  });

  it('after an fsync, in the middle of a dd: --resume, finish the dd, unmount; the snapshot is the intended image', async () => {
    const plan: CrashPlan = {
      name: 'fixed',
      volumeGiB: 1,
      cacheSize: '32MiB',
      sourceBytes: 64 * MIB,
      steps: [
        // Acknowledged by its fsync, with partial blocks at both ends.
        {
          chunk: { offsetBytes: 3 * MIB + 1234, lengthBytes: 10 * MIB, sourceOffsetBytes: 0, zeros: false, ddBlockBytes: MIB },
          redo: true,
        },
        // Over the end of the first one; killed half-way, then written again from the start.
        {
          chunk: { offsetBytes: 9 * MIB + 777, lengthBytes: 40 * MIB, sourceOffsetBytes: 16 * MIB, zeros: false, ddBlockBytes: 128 * 1024 },
          kill: { during: 'write', fraction: 0.5 },
          redo: true,
        },
        { chunk: { offsetBytes: 60 * MIB, lengthBytes: 4 * MIB + 5, sourceOffsetBytes: 5, zeros: false, ddBlockBytes: 4096 }, redo: true },
      ],
    };
    const outcome = await runCrashPlan(context, plan);
    assert.equal(outcome.kills, 1);
    assert.equal(outcome.killsOnTarget, 1, 'the kill landed while dd was still writing');
    assert.equal(outcome.bytesLost, 0);
  });

  for (const seed of TEST_SEEDS) {
    it(`kills at random points (seed ${seed}; replay a plan with SOAK_CRASH_SEEDS=${seed} npm run soak)`, async () => {
      process.stderr.write(`      crash seed ${seed}\n`);
      await setLocalEbsFaults(context.endpoint.endpoint, context.endpoint, 'latency=0-20ms,ops=put');
      const plan = randomCrashPlan(seed, { chunks: 6, kills: 2, spanBytes: 48 * MIB, maxChunkBytes: 24 * MIB, finalFlushKill: true });
      const outcome = await runCrashPlan(context, plan);
      assert.ok(outcome.kills >= 2);
      assert.equal(outcome.bytesLost, 0);
    });
  }

  // With a bounded local copy, blocks streamed whole are held nowhere after the
  // resume and a block in flight may settle as its old content; fsync'd bytes
  // must all be in the completed snapshot all the same.
  for (const [diskCacheSize, seed] of [
    ['0', TEST_SEEDS[0] + 1],
    ['4MiB', TEST_SEEDS[1] + 1],
  ] as const) {
    it(`kills at random points with --disk-cache-size ${diskCacheSize} (seed ${seed})`, async () => {
      process.stderr.write(`      crash seed ${seed}, --disk-cache-size ${diskCacheSize}\n`);
      await setLocalEbsFaults(context.endpoint.endpoint, context.endpoint, 'latency=0-20ms,ops=put');
      const plan = randomCrashPlan(seed, {
        chunks: 6,
        kills: 2,
        spanBytes: 48 * MIB,
        maxChunkBytes: 24 * MIB,
        finalFlushKill: true,
        diskCacheSize,
      });
      const outcome = await runCrashPlan(context, plan);
      assert.ok(outcome.kills >= 2);
      assert.equal(outcome.bytesLost, 0);
    });
  }
});
