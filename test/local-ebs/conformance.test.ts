// Conformance: the AWS CLI, boto3 and @aws-sdk/client-ebs each drive every
// operation of a running `ebs-fuse local-ebs` process (including pagination and a
// parent/child lineage) and must see the modeled results and errors.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { CompleteSnapshotCommand, GetSnapshotBlockCommand, ListSnapshotBlocksCommand, StartSnapshotCommand } from '@aws-sdk/client-ebs';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { sha256Base64 } from '../../src/ebs/checksum';
import {
  CLI_PATH,
  startLocalEbsProcess,
  stopAllLocalEbsProcesses,
  removeTemporaryDataDirs,
  type LocalEbsProcess,
} from '../support/local-ebs-process';
import {
  awsCliPath,
  boto3Available,
  driveAwsCli,
  driveBoto3,
  driveJs,
  makeJsClient,
  pattern,
  type Observed,
  type ObservedError,
} from './conformance-clients';
import { putBlockCommand } from '../support/sdk-commands';

const BIG_BLOCK_COUNT = 120;
const BIG_INDEX_STRIDE = 7;
const PAGE_SIZE = 100;

function expectError(observed: ObservedError, code: string, status: number, reason?: string): void {
  assert.equal(observed.code, code, `expected ${code}, got ${JSON.stringify(observed)}`);
  assert.equal(observed.status, status, `status of ${code}: ${JSON.stringify(observed)}`);
  if (reason !== undefined) assert.equal(observed.reason, reason, `Reason of ${code}: ${JSON.stringify(observed)}`);
}

function checkObserved(client: string, o: Observed, bigIndexes: number[]): void {
  assert.deepEqual(o.start, { status: 'pending', blockSize: BLOCK_SIZE_BYTES, volumeSize: 1, httpStatus: 201 });
  assert.equal(o.retrySameId, true, 'StartSnapshot with the same ClientToken and parameters returns the same snapshot');
  expectError(o.conflict, 'ConflictException', 409);
  assert.equal(o.put.httpStatus, 201);
  assert.equal(o.put.checksum, o.put.expected);
  expectError(o.badChecksum, 'ValidationException', 400, 'INVALID_PARAMETER_VALUE');
  expectError(o.badDataLength, 'ValidationException', 400, 'INVALID_PARAMETER_VALUE');
  assert.match(o.badDataLength.message ?? '', /DataLength/);
  expectError(o.readWhilePending, 'ValidationException', 400, 'INVALID_SNAPSHOT_ID');
  assert.match(o.readWhilePending.message ?? '', /pending/);
  expectError(o.unknownSnapshot, 'ResourceNotFoundException', 404, 'SNAPSHOT_NOT_FOUND');
  assert.deepEqual(o.complete, { status: 'completed', httpStatus: 202 });
  expectError(o.writeAfterComplete, 'ValidationException', 400, 'INVALID_SNAPSHOT_ID');
  assert.match(o.writeAfterComplete.message ?? '', /completed/);

  assert.equal(o.childParent, o.parentId);
  assert.equal(o.childComplete, 'completed');
  assert.deepEqual(o.childBlocks, [0, 5, 7], 'the child lists its inherited block 0 and its own 5 and 7');
  const inherited = sha256Base64(pattern(`${client}-parent-0`));
  const own = sha256Base64(pattern(`${client}-child-5`));
  assert.deepEqual(o.childReads['0'], { sha: inherited, headerChecksum: inherited, dataLength: BLOCK_SIZE_BYTES });
  assert.deepEqual(o.childReads['5'], { sha: own, headerChecksum: own, dataLength: BLOCK_SIZE_BYTES });
  assert.deepEqual(o.changed, [
    { index: 5, first: true, second: true },
    { index: 7, first: false, second: true },
  ]);
  assert.deepEqual(o.changedNoFirst, [5, 7]);
  expectError(o.invalidBlockToken, 'ValidationException', 400, 'INVALID_BLOCK_TOKEN');

  const fullPages = Math.floor(bigIndexes.length / PAGE_SIZE);
  const expectedPages = [...Array<number>(fullPages).fill(PAGE_SIZE), bigIndexes.length % PAGE_SIZE].filter((n) => n > 0);
  assert.deepEqual(o.bigPages, expectedPages);
  assert.deepEqual(o.bigIndexes, bigIndexes);
  assert.deepEqual(o.bigChangedPages, expectedPages);
  assert.deepEqual(o.bigChangedIndexes, bigIndexes);
  assert.equal(o.bigRead.index, bigIndexes[PAGE_SIZE - 1]);
  assert.equal(
    o.bigRead.sha,
    sha256Base64(pattern(`big-${o.bigRead.index}`)),
    'a block written by the JS client reads back byte-identical',
  );
  expectError(o.invalidPageToken, 'ValidationException', 400, 'INVALID_PAGE_TOKEN');
  expectError(o.unrelated, 'ValidationException', 400, 'UNRELATED_SNAPSHOTS');
  expectError(o.badSignature, 'InvalidSignatureException', 403);
}

