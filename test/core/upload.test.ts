// uploadFile against the in-memory service: which blocks are sent (holes, zero
// blocks, the parent rule), the volume size, bounds, and failures. Files are real
// sparse files in a temp dir, so hole detection goes through native/build/extents.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { open, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { BLOCK_SIZE_BYTES, SnapshotApiError } from '../../src/ebs/client';
import { MemorySnapshotClient } from '../../src/ebs/memory-client';
import { DEFAULT_EXTENTS_HELPER, listExtents, uploadFile, uploadStream, type UploadOptions } from '../../src/core/upload';
import { UserError } from '../../src/errors';
import { SeededRandom } from '../support/random';
import { readFileBlock } from '../support/file-blocks';

const B = BLOCK_SIZE_BYTES;
const GIB = 1073741824;

/** Writes each piece at its offset into a sparse file of sizeBytes. */
async function sparseFile(file: string, sizeBytes: number, pieces: Array<[offset: number, data: Buffer]>): Promise<void> {
  await writeFile(file, '');
  await truncate(file, sizeBytes);
  const handle = await open(file, 'r+');
  try {
    for (const [offset, data] of pieces) await handle.write(data, 0, data.length, offset);
  } finally {
    await handle.close();
  }
}

/** The blocks the pieces make non-zero: what must be sent without a parent. */
function nonZeroBlocks(pieces: Array<[number, Buffer]>): Set<number> {
  const blocks = new Set<number>();
  for (const [offset, data] of pieces) {
    for (let at = 0; at < data.length; at += 1) if (data[at] !== 0) blocks.add(Math.floor((offset + at) / B));
  }
  return blocks;
}

function sorted(values: Iterable<number>): number[] {
  return [...values].sort((a, b) => a - b);
}

