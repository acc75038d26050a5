// The local copy within its budget (--disk-cache-size): an image larger than
// the state directory's disk, qemu-img and ext4 with a budget far below the
// volume, and what a user sees when a block is held nowhere.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { mkdir, statfs, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { autoReserveBytes } from '../../src/core/local-copy';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { isMountPoint } from '../../src/fuse/mountinfo';
import {
  checkExt4Tree,
  copyTreeIntoExt4,
  createZeroImage,
  expectEnded,
  LoopDevices,
  mustRun,
  ScenarioContext,
  sh,
  GIB,
  MIB,
} from './support';

const STATE_FS_BYTES = 256 * MIB;
/** snapshot.json, the lock, the start-up probe and the journal (45 bytes a record) beside the block copies. */
const STATE_OVERHEAD_BYTES = 2 * MIB;
/** The budget of the ext4 run: far below the 4 GiB volume and the tree. */
const EXT4_BUDGET = '64MiB';

/** Samples the used bytes of a file system every few ms until stopped; the peak is kept. */
function samplePeakUse(mountpoint: string): { stop: () => Promise<number> } {
  let peakBytes = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      const stats = await statfs(mountpoint);
      peakBytes = Math.max(peakBytes, (stats.blocks - stats.bfree) * stats.bsize);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return peakBytes;
    },
  };
}

