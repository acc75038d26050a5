import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, appendFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sha256Digest } from '../../src/ebs/checksum';
import { Journal, NO_SLOT, RECORD_BYTES } from '../../src/core/journal';

describe('core: journal', () => {
  let directory: string;
  beforeEach(() => {
    directory = mkdtempSync(path.join(os.tmpdir(), 'ebs-fuse-journal-'));
  });
  afterEach(() => rmSync(directory, { recursive: true, force: true }));

  const digest = (n: number): Buffer => sha256Digest(Buffer.from([n]));

  it('replays intents and acknowledgements; the last intent without an ack is unacknowledged', async () => {
    let commits = 0;
    const { journal } = await Journal.open(directory, async () => {
      commits += 1;
    });
    await journal.recordIntent(1, digest(1), NO_SLOT);
    journal.recordAck(1, digest(1), NO_SLOT);
    await journal.recordIntent(2, digest(2), NO_SLOT);
    await journal.recordIntent(1, digest(3), NO_SLOT); // block 1 rewritten, in flight at the "crash"
    await journal.close();
    assert.ok(commits >= 1, 'the local copy is synced before records are written');
    const { replay, journal: reopened } = await Journal.open(directory, async () => {});
    await reopened.close();
    assert.deepEqual([...replay.acknowledged.keys()], [1]);
    assert.ok(replay.acknowledged.get(1)!.equals(digest(1)));
    assert.deepEqual([...replay.unacknowledged.keys()].sort(), [1, 2]);
    assert.ok(replay.unacknowledged.get(1)!.equals(digest(3)));
  });

  it('cuts a torn record at the tail and keeps appending after the valid ones', async () => {
    const { journal } = await Journal.open(directory, async () => {});
    await journal.recordIntent(7, digest(7), NO_SLOT);
    journal.recordAck(7, digest(7), NO_SLOT);
    await journal.close();
    const file = Journal.fileIn(directory);
    const whole = readFileSync(file);
    appendFileSync(file, whole.subarray(0, 20)); // half a record, as a crash mid-append leaves it
    const { journal: reopened, replay } = await Journal.open(directory, async () => {});
    assert.equal(replay.tornBytes, 20);
    assert.equal(statSync(file).size, whole.length);
    await reopened.recordIntent(8, digest(8), NO_SLOT);
    await reopened.close();
    const { replay: again, journal: last } = await Journal.open(directory, async () => {});
    await last.close();
    assert.deepEqual([...again.acknowledged.keys()], [7]);
    assert.deepEqual([...again.unacknowledged.keys()], [8]);
  });

  it('stops replay at a record whose CRC does not match', async () => {
    const { journal } = await Journal.open(directory, async () => {});
    await journal.recordIntent(1, digest(1), NO_SLOT);
    journal.recordAck(1, digest(1), NO_SLOT);
    await journal.recordIntent(2, digest(2), NO_SLOT);
    await journal.close();
    const file = Journal.fileIn(directory);
    const bytes = readFileSync(file);
    bytes[RECORD_BYTES + 10] ^= 0xff; // corrupt the second record
    writeFileSync(file, bytes);
    const { replay, journal: reopened } = await Journal.open(directory, async () => {});
    await reopened.close();
    assert.equal(replay.tornBytes, 2 * RECORD_BYTES);
    assert.deepEqual([...replay.acknowledged.keys()], []);
    assert.deepEqual([...replay.unacknowledged.keys()], [1]);
  });

  it('keeps records whose commit failed and writes them with the next one', async () => {
    let failNext = true;
    const { journal } = await Journal.open(directory, async () => {
      if (failNext) {
        failNext = false;
        throw new Error('ENOSPC');
      }
    });
    await journal.recordIntent(3, digest(3), NO_SLOT);
    journal.recordAck(3, digest(3), NO_SLOT);
    // The local copy could not be made durable: the ack must not be written.
    await assert.rejects(journal.sync(), /ENOSPC/);
    const { replay: meanwhile, journal: peek } = await Journal.open(directory, async () => {});
    await peek.close();
    assert.deepEqual([...meanwhile.acknowledged.keys()], []);
    assert.deepEqual([...meanwhile.unacknowledged.keys()], [3]);
    await journal.recordIntent(4, digest(4), NO_SLOT);
    await journal.close();
    const { replay, journal: reopened } = await Journal.open(directory, async () => {});
    await reopened.close();
    assert.deepEqual([...replay.acknowledged.keys()], [3]);
    assert.deepEqual([...replay.unacknowledged.keys()], [4]);
  });

  it('commits intents without syncing the local copy; acks only after it', async () => {
    let readbackSyncs = 0;
    const { journal } = await Journal.open(directory, async () => {
      readbackSyncs += 1;
    });
    await journal.recordIntent(1, digest(1), NO_SLOT);
    await journal.recordIntent(2, digest(2), NO_SLOT);
    assert.equal(readbackSyncs, 0);
    journal.recordAck(1, digest(1), NO_SLOT);
    await journal.sync();
    assert.equal(readbackSyncs, 1);
    await journal.close();
  });

  it('remembers which local-copy slots each block was said to be in', async () => {
    const { journal } = await Journal.open(directory, async () => {});
    await journal.recordIntent(1, digest(1), 0);
    journal.recordAck(1, digest(1), 0);
    journal.recordCopy(2, digest(2), 1);
    await journal.recordIntent(3, digest(3), 0); // slot 0 taken over by block 3, durable before the acks
    await journal.close();
    const { replay, journal: reopened } = await Journal.open(directory, async () => {});
    await reopened.close();
    assert.equal(replay.slotCount, 2);
    assert.deepEqual(
      replay.slotClaims.get(1)!.map((claim) => claim.slot),
      [0],
    );
    assert.deepEqual(
      replay.slotClaims.get(2)!.map((claim) => claim.slot),
      [1],
    );
    assert.deepEqual(
      replay.slotClaims.get(3)!.map((claim) => claim.slot),
      [0],
    );
    assert.ok(replay.slotClaims.get(3)![0].digest.equals(digest(3)));
  });

  it('compaction keeps the lasting state in one or two records per block, and later records after it', async () => {
    const { journal } = await Journal.open(directory, async () => {});
    for (let round = 0; round < 50; round += 1) {
      await journal.recordIntent(1, digest(round), NO_SLOT);
      journal.recordAck(1, digest(round), NO_SLOT);
    }
    await journal.recordIntent(2, digest(200), 5);
    journal.recordAck(9, digest(9), NO_SLOT); // appended, not yet durable: covered by the compacted state
    await journal.sync();
    assert.equal(journal.sizeBytes, 102 * RECORD_BYTES);
    await journal.compact([
      { blockIndex: 1, acked: { digest: digest(49), slot: NO_SLOT } },
      { blockIndex: 2, inFlight: { digest: digest(200), slot: 5 } },
      { blockIndex: 9, acked: { digest: digest(9), slot: NO_SLOT } },
    ]);
    assert.equal(journal.sizeBytes, 3 * RECORD_BYTES);
    await journal.recordIntent(4, digest(4), NO_SLOT);
    await journal.close();
    assert.equal(statSync(Journal.fileIn(directory)).size, 4 * RECORD_BYTES);
    const { replay, journal: reopened } = await Journal.open(directory, async () => {});
    await reopened.close();
    assert.deepEqual([...replay.acknowledged.keys()].sort(), [1, 9]);
    assert.ok(replay.acknowledged.get(1)!.equals(digest(49)));
    assert.deepEqual([...replay.unacknowledged.keys()].sort(), [2, 4]);
    assert.deepEqual(
      replay.slotClaims.get(2)!.map((claim) => claim.slot),
      [5],
    );
  });

  it('a compaction that cannot write leaves the old journal whole and in use', async () => {
    const { journal } = await Journal.open(directory, async () => {});
    await journal.recordIntent(1, digest(1), NO_SLOT);
    journal.recordAck(1, digest(1), NO_SLOT);
    await journal.sync();
    // A directory where the compacted file would go makes its open fail.
    mkdirSync(`${Journal.fileIn(directory)}.compact`);
    await assert.rejects(journal.compact([]));
    await journal.recordIntent(2, digest(2), NO_SLOT);
    await journal.close();
    const { replay, journal: reopened } = await Journal.open(directory, async () => {});
    await reopened.close();
    assert.deepEqual([...replay.acknowledged.keys()], [1]);
    assert.deepEqual([...replay.unacknowledged.keys()], [2]);
  });
});
