// AwsSnapshotClient and RetryingSnapshotClient against a real `ebs-fuse local-ebs`
// process: every operation, the classification of each error local-ebs can send,
// retries through injected faults, fail-fast on permanent errors (attempts counted
// at the server through its admin stats route), the per-attempt timeout, and
// corrupted GetSnapshotBlock responses that must never be returned.
import assert from 'node:assert/strict';
import { existsSync, rmSync } from 'node:fs';

import { AwsSnapshotClient, type AwsSnapshotClientOptions } from '../../src/ebs/aws-client';
import { classifyEbsError } from '../../src/ebs/classify';
import { linearChecksumBase64, sha256Base64, sha256Digest } from '../../src/ebs/checksum';
import { BLOCK_SIZE_BYTES, SnapshotApiError, type FailureKind, type SnapshotClient } from '../../src/ebs/client';
import { RetryingSnapshotClient, type RetryPolicy } from '../../src/ebs/retry';
import { getLocalEbsStats, setLocalEbsFaults } from '../../src/local-ebs/admin-client';
import type { LocalEbsStats } from '../../src/local-ebs/server';
import { CLI_PATH, startLocalEbsProcess, stopAllLocalEbsProcesses, type LocalEbsProcess } from '../support/local-ebs-process';
import { putBlockCommand } from '../support/sdk-commands';

/** A block whose bytes depend on a label, so two blocks never match by accident. */
function blockOf(label: string): Buffer {
  const block = Buffer.alloc(BLOCK_SIZE_BYTES);
  const seed = sha256Digest(Buffer.from(label));
  for (let offset = 0; offset < BLOCK_SIZE_BYTES; offset += seed.length) seed.copy(block, offset);
  block.writeUInt32LE(offset32(label), 0);
  return block;
}
function offset32(label: string): number {
  return sha256Digest(Buffer.from(`n:${label}`)).readUInt32LE(0);
}

// Short back-offs: the policy's arithmetic is unit-tested in retry.test.ts; here
// only its behaviour against real failures matters, and the suite must stay fast.
const FAST_POLICY: Partial<RetryPolicy> = {
  maxAttempts: 12,
  baseDelayMs: 5,
  throttledBaseDelayMs: 20,
  maxDelayMs: 200,
  totalTimeoutMs: 20_000,
};

function requestsOf(stats: LocalEbsStats, operation: string): number {
  return stats.requests[operation] ?? 0;
}
function faultsOf(stats: LocalEbsStats, ...kinds: string[]): number {
  return kinds.reduce((sum, kind) => sum + (stats.faultsInjected[kind] ?? 0), 0);
}

async function rejection(promise: Promise<unknown>): Promise<SnapshotApiError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof SnapshotApiError, `not a SnapshotApiError: ${String(error)}`);
    return error;
  }
  assert.fail('expected a rejection');
}

function assertOneLine(error: SnapshotApiError, endpoint: string): void {
  assert.ok(!error.message.includes('\n'), error.message);
  assert.ok(error.message.includes(endpoint), `message does not name ${endpoint}: ${error.message}`);
}

// Every test runs on both ways a PutSnapshotBlock can leave the client.
const PUT_PATHS = [
  { putThroughSdk: false, title: "PutSnapshotBlock as the client's own signed PUT" },
  { putThroughSdk: true, title: 'PutSnapshotBlock through the SDK' },
];

