// --faults: each fault kind reaches a client (the JS SDK with maxAttempts 1) as the
// error AWS would send, the permanent ones (deny, expired) without an SDK retry;
// faults switch at run time through the admin route, which also puts a snapshot in
// error on demand; a bad spec, a port in use or an unusable data directory stop the
// CLI with one line.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import {
  CompleteSnapshotCommand,
  EBSClient,
  GetSnapshotBlockCommand,
  ListSnapshotBlocksCommand,
  StartSnapshotCommand,
} from '@aws-sdk/client-ebs';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { AwsSnapshotClient } from '../../src/ebs/aws-client';
import { sha256Base64 } from '../../src/ebs/checksum';
import { parseFaultSpec } from '../../src/local-ebs/faults';
import { expireLocalEbsSnapshot, getLocalEbsStats, setLocalEbsFaults } from '../../src/local-ebs/admin-client';
import {
  CLI_PATH,
  REPO_ROOT,
  TEST_CREDENTIALS,
  startLocalEbsProcess,
  stopAllLocalEbsProcesses,
  removeTemporaryDataDirs,
  type LocalEbsProcess,
} from '../support/local-ebs-process';
import { putBlockCommand } from '../support/sdk-commands';

interface Failure {
  name: string;
  code?: string;
  reason?: string;
  status?: number;
  message: string;
}

async function failure(promise: Promise<unknown>): Promise<Failure> {
  try {
    await promise;
  } catch (error) {
    const e = error as { name: string; code?: string; Reason?: string; message: string; $metadata?: { httpStatusCode?: number } };
    return { name: e.name, code: e.code, reason: e.Reason, status: e.$metadata?.httpStatusCode, message: e.message };
  }
  assert.fail('expected the call to fail');
}

function runCli(args: string[], timeoutMs = 15_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI_PATH, 'local-ebs', ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

function assertOneLineError(result: { code: number | null; stdout: string; stderr: string }, pattern: RegExp): void {
  assert.notEqual(result.code, 0);
  assert.equal(result.stdout, '');
  const lines = result.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `expected one line, got:\n${result.stderr}`);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(result.stderr, /\n\s+at /);
}

describe('local-ebs fault spec', () => {
  it('parses every item of the grammar', () => {
    const spec = parseFaultSpec('500=0.1,throttle=0.05,reset=0.01,corrupt=1,deny=0.2,expired=0.3,latency=0-50ms,rate=1000,ops=put+get');
    assert.equal(spec.internalErrorProbability, 0.1);
    assert.equal(spec.throttleProbability, 0.05);
    assert.equal(spec.resetProbability, 0.01);
    assert.equal(spec.corruptProbability, 1);
    assert.equal(spec.denyProbability, 0.2);
    assert.equal(spec.expiredProbability, 0.3);
    assert.deepEqual([spec.latencyMinMs, spec.latencyMaxMs], [0, 50]);
    assert.equal(spec.putsPerSecondPerSnapshot, 1000);
    assert.deepEqual([...spec.operations].sort(), ['GetSnapshotBlock', 'PutSnapshotBlock']);
    assert.deepEqual([parseFaultSpec('latency=20ms').latencyMinMs, parseFaultSpec('latency=20ms').latencyMaxMs], [20, 20]);
    assert.equal(parseFaultSpec('').operations.size, 6);
  });

  it('refuses what is not in the grammar', () => {
    for (const bad of [
      '500',
      '500=2',
      'deny=yes',
      'expired=1.5',
      'deny=1,deny=0',
      '500=-0.1',
      'throttle=abc',
      'latency=20',
      'latency=50-10ms',
      'rate=0',
      'rate=1.5',
      'ops=put+delete',
      'boom=1',
      '500=0.1,500=0.2',
      '500=0.1,,',
    ]) {
      assert.throws(() => parseFaultSpec(bad), /--faults/, bad);
    }
  });
});

