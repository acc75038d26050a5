// A completed snapshot mounted --read-only, used the way a user browses one:
// the ext4 image is built locally and sent with `ebs-fuse upload`, then the
// read-only file must equal it (cmp), pass e2fsck -n, loop-mount ro with the
// files, refuse every kind of change with EROFS, and send no write of any kind
// to the service. A pending snapshot cannot be mounted read-only.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { mkdir, open, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { isMountPoint } from '../../src/fuse/mountinfo';
import { getLocalEbsStats } from '../../src/local-ebs/admin-client';
import { cliEnvironment, runCli } from '../support/mount-process';
import { LoopDevices, ScenarioContext, createZeroImage, expectEnded, mustRun, sh, waitForLoopDetached, GIB, MIB } from './support';

const DIRECTORIES = 8;
const FILES_PER_DIRECTORY = 50;
const LIST_PAGE_BLOCKS = 10_000;

async function makeTree(root: string): Promise<void> {
  for (let directory = 0; directory < DIRECTORIES; directory += 1) {
    const folder = path.join(root, `dir-${directory}`);
    await mkdir(folder, { recursive: true });
    for (let file = 0; file < FILES_PER_DIRECTORY; file += 1) {
      await writeFile(path.join(folder, `file-${file}.bin`), randomBytes((file * 7919 + directory * 3571) % 30_000));
    }
  }
  await writeFile(path.join(root, 'large.bin'), randomBytes(6 * MIB + 777));
}

/** Resolves with the error code of the rejected promise (undefined if it resolved). */
async function errorCode(attempt: Promise<unknown>): Promise<string | undefined> {
  try {
    await attempt;
    return undefined;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code;
  }
}

