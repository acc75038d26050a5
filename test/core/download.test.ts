// downloadSnapshot against the in-memory service: content and sparseness, paging,
// refusing to overwrite, and never leaving a file that looks complete.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { open, readFile, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BLOCK_SIZE_BYTES, SnapshotApiError, type SnapshotClient } from '../../src/ebs/client';
import { sha256Base64 } from '../../src/ebs/checksum';
import { MemorySnapshotClient, type MemoryClientOptions } from '../../src/ebs/memory-client';
import { downloadSnapshot, type DownloadOptions } from '../../src/core/download';
import { LIST_PAGE_SIZE_MIN } from '../../src/core/transfer';
import { UserError } from '../../src/errors';
import { SeededRandom } from '../support/random';

const B = BLOCK_SIZE_BYTES;
const GIB = 1073741824;

/** A completed snapshot holding `blocks`. */
async function snapshotWith(
  service: MemorySnapshotClient,
  volumeSizeGiB: number,
  blocks: Map<number, Buffer>,
  parentSnapshotId?: string,
): Promise<string> {
  const { snapshotId } = await service.startSnapshot({ volumeSizeGiB, parentSnapshotId });
  for (const [blockIndex, data] of blocks)
    await service.putSnapshotBlock({ snapshotId, blockIndex, data, checksumBase64: sha256Base64(data) });
  await service.completeSnapshot({ snapshotId, changedBlocksCount: blocks.size });
  return snapshotId;
}

/** A block that differs from every other with another tag, cheaper than random bytes. */
function taggedBlock(tag: number): Buffer {
  const block = Buffer.alloc(B, (tag % 251) + 1);
  block.writeUInt32BE(tag, 0);
  block.writeUInt32BE(tag, B - 4);
  return block;
}

/** Every block of the file equals the expected one (zeros where none is given). */
async function assertFileBlocks(file: string, blockCount: number, expected: (index: number) => Buffer): Promise<void> {
  const handle = await open(file, 'r');
  const block = Buffer.alloc(B);
  try {
    for (let index = 0; index < blockCount; index += 1) {
      block.fill(0);
      await handle.read(block, 0, B, index * B);
      assert.ok(block.equals(expected(index)), `block ${index} differs`);
    }
  } finally {
    await handle.close();
  }
}

