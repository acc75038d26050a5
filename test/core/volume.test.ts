import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BLOCK_SIZE_BYTES, SnapshotApiError } from '../../src/ebs/client';
import { MemorySnapshotClient, type MemoryClientOptions } from '../../src/ebs/memory-client';
import { FileOperationError } from '../../src/core/file-errors';
import { DEFAULT_LIMITS, type CoreLimits } from '../../src/core/limits';
import { Volume } from '../../src/core/volume';
import { SeededRandom } from '../support/random';

const B = BLOCK_SIZE_BYTES;
const MiB = 1024 * 1024;

interface Harness {
  client: MemorySnapshotClient;
  volume: Volume;
  snapshotId: string;
  failPuts: { on: boolean };
}

const directories: string[] = [];
const volumes: Volume[] = [];

async function makeVolume(
  limits: Partial<CoreLimits> = {},
  clientOptions: MemoryClientOptions = {},
  zeroSkipAllowed = true,
): Promise<Harness> {
  const failPuts = { on: false };
  const client = new MemorySnapshotClient({
    ...clientOptions,
    failBefore: (operation, detail) =>
      clientOptions.failBefore?.(operation, detail) ??
      (failPuts.on && operation === 'put' ? new SnapshotApiError('injected 500', 'InternalServerException', 'transient', 500) : undefined),
  });
  const { snapshotId } = await client.startSnapshot({ volumeSizeGiB: 1 });
  const stateDirectory = mkdtempSync(path.join(os.tmpdir(), 'ebs-fuse-volume-'));
  directories.push(stateDirectory);
  const volume = await Volume.open({
    client,
    snapshotId,
    volumeSizeGiB: 1,
    stateDirectory,
    limits: { ...DEFAULT_LIMITS, cacheSizeBytes: 16 * MiB, uploadConcurrency: 8, writerWaitTimeoutMs: 5000, ...limits },
    zeroSkipAllowed,
    log: () => {},
  });
  volumes.push(volume);
  return { client, volume, snapshotId, failPuts };
}

async function rejectsWith(promise: Promise<unknown>, errno: string): Promise<FileOperationError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof FileOperationError, `expected FileOperationError, got ${String(error)}`);
    assert.equal(error.errno, errno);
    return error;
  }
  assert.fail(`expected ${errno}`);
}

