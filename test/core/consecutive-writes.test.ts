import assert from 'node:assert/strict';
import { ConsecutiveWrites } from '../../src/core/consecutive-writes';

const SLOT = 4;

/** A writeAt whose calls are recorded and finished by the test. */
function controlledWrites(): {
  calls: Array<{ slots: number[]; finish: (error?: Error) => void }>;
  writeAt: (buffers: Buffer[], positionBytes: number) => Promise<void>;
} {
  const calls: Array<{ slots: number[]; finish: (error?: Error) => void }> = [];
  const writeAt = (buffers: Buffer[], positionBytes: number): Promise<void> =>
    new Promise((resolve, reject) => {
      const first = positionBytes / SLOT;
      calls.push({ slots: buffers.map((_, i) => first + i), finish: (error) => (error ? reject(error) : resolve()) });
    });
  return { calls, writeAt };
}

const settled = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('core: consecutive writes (the local copy sends runs of slots together)', () => {
  it('sends a write at once while there is room, and those that come meanwhile as runs of consecutive slots', async () => {
    const { calls, writeAt } = controlledWrites();
    const writes = new ConsecutiveWrites(writeAt, SLOT, 1, 3);
    const done: number[] = [];
    const write = (slot: number): Promise<void> => writes.write(slot, Buffer.alloc(SLOT, slot)).then(() => void done.push(slot));
    const all = [write(5), write(9), write(7), write(6), write(8), write(10), write(20)];
    assert.deepEqual(
      calls.map((call) => call.slots),
      [[5]],
      'one in flight at most',
    );
    calls[0].finish();
    await settled();
    assert.deepEqual(done, [5]);
    assert.deepEqual(calls[1].slots, [6, 7, 8], 'the lowest waiting slot and the ones right after it, at most three');
    calls[1].finish();
    await settled();
    assert.deepEqual(calls[2].slots, [9, 10]);
    calls[2].finish();
    await settled();
    assert.deepEqual(calls[3].slots, [20]);
    calls[3].finish();
    await Promise.all(all);
    assert.deepEqual(
      done.sort((a, b) => a - b),
      [5, 6, 7, 8, 9, 10, 20],
    );
    assert.equal(calls.length, 4, 'seven copies in four writes');
  });

  it('a failed write rejects every copy it carried, and the next run still goes out', async () => {
    const { calls, writeAt } = controlledWrites();
    const writes = new ConsecutiveWrites(writeAt, SLOT, 2, 16);
    const first = writes.write(0, Buffer.alloc(SLOT));
    const second = writes.write(4, Buffer.alloc(SLOT));
    const waiting = [writes.write(1, Buffer.alloc(SLOT)), writes.write(2, Buffer.alloc(SLOT))];
    assert.equal(calls.length, 2, 'two in flight at most');
    calls[1].finish(new Error('ENOSPC'));
    await assert.rejects(second, /ENOSPC/);
    assert.deepEqual(calls[2].slots, [1, 2]);
    calls[2].finish(new Error('EIO'));
    for (const copy of waiting) await assert.rejects(copy, /EIO/);
    calls[0].finish();
    await first;
  });
});
