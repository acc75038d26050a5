import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, appendFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sha256Digest } from '../../src/ebs/checksum';
import { Journal } from '../../src/core/journal';

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
    await journal.recordIntent(1, digest(1));
    journal.recordAck(1, digest(1));
    await journal.recordIntent(2, digest(2));
    await journal.recordIntent(1, digest(3)); // block 1 rewritten, in flight at the "crash"
    await journal.close();
    assert.ok(commits >= 1, 'the read-back store is synced before records are written');
    const { replay, journal: reopened } = await Journal.open(directory, async () => {});
    await reopened.close();
    assert.deepEqual([...replay.acknowledged.keys()], [1]);
    assert.ok(replay.acknowledged.get(1)!.equals(digest(1)));
    assert.deepEqual([...replay.unacknowledged.keys()].sort(), [1, 2]);
    assert.ok(replay.unacknowledged.get(1)!.equals(digest(3)));
  });

  it('cuts a torn record at the tail and keeps appending after the valid ones', async () => {
    const { journal } = await Journal.open(directory, async () => {});
    await journal.recordIntent(7, digest(7));
    journal.recordAck(7, digest(7));
    await journal.close();
    const file = Journal.fileIn(directory);
    const whole = readFileSync(file);
    appendFileSync(file, whole.subarray(0, 20)); // half a record, as a crash mid-append leaves it
    const { journal: reopened, replay } = await Journal.open(directory, async () => {});
    assert.equal(replay.tornBytes, 20);
    assert.equal(statSync(file).size, whole.length);
    await reopened.recordIntent(8, digest(8));
    await reopened.close();
    const { replay: again, journal: last } = await Journal.open(directory, async () => {});
    await last.close();
    assert.deepEqual([...again.acknowledged.keys()], [7]);
    assert.deepEqual([...again.unacknowledged.keys()], [8]);
  });

  it('stops replay at a record whose CRC does not match', async () => {
    const { journal } = await Journal.open(directory, async () => {});
    await journal.recordIntent(1, digest(1));
    journal.recordAck(1, digest(1));
    await journal.recordIntent(2, digest(2));
    await journal.close();
    const file = Journal.fileIn(directory);
    const bytes = readFileSync(file);
    bytes[41 + 10] ^= 0xff; // corrupt the second record
    writeFileSync(file, bytes);
    const { replay, journal: reopened } = await Journal.open(directory, async () => {});
    await reopened.close();
    assert.equal(replay.tornBytes, 82);
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
    await journal.recordIntent(3, digest(3));
    journal.recordAck(3, digest(3));
    // The read-back store could not be made durable: the ack must not be written.
    await assert.rejects(journal.sync(), /ENOSPC/);
    const { replay: meanwhile, journal: peek } = await Journal.open(directory, async () => {});
    await peek.close();
    assert.deepEqual([...meanwhile.acknowledged.keys()], []);
    assert.deepEqual([...meanwhile.unacknowledged.keys()], [3]);
    await journal.recordIntent(4, digest(4));
    await journal.close();
    const { replay, journal: reopened } = await Journal.open(directory, async () => {});
    await reopened.close();
    assert.deepEqual([...replay.acknowledged.keys()], [3]);
    assert.deepEqual([...replay.unacknowledged.keys()], [4]);
  });

  it('commits intents without syncing the read-back store; acks only after it', async () => {
    let readbackSyncs = 0;
    const { journal } = await Journal.open(directory, async () => {
      readbackSyncs += 1;
    });
    await journal.recordIntent(1, digest(1));
    await journal.recordIntent(2, digest(2));
    assert.equal(readbackSyncs, 0);
    journal.recordAck(1, digest(1));
    await journal.sync();
    assert.equal(readbackSyncs, 1);
    await journal.close();
  });
});
