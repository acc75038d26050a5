import assert from 'node:assert/strict';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { BlockCache, type CachedBlock } from '../../src/core/block-cache';
import { FileOperationError } from '../../src/core/file-errors';
import { isPageAligned } from '../../src/staging-buffers';

const B = BLOCK_SIZE_BYTES;

function makeCache(capacityBlocks = 4, writerWaitTimeoutMs = 200): { cache: BlockCache; writebacks: { count: number } } {
  const writebacks = { count: 0 };
  const cache = new BlockCache({
    capacityBlocks,
    writerWaitTimeoutMs,
    zeroEntriesMax: 16,
    requestWriteback: () => {
      writebacks.count += 1;
    },
    isLocked: () => false,
  });
  return { cache, writebacks };
}

async function written(cache: BlockCache, index: number, pieces: Array<[number, number]> = [[0, B]]): Promise<CachedBlock> {
  const block = cache.get(index) ?? cache.insert(index);
  await cache.makeWritable(block, false);
  for (const [start, length] of pieces) cache.noteWritten(block, start, length);
  return block;
}

describe('core: block cache (the state table and its transitions)', () => {
  it('clean → dirty → uploading → clean, with the dirty count following', async () => {
    const { cache } = makeCache();
    const block = await written(cache, 1);
    assert.equal(cache.dirtyCount, 1);
    const view = cache.beginUpload(block);
    assert.equal(block.uploading, true);
    cache.acknowledge(block, view.generation);
    cache.endUpload(block, view.data);
    assert.equal(block.isClean, true);
    assert.equal(cache.dirtyCount, 0);
  });

  it('a write during an upload copies the buffer (COW) and leaves the block dirty after the ack', async () => {
    const { cache } = makeCache();
    const block = await written(cache, 1);
    const view = cache.beginUpload(block);
    await cache.makeWritable(block, false);
    assert.notEqual(block.data, view.data, 'the upload keeps its own buffer');
    assert.equal(cache.buffersInUse, 2);
    cache.noteWritten(block, 0, 10);
    cache.acknowledge(block, view.generation);
    cache.endUpload(block, view.data);
    assert.equal(block.isDirty, true);
    assert.equal(cache.dirtyCount, 1);
    assert.equal(cache.buffersInUse, 1, 'the upload-only buffer is given back');
  });

  it('refuses a second upload of a block and an upload of a clean one', async () => {
    const { cache } = makeCache();
    const block = await written(cache, 1);
    cache.beginUpload(block);
    assert.throws(() => cache.beginUpload(block), /a second upload/);
    const other = cache.insert(2);
    assert.throws(() => cache.beginUpload(other), /clean or not merged/);
  });

  it('tells a block written whole from one written only in part, per upload', async () => {
    const { cache } = makeCache(8);
    const quarter = B / 4;
    const streamed = await written(cache, 1, [
      [0, quarter],
      [quarter, quarter],
      [2 * quarter, quarter],
      [3 * quarter, quarter],
    ]);
    assert.equal(cache.beginUpload(streamed).written, 'whole');
    const outOfOrder = await written(cache, 2, [
      [quarter, quarter],
      [0, quarter],
      [2 * quarter, 2 * quarter],
    ]);
    assert.equal(cache.beginUpload(outOfOrder).written, 'whole', 'in any order');
    const small = await written(
      cache,
      3,
      Array.from({ length: B / 4096 }, (_, at) => [at * 4096, 4096] as [number, number]),
    );
    assert.equal(cache.beginUpload(small).written, 'whole', 'in writes of any size');
    const partial = await written(cache, 4, [
      [0, quarter],
      [2 * quarter, quarter],
    ]);
    assert.equal(cache.beginUpload(partial).written, 'pieces', 'writes that leave part of the block');
    const scattered = await written(
      cache,
      5,
      Array.from({ length: 65 }, (_, at) => [at * 8192, 4096] as [number, number]),
    );
    assert.equal(cache.beginUpload(scattered).written, 'pieces', 'too scattered to track');
    // The next generation starts afresh: a small write after an upload is a block written in part.
    const view = { data: streamed.data, generation: streamed.writeGeneration };
    cache.acknowledge(streamed, view.generation);
    cache.endUpload(streamed, view.data);
    cache.noteWritten(streamed, 0, 4096);
    assert.equal(cache.beginUpload(streamed).written, 'pieces');
  });

  it('merges the base into the bytes not written, once the written ranges are known', async () => {
    const { cache } = makeCache();
    const block = cache.insert(1);
    await cache.makeWritable(block, true);
    block.data!.fill(9, 100, 200);
    cache.noteWritten(block, 100, 100);
    assert.equal(block.baseMerged, false);
    assert.ok(block.isRangeWritten(120, 180));
    cache.mergeBase(block, Buffer.alloc(B, 1));
    assert.equal(block.baseMerged, true);
    assert.deepEqual([block.data![0], block.data![150], block.data![B - 1]], [1, 9, 1]);
  });

  it('keeps buffers within the capacity: a writer waits, bounded, then gets EIO and asks for write-back', async () => {
    const { cache, writebacks } = makeCache(2, 150);
    await written(cache, 1);
    await written(cache, 2);
    const started = Date.now();
    await assert.rejects(written(cache, 3), (error: Error) => error instanceof FileOperationError && error.errno === 'EIO');
    assert.ok(Date.now() - started >= 140);
    assert.ok(writebacks.count >= 1);
    assert.equal(cache.buffersInUse, 2);
  });

  it('once a wait for room ran out, the next writer fails at once, until room is made; then writers wait again', async () => {
    const { cache } = makeCache(2, 150);
    const first = await written(cache, 1);
    await written(cache, 2);
    await assert.rejects(written(cache, 3), /no upload finished within 150 ms/);
    let started = Date.now();
    await assert.rejects(
      written(cache, 4),
      (error: Error) => error instanceof FileOperationError && error.errno === 'EIO' && /still full/.test(error.message),
    );
    assert.ok(Date.now() - started < 100, `the second writer waited ${Date.now() - started} ms`);
    // Still no room made: a third writer fails at once too.
    await assert.rejects(written(cache, 5), /still full/);
    // An upload makes block 1 clean: room, so the next writer gets its buffer.
    const view = cache.beginUpload(first);
    cache.acknowledge(first, view.generation);
    cache.endUpload(first, view.data);
    await written(cache, 6);
    // Full again, of dirty blocks: a writer waits the whole bound once more.
    started = Date.now();
    await assert.rejects(written(cache, 7), /no upload finished within 150 ms/);
    assert.ok(Date.now() - started >= 140);
  });

  it('evicts a clean block to make room, and zero blocks hold no buffer', async () => {
    const { cache } = makeCache(2);
    const first = await written(cache, 1);
    const view = cache.beginUpload(first);
    cache.acknowledge(first, view.generation);
    cache.endUpload(first, view.data);
    await written(cache, 2);
    await written(cache, 3);
    assert.equal(cache.peek(1), undefined, 'the clean block was evicted');
    const zero = cache.insert(4);
    cache.zero(zero);
    assert.equal(zero.data, null);
    assert.equal(cache.buffersInUse, 2);
    assert.equal(cache.dirtyCount, 3);
  });

  it('keeps clean and dirty blocks each in their own order of use and change, and evicts the front of the clean one', async () => {
    const { cache } = makeCache(4);
    const indexes = (blocks: IterableIterator<CachedBlock>): number[] => [...blocks].map((block) => block.index);
    const uploaded = (block: CachedBlock): void => {
      const view = cache.beginUpload(block);
      cache.acknowledge(block, view.generation);
      cache.endUpload(block, view.data);
    };
    const [one, two, three] = [await written(cache, 1), await written(cache, 2), await written(cache, 3)];
    assert.deepEqual(indexes(cache.dirtyLeastRecentFirst()), [1, 2, 3]);
    const view = cache.beginUpload(two);
    assert.deepEqual(indexes(cache.dirtyLeastRecentFirst()), [1, 3], 'an uploading block is in neither order');
    assert.deepEqual(indexes(cache.cleanLeastRecentFirst()), []);
    uploaded(three);
    uploaded(one);
    assert.deepEqual(indexes(cache.cleanLeastRecentFirst()), [3, 1], 'in the order they turned clean');
    cache.acknowledge(two, view.generation);
    cache.endUpload(two, view.data);
    cache.get(3);
    assert.deepEqual(indexes(cache.cleanLeastRecentFirst()), [1, 2, 3], 'a use moves a block to the end');
    await written(cache, 1);
    assert.deepEqual(indexes(cache.cleanLeastRecentFirst()), [2, 3]);
    assert.deepEqual(indexes(cache.dirtyLeastRecentFirst()), [1], 'a write makes a clean block dirty');
    await written(cache, 4);
    await written(cache, 5);
    assert.equal(cache.peek(2), undefined, 'the least recently used clean block made room');
    assert.deepEqual(indexes(cache.cleanLeastRecentFirst()), [3]);
    assert.deepEqual(indexes(cache.dirtyLeastRecentFirst()), [1, 4, 5]);
  });

  /** Block 1 written with `fill`, uploaded, acknowledged: clean, its buffer evictable for reuse. */
  async function cleanBlock(cache: BlockCache, fill: number): Promise<CachedBlock> {
    const block = await written(cache, 1);
    block.data!.fill(fill);
    const view = cache.beginUpload(block);
    cache.acknowledge(block, view.generation);
    cache.endUpload(block, view.data);
    return block;
  }

  it('a new block written whole takes the write into its buffer at once; one written in part gets a zeroed buffer', async () => {
    const { cache } = makeCache(1);
    await cleanBlock(cache, 0xaa);
    const whole = Buffer.alloc(B, 0x5c);
    const taken = cache.insert(2);
    assert.equal(await cache.makeWritable(taken, false, whole), true, 'the whole write is in the buffer');
    assert.equal(cache.peek(1), undefined, 'block 1 was evicted for its buffer');
    assert.ok(taken.data!.equals(whole));
    assert.notEqual(taken.data, whole, 'a buffer of the cache, not the write');
    // The same buffer again, for a block written in part: none of the old bytes show.
    cache.noteWritten(taken, 0, B);
    const view = cache.beginUpload(taken);
    cache.acknowledge(taken, view.generation);
    cache.endUpload(taken, view.data);
    const partial = cache.insert(3);
    assert.equal(await cache.makeWritable(partial, false, Buffer.alloc(100, 1)), false, 'the caller copies a partial write');
    assert.ok(partial.data!.every((byte) => byte === 0));
  });

  it('a whole write during an upload copies the write, not the buffer the upload holds', async () => {
    const { cache } = makeCache();
    const block = await cleanBlock(cache, 0xaa);
    cache.noteWritten(block, 0, B);
    const view = cache.beginUpload(block);
    const whole = Buffer.alloc(B, 0x5c);
    assert.equal(await cache.makeWritable(block, false, whole), true);
    assert.ok(block.data!.equals(whole));
    assert.ok(
      view.data!.every((byte) => byte === 0xaa),
      'the upload keeps what it took',
    );
  });

  it('gives out page-aligned buffers, so that the local copy needs no staging copy', async () => {
    const { cache } = makeCache(3);
    const first = await written(cache, 1);
    const second = await written(cache, 2);
    const view = cache.beginUpload(second);
    await cache.makeWritable(second, false);
    for (const buffer of [first.data!, view.data!, second.data!]) assert.ok(isPageAligned(buffer));
  });
});
