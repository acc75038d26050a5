import assert from 'node:assert/strict';
import { mkdtempSync, openSync, rmSync, statSync, writeSync, closeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { linearChecksumBase64, sha256Digest } from '../../src/ebs/checksum';
import { BlockStore, ZERO_DIGEST } from '../../src/core/block-store';
import { FileOperationError } from '../../src/core/file-errors';
import { Journal, NO_SLOT, RECORD_BYTES } from '../../src/core/journal';
import { LocalCopy } from '../../src/core/local-copy';

const B = BLOCK_SIZE_BYTES;
const block = (fill: number): Buffer => Buffer.alloc(B, fill);
const digestOf = (fill: number): Buffer => sha256Digest(block(fill));

describe('core: block store (what the snapshot holds, and where the bytes are)', () => {
  let directory: string;
  let lines: string[];
  const stores: BlockStore[] = [];
  beforeEach(() => {
    directory = mkdtempSync(path.join(os.tmpdir(), 'ebs-fuse-block-store-'));
    lines = [];
  });
  afterEach(async () => {
    for (const store of stores.splice(0)) await store.close();
    rmSync(directory, { recursive: true, force: true });
  });

  async function open(diskBudget: number | 'auto' = 8 * B): Promise<{ store: BlockStore; resend: number[] }> {
    const opened = await BlockStore.open({ directory, diskBudget, directCopyWritesAtOnce: 4, log: (line) => lines.push(line) });
    stores.push(opened.store);
    return opened;
  }

  /** What a mount that died left: journal records, and local-copy slots with these fills. */
  async function leave(records: (journal: Journal) => Promise<void>, slots: Record<number, number> = {}): Promise<void> {
    const { journal } = await Journal.open(directory, async () => {});
    await records(journal);
    await journal.close();
    const fd = openSync(LocalCopy.fileIn(directory), 'a+');
    for (const [slot, fill] of Object.entries(slots)) writeSync(fd, block(fill), 0, B, Number(slot) * B);
    closeSync(fd);
  }

  async function rejectsHeldNowhere(promise: Promise<unknown>): Promise<void> {
    await assert.rejects(
      promise,
      (error: Error) => error instanceof FileOperationError && error.errno === 'EIO' && /held nowhere/.test(error.message),
    );
  }

  it('settles a block in flight whose new content lies in a good copy: sent again from it', async () => {
    await leave(async (journal) => journal.recordIntent(3, digestOf(7), 0), { 0: 7 });
    const { store, resend } = await open();
    assert.deepEqual(resend, [3]);
    assert.equal(store.base(3), 'copy');
    assert.ok((await store.readBlock(3, 'read'))!.equals(block(7)));
  });

  it('settles a block in flight that had no acknowledged content: sent again as zeros', async () => {
    // The slot holds torn bytes: not the content the intent announced.
    await leave(async (journal) => journal.recordIntent(3, digestOf(7), 0), { 0: 1 });
    const { store, resend } = await open();
    assert.deepEqual(resend, [3]);
    assert.equal(store.base(3), 'zeros');
    assert.equal(await store.readBlock(3, 'read'), null);
    assert.equal(store.wasAttempted(3), true, 'the zero-block rule must not skip it: the service may hold the new content');
  });

  it('settles a block in flight whose old acknowledged content lies in a good copy: sent again from that', async () => {
    await leave(
      async (journal) => {
        await journal.recordIntent(3, digestOf(5), 0);
        journal.recordAck(3, digestOf(5), 0);
        await journal.recordIntent(3, digestOf(6), NO_SLOT);
      },
      { 0: 5 },
    );
    const { store, resend } = await open();
    assert.deepEqual(resend, [3]);
    assert.ok((await store.readBlock(3, 'read'))!.equals(block(5)));
  });

  it('a block in flight with neither content kept is unsettled: EIO on reads, completion without LINEAR until it is sent again', async () => {
    await leave(async (journal) => {
      await journal.recordIntent(3, digestOf(5), NO_SLOT);
      journal.recordAck(3, digestOf(5), NO_SLOT);
      await journal.recordIntent(4, digestOf(8), NO_SLOT);
      journal.recordAck(4, digestOf(8), NO_SLOT);
      await journal.recordIntent(3, digestOf(6), NO_SLOT);
    });
    const { store, resend } = await open();
    assert.deepEqual(resend, []);
    assert.equal(store.unsettledCount, 1);
    await rejectsHeldNowhere(store.readRange(3, 0, 10));
    assert.match(lines.join('\n'), /block 3 .* is held nowhere: it was being uploaded when an earlier mount stopped/);
    assert.deepEqual(store.completionFigures(), { changedBlocksCount: 2 });
    // Written and acknowledged again: the content is known once more.
    const slot = await store.announce(3, digestOf(9), block(9), { plan: 'none', kind: 'whole' });
    store.acknowledged(3, digestOf(9), slot, 'whole');
    store.uploadEnded(3);
    const figures = store.completionFigures();
    assert.equal(figures.changedBlocksCount, 2);
    assert.equal(
      figures.linearChecksumBase64,
      linearChecksumBase64(
        new Map([
          [3, digestOf(9)],
          [4, digestOf(8)],
        ]),
      ),
    );
  });

  it('an acknowledged block without a copy is held nowhere; one acknowledged as zeros costs nothing and reads as zeros', async () => {
    await leave(async (journal) => {
      await journal.recordIntent(1, digestOf(1), NO_SLOT);
      journal.recordAck(1, digestOf(1), NO_SLOT);
      await journal.recordIntent(2, ZERO_DIGEST, NO_SLOT);
      journal.recordAck(2, ZERO_DIGEST, NO_SLOT);
    });
    const { store } = await open();
    await rejectsHeldNowhere(store.readRange(1, 0, 10));
    await rejectsHeldNowhere(store.readBlock(1, 'write'));
    assert.equal(store.stats().heldNowhereErrors, 2);
    assert.equal(lines.length, 1, 'one log line per block');
    assert.match(
      lines[0],
      /^ebs-fuse: block 1 \(bytes 524288-1048575\) is held nowhere: .*a pending snapshot cannot be read through the EBS API; a read of it fails with EIO\. Mount with a larger --disk-cache-size/,
    );
    assert.equal(store.base(2), 'zeros');
    assert.ok((await store.readRange(2, 0, 10)).equals(Buffer.alloc(10)));
  });

  it('keeps a copy made before the PUT, replaces it on the next ack, and drops it when new content has none', async () => {
    const { store } = await open();
    assert.deepEqual(store.copyPlan(5, digestOf(1), 'pieces'), { plan: 'before', kind: 'pieces' });
    const first = await store.announce(5, digestOf(1), block(1), store.copyPlan(5, digestOf(1), 'pieces'));
    assert.notEqual(first, NO_SLOT);
    store.acknowledged(5, digestOf(1), first, 'pieces');
    store.uploadEnded(5);
    assert.ok((await store.readRange(5, 0, 4))!.equals(Buffer.alloc(4, 1)));
    assert.deepEqual(
      store.copyPlan(5, digestOf(3), 'pieces'),
      { plan: 'before', kind: 'rewritten' },
      'written in pieces again after an upload',
    );
    assert.deepEqual(store.copyPlan(5, digestOf(2), 'whole'), { plan: 'after', kind: 'rewritten' });
    assert.deepEqual(store.copyPlan(6, digestOf(2), 'whole'), { plan: 'after', kind: 'whole' });
    const second = await store.announce(5, digestOf(2), block(2), { plan: 'after', kind: 'rewritten' });
    store.acknowledged(5, digestOf(2), second, 'whole');
    assert.equal(store.base(5), 'nowhere', 'the old copy no longer holds the block');
    await store.copyAfterAck(5, digestOf(2), block(2), 'rewritten');
    store.uploadEnded(5);
    assert.ok((await store.readRange(5, 0, 4))!.equals(Buffer.alloc(4, 2)));
    assert.equal(store.copyPlan(5, ZERO_DIGEST, 'pieces').plan, 'none', 'zeros are remembered, not copied');
  });

  it('keeps a superseded copy until the ack that superseded it is durable, so a crash before that still settles the block', async () => {
    const first = await open(1 * B);
    const slot = await first.store.announce(5, digestOf(1), block(1), { plan: 'before', kind: 'pieces' });
    first.store.acknowledged(5, digestOf(1), slot, 'pieces');
    first.store.uploadEnded(5);
    await first.store.sync();
    // New content streamed whole: acknowledged, not yet durable; the only slot must not be reused for block 6.
    const second = await first.store.announce(5, digestOf(2), block(2), { plan: 'after', kind: 'rewritten' });
    first.store.acknowledged(5, digestOf(2), second, 'rewritten');
    first.store.uploadEnded(5);
    await first.store.announce(6, digestOf(3), block(3), { plan: 'before', kind: 'pieces' });
    // The process dies here (its handles are closed only after the test).
    const { store, resend } = await open(1 * B);
    assert.deepEqual(resend, [5, 6]);
    assert.ok((await store.readBlock(5, 'read'))!.equals(block(1)), 'the old content, from its copy');
  });

  it('with a budget of 0 keeps no copy at all', async () => {
    const { store } = await open(0);
    assert.equal(store.copyPlan(5, digestOf(1), 'pieces').plan, 'none');
    assert.equal(await store.announce(5, digestOf(1), block(1), { plan: 'before', kind: 'pieces' }), NO_SLOT);
    store.acknowledged(5, digestOf(1), NO_SLOT, 'pieces');
    store.uploadEnded(5);
    assert.equal(store.base(5), 'nowhere');
    assert.equal(store.stats().localCopyFileBytes, 0);
  });

  it('the journal is compacted at open and while it grows, so it follows the blocks written, not the PUTs', async () => {
    await leave(async (journal) => {
      for (let round = 0; round < 300; round += 1) {
        const digest = sha256Digest(Buffer.from([round]));
        await journal.recordIntent(round % 3, digest, NO_SLOT);
        journal.recordAck(round % 3, digest, NO_SLOT);
      }
    });
    assert.equal(statSync(Journal.fileIn(directory)).size, 600 * RECORD_BYTES);
    const { store } = await open();
    assert.equal(store.stats().journalBytes, 3 * RECORD_BYTES);
    // 4 MiB of records over 1000 blocks start a compaction in the background.
    const body = block(0);
    const digests = Array.from({ length: 200 }, (_, fill) => digestOf(fill));
    for (let round = 0; round < 60; round += 1) {
      await Promise.all(
        Array.from({ length: 1000 }, async (_, blockIndex) => {
          const digest = digests[(round + blockIndex) % 200];
          const slot = await store.announce(blockIndex, digest, body, { plan: 'none', kind: 'whole' });
          store.acknowledged(blockIndex, digest, slot, 'whole');
          store.uploadEnded(blockIndex);
        }),
      );
    }
    await store.sync();
    const journalBytes = store.stats().journalBytes;
    assert.ok(
      journalBytes < 4.5 * 1024 * 1024,
      `journal ${journalBytes} bytes after 60,000 PUTs (${60_000 * 2 * RECORD_BYTES} uncompacted)`,
    );
    await store.close();
    stores.splice(0);
    const { store: again } = await open();
    assert.equal(again.acknowledgedCount, 1000);
    assert.equal(again.stats().journalBytes, 1000 * RECORD_BYTES);
  });
});
