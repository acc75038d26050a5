// The pieces upload and download share: paging through a block list, the bounded
// pool, and putting results back in order.
import assert from 'node:assert/strict';
import type { BlockPage, ListPageParams, SnapshotClient } from '../../src/ebs/client';
import { forEachBounded, InOrder, SnapshotBlockList } from '../../src/core/transfer';

/** Serves ListSnapshotBlocks from fixed pages, as AWS may: an empty page with a NextToken included. */
function pagedClient(pages: Array<{ indexes: number[]; next?: string }>, calls: ListPageParams[]): SnapshotClient {
  const page = (at: number): BlockPage => ({
    blocks: pages[at].indexes.map((blockIndex) => ({ blockIndex, blockToken: `t${blockIndex}` })),
    volumeSizeGiB: 1,
    expiryTime: new Date(Date.now() + 3600_000),
    nextToken: pages[at].next,
  });
  const unused = (): never => {
    throw new Error('not used');
  };
  return {
    listSnapshotBlocks: async (_id: string, params: ListPageParams = {}) => {
      calls.push(params);
      if (params.nextToken !== undefined) return page(Number(params.nextToken));
      if (params.startingBlockIndex === undefined) return page(0);
      const from = params.startingBlockIndex;
      return page(pages.findIndex((candidate) => candidate.indexes.some((index) => index >= from)));
    },
    startSnapshot: unused,
    putSnapshotBlock: unused,
    completeSnapshot: unused,
    listChangedBlocks: unused,
    getSnapshotBlock: unused,
    close: () => undefined,
  };
}

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

describe('core: transfer (block list paging, bounded pool, in-order results)', () => {
  it('asks for the page after a non-empty one by StartingBlockIndex and follows the NextToken of an empty one', async () => {
    const calls: ListPageParams[] = [];
    const client = pagedClient([{ indexes: [], next: '1' }, { indexes: [1, 5], next: '2' }, { indexes: [7, 9] }], calls);
    const list = await SnapshotBlockList.open(client, 'snap-1', 100);
    assert.deepEqual(
      (await collect(list.entries())).map((entry) => entry.blockIndex),
      [1, 5, 7, 9],
    );
    assert.deepEqual(calls, [{ maxResults: 100 }, { maxResults: 100, nextToken: '1' }, { maxResults: 100, startingBlockIndex: 6 }]);
  });

  it('refuses a list that is not in ascending order', async () => {
    const client = pagedClient([{ indexes: [4, 2] }], []);
    const list = await SnapshotBlockList.open(client, 'snap-1');
    await assert.rejects(collect(list.entries()), /returned block 2 after 4: not in ascending order/);
  });

  it('runs at most `concurrency` at once and never further than the window ahead of the oldest unfinished item', async () => {
    let running = 0;
    let maxRunning = 0;
    let maxAhead = 0;
    const unfinished = new Set<number>();
    async function* items(): AsyncGenerator<number> {
      for (let i = 0; i < 60; i += 1) yield i;
    }
    const order: number[] = [];
    const inOrder = new InOrder<number>((value) => order.push(value));
    await forEachBounded(items(), { concurrency: 4, windowMax: 6 }, async (item, sequence) => {
      running += 1;
      unfinished.add(sequence);
      maxRunning = Math.max(maxRunning, running);
      maxAhead = Math.max(maxAhead, sequence - Math.min(...unfinished));
      // Item 0 of every ten is slow, so later ones finish first and must wait for it.
      await new Promise((resolve) => setTimeout(resolve, item % 10 === 0 ? 30 : 1));
      unfinished.delete(sequence);
      running -= 1;
      inOrder.complete(sequence, item);
    });
    assert.equal(maxRunning, 4);
    assert.ok(maxAhead < 6, `an item started ${maxAhead} after the oldest unfinished one`);
    assert.deepEqual(
      order,
      Array.from({ length: 60 }, (_, i) => i),
    );
  });

  it('stops at the first failure, lets running work finish, and throws that failure', async () => {
    const started: number[] = [];
    let finished = 0;
    async function* items(): AsyncGenerator<number> {
      for (let i = 0; i < 100; i += 1) yield i;
    }
    await assert.rejects(
      forEachBounded(items(), { concurrency: 3, windowMax: 10 }, async (item) => {
        started.push(item);
        await new Promise((resolve) => setTimeout(resolve, 2));
        if (item === 10) throw new Error('block 10 failed');
        finished += 1;
      }),
      /block 10 failed/,
    );
    assert.ok(started.length <= 13, `${started.length} started`);
    assert.equal(finished, started.length - 1);
  });
});