for (const { putThroughSdk, title } of PUT_PATHS)
  describe(`AwsSnapshotClient against local-ebs, ${title}`, function () {
    this.timeout(60_000);
    let server: LocalEbsProcess;
    const clients: SnapshotClient[] = [];
    const dataDirs: string[] = [];

    function aws(options: Partial<AwsSnapshotClientOptions> = {}, target: LocalEbsProcess = server): AwsSnapshotClient {
      const client = new AwsSnapshotClient({
        region: 'us-east-1',
        endpoint: target.endpoint,
        credentials: target.credentials,
        requestTimeoutMs: 5_000,
        connectionTimeoutMs: 2_000,
        putThroughSdk,
        ...options,
      });
      clients.push(client);
      return client;
    }
    function retrying(inner: SnapshotClient, policy: Partial<RetryPolicy> = {}): RetryingSnapshotClient {
      const client = new RetryingSnapshotClient(inner, { policy: { ...FAST_POLICY, ...policy } });
      clients.push(client);
      return client;
    }
    const stats = (target: LocalEbsProcess = server): Promise<LocalEbsStats> => getLocalEbsStats(target.endpoint, target.credentials);
    const setFaults = (spec: string, target: LocalEbsProcess = server): Promise<void> =>
      setLocalEbsFaults(target.endpoint, target.credentials, spec);

    /** A pending snapshot with the given blocks, through a plain client. */
    async function pendingSnapshot(blocks: Record<number, Buffer>): Promise<string> {
      const client = aws();
      const { snapshotId } = await client.startSnapshot({ volumeSizeGiB: 1 });
      for (const [index, data] of Object.entries(blocks)) {
        await client.putSnapshotBlock({ snapshotId, blockIndex: Number(index), data, checksumBase64: sha256Base64(data) });
      }
      return snapshotId;
    }
    async function completedSnapshot(blocks: Record<number, Buffer>): Promise<string> {
      const snapshotId = await pendingSnapshot(blocks);
      const digests = new Map(Object.entries(blocks).map(([index, data]) => [Number(index), sha256Digest(data)]));
      const status = await aws().completeSnapshot({
        snapshotId,
        changedBlocksCount: digests.size,
        linearChecksumBase64: linearChecksumBase64(digests),
      });
      assert.equal(status, 'completed');
      return snapshotId;
    }

    before(async function () {
      if (!existsSync(CLI_PATH)) throw new Error(`${CLI_PATH} is missing: run npx tsc -p tsconfig.json first`);
      server = await startLocalEbsProcess();
      dataDirs.push(server.dataDir);
    });

    afterEach(async () => {
      for (const client of clients.splice(0)) client.close();
      if (server.child.exitCode === null) await setFaults('');
    });

    after(async () => {
      await stopAllLocalEbsProcesses();
      for (const dir of dataDirs) rmSync(dir, { recursive: true, force: true });
    });

    describe('every operation', () => {
      it('starts, puts, completes, lists and reads back a snapshot, and a child of it', async () => {
        const client = aws();
        const started = await client.startSnapshot({
          volumeSizeGiB: 2,
          description: 'aws-client test',
          tags: [{ key: 'purpose', value: 'test' }],
          timeoutMinutes: 60,
          clientToken: `token-${process.pid}-${Date.now()}`,
        });
        assert.match(started.snapshotId, /^snap-[0-9a-f]+$/);
        assert.deepEqual(
          { volumeSizeGiB: started.volumeSizeGiB, blockSizeBytes: started.blockSizeBytes, status: started.status },
          { volumeSizeGiB: 2, blockSizeBytes: BLOCK_SIZE_BYTES, status: 'pending' },
        );
        const written = new Map([0, 3, 4095].map((index) => [index, blockOf(`parent-${index}`)]));
        let progress = 0;
        for (const [blockIndex, data] of written) {
          progress += 30;
          await client.putSnapshotBlock({
            snapshotId: started.snapshotId,
            blockIndex,
            data,
            checksumBase64: sha256Base64(data),
            progressPercent: progress,
          });
        }
        const digests = new Map([...written].map(([index, data]) => [index, sha256Digest(data)]));
        assert.equal(
          await client.completeSnapshot({
            snapshotId: started.snapshotId,
            changedBlocksCount: written.size,
            linearChecksumBase64: linearChecksumBase64(digests),
          }),
          'completed',
        );

        const before = Date.now();
        const page = await client.listSnapshotBlocks(started.snapshotId);
        assert.deepEqual(
          page.blocks.map((block) => block.blockIndex),
          [...written.keys()],
        );
        assert.equal(page.volumeSizeGiB, 2);
        assert.equal(page.nextToken, undefined);
        assert.ok(page.expiryTime instanceof Date && page.expiryTime.getTime() > before, `expiry ${page.expiryTime.toISOString()}`);
        for (const block of page.blocks) {
          const data = await client.getSnapshotBlock(started.snapshotId, block.blockIndex, block.blockToken);
          assert.ok(data.equals(written.get(block.blockIndex)!), `block ${block.blockIndex} reads back as written`);
        }
        // startingBlockIndex skips what is before it.
        const tail = await client.listSnapshotBlocks(started.snapshotId, { startingBlockIndex: 4 });
        assert.deepEqual(
          tail.blocks.map((block) => block.blockIndex),
          [4095],
        );

        const child = await client.startSnapshot({ volumeSizeGiB: 2, parentSnapshotId: started.snapshotId });
        assert.equal(child.parentSnapshotId, started.snapshotId);
        const changed = blockOf('child-3');
        await client.putSnapshotBlock({
          snapshotId: child.snapshotId,
          blockIndex: 3,
          data: changed,
          checksumBase64: sha256Base64(changed),
        });
        await client.completeSnapshot({ snapshotId: child.snapshotId, changedBlocksCount: 1 });
        const diff = await client.listChangedBlocks(child.snapshotId, started.snapshotId);
        assert.deepEqual(
          diff.changedBlocks.map((block) => [block.blockIndex, Boolean(block.firstBlockToken), Boolean(block.secondBlockToken)]),
          [[3, true, true]],
        );
        assert.ok(diff.expiryTime instanceof Date);
        const [entry] = diff.changedBlocks;
        assert.ok((await client.getSnapshotBlock(child.snapshotId, 3, entry.secondBlockToken!)).equals(changed));
        assert.ok((await client.getSnapshotBlock(started.snapshotId, 3, entry.firstBlockToken!)).equals(written.get(3)!));
      });

      it(`sends PutSnapshotBlock ${putThroughSdk ? 'through the SDK' : 'without the SDK'}, and local-ebs stores what it sent`, async () => {
        const client = aws();
        let sdkPuts = 0;
        client.sdk.middlewareStack.add(
          (next, context) => async (args) => {
            if (context.commandName === 'PutSnapshotBlockCommand') sdkPuts += 1;
            return next(args);
          },
          { step: 'initialize', name: 'testCountSdkPuts' },
        );
        const { snapshotId } = await client.startSnapshot({ volumeSizeGiB: 1 });
        const blocks = [0, 7, 2047].map((blockIndex) => ({ blockIndex, data: blockOf(`path-${blockIndex}`) }));
        const before = requestsOf(await stats(), 'PutSnapshotBlock');
        await Promise.all(
          blocks.map(({ blockIndex, data }, i) =>
            client.putSnapshotBlock({ snapshotId, blockIndex, data, checksumBase64: sha256Base64(data), progressPercent: i * 40 }),
          ),
        );
        assert.equal(requestsOf(await stats(), 'PutSnapshotBlock') - before, blocks.length);
        assert.equal(sdkPuts, putThroughSdk ? blocks.length : 0);
        const digests = new Map(blocks.map(({ blockIndex, data }) => [blockIndex, sha256Digest(data)]));
        assert.equal(
          await client.completeSnapshot({
            snapshotId,
            changedBlocksCount: blocks.length,
            linearChecksumBase64: linearChecksumBase64(digests),
          }),
          'completed',
        );
        const listed = (await client.listSnapshotBlocks(snapshotId)).blocks;
        assert.deepEqual(
          listed.map((block) => block.blockIndex),
          blocks.map((block) => block.blockIndex),
        );
        for (const { blockIndex, blockToken } of listed) {
          assert.ok((await client.getSnapshotBlock(snapshotId, blockIndex, blockToken)).equals(writtenBlock(blocks, blockIndex)));
        }
      });

      it('signs with a session token as well', async () => {
        const client = aws({ credentials: { ...server.credentials, sessionToken: 'session-token-of-a-role' } });
        const { snapshotId } = await client.startSnapshot({ volumeSizeGiB: 1 });
        const data = blockOf('token');
        await client.putSnapshotBlock({ snapshotId, blockIndex: 3, data, checksumBase64: sha256Base64(data) });
      });

      it('pages through more blocks than one page holds', async () => {
        const pageSize = 100;
        const count = pageSize + 3;
        const data = blockOf('paging');
        const client = aws();
        const { snapshotId } = await client.startSnapshot({ volumeSizeGiB: 1 });
        const checksumBase64 = sha256Base64(data);
        const indexes = Array.from({ length: count }, (_, i) => i * 3);
        // 8 PUTs in flight, as the mount would run them, over the keep-alive agent.
        for (let i = 0; i < indexes.length; i += 8) {
          await Promise.all(
            indexes.slice(i, i + 8).map((blockIndex) => client.putSnapshotBlock({ snapshotId, blockIndex, data, checksumBase64 })),
          );
        }
        await client.completeSnapshot({ snapshotId, changedBlocksCount: count });
        const seen: number[] = [];
        const pageSizes: number[] = [];
        let nextToken: string | undefined;
        do {
          const page = await client.listSnapshotBlocks(snapshotId, { maxResults: pageSize, nextToken });
          pageSizes.push(page.blocks.length);
          seen.push(...page.blocks.map((block) => block.blockIndex));
          nextToken = page.nextToken;
        } while (nextToken !== undefined);
        assert.deepEqual(seen, indexes);
        assert.deepEqual(pageSizes, [pageSize, count - pageSize]);
      });
    });

    describe('error classification', () => {
      const expectations: Array<{
        name: string;
        kind: FailureKind;
        code: string;
        httpStatus: number;
        reason?: string;
        act: (client: AwsSnapshotClient) => Promise<unknown>;
        message?: RegExp;
      }> = [
        {
          name: 'ValidationException (volume size 0)',
          kind: 'permanent',
          code: 'ValidationException',
          httpStatus: 400,
          act: (client) => client.startSnapshot({ volumeSizeGiB: 0 }),
        },
        {
          name: 'ValidationException (bad block token)',
          kind: 'permanent',
          code: 'ValidationException',
          httpStatus: 400,
          reason: 'INVALID_BLOCK_TOKEN',
          act: async (client) => client.getSnapshotBlock(await completedSnapshot({ 1: blockOf('x') }), 1, 'AAAA'),
          message: /GetSnapshotBlock snap-[0-9a-f]+ block 1 at /,
        },
        {
          name: 'ValidationException (read of a pending snapshot)',
          kind: 'permanent',
          code: 'ValidationException',
          httpStatus: 400,
          reason: 'INVALID_SNAPSHOT_ID',
          act: async (client) => client.listSnapshotBlocks(await pendingSnapshot({})),
        },
        {
          name: 'ResourceNotFoundException on a snapshot this client did not start',
          kind: 'permanent',
          code: 'ResourceNotFoundException',
          httpStatus: 404,
          reason: 'SNAPSHOT_NOT_FOUND',
          act: (client) => {
            const data = blockOf('rnf');
            return client.putSnapshotBlock({
              snapshotId: 'snap-0123456789abcdef0',
              blockIndex: 0,
              data,
              checksumBase64: sha256Base64(data),
            });
          },
          message: /check the snapshot ID/,
        },
        {
          name: 'ConflictException (client token reused with other parameters)',
          kind: 'permanent',
          code: 'ConflictException',
          httpStatus: 409,
          act: async (client) => {
            const clientToken = `conflict-${process.pid}-${Date.now()}`;
            await client.startSnapshot({ volumeSizeGiB: 1, clientToken });
            return client.startSnapshot({ volumeSizeGiB: 2, clientToken });
          },
          message: /another --client-token/,
        },
        {
          name: 'a wrong secret key (InvalidSignatureException)',
          kind: 'permanent',
          code: 'InvalidSignatureException',
          httpStatus: 403,
          act: async () => aws({ credentials: { ...server.credentials, secretAccessKey: 'wrong' } }).startSnapshot({ volumeSizeGiB: 1 }),
          message: /secret access key/,
        },
        {
          name: 'an unknown access key (UnrecognizedClientException)',
          kind: 'permanent',
          code: 'UnrecognizedClientException',
          httpStatus: 403,
          act: async () => aws({ credentials: { accessKeyId: 'AKIAUNKNOWN', secretAccessKey: 'x' } }).startSnapshot({ volumeSizeGiB: 1 }),
          message: /access key ID/,
        },
      ];
      for (const expected of expectations) {
        it(`${expected.name}: ${expected.kind}`, async () => {
          const error = await rejection(expected.act(aws()));
          assert.equal(error.kind, expected.kind, error.message);
          assert.equal(error.code, expected.code, error.message);
          assert.equal(error.httpStatus, expected.httpStatus, error.message);
          if (expected.reason) assert.equal(error.reason, expected.reason, error.message);
          if (expected.message) assert.match(error.message, expected.message);
          assertOneLine(error, server.endpoint);
        });
      }

      const faulted: Array<{ spec: string; kinds: Array<[FailureKind, string, number | undefined]> }> = [
        { spec: '500=1', kinds: [['transient', 'InternalServerException', 500]] },
        // local-ebs alternates the account-level and the modeled throttle.
        {
          spec: 'throttle=1',
          kinds: [
            ['throttled', 'ThrottlingException', 400],
            ['throttled', 'RequestThrottledException', 400],
          ],
        },
        { spec: 'reset=1', kinds: [['transient', 'ECONNRESET', undefined]] },
      ];
      for (const { spec, kinds } of faulted) {
        it(`faults ${spec}: ${kinds.map(([kind, code]) => `${code} is ${kind}`).join(', ')}`, async () => {
          const snapshotId = await pendingSnapshot({});
          await setFaults(spec);
          const client = aws();
          const seen: Array<[FailureKind, string, number | undefined]> = [];
          for (let i = 0; i < kinds.length; i++) {
            const data = blockOf(`fault-${i}`);
            const error = await rejection(client.putSnapshotBlock({ snapshotId, blockIndex: i, data, checksumBase64: sha256Base64(data) }));
            assertOneLine(error, server.endpoint);
            seen.push([error.kind, error.code, error.httpStatus]);
          }
          assert.deepEqual(seen.sort(), [...kinds].sort());
        });
      }

      it('RequestThrottledException over the per-snapshot PUT rate is throttled', async () => {
        const snapshotId = await pendingSnapshot({});
        await setFaults('rate=1');
        const client = aws();
        const data = blockOf('rate');
        const results = await Promise.allSettled(
          [0, 1, 2, 3].map((blockIndex) => client.putSnapshotBlock({ snapshotId, blockIndex, data, checksumBase64: sha256Base64(data) })),
        );
        const errors = results.flatMap((result) => (result.status === 'rejected' ? [result.reason as SnapshotApiError] : []));
        assert.ok(errors.length >= 1, 'at least one of 4 PUTs in the same second is over a rate of 1/s');
        for (const error of errors) {
          assert.equal(error.kind, 'throttled');
          assert.equal(error.code, 'RequestThrottledException');
          assert.equal(error.reason, 'RESOURCE_LEVEL_THROTTLE');
        }
      });

      it('ValidationException "Failed to read block data" (a body shorter than DataLength) is transient', async () => {
        const snapshotId = await pendingSnapshot({});
        const client = aws();
        const short = Buffer.alloc(1000, 1);
        // Our client refuses to send such a body, so the SDK below it sends it.
        const sdkError = await client.sdk.send(putBlockCommand(snapshotId, 0, short)).then(
          () => assert.fail('the short PUT was accepted'),
          (error: unknown) => error,
        );
        assert.match(String((sdkError as Error).message), /Failed to read block data/);
        const classified = classifyEbsError(sdkError);
        assert.equal(classified.kind, 'transient');
        assert.equal(classified.code, 'ValidationException');
        assert.equal(classified.httpStatus, 400);
      });

      it('refuses a block of the wrong length before sending it', async () => {
        const before = requestsOf(await stats(), 'PutSnapshotBlock');
        const data = Buffer.alloc(4096);
        const error = await rejection(
          aws().putSnapshotBlock({ snapshotId: 'snap-1', blockIndex: 0, data, checksumBase64: sha256Base64(data) }),
        );
        assert.equal(error.kind, 'permanent');
        assert.equal(requestsOf(await stats(), 'PutSnapshotBlock'), before);
      });
    });

    describe('retries', () => {
      it('every call succeeds through 500s, throttles, resets and latency, with one retry per injected fault', async () => {
        const written = new Map(Array.from({ length: 24 }, (_, i) => [i * 5, blockOf(`faulty-${i}`)]));
        const client = retrying(aws());
        const retriesBefore = client.retryCount;
        const statsBefore = await stats();
        await setFaults('500=0.15,throttle=0.1,reset=0.05,latency=0-20ms');

        const { snapshotId } = await client.startSnapshot({ volumeSizeGiB: 1 });
        const entries = [...written];
        for (let i = 0; i < entries.length; i += 6) {
          await Promise.all(
            entries
              .slice(i, i + 6)
              .map(([blockIndex, data]) => client.putSnapshotBlock({ snapshotId, blockIndex, data, checksumBase64: sha256Base64(data) })),
          );
        }
        const digests = new Map(entries.map(([index, data]) => [index, sha256Digest(data)]));
        assert.equal(
          await client.completeSnapshot({
            snapshotId,
            changedBlocksCount: digests.size,
            linearChecksumBase64: linearChecksumBase64(digests),
          }),
          'completed',
        );
        const page = await client.listSnapshotBlocks(snapshotId);
        assert.deepEqual(
          page.blocks.map((block) => block.blockIndex),
          [...written.keys()],
        );
        for (const block of page.blocks) {
          assert.ok((await client.getSnapshotBlock(snapshotId, block.blockIndex, block.blockToken)).equals(written.get(block.blockIndex)!));
        }
        await setFaults('');

        const statsAfter = await stats();
        const injected = faultsOf(statsAfter, '500', 'throttle', 'reset') - faultsOf(statsBefore, '500', 'throttle', 'reset');
        const retries = client.retryCount - retriesBefore;
        const calls = 1 + written.size + 1 + 1 + page.blocks.length;
        const operations = ['StartSnapshot', 'PutSnapshotBlock', 'CompleteSnapshot', 'ListSnapshotBlocks', 'GetSnapshotBlock'];
        const requests = operations.reduce((sum, op) => sum + requestsOf(statsAfter, op) - requestsOf(statsBefore, op), 0);
        assert.ok(injected > 0, 'the faults were injected');
        assert.equal(retries, injected, 'each injected fault cost exactly one retry');
        assert.equal(requests, calls + retries, 'the server saw each call once plus its retries');
      });

      it('a permanent error fails fast: one request at the server, no retry', async () => {
        const client = retrying(aws());
        const before = requestsOf(await stats(), 'PutSnapshotBlock');
        const data = blockOf('permanent');
        const started = Date.now();
        const error = await rejection(
          client.putSnapshotBlock({ snapshotId: 'snap-0fedcba987654321', blockIndex: 0, data, checksumBase64: sha256Base64(data) }),
        );
        assert.equal(error.kind, 'permanent');
        assert.equal(error.code, 'ResourceNotFoundException');
        assert.equal(requestsOf(await stats(), 'PutSnapshotBlock') - before, 1);
        assert.equal(client.retryCount, 0);
        assert.ok(Date.now() - started < 2_000);

        const wrongKey = retrying(aws({ credentials: { ...server.credentials, secretAccessKey: 'wrong' } }));
        const startsBefore = requestsOf(await stats(), 'StartSnapshot');
        const denied = await rejection(wrongKey.startSnapshot({ volumeSizeGiB: 1 }));
        assert.equal(denied.kind, 'permanent');
        assert.equal(requestsOf(await stats(), 'StartSnapshot') - startsBefore, 1);
      });

      it('gives up on a server that always fails, after the attempt limit, naming the endpoint and the cause', async () => {
        const snapshotId = await pendingSnapshot({});
        await setFaults('500=1,ops=put');
        const maxAttempts = 4;
        const client = retrying(aws(), { maxAttempts });
        const before = requestsOf(await stats(), 'PutSnapshotBlock');
        const data = blockOf('doomed');
        const error = await rejection(client.putSnapshotBlock({ snapshotId, blockIndex: 0, data, checksumBase64: sha256Base64(data) }));
        assert.equal(error.kind, 'transient');
        assert.equal(error.code, 'InternalServerException');
        assert.match(error.message, new RegExp(`gave up after ${maxAttempts} attempts`));
        assertOneLine(error, server.endpoint);
        assert.equal(requestsOf(await stats(), 'PutSnapshotBlock') - before, maxAttempts);
        assert.equal(client.retryCount, maxAttempts - 1);
      });

      it('the per-attempt timeout ends an attempt that takes longer, and a longer timeout lets it through', async () => {
        const snapshotId = await completedSnapshot({ 2: blockOf('slow') });
        const token = (await aws().listSnapshotBlocks(snapshotId)).blocks[0].blockToken;
        const latencyMs = 1500;
        const attemptTimeoutMs = 300;
        await setFaults(`latency=${latencyMs}ms,ops=get`);
        const maxAttempts = 2;
        const impatient = retrying(aws({ requestTimeoutMs: attemptTimeoutMs }), { maxAttempts });
        const before = requestsOf(await stats(), 'GetSnapshotBlock');
        const started = Date.now();
        const error = await rejection(impatient.getSnapshotBlock(snapshotId, 2, token));
        const elapsedMs = Date.now() - started;
        assert.equal(error.code, 'RequestTimeout');
        assert.equal(error.kind, 'transient');
        assert.match(error.message, new RegExp(`${attemptTimeoutMs} ms`));
        assert.ok(elapsedMs >= maxAttempts * attemptTimeoutMs - 50, `${elapsedMs} ms`);
        assert.ok(elapsedMs < latencyMs, `gave up after ${elapsedMs} ms, not after the server's ${latencyMs} ms`);
        assert.equal(requestsOf(await stats(), 'GetSnapshotBlock') - before, maxAttempts);

        const patient = retrying(aws({ requestTimeoutMs: latencyMs * 3 }), { maxAttempts: 1 });
        assert.ok((await patient.getSnapshotBlock(snapshotId, 2, token)).equals(blockOf('slow')));
      });

      it('a corrupted GetSnapshotBlock is detected, retried, and never returned', async () => {
        const written = blockOf('corruptible');
        const snapshotId = await completedSnapshot({ 9: written });
        const token = (await aws().listSnapshotBlocks(snapshotId)).blocks[0].blockToken;

        await setFaults('corrupt=1');
        const maxAttempts = 3;
        const always = retrying(aws(), { maxAttempts });
        const before = await stats();
        const error = await rejection(always.getSnapshotBlock(snapshotId, 9, token));
        assert.equal(error.code, 'CorruptBlockData');
        assert.equal(error.kind, 'transient');
        assert.match(error.message, /SHA-256/);
        const after = await stats();
        assert.equal(requestsOf(after, 'GetSnapshotBlock') - requestsOf(before, 'GetSnapshotBlock'), maxAttempts);
        assert.equal(faultsOf(after, 'corrupt') - faultsOf(before, 'corrupt'), maxAttempts);

        await setFaults('corrupt=0.5');
        const sometimes = retrying(aws());
        const reads = 16;
        const corruptBefore = faultsOf(await stats(), 'corrupt');
        for (let i = 0; i < reads; i++) {
          assert.ok((await sometimes.getSnapshotBlock(snapshotId, 9, token)).equals(written), `read ${i} returned the written bytes`);
        }
        const corrupted = faultsOf(await stats(), 'corrupt') - corruptBefore;
        assert.equal(sometimes.retryCount, corrupted, 'each corrupted response was read again');
      });

      it('close() aborts a request in flight at once', async () => {
        const snapshotId = await completedSnapshot({ 1: blockOf('closing') });
        const token = (await aws().listSnapshotBlocks(snapshotId)).blocks[0].blockToken;
        await setFaults('latency=5000ms,ops=get');
        const client = retrying(aws({ requestTimeoutMs: 10_000 }));
        const started = Date.now();
        const pending = client.getSnapshotBlock(snapshotId, 1, token);
        setTimeout(() => client.close(), 200);
        const error = await rejection(pending);
        assert.equal(error.code, 'ClientClosed');
        assert.equal(error.kind, 'permanent');
        assert.ok(Date.now() - started < 2_000, `${Date.now() - started} ms`);
      });
    });

    describe('ResourceNotFound right after StartSnapshot', () => {
      // AWS can answer ResourceNotFound to puts made just after StartSnapshot. To
      // make local-ebs do that, the snapshot is started on one server, which is
      // then replaced on the same port by a server with an empty data directory.
      let first: LocalEbsProcess | undefined;
      let second: LocalEbsProcess | undefined;
      afterEach(async () => {
        for (const target of [first, second]) if (target) await target.stop();
      });

      it('is retried inside the window after this client started the snapshot, and permanent after it', async () => {
        first = await startLocalEbsProcess();
        dataDirs.push(first.dataDir);
        let nowMs = 1_000_000;
        const windowMs = 130_000;
        const inner = aws({ nowMs: () => nowMs, resourceNotFoundWindowMs: windowMs }, first);
        const maxAttempts = 3;
        const client = retrying(inner, { maxAttempts });
        const { snapshotId } = await client.startSnapshot({ volumeSizeGiB: 1 });
        await first.stop();
        second = await startLocalEbsProcess({ extraArgs: ['--port', String(first.port)] });
        dataDirs.push(second.dataDir);
        assert.equal(second.endpoint, first.endpoint);

        const data = blockOf('early');
        const put = () => client.putSnapshotBlock({ snapshotId, blockIndex: 0, data, checksumBase64: sha256Base64(data) });
        const before = requestsOf(await stats(second), 'PutSnapshotBlock');
        nowMs += windowMs - 1000;
        const early = await rejection(put());
        assert.equal(early.code, 'ResourceNotFoundException');
        assert.equal(early.kind, 'transient');
        assert.equal(requestsOf(await stats(second), 'PutSnapshotBlock') - before, maxAttempts);

        nowMs += 2000;
        const late = await rejection(put());
        assert.equal(late.kind, 'permanent');
        assert.equal(requestsOf(await stats(second), 'PutSnapshotBlock') - before, maxAttempts + 1);
      });
    });
  });

function writtenBlock(blocks: Array<{ blockIndex: number; data: Buffer }>, blockIndex: number): Buffer {
  const found = blocks.find((block) => block.blockIndex === blockIndex);
  assert.ok(found, `block ${blockIndex} was not written`);
  return found.data;
}