describe('scenario: a completed ext4 snapshot mounted --read-only', function () {
  this.timeout(240_000);
  const context = new ScenarioContext();
  const loops = new LoopDevices();

  before(async () => {
    await context.setUp();
  });

  after(async () => {
    await loops.cleanUp();
    await context.tearDown();
  });

  const serverCounts = async (): Promise<Record<string, number>> =>
    (await getLocalEbsStats(context.localEbs.endpoint, context.localEbs.credentials)).requests;
  const delta = (after: Record<string, number>, before: Record<string, number>, operation: string): number =>
    (after[operation] ?? 0) - (before[operation] ?? 0);

  async function loopMount(image: string, options: string): Promise<string> {
    const mountpoint = context.file(`loop-${loops.mountpoints.length}`);
    await mkdir(mountpoint);
    loops.mountpoints.push(mountpoint);
    loops.files.push(image);
    await mustRun('mount', ['-o', options, image, mountpoint]);
    return mountpoint;
  }

  async function loopUnmount(image: string, mountpoint: string): Promise<void> {
    await mustRun('umount', [mountpoint]);
    await waitForLoopDetached(image);
  }

  it('equals the uploaded image, passes e2fsck -n, loop-mounts with the files, and refuses every change with EROFS', async () => {
    const tree = context.file('tree');
    await makeTree(tree);
    const image = context.file('ext4.img');
    await createZeroImage(image, GIB);
    await mustRun('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', image], { timeoutMs: 120_000 });
    const building = await loopMount(image, 'loop');
    await mustRun('cp', ['-a', tree, path.join(building, 'tree')], { timeoutMs: 120_000 });
    await loopUnmount(image, building);

    const upload = await runCli(['upload', image, '--endpoint', context.localEbs.endpoint], {
      env: cliEnvironment(context.endpoint),
      timeoutMs: 120_000,
    });
    assert.equal(upload.code, 0, `upload failed:\n${upload.stderr}`);
    const snapshotId = upload.stdout.trim();
    const client = context.client();
    const page = await client.listSnapshotBlocks(snapshotId, { maxResults: LIST_PAGE_BLOCKS }).finally(() => client.close());
    assert.equal(page.nextToken, undefined);
    const snapshotBlocks = page.blocks.length;
    assert.ok(snapshotBlocks > 0);

    const before = await serverCounts();
    const readOnly = await context.mount(undefined, ['--snapshot-id', snapshotId, '--read-only']);
    loops.files.push(readOnly.filePath);

    const getsBeforeCmp = (await serverCounts()).GetSnapshotBlock ?? 0;
    await mustRun('cmp', [image, readOnly.filePath], { timeoutMs: 120_000 });
    // The clean cache holds every block fetched (read-ahead included): one GET per block the snapshot has, none for holes.
    assert.equal(
      ((await serverCounts()).GetSnapshotBlock ?? 0) - getsBeforeCmp,
      snapshotBlocks,
      'GetSnapshotBlock calls for one sequential read',
    );

    const fsck = await sh('e2fsck', ['-fn', readOnly.filePath], { timeoutMs: 120_000 });
    assert.equal(fsck.code, 0, `e2fsck -fn on the read-only file: ${fsck.stdout}${fsck.stderr}`);

    const browsing = await loopMount(readOnly.filePath, 'loop,ro');
    const diff = await sh('diff', ['-r', tree, path.join(browsing, 'tree')], { timeoutMs: 120_000 });
    assert.equal(diff.code, 0, `diff -r: ${diff.stdout.slice(0, 2000)}${diff.stderr}`);
    await loopUnmount(readOnly.filePath, browsing);

    // Opening for writing, truncating and O_TRUNC are all refused.
    assert.equal(await errorCode(open(readOnly.filePath, 'r+')), 'EROFS');
    assert.equal(await errorCode(open(readOnly.filePath, 'w')), 'EROFS');
    assert.equal(await errorCode(open(readOnly.filePath, 'a')), 'EROFS');
    assert.equal(await errorCode(truncate(readOnly.filePath, 0)), 'EROFS');
    const dd = await sh('dd', ['if=/dev/zero', `of=${readOnly.filePath}`, 'bs=4K', 'count=1', 'conv=notrunc', 'status=none']);
    assert.notEqual(dd.code, 0);
    assert.match(dd.stderr, /Read-only file system/);
    // A loop mount asked for read-write gets a read-only device, and a file system that refuses writes.
    const writable = await loopMount(readOnly.filePath, 'loop');
    const touch = await sh('touch', [path.join(writable, 'tree', 'new-file')]);
    assert.notEqual(touch.code, 0);
    assert.match(touch.stderr, /Read-only file system/);
    await loopUnmount(readOnly.filePath, writable);

    expectEnded(await readOnly.stop('SIGINT'), snapshotId);
    const after = await serverCounts();
    for (const operation of ['StartSnapshot', 'PutSnapshotBlock', 'CompleteSnapshot']) {
      assert.equal(delta(after, before, operation), 0, `${operation} calls during the read-only mount`);
    }
    await context.expectSnapshotEquals(snapshotId, image);
  });

  it('refuses to mount a pending snapshot read-only, in one line, and mounts nothing', async () => {
    const client = context.client();
    const { snapshotId } = await client.startSnapshot({ volumeSizeGiB: 1 }).finally(() => client.close());
    const mountpoint = context.file('pending-mnt');
    await mkdir(mountpoint);
    const result = await runCli(
      [
        'mount',
        mountpoint,
        '--snapshot-id',
        snapshotId,
        '--read-only',
        '--endpoint',
        context.localEbs.endpoint,
        '--state-dir',
        context.file('state'),
      ],
      {
        env: cliEnvironment(context.endpoint),
      },
    );
    assert.notEqual(result.code, 0);
    assert.equal(result.stdout, '');
    const lines = result.stderr.trim().split('\n');
    assert.equal(lines.length, 1, result.stderr);
    assert.match(lines[0], new RegExp(`^ebs-fuse: .*${snapshotId}`));
    assert.equal(await isMountPoint(mountpoint), false);
  });
});
