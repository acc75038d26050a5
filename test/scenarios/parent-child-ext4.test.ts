// An incremental child made the way a user makes one: an ext4 parent built
// through the mount, then a child mounted with --parent-snapshot-id whose file
// system is changed through a loop mount (files modified, added, deleted,
// renamed). Both snapshots are read back through GetSnapshotBlock: the child
// is a clean file system holding the changed tree, the parent is untouched,
// and ListChangedBlocks(parent, child) names exactly the blocks whose bytes
// differ between the two images.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { appendFile, mkdir, open, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { LoopDevices, ScenarioContext, expectEnded, mustRun, sh, waitForLoopDetached, MIB } from './support';

const B = BLOCK_SIZE_BYTES;
const DIRECTORIES = 12;
const FILES_PER_DIRECTORY = 40;
const SMALL_FILE_MAX_BYTES = 20_000;
const LARGE_FILE_BYTES = 3 * MIB;
const LIST_PAGE_BLOCKS = 1000;
const LIST_PAGES_MAX = 1000;

async function makeTree(root: string): Promise<void> {
  for (let directory = 0; directory < DIRECTORIES; directory += 1) {
    const folder = path.join(root, `dir-${directory}`);
    await mkdir(folder, { recursive: true });
    for (let file = 0; file < FILES_PER_DIRECTORY; file += 1) {
      await writeFile(path.join(folder, `file-${file}.bin`), randomBytes((file * 7919 + directory * 104_729) % (SMALL_FILE_MAX_BYTES + 1)));
    }
  }
  for (let file = 0; file < 2; file += 1) await writeFile(path.join(root, `large-${file}.bin`), randomBytes(LARGE_FILE_BYTES));
}

/**
 * The child's changes, with their bytes drawn once so that the expected tree
 * and the tree inside the loop mount get exactly the same content.
 */
function drawChanges(): (root: string) => Promise<void> {
  const patch = randomBytes(5000);
  const appended = randomBytes(3000);
  const replaced = randomBytes(12_345);
  const addedSmall = Array.from({ length: 20 }, (_, file) => randomBytes(100 + file * 997));
  const addedLarge = randomBytes(2 * MIB + 4321);
  return async (root: string) => {
    // Modified in place, inside a large file (a partial write to a parent block).
    const handle = await open(path.join(root, 'large-0.bin'), 'r+');
    try {
      await handle.write(patch, 0, patch.length, MIB + 123);
    } finally {
      await handle.close();
    }
    await appendFile(path.join(root, 'dir-1', 'file-3.bin'), appended);
    await writeFile(path.join(root, 'dir-2', 'file-5.bin'), replaced);
    // Added.
    await mkdir(path.join(root, 'added', 'deeper'), { recursive: true });
    for (const [file, data] of addedSmall.entries()) await writeFile(path.join(root, 'added', `new-${file}.bin`), data);
    await writeFile(path.join(root, 'added', 'deeper', 'large-new.bin'), addedLarge);
    // Deleted: a whole directory, one file, a large file.
    await rm(path.join(root, 'dir-3'), { recursive: true });
    await rm(path.join(root, 'dir-4', 'file-7.bin'));
    await rm(path.join(root, 'large-1.bin'));
    // Renamed across directories.
    await rename(path.join(root, 'dir-5', 'file-1.bin'), path.join(root, 'dir-6', 'renamed.bin'));
  };
}

/** Indexes of the 512 KiB blocks whose bytes differ between two images of one size. */
async function differingBlocks(first: string, second: string): Promise<number[]> {
  const a = await open(first, 'r');
  const b = await open(second, 'r');
  try {
    const sizeBytes = (await a.stat()).size;
    assert.equal((await b.stat()).size, sizeBytes, `${first} and ${second} differ in size`);
    const bufferA = Buffer.alloc(B);
    const bufferB = Buffer.alloc(B);
    const differing: number[] = [];
    for (let index = 0; index * B < sizeBytes; index += 1) {
      await a.read(bufferA, 0, B, index * B);
      await b.read(bufferB, 0, B, index * B);
      if (!bufferA.equals(bufferB)) differing.push(index);
    }
    return differing;
  } finally {
    await a.close();
    await b.close();
  }
}