describe('local-ebs faults seen by a client', function () {
  this.timeout(60_000);
  let server: LocalEbsProcess;
  let ebs: EBSClient;
  const data = Buffer.alloc(BLOCK_SIZE_BYTES, 0x5a);
  const put = (snapshotId: string, index: number) => ebs.send(putBlockCommand(snapshotId, index, data));
  const start = async () => (await ebs.send(new StartSnapshotCommand({ VolumeSize: 1 }))).SnapshotId!;
  const faults = (spec: string) => setLocalEbsFaults(server.endpoint, server.credentials, spec);

  before(async () => {
    server = await startLocalEbsProcess({ faults: '500=1,ops=put' });
    ebs = new EBSClient({ endpoint: server.endpoint, region: 'us-east-1', credentials: { ...server.credentials }, maxAttempts: 1 });
  });

  after(async () => {
    ebs?.destroy();
    await server?.stop();
    await stopAllLocalEbsProcesses();
    removeTemporaryDataDirs();
  });

  it('500: InternalServerException on the operations chosen, then recovery when cleared', async () => {
    const id = await start();
    const failed = await failure(put(id, 0));
    assert.deepEqual([failed.name, failed.status], ['InternalServerException', 500]);
    await faults('');
    await put(id, 0);
    const stats = await getLocalEbsStats(server.endpoint, server.credentials);
    assert.ok((stats.faultsInjected['500'] ?? 0) >= 1);
    assert.ok((stats.responses['500'] ?? 0) >= 1);
  });

  it('throttle: ThrottlingException and RequestThrottledException, both 400, as AWS sends them', async () => {
    await faults('throttle=1');
    const first = await failure(start());
    const second = await failure(start());
    await faults('');
    const byName = new Map([first, second].map((f) => [f.name, f]));
    assert.deepEqual([...byName.keys()].sort(), ['RequestThrottledException', 'ThrottlingException']);
    assert.equal(byName.get('ThrottlingException')!.status, 400);
    assert.deepEqual(
      [byName.get('RequestThrottledException')!.status, byName.get('RequestThrottledException')!.reason],
      [400, 'ACCOUNT_THROTTLED'],
    );
  });

  it('reset: the connection is destroyed without an answer', async () => {
    await faults('reset=1,ops=start');
    const failed = await failure(start());
    await faults('');
    assert.match(`${failed.code} ${failed.message}`, /ECONNRESET|socket hang up/);
  });

  it('latency: a fixed delay, and a uniform range', async () => {
    await faults('latency=300ms,ops=start');
    const t0 = performance.now();
    await start();
    assert.ok(performance.now() - t0 >= 290, 'the delay was added');
    await faults('latency=0-50ms');
    await start();
    await faults('');
    const stats = await getLocalEbsStats(server.endpoint, server.credentials);
    assert.ok((stats.faultsInjected.latency ?? 0) >= 2);
  });

  it('latency: the delay runs beside the work and holds no body buffer, so more PUTs than the server keeps bodies for are all answered within about one delay', async () => {
    // Above local-ebs's 256 PUT bodies in memory: were the delay to hold a body, the
    // PUTs past 256 would wait a whole delay for a buffer and answer after two.
    const puts = 300;
    const latencyMs = 4000;
    const id = await start();
    const wide = new AwsSnapshotClient({
      endpoint: server.endpoint,
      region: 'us-east-1',
      credentials: { ...server.credentials },
      maxSockets: puts,
      requestTimeoutMs: 60_000,
    });
    try {
      await faults(`latency=${latencyMs}ms,ops=put`);
      const startedMs = performance.now();
      const answeredMs = await Promise.all(
        Array.from({ length: puts }, async (_, index) => {
          await wide.putSnapshotBlock({ snapshotId: id, blockIndex: index, data, checksumBase64: sha256Base64(data) });
          return performance.now() - startedMs;
        }),
      );
      await faults('');
      const slowestMs = Math.max(...answeredMs);
      assert.ok(Math.min(...answeredMs) >= latencyMs - 10, `the first PUT was answered after ${Math.min(...answeredMs).toFixed(0)} ms`);
      assert.ok(slowestMs < 2 * latencyMs, `the last of ${puts} PUTs was answered after ${slowestMs.toFixed(0)} ms`);
    } finally {
      wide.close();
    }
  });

  it('rate: PutSnapshotBlock above N per second per snapshot gets RequestThrottledException RESOURCE_LEVEL_THROTTLE', async () => {
    const id = await start();
    const other = await start();
    await faults('rate=5');
    const results = await Promise.allSettled(Array.from({ length: 15 }, (_, i) => put(id, i)));
    const ok = results.filter((r) => r.status === 'fulfilled').length;
    const refused = results.flatMap((r) =>
      r.status === 'rejected' ? [r.reason as { name: string; Reason?: string; $metadata?: { httpStatusCode?: number } }] : [],
    );
    // A burst of one second's worth passes; a little refill may land while the burst arrives.
    assert.ok(ok >= 5 && ok <= 7, `${ok} PUTs passed`);
    assert.ok(refused.length > 0);
    for (const e of refused)
      assert.deepEqual([e.name, e.Reason, e.$metadata?.httpStatusCode], ['RequestThrottledException', 'RESOURCE_LEVEL_THROTTLE', 400]);
    await put(other, 0); // the limit is per snapshot
    await faults('');
  });

  it('corrupt: GetSnapshotBlock returns data that does not match its x-amz-Checksum', async () => {
    const id = await start();
    await put(id, 0);
    await ebs.send(new CompleteSnapshotCommand({ SnapshotId: id, ChangedBlocksCount: 1 }));
    const token = (await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: id }))).Blocks![0].BlockToken;
    await faults('corrupt=1');
    const got = await ebs.send(new GetSnapshotBlockCommand({ SnapshotId: id, BlockIndex: 0, BlockToken: token }));
    const body = Buffer.from(await got.BlockData!.transformToByteArray());
    await faults('');
    assert.equal(got.Checksum, sha256Base64(data));
    assert.notEqual(sha256Base64(body), got.Checksum);
    assert.equal(body.length, BLOCK_SIZE_BYTES);
  });

  it('deny: AccessDeniedException 403, Reason UNAUTHORIZED_ACCOUNT, on the operations chosen; the SDK does not retry it', async () => {
    const id = await start();
    await faults('deny=1,ops=put+complete');
    const failed = await failure(put(id, 0));
    assert.deepEqual([failed.name, failed.status, failed.reason], ['AccessDeniedException', 403, 'UNAUTHORIZED_ACCOUNT']);
    assert.match(
      failed.message,
      new RegExp(
        `^User: arn:aws:iam::123456789012:user/\\S+ is not authorized to perform: ebs:PutSnapshotBlock on resource: arn:aws:ec2:us-east-1::snapshot/${id} `,
      ),
    );
    const completeFailed = await failure(ebs.send(new CompleteSnapshotCommand({ SnapshotId: id, ChangedBlocksCount: 0 })));
    assert.deepEqual([completeFailed.name, completeFailed.reason], ['AccessDeniedException', 'UNAUTHORIZED_ACCOUNT']);
    const other = await start(); // StartSnapshot is not in ops
    // With the SDK's own retries (3 attempts), a permanent failure is sent once.
    const retrying = new EBSClient({
      endpoint: server.endpoint,
      region: 'us-east-1',
      credentials: { ...server.credentials },
      maxAttempts: 3,
    });
    try {
      const before = (await getLocalEbsStats(server.endpoint, server.credentials)).requests.PutSnapshotBlock ?? 0;
      const again = await failure(retrying.send(putBlockCommand(other, 0, data)));
      const after = await getLocalEbsStats(server.endpoint, server.credentials);
      assert.equal(again.name, 'AccessDeniedException');
      assert.equal((after.requests.PutSnapshotBlock ?? 0) - before, 1);
      assert.ok((after.faultsInjected.deny ?? 0) >= 3);
    } finally {
      retrying.destroy();
    }
    await faults('');
    await put(id, 0);
  });

  it('expired: ExpiredTokenException 403 with the words AWS uses; the SDK does not retry it', async () => {
    const id = await start();
    await faults('expired=1');
    // One call at a time: calls started together would reject before failure() awaits them.
    for (const attempt of [() => start(), () => put(id, 0), () => ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: id }))]) {
      const failed = await failure(attempt());
      assert.deepEqual(
        [failed.name, failed.status, failed.message],
        ['ExpiredTokenException', 403, 'The security token included in the request is expired'],
      );
    }
    const retrying = new EBSClient({
      endpoint: server.endpoint,
      region: 'us-east-1',
      credentials: { ...server.credentials },
      maxAttempts: 3,
    });
    try {
      const before = (await getLocalEbsStats(server.endpoint, server.credentials)).requests.StartSnapshot ?? 0;
      assert.equal((await failure(retrying.send(new StartSnapshotCommand({ VolumeSize: 1 })))).name, 'ExpiredTokenException');
      const after = await getLocalEbsStats(server.endpoint, server.credentials);
      assert.equal((after.requests.StartSnapshot ?? 0) - before, 1);
      assert.ok((after.faultsInjected.expired ?? 0) >= 4);
    } finally {
      retrying.destroy();
    }
    await faults('expired=1,ops=get');
    await put(id, 0); // only GetSnapshotBlock is hit now
    await faults('');
  });

  it('expire: POST /_local-ebs/snapshots/{id}/expire puts a pending snapshot in error now, as its idle Timeout would', async () => {
    const id = await start();
    await put(id, 0);
    await expireLocalEbsSnapshot(server.endpoint, server.credentials, id);
    const putFailed = await failure(put(id, 1));
    assert.deepEqual([putFailed.name, putFailed.status, putFailed.reason], ['ValidationException', 400, 'INVALID_SNAPSHOT_ID']);
    assert.match(putFailed.message, /is error/);
    const completeFailed = await failure(ebs.send(new CompleteSnapshotCommand({ SnapshotId: id, ChangedBlocksCount: 1 })));
    assert.deepEqual([completeFailed.name, completeFailed.reason], ['ValidationException', 'INVALID_SNAPSHOT_ID']);
    const listFailed = await failure(ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: id })));
    assert.deepEqual([listFailed.name, listFailed.reason], ['ValidationException', 'INVALID_SNAPSHOT_ID']);
    assert.match(server.stderr(), new RegExp(`snapshot ${id} expired on request`));
    // Again: still error. A completed, an unknown or a malformed snapshot is refused.
    await expireLocalEbsSnapshot(server.endpoint, server.credentials, id);
    const done = await start();
    await put(done, 0);
    await ebs.send(new CompleteSnapshotCommand({ SnapshotId: done, ChangedBlocksCount: 1 }));
    await assert.rejects(
      expireLocalEbsSnapshot(server.endpoint, server.credentials, done),
      /400 ValidationException.*completed: only a pending snapshot can time out/,
    );
    await assert.rejects(
      expireLocalEbsSnapshot(server.endpoint, server.credentials, 'snap-0123456789abcdef0'),
      /404 ResourceNotFoundException/,
    );
    await assert.rejects(
      expireLocalEbsSnapshot(server.endpoint, server.credentials, '../etc'),
      /400 ValidationException.*INVALID_SNAPSHOT_ID/,
    );
    assert.equal((await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: done }))).Blocks?.length, 1);
  });

  it('expire while PUTs are in flight: each PUT is acknowledged or refused, and later ones are refused', async () => {
    const id = await start();
    const puts = Array.from({ length: 24 }, (_, i) => put(id, i));
    // Expire as soon as one PUT is acknowledged, while the others are on their way.
    await Promise.race(puts);
    const expired = expireLocalEbsSnapshot(server.endpoint, server.credentials, id);
    const results = await Promise.allSettled(puts);
    await expired;
    assert.ok(results.some((result) => result.status === 'fulfilled'));
    for (const result of results) {
      if (result.status === 'rejected') {
        const e = result.reason as { name: string; Reason?: string };
        assert.deepEqual([e.name, e.Reason], ['ValidationException', 'INVALID_SNAPSHOT_ID']);
      }
    }
    assert.equal((await failure(put(id, 20))).reason, 'INVALID_SNAPSHOT_ID');
  });

  it('an invalid spec at run time is refused and the faults stay as they were', async () => {
    await assert.rejects(faults('500=7'), /ValidationException/);
    await start();
  });
});

