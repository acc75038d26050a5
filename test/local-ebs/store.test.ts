// The durable store: what survives a reopen, and how a crash's leftovers (a torn
// log tail, half-written block files, an unfinished snapshot directory, block files
// nobody references) are recovered from.
import assert from 'node:assert/strict';
import { constants, promises as fsp, mkdtempSync, readdirSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { sha256Digest } from '../../src/ebs/checksum';
import { RECORD_BYTES, encodeRecord, replayLog } from '../../src/local-ebs/block-log';
import { SnapshotStore, type SnapshotMeta } from '../../src/local-ebs/store';

function block(fill: number): Buffer {
  return Buffer.alloc(BLOCK_SIZE_BYTES, fill);
}

function meta(snapshotId: string, volumeSizeGiB = 1): SnapshotMeta {
  return {
    snapshotId,
    ownerId: '123456789012',
    volumeSizeGiB,
    encrypted: false,
    timeoutMinutes: 60,
    startTimeMs: Date.now(),
    status: 'pending',
  };
}

describe('local-ebs store', () => {
  let dataDir: string;
  const logs: string[] = [];
  const log = (line: string) => logs.push(line);

  beforeEach(() => {
    dataDir = mkdtempSync(path.join(os.tmpdir(), 'local-ebs-store-'));
    logs.length = 0;
  });

  afterEach(async () => {
    await fsp.rm(dataDir, { recursive: true, force: true });
  });

  it('the log replays records up to the first bad one', () => {
    const records = [0, 1, 2].map((i) => encodeRecord({ blockIndex: i * 10, slot: i, digest: sha256Digest(block(i)) }));
    const whole = Buffer.concat(records);
    assert.deepEqual(
      replayLog(whole).records.map((r) => [r.blockIndex, r.slot]),
      [
        [0, 0],
        [10, 1],
        [20, 2],
      ],
    );
    const short = whole.subarray(0, whole.length - 5);
    assert.deepEqual(replayLog(short), { records: replayLog(whole).records.slice(0, 2), validBytes: 2 * RECORD_BYTES });
    const flipped = Buffer.from(whole);
    flipped[RECORD_BYTES + 10] ^= 1;
    assert.equal(replayLog(flipped).validBytes, RECORD_BYTES);
    const zeroTail = Buffer.concat([whole, Buffer.alloc(RECORD_BYTES)]);
    assert.equal(replayLog(zeroTail).validBytes, whole.length);
  });

  it('acknowledged blocks survive a reopen; an overwrite reuses space once it is durable', async () => {
    let store = await SnapshotStore.open(dataDir, log);
    const a = await store.create(meta('snap-0a'));
    await store.putBlock(a, 3, sha256Digest(block(1)), block(1));
    await store.putBlock(a, 4, sha256Digest(block(2)), block(2));
    await store.putBlock(a, 3, sha256Digest(block(3)), block(3));
    await store.putBlock(a, 3, sha256Digest(block(4)), block(4));
    await store.close();

    store = await SnapshotStore.open(dataDir, log);
    const reopened = store.get('snap-0a')!;
    assert.deepEqual([...reopened.ownBlocks.keys()].sort(), [3, 4]);
    assert.ok(reopened.ownBlocks.get(3)!.equals(sha256Digest(block(4))), 'the last write of index 3 wins');
    assert.ok((await store.readBlock(reopened, 3)).equals(block(4)));
    assert.ok((await store.readBlock(reopened, 4)).equals(block(2)));
    // Four PUTs of two indexes: the slot freed by the first overwrite was taken by the
    // second, and the slot that one freed lay past the last live slot, so the reopen cut it.
    assert.equal(statSync(reopened.dataFile).size, 2 * BLOCK_SIZE_BYTES);
    await store.close();
  });

  it('cuts a torn log tail and unacknowledged data, and appends after it survive another reopen', async () => {
    let store = await SnapshotStore.open(dataDir, log);
    const s = await store.create(meta('snap-0c'));
    for (let i = 0; i < 5; i++) await store.putBlock(s, i, sha256Digest(block(i + 1)), block(i + 1));
    await store.close();
    // What a crash during an unacknowledged PUT leaves: its data in the next slot and half its record.
    await fsp.appendFile(s.dataFile, block(9));
    const torn = encodeRecord({ blockIndex: 99, slot: 5, digest: sha256Digest(block(9)) }).subarray(0, 30);
    await fsp.appendFile(s.logFile, torn);

    store = await SnapshotStore.open(dataDir, log);
    const reopened = store.get('snap-0c')!;
    assert.deepEqual(
      [...reopened.ownBlocks.keys()].sort((x, y) => x - y),
      [0, 1, 2, 3, 4],
    );
    assert.equal(statSync(s.logFile).size, 5 * RECORD_BYTES, 'the torn tail is cut off');
    assert.equal(statSync(s.dataFile).size, 5 * BLOCK_SIZE_BYTES, 'the unacknowledged data is cut off');
    assert.ok(logs.some((line) => /torn log tail of 30 byte/.test(line)));
    await store.putBlock(reopened, 7, sha256Digest(block(7)), block(7));
    await store.close();

    store = await SnapshotStore.open(dataDir, log);
    const again = store.get('snap-0c')!;
    assert.deepEqual(
      [...again.ownBlocks.keys()].sort((x, y) => x - y),
      [0, 1, 2, 3, 4, 7],
    );
    assert.ok((await store.readBlock(again, 7)).equals(block(7)));
    await store.close();
  });

  it('removes what a crash left: unfinished snapshots and temporary metadata files', async () => {
    let store = await SnapshotStore.open(dataDir, log);
    await store.create(meta('snap-0d'));
    await store.close();
    await fsp.mkdir(path.join(dataDir, 'snapshots', 'snap-0e'));
    await fsp.writeFile(path.join(dataDir, 'snapshots', 'snap-0e', 'blocks.log'), Buffer.alloc(0));
    await fsp.writeFile(path.join(dataDir, 'snapshots', 'snap-0d', 'meta.json.abc.tmp'), '{');

    store = await SnapshotStore.open(dataDir, log);
    assert.equal(store.get('snap-0e'), undefined);
    assert.deepEqual(readdirSync(path.join(dataDir, 'snapshots')), ['snap-0d']);
    assert.deepEqual(readdirSync(path.join(dataDir, 'snapshots', 'snap-0d')).sort(), ['blocks.dat', 'blocks.log', 'meta.json']);
    await store.close();
  });

  it('writes blocks past the page cache where the file system takes O_DIRECT (disk and tmpfs here), and they survive a reopen', async () => {
    const shm = mkdtempSync(path.join('/dev/shm', 'local-ebs-store-'));
    /** Whether this directory's file system opens files with O_DIRECT (tmpfs does since Linux 6.6). */
    const takesDirect = async (directory: string): Promise<boolean> => {
      const probe = path.join(directory, 'probe');
      await fsp.writeFile(probe, '');
      try {
        await (await fsp.open(probe, constants.O_RDWR | constants.O_DIRECT)).close();
        return true;
      } catch {
        return false;
      } finally {
        await fsp.rm(probe);
      }
    };
    try {
      for (const directory of [dataDir, shm]) {
        const direct = await takesDirect(directory);
        let store = await SnapshotStore.open(directory, log);
        const s = await store.create(meta('snap-0e'));
        // Concurrent PUTs of one snapshot share its one-at-a-time writes.
        await Promise.all([1, 2, 3, 4, 5].map((fill) => store.putBlock(s, fill * 10, sha256Digest(block(fill)), block(fill))));
        assert.equal(typeof s.directFd === 'number', direct, `${directory}: O_DIRECT ${direct ? 'not used' : 'used'}`);
        await store.close();
        store = await SnapshotStore.open(directory, log);
        const reopened = store.get('snap-0e')!;
        for (const fill of [1, 2, 3, 4, 5])
          assert.ok((await store.readBlock(reopened, fill * 10)).equals(block(fill)), `${directory}: block ${fill * 10}`);
        await store.close();
      }
    } finally {
      await fsp.rm(shm, { recursive: true, force: true });
    }
  });

  it('storage grows with blocks written, not with the volume size', async () => {
    const store = await SnapshotStore.open(dataDir, log);
    const huge = await store.create(meta('snap-0f', 65536));
    await store.putBlock(huge, 65536 * 2048 - 1, sha256Digest(block(8)), block(8));
    await store.close();
    let bytes = 0;
    const walk = (dir: string): void => {
      for (const name of readdirSync(dir)) {
        const file = path.join(dir, name);
        const stat = statSync(file);
        if (stat.isDirectory()) walk(file);
        else bytes += stat.blocks * 512;
      }
    };
    walk(dataDir);
    assert.ok(bytes < 4 * BLOCK_SIZE_BYTES, `a 64 TiB snapshot with one block takes ${bytes} bytes`);
  });

  it('refuses a data directory of another format', async () => {
    await fsp.writeFile(path.join(dataDir, 'store.json'), '{"format":"something-else","version":7}');
    await assert.rejects(SnapshotStore.open(dataDir, log), /not a local-ebs store/);
  });
});