describe('scenario: an ext4 parent and an incremental child changed through a loop mount', function () {
  this.timeout(300_000);
  const context = new ScenarioContext();
  const loops = new LoopDevices();

  before(async () => {
    await context.setUp();
  });

  after(async () => {
    await loops.cleanUp();
    await context.tearDown();
  });

  /** Loop-mounts `image` on a fresh directory, runs `body`, unmounts and waits for the loop device to go. */
  async function withLoopMount(image: string, options: string, body: (root: string) => Promise<void>): Promise<void> {
    const mountpoint = context.file(`loop-${loops.mountpoints.length}`);
    await mkdir(mountpoint);
    loops.mountpoints.push(mountpoint);
    loops.files.push(image);
    await mustRun('mount', ['-o', options, image, mountpoint]);
    try {
      await body(mountpoint);
    } finally {
      await mustRun('umount', [mountpoint]);
      await waitForLoopDetached(image);
    }
  }

  async function expectCleanFsck(image: string): Promise<void> {
    const fsck = await sh('e2fsck', ['-fn', image], { timeoutMs: 120_000 });
    assert.equal(fsck.code, 0, `e2fsck -fn ${path.basename(image)}: ${fsck.stdout}${fsck.stderr}`);
  }

  async function expectTree(image: string, expectedTree: string): Promise<void> {
    await withLoopMount(image, 'loop,ro', async (root) => {
      const diff = await sh('diff', ['-r', expectedTree, path.join(root, 'tree')], { timeoutMs: 120_000 });
      assert.equal(diff.code, 0, `diff -r against ${path.basename(image)}: ${diff.stdout.slice(0, 2000)}${diff.stderr}`);
    });
  }

  /** ListChangedBlocks(first, second), every page. */
  async function listChangedBlocks(firstSnapshotId: string, secondSnapshotId: string): Promise<number[]> {
    const client = context.client();
    try {
      const indexes: number[] = [];
      let nextToken: string | undefined;
      for (let pages = 0; pages < LIST_PAGES_MAX; pages += 1) {
        const page = await client.listChangedBlocks(secondSnapshotId, firstSnapshotId, { maxResults: LIST_PAGE_BLOCKS, nextToken });
        indexes.push(...page.changedBlocks.map((block) => block.blockIndex));
        nextToken = page.nextToken;
        if (!nextToken) return indexes;
      }
      throw new Error(`ListChangedBlocks had more than ${LIST_PAGES_MAX} pages`);
    } finally {
      client.close();
    }
  }

  it('the child is a clean ext4 with the changed tree, the parent is unchanged, and ListChangedBlocks lists exactly the changed blocks', async () => {
    const tree = context.file('tree');
    await makeTree(tree);
    const applyChanges = drawChanges();
    const expectedTree = context.file('expected-tree');
    await mustRun('cp', ['-a', tree, expectedTree]);
    await applyChanges(expectedTree);

    // The parent: mkfs and a tree, all through the mount. The inode tables are zeroed by mkfs
    // (lazy_itable_init=0): left to the kernel, its ext4lazyinit thread zeroes them a few seconds
    // after some later mount, possibly the child's, and the child would then send zero blocks
    // where the parent has none, listed as changed although their bytes are the same.
    const parent = await context.mount(1);
    loops.files.push(parent.filePath);
    await mustRun('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard,lazy_itable_init=0', parent.filePath], { timeoutMs: 120_000 });
    await withLoopMount(parent.filePath, 'loop', async (root) => {
      await mustRun('cp', ['-a', tree, path.join(root, 'tree')], { timeoutMs: 120_000 });
    });
    expectEnded(await parent.stop('SIGINT'), parent.snapshotId);
    const parentBefore = context.file('parent-before.img');
    await context.download(parent.snapshotId, parentBefore);

    // The child: the parent's file system shows through, then changes.
    const child = await context.mount(1, ['--parent-snapshot-id', parent.snapshotId]);
    loops.files.push(child.filePath);
    await withLoopMount(child.filePath, 'loop', async (root) => {
      const diff = await sh('diff', ['-r', tree, path.join(root, 'tree')], { timeoutMs: 120_000 });
      assert.equal(diff.code, 0, `the child does not show the parent's tree: ${diff.stdout.slice(0, 2000)}${diff.stderr}`);
      await applyChanges(path.join(root, 'tree'));
    });
    expectEnded(await child.stop('SIGINT'), child.snapshotId);

    const childImage = context.file('child.img');
    await context.download(child.snapshotId, childImage);
    await expectCleanFsck(childImage);
    await expectTree(childImage, expectedTree);

    const parentAfter = context.file('parent-after.img');
    await context.download(parent.snapshotId, parentAfter);
    await mustRun('cmp', [parentBefore, parentAfter]);
    await expectCleanFsck(parentAfter);
    await expectTree(parentAfter, tree);

    const differing = await differingBlocks(parentAfter, childImage);
    const listed = await listChangedBlocks(parent.snapshotId, child.snapshotId);
    // The changes above are more than a few MiB, so many blocks must differ.
    assert.ok(differing.length * B > 2 * MIB, `only ${differing.length} blocks differ`);
    assert.deepEqual(listed, differing, 'ListChangedBlocks(parent, child) against the blocks whose bytes differ');
  });
});
