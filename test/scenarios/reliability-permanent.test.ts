// Permanent failures: AccessDenied, expired credentials, the snapshot in `error`,
// the snapshot gone. A program's fsync and close get EIO within a bounded time
// (no retry can help, so far less than the retry policy's minute), one log line
// names the cause and the fix however many blocks failed, the dirty data stays
// in the mount and reads are still served. Where the cause can go away (the
// permission or the credentials are fixed), the next fsync succeeds and the
// snapshot completes with every byte; where it cannot, unmounting exits
// non-zero within a bounded time and keeps the state.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { access, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { expireLocalEbsSnapshot, setLocalEbsFaults } from '../../src/local-ebs/admin-client';
import type { MountProcess } from '../support/mount-process';
import { ScenarioContext, createZeroImage, mustRun } from './support';
import { ServerCounter, compareRange, compareSnapshot, restartLocalEbs, writeFsyncClose, MIB, GIB } from './reliability-support';

/** The bound on fsync and close under a permanent failure (docs/RELIABILITY.md). */
const EIO_WITHIN_MS = 120_000;
/** What a permanent failure may cost at most here: no retries, a few requests. */
const EXPECTED_EIO_WITHIN_MS = 10_000;
const UNMOUNT_WITHIN_MS = 120_000;

interface PermanentCase {
  name: string;
  /** Sets the failure up once the first data is acknowledged; may replace the mount (resume). */
  provoke: (context: ScenarioContext, mount: MountProcess) => Promise<MountProcess>;
  /** Takes the cause away, for the failures a person can fix while mounted. */
  clear?: (context: ScenarioContext) => Promise<void>;
  cause: RegExp;
  fix: RegExp;
}

const CASES: PermanentCase[] = [
  {
    name: 'AccessDenied',
    provoke: async (context, mount) => {
      await setLocalEbsFaults(context.endpoint.endpoint, context.endpoint, 'deny=1,ops=put');
      return mount;
    },
    clear: (context) => setLocalEbsFaults(context.endpoint.endpoint, context.endpoint, ''),
    cause: /AccessDeniedException/,
    fix: /check the credentials and their IAM permissions/,
  },
  {
    name: 'expired credentials',
    provoke: async (context, mount) => {
      await setLocalEbsFaults(context.endpoint.endpoint, context.endpoint, 'expired=1,ops=put');
      return mount;
    },
    clear: (context) => setLocalEbsFaults(context.endpoint.endpoint, context.endpoint, ''),
    cause: /ExpiredTokenException/,
    fix: /refresh the credentials/,
  },
  {
    name: 'the snapshot in error',
    provoke: async (context, mount) => {
      await expireLocalEbsSnapshot(context.endpoint.endpoint, context.endpoint, mount.snapshotId);
      return mount;
    },
    cause: /is error/,
    fix: /start a new snapshot/,
  },
  {
    name: 'the snapshot gone (local-ebs restarted on an empty data directory)',
    provoke: async (context, mount) => {
      // A mount that did not start the snapshot itself: right after StartSnapshot,
      // AWS may answer ResourceNotFound for a while and that is retried (aws-client.ts).
      const stopped = await mount.stop('SIGINT');
      assert.equal(stopped.code, 0, stopped.stderr);
      await restartLocalEbs(context, new ServerCounter(), { pauseMs: 0, dataDir: context.file(`empty-local-ebs-${Date.now()}`) });
      return context.mount(undefined, ['--resume', mount.snapshotId]);
    },
    cause: /ResourceNotFoundException.*does not exist/,
    fix: /start a new snapshot/,
  },
];

describe('reliability: permanent failures give EIO fast, one clear line, and keep the data', function () {
  this.timeout(300_000);
  const context = ScenarioContext.forSuite();

  for (const [index, failure] of CASES.entries()) {
    it(failure.name, async () => {
      const first = context.file(`permanent-${index}-first.bin`);
      const second = context.file(`permanent-${index}-second.bin`);
      await writeFile(first, randomBytes(2 * MIB));
      await writeFile(second, randomBytes(3 * MIB + 5));
      const expected = context.file(`permanent-${index}-expected.img`);
      await createZeroImage(expected, GIB);
      const firstOffset = 10 * MIB + 123;
      const secondOffset = 40 * MIB + 777;

      let mount = await context.mount(1, failure.clear ? [] : ['--no-complete']);
      await mustRun('dd', [
        `if=${first}`,
        `of=${mount.filePath}`,
        'bs=1M',
        'oflag=seek_bytes',
        `seek=${firstOffset}`,
        'conv=notrunc,fsync',
        'status=none',
      ]);
      await mustRun('dd', [
        `if=${first}`,
        `of=${expected}`,
        'bs=1M',
        'oflag=seek_bytes',
        `seek=${firstOffset}`,
        'conv=notrunc',
        'status=none',
      ]);
      mount = await failure.provoke(context, mount);
      const stderrBefore = mount.stderr.length;

      const failed = await writeFsyncClose(mount.filePath, secondOffset, second, EIO_WITHIN_MS + 30_000);
      await mustRun('dd', [
        `if=${second}`,
        `of=${expected}`,
        'bs=1M',
        'oflag=seek_bytes',
        `seek=${secondOffset}`,
        'conv=notrunc',
        'status=none',
      ]);
      process.stderr.write(
        `      fsync ${failed.fsyncError} in ${failed.fsyncMs} ms, close ${failed.closeError} in ${failed.closeMs} ms\n`,
      );
      assert.equal(failed.writeError, null, 'writes go to the cache');
      assert.equal(failed.fsyncError, 'EIO');
      assert.equal(failed.closeError, 'EIO');
      assert.ok(failed.fsyncMs < EIO_WITHIN_MS && failed.closeMs < EIO_WITHIN_MS);
      assert.ok(failed.fsyncMs < EXPECTED_EIO_WITHIN_MS && failed.closeMs < EXPECTED_EIO_WITHIN_MS, 'a permanent failure is not retried');

      // One line names the cause and the fix, however many blocks failed (here 7).
      const log = mount.stderr.slice(stderrBefore);
      const causeLines = log.split('\n').filter((line) => /upload of block \d+ failed/.test(line) && !/^ebs-fuse: close of/.test(line));
      assert.equal(causeLines.length, 1, `expected one line with the cause, got:\n${log}`);
      assert.match(causeLines[0], failure.cause);
      assert.match(causeLines[0], failure.fix);

      // The dirty data is kept, and every byte reads back: the cache, the read-back store.
      assert.equal(await compareRange(expected, mount.filePath, 0, 64 * MIB), -1);

      if (failure.clear) {
        await failure.clear(context);
        const retried = await writeFsyncClose(mount.filePath, 0, '-');
        assert.deepEqual([retried.fsyncError, retried.closeError], [null, null]);
        const result = await mount.stop('SIGINT');
        assert.equal(result.code, 0, result.stderr);
        assert.equal((await compareSnapshot(context, mount.snapshotId, expected, 1)).lost, 0);
        return;
      }
      const started = Date.now();
      const result = await mount.stop('SIGINT', UNMOUNT_WITHIN_MS + 30_000);
      assert.ok(Date.now() - started < UNMOUNT_WITHIN_MS);
      assert.equal(result.code, 1, result.stderr);
      assert.equal(result.stdout.trim().split('\n').pop(), `${mount.snapshotId} error`);
      assert.match(result.stderr, new RegExp(`state is kept in (\\S+${mount.snapshotId})`));
      // The data stays on this machine, in the state directory.
      await access(path.join(context.scratch, 'state', mount.snapshotId, 'blocks.journal'));
    });
  }
});
