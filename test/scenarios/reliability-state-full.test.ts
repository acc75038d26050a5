// A state directory that fills up while mounted: the read-back store (and the
// journal) get ENOSPC. That must surface as EIO from fsync and close at once and
// from a write that needs cache room after the writer's bounded wait; no block
// may be PUT, nor acknowledged, without its bytes in the read-back store; the
// data stays in memory, reads are served, and once there is room again the next
// fsync succeeds and the snapshot completes with every byte.
import { strict as assert } from 'node:assert';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { Journal } from '../../src/core/journal';
import { isMountPoint } from '../../src/fuse/mountinfo';
import { getLocalEbsStats } from '../../src/local-ebs/admin-client';
import { ScenarioContext, createZeroImage, mustRun, sh } from './support';
import { compareRange, compareSnapshot, readAt, writeFsyncClose, MIB, GIB } from './reliability-support';

/** Room for the state's record, the start-up probe (one block) and a few blocks. */
const STATE_FS_SIZE = '3m';
const CACHE_SIZE = '16MiB';
/** The writer's wait for cache room (DEFAULT_LIMITS.writerWaitTimeoutMs) and some slack. */
const WRITE_EIO_WITHIN_MS = 60_000;

describe('reliability: the state directory fills up while mounted', function () {
  this.timeout(240_000);
  const context = new ScenarioContext();
  let stateFs = '';

  before(async () => {
    await context.setUp();
  });

  after(async () => {
    // Lazily, first: the scratch folder that holds it can then be removed even if a mount still uses it.
    if (stateFs && (await isMountPoint(stateFs).catch(() => false))) await sh('umount', ['-l', stateFs]);
    await context.tearDown();
  });

  it('ENOSPC gives EIO from fsync, close and a waiting write, acknowledges nothing it did not store, and recovers once there is room', async () => {
    stateFs = context.file('state-fs');
    await mkdir(stateFs);
    await mustRun('mount', ['-t', 'tmpfs', '-o', `size=${STATE_FS_SIZE}`, 'ebs-fuse-test', stateFs]);
    const source = context.file('state-full-source.bin');
    await writeFile(source, randomBytes(40 * MIB));
    const expected = context.file('state-full-expected.img');
    await createZeroImage(expected, GIB);
    const write = async (target: string, offsetBytes: number, lengthBytes: number, sourceOffsetBytes: number, fsync: boolean) =>
      sh('dd', [`if=${source}`, `of=${target}`, 'bs=1M', `skip=${sourceOffsetBytes}`, `count=${lengthBytes}`, `seek=${offsetBytes}`,
        'iflag=skip_bytes,count_bytes', 'oflag=seek_bytes', fsync ? 'conv=notrunc,fsync' : 'conv=notrunc', 'status=none'], { timeoutMs: 180_000 });

    const mount = await context.mount(1, ['--cache-size', CACHE_SIZE], { stateDir: stateFs });
    const stateDirectory = path.join(stateFs, mount.snapshotId);
    // Fits: acknowledged.
    assert.equal((await write(mount.filePath, MIB + 5, MIB, 0, true)).code, 0);
    await write(expected, MIB + 5, MIB, 0, false);

    // 8 MiB more do not fit in the state directory.
    const second = context.file('state-full-second.bin');
    await writeFile(second, (await readFile(source)).subarray(2 * MIB, 10 * MIB));
    const failed = await writeFsyncClose(mount.filePath, 20 * MIB, second);
    await write(expected, 20 * MIB, 8 * MIB, 2 * MIB, false);
    process.stderr.write(`      fsync ${failed.fsyncError} in ${failed.fsyncMs} ms, close ${failed.closeError} in ${failed.closeMs} ms\n`);
    assert.equal(failed.writeError, null);
    assert.equal(failed.fsyncError, 'EIO');
    assert.equal(failed.closeError, 'EIO');
    assert.ok(failed.fsyncMs < 10_000 && failed.closeMs < 10_000);
    // One line says where, why and what to do.
    const causeLines = mount.stderr.split('\n').filter((line) => /^ebs-fuse: upload of block \d+ failed/.test(line));
    assert.equal(causeLines.length, 1, mount.stderr);
    assert.match(causeLines[0], new RegExp(`cannot keep the block in the state directory ${stateDirectory} \\(ENOSPC: no space left on device.*\\); free space there`));

    // A writer that needs room in a cache full of blocks that cannot be uploaded waits, bounded, then gets EIO.
    const started = Date.now();
    const stuck = await write(mount.filePath, 100 * MIB, 24 * MIB, 12 * MIB, false);
    const waitedMs = Date.now() - started;
    process.stderr.write(`      dd into a full cache: exit ${stuck.code} after ${waitedMs} ms\n`);
    assert.notEqual(stuck.code, 0);
    assert.match(stuck.stderr, /Input\/output error/);
    assert.ok(waitedMs < WRITE_EIO_WITHIN_MS, `the write failed after ${waitedMs} ms`);

    // Nothing acknowledged that was not stored: every ack's block is in the read-back store with that digest,
    // and the service got no PUT beyond the blocks the journal announced.
    const replay = Journal.replay(await readFile(Journal.fileIn(stateDirectory)));
    assert.ok(replay.acknowledged.size >= 2, 'the first write was acknowledged');
    for (const [index, digest] of replay.acknowledged) {
      const stored = await readAt(path.join(stateDirectory, 'readback-00.img'), index * BLOCK_SIZE_BYTES, BLOCK_SIZE_BYTES);
      const padded = Buffer.concat([stored, Buffer.alloc(BLOCK_SIZE_BYTES - stored.length)]);
      assert.ok(createHash('sha256').update(padded).digest().equals(digest), `block ${index} is acknowledged but not stored`);
    }
    const stats = await getLocalEbsStats(context.localEbs.endpoint, context.localEbs.credentials);
    const announced = new Set([...replay.acknowledged.keys(), ...replay.unacknowledged.keys()]);
    assert.ok((stats.requests.PutSnapshotBlock ?? 0) <= announced.size, `${stats.requests.PutSnapshotBlock} PUTs for ${announced.size} blocks announced in the journal`);

    // Reads are served, the dirty data is kept.
    assert.equal(await compareRange(expected, mount.filePath, 0, 40 * MIB), -1);

    // Room again: the next fsync succeeds, the interrupted dd can be run again, and every byte completes.
    await mustRun('mount', ['-o', 'remount,size=128m', stateFs]);
    const retried = await writeFsyncClose(mount.filePath, 0, '-');
    assert.deepEqual([retried.fsyncError, retried.closeError], [null, null]);
    assert.equal((await write(mount.filePath, 100 * MIB, 24 * MIB, 12 * MIB, true)).code, 0);
    await write(expected, 100 * MIB, 24 * MIB, 12 * MIB, false);
    const result = await mount.stop('SIGINT');
    assert.equal(result.code, 0, result.stderr);
    assert.equal((await compareSnapshot(context, mount.snapshotId, expected, 1)).lost, 0);
  });
});
