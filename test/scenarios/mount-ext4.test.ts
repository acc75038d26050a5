// A file system on the mounted file: mkfs.ext4, a loop mount, a tree of a few
// thousand files copied in, then the completed snapshot read back through
// GetSnapshotBlock must pass e2fsck and hold the identical tree.
import { strict as assert } from 'node:assert';
import { randomBytes, randomInt } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { LoopDevices, ScenarioContext, checkExt4Tree, copyTreeIntoExt4, expectEnded, MIB } from './support';

const DIRECTORIES = 30;
const FILES_PER_DIRECTORY = 100;
const SMALL_FILE_MAX_BYTES = 20_000;
const LARGE_FILES = 3;
const LARGE_FILE_BYTES = 4 * MIB;

async function makeTree(root: string): Promise<number> {
  let totalBytes = 0;
  for (let directory = 0; directory < DIRECTORIES; directory += 1) {
    const folder = path.join(root, `dir-${directory}`, `sub-${directory % 7}`);
    await mkdir(folder, { recursive: true });
    await Promise.all(
      Array.from({ length: FILES_PER_DIRECTORY }, (_, file) => {
        const data = randomBytes(randomInt(SMALL_FILE_MAX_BYTES + 1));
        totalBytes += data.length;
        return writeFile(path.join(folder, `file-${file}.bin`), data);
      }),
    );
  }
  for (let file = 0; file < LARGE_FILES; file += 1) {
    totalBytes += LARGE_FILE_BYTES;
    await writeFile(path.join(root, `large-${file}.bin`), randomBytes(LARGE_FILE_BYTES));
  }
  return totalBytes;
}

// Through both FUSE paths: libfuse 3 (the default) and fuse-native (where libfuse 3 is missing).
for (const binding of ['libfuse3', 'fuse-native'] as const)
  describe(`scenario: mkfs.ext4 and a file tree on the mounted file (${binding})`, function () {
    this.timeout(300_000);
    const context = new ScenarioContext(binding);
    const loops = new LoopDevices();

    before(async () => {
      await context.setUp();
    });

    after(async () => {
      await loops.cleanUp();
      await context.tearDown();
    });

    it('e2fsck is clean on the downloaded snapshot and the tree is identical', async () => {
      const tree = context.file('tree');
      const treeBytes = await makeTree(tree);
      assert.ok(treeBytes > 20 * MIB);

      const mount = await context.mount(1);
      await copyTreeIntoExt4(context, loops, mount.filePath, tree);
      const result = await mount.stop('SIGINT');
      expectEnded(result, mount.snapshotId);
      assert.match(result.stderr, new RegExp(`kernel requests through ${binding}:`));

      const { fsck, diff } = await checkExt4Tree(context, loops, mount.snapshotId, tree);
      assert.equal(fsck.code, 0, `e2fsck -fn: ${fsck.stdout}${fsck.stderr}`);
      assert.equal(diff.code, 0, `diff -r: ${diff.stdout.slice(0, 2000)}${diff.stderr}`);
    });
  });
