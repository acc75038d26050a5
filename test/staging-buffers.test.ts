import assert from 'node:assert/strict';
import { AlignedBuffers, isPageAligned, StagingBuffers } from '../src/staging-buffers';

const KIB = 1024;

describe('staging-buffers: page-aligned memory', () => {
  it('AlignedBuffers hands out each of its buffers once, zeroed and page-aligned, in slabs, then none', () => {
    const buffers = new AlignedBuffers(5, 8 * KIB, 2);
    const taken = Array.from({ length: 5 }, () => buffers.take());
    assert.equal(buffers.take(), undefined, 'no more than the count');
    for (const buffer of taken) {
      assert.ok(buffer && isPageAligned(buffer));
      assert.equal(buffer.length, 8 * KIB);
      assert.ok(buffer.every((byte) => byte === 0));
    }
    assert.equal(new Set(taken.map((buffer) => buffer!.buffer)).size, 3, 'slabs of at most 2: 2 + 2 + 1');
    // Distinct memory: a write to one shows in no other.
    taken[0]!.fill(7);
    assert.ok(taken.slice(1).every((buffer) => buffer!.every((byte) => byte === 0)));
  });

  it('isPageAligned vouches only for views at page offsets into its own memory', () => {
    const [aligned] = [new AlignedBuffers(1, 8 * KIB).take()!];
    assert.equal(isPageAligned(aligned.subarray(4 * KIB)), true);
    assert.equal(isPageAligned(aligned.subarray(512)), false, 'not at a page offset');
    assert.equal(isPageAligned(Buffer.alloc(512 * KIB)), false, 'memory from elsewhere');
  });

  it('StagingBuffers lends a copy in an aligned buffer and waits for one when all are lent', async () => {
    const staging = StagingBuffers.allocate(1, 4 * KIB)!;
    const order: string[] = [];
    let release!: () => void;
    const first = staging.withCopyOf(Buffer.alloc(4 * KIB, 1), async (copy) => {
      assert.ok(isPageAligned(copy) && copy[0] === 1);
      order.push('first');
      await new Promise<void>((resolve) => (release = resolve));
    });
    const second = staging.withCopyOf(Buffer.alloc(4 * KIB, 2), async (copy) => {
      assert.equal(copy[0], 2);
      order.push('second');
    });
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(order, ['first'], 'the second waits for the only buffer');
    release();
    await Promise.all([first, second]);
    assert.deepEqual(order, ['first', 'second']);
  });
});
