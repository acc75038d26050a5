// Crash: SIGKILL the server while PUTs stream in, restart it on the same data
// directory, and every block that got a 201 must be there, intact.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  CompleteSnapshotCommand,
  EBSClient,
  GetSnapshotBlockCommand,
  ListSnapshotBlocksCommand,
  StartSnapshotCommand,
} from '@aws-sdk/client-ebs';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import {
  startLocalEbsProcess,
  stopAllLocalEbsProcesses,
  removeTemporaryDataDirs,
  type LocalEbsProcess,
} from '../support/local-ebs-process';
import { putBlockCommand } from '../support/sdk-commands';

const BLOCK_COUNT = 300;
const WRITERS = 16;
const ACKS_BEFORE_KILL = 80;

function content(index: number): Buffer {
  return Buffer.from(
    createHash('sha256')
      .update(`crash-${index}`)
      .digest('hex')
      .repeat(BLOCK_SIZE_BYTES / 64),
    'ascii',
  );
}

function client(server: LocalEbsProcess): EBSClient {
  return new EBSClient({ endpoint: server.endpoint, region: 'us-east-1', credentials: { ...server.credentials }, maxAttempts: 1 });
}

describe('local-ebs crash safety', function () {
  this.timeout(90_000);
  let server: LocalEbsProcess | undefined;

  after(async () => {
    await server?.stop();
    await stopAllLocalEbsProcesses();
    removeTemporaryDataDirs();
  });

  /** PUTs `indexes` with WRITERS workers; SIGKILLs the server once `killAfter` more have been acknowledged. */
  async function streamThenKill(snapshotId: string, indexes: number[], acked: Set<number>, killAfter: number): Promise<number> {
    const ebs = client(server!);
    const queue = [...indexes];
    const target = acked.size + killAfter;
    let inflight = 0;
    let inflightAtKill = -1;
    let killing: Promise<void> | undefined;
    await Promise.all(
      Array.from({ length: WRITERS }, async () => {
        for (let index = queue.shift(); index !== undefined && !killing; index = queue.shift()) {
          const data = content(index);
          inflight++;
          try {
            await ebs.send(putBlockCommand(snapshotId, index, data));
            acked.add(index);
          } catch {
            // Unacknowledged: in flight at the kill, or sent after it.
          } finally {
            inflight--;
          }
          if (acked.size >= target && !killing) {
            inflightAtKill = inflight;
            killing = server!.kill9();
          }
        }
      }),
    );
    await killing;
    ebs.destroy();
    return inflightAtKill;
  }

  it('every acknowledged block survives SIGKILL during a stream of PUTs, twice', async () => {
    server = await startLocalEbsProcess();
    const dataDir = server.dataDir;
    let ebs = client(server);
    const snapshotId = (await ebs.send(new StartSnapshotCommand({ VolumeSize: 1 }))).SnapshotId!;
    ebs.destroy();
    const acked = new Set<number>();
    const all = Array.from({ length: BLOCK_COUNT }, (_, i) => i);

    for (let round = 0; round < 2; round++) {
      const inflightAtKill = await streamThenKill(
        snapshotId,
        all.filter((i) => !acked.has(i)),
        acked,
        ACKS_BEFORE_KILL,
      );
      assert.ok(inflightAtKill > 0, `round ${round}: the kill came while ${inflightAtKill} PUTs were in flight`);
      server = await startLocalEbsProcess({ dataDir });
    }
    assert.ok(acked.size >= 2 * ACKS_BEFORE_KILL);

    // Re-PUT only what was never acknowledged; completion then counts every index,
    // so one lost acknowledged block would fail it.
    ebs = client(server);
    try {
      for (const index of all.filter((i) => !acked.has(i))) {
        const data = content(index);
        await ebs.send(putBlockCommand(snapshotId, index, data));
      }
      assert.equal(
        (await ebs.send(new CompleteSnapshotCommand({ SnapshotId: snapshotId, ChangedBlocksCount: BLOCK_COUNT }))).Status,
        'completed',
      );
      const listed = await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: snapshotId }));
      assert.deepEqual(
        listed.Blocks!.map((b) => b.BlockIndex),
        all,
      );
      for (const entry of listed.Blocks!) {
        if (!acked.has(entry.BlockIndex!)) continue;
        const got = await ebs.send(
          new GetSnapshotBlockCommand({ SnapshotId: snapshotId, BlockIndex: entry.BlockIndex, BlockToken: entry.BlockToken }),
        );
        const data = Buffer.from(await got.BlockData!.transformToByteArray());
        assert.ok(data.equals(content(entry.BlockIndex!)), `block ${entry.BlockIndex} differs after the crash`);
      }
    } finally {
      ebs.destroy();
    }
  });
});