describe('core: upload', () => {
  let dir: string;
  let random: SeededRandom;
  const options = (filePath: string, extra: Partial<UploadOptions> = {}): UploadOptions => ({
    filePath,
    snapshot: {},
    concurrency: 8,
    ...extra,
  });

  before(function () {
    if (!existsSync(DEFAULT_EXTENTS_HELPER))
      throw new Error(`${DEFAULT_EXTENTS_HELPER} is missing: run scripts/setup.sh (it runs native/build-extents.sh)`);
  });
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'ebs-fuse-upload-'));
    random = new SeededRandom(42);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('sends exactly the non-zero blocks of a sparse file, reads only its data, and completes with their count and LINEAR', async () => {
    const file = path.join(dir, 'sparse.img');
    const pieces: Array<[number, Buffer]> = [
      [10, random.bytes(100)],
      [3 * B - 1000, random.bytes(2000)], // crosses from block 2 into block 3
      [50 * B, Buffer.alloc(B)], // written, but zeros
      [700 * B + 4096, random.bytes(4096)],
      [GIB - 512, random.bytes(512)], // the last block
    ];
    await sparseFile(file, GIB, pieces);
    const service = new MemorySnapshotClient();
    const result = await uploadFile(service, options(file));

    const expected = nonZeroBlocks(pieces);
    assert.equal(result.status, 'completed'); // the service checks the count and LINEAR
    assert.equal(result.volumeSizeGiB, 1);
    assert.equal(service.callCounts.put, expected.size);
    assert.equal(result.blocksPut, expected.size);
    const snapshot = service.snapshots.get(result.snapshotId)!;
    assert.deepEqual(sorted(snapshot.ownBlocks.keys()), sorted(expected));
    for (const index of expected) assert.ok(snapshot.ownBlocks.get(index)!.equals(await readFileBlock(file, index)), `block ${index}`);
    assert.equal(result.zeroBlocksSkipped, 1);
    assert.equal(result.holesDetected, true);
    // Holes are never read: only the blocks the pieces touch.
    assert.equal(result.dataBlocksRead, expected.size + 1);
  });

  it('without hole detection reads every block, and still sends only the non-zero ones', async () => {
    const file = path.join(dir, 'sparse.img');
    const pieces: Array<[number, Buffer]> = [
      [5 * B + 7, random.bytes(B)],
      [100 * B, Buffer.alloc(B)],
    ];
    await sparseFile(file, 128 * B, pieces);
    const service = new MemorySnapshotClient();
    const lines: string[] = [];
    const result = await uploadFile(
      service,
      options(file, { extentsHelperPath: path.join(dir, 'no-such-helper'), log: (line) => lines.push(line) }),
    );
    assert.equal(result.holesDetected, false);
    assert.equal(result.dataBlocksRead, 128);
    assert.deepEqual(sorted(service.snapshots.get(result.snapshotId)!.ownBlocks.keys()), sorted(nonZeroBlocks(pieces)));
    const said = lines.filter((line) => /no-such-helper is missing|holes/.test(line));
    assert.equal(said.length, 1, `one line about holes, got:\n${lines.join('\n')}`);
    assert.match(said[0], /no-such-helper is missing: it is built on install only where a C compiler exists .*holes too$/);
  });

  it('lists a fragmented file in several helper calls without missing an extent', async () => {
    // 5000 separate 4 KiB extents: more than one call of the helper returns.
    const file = path.join(dir, 'fragmented.img');
    const pieces: Array<[number, Buffer]> = [];
    for (let i = 0; i < 5000; i += 1) pieces.push([i * 8192, Buffer.alloc(4096, (i % 255) + 1)]);
    await sparseFile(file, 5000 * 8192, pieces);
    const first = await listExtents(DEFAULT_EXTENTS_HELPER, file, 0);
    assert.ok(first.extents.length < 5000 && first.extents.length > 0, `one call returned ${first.extents.length} extents`);
    const service = new MemorySnapshotClient();
    const result = await uploadFile(service, options(file));
    const expected = nonZeroBlocks(pieces);
    assert.deepEqual(sorted(service.snapshots.get(result.snapshotId)!.ownBlocks.keys()), sorted(expected));
  });

  it('rounds the volume up to whole GiB and pads the last block with zeros', async () => {
    const file = path.join(dir, 'small.img');
    const content = random.bytes(5 * B + 123);
    await writeFile(file, content);
    const service = new MemorySnapshotClient();
    const result = await uploadFile(service, options(file));
    assert.equal(result.volumeSizeGiB, 1);
    const expected = Buffer.alloc(6 * B);
    content.copy(expected);
    assert.ok(service.imageRange(result.snapshotId, 0, 6).equals(expected));
    assert.equal(result.blocksPut, 6);
  });

  it('refuses --size smaller than the file before starting a snapshot, and accepts a larger one', async () => {
    const file = path.join(dir, 'big.img');
    await sparseFile(file, GIB + 1, [[GIB, Buffer.from([7])]]);
    const service = new MemorySnapshotClient();
    await assert.rejects(uploadFile(service, options(file, { volumeSizeGiB: 1 })), (error: Error) => {
      assert.ok(error instanceof UserError);
      assert.match(error.message, /^--size 1 is smaller than .*big\.img \(1073741825 bytes, 2 GiB rounded up\)/);
      assert.doesNotMatch(error.message, /\n/);
      return true;
    });
    assert.equal(service.callCounts.start, 0);
    const result = await uploadFile(service, options(file, { volumeSizeGiB: 3 }));
    assert.equal(result.volumeSizeGiB, 3);
    assert.deepEqual(sorted(service.snapshots.get(result.snapshotId)!.ownBlocks.keys()), [2048]);
  });

  it('one-line errors for a missing file and a directory', async () => {
    const service = new MemorySnapshotClient();
    await assert.rejects(uploadFile(service, options(path.join(dir, 'nope.img'))), /nope\.img does not exist$/);
    await assert.rejects(uploadFile(service, options(dir)), /is a directory; upload takes a file or a block device$/);
    assert.equal(service.callCounts.start, 0);
  });

  it('encrypted: a written zero block is sent, a hole is not', async () => {
    const file = path.join(dir, 'enc.img');
    const pieces: Array<[number, Buffer]> = [
      [3 * B, Buffer.alloc(B)],
      [7 * B, random.bytes(B)],
    ];
    await sparseFile(file, GIB, pieces);
    const service = new MemorySnapshotClient();
    const result = await uploadFile(service, options(file, { snapshot: { encrypted: true } }));
    assert.deepEqual(sorted(service.snapshots.get(result.snapshotId)!.ownBlocks.keys()), [3, 7]);
    assert.equal(result.zeroBlocksSkipped, 0);
  });

  it('with a parent sends only blocks that differ: changed data, zeros and holes over parent data; skips equal blocks', async () => {
    const service = new MemorySnapshotClient();
    const parentFile = path.join(dir, 'parent.img');
    const parentBlocks = new Map<number, Buffer>();
    for (const index of [0, 1, 2, 3, 4, 5, 6, 10, 11]) parentBlocks.set(index, random.bytes(B));
    await sparseFile(
      parentFile,
      GIB,
      [...parentBlocks].map(([index, data]) => [index * B, data]),
    );
    const parent = await uploadFile(service, options(parentFile));

    // The child: 0, 1, 3, 5, 10 as in the parent; 2 changed; 4 overwritten with zeros;
    // 6 and 11 holes; 12 new data; 13 zeros where the parent has nothing.
    const childBlocks = new Map<number, Buffer>();
    for (const index of [0, 1, 3, 5, 10]) childBlocks.set(index, parentBlocks.get(index)!);
    const changed = Buffer.from(parentBlocks.get(2)!);
    changed[B - 1] ^= 1;
    childBlocks.set(2, changed);
    childBlocks.set(4, Buffer.alloc(B));
    childBlocks.set(12, random.bytes(B));
    childBlocks.set(13, Buffer.alloc(B));
    const childFile = path.join(dir, 'child.img');
    await sparseFile(
      childFile,
      GIB,
      [...childBlocks].map(([index, data]) => [index * B, data]),
    );

    const getsBefore = service.callCounts.get;
    const child = await uploadFile(service, options(childFile, { snapshot: { parentSnapshotId: parent.snapshotId } }));
    assert.equal(child.status, 'completed');

    const childImage = (index: number): Buffer => childBlocks.get(index) ?? Buffer.alloc(B);
    const parentImage = (index: number): Buffer => parentBlocks.get(index) ?? Buffer.alloc(B);
    const differing = sorted(new Set([...parentBlocks.keys(), ...childBlocks.keys()])).filter(
      (index) => !childImage(index).equals(parentImage(index)),
    );
    assert.deepEqual(sorted(service.snapshots.get(child.snapshotId)!.ownBlocks.keys()), differing);
    assert.ok(
      service.imageRange(child.snapshotId, 0, 16).equals(Buffer.concat(Array.from({ length: 16 }, (_, index) => childImage(index)))),
    );
    // Fetched only where the child has non-zero data and the parent has a block.
    const compared = [...childBlocks].filter(([index, data]) => parentBlocks.has(index) && data.some((byte) => byte !== 0)).length;
    assert.equal(service.callCounts.get - getsBefore, compared);
    assert.equal(child.parentBlocksFetched, compared);
    assert.equal(child.blocksEqualToParent, 5);
  });

  it("with a parent larger than the file takes the parent's size and zeros its data past the file's end", async () => {
    const service = new MemorySnapshotClient();
    const parentFile = path.join(dir, 'parent.img');
    const far = random.bytes(B);
    await sparseFile(parentFile, 2 * GIB, [[3000 * B, far]]);
    const parent = await uploadFile(service, options(parentFile));
    assert.equal(parent.volumeSizeGiB, 2);

    const childFile = path.join(dir, 'child.img');
    await sparseFile(childFile, GIB, [[0, random.bytes(B)]]);
    await assert.rejects(
      uploadFile(service, options(childFile, { volumeSizeGiB: 1, snapshot: { parentSnapshotId: parent.snapshotId } })),
      /--size 1 is smaller than the parent snapshot .* \(2 GiB\)/,
    );
    const lines: string[] = [];
    const child = await uploadFile(
      service,
      options(childFile, { snapshot: { parentSnapshotId: parent.snapshotId }, log: (line) => lines.push(line) }),
    );
    assert.equal(child.volumeSizeGiB, 2);
    assert.deepEqual(sorted(service.snapshots.get(child.snapshotId)!.ownBlocks.keys()), [0, 3000]);
    assert.ok(service.imageRange(child.snapshotId, 3000, 1).equals(Buffer.alloc(B)));
    assert.ok(
      lines.some((line) => line.includes('the size of the parent')),
      lines.join('\n'),
    );
  });

  it('an unreadable parent is a one-line error before any snapshot starts', async () => {
    const service = new MemorySnapshotClient();
    const file = path.join(dir, 'f.img');
    await sparseFile(file, B, [[0, random.bytes(B)]]);
    await assert.rejects(
      uploadFile(service, options(file, { snapshot: { parentSnapshotId: 'snap-0123456789abcdef0' } })),
      /^UserError: cannot read the parent snapshot snap-0123456789abcdef0: /,
    );
    assert.equal(service.callCounts.start, 0);
  });

  it('keeps at most `concurrency` blocks in flight', async () => {
    const file = path.join(dir, 'dense.img');
    await writeFile(file, random.bytes(40 * B));
    const service = new MemorySnapshotClient({ latencyMs: 5 });
    await uploadFile(service, options(file, { concurrency: 4 }));
    assert.equal(service.callCounts.put, 40);
    assert.ok(service.maxConcurrentPuts <= 4, `max ${service.maxConcurrentPuts} in flight`);
    assert.ok(service.maxConcurrentPuts >= 2, `only ${service.maxConcurrentPuts} in flight: no concurrency`);
  });

  it('a failing PUT stops the upload without completing, in one line naming the pending snapshot', async () => {
    const file = path.join(dir, 'dense.img');
    await writeFile(file, Buffer.alloc(200 * B, 0x5a));
    const service = new MemorySnapshotClient({
      failBefore: (operation, detail) =>
        operation === 'put' && detail.blockIndex === 17
          ? new SnapshotApiError('access denied', 'AccessDeniedException', 'permanent', 403)
          : undefined,
    });
    await assert.rejects(uploadFile(service, options(file, { concurrency: 4 })), (error: Error) => {
      assert.ok(error instanceof UserError);
      assert.match(error.message, /^uploading .*dense\.img to snap-[0-9a-f]+ failed: access denied.*; the snapshot stays pending/);
      assert.doesNotMatch(error.message, /\n/);
      return true;
    });
    assert.equal(service.callCounts.complete, 0);
    // Blocks 0-17, plus at most the few already in flight when 17 failed.
    assert.ok(service.callCounts.put <= 18 + 4, `${service.callCounts.put} PUTs: it went on after the failure`);
  });

  it('stops when the signal aborts, leaving the snapshot pending', async () => {
    const file = path.join(dir, 'dense.img');
    await writeFile(file, Buffer.alloc(64 * B, 0x5a));
    const service = new MemorySnapshotClient({ latencyMs: 10 });
    const abort = new AbortController();
    setTimeout(() => abort.abort(new Error('stop')), 30);
    await assert.rejects(
      uploadFile(service, options(file, { concurrency: 2, signal: abort.signal })),
      /was interrupted; the snapshot stays pending/,
    );
    assert.ok(service.callCounts.put < 64, `${service.callCounts.put} PUTs`);
    assert.equal(service.callCounts.complete, 0);
  });
});