describe('scenario: the local copy within its budget', function () {
  this.timeout(600_000);
  const context = new ScenarioContext();
  const loops = new LoopDevices();
  const tmpfsMounts: string[] = [];

  before(async () => {
    await context.setUp();
  });

  after(async () => {
    await loops.cleanUp();
    for (const mountpoint of tmpfsMounts) if (await isMountPoint(mountpoint).catch(() => false)) await sh('umount', ['-l', mountpoint]);
    await context.tearDown();
  });

  async function smallStateFs(name: string): Promise<string> {
    const mountpoint = context.file(name);
    await mkdir(mountpoint);
    await mustRun('mount', ['-t', 'tmpfs', '-o', `size=${STATE_FS_BYTES}`, 'ebs-fuse-test', mountpoint]);
    tmpfsMounts.push(mountpoint);
    return mountpoint;
  }

  for (const [budgetName, args, budgetBytes] of [
    ['the default budget', [], STATE_FS_BYTES - autoReserveBytes(STATE_FS_BYTES)],
    ['--disk-cache-size 32MiB', ['--disk-cache-size', '32MiB'], 32 * MIB],
  ] as const) {
    it(`1 GiB through a mount whose state directory has 256 MiB (${budgetName}): dd succeeds, the snapshot is exact, the disk use stays within the budget`, async () => {
      const stateFs = await smallStateFs(`state-${budgetBytes}`);
      const source = context.file(`small-disk-${budgetBytes}.bin`);
      await writeFile(source, randomBytes(GIB));
      const mount = await context.mount(2, [...args], { stateDir: stateFs });
      const sampler = samplePeakUse(stateFs);
      const dd = await sh('dd', [`if=${source}`, `of=${mount.filePath}`, 'bs=1M', 'conv=notrunc,fsync', 'status=none'], {
        timeoutMs: 300_000,
      });
      const peakBytes = await sampler.stop();
      assert.equal(dd.code, 0, dd.stderr);
      process.stderr.write(
        `      peak use of the 256 MiB state directory: ${(peakBytes / MIB).toFixed(1)} MiB (budget ${(budgetBytes / MIB).toFixed(0)} MiB)\n`,
      );
      assert.ok(peakBytes <= budgetBytes + STATE_OVERHEAD_BYTES, `peak ${peakBytes} bytes over the budget of ${budgetBytes}`);
      expectEnded(await mount.stop('SIGINT'), mount.snapshotId);
      const expected = context.file(`small-disk-${budgetBytes}.img`);
      await createZeroImage(expected, 2 * GIB);
      await mustRun('dd', [`if=${source}`, `of=${expected}`, 'bs=1M', 'conv=notrunc', 'status=none']);
      await context.expectSnapshotEquals(mount.snapshotId, expected);
    });
  }

  it('qemu-img convert -n of a 1 GiB image into a mount with a 16 MiB budget gives the exact snapshot', async () => {
    // Data with holes between, as a disk image has.
    const image = context.file('qemu-source.img');
    await createZeroImage(image, GIB);
    for (const offsetMiB of [0, 100, 101, 400, 1000]) {
      await mustRun('dd', ['if=/dev/urandom', `of=${image}`, 'bs=1M', 'count=20', `seek=${offsetMiB}`, 'conv=notrunc', 'status=none']);
    }
    await mustRun('dd', ['if=/dev/urandom', `of=${image}`, 'bs=4096', 'count=3', 'seek=70000', 'conv=notrunc', 'status=none']);
    const mount = await context.mount(1, ['--disk-cache-size', '16MiB']);
    await mustRun('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', image, mount.filePath], { timeoutMs: 300_000 });
    expectEnded(await mount.stop('SIGINT'), mount.snapshotId);
    await context.expectSnapshotEquals(mount.snapshotId, image);
  });

  it(`mkfs.ext4, a loop mount and cp -a of a tree of a few hundred MiB on a 4 GiB volume with --disk-cache-size ${EXT4_BUDGET}: e2fsck clean, the tree identical`, async () => {
    const tree = context.file('tree');
    await mkdir(tree);
    await mustRun('cp', ['-a', '/usr/lib/python3', path.join(tree, 'python3')], { timeoutMs: 120_000 });
    for (let file = 0; file < 4; file += 1) await writeFile(path.join(tree, `large-${file}.bin`), randomBytes(32 * MIB));
    const treeBytes = Number((await mustRun('du', ['-sb', tree])).stdout.split('\t')[0]);
    assert.ok(treeBytes > 200 * MIB, `the tree has ${treeBytes} bytes`);

    const mount = await context.mount(4, ['--disk-cache-size', EXT4_BUDGET, '--cache-size', '64MiB']);
    await copyTreeIntoExt4(context, loops, mount.filePath, tree, 'nodiscard,lazy_itable_init=0');
    const result = await mount.stop('SIGINT');
    expectEnded(result, mount.snapshotId);
    assert.doesNotMatch(result.stderr, /held nowhere/);
    const { fsck, diff } = await checkExt4Tree(context, loops, mount.snapshotId, tree);
    assert.equal(fsck.code, 0, `e2fsck -fn: ${fsck.stdout}${fsck.stderr}`);
    assert.equal(diff.code, 0, `diff -r: ${diff.stdout.slice(0, 2000)}${diff.stderr}`);
  });

  it('a read of a block held nowhere gives EIO, one log line and a count in the status; writing the whole block again then works', async () => {
    const source = context.file('nowhere-source.bin');
    await writeFile(source, randomBytes(64 * MIB));
    const mount = await context.mount(1, ['--disk-cache-size', '0', '--cache-size', '16MiB']);
    // 64 MiB streamed through a 16 MiB cache: block 0 is uploaded and leaves memory, kept nowhere.
    await mustRun('dd', [`if=${source}`, `of=${mount.filePath}`, 'bs=1M', 'conv=notrunc,fsync', 'status=none']);
    // O_DIRECT: the kernel's page cache must not answer for the mount.
    const read = await sh('dd', [`if=${mount.filePath}`, 'of=/dev/null', 'bs=512K', 'count=1', 'iflag=direct', 'status=none']);
    assert.notEqual(read.code, 0);
    assert.match(read.stderr, /Input\/output error/);
    // A partial write needs the block's other bytes: its fsync fails too, and nothing wrong reaches the snapshot.
    const partial = await sh('dd', [
      `if=${source}`,
      `of=${mount.filePath}`,
      'bs=4K',
      'count=1',
      `seek=${BLOCK_SIZE_BYTES / 4096 + 3}`,
      'conv=notrunc,fsync',
      'status=none',
    ]);
    assert.notEqual(partial.code, 0);
    const lines = mount.stderr.split('\n').filter((line) => /held nowhere/.test(line) && !/^ebs-fuse: mounted:/.test(line));
    const blockZero = lines.filter((line) => line.includes('block 0 (bytes 0-524287) is held nowhere'));
    assert.equal(blockZero.length, 1, mount.stderr);
    assert.match(
      blockZero[0],
      /a pending snapshot cannot be read through the EBS API; a read of it fails with EIO\. Mount with a larger --disk-cache-size/,
    );
    // The status line counts it (written every 5 s off a terminal).
    const deadline = Date.now() + 15_000;
    while (!/\d+ reads or partial writes of blocks held nowhere/.test(mount.stderr) && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 200));
    assert.match(mount.stderr, /ebs-fuse: mounted: .*, [1-9]\d* reads or partial writes of blocks held nowhere/);

    // Both blocks written whole again: reads and the final flush work.
    await mustRun('dd', [`if=${source}`, `of=${mount.filePath}`, 'bs=1M', 'count=1', 'conv=notrunc,fsync', 'status=none']);
    await mustRun('dd', [`if=${mount.filePath}`, 'of=/dev/null', 'bs=512K', 'count=2', 'iflag=direct', 'status=none']);
    expectEnded(await mount.stop('SIGINT'), mount.snapshotId);
    const expected = context.file('nowhere-expected.img');
    await createZeroImage(expected, GIB);
    await mustRun('dd', [`if=${source}`, `of=${expected}`, 'bs=1M', 'conv=notrunc', 'status=none']);
    await context.expectSnapshotEquals(mount.snapshotId, expected);
  });
});
