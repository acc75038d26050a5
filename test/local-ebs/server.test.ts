// local-ebs in process: states and the idle Timeout (on a test clock), CompleteSnapshot
// checks, tokens and pagination, lineage, body limits, routing errors, concurrency
// and the data-directory lock.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import {
  CompleteSnapshotCommand,
  EBSClient,
  GetSnapshotBlockCommand,
  ListChangedBlocksCommand,
  ListSnapshotBlocksCommand,
  StartSnapshotCommand,
} from '@aws-sdk/client-ebs';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { linearChecksumBase64, sha256Base64, sha256Digest } from '../../src/ebs/checksum';
import { readRunningLocalEbs } from '../../src/local-ebs/data-dir-record';
import { startLocalEbs, type RunningLocalEbs } from '../../src/local-ebs/server';
import { getLocalEbsStats } from '../../src/local-ebs/admin-client';
import { TEST_CREDENTIALS } from '../support/local-ebs-process';
import { rawRequest } from './raw-client';
import { putBlockCommand } from '../support/sdk-commands';

const MINUTE_MS = 60_000;

/** A block of a label's SHA-256 hex, repeated: distinct labels, distinct blocks. */
function block(label: string): Buffer {
  return Buffer.from(
    createHash('sha256')
      .update(label)
      .digest('hex')
      .repeat(BLOCK_SIZE_BYTES / 64),
    'ascii',
  );
}

async function failure(promise: Promise<unknown>): Promise<{ name: string; reason?: string; status?: number; message: string }> {
  try {
    await promise;
  } catch (error) {
    const e = error as { name: string; Reason?: string; message: string; $metadata?: { httpStatusCode?: number } };
    return { name: e.name, reason: e.Reason, status: e.$metadata?.httpStatusCode, message: e.message };
  }
  assert.fail('expected the call to fail');
}