describe('local-ebs command errors', function () {
  this.timeout(30_000);
  const scratch: string[] = [];
  const tempDir = (): string => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'local-ebs-cli-'));
    scratch.push(dir);
    return dir;
  };

  after(async () => {
    await stopAllLocalEbsProcesses();
    removeTemporaryDataDirs();
    for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
  });

  it('a bad --faults spec: one line, non-zero exit', async () => {
    assertOneLineError(await runCli(['--port', '0', '--data', tempDir(), '--faults', 'boom=1']), /invalid --faults item/);
  });

  it('a port in use: one line, non-zero exit', async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as net.AddressInfo).port;
    try {
      const result = await runCli(['--port', String(port), '--data', tempDir(), '--access-key-id', 'a', '--secret-access-key', 'b']);
      assertOneLineError(result, new RegExp(`port ${port} on 127.0.0.1 is in use`));
    } finally {
      blocker.close();
    }
  });

  it('an unusable data directory: one line, non-zero exit', async () => {
    const file = path.join(tempDir(), 'a-file');
    writeFileSync(file, 'not a directory');
    const result = await runCli(['--port', '0', '--data', path.join(file, 'data'), '--access-key-id', 'a', '--secret-access-key', 'b']);
    assertOneLineError(result, /local-ebs data directory/);
  });

  it('a data directory held by a running server: one line naming it', async () => {
    const first = await startLocalEbsProcess();
    try {
      const result = await runCli(['--port', '0', '--data', first.dataDir, '--access-key-id', 'a', '--secret-access-key', 'b']);
      assertOneLineError(result, new RegExp(`is in use by pid ${first.child.pid} at ${first.endpoint}`));
    } finally {
      await first.stop();
    }
  });

  it('generates and prints a key pair when none is given, and exits 0 on SIGTERM', async () => {
    const server = await startLocalEbsProcess({ credentials: TEST_CREDENTIALS, extraArgs: [] });
    assert.equal(await server.stop(), 0);
    const dataDir = tempDir();
    const child = spawn(process.execPath, [CLI_PATH, 'local-ebs', '--port', '0', '--data', dataDir], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const firstLine = await new Promise<string>((resolve) => {
        let stdout = '';
        child.stdout.on('data', (d: Buffer) => {
          stdout += d.toString();
          if (stdout.includes('\n')) resolve(stdout.split('\n')[0]);
        });
      });
      assert.match(firstLine, /^local-ebs listening on http:\/\/127\.0\.0\.1:\d+$/);
      const keyId = /AWS_ACCESS_KEY_ID=(\S+)/.exec(stderr)?.[1];
      const secret = /AWS_SECRET_ACCESS_KEY=(\S+)/.exec(stderr)?.[1];
      assert.ok(keyId && secret, stderr);
      const endpoint = firstLine.split(' ').pop()!;
      const stats = await getLocalEbsStats(endpoint, { accessKeyId: keyId, secretAccessKey: secret });
      assert.deepEqual(stats.requests, {});
    } finally {
      child.kill('SIGINT');
      const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
      assert.equal(code, 0);
    }
  });
});