describe('core: upload of a stream', () => {
  const random = new SeededRandom(7);
  /** The bytes in chunks of an odd size, so that blocks are put together across chunks. */
  const chunked = (bytes: Buffer, chunkBytes = 100 * 1024 + 7): Readable =>
    Readable.from(
      (function* () {
        for (let at = 0; at < bytes.length; at += chunkBytes) yield bytes.subarray(at, at + chunkBytes);
      })(),
    );

  it("sends the non-zero blocks of a stream in order, leaves a short stream's rest absent, and completes with LINEAR", async () => {
    const image = Buffer.concat([random.bytes(3 * B), Buffer.alloc(2 * B), random.bytes(B + 12345)]);
    const service = new MemorySnapshotClient();
    const result = await uploadStream(service, {
      stream: chunked(image),
      name: 'standard input',
      volumeSizeGiB: 1,
      snapshot: {},
      concurrency: 4,
    });
    assert.equal(result.status, 'completed');
    assert.equal(result.bytesRead, image.length);
    assert.deepEqual([result.blocksPut, result.zeroBlocksSkipped, result.dataBlocksRead], [5, 2, 7]);
    const blocks = service.snapshots.get(result.snapshotId)!.ownBlocks;
    assert.deepEqual(sorted(blocks.keys()), [0, 1, 2, 5, 6]);
    for (const index of [0, 1, 2, 5]) assert.ok(blocks.get(index)!.equals(image.subarray(index * B, (index + 1) * B)), `block ${index}`);
    const last = Buffer.alloc(B);
    image.copy(last, 0, 6 * B);
    assert.ok(blocks.get(6)!.equals(last), 'the last, partial block is zero-filled');
  });

  it('a stream longer than the volume fails, and nothing is completed', async () => {
    const service = new MemorySnapshotClient();
    // Zeros cost no PUT; the byte past the end is what counts.
    const image = Buffer.alloc(GIB + 1);
    image[GIB] = 1;
    await assert.rejects(
      uploadStream(service, {
        stream: chunked(image, 1024 * 1024),
        name: 'standard input',
        volumeSizeGiB: 1,
        snapshot: {},
        concurrency: 8,
      }),
      (error: Error) => {
        assert.ok(error instanceof UserError);
        assert.match(
          error.message,
          /^standard input is longer than the volume \(1073741824 bytes, --size\); snap-\S+ was not completed .*larger --size$/,
        );
        return true;
      },
    );
    assert.equal(service.callCounts.complete, 0);
    assert.deepEqual(
      [...service.snapshots.values()].map((snapshot) => snapshot.status),
      ['pending'],
    );
  });

  it('reads the stream only as fast as blocks are PUT: what it holds stays bounded by the concurrency', async () => {
    const concurrency = 4;
    const service = new MemorySnapshotClient({ latencyMs: 5 });
    let producedBytes = 0;
    let mostAheadBytes = 0;
    const chunkBytes = 64 * 1024;
    const stream = Readable.from(
      (function* () {
        for (let chunk = 0; chunk < (64 * B) / chunkBytes; chunk++) {
          mostAheadBytes = Math.max(mostAheadBytes, producedBytes - service.callCounts.put * B);
          producedBytes += chunkBytes;
          yield random.bytes(chunkBytes);
        }
      })(),
    );
    const result = await uploadStream(service, { stream, volumeSizeGiB: 1, snapshot: {}, concurrency });
    assert.equal(result.blocksPut, 64);
    // In flight, one block being filled and one read ahead, and the stream's own buffer (16 objects in object mode).
    const boundBytes = (concurrency + 2) * B + 16 * chunkBytes;
    assert.ok(mostAheadBytes <= boundBytes, `read ${mostAheadBytes} bytes ahead of the PUTs, more than ${boundBytes}`);
  });
});
