// What a child costs and what it reads, counted at the server: a sequential dd
// over the whole parent volume fetches nothing from the parent (whole blocks
// need no merge), and zeros written over the parent's data read back as zeros
// (from the cache, from the read-back store after eviction, and in the
// completed child), while only the partly written parent blocks are fetched.
import { strict as assert } from 'node:assert';
import { open } from 'node:fs/promises';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { getLocalEbsStats } from '../../src/local-ebs/admin-client';
import { ScenarioContext, createZeroImage, expectEnded, mustRun, GIB, MIB } from './support';

const B = BLOCK_SIZE_BYTES;

interface Region {
  offset: number;
  length: number;
}

/** dd of `length` bytes from `source` (at `skip`) to `file` at `offset`, in place. */
async function ddRegion(source: string, file: string, { offset, length }: Region, skip = 0, fsync = false): Promise<void> {
  await mustRun('dd', [
    `if=${source}`,
    `of=${file}`,
    'bs=1M',
    `count=${length}`,
    `skip=${skip}`,
    `seek=${offset}`,
    'iflag=count_bytes,skip_bytes,fullblock',
    'oflag=seek_bytes',
    `conv=notrunc${fsync ? ',fsync' : ''}`,
    'status=none',
  ]);
}

function blocksOf({ offset, length }: Region): number[] {
  const blocks: number[] = [];
  for (let index = Math.floor(offset / B); index * B < offset + length; index += 1) blocks.push(index);
  return blocks;
}

/** Blocks the region covers only in part. */
function partialBlocksOf(region: Region): number[] {
  return blocksOf(region).filter((index) => index * B < region.offset || (index + 1) * B > region.offset + region.length);
}

async function readRange(file: string, { offset, length }: Region): Promise<Buffer> {
  const handle = await open(file, 'r');
  try {
    const data = Buffer.alloc(length);
    const { bytesRead } = await handle.read(data, 0, length, offset);
    assert.equal(bytesRead, length);
    return data;
  } finally {
    await handle.close();
  }
}

describe('scenario: a child over a parent, counted at the server: full overwrite and zeros', function () {
  this.timeout(300_000);
  const context = new ScenarioContext();
  // The parent's data: aligned and unaligned, spread over the volume, and its last bytes.
  const parentRegions: Region[] = [
    { offset: 0, length: 4 * MIB },
    { offset: 100 * MIB + 12_345, length: 4096 },
    { offset: 300 * MIB, length: 8 * MIB },
    { offset: 700 * MIB + 1, length: MIB },
    { offset: GIB - 4096, length: 4096 },
  ];
  const parentBlocks = new Set(parentRegions.flatMap(blocksOf));
  let parentImage = '';
  let parentId = '';

  const getSnapshotBlockCount = async (): Promise<number> =>
    (await getLocalEbsStats(context.localEbs.endpoint, context.localEbs.credentials)).requests.GetSnapshotBlock ?? 0;

  before(async () => {
    await context.setUp();
    const source = context.file('parent-source.bin');
    await mustRun('dd', ['if=/dev/urandom', `of=${source}`, 'bs=1M', 'count=16', 'status=none']);
    parentImage = context.file('parent.img');
    await createZeroImage(parentImage, GIB);
    const parent = await context.mount(1);
    for (const [at, region] of parentRegions.entries()) {
      for (const target of [parent.filePath, parentImage]) await ddRegion(source, target, region, at * MIB);
    }
    expectEnded(await parent.stop('SIGINT'), parent.snapshotId);
    parentId = parent.snapshotId;
    assert.equal(await context.expectSnapshotEquals(parentId, parentImage), parentBlocks.size);
  });

  after(async () => {
    await context.tearDown();
  });

  it('a sequential dd over the whole parent volume issues no GetSnapshotBlock, and the child equals the new data', async () => {
    const fresh = context.file('fresh.bin');
    await mustRun('dd', ['if=/dev/urandom', `of=${fresh}`, 'bs=1M', `count=${GIB / MIB}`, 'status=none'], { timeoutMs: 120_000 });

    const child = await context.mount(1, ['--parent-snapshot-id', parentId]);
    const getsBefore = await getSnapshotBlockCount();
    await mustRun('dd', [`if=${fresh}`, `of=${child.filePath}`, 'bs=1M', 'conv=notrunc', 'status=none'], { timeoutMs: 240_000 });
    expectEnded(await child.stop('SIGINT'), child.snapshotId);
    assert.equal(
      (await getSnapshotBlockCount()) - getsBefore,
      0,
      'GetSnapshotBlock calls while the parent volume was overwritten and flushed',
    );

    await context.expectSnapshotEquals(child.snapshotId, fresh);
  });

  it("zeros over the parent's data read back as zeros, through the mount (also after eviction) and in the completed child", async () => {
    const zeroRegions: Region[] = [
      // Inside the parent's 300 MiB region: a partial block, whole blocks, a partial block.
      { offset: 300 * MIB + 200 * 1024, length: 5 * MIB + 10 * 1024 },
      // Exactly the parent's small unaligned write, inside one block.
      { offset: 100 * MIB + 12_345, length: 4096 },
    ];
    const partiallyZeroedParentBlocks = new Set(zeroRegions.flatMap(partialBlocksOf).filter((index) => parentBlocks.has(index)));
    for (const region of zeroRegions) {
      assert.ok(
        blocksOf(region).every((index) => parentBlocks.has(index)),
        'each zero region lies on parent data',
      );
    }
    const expected = context.file('zeros-expected.img');
    await mustRun('cp', ['--sparse=always', parentImage, expected]);

    // The smallest cache, so that later writes push the zeroed blocks out of memory.
    const child = await context.mount(1, ['--parent-snapshot-id', parentId, '--cache-size', '16MiB']);
    const getsBefore = await getSnapshotBlockCount();
    for (const region of zeroRegions) {
      for (const target of [child.filePath, expected]) await ddRegion('/dev/zero', target, region, 0, target === child.filePath);
    }
    // Whole zeroed blocks need nothing from the parent; each partly zeroed one is fetched once to be merged.
    assert.equal((await getSnapshotBlockCount()) - getsBefore, partiallyZeroedParentBlocks.size);
    for (const region of zeroRegions) {
      assert.ok(
        (await readRange(child.filePath, region)).equals(Buffer.alloc(region.length)),
        `zeros at ${region.offset} read from the cache`,
      );
    }

    // 48 MiB where the parent has nothing: three times the cache.
    const filler = context.file('filler.bin');
    await mustRun('dd', ['if=/dev/urandom', `of=${filler}`, 'bs=1M', 'count=48', 'status=none']);
    const fillerRegion = { offset: 800 * MIB, length: 48 * MIB };
    for (const target of [child.filePath, expected]) await ddRegion(filler, target, fillerRegion, 0, target === child.filePath);
    for (const region of zeroRegions) {
      assert.ok(
        (await readRange(child.filePath, region)).equals(Buffer.alloc(region.length)),
        `zeros at ${region.offset} read after eviction`,
      );
    }
    await mustRun('cmp', [expected, child.filePath], { timeoutMs: 120_000 });

    expectEnded(await child.stop('SIGINT'), child.snapshotId);
    await context.expectSnapshotEquals(child.snapshotId, expected);
  });
});
