import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync, existsSync, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BLOCK_SIZE_BYTES, SnapshotApiError, type PutBlockParams, type SnapshotClient } from '../../src/ebs/client';
import { MemorySnapshotClient } from '../../src/ebs/memory-client';
import { SnapshotSession, type SessionTuning } from '../../src/core/session';
import { UserError } from '../../src/errors';
import { SeededRandom } from '../support/random';

const B = BLOCK_SIZE_BYTES;

/** Passes PUTs through to the service but never answers the ones `hang` picks: a crash mid-PUT. */
function withHangingPuts(inner: MemorySnapshotClient, hang: (params: PutBlockParams) => boolean): SnapshotClient {
  return new Proxy(inner, {
    get(target, property, receiver) {
      if (property === 'putSnapshotBlock') {
        return async (params: PutBlockParams) => {
          await target.putSnapshotBlock(params);
          if (hang(params)) await new Promise(() => {});
        };
      }
      return Reflect.get(target, property, receiver);
    },
  });
}

describe('core: session (journal, resume, complete)', () => {
  let stateDir: string;
  let tuning: SessionTuning;
  beforeEach(() => {
    stateDir = mkdtempSync(path.join(os.tmpdir(), 'ebs-fuse-session-'));
    tuning = { stateDir, cacheSizeBytes: 16 * 1024 * 1024, uploadConcurrency: 4, log: () => {} };
  });
  afterEach(() => rmSync(stateDir, { recursive: true, force: true }));

  it('after a crash, resume reads back every block fsync acknowledged and completes over both runs', async () => {
    const service = new MemorySnapshotClient();
    const random = new SeededRandom(7);
    const first = await SnapshotSession.start(service, { volumeSizeGiB: 1 }, tuning);
    const before = random.bytes(5 * B + 1234);
    await first.file.write(100, before);
    await first.file.fsync();
    // The process dies here: no close, no finish.
    const second = await SnapshotSession.resume(service, first.snapshotId, tuning);
    assert.ok((await second.file.read(100, before.length)).equals(before));
    const after = random.bytes(3 * B);
    await second.file.write(4 * B, after);
    const result = await second.finish({ complete: true, timeoutMs: 10_000 });
    assert.equal(result.status, 'completed');
    const expected = Buffer.alloc(8 * B);
    before.copy(expected, 100);
    after.copy(expected, 4 * B);
    assert.ok(service.imageRange(first.snapshotId, 0, 8).equals(expected));
    assert.deepEqual(readdirSync(path.join(stateDir, first.snapshotId)), ['snapshot.json']);
  });

  for (const [how, writeSizeBytes] of [
    ['written whole by large writes: without a copy made before the PUT, the old content (zeros) is sent again', 4 * B],
    ['written only in part: the copy made before the PUT is sent again', 4096],
  ] as const) {
    it(`settles blocks whose PUTs reached the service but were never acknowledged (${how})`, async () => {
      const service = new MemorySnapshotClient();
      let hanging = true;
      const flaky = withHangingPuts(service, (params) => hanging && params.blockIndex === 2);
      const first = await SnapshotSession.start(flaky, { volumeSizeGiB: 1 }, tuning);
      const data = Buffer.alloc(4 * B, 5);
      for (let offset = 0; offset < data.length; offset += writeSizeBytes) {
        // Written in part: the last 4 KiB of each block stay as they were (zeros).
        if (writeSizeBytes === 4096 && offset % B === B - 4096) data.fill(0, offset, offset + 4096);
        else await first.file.write(offset, data.subarray(offset, offset + writeSizeBytes));
      }
      const fsync = first.file.fsync();
      const deadline = Date.now() + 5000;
      while (service.snapshots.get(first.snapshotId)!.ownBlocks.size < 4 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      void fsync.catch(() => {});
      hanging = false;
      // Crash with all four blocks on the service, none acknowledged durably (the fsync never returned).
      const second = await SnapshotSession.resume(service, first.snapshotId, tuning);
      const result = await second.finish({ complete: true, timeoutMs: 10_000 });
      // The service checks ChangedBlocksCount and LINEAR: they must match what it holds now.
      assert.equal(result.status, 'completed');
      const expected = writeSizeBytes === 4096 ? data : Buffer.alloc(4 * B);
      assert.ok(service.imageRange(first.snapshotId, 0, 4).equals(expected));
    });
  }

  it('refuses, in one line, a state an earlier version wrote', async () => {
    const service = new MemorySnapshotClient();
    const session = await SnapshotSession.start(service, { volumeSizeGiB: 1 }, tuning);
    await session.close();
    writeFileSync(path.join(stateDir, session.snapshotId, 'journal.log'), '');
    await assert.rejects(SnapshotSession.resume(service, session.snapshotId, tuning), (error: Error) => {
      return (
        error instanceof UserError &&
        /was written by an earlier ebs-fuse \(journal\.log\); resume or complete it with that version$/.test(error.message)
      );
    });
  });

  it('refuses to resume an unknown or a completed snapshot, and one another live process holds', async () => {
    const service = new MemorySnapshotClient();
    await assert.rejects(SnapshotSession.resume(service, 'snap-0123456789abcdef0', tuning), (error: Error) => {
      return error instanceof UserError && /no local state for snap-0123456789abcdef0/.test(error.message);
    });
    const done = await SnapshotSession.start(service, { volumeSizeGiB: 1 }, tuning);
    await done.finish({ complete: true, timeoutMs: 1000 });
    await assert.rejects(SnapshotSession.resume(service, done.snapshotId, tuning), /already completed/);

    const busy = await SnapshotSession.start(service, { volumeSizeGiB: 1 }, tuning);
    await busy.close();
    writeFileSync(path.join(stateDir, busy.snapshotId, 'lock'), '1\n'); // pid 1 is alive
    await assert.rejects(SnapshotSession.resume(service, busy.snapshotId, tuning), /in use by process 1/);
  });

  it('keeps the state and says how to continue when the final flush fails', async () => {
    let failing = true;
    const service = new MemorySnapshotClient({
      failBefore: (operation) =>
        failing && operation === 'put' ? new SnapshotApiError('down', 'InternalServerException', 'transient', 500) : undefined,
    });
    const session = await SnapshotSession.start(service, { volumeSizeGiB: 1 }, tuning);
    await session.file.write(0, Buffer.alloc(100, 1));
    await assert.rejects(session.finish({ complete: true, timeoutMs: 5000 }), (error: Error) => {
      return (
        error instanceof UserError &&
        error.message.includes(`--resume ${session.snapshotId}`) &&
        error.message.includes(`complete ${session.snapshotId}`)
      );
    });
    assert.ok(existsSync(path.join(stateDir, session.snapshotId, 'blocks.journal')));
    failing = false;
    const resumed = await SnapshotSession.resume(service, session.snapshotId, tuning);
    assert.ok((await resumed.file.read(0, 100)).equals(Buffer.alloc(100, 1)), 'the intent replays the local copy made before the PUT');
    assert.equal((await resumed.finish({ complete: true, timeoutMs: 5000 })).status, 'completed');
  });

  it('keeps an idle snapshot alive by sending an acknowledged block again, content unchanged', async () => {
    const service = new MemorySnapshotClient();
    const session = await SnapshotSession.start(service, { volumeSizeGiB: 1 }, { ...tuning, idleTimeoutMs: 400 });
    await session.file.write(B, Buffer.alloc(B, 3));
    await session.file.fsync();
    const putsAfterFsync = service.callCounts.put;
    await new Promise((resolve) => setTimeout(resolve, 700));
    assert.ok(service.callCounts.put > putsAfterFsync, 'a keep-alive PUT went out while idle');
    const result = await session.finish({ complete: true, timeoutMs: 5000 });
    assert.equal(result.status, 'completed', 'count and LINEAR unchanged by the keep-alive');
    assert.ok(service.imageRange(session.snapshotId, 1, 1).equals(Buffer.alloc(B, 3)));
  });

  it('with nothing written yet, keeps a fresh snapshot alive with block 0 as zeros', async () => {
    const service = new MemorySnapshotClient();
    const session = await SnapshotSession.start(service, { volumeSizeGiB: 1 }, { ...tuning, idleTimeoutMs: 400 });
    await new Promise((resolve) => setTimeout(resolve, 700));
    assert.ok(service.callCounts.put >= 1);
    assert.ok((await session.file.read(0, B)).equals(Buffer.alloc(B)));
    assert.equal((await session.finish({ complete: true, timeoutMs: 5000 })).status, 'completed');
  });
});
