// Model test: random sequences of writes, reads, truncates, fsyncs and injected
// upload failures against the real Volume over an in-memory client, checked
// against a flat reference image, with a local copy large enough for every
// block, a small one, and none. Invariants:
// - every read equals the reference, or (only with a small or no local copy)
//   fails with EIO because its block is held nowhere; never other bytes;
// - after each successful fsync, the client's blocks equal the reference;
// - block buffers never exceed the cache capacity;
// - with room for every block, nothing is ever held nowhere.
// A block reported held nowhere is then written whole, which must work.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BLOCK_SIZE_BYTES, SnapshotApiError } from '../../src/ebs/client';
import { MemorySnapshotClient } from '../../src/ebs/memory-client';
import { FileOperationError } from '../../src/core/file-errors';
import { DEFAULT_LIMITS } from '../../src/core/limits';
import type { DiskBudget } from '../../src/core/local-copy';
import { Volume } from '../../src/core/volume';
import { SeededRandom } from '../support/random';

const B = BLOCK_SIZE_BYTES;
const REGION_BLOCKS = 48; // 24 MiB exercised through a 16 MiB cache: eviction happens
const CACHE_BLOCKS = 32;
const STEPS = 400;

async function runModel(
  seed: number,
  diskCacheSizeBytes: DiskBudget,
): Promise<{ fsyncOk: number; fsyncFailed: number; puts: number; heldNowhere: number }> {
  const random = new SeededRandom(seed);
  // Uploads draw from their own stream: how many PUTs run depends on timing,
  // and drawing from `random` would make the operation sequence depend on it too.
  const faultRandom = new SeededRandom(seed + 1_000_003);
  let failureRate = 0;
  const client = new MemorySnapshotClient({
    latencyMs: 1,
    failBefore: (operation) =>
      operation === 'put' && faultRandom.next() < failureRate
        ? new SnapshotApiError('injected', 'InternalServerException', 'transient', 500)
        : undefined,
  });
  const { snapshotId } = await client.startSnapshot({ volumeSizeGiB: 1 });
  const stateDirectory = mkdtempSync(path.join(os.tmpdir(), 'ebs-fuse-model-'));
  const volume = await Volume.open({
    client,
    snapshotId,
    volumeSizeGiB: 1,
    stateDirectory,
    limits: { ...DEFAULT_LIMITS, cacheSizeBytes: CACHE_BLOCKS * B, uploadConcurrency: 6, writerWaitTimeoutMs: 10_000, diskCacheSizeBytes },
    zeroSkipAllowed: true,
    log: () => {},
  });
  const reference = Buffer.alloc(REGION_BLOCKS * B);
  let fsyncOk = 0;
  let fsyncFailed = 0;
  let heldNowhere = 0;
  /** EIO for a block held nowhere is an allowed answer only with a bounded local copy; the block is then written whole. */
  const heldNowhereRepaired = async (error: unknown, context: string): Promise<boolean> => {
    const match = error instanceof FileOperationError && error.errno === 'EIO' ? /block (\d+) .*held nowhere/.exec(error.message) : null;
    if (!match) return false;
    assert.notEqual(diskCacheSizeBytes, 'auto', `held nowhere with room for every block, ${context}: ${(error as Error).message}`);
    heldNowhere += 1;
    const index = Number(match[1]);
    assert.equal(await volume.write(index * B, reference.subarray(index * B, (index + 1) * B)), B, context);
    return true;
  };
  try {
    for (let step = 0; step < STEPS; step += 1) {
      const choice = random.next();
      const context = `seed ${seed} step ${step}`;
      if (choice < 0.55) {
        const offset = random.int(0, reference.length - 1);
        const length = Math.min(random.int(1, 3 * B), reference.length - offset);
        const data = random.next() < 0.15 ? Buffer.alloc(length) : random.bytes(length);
        // Writes succeed whatever the uploads do, as long as room appears in time.
        try {
          assert.equal(await volume.write(offset, data), length, context);
          data.copy(reference, offset);
        } catch (error) {
          // Blocks before the one held nowhere were written; the write is then done again whole.
          if (!(await heldNowhereRepaired(error, context))) throw error;
          data.copy(reference, offset);
          assert.equal(await volume.write(offset, data), length, context);
        }
      } else if (choice < 0.8) {
        const offset = random.int(0, reference.length - 1);
        const length = Math.min(random.int(1, 2 * B), reference.length - offset);
        try {
          assert.ok((await volume.read(offset, length)).equals(reference.subarray(offset, offset + length)), `read mismatch, ${context}`);
        } catch (error) {
          if (!(await heldNowhereRepaired(error, context))) throw error;
        }
      } else if (choice < 0.85) {
        const length = random.int(0, reference.length);
        // Zeros from `length` to the end of the region (and of the volume).
        await volume.truncate(length);
        reference.fill(0, length);
      } else if (choice < 0.9) {
        failureRate = random.next() < 0.5 ? 0 : 0.3;
      } else {
        // A block held nowhere is written whole and the fsync tried again: that
        // one must then succeed unless failures are injected or another block is held nowhere.
        for (let attempt = 0; attempt < 4; attempt += 1) {
          try {
            await volume.fsync();
            fsyncOk += 1;
            assert.ok(client.imageRange(snapshotId, 0, REGION_BLOCKS).equals(reference), `snapshot differs after fsync, ${context}`);
            break;
          } catch (error) {
            assert.ok(error instanceof FileOperationError && error.errno === 'EIO', `fsync failed with ${String(error)}`);
            fsyncFailed += 1;
            if (await heldNowhereRepaired(error, context)) continue;
            assert.ok(failureRate > 0, `fsync failed without injected failures, ${context}: ${String(error)}`);
            break;
          }
        }
      }
      assert.ok(volume.buffersInUse <= CACHE_BLOCKS, `buffers ${volume.buffersInUse} > ${CACHE_BLOCKS}, ${context}`);
    }
    failureRate = 0;
    // Uploads that began while failures were injected may still fail once;
    // blocks held nowhere under partial writes are written whole.
    for (let attempt = 0; ; attempt += 1) {
      try {
        await volume.flushAll(30_000);
        break;
      } catch (error) {
        if (!(await heldNowhereRepaired(error, `final flush, seed ${seed}`))) assert.ok(attempt < 2, String(error));
      }
    }
    assert.ok(client.imageRange(snapshotId, 0, REGION_BLOCKS).equals(reference), `final snapshot differs, seed ${seed}`);
    const figures = volume.completionFigures();
    assert.equal(await client.completeSnapshot({ snapshotId, ...figures }), 'completed');
    assert.equal(volume.stats().heldNowhereErrors >= heldNowhere, true);
    return { fsyncOk, fsyncFailed, puts: client.callCounts.put, heldNowhere };
  } finally {
    await volume.close();
    rmSync(stateDirectory, { recursive: true, force: true });
  }
}

describe('core: volume model (random operations vs a flat reference image)', function () {
  this.timeout(120_000);
  for (const [budgetName, budget] of [
    ['room for every block', 'auto'],
    ['a local copy of 8 blocks', 8 * B],
    ['no local copy', 0],
  ] as Array<[string, DiskBudget]>) {
    for (const seed of budget === 'auto' ? [11, 22, 33, 44, 55, 66] : [11, 22, 33]) {
      it(`${budgetName}, seed ${seed}`, async () => {
        const { fsyncOk, fsyncFailed, puts, heldNowhere } = await runModel(seed, budget);
        // The run must have exercised both outcomes of fsync and real uploads.
        assert.ok(fsyncOk > 0 && puts > 0, `fsync ok ${fsyncOk}, failed ${fsyncFailed}, puts ${puts}`);
        // Without room for every block, the run must have met blocks held nowhere.
        if (budget === 0) assert.ok(heldNowhere > 0, 'no block was held nowhere');
      });
    }
  }
});
