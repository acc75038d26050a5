// The other two ways to mount: --resume of a pending snapshot (after
// --no-complete, and after the mount process was killed), and a completed
// snapshot mounted --read-only.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { setLocalEbsFaults } from '../../src/local-ebs/admin-client';
import { ScenarioContext, createZeroImage, expectEnded, mustRun, sh, GIB, MIB } from './support';

describe('scenario: --no-complete and --resume, kill -9 and --resume, --read-only', function () {
  this.timeout(240_000);
  const context = ScenarioContext.forSuite();

  it("leaves a snapshot pending with --no-complete, resumes it, completes it with both runs' data, then mounts it read-only", async () => {
    const source = context.file('resume-source.bin');
    await writeFile(source, randomBytes(8 * MIB));
    const expected = context.file('resume-expected.img');
    await createZeroImage(expected, GIB);

    const first = await context.mount(1, ['--no-complete']);
    for (const target of [first.filePath, expected]) {
      await mustRun('dd', [`if=${source}`, `of=${target}`, 'bs=1M', 'count=4', 'seek=3', 'conv=notrunc', 'status=none']);
    }
    expectEnded(await first.stop('SIGINT'), first.snapshotId, 'pending');

    const second = await context.mount(undefined, ['--resume', first.snapshotId]);
    assert.equal(second.snapshotId, first.snapshotId);
    // The first run's data reads back in the resumed mount.
    await mustRun('cmp', [expected, second.filePath]);
    for (const target of [second.filePath, expected]) {
      // Overlaps the first run's blocks partly, unaligned.
      await mustRun('dd', [
        `if=${source}`,
        `of=${target}`,
        'bs=4K',
        'count=300',
        'skip=1100',
        'oflag=seek_bytes',
        `seek=${6 * MIB + 1234}`,
        'conv=notrunc',
        'status=none',
      ]);
    }
    expectEnded(await second.stop('SIGTERM'), first.snapshotId);
    await context.expectSnapshotEquals(first.snapshotId, expected);

    const readOnly = await context.mount(undefined, ['--snapshot-id', first.snapshotId, '--read-only']);
    await mustRun('cmp', [expected, readOnly.filePath]);
    const write = await sh('dd', ['if=/dev/zero', `of=${readOnly.filePath}`, 'bs=4K', 'count=1', 'conv=notrunc', 'status=none']);
    assert.notEqual(write.code, 0);
    assert.match(write.stderr, /Read-only file system/);
    expectEnded(await readOnly.stop('SIGINT'), first.snapshotId);
  });

  it("a child of a completed snapshot reads its parent's data and completes to parent plus changes", async () => {
    const source = context.file('parent-source.bin');
    await writeFile(source, randomBytes(6 * MIB));
    const expected = context.file('parent-expected.img');
    await createZeroImage(expected, GIB);

    const parent = await context.mount(1);
    for (const target of [parent.filePath, expected]) {
      await mustRun('dd', [`if=${source}`, `of=${target}`, 'bs=1M', 'count=4', 'seek=2', 'conv=notrunc', 'status=none']);
    }
    expectEnded(await parent.stop('SIGINT'), parent.snapshotId);

    const child = await context.mount(1, ['--parent-snapshot-id', parent.snapshotId]);
    assert.notEqual(child.snapshotId, parent.snapshotId);
    await mustRun('cmp', [expected, child.filePath]);
    for (const target of [child.filePath, expected]) {
      // A partial write into a parent block: the rest of that block must stay the parent's.
      await mustRun('dd', [
        `if=${source}`,
        `of=${target}`,
        'bs=4K',
        'count=10',
        'skip=1300',
        'oflag=seek_bytes',
        `seek=${3 * MIB + 5000}`,
        'conv=notrunc',
        'status=none',
      ]);
    }
    expectEnded(await child.stop('SIGINT'), child.snapshotId);
    await context.expectSnapshotEquals(child.snapshotId, expected);
  });

  it('when the final flush fails it does not complete, says how to resume, exits non-zero; --resume then completes', async () => {
    const source = context.file('unflushed-source.bin');
    await writeFile(source, randomBytes(2 * MIB));
    const expected = context.file('unflushed-expected.img');
    await createZeroImage(expected, GIB);
    const { endpoint } = context;

    const failing = await context.mount(1);
    // A permanent refusal fails each upload at once; a transient one (500) fails the same way only
    // after the retry policy's 20 attempts, twice (close, then the final flush): 100 s of waiting
    // that the fsync scenarios already spend on the transient path.
    await setLocalEbsFaults(endpoint.endpoint, endpoint, 'deny=1,ops=put');
    let result;
    try {
      // Its close uploads like fsync, fails, and leaves the data dirty for the final flush.
      const write = await sh('dd', [
        `if=${source}`,
        `of=${failing.filePath}`,
        'bs=1M',
        'count=2',
        'seek=30',
        'conv=notrunc',
        'status=none',
      ]);
      assert.match(write.stderr, /Input\/output error/);
      result = await failing.stop('SIGINT');
    } finally {
      await setLocalEbsFaults(endpoint.endpoint, endpoint, '');
    }
    await mustRun('dd', [`if=${source}`, `of=${expected}`, 'bs=1M', 'count=2', 'seek=30', 'conv=notrunc', 'status=none']);
    assert.equal(result.code, 1, result.stderr);
    assert.deepEqual(result.stdout.trim().split('\n'), [`${failing.snapshotId} ${failing.filePath}`, `${failing.snapshotId} error`]);
    assert.match(result.stderr, new RegExp(`--resume ${failing.snapshotId}`));

    const resumed = await context.mount(undefined, ['--resume', failing.snapshotId]);
    await mustRun('cmp', [expected, resumed.filePath]);
    expectEnded(await resumed.stop('SIGINT'), failing.snapshotId);
    await context.expectSnapshotEquals(failing.snapshotId, expected);
  });

  it('resumes after the mount process was killed: data covered by fsync survives', async () => {
    const source = context.file('crash-source.bin');
    await writeFile(source, randomBytes(4 * MIB));
    const expected = context.file('crash-expected.img');
    await createZeroImage(expected, GIB);

    const crashed = await context.mount(1);
    for (const target of [crashed.filePath, expected]) {
      await mustRun('dd', [`if=${source}`, `of=${target}`, 'bs=1M', 'count=4', 'seek=20', 'conv=notrunc,fsync', 'status=none']);
    }
    await crashed.cleanup();
    assert.equal(crashed.running, false);

    const resumed = await context.mount(undefined, ['--resume', crashed.snapshotId]);
    await mustRun('cmp', [expected, resumed.filePath]);
    expectEnded(await resumed.stop('SIGINT'), crashed.snapshotId);
    await context.expectSnapshotEquals(crashed.snapshotId, expected);
  });
});
