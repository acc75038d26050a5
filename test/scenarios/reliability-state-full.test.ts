// A state directory that fills up while mounted. Copies in the local copy are
// dropped when there is no room (writes never fail for lack of local disk), but
// the journal must be written: when even that fails, fsync and close return EIO
// at once and a write that needs cache room does after the writer's bounded
// wait; no block is PUT without its intent in the journal; the data stays in
// memory, reads are served, and once there is room again the next fsync
// succeeds and the snapshot completes with every byte.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Journal } from '../../src/core/journal';
import { isMountPoint } from '../../src/fuse/mountinfo';
import { getLocalEbsStats } from '../../src/local-ebs/admin-client';
import { ScenarioContext, createZeroImage, mustRun, sh } from './support';
import { compareRange, compareSnapshot, writeFsyncClose, MIB, GIB } from './reliability-support';

/** Room for the state's record, the start-up probe (one block), the journal and a few block copies. */
const STATE_FS_SIZE = '3m';
/**
 * Room for 128 blocks, so the second write never waits for the cache: its 96
 * blocks' intents outgrow the journal's last page (at most 91 records of 45
 * bytes fit in what is left of it once the file system is full).
 */
const CACHE_SIZE = '64MiB';
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
    await writeFile(source, randomBytes(128 * MIB));
    const expected = context.file('state-full-expected.img');
    await createZeroImage(expected, GIB);
    const write = async (target: string, offsetBytes: number, lengthBytes: number, sourceOffsetBytes: number, fsync: boolean) =>
      sh(
        'dd',
        [
          `if=${source}`,
          `of=${target}`,
          'bs=1M',
          `skip=${sourceOffsetBytes}`,
          `count=${lengthBytes}`,
          `seek=${offsetBytes}`,
          'iflag=skip_bytes,count_bytes',
          'oflag=seek_bytes',
          fsync ? 'conv=notrunc,fsync' : 'conv=notrunc',
          'status=none',
        ],
        { timeoutMs: 180_000 },
      );

    const mount = await context.mount(1, ['--cache-size', CACHE_SIZE], { stateDir: stateFs });
    const stateDirectory = path.join(stateFs, mount.snapshotId);
    // Far more than the 3 MiB file system: the local copy keeps what fits, the rest is dropped, nothing fails.
    assert.equal((await write(mount.filePath, MIB + 5, 12 * MIB, 0, true)).code, 0);
    await write(expected, MIB + 5, 12 * MIB, 0, false);

    // A file fills what is left: now the journal cannot take a record.
    const filler = path.join(stateFs, 'filler');
    await sh('dd', ['if=/dev/zero', `of=${filler}`, 'bs=64K', 'status=none']);
    const second = context.file('state-full-second.bin');
    await writeFile(second, (await readFile(source)).subarray(2 * MIB, 50 * MIB));
    const failed = await writeFsyncClose(mount.filePath, 20 * MIB, second);
    await write(expected, 20 * MIB, 48 * MIB, 2 * MIB, false);
    process.stderr.write(`      fsync ${failed.fsyncError} in ${failed.fsyncMs} ms, close ${failed.closeError} in ${failed.closeMs} ms\n`);
    assert.equal(failed.writeError, null);
    assert.equal(failed.fsyncError, 'EIO');
    assert.equal(failed.closeError, 'EIO');
    assert.ok(failed.fsyncMs < 10_000 && failed.closeMs < 10_000);
    // One line says where, why and what to do.
    const causeLines = mount.stderr.split('\n').filter((line) => /^ebs-fuse: upload of block \d+ failed/.test(line));
    assert.equal(causeLines.length, 1, mount.stderr);
    assert.match(
      causeLines[0],
      new RegExp(
        `cannot write the journal ${path.join(stateDirectory, 'blocks.journal')} \\(ENOSPC: no space left on device.*\\); free space there`,
      ),
    );
    // The data not uploaded is kept in memory, and reads of it are served.
    assert.equal(await compareRange(expected, mount.filePath, 20 * MIB, 48 * MIB), -1);

    // A writer that needs room in a cache full of blocks that cannot be uploaded waits, bounded, then gets EIO.
    const started = Date.now();
    const stuck = await write(mount.filePath, 100 * MIB, 80 * MIB, 40 * MIB, false);
    const waitedMs = Date.now() - started;
    process.stderr.write(`      dd into a full cache: exit ${stuck.code} after ${waitedMs} ms\n`);
    assert.notEqual(stuck.code, 0);
    assert.match(stuck.stderr, /Input\/output error/);
    assert.ok(waitedMs < WRITE_EIO_WITHIN_MS, `the write failed after ${waitedMs} ms`);

    // No PUT went out without its intent: the service got no PUT beyond the blocks the journal announced.
    const replay = Journal.replay(await readFile(Journal.fileIn(stateDirectory)));
    assert.ok(replay.acknowledged.size >= 24, 'the first write was acknowledged');
    const stats = await getLocalEbsStats(context.localEbs.endpoint, context.localEbs.credentials);
    const announced = new Set([...replay.acknowledged.keys(), ...replay.unacknowledged.keys()]);
    assert.ok(
      (stats.requests.PutSnapshotBlock ?? 0) <= announced.size,
      `${stats.requests.PutSnapshotBlock} PUTs for ${announced.size} blocks announced in the journal`,
    );

    // Room again: the next fsync succeeds, the interrupted dd can be run again, and every byte completes.
    await rm(filler);
    const retried = await writeFsyncClose(mount.filePath, 0, '-');
    assert.deepEqual([retried.fsyncError, retried.closeError], [null, null]);
    assert.equal((await write(mount.filePath, 100 * MIB, 80 * MIB, 40 * MIB, true)).code, 0);
    await write(expected, 100 * MIB, 80 * MIB, 40 * MIB, false);
    const result = await mount.stop('SIGINT');
    assert.equal(result.code, 0, result.stderr);
    assert.equal((await compareSnapshot(context, mount.snapshotId, expected, 1)).lost, 0);
  });
});
