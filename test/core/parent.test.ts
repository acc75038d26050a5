import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { linearChecksumBase64, sha256Base64, sha256Digest } from '../../src/ebs/checksum';
import { MemorySnapshotClient } from '../../src/ebs/memory-client';
import { FileOperationError } from '../../src/core/file-errors';
import { openReadOnlySnapshot, SnapshotSession, type SessionTuning } from '../../src/core/session';
import { SeededRandom } from '../support/random';

const B = BLOCK_SIZE_BYTES;
const CHUNK = 128 * 1024;

/** A completed 1 GiB parent snapshot with random data in blocks 0..parentBlocks-1. */
async function makeParent(service: MemorySnapshotClient, parentBlocks: number, seed: number): Promise<{ parentId: string; image: Buffer }> {
  const { snapshotId } = await service.startSnapshot({ volumeSizeGiB: 1 });
  const image = new SeededRandom(seed).bytes(parentBlocks * B);
  for (let index = 0; index < parentBlocks; index += 1) {
    const data = image.subarray(index * B, (index + 1) * B);
    await service.putSnapshotBlock({ snapshotId, blockIndex: index, data, checksumBase64: sha256Base64(data) });
  }
  const digests = new Map<number, Buffer>();
  for (let index = 0; index < parentBlocks; index += 1) digests.set(index, sha256Digest(image.subarray(index * B, (index + 1) * B)));
  await service.completeSnapshot({ snapshotId, changedBlocksCount: parentBlocks, linearChecksumBase64: linearChecksumBase64(digests) });
  return { parentId: snapshotId, image };
}

describe('core: incremental child of a parent, and read-only snapshots', () => {
  let stateDir: string;
  let tuning: SessionTuning;
  beforeEach(() => {
    stateDir = mkdtempSync(path.join(os.tmpdir(), 'ebs-fuse-parent-'));
    tuning = { stateDir, cacheSizeBytes: 16 * 1024 * 1024, uploadConcurrency: 4, log: () => {} };
  });
  afterEach(() => rmSync(stateDir, { recursive: true, force: true }));

  it('reads the parent where nothing was written and merges partial writes with it', async () => {
    const service = new MemorySnapshotClient();
    const { parentId, image } = await makeParent(service, 6, 1);
    const child = await SnapshotSession.start(service, { volumeSizeGiB: 1, parentSnapshotId: parentId }, tuning);
    assert.ok((await child.file.read(B + 7, 2 * B)).equals(image.subarray(B + 7, 3 * B + 7)));
    const patch = Buffer.alloc(1000, 0xee);
    await child.file.write(2 * B + 100, patch);
    const expected = Buffer.from(image);
    patch.copy(expected, 2 * B + 100);
    assert.ok((await child.file.read(0, 6 * B)).equals(expected));
    const result = await child.finish({ complete: true, timeoutMs: 5000 });
    assert.equal(result.status, 'completed', 'ChangedBlocksCount counts only the child’s own PUTs');
    assert.equal(service.snapshots.get(child.snapshotId)!.ownBlocks.size, 1);
    assert.ok(service.imageRange(child.snapshotId, 0, 6).equals(expected));
    assert.ok(service.imageRange(parentId, 0, 6).equals(image), 'the parent is unchanged');
  });

  it('a sequential overwrite of whole parent blocks fetches nothing from the parent', async () => {
    const service = new MemorySnapshotClient();
    const { parentId } = await makeParent(service, 8, 2);
    const child = await SnapshotSession.start(service, { volumeSizeGiB: 1, parentSnapshotId: parentId }, tuning);
    const fresh = new SeededRandom(3).bytes(8 * B);
    const getsBefore = service.callCounts.get;
    for (let offset = 0; offset < fresh.length; offset += CHUNK) await child.file.write(offset, fresh.subarray(offset, offset + CHUNK));
    await child.finish({ complete: true, timeoutMs: 5000 });
    assert.equal(service.callCounts.get - getsBefore, 0);
    assert.ok(service.imageRange(child.snapshotId, 0, 8).equals(fresh));
  });

  it('zeros written over parent data, and truncation, upload zeros', async () => {
    const service = new MemorySnapshotClient();
    const { parentId, image } = await makeParent(service, 6, 4);
    const child = await SnapshotSession.start(service, { volumeSizeGiB: 1, parentSnapshotId: parentId }, tuning);
    await child.file.write(B, Buffer.alloc(B));
    await child.file.truncate(4 * B + 10);
    const expected = Buffer.from(image);
    expected.fill(0, B, 2 * B);
    expected.fill(0, 4 * B + 10);
    assert.ok((await child.file.read(0, 6 * B)).equals(expected));
    await child.finish({ complete: true, timeoutMs: 5000 });
    assert.ok(service.imageRange(child.snapshotId, 0, 6).equals(expected));
  });

  it('concurrent reads of one parent block make one GetSnapshotBlock', async () => {
    const service = new MemorySnapshotClient({ latencyMs: 20 });
    const { parentId, image } = await makeParent(service, 2, 5);
    const child = await SnapshotSession.start(service, { volumeSizeGiB: 1, parentSnapshotId: parentId }, tuning);
    const getsBefore = service.callCounts.get;
    const reads = await Promise.all([0, 1, 2, 3, 4].map((i) => child.file.read(B + i * 4096, 4096)));
    reads.forEach((data, i) => assert.ok(data.equals(image.subarray(B + i * 4096, B + (i + 1) * 4096))));
    assert.equal(service.callCounts.get - getsBefore, 1);
    await child.close();
  });

  it('serves a completed snapshot read-only with read-ahead, and refuses changes with EROFS', async () => {
    const service = new MemorySnapshotClient();
    const { parentId, image } = await makeParent(service, 20, 6);
    const file = await openReadOnlySnapshot(service, parentId, 16 * 1024 * 1024);
    assert.equal(file.readOnly, true);
    const got = Buffer.alloc(20 * B);
    for (let offset = 0; offset < got.length; offset += CHUNK) (await file.read(offset, CHUNK)).copy(got, offset);
    assert.ok(got.equals(image));
    assert.equal(service.callCounts.get, 20, 'each block fetched once, read-ahead included');
    assert.ok((await file.read(30 * B, 100)).equals(Buffer.alloc(100)));
    await assert.rejects(file.write(0, Buffer.alloc(1)), (error: Error) => error instanceof FileOperationError && error.errno === 'EROFS');
    await assert.rejects(file.truncate(0), (error: Error) => error instanceof FileOperationError && error.errno === 'EROFS');
  });

  it('refuses a read-only mount of a pending snapshot', async () => {
    const service = new MemorySnapshotClient();
    const { snapshotId } = await service.startSnapshot({ volumeSizeGiB: 1 });
    await assert.rejects(openReadOnlySnapshot(service, snapshotId, 16 * 1024 * 1024), /not completed/);
  });

  it('lists the parent again before its block tokens expire', async () => {
    // Tokens that expire within the reader's refresh margin force a new listing before each fetch.
    const service = new MemorySnapshotClient({ tokenLifetimeMs: 60_000 });
    const { parentId, image } = await makeParent(service, 3, 7);
    const file = await openReadOnlySnapshot(service, parentId, 16 * 1024 * 1024);
    const listsBefore = service.callCounts.list;
    assert.ok((await file.read(2 * B, 100)).equals(image.subarray(2 * B, 2 * B + 100)));
    assert.ok(service.callCounts.list > listsBefore, 'the block map was listed again');
  });
});