describe('local-ebs conformance with three clients', function () {
  this.timeout(120_000);
  let server: LocalEbsProcess;
  let bigId: string;
  const bigIndexes = Array.from({ length: BIG_BLOCK_COUNT }, (_, i) => i * BIG_INDEX_STRIDE);
  const results = new Map<string, PromiseSettledResult<Observed>>();

  before(async () => {
    assert.ok(existsSync(CLI_PATH), `${CLI_PATH} is missing: run npx tsc -p tsconfig.json`);
    server = await startLocalEbsProcess();
    const ebs = makeJsClient(server.endpoint, server.credentials);
    try {
      bigId = (await ebs.send(new StartSnapshotCommand({ VolumeSize: 1, Description: 'pagination fixture' }))).SnapshotId!;
      const queue = [...bigIndexes];
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          for (let index = queue.shift(); index !== undefined; index = queue.shift()) {
            const data = pattern(`big-${index}`);
            await ebs.send(putBlockCommand(bigId, index, data));
          }
        }),
      );
      await ebs.send(new CompleteSnapshotCommand({ SnapshotId: bigId, ChangedBlocksCount: bigIndexes.length }));
    } finally {
      ebs.destroy();
    }
    // The three clients run side by side; each is checked in its own test below.
    const drivers: Array<[string, () => Promise<Observed>]> = [
      ['js', () => driveJs(server.endpoint, server.credentials, bigId)],
      ['boto3', () => driveBoto3(server.endpoint, server.credentials, bigId)],
      ['cli', () => driveAwsCli(server.endpoint, server.credentials, bigId)],
    ];
    const settled = await Promise.allSettled(drivers.map(([, drive]) => drive()));
    drivers.forEach(([name], i) => results.set(name, settled[i]));
  });

  after(async () => {
    await server?.stop();
    await stopAllLocalEbsProcesses();
    removeTemporaryDataDirs();
  });

  function observed(client: string): Observed {
    const result = results.get(client);
    assert.ok(result, `${client} did not run`);
    if (result.status === 'rejected') throw result.reason;
    return result.value;
  }

  it('@aws-sdk/client-ebs sees the modeled results and errors', () => {
    checkObserved('js', observed('js'), bigIndexes);
  });

  it('boto3 sees the modeled results and errors', () => {
    assert.ok(boto3Available(), 'Debian python3-boto3 is missing (scripts/setup.sh --test installs it)');
    checkObserved('boto3', observed('boto3'), bigIndexes);
  });

  it('the AWS CLI sees the modeled results and errors', () => {
    assert.ok(awsCliPath(), 'the AWS CLI is missing (scripts/setup.sh --test installs Debian awscli)');
    checkObserved('cli', observed('cli'), bigIndexes);
  });

  it('blocks written by boto3 and the AWS CLI read back byte-identical through the JS SDK', async () => {
    const ebs = makeJsClient(server.endpoint, server.credentials);
    try {
      for (const client of ['boto3', 'cli']) {
        const { parentId } = observed(client);
        const listed = await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: parentId }));
        assert.deepEqual(
          listed.Blocks!.map((b) => b.BlockIndex),
          [0, 5],
        );
        for (const block of listed.Blocks!) {
          const got = await ebs.send(
            new GetSnapshotBlockCommand({ SnapshotId: parentId, BlockIndex: block.BlockIndex, BlockToken: block.BlockToken }),
          );
          const data = Buffer.from(await got.BlockData!.transformToByteArray());
          assert.ok(data.equals(pattern(`${client}-parent-${block.BlockIndex}`)), `${client} block ${block.BlockIndex} differs`);
        }
      }
    } finally {
      ebs.destroy();
    }
  });
});