describe('core: download', () => {
  let dir: string;
  let random: SeededRandom;
  const options = (snapshotId: string, filePath: string, extra: Partial<DownloadOptions> = {}): DownloadOptions => ({
    snapshotId,
    filePath,
    force: false,
    concurrency: 8,
    ...extra,
  });

  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'ebs-fuse-download-'));
    random = new SeededRandom(9);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it("writes the snapshot exactly, the volume's size, with holes where it has no data or zeros", async () => {
    const service = new MemorySnapshotClient();
    const blocks = new Map<number, Buffer>([
      [0, random.bytes(B)],
      [5, random.bytes(B)],
      [9, Buffer.alloc(B)],
      [2047, random.bytes(B)],
    ]);
    const snapshotId = await snapshotWith(service, 1, blocks);
    const file = path.join(dir, 'out.img');
    const result = await downloadSnapshot(service, options(snapshotId, file));
    assert.equal(result.blocksFetched, 4);
    assert.equal(result.zeroBlocksNotWritten, 1);
    const info = await stat(file);
    assert.equal(info.size, GIB);
    // Only the three non-zero blocks take space (plus filesystem slack), so once
    // they hold the right bytes every other block is a hole and reads as zeros.
    assert.ok(info.blocks * 512 < 4 * B, `${info.blocks * 512} bytes allocated`);
    await assertFileBlocks(file, 12, (index) => blocks.get(index) ?? Buffer.alloc(B));
    const handle = await open(file, 'r');
    const last = Buffer.alloc(B);
    await handle.read(last, 0, B, 2047 * B);
    await handle.close();
    assert.ok(last.equals(blocks.get(2047)!));
    assert.deepEqual(readdirSync(dir), ['out.img']);
  });

  it("pages through the block list of a child, with the parent's blocks it inherits", async () => {
    const service = new MemorySnapshotClient();
    const parentBlocks = new Map<number, Buffer>();
    for (let index = 0; index < 70; index += 1) parentBlocks.set(index * 3, taggedBlock(index));
    const parentId = await snapshotWith(service, 1, parentBlocks);
    const childBlocks = new Map<number, Buffer>();
    for (let index = 0; index < 60; index += 1) childBlocks.set(index * 2 + 100, taggedBlock(1000 + index));
    const childId = await snapshotWith(service, 1, childBlocks, parentId);
    const visible = new Map([...parentBlocks, ...childBlocks]);
    assert.ok(visible.size > LIST_PAGE_SIZE_MIN, 'more than one page');

    const file = path.join(dir, 'child.img');
    const listsBefore = service.callCounts.list;
    const result = await downloadSnapshot(service, options(childId, file, { listPageSize: LIST_PAGE_SIZE_MIN }));
    assert.equal(result.blocksFetched, visible.size);
    assert.equal(service.callCounts.list - listsBefore, Math.ceil(visible.size / LIST_PAGE_SIZE_MIN));
    await assertFileBlocks(file, 300, (index) => visible.get(index) ?? Buffer.alloc(B));
  });

  it('refuses to overwrite an existing file without force, and replaces it with force', async () => {
    const service = new MemorySnapshotClient();
    const data = random.bytes(B);
    const snapshotId = await snapshotWith(service, 1, new Map([[1, data]]));
    const file = path.join(dir, 'existing.img');
    await writeFile(file, 'precious');
    await assert.rejects(downloadSnapshot(service, options(snapshotId, file)), (error: Error) => {
      assert.ok(error instanceof UserError);
      assert.equal(error.message, `${file} already exists; pass --force to replace it`);
      return true;
    });
    assert.equal(await readFile(file, 'utf8'), 'precious');
    assert.equal(service.callCounts.get, 0);
    await downloadSnapshot(service, options(snapshotId, file, { force: true }));
    await assertFileBlocks(file, 4, (index) => (index === 1 ? data : Buffer.alloc(B)));
    assert.deepEqual(readdirSync(dir), ['existing.img']);
  });

  it('a failed download leaves neither the file nor a temporary one, and an existing file untouched', async () => {
    const blocks = new Map<number, Buffer>();
    for (let index = 0; index < 20; index += 1) blocks.set(index, taggedBlock(index));
    const failing: MemoryClientOptions = {
      failBefore: (operation, detail) =>
        operation === 'get' && detail.blockIndex === 13
          ? new SnapshotApiError('no access to the key', 'AccessDeniedException', 'permanent', 403)
          : undefined,
    };
    const service = new MemorySnapshotClient(failing);
    const snapshotId = await snapshotWith(service, 1, blocks);
    const file = path.join(dir, 'new.img');
    await assert.rejects(
      downloadSnapshot(service, options(snapshotId, file)),
      /^UserError: downloading snap-[0-9a-f]+ failed: no access to the key.*; .*new\.img was not written$/,
    );
    assert.deepEqual(readdirSync(dir), []);

    const existing = path.join(dir, 'old.img');
    await writeFile(existing, 'old');
    await assert.rejects(downloadSnapshot(service, options(snapshotId, existing, { force: true })), /was not written$/);
    assert.equal(await readFile(existing, 'utf8'), 'old');
    assert.deepEqual(readdirSync(dir), ['old.img']);
  });

  it('stops when the signal aborts and removes what it wrote', async () => {
    const blocks = new Map<number, Buffer>();
    for (let index = 0; index < 40; index += 1) blocks.set(index, Buffer.alloc(B, index + 1));
    const service = new MemorySnapshotClient({ latencyMs: 10 });
    const snapshotId = await snapshotWith(service, 1, blocks);
    const abort = new AbortController();
    setTimeout(() => abort.abort(new Error('stop')), 40);
    await assert.rejects(
      downloadSnapshot(service, options(snapshotId, path.join(dir, 'x.img'), { concurrency: 2, signal: abort.signal })),
      /was interrupted/,
    );
    assert.ok(service.callCounts.get < 40, `${service.callCounts.get} GETs`);
    assert.deepEqual(readdirSync(dir), []);
  });

  it('keeps at most `concurrency` GETs in flight', async () => {
    const blocks = new Map<number, Buffer>();
    for (let index = 0; index < 30; index += 1) blocks.set(index, Buffer.alloc(B, index + 1));
    const service = new MemorySnapshotClient({ latencyMs: 5 });
    const snapshotId = await snapshotWith(service, 1, blocks);
    let inFlight = 0;
    let maxInFlight = 0;
    const counting: SnapshotClient = Object.create(service, {
      getSnapshotBlock: {
        value: async (id: string, index: number, token: string) => {
          inFlight += 1;
          maxInFlight = Math.max(maxInFlight, inFlight);
          try {
            return await service.getSnapshotBlock(id, index, token);
          } finally {
            inFlight -= 1;
          }
        },
      },
    });
    await downloadSnapshot(counting, options(snapshotId, path.join(dir, 'y.img'), { concurrency: 3 }));
    assert.ok(maxInFlight <= 3, `${maxInFlight} in flight`);
    assert.ok(maxInFlight >= 2, `only ${maxInFlight} in flight: no concurrency`);
  });

  it('one-line errors: a pending snapshot, a missing directory, a target that is a directory', async () => {
    const service = new MemorySnapshotClient();
    const { snapshotId } = await service.startSnapshot({ volumeSizeGiB: 1 });
    await assert.rejects(
      downloadSnapshot(service, options(snapshotId, path.join(dir, 'p.img'))),
      /^UserError: cannot read snapshot snap-[0-9a-f]+: snapshot is not completed/,
    );
    await assert.rejects(downloadSnapshot(service, options(snapshotId, path.join(dir, 'no', 'p.img'))), /is not a directory$/);
    await assert.rejects(downloadSnapshot(service, options(snapshotId, dir, { force: true })), /exists and is not a regular file/);
    assert.deepEqual(readdirSync(dir), []);
  });
});
