// More data than the cache holds: blocks are uploaded, evicted, read back from
// the read-back store and rewritten. I/O uses O_DIRECT so that every read and
// write reaches the mount rather than the kernel's page cache.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { ScenarioContext, createZeroImage, expectEnded, mustRun, GIB, MIB } from './support';

const CACHE_SIZE = '16MiB';
const VOLUME_GIB = 1;

describe('scenario: a cache smaller than the data (eviction, read-back, rewrites)', function () {
  this.timeout(300_000);
  const context = ScenarioContext.forSuite();

  it('reads after eviction return the written data, never-written regions read zeros, rewrites of uploaded blocks stick', async () => {
    const dataBytes = 64 * MIB;
    const source = context.file('eviction-source.bin');
    await writeFile(source, randomBytes(dataBytes));
    const patch = context.file('eviction-patch.bin');
    await writeFile(patch, randomBytes(MIB));
    const expected = context.file('eviction-expected.img');
    await createZeroImage(expected, VOLUME_GIB * GIB);

    const mount = await context.mount(VOLUME_GIB, ['--cache-size', CACHE_SIZE]);
    const write = async (target: string, operands: string[]): Promise<void> => {
      const direct = target === mount.filePath ? ['oflag=direct'] : [];
      await mustRun('dd', [`of=${target}`, 'status=none', 'conv=notrunc', ...direct, ...operands]);
    };
    for (const target of [mount.filePath, expected]) {
      // 64 MiB at 8 MiB into a 16 MiB cache: most blocks are uploaded and evicted.
      await write(target, [`if=${source}`, 'bs=1M', 'seek=8']);
      // Partial rewrites of blocks that are by now uploaded and evicted: each needs the block's old content.
      await write(target, [`if=${patch}`, 'bs=4K', 'count=5', 'oflag=seek_bytes', `seek=${8 * MIB + 4096 * 3 + 100}`]);
      await write(target, [`if=${patch}`, 'bs=4K', 'count=40', 'skip=9', 'oflag=seek_bytes', `seek=${20 * MIB - 70_000}`]);
      await write(target, [`if=${patch}`, 'bs=512', 'count=3', 'oflag=seek_bytes', `seek=${40 * MIB + 511}`]);
    }

    const readBack = context.file('eviction-read.bin');
    await mustRun('dd', [`if=${mount.filePath}`, `of=${readBack}`, 'bs=1M', 'count=128', 'iflag=direct', 'status=none']);
    await mustRun('dd', [`if=${expected}`, `of=${readBack}.expected`, 'bs=1M', 'count=128', 'status=none']);
    // [0, 8 MiB) and [72 MiB, 128 MiB) were never written: the expected image has zeros there.
    await mustRun('cmp', [`${readBack}.expected`, readBack]);

    const result = await mount.stop('SIGINT');
    expectEnded(result, mount.snapshotId);
    const blocks = await context.expectSnapshotEquals(mount.snapshotId, expected);
    assert.equal(blocks, dataBytes / (512 * 1024));
  });

  it('fio random writes with crc32c verification, twice over overlapping ranges', async () => {
    const mount = await context.mount(VOLUME_GIB, ['--cache-size', CACHE_SIZE]);
    const fio = (name: string, offset: string, size: string, blockSize: string, seed: number) =>
      mustRun(
        'fio',
        [
          `--name=${name}`,
          `--filename=${mount.filePath}`,
          `--offset=${offset}`,
          `--size=${size}`,
          '--rw=randwrite',
          `--bs=${blockSize}`,
          '--direct=1',
          '--ioengine=psync',
          '--fallocate=none',
          '--verify=crc32c',
          '--verify_fatal=1',
          '--do_verify=1',
          `--randseed=${seed}`,
          '--end_fsync=1',
          // fio would otherwise leave <job>-verify.state files in the working directory.
          '--verify_state_save=0',
          '--output-format=terse',
        ],
        // Its scratch files, if any, belong in the scenario's folder rather than the working directory.
        { timeoutMs: 180_000, cwd: context.scratch },
      );
    await fio('first', '0', '48M', '16k', 1);
    // Overlaps the first run: rewrites blocks that were uploaded and evicted.
    await fio('second', '24M', '48M', '12k', 2);

    // The final content is what fio last verified; read it through the mount, then compare the snapshot with it.
    const expected = context.file('fio-expected.img');
    await mustRun('dd', [`if=${mount.filePath}`, `of=${expected}`, 'bs=1M', 'count=96', 'iflag=direct', 'status=none']);
    await mustRun('truncate', ['-s', String(VOLUME_GIB * GIB), expected]);
    const result = await mount.stop('SIGINT');
    expectEnded(result, mount.snapshotId);
    await context.expectSnapshotEquals(mount.snapshotId, expected);
  });
});
