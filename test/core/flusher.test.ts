import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sha256Digest } from '../../src/ebs/checksum';
import { BLOCK_SIZE_BYTES, SnapshotApiError } from '../../src/ebs/client';
import { MemorySnapshotClient } from '../../src/ebs/memory-client';
import { BlockCache, BlockLocks, type CachedBlock } from '../../src/core/block-cache';
import { BlockStore } from '../../src/core/block-store';
import { Flusher } from '../../src/core/flusher';

const B = BLOCK_SIZE_BYTES;

interface Harness {
  client: MemorySnapshotClient;
  snapshotId: string;
  cache: BlockCache;
  store: BlockStore;
  flusher: Flusher;
  failures: string[];
  /** Most PUTs in flight at once, overall and of one block. */
  peak: { all: number; oneBlock: number };
}

describe('core: flusher (uploads and write-back)', () => {
  let directory: string;
  const stores: BlockStore[] = [];
  beforeEach(() => {
    directory = mkdtempSync(path.join(os.tmpdir(), 'ebs-fuse-flusher-'));
  });
  afterEach(async () => {
    for (const store of stores.splice(0)) await store.close();
    rmSync(directory, { recursive: true, force: true });
  });

  async function harness(options: {
    concurrency: number;
    zeroSkipAllowed?: boolean;
    diskBudget?: number;
    failPuts?: boolean;
    /** Every PUT waits for this before it reaches the client. */
    putGate?: Promise<void>;
  }): Promise<Harness> {
    const peak = { all: 0, oneBlock: 0 };
    let inFlight = 0;
    const perBlock = new Map<number, number>();
    const inner = new MemorySnapshotClient({
      latencyMs: 5,
      failBefore: (operation) =>
        options.failPuts && operation === 'put'
          ? new SnapshotApiError('injected AccessDenied', 'AccessDeniedException', 'permanent', 403)
          : undefined,
    });
    // Counts PUTs in flight around the real client.
    const client = Object.assign(Object.create(inner) as MemorySnapshotClient, {
      putSnapshotBlock: async (params: Parameters<MemorySnapshotClient['putSnapshotBlock']>[0]) => {
        inFlight += 1;
        perBlock.set(params.blockIndex, (perBlock.get(params.blockIndex) ?? 0) + 1);
        peak.all = Math.max(peak.all, inFlight);
        peak.oneBlock = Math.max(peak.oneBlock, perBlock.get(params.blockIndex)!);
        try {
          await options.putGate;
          await inner.putSnapshotBlock(params);
        } finally {
          inFlight -= 1;
          perBlock.set(params.blockIndex, perBlock.get(params.blockIndex)! - 1);
        }
      },
    });
    const { snapshotId } = await inner.startSnapshot({ volumeSizeGiB: 1 });
    const { store } = await BlockStore.open({
      directory,
      diskBudget: options.diskBudget ?? 16 * B,
      directCopyWritesAtOnce: 4,
      log: () => {},
    });
    stores.push(store);
    const locks = new BlockLocks();
    const failures: string[] = [];
    // eslint-disable-next-line prefer-const -- the cache's write-back callback closes over it before it is assigned
    let flusher: Flusher | undefined;
    const cache = new BlockCache({
      capacityBlocks: 64,
      writerWaitTimeoutMs: 2000,
      zeroEntriesMax: 16,
      requestWriteback: () => flusher?.writeBack(),
      isLocked: (index) => locks.isLocked(index),
    });
    flusher = new Flusher({
      client,
      snapshotId,
      cache,
      locks,
      store,
      concurrency: options.concurrency,
      dirtyHighWaterBlocks: 1000,
      zeroSkipAllowed: options.zeroSkipAllowed ?? true,
      onUploadFailed: (index, message) => failures.push(`${index}: ${message}`),
    });
    return { client: inner, snapshotId, cache, store, flusher, failures, peak };
  }

  async function dirty(h: Harness, index: number, fill: number, ranges: Array<[number, number]> = [[0, B]]): Promise<CachedBlock> {
    const block = h.cache.get(index) ?? h.cache.insert(index);
    await h.cache.makeWritable(block, h.store.hasBase(index));
    for (const [start, length] of ranges) {
      block.data!.fill(fill, start, start + length);
      h.cache.noteWritten(block, start, length);
    }
    return block;
  }

  async function settled(h: Harness): Promise<void> {
    // A queued block starts as soon as a slot frees, before any waiter wakes.
    while (h.flusher.uploadsInFlight > 0) await h.flusher.uploadEnded.wait(1000);
  }

  it('keeps PUTs within the concurrency and never two of one block, even when a block is rewritten meanwhile', async () => {
    const h = await harness({ concurrency: 3 });
    const blocks = await Promise.all(Array.from({ length: 12 }, (_, index) => dirty(h, index, index + 1)));
    for (const block of blocks) h.flusher.enqueue(block);
    // Rewritten while its PUT may be in flight, and asked for again.
    await dirty(h, 0, 99);
    h.flusher.enqueue(blocks[0]);
    await settled(h);
    for (const block of blocks) if (block.isDirty) h.flusher.enqueue(block);
    await settled(h);
    assert.ok(h.peak.all <= 3, `${h.peak.all} PUTs in flight`);
    assert.equal(h.peak.oneBlock, 1);
    assert.ok(h.client.imageRange(h.snapshotId, 0, 1).equals(Buffer.alloc(B, 99)));
    assert.equal(h.failures.length, 0);
  });

  it('write-back takes blocks written whole first, then other complete blocks, coldest first, and leaves a block whose base is held nowhere', async () => {
    const h = await harness({ concurrency: 2, diskBudget: 0 });
    // Block 5 was uploaded by an earlier run, without a copy: its base is held nowhere.
    const digest = sha256Digest(Buffer.alloc(B, 7));
    h.store.acknowledged(5, digest, await h.store.announce(5, digest, Buffer.alloc(B, 7), { plan: 'none', kind: 'whole' }), 'whole');
    h.store.uploadEnded(5);
    assert.equal(h.store.base(5), 'nowhere');
    // Cold to hot: 1 written whole, 5 written in part over its held-nowhere base, 2 written in part
    // over zeros (complete: the rest is known to be zeros), 3 written whole, 4 written whole.
    await dirty(h, 1, 1);
    await dirty(h, 5, 2, [[0, 4096]]);
    await dirty(h, 2, 2, [[0, 4096]]);
    await dirty(h, 3, 3);
    await dirty(h, 4, 4);
    assert.equal(h.cache.peek(5)!.baseMerged, false);
    h.flusher.writeBack(2);
    await settled(h);
    assert.deepEqual(
      [1, 2, 3, 4].map((index) => h.cache.peek(index)!.isDirty),
      [false, true, false, true],
      'the coldest blocks written whole went first',
    );
    h.flusher.writeBack(2);
    await settled(h);
    assert.deepEqual(
      [2, 4].map((index) => h.cache.peek(index)!.isDirty),
      [false, false],
      'then the other whole one, then the complete one written in part, passing over 5',
    );
    h.flusher.writeBack(5);
    await settled(h);
    assert.equal(h.cache.peek(5)!.isDirty, true, 'left for fsync to report');
    assert.equal(h.failures.length, 0, 'nothing was tried that could only fail');
    // Asked for explicitly (fsync does), it fails with the reason, and the block stays dirty.
    h.flusher.enqueue(h.cache.peek(5)!);
    await settled(h);
    assert.match(h.failures.join('\n'), /^5: block 5 .* is held nowhere/);
    assert.match(h.cache.peek(5)!.lastFailure!.message, /held nowhere/);
  });

  it('prepares uploads while every PUT slot is taken: hashed and announced, each waits for a slot', async () => {
    let openGate = (): void => {};
    const putGate = new Promise<void>((resolve) => (openGate = resolve));
    const h = await harness({ concurrency: 4, putGate }); // a quarter of 4: one prepared ahead
    const blocks = await Promise.all(Array.from({ length: 6 }, (_, index) => dirty(h, index, index + 1)));
    for (const block of blocks) h.flusher.enqueue(block);
    assert.equal(h.flusher.uploadsInFlight, 5, 'four PUT slots and one upload prepared ahead');
    const attempted = (): number => blocks.filter((block) => h.store.wasAttempted(block.index)).length;
    const deadlineMs = Date.now() + 5000;
    while ((h.peak.all < 4 || attempted() < 5) && Date.now() < deadlineMs) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    // Time for a fifth PUT to start, were the slots not a bound.
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(h.peak.all, 4, 'four PUTs at the gate');
    assert.deepEqual(
      blocks.map((block) => h.store.wasAttempted(block.index)),
      [true, true, true, true, true, false],
      'the fifth has its intent recorded before a slot is free; the sixth waits in the queue',
    );
    openGate();
    await settled(h);
    assert.equal(h.peak.all, 4);
    assert.deepEqual(
      blocks.map((block) => block.isDirty),
      [false, false, false, false, false, false],
    );
  });

  it('sends blocks streamed whole (front to back) in batches of a quarter of the PUT slots once the window has room; blocks written otherwise wait', async () => {
    const h = await harness({ concurrency: 8 }); // batches of 2
    const streamed = await dirty(h, 1, 1, [
      [0, B / 4],
      [B / 4, B / 4],
      [B / 2, B / 2],
    ]);
    const shuffled = await dirty(h, 2, 2, [
      [B / 2, B / 2],
      [0, B / 2],
    ]);
    const partial = await dirty(h, 3, 3, [[0, B / 2]]);
    assert.equal(streamed.streamedWholeSinceUpload, true);
    assert.equal(shuffled.writtenWholeSinceUpload && !shuffled.streamedWholeSinceUpload, true);
    for (const block of [streamed, shuffled, partial]) h.flusher.noteWritten(block);
    assert.equal(h.flusher.uploadsInFlight, 0, 'one streamed block is not a batch');
    h.flusher.noteWritten(await dirty(h, 4, 4));
    assert.equal(h.flusher.uploadsInFlight, 2, 'the batch of two goes at once');
    await settled(h);
    assert.deepEqual(
      [1, 2, 3, 4].map((index) => h.cache.peek(index)!.isDirty),
      [false, true, true, false],
    );
    assert.equal(h.client.callCounts.put, 2);

    // A full window (8 PUT slots and two prepared ahead): the batch waits for room, then goes when uploads end.
    const busy = await harness({ concurrency: 8 });
    for (let index = 10; index < 19; index += 1) busy.flusher.enqueue(await dirty(busy, index, index, [[0, B / 2]]));
    assert.equal(busy.flusher.uploadsInFlight, 9);
    for (const index of [1, 2]) busy.flusher.noteWritten(await dirty(busy, index, index));
    assert.equal(busy.flusher.uploadsInFlight, 9, 'one slot is not room for a batch of two');
    await settled(busy);
    assert.deepEqual(
      [1, 2].map((index) => busy.cache.peek(index)!.isDirty),
      [false, false],
    );
    assert.equal(busy.client.callCounts.put, 11);
  });

  it('skips never-sent zero blocks only where the zero-block rule allows, and sends zeros over sent data', async () => {
    const h = await harness({ concurrency: 2 });
    h.flusher.enqueue(await dirty(h, 4, 0));
    await settled(h);
    assert.equal(h.flusher.zeroBlocksSkipped, 1);
    assert.equal(h.client.callCounts.put, 0);
    h.flusher.enqueue(await dirty(h, 4, 9));
    await settled(h);
    h.flusher.enqueue(await dirty(h, 4, 0));
    await settled(h);
    assert.equal(h.client.callCounts.put, 2, 'zeros over data that was sent are sent');
    assert.equal(h.store.base(4), 'zeros');

    const child = await harness({ concurrency: 1, zeroSkipAllowed: false });
    child.flusher.enqueue(await dirty(child, 4, 0));
    await settled(child);
    assert.equal(child.client.callCounts.put, 1);
  });

  it('a PUT that fails keeps the block dirty with its failure, told once per failure', async () => {
    const h = await harness({ concurrency: 1, failPuts: true });
    const block = await dirty(h, 5, 7);
    h.flusher.enqueue(block);
    await settled(h);
    assert.equal(block.isDirty, true);
    assert.match(block.lastFailure!.message, /injected/);
    assert.deepEqual(
      h.failures.map((line) => line.split(':')[0]),
      ['5'],
    );
  });
});