describe('core: volume', () => {
  afterEach(async () => {
    for (const volume of volumes.splice(0)) await volume.close();
    for (const directory of directories.splice(0)) rmSync(directory, { recursive: true, force: true });
  });

  it('reads back unaligned writes that straddle blocks, zeros elsewhere', async () => {
    const { volume } = await makeVolume();
    const data = new SeededRandom(1).bytes(B + 1000);
    assert.equal(await volume.write(B - 500, data), data.length);
    assert.deepEqual(await volume.read(B - 500, data.length), data);
    assert.deepEqual(await volume.read(0, B - 500), Buffer.alloc(B - 500));
    assert.deepEqual(await volume.read(5 * B, 4096), Buffer.alloc(4096));
  });

  it('cuts a write that crosses the end and refuses one at the end with ENOSPC', async () => {
    const { volume } = await makeVolume();
    const size = volume.sizeBytes;
    assert.equal(size, 1024 * MiB);
    assert.equal(await volume.write(size - 100, Buffer.alloc(300, 7)), 100);
    assert.deepEqual(await volume.read(size - 100, 300), Buffer.alloc(100, 7));
    await rejectsWith(volume.write(size, Buffer.alloc(10)), 'ENOSPC');
    assert.equal((await volume.read(size, 10)).length, 0);
  });

  it('fsync uploads every dirty block and the snapshot equals what was written', async () => {
    const { volume, client, snapshotId } = await makeVolume();
    const random = new SeededRandom(2);
    const expected = Buffer.alloc(8 * B);
    for (let i = 0; i < 20; i += 1) {
      const offset = random.int(0, 7 * B);
      const data = random.bytes(random.int(1, B));
      data.copy(expected, offset);
      await volume.write(offset, data);
    }
    await volume.fsync();
    assert.deepEqual(client.imageRange(snapshotId, 0, 8), expected);
    assert.equal(volume.stats().dirtyBlocks, 0);
  });

  it('evicts uploaded blocks under a small cache and still reads them back', async () => {
    const { volume, client } = await makeVolume({ cacheSizeBytes: 16 * MiB });
    const random = new SeededRandom(3);
    const image = random.bytes(96 * B); // 48 MiB through a 16 MiB cache
    for (let offset = 0; offset < image.length; offset += 128 * 1024) {
      await volume.write(offset, image.subarray(offset, offset + 128 * 1024));
      assert.ok(volume.buffersInUse <= 32, `buffers ${volume.buffersInUse} over the 32-block cache`);
    }
    assert.deepEqual(await volume.read(0, image.length), image);
    await volume.fsync();
    assert.ok(client.callCounts.put >= 96);
    assert.deepEqual(await volume.read(0, image.length), image);
  });

  it('a failed upload keeps the block dirty, fsync says EIO until the service recovers', async () => {
    const { volume, client, snapshotId, failPuts } = await makeVolume();
    await volume.write(3 * B + 10, Buffer.alloc(100, 9));
    failPuts.on = true;
    await rejectsWith(volume.fsync(), 'EIO');
    assert.equal(volume.stats().dirtyBlocks, 1);
    assert.match(volume.stats().lastUploadError ?? '', /injected 500/);
    await rejectsWith(volume.fsync(), 'EIO');
    assert.deepEqual(await volume.read(3 * B + 10, 100), Buffer.alloc(100, 9));
    failPuts.on = false;
    await volume.fsync();
    assert.equal(volume.stats().lastUploadError, undefined);
    const block = client.imageRange(snapshotId, 3, 1);
    assert.deepEqual(block.subarray(10, 110), Buffer.alloc(100, 9));
  });

  it('a block rewritten while its PUT is in flight stays dirty and is sent again', async () => {
    const { volume, client, snapshotId } = await makeVolume({}, { latencyMs: 50 });
    await volume.write(0, Buffer.alloc(B, 1));
    const firstFsync = volume.fsync();
    await new Promise((resolve) => setTimeout(resolve, 10));
    await volume.write(0, Buffer.alloc(4096, 2));
    await firstFsync;
    assert.equal(volume.stats().dirtyBlocks, 1, 'the rewrite is not acknowledged by the first PUT');
    await volume.fsync();
    const expected = Buffer.alloc(B, 1);
    expected.fill(2, 0, 4096);
    assert.deepEqual(client.imageRange(snapshotId, 0, 1), expected);
    assert.equal(client.callCounts.put, 2);
  });

  it('skips never-sent zero blocks only where the zero-block rule allows', async () => {
    const fresh = await makeVolume();
    await fresh.volume.write(0, Buffer.alloc(B));
    await fresh.volume.fsync();
    assert.equal(fresh.client.callCounts.put, 0);
    await fresh.volume.write(B, Buffer.alloc(10, 1));
    await fresh.volume.fsync();
    await fresh.volume.write(B, Buffer.alloc(10, 0));
    await fresh.volume.fsync();
    assert.equal(fresh.client.callCounts.put, 2, 'zeros over a block that was sent are sent');
    assert.deepEqual(fresh.client.imageRange(fresh.snapshotId, 1, 1), Buffer.alloc(B));

    const child = await makeVolume({}, {}, false);
    await child.volume.write(0, Buffer.alloc(B));
    await child.volume.fsync();
    assert.equal(child.client.callCounts.put, 1, 'with a parent or encryption every written block is sent');
  });

  it('truncate zeros from the length to the end, keeps the size, EFBIG past it', async () => {
    const { volume, client, snapshotId } = await makeVolume({ cacheSizeBytes: 16 * MiB });
    const data = new SeededRandom(4).bytes(40 * B);
    await volume.write(0, data);
    await volume.fsync();
    await volume.truncate(5 * B + 123);
    assert.equal(volume.sizeBytes, 1024 * MiB);
    assert.deepEqual(await volume.read(0, 5 * B + 123), data.subarray(0, 5 * B + 123));
    assert.deepEqual(await volume.read(5 * B + 123, 35 * B - 123), Buffer.alloc(35 * B - 123));
    await volume.fsync();
    const expected = Buffer.alloc(40 * B);
    data.copy(expected, 0, 0, 5 * B + 123);
    assert.deepEqual(client.imageRange(snapshotId, 0, 40), expected);
    await rejectsWith(volume.truncate(volume.sizeBytes + 1), 'EFBIG');
  });

  it('flushAll then the completion figures satisfy the service (count and LINEAR)', async () => {
    const { volume, client, snapshotId } = await makeVolume();
    const random = new SeededRandom(5);
    for (let i = 0; i < 30; i += 1) await volume.write(random.int(0, 64 * B), random.bytes(random.int(1, 200_000)));
    await volume.flushAll(10_000);
    const figures = volume.completionFigures();
    assert.equal(figures.changedBlocksCount, client.snapshots.get(snapshotId)!.ownBlocks.size);
    assert.equal(await client.completeSnapshot({ snapshotId, ...figures }), 'completed');
  });

  it('never has two PUTs of one block in flight and keeps PUTs within the concurrency', async () => {
    const { volume, client } = await makeVolume({ uploadConcurrency: 4 }, { latencyMs: 5 });
    const random = new SeededRandom(6);
    const writes: Array<Promise<number>> = [];
    for (let i = 0; i < 200; i += 1) writes.push(volume.write(random.int(0, 8 * B), random.bytes(4096)));
    const syncs = [volume.fsync(), volume.fsync()];
    await Promise.all([...writes, ...syncs]);
    await volume.fsync();
    assert.ok(client.maxConcurrentPuts <= 4, `max concurrent PUTs ${client.maxConcurrentPuts}`);
  });
});