describe('local-ebs server', function () {
  this.timeout(30_000);
  let dataDir: string;
  let server: RunningLocalEbs;
  let ebs: EBSClient;
  let clockOffsetMs = 0;

  const put = (snapshotId: string, index: number, data: Buffer) => ebs.send(putBlockCommand(snapshotId, index, data));
  const start = async (input: { VolumeSize: number; ParentSnapshotId?: string; Timeout?: number; ClientToken?: string }) =>
    (await ebs.send(new StartSnapshotCommand(input))).SnapshotId!;
  const complete = (snapshotId: string, count: number, checksum?: string) =>
    ebs.send(
      new CompleteSnapshotCommand(
        checksum === undefined
          ? { SnapshotId: snapshotId, ChangedBlocksCount: count }
          : {
              SnapshotId: snapshotId,
              ChangedBlocksCount: count,
              Checksum: checksum,
              ChecksumAlgorithm: 'SHA256',
              ChecksumAggregationMethod: 'LINEAR',
            },
      ),
    );
  const snapshotWith = async (blocks: Record<number, string>, parent?: string): Promise<string> => {
    const id = await start({ VolumeSize: 1, ParentSnapshotId: parent });
    for (const [index, label] of Object.entries(blocks)) await put(id, Number(index), block(label));
    await complete(id, Object.keys(blocks).length);
    return id;
  };

  beforeEach(async () => {
    dataDir = mkdtempSync(path.join(os.tmpdir(), 'local-ebs-server-'));
    clockOffsetMs = 0;
    server = await startLocalEbs({ dataDir, ...TEST_CREDENTIALS, now: () => Date.now() + clockOffsetMs });
    ebs = new EBSClient({ endpoint: server.endpoint, region: 'us-east-1', credentials: { ...TEST_CREDENTIALS }, maxAttempts: 1 });
  });

  afterEach(async () => {
    ebs.destroy();
    await server.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('holds its data directory: server.json, a refused second server, release on close', async () => {
    const file = path.join(dataDir, 'server.json');
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.deepEqual(readRunningLocalEbs(dataDir), {
      pid: process.pid,
      endpoint: server.endpoint,
      accessKeyId: TEST_CREDENTIALS.accessKeyId,
      secretAccessKey: TEST_CREDENTIALS.secretAccessKey,
    });
    await assert.rejects(
      startLocalEbs({ dataDir, ...TEST_CREDENTIALS }),
      (error: Error) =>
        error.name === 'UserError' &&
        error.message === `local-ebs data directory ${dataDir} is in use by pid ${process.pid} at ${server.endpoint}`,
    );
    await server.close();
    assert.equal(existsSync(file), false);
    assert.equal(readRunningLocalEbs(dataDir), undefined);
    // A record left by a process that is gone does not hold the directory.
    const gone = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']).stdout.toString();
    writeFileSync(file, JSON.stringify({ pid: Number(gone), endpoint: 'http://127.0.0.1:1', ...TEST_CREDENTIALS }));
    assert.equal(readRunningLocalEbs(dataDir), undefined);
    server = await startLocalEbs({ dataDir, ...TEST_CREDENTIALS, now: () => Date.now() + clockOffsetMs });
    assert.equal(readRunningLocalEbs(dataDir)?.endpoint, server.endpoint);
  });

  it('the idle Timeout moves a pending snapshot to error; each PUT restarts it', async () => {
    const id = await start({ VolumeSize: 1, Timeout: 10 });
    clockOffsetMs += 9 * MINUTE_MS;
    await put(id, 0, block('a'));
    clockOffsetMs += 9 * MINUTE_MS;
    await put(id, 1, block('b'));
    clockOffsetMs += 10 * MINUTE_MS + 1000;
    const refused = await failure(put(id, 2, block('c')));
    assert.deepEqual([refused.name, refused.reason, refused.status], ['ValidationException', 'INVALID_SNAPSHOT_ID', 400]);
    assert.match(refused.message, /is error/);
    assert.equal((await failure(complete(id, 2))).name, 'ValidationException');
    assert.equal((await failure(ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: id })))).reason, 'INVALID_SNAPSHOT_ID');
  });

  it('CompleteSnapshot checks ChangedBlocksCount and the LINEAR checksum, and a failed check leaves it pending', async () => {
    const id = await start({ VolumeSize: 1 });
    const blocks = new Map([
      [9, block('x')],
      [2, block('y')],
    ]);
    for (const [index, data] of blocks) await put(id, index, data);
    await put(id, 9, block('x')); // a rewrite counts once
    const badCount = await failure(complete(id, 3));
    assert.deepEqual([badCount.name, badCount.reason], ['ValidationException', 'INVALID_PARAMETER_VALUE']);
    assert.match(badCount.message, /ChangedBlocksCount 3 does not match the 2/);
    const badSum = await failure(complete(id, 2, sha256Base64(block('x'))));
    assert.match(badSum.message, /LINEAR/);
    await put(id, 4, block('z')); // still pending: writes go on
    blocks.set(4, block('z'));
    const digests = new Map([...blocks].map(([index, data]) => [index, sha256Digest(data)]));
    assert.equal((await complete(id, 3, linearChecksumBase64(digests))).Status, 'completed');
    // A retried completion (its answer lost) gets the same answer.
    assert.equal((await complete(id, 3)).Status, 'completed');
  });

  it('accepts the base64-string reading of LINEAR too', async () => {
    const id = await start({ VolumeSize: 1 });
    await put(id, 1, block('p'));
    await put(id, 0, block('q'));
    const hash = createHash('sha256');
    for (const label of ['q', 'p']) hash.update(sha256Base64(block(label)));
    assert.equal((await complete(id, 2, hash.digest('base64'))).Status, 'completed');
  });

  it('StartSnapshot: ClientToken makes it idempotent, even for concurrent retries', async () => {
    const input = { VolumeSize: 1, ClientToken: 'same-token' };
    const ids = await Promise.all([start(input), start(input), start(input)]);
    assert.equal(new Set(ids).size, 1);
    const conflict = await failure(start({ VolumeSize: 1, ClientToken: 'same-token', Timeout: 30 }));
    assert.deepEqual([conflict.name, conflict.status], ['ConflictException', 409]);
  });

  it('StartSnapshot: parent must exist and be completed; Encrypted with a parent is refused', async () => {
    const missing = await failure(start({ VolumeSize: 1, ParentSnapshotId: 'snap-00000000000000000' }));
    assert.deepEqual([missing.name, missing.reason, missing.status], ['ResourceNotFoundException', 'SNAPSHOT_NOT_FOUND', 404]);
    const pending = await start({ VolumeSize: 1 });
    assert.equal((await failure(start({ VolumeSize: 1, ParentSnapshotId: pending }))).reason, 'INVALID_SNAPSHOT_ID');
    const encrypted = await failure(ebs.send(new StartSnapshotCommand({ VolumeSize: 1, ParentSnapshotId: pending, Encrypted: true })));
    assert.deepEqual([encrypted.name, encrypted.reason], ['ValidationException', 'INVALID_PARAMETER_VALUE']);
    const arn = 'arn:aws:kms:us-east-1:123456789012:key/abcd';
    const sealed = await ebs.send(new StartSnapshotCommand({ VolumeSize: 1, Encrypted: true, KmsKeyArn: arn }));
    assert.deepEqual([sealed.KmsKeyArn, sealed.SseType], [arn, 'sse-kms']);
  });

  it('refuses block indexes outside the volume with INVALID_BLOCK', async () => {
    const id = await start({ VolumeSize: 1 });
    const outside = await failure(put(id, 2048, block('o')));
    assert.deepEqual([outside.name, outside.reason], ['ValidationException', 'INVALID_BLOCK']);
    await put(id, 2047, block('o'));
  });

  it('pagination: numeric order, StartingBlockIndex, tokens bound to their snapshot and clock', async () => {
    const blocks: Record<number, string> = {};
    for (let i = 0; i < 250; i++) blocks[(i * 37) % 2048] = `b${i}`;
    const id = await snapshotWith(blocks);
    const expected = Object.keys(blocks)
      .map(Number)
      .sort((a, b) => a - b);
    const seen: number[] = [];
    let token: string | undefined;
    let pages = 0;
    do {
      const page = await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: id, MaxResults: 100, NextToken: token }));
      seen.push(...page.Blocks!.map((b) => b.BlockIndex!));
      token = page.NextToken;
      pages++;
    } while (token);
    assert.deepEqual(seen, expected);
    assert.equal(pages, Math.ceil(expected.length / 100));

    const from = await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: id, StartingBlockIndex: expected[10] + 1, MaxResults: 100 }));
    assert.equal(from.Blocks![0].BlockIndex, expected[11]);

    const other = await snapshotWith({ 0: 'other' });
    const first = await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: id, MaxResults: 100 }));
    assert.equal(
      (await failure(ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: other, NextToken: first.NextToken })))).reason,
      'INVALID_PAGE_TOKEN',
    );
    assert.equal(
      (await failure(ebs.send(new ListChangedBlocksCommand({ SecondSnapshotId: id, NextToken: first.NextToken })))).reason,
      'INVALID_PAGE_TOKEN',
    );
    assert.equal(
      (await failure(ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: id, MaxResults: 99 })))).reason,
      'INVALID_PARAMETER_VALUE',
    );

    const entry = first.Blocks![0];
    const wrongIndex = await failure(
      ebs.send(new GetSnapshotBlockCommand({ SnapshotId: id, BlockIndex: first.Blocks![1].BlockIndex, BlockToken: entry.BlockToken })),
    );
    assert.equal(wrongIndex.reason, 'INVALID_BLOCK_TOKEN');
    const otherToken = (await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: other }))).Blocks![0].BlockToken;
    assert.equal(
      (await failure(ebs.send(new GetSnapshotBlockCommand({ SnapshotId: id, BlockIndex: 0, BlockToken: otherToken })))).reason,
      'INVALID_BLOCK_TOKEN',
    );

    clockOffsetMs += 61 * MINUTE_MS;
    assert.equal(
      (await failure(ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: id, NextToken: first.NextToken })))).reason,
      'INVALID_PAGE_TOKEN',
    );
    await ebs.send(new GetSnapshotBlockCommand({ SnapshotId: id, BlockIndex: entry.BlockIndex, BlockToken: entry.BlockToken }));
    clockOffsetMs += 7 * 24 * 60 * MINUTE_MS;
    assert.equal(
      (await failure(ebs.send(new GetSnapshotBlockCommand({ SnapshotId: id, BlockIndex: entry.BlockIndex, BlockToken: entry.BlockToken }))))
        .reason,
      'INVALID_BLOCK_TOKEN',
    );
  });

  it('a block token sent with a literal + in the query is read as +', async () => {
    const id = await snapshotWith({ 0: 'plus' });
    let token = '';
    // Tokens are random: list until one holds a '+' (each list mints a fresh expiry, so a fresh token).
    for (let attempt = 0; attempt < 200 && !token.includes('+'); attempt++) {
      clockOffsetMs += 1000;
      token = (await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: id }))).Blocks![0].BlockToken!;
    }
    assert.ok(token.includes('+'), 'no token with a + came up');
    const response = await rawRequest(server.endpoint, TEST_CREDENTIALS, {
      method: 'GET',
      path: `/snapshots/${id}/blocks/0`,
      query: { blockToken: token },
      rawQuery: `blockToken=${token}`,
    });
    assert.equal(response.status, 200, response.body.toString());
    assert.ok(response.body.equals(block('plus')));
  });

  it('lineage: inherited blocks, ListChangedBlocks in either order, siblings, unrelated snapshots', async () => {
    const parent = await snapshotWith({ 0: 'p0', 5: 'p5', 9: 'p9' });
    const child = await snapshotWith({ 5: 'c5', 7: 'c7' }, parent);
    const sibling = await snapshotWith({ 9: 's9' }, parent);
    const listed = await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: child }));
    assert.deepEqual(
      listed.Blocks!.map((b) => b.BlockIndex),
      [0, 5, 7, 9],
    );
    const zero = listed.Blocks![0];
    const got = await ebs.send(new GetSnapshotBlockCommand({ SnapshotId: child, BlockIndex: 0, BlockToken: zero.BlockToken }));
    assert.ok(Buffer.from(await got.BlockData!.transformToByteArray()).equals(block('p0')));

    const shape = (r: { ChangedBlocks?: Array<{ BlockIndex?: number; FirstBlockToken?: string; SecondBlockToken?: string }> }) =>
      r.ChangedBlocks!.map((c) => [c.BlockIndex, c.FirstBlockToken !== undefined, c.SecondBlockToken !== undefined]);
    assert.deepEqual(shape(await ebs.send(new ListChangedBlocksCommand({ FirstSnapshotId: parent, SecondSnapshotId: child }))), [
      [5, true, true],
      [7, false, true],
    ]);
    assert.deepEqual(shape(await ebs.send(new ListChangedBlocksCommand({ FirstSnapshotId: child, SecondSnapshotId: parent }))), [
      [5, true, true],
      [7, true, false],
    ]);
    assert.deepEqual(shape(await ebs.send(new ListChangedBlocksCommand({ FirstSnapshotId: child, SecondSnapshotId: sibling }))), [
      [5, true, true],
      [7, true, false],
      [9, true, true],
    ]);
    const changed = await ebs.send(new ListChangedBlocksCommand({ FirstSnapshotId: parent, SecondSnapshotId: child }));
    const seven = changed.ChangedBlocks!.find((c) => c.BlockIndex === 7)!;
    const read = await ebs.send(new GetSnapshotBlockCommand({ SnapshotId: child, BlockIndex: 7, BlockToken: seven.SecondBlockToken }));
    assert.ok(Buffer.from(await read.BlockData!.transformToByteArray()).equals(block('c7')));

    const stranger = await snapshotWith({ 5: 'p5' });
    assert.equal(
      (await failure(ebs.send(new ListChangedBlocksCommand({ FirstSnapshotId: stranger, SecondSnapshotId: child })))).reason,
      'UNRELATED_SNAPSHOTS',
    );
  });

  it('caps bodies: an oversized Content-Length is refused before the body is sent, a chunked body once over the cap', async () => {
    const id = await start({ VolumeSize: 1 });
    const headers = {
      'x-amz-data-length': String(BLOCK_SIZE_BYTES),
      'x-amz-checksum': sha256Base64(block('a')),
      'x-amz-checksum-algorithm': 'SHA256',
      'x-amz-content-sha256': 'UNSIGNED-PAYLOAD',
    };
    const announced = await rawRequest(server.endpoint, TEST_CREDENTIALS, {
      method: 'PUT',
      path: `/snapshots/${id}/blocks/0`,
      headers,
      announceLength: 1 << 30,
    });
    assert.equal(announced.status, 400);
    assert.equal(announced.headers['x-amzn-errortype'], 'ValidationException');
    const chunked = await rawRequest(server.endpoint, TEST_CREDENTIALS, {
      method: 'PUT',
      path: `/snapshots/${id}/blocks/0`,
      headers,
      chunks: [block('a'), Buffer.alloc(1)],
    });
    assert.equal(chunked.status, 400);
    const json = await rawRequest(server.endpoint, TEST_CREDENTIALS, {
      method: 'POST',
      path: '/snapshots',
      body: Buffer.alloc(65 * 1024, 0x20),
    });
    assert.equal(json.status, 400);
    // A chunked PUT within the cap is fine (what the JS SDK sends for a stream body).
    const ok = await rawRequest(server.endpoint, TEST_CREDENTIALS, {
      method: 'PUT',
      path: `/snapshots/${id}/blocks/0`,
      headers,
      chunks: [block('a').subarray(0, 1000), block('a').subarray(1000)],
    });
    assert.equal(ok.status, 201);
    const short = await rawRequest(server.endpoint, TEST_CREDENTIALS, {
      method: 'PUT',
      path: `/snapshots/${id}/blocks/1`,
      headers,
      body: block('a').subarray(0, 1000),
    });
    assert.deepEqual([short.status, short.json().Message], [400, 'Failed to read block data']);
  });

  it('refuses a signed body hash that does not match the body, and unsigned or unknown requests', async () => {
    const id = await start({ VolumeSize: 1 });
    const data = block('h');
    const headers = {
      'x-amz-data-length': String(BLOCK_SIZE_BYTES),
      'x-amz-checksum': sha256Base64(data),
      'x-amz-checksum-algorithm': 'SHA256',
      'x-amz-content-sha256': 'a'.repeat(64),
    };
    const mismatch = await rawRequest(server.endpoint, TEST_CREDENTIALS, {
      method: 'PUT',
      path: `/snapshots/${id}/blocks/0`,
      headers,
      body: data,
    });
    assert.deepEqual([mismatch.status, mismatch.headers['x-amzn-errortype']], [403, 'InvalidSignatureException']);
    const anonymous = await rawRequest(server.endpoint, TEST_CREDENTIALS, {
      method: 'GET',
      path: `/snapshots/${id}/blocks`,
      unsigned: true,
    });
    assert.deepEqual([anonymous.status, anonymous.headers['x-amzn-errortype']], [403, 'MissingAuthenticationTokenException']);
    const unknown = await rawRequest(server.endpoint, TEST_CREDENTIALS, { method: 'DELETE', path: `/snapshots/${id}` });
    assert.deepEqual([unknown.status, unknown.headers['x-amzn-errortype']], [404, 'UnknownOperationException']);
    assert.ok(typeof unknown.json().Message === 'string');
    assert.ok(unknown.headers['x-amzn-requestid']);
  });

  it('answers malformed requests with modeled errors and keeps serving', async () => {
    const id = await start({ VolumeSize: 1 });
    const putHeaders = {
      'x-amz-data-length': String(BLOCK_SIZE_BYTES),
      'x-amz-checksum': sha256Base64(block('m')),
      'x-amz-checksum-algorithm': 'SHA256',
      'x-amz-content-sha256': 'UNSIGNED-PAYLOAD',
    };
    const cases: Array<{ request: Parameters<typeof rawRequest>[2]; status: number; type: string; reason?: string }> = [
      { request: { method: 'GET', path: '/snapshots/snap-%E0%A4%A/blocks' }, status: 400, type: 'ValidationException' },
      {
        request: { method: 'GET', path: `/snapshots/${id}/blocks`, query: { maxResults: '%ZZ' }, rawQuery: 'maxResults=%ZZ' },
        status: 400,
        type: 'ValidationException',
      },
      {
        request: { method: 'GET', path: '/snapshots/..%2F..%2Fetc/blocks/0', query: { blockToken: 'AAAA' } },
        status: 400,
        type: 'ValidationException',
        reason: 'INVALID_SNAPSHOT_ID',
      },
      {
        request: { method: 'PUT', path: `/snapshots/${id}/blocks/99999999999`, headers: putHeaders, body: block('m') },
        status: 400,
        type: 'ValidationException',
        reason: 'INVALID_PARAMETER_VALUE',
      },
      {
        request: { method: 'PUT', path: `/snapshots/${id}/blocks/-1`, headers: putHeaders, body: block('m') },
        status: 400,
        type: 'ValidationException',
      },
      {
        request: { method: 'POST', path: '/snapshots', body: Buffer.from('{"VolumeSize":') },
        status: 400,
        type: 'ValidationException',
        reason: 'INVALID_PARAMETER_VALUE',
      },
      { request: { method: 'POST', path: '/snapshots', body: Buffer.from('[1,2]') }, status: 400, type: 'ValidationException' },
      {
        request: { method: 'POST', path: '/snapshots', body: Buffer.from('{"VolumeSize":1,"Tags":[null]}') },
        status: 400,
        type: 'ValidationException',
        reason: 'INVALID_TAG',
      },
      {
        request: { method: 'POST', path: `/snapshots/completion/${id}` },
        status: 400,
        type: 'ValidationException',
        reason: 'INVALID_PARAMETER_VALUE',
      },
      {
        request: { method: 'GET', path: `/snapshots/${id}/changedblocks`, query: { firstSnapshotId: 'snap-nothex' } },
        status: 400,
        type: 'ValidationException',
        reason: 'INVALID_SNAPSHOT_ID',
      },
      {
        request: { method: 'GET', path: '/snapshots/snap-0000/blocks/0', query: { blockToken: 'AAAA' } },
        status: 404,
        type: 'ResourceNotFoundException',
        reason: 'SNAPSHOT_NOT_FOUND',
      },
      { request: { method: 'GET', path: '/' }, status: 404, type: 'UnknownOperationException' },
    ];
    for (const { request, status, type, reason } of cases) {
      const response = await rawRequest(server.endpoint, TEST_CREDENTIALS, request);
      const label = `${request.method} ${request.path}`;
      assert.equal(response.status, status, `${label}: ${response.body.toString()}`);
      assert.equal(response.headers['x-amzn-errortype'], type, label);
      const body = response.json();
      assert.equal(typeof body.Message, 'string', label);
      assert.doesNotMatch(String(body.Message), /\n\s+at /, label);
      if (reason) assert.equal(body.Reason, reason, label);
    }
    await put(id, 0, block('m'));
  });

  it('serves 64 concurrent PUTs to one snapshot, all durable and counted', async () => {
    const id = await start({ VolumeSize: 1 });
    const before = await getLocalEbsStats(server.endpoint, TEST_CREDENTIALS);
    await Promise.all(Array.from({ length: 64 }, (_, i) => put(id, i, block(`c${i}`))));
    assert.equal((await complete(id, 64)).Status, 'completed');
    const after = await getLocalEbsStats(server.endpoint, TEST_CREDENTIALS);
    assert.equal((after.requests.PutSnapshotBlock ?? 0) - (before.requests.PutSnapshotBlock ?? 0), 64);
    assert.equal((after.responses['201'] ?? 0) - (before.responses['201'] ?? 0), 64);
  });

  it('a CompleteSnapshot racing PUTs seals exactly the blocks that got a 201, also after a restart', async () => {
    const id = await start({ VolumeSize: 1 });
    // Completion is sent once 10 PUTs are acknowledged, while the others are in flight.
    let acknowledged = 0;
    let completion: Promise<unknown> | undefined;
    const puts = Array.from({ length: 40 }, (_, i) =>
      put(id, i, block(`race${i}`)).then(() => {
        if (++acknowledged === 10) completion = complete(id, 40).catch(() => undefined);
        return i;
      }),
    );
    const settled = await Promise.allSettled(puts);
    await completion;
    const acked = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    assert.ok(acked.length >= 10);
    for (const r of settled) if (r.status === 'rejected') assert.equal((r.reason as { Reason?: string }).Reason, 'INVALID_SNAPSHOT_ID');
    await complete(id, acked.length); // completed already, or now
    const listed = async () => (await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: id }))).Blocks!.map((b) => b.BlockIndex);
    assert.deepEqual(
      await listed(),
      acked.sort((x, y) => x - y),
    );
    await server.close();
    server = await startLocalEbs({ dataDir, ...TEST_CREDENTIALS });
    ebs.destroy();
    ebs = new EBSClient({ endpoint: server.endpoint, region: 'us-east-1', credentials: { ...TEST_CREDENTIALS }, maxAttempts: 1 });
    assert.deepEqual(await listed(), acked);
  });

  it('acknowledged blocks and states survive a restart on the same directory', async () => {
    const done = await snapshotWith({ 3: 'r3' });
    const pending = await start({ VolumeSize: 1 });
    await put(pending, 1, block('r1'));
    await server.close();
    server = await startLocalEbs({ dataDir, ...TEST_CREDENTIALS });
    ebs.destroy();
    ebs = new EBSClient({ endpoint: server.endpoint, region: 'us-east-1', credentials: { ...TEST_CREDENTIALS }, maxAttempts: 1 });
    const listed = await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: done }));
    const got = await ebs.send(new GetSnapshotBlockCommand({ SnapshotId: done, BlockIndex: 3, BlockToken: listed.Blocks![0].BlockToken }));
    assert.ok(Buffer.from(await got.BlockData!.transformToByteArray()).equals(block('r3')));
    await put(pending, 2, block('r2'));
    assert.equal((await complete(pending, 2)).Status, 'completed');
  });
});
