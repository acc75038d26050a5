// local-ebs against hostile requests, over raw TCP where an HTTP client would refuse to
// send them: each gets a modeled 4xx (JSON body, x-amzn-ErrorType) or a closed
// connection, never a crash, a 500 or a hang; and after each, another client's
// correctly signed requests are still answered.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import {
  CompleteSnapshotCommand,
  EBSClient,
  GetSnapshotBlockCommand,
  ListSnapshotBlocksCommand,
  StartSnapshotCommand,
} from '@aws-sdk/client-ebs';
import { SignatureV4 } from '@smithy/signature-v4';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { sha256Base64 } from '../../src/ebs/checksum';
import { Sha256 } from '../../src/ebs/checksum';
import { getLocalEbsStats } from '../../src/local-ebs/admin-client';
import {
  CONNECTION_LIMIT_ENV,
  DEFAULT_CONNECTION_LIMITS,
  resolveConnectionLimits,
  type ConnectionLimits,
} from '../../src/local-ebs/limits';
import {
  CLI_PATH,
  REPO_ROOT,
  removeTemporaryDataDirs,
  startLocalEbsProcess,
  stopAllLocalEbsProcesses,
  type LocalEbsProcess,
} from '../support/local-ebs-process';
import { rawRequest, type RawRequest } from './raw-client';
import { putBlockCommand } from '../support/sdk-commands';

/** Longer than any answer here takes; a request still unanswered then is a hang. */
const HANG_MS = 5_000;
const SNAPSHOT_DIR_PATTERN = /^snap-[0-9a-f]+$/;

interface Exchange {
  status?: number;
  headers: Record<string, string>;
  body: Buffer;
  /** The server closed the connection (or reset it) within the time allowed. */
  closed: boolean;
  /** Neither an answer nor a close within the time allowed. */
  hung: boolean;
  elapsedMs: number;
}

interface ExchangeOptions {
  /** Wait for the close after the answer too. */
  untilClosed?: boolean;
  timeoutMs?: number;
  /** The answer to a HEAD has headers only. */
  head?: boolean;
}

/** Parses one HTTP/1.1 response from the start of `data`; undefined while incomplete. */
function parseResponse(data: Buffer, head: boolean): { status: number; headers: Record<string, string>; body: Buffer } | undefined {
  const end = data.indexOf('\r\n\r\n');
  if (end < 0) return undefined;
  const lines = data.subarray(0, end).toString('latin1').split('\r\n');
  const status = /^HTTP\/1\.[01] (\d{3}) /.exec(lines[0]);
  if (!status) return undefined;
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  const length = head ? 0 : Number(headers['content-length'] ?? 0);
  const body = data.subarray(end + 4);
  if (body.length < length) return undefined;
  return { status: Number(status[1]), headers, body: body.subarray(0, length) };
}

/** Writes `parts` to a fresh connection and reads one answer (and, if asked, the close). */
function exchange(port: number, parts: Array<string | Buffer> | string | Buffer, options: ExchangeOptions = {}): Promise<Exchange> {
  const timeoutMs = options.timeoutMs ?? HANG_MS;
  return new Promise((resolve) => {
    const t0 = performance.now();
    const socket = net.connect(port, '127.0.0.1');
    let received = Buffer.alloc(0);
    let done = false;
    const finish = (closed: boolean, hung: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      const parsed = parseResponse(received, options.head === true);
      resolve({
        status: parsed?.status,
        headers: parsed?.headers ?? {},
        body: parsed?.body ?? Buffer.alloc(0),
        closed,
        hung,
        elapsedMs: performance.now() - t0,
      });
    };
    const timer = setTimeout(
      () => finish(false, !parseResponse(received, options.head === true) || options.untilClosed === true),
      timeoutMs,
    );
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (!options.untilClosed && parseResponse(received, options.head === true)) finish(false, false);
    });
    // A reset after the answer still counts as closed; the answer read before it stays.
    socket.on('error', () => finish(true, false));
    socket.on('close', () => finish(true, false));
    for (const part of Array.isArray(parts) ? parts : [parts]) socket.write(part);
  });
}

function describeExchange(result: Exchange): string {
  return `status ${result.status ?? '-'} closed ${result.closed} hung ${result.hung}: ${result.body.toString('utf8').slice(0, 300)}`;
}

/** A modeled error: the status, x-amzn-ErrorType, a JSON body with Message (no stack) and the Reason. */
function assertModeled(
  result: Pick<Exchange, 'status' | 'headers' | 'body'>,
  status: number,
  type: string,
  reason?: string,
  label = '',
): void {
  const text = `${label}: ${result.status} ${result.body.toString('utf8').slice(0, 300)}`;
  assert.equal(result.status, status, text);
  assert.equal(result.headers['x-amzn-errortype'], type, text);
  assert.match(result.headers['content-type'] ?? '', /^application\/json/, text);
  assert.ok(result.headers['x-amzn-requestid'], text);
  const body = JSON.parse(result.body.toString('utf8')) as { Message?: unknown; Reason?: unknown };
  assert.equal(typeof body.Message, 'string', text);
  assert.doesNotMatch(String(body.Message), /\n\s+at /, text);
  if (reason !== undefined) assert.equal(body.Reason, reason, text);
}

function headerRecord(headers: Record<string, string | string[] | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) if (value !== undefined) out[name] = Array.isArray(value) ? value.join(',') : value;
  return out;
}

interface SignOptions {
  method: string;
  path: string;
  query?: Record<string, string>;
  headers?: Record<string, string>;
  body?: Buffer;
  /** Sign for another host than the one the request goes to. */
  host?: string;
  signingDate?: Date;
  secretAccessKey?: string;
}

/** The headers of a request signed as `options` says; the caller may send something else. */
async function signedHeaders(server: LocalEbsProcess, options: SignOptions): Promise<Record<string, string>> {
  const url = new URL(server.endpoint);
  const host = options.host ?? url.host;
  const signer = new SignatureV4({
    credentials: {
      accessKeyId: server.credentials.accessKeyId,
      secretAccessKey: options.secretAccessKey ?? server.credentials.secretAccessKey,
    },
    region: 'us-east-1',
    service: 'ebs',
    sha256: Sha256,
  });
  const signed = await signer.sign(
    {
      method: options.method,
      protocol: 'http:',
      hostname: host.split(':')[0],
      path: options.path,
      query: options.query ?? {},
      headers: { host, 'content-length': String(options.body?.length ?? 0), ...options.headers },
      body: options.body ?? Buffer.alloc(0),
    },
    { signingDate: options.signingDate },
  );
  return signed.headers;
}

/** An HTTP/1.1 request as bytes, with `Host` set to the server's unless `headers` has one. */
function requestBytes(
  server: LocalEbsProcess,
  method: string,
  target: string,
  headers: Record<string, string>,
  body: Buffer = Buffer.alloc(0),
): Buffer {
  const all: Record<string, string> = { host: new URL(server.endpoint).host, ...headers };
  const head = `${method} ${target} HTTP/1.1\r\n${Object.entries(all)
    .map(([name, value]) => `${name}: ${value}`)
    .join('\r\n')}\r\n\r\n`;
  return Buffer.concat([Buffer.from(head, 'latin1'), body]);
}

function ebsClient(server: LocalEbsProcess): EBSClient {
  return new EBSClient({ endpoint: server.endpoint, region: 'us-east-1', credentials: { ...server.credentials }, maxAttempts: 1 });
}

/** A block of one repeated byte. */
function block(byte: number): Buffer {
  return Buffer.alloc(BLOCK_SIZE_BYTES, byte);
}

function putHeaders(data: Buffer): Record<string, string> {
  return {
    'x-amz-data-length': String(BLOCK_SIZE_BYTES),
    'x-amz-checksum': sha256Base64(data),
    'x-amz-checksum-algorithm': 'SHA256',
    'x-amz-content-sha256': 'UNSIGNED-PAYLOAD',
  };
}

/** Starts a local-ebs process with LOCAL_EBS_* limits in its environment (the child copies it at spawn). */
function startWithLimits(limits: Partial<ConnectionLimits>): Promise<LocalEbsProcess> {
  const saved = new Map<string, string | undefined>();
  for (const [key, value] of Object.entries(limits) as Array<[keyof ConnectionLimits, number]>) {
    const name = CONNECTION_LIMIT_ENV[key];
    saved.set(name, process.env[name]);
    process.env[name] = String(value);
  }
  try {
    return startLocalEbsProcess();
  } finally {
    for (const [name, value] of saved) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  }
}

/** A completed snapshot with one known block, to prove with reads that the server still serves. */
interface Reference {
  snapshotId: string;
  data: Buffer;
  pendingId: string;
}

async function makeReference(server: LocalEbsProcess): Promise<Reference> {
  const ebs = ebsClient(server);
  try {
    const data = block(0x42);
    const snapshotId = (await ebs.send(new StartSnapshotCommand({ VolumeSize: 1 }))).SnapshotId!;
    await ebs.send(putBlockCommand(snapshotId, 0, data));
    await ebs.send(new CompleteSnapshotCommand({ SnapshotId: snapshotId, ChangedBlocksCount: 1 }));
    const pendingId = (await ebs.send(new StartSnapshotCommand({ VolumeSize: 1, Timeout: 4320 }))).SnapshotId!;
    return { snapshotId, data, pendingId };
  } finally {
    ebs.destroy();
  }
}

/**
 * A suite's server: started before its tests with a reference snapshot, and after
 * them checked for internal failures and stopped, also when a test failed.
 */
function checkedServer(start: () => Promise<LocalEbsProcess>, onStarted: (server: LocalEbsProcess, reference: Reference) => void): void {
  let started: LocalEbsProcess | undefined;
  before(async () => {
    started = await start();
    onStarted(started, await makeReference(started));
  });
  after(async () => {
    try {
      if (started) await assertNoInternalFailure(started);
    } finally {
      await started?.stop();
      await stopAllLocalEbsProcesses();
      removeTemporaryDataDirs();
    }
  });
}

/** Another client (a fresh connection) lists, reads and writes correctly: the server still serves. */
async function assertServing(server: LocalEbsProcess, reference: Reference): Promise<void> {
  assert.equal(server.child.exitCode, null, `local-ebs exited: ${server.stderr()}`);
  const ebs = ebsClient(server);
  try {
    const list = await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: reference.snapshotId }));
    assert.deepEqual(
      list.Blocks?.map((b) => b.BlockIndex),
      [0],
    );
    const got = await ebs.send(
      new GetSnapshotBlockCommand({ SnapshotId: reference.snapshotId, BlockIndex: 0, BlockToken: list.Blocks![0].BlockToken }),
    );
    assert.ok(Buffer.from(await got.BlockData!.transformToByteArray()).equals(reference.data));
    const data = block(0x17);
    await ebs.send(putBlockCommand(reference.pendingId, 1, data));
  } finally {
    ebs.destroy();
  }
}

/** Nothing failed inside the server: no 500 was answered, no handler is stuck, nothing was logged as unexpected. */
async function assertNoInternalFailure(server: LocalEbsProcess): Promise<void> {
  const stats = await getLocalEbsStats(server.endpoint, server.credentials);
  assert.equal(stats.responses['500'] ?? 0, 0, JSON.stringify(stats));
  assert.equal(stats.connections.inflightRequests, 0, JSON.stringify(stats));
  assert.doesNotMatch(server.stderr(), /unexpected failure|failed:|\n\s+at /);
}

describe('local-ebs under hostile requests', function () {
  this.timeout(30_000);
  let server: LocalEbsProcess;
  let reference: Reference;
  let port: number;

  checkedServer(
    () => startLocalEbsProcess(),
    (started, made) => {
      server = started;
      port = started.port;
      reference = made;
    },
  );

  it('malformed request lines and headers: 400 ValidationException and the connection closed', async () => {
    const cases: Array<[string, string | Buffer]> = [
      [
        'TLS hello and binary garbage',
        Buffer.from([0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0xff, 0xfe, 0x00, 0x0d, 0x0a, 0x0d, 0x0a]),
      ],
      ['a header without a colon', 'GET /snapshots HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n'],
      ['a space before the colon', 'GET /snapshots HTTP/1.1\r\nHost : x\r\n\r\n'],
      ['a 100 KB header block', `GET /snapshots HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(100_000)}\r\n\r\n`],
      ['20,000 short headers', `GET /snapshots HTTP/1.1\r\nHost: x\r\n${'a: b\r\n'.repeat(20_000)}\r\n`],
      ['a 20 KB request target', `GET /snapshots/snap-${'0'.repeat(20_000)}/blocks HTTP/1.1\r\nHost: x\r\n\r\n`],
      ['the same Content-Length twice', 'POST /snapshots HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}'],
      ['two different Content-Lengths', 'POST /snapshots HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 300\r\n\r\n{}'],
      ['a negative Content-Length', 'POST /snapshots HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}'],
      ['a non-numeric Content-Length', 'POST /snapshots HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}'],
      ['Content-Length 2^64', 'POST /snapshots HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551616\r\n\r\n{}'],
      [
        'Content-Length with Transfer-Encoding chunked',
        'POST /snapshots HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n',
      ],
      ['Transfer-Encoding gzip', 'POST /snapshots HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{}'],
      [
        'Transfer-Encoding chunked twice',
        'POST /snapshots HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n',
      ],
      [
        'Transfer-Encoding chunked, identity',
        'POST /snapshots HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n2\r\n{}\r\n0\r\n\r\n',
      ],
      ['a chunk size that is not hex', 'POST /snapshots HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n'],
      ['lines ended by LF alone', 'GET /snapshots HTTP/1.1\nHost: x\n\n'],
      ['a NUL byte in the path', 'GET /snapshots/snap-\0/blocks HTTP/1.1\r\nHost: x\r\n\r\n'],
      ['raw UTF-8 in the path', Buffer.from('GET /snapshots/snap-é/blocks HTTP/1.1\r\nHost: x\r\n\r\n', 'utf8')],
      ['an unknown method token', 'FOO /snapshots HTTP/1.1\r\nHost: x\r\n\r\n'],
      ['an HTTP/2 preface', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'],
      ['HTTP/9.9', 'GET /snapshots HTTP/9.9\r\nHost: x\r\n\r\n'],
    ];
    for (const [label, bytes] of cases) {
      const result = await exchange(port, bytes, { untilClosed: true });
      assert.equal(result.hung, false, `${label}: ${describeExchange(result)}`);
      assertModeled(result, 400, 'ValidationException', 'INVALID_PARAMETER_VALUE', label);
      assert.ok(result.closed, `${label}: the connection is closed after the answer`);
    }
    // CONNECT is not served at all: the connection is dropped without an answer.
    const connect = await exchange(port, 'CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n', { untilClosed: true });
    assert.deepEqual([connect.hung, connect.closed, connect.status], [false, true, undefined], describeExchange(connect));
    const stats = await getLocalEbsStats(server.endpoint, server.credentials);
    assert.ok(stats.connections.malformed >= cases.length, JSON.stringify(stats.connections));
    await assertServing(server, reference);
  });

  it('malformed and hostile StartSnapshot bodies: a ValidationException with the Reason that fits', async () => {
    const nested = (depth: number): string => `${'['.repeat(depth)}${']'.repeat(depth)}`;
    const cases: Array<[string, Buffer | string, string]> = [
      ['not JSON', '{"VolumeSize":', 'INVALID_PARAMETER_VALUE'],
      ['a JSON array', '[1,2]', 'INVALID_PARAMETER_VALUE'],
      ['a JSON string', '"snap"', 'INVALID_PARAMETER_VALUE'],
      ['JSON null', 'null', 'INVALID_PARAMETER_VALUE'],
      ['an empty object', '{}', 'INVALID_VOLUME_SIZE'],
      ['a byte-order mark', '\ufeff{"VolumeSize":1}', 'INVALID_PARAMETER_VALUE'],
      ['invalid UTF-8', Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), 'INVALID_PARAMETER_VALUE'],
      ['VolumeSize as a string', '{"VolumeSize":"1"}', 'INVALID_VOLUME_SIZE'],
      ['VolumeSize true', '{"VolumeSize":true}', 'INVALID_VOLUME_SIZE'],
      ['VolumeSize 1e400', '{"VolumeSize":1e400}', 'INVALID_VOLUME_SIZE'],
      ['VolumeSize 2^53+1', '{"VolumeSize":9007199254740993}', 'INVALID_VOLUME_SIZE'],
      ['VolumeSize -1', '{"VolumeSize":-1}', 'INVALID_VOLUME_SIZE'],
      ['VolumeSize 1.5', '{"VolumeSize":1.5}', 'INVALID_VOLUME_SIZE'],
      ['VolumeSize only through __proto__', '{"__proto__":{"VolumeSize":1}}', 'INVALID_VOLUME_SIZE'],
      ['Timeout 1e308', '{"VolumeSize":1,"Timeout":1e308}', 'INVALID_PARAMETER_VALUE'],
      ['Timeout as a string', '{"VolumeSize":1,"Timeout":"10"}', 'INVALID_PARAMETER_VALUE'],
      ['Tags an object', '{"VolumeSize":1,"Tags":{"Key":"a"}}', 'INVALID_TAG'],
      ['Tags deeply nested', `{"VolumeSize":1,"Tags":${nested(20_000)}}`, 'INVALID_TAG'],
      ['Encrypted "yes"', '{"VolumeSize":1,"Encrypted":"yes"}', 'INVALID_PARAMETER_VALUE'],
      ['ClientToken a number', '{"VolumeSize":1,"ClientToken":5}', 'INVALID_PARAMETER_VALUE'],
      ['Description a list', '{"VolumeSize":1,"Description":[]}', 'INVALID_PARAMETER_VALUE'],
      ['ParentSnapshotId a number', '{"VolumeSize":1,"ParentSnapshotId":5}', 'INVALID_SNAPSHOT_ID'],
      ['ParentSnapshotId a path', '{"VolumeSize":1,"ParentSnapshotId":"../../etc"}', 'INVALID_SNAPSHOT_ID'],
      ['KmsKeyArn a number', '{"VolumeSize":1,"KmsKeyArn":5}', 'INVALID_CUSTOMER_KEY'],
      ['30,000 nested arrays', nested(30_000), 'INVALID_PARAMETER_VALUE'],
    ];
    for (const [label, body, reason] of cases) {
      const response = await rawRequest(server.endpoint, server.credentials, {
        method: 'POST',
        path: '/snapshots',
        body: Buffer.from(body),
      });
      assertModeled(
        { status: response.status, headers: headerRecord(response.headers), body: response.body },
        400,
        'ValidationException',
        reason,
        label,
      );
    }
    // Unknown members are ignored, as AWS's JSON protocols do, even deeply nested ones.
    const unknown = await rawRequest(server.endpoint, server.credentials, {
      method: 'POST',
      path: '/snapshots',
      body: Buffer.from(`{"VolumeSize":2,"Bogus":"x","volumesize":7,"Deep":${nested(20_000)}}`),
    });
    assert.equal(unknown.status, 201, unknown.body.toString());
    assert.equal(unknown.json().VolumeSize, 2);
    assert.equal(unknown.json().Bogus, undefined);
    await assertServing(server, reference);
  });

  it('bodies: a 1 GiB Content-Length is refused before any of it is sent, an endless chunked body is cut at the cap, a GET body is ignored', async () => {
    const { pendingId } = reference;
    for (const target of ['/snapshots', `/snapshots/${pendingId}/blocks/0`, `/snapshots/completion/${pendingId}`, '/no/such/route']) {
      const method = target.includes('/blocks/') ? 'PUT' : 'POST';
      // Only the headers go out: an answer proves nothing of the body was waited for.
      const result = await exchange(port, `${method} ${target} HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n`, {
        untilClosed: true,
      });
      assert.equal(result.hung, false, `${target}: ${describeExchange(result)}`);
      if (target === '/no/such/route') assertModeled(result, 404, 'UnknownOperationException', undefined, target);
      else assertModeled(result, 400, 'ValidationException', 'INVALID_PARAMETER_VALUE', target);
      assert.ok(result.closed, target);
    }

    // Chunks of 64 KiB for as long as the server reads them.
    for (const [method, target, capBytes] of [
      ['PUT', `/snapshots/${pendingId}/blocks/0`, BLOCK_SIZE_BYTES],
      ['POST', '/snapshots', 64 * 1024],
    ] as const) {
      const outcome = await new Promise<{ answer: Buffer; sentBytes: number; closed: boolean }>((resolve) => {
        const socket = net.connect(port, '127.0.0.1');
        const chunk = Buffer.concat([Buffer.from('10000\r\n'), Buffer.alloc(0x10000, 0x20), Buffer.from('\r\n')]);
        let answer = Buffer.alloc(0);
        let sentBytes = 0;
        let stopped = false;
        const stop = (closed: boolean): void => {
          if (stopped) return;
          stopped = true;
          clearTimeout(timer);
          socket.destroy();
          resolve({ answer, sentBytes, closed });
        };
        const timer = setTimeout(() => stop(false), HANG_MS);
        const pump = (): void => {
          // The bound on this test: 256 MiB written without the server closing is a failure.
          while (!stopped && sentBytes < 256 * 1024 * 1024) {
            sentBytes += chunk.length;
            if (!socket.write(chunk)) return;
          }
        };
        socket.on('data', (data: Buffer) => (answer = Buffer.concat([answer, data])));
        socket.on('drain', pump);
        socket.on('error', () => stop(true));
        socket.on('close', () => stop(true));
        socket.write(
          `${method} ${target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n${method === 'PUT' ? 'x-amz-data-length: 524288\r\n' : ''}\r\n`,
        );
        pump();
      });
      const parsed = parseResponse(outcome.answer, false);
      assert.ok(outcome.closed, `${method} ${target}: the server closes the connection (sent ${outcome.sentBytes} bytes)`);
      assert.ok(parsed, `${method} ${target}: an answer before the close`);
      assertModeled(parsed, 400, 'ValidationException', 'INVALID_PARAMETER_VALUE', target);
      assert.match(
        JSON.parse(parsed.body.toString()).Message as string,
        new RegExp(`${capBytes === BLOCK_SIZE_BYTES ? 'larger than DataLength' : `larger than ${capBytes} bytes`}`),
      );
      // What the kernel buffers on both sides, well under the 256 MiB the client would send.
      assert.ok(outcome.sentBytes < 64 * 1024 * 1024, `sent ${outcome.sentBytes} bytes before the close`);
    }

    // Expect: 100-continue gets its refusal instead of a 100 when the body would be refused anyway,
    // and a 100 before the answer otherwise; another expectation is ignored.
    const refusedEarly = await exchange(
      port,
      `POST /snapshots HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1073741824\r\n\r\n`,
    );
    assertModeled(refusedEarly, 400, 'ValidationException', 'INVALID_PARAMETER_VALUE', 'Expect: 100-continue over the cap');
    const target = `/snapshots/${reference.snapshotId}/blocks`;
    const continued = await new Promise<Buffer>((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      let received = Buffer.alloc(0);
      const timer = setTimeout(() => socket.destroy(), HANG_MS);
      socket.on('data', (chunk: Buffer) => {
        received = Buffer.concat([received, chunk]);
        // The body goes only after the 100.
        if (received.toString('latin1') === 'HTTP/1.1 100 Continue\r\n\r\n') socket.write('{}');
        else if (parseResponse(received.subarray(received.indexOf('\r\n\r\n') + 4), false)) socket.destroy();
      });
      socket.on('close', () => {
        clearTimeout(timer);
        resolve(received);
      });
      void signedHeaders(server, { method: 'GET', path: target, body: Buffer.from('{}') }).then((headers) =>
        socket.write(requestBytes(server, 'GET', target, { ...headers, expect: '100-continue' })),
      );
    });
    assert.ok(
      continued.toString('latin1').startsWith('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 '),
      continued.toString('latin1').slice(0, 200),
    );
    const oddExpectation = await exchange(
      port,
      requestBytes(server, 'GET', target, { ...(await signedHeaders(server, { method: 'GET', path: target })), expect: 'magic' }),
    );
    assert.equal(oddExpectation.status, 200, describeExchange(oddExpectation));

    // A body on a GET is read within the cap, covered by the signature, and otherwise ignored.
    const get = await rawRequest(server.endpoint, server.credentials, {
      method: 'GET',
      path: `/snapshots/${reference.snapshotId}/blocks`,
      body: Buffer.from('{"ignored":true}'),
    });
    assert.equal(get.status, 200, get.body.toString());
    assert.deepEqual(
      (get.json().Blocks as Array<{ BlockIndex: number }>).map((b) => b.BlockIndex),
      [0],
    );
    const bigGet = await rawRequest(server.endpoint, server.credentials, {
      method: 'GET',
      path: `/snapshots/${reference.snapshotId}/blocks`,
      body: Buffer.alloc(65 * 1024, 0x20),
    });
    assertModeled(
      { status: bigGet.status, headers: headerRecord(bigGet.headers), body: bigGet.body },
      400,
      'ValidationException',
      'INVALID_PARAMETER_VALUE',
      'GET body over the cap',
    );
    await assertServing(server, reference);
  });

  it('odd snapshot IDs in every path segment and query value: INVALID_SNAPSHOT_ID, and no path outside the data directory is touched', async () => {
    const { snapshotId, pendingId, data } = { ...reference, data: block(0x33) };
    // As they appear on the request line (percent-encoded where a client must encode).
    const oddIds = [
      '..',
      '.',
      '%2e%2e%2f%2e%2e%2fetc',
      '..%2F..%2F..%2Ftmp',
      '%2F',
      '%00',
      'snap-0%00',
      `snap-${'a'.repeat(300)}`,
      'snap-%C3%A9',
      'snap-%E2%80%AE0',
      'snap-xyz',
      'snap-',
      'SNAP-0123',
      'snap-0123%20',
      'snap-0123%0A',
      '%F0%9F%92%A5',
    ];
    const reqs = (raw: string): Array<[string, RawRequest]> => [
      ['ListSnapshotBlocks', { method: 'GET', path: `/snapshots/${raw}/blocks` }],
      ['ListChangedBlocks', { method: 'GET', path: `/snapshots/${raw}/changedblocks` }],
      ['GetSnapshotBlock', { method: 'GET', path: `/snapshots/${raw}/blocks/0`, query: { blockToken: 'AAAA' } }],
      ['PutSnapshotBlock', { method: 'PUT', path: `/snapshots/${raw}/blocks/0`, headers: putHeaders(data), body: data }],
      ['CompleteSnapshot', { method: 'POST', path: `/snapshots/completion/${raw}`, headers: { 'x-amz-changedblockscount': '0' } }],
      ['expire (admin)', { method: 'POST', path: `/_local-ebs/snapshots/${raw}/expire` }],
    ];
    for (const raw of oddIds) {
      for (const [operation, request] of reqs(raw)) {
        const response = await rawRequest(server.endpoint, server.credentials, request);
        assertModeled(
          { status: response.status, headers: headerRecord(response.headers), body: response.body },
          400,
          'ValidationException',
          'INVALID_SNAPSHOT_ID',
          `${operation} ${raw}`,
        );
      }
      const decoded = decodeURIComponent(raw);
      for (const [operation, request] of [
        ['firstSnapshotId', { method: 'GET', path: `/snapshots/${snapshotId}/changedblocks`, query: { firstSnapshotId: decoded } }],
        [
          'ParentSnapshotId',
          { method: 'POST', path: '/snapshots', body: Buffer.from(JSON.stringify({ VolumeSize: 1, ParentSnapshotId: decoded })) },
        ],
      ] as Array<[string, RawRequest]>) {
        const response = await rawRequest(server.endpoint, server.credentials, request);
        assertModeled(
          { status: response.status, headers: headerRecord(response.headers), body: response.body },
          400,
          'ValidationException',
          'INVALID_SNAPSHOT_ID',
          `${operation} ${raw}`,
        );
      }
    }
    // An empty segment matches no route at all.
    for (const target of ['/snapshots//blocks', '/snapshots//blocks/0', '/snapshots/completion/']) {
      const response = await rawRequest(server.endpoint, server.credentials, {
        method: target.startsWith('/snapshots/completion') ? 'POST' : 'GET',
        path: target,
      });
      assertModeled(
        { status: response.status, headers: headerRecord(response.headers), body: response.body },
        404,
        'UnknownOperationException',
        undefined,
        target,
      );
    }

    // Block indexes that are not a 32-bit decimal, and one that is but lies outside the volume.
    const badIndexes = [
      '-1',
      '1e9',
      '0x10',
      '9007199254740992',
      '2147483648',
      '4294967296',
      '1.0',
      '+1',
      '%2D1',
      '%201',
      '%00',
      '%E2%91%A0',
      '1%2F..',
    ];
    for (const index of badIndexes) {
      const put = await rawRequest(server.endpoint, server.credentials, {
        method: 'PUT',
        path: `/snapshots/${pendingId}/blocks/${index}`,
        headers: putHeaders(data),
        body: data,
      });
      assertModeled(
        { status: put.status, headers: headerRecord(put.headers), body: put.body },
        400,
        'ValidationException',
        'INVALID_PARAMETER_VALUE',
        `PUT block ${index}`,
      );
      const get = await rawRequest(server.endpoint, server.credentials, {
        method: 'GET',
        path: `/snapshots/${snapshotId}/blocks/${index}`,
        query: { blockToken: 'AAAA' },
      });
      assertModeled(
        { status: get.status, headers: headerRecord(get.headers), body: get.body },
        400,
        'ValidationException',
        'INVALID_PARAMETER_VALUE',
        `GET block ${index}`,
      );
    }
    const outside = await rawRequest(server.endpoint, server.credentials, {
      method: 'PUT',
      path: `/snapshots/${pendingId}/blocks/1000000000`,
      headers: putHeaders(data),
      body: data,
    });
    assertModeled(
      { status: outside.status, headers: headerRecord(outside.headers), body: outside.body },
      400,
      'ValidationException',
      'INVALID_BLOCK',
      'PUT block 1e9 in digits',
    );

    // Only snapshot directories the server made itself, nothing beside the data directory's own files.
    const snapshotDirs = readdirSync(path.join(server.dataDir, 'snapshots'));
    assert.ok(
      snapshotDirs.every((name) => SNAPSHOT_DIR_PATTERN.test(name)),
      snapshotDirs.join(' '),
    );
    assert.deepEqual(readdirSync(server.dataDir).sort(), ['server.json', 'snapshots', 'store.json', 'token-key']);
    await assertServing(server, reference);
  });

  it('bad and repeated query parameters: modeled errors, and the first of a repeated parameter counts', async () => {
    const { snapshotId } = reference;
    // Signed exactly as sent, repeated keys included.
    const list = async (rawQuery: string): Promise<Exchange> => {
      const pathname = `/snapshots/${snapshotId}/blocks`;
      return exchange(
        port,
        requestBytes(
          server,
          'GET',
          rawQuery === '' ? pathname : `${pathname}?${rawQuery}`,
          await signedHeadersForQuery(server, pathname, rawQuery),
        ),
      );
    };
    const cases: Array<[string, number, string, string?]> = [
      ['pageToken=garbage!!', 400, 'ValidationException', 'INVALID_PAGE_TOKEN'],
      ['pageToken=AAAA', 400, 'ValidationException', 'INVALID_PAGE_TOKEN'],
      ['pageToken=', 400, 'ValidationException', 'INVALID_PAGE_TOKEN'],
      [`pageToken=${'A'.repeat(4000)}`, 400, 'ValidationException', 'INVALID_PAGE_TOKEN'],
      ['pageToken=%00', 400, 'ValidationException', 'INVALID_PAGE_TOKEN'],
      ['maxResults=abc', 400, 'ValidationException', 'INVALID_PARAMETER_VALUE'],
      ['maxResults=-1', 400, 'ValidationException', 'INVALID_PARAMETER_VALUE'],
      ['maxResults=1e3', 400, 'ValidationException', 'INVALID_PARAMETER_VALUE'],
      ['maxResults=99999999999999999999', 400, 'ValidationException', 'INVALID_PARAMETER_VALUE'],
      ['maxResults', 400, 'ValidationException', 'INVALID_PARAMETER_VALUE'],
      ['startingBlockIndex=0x10', 400, 'ValidationException', 'INVALID_PARAMETER_VALUE'],
      ['maxResults=abc&maxResults=100', 400, 'ValidationException', 'INVALID_PARAMETER_VALUE'],
    ];
    for (const [query, status, type, reason] of cases) assertModeled(await list(query), status, type, reason, query);
    // Refused before the signature is checked: the query cannot be decoded at all.
    const undecodable = await rawRequest(server.endpoint, server.credentials, {
      method: 'GET',
      path: `/snapshots/${snapshotId}/blocks`,
      query: { maxResults: '%ZZ' },
      rawQuery: 'maxResults=%ZZ',
    });
    assertModeled(
      { status: undecodable.status, headers: headerRecord(undecodable.headers), body: undecodable.body },
      400,
      'ValidationException',
      'INVALID_PARAMETER_VALUE',
      '%ZZ',
    );
    for (const query of ['maxResults=100&maxResults=abc', 'startingBlockIndex=0&startingBlockIndex=5', 'unknown=1&other']) {
      const response = await list(query);
      assert.equal(response.status, 200, `${query}: ${describeExchange(response)}`);
      assert.deepEqual(
        (JSON.parse(response.body.toString()).Blocks as Array<{ BlockIndex: number }>).map((b) => b.BlockIndex),
        [0],
        query,
      );
    }
    // Block tokens: garbage is refused, and a good one followed by garbage is read as the good one.
    const token = (JSON.parse((await list('')).body.toString()).Blocks as Array<{ BlockToken: string }>)[0].BlockToken;
    for (const bad of ['garbage!!', 'AAAA', `${'A'.repeat(300)}`, '']) {
      const response = await rawRequest(server.endpoint, server.credentials, {
        method: 'GET',
        path: `/snapshots/${snapshotId}/blocks/0`,
        query: { blockToken: bad },
      });
      assertModeled(
        { status: response.status, headers: headerRecord(response.headers), body: response.body },
        400,
        'ValidationException',
        'INVALID_BLOCK_TOKEN',
        `blockToken=${bad}`,
      );
    }
    const escape = (s: string) => encodeURIComponent(s);
    const repeated = await rawRequest(server.endpoint, server.credentials, {
      method: 'GET',
      path: `/snapshots/${snapshotId}/blocks/0`,
      query: { blockToken: token },
      rawQuery: `blockToken=${escape(token)}&blockToken=garbage`,
    });
    // The signature covers both values, so this one is signed by hand.
    assert.equal(repeated.status, 403, 'a query other than the one signed is refused');
    const headers = await signedHeadersForQuery(
      server,
      `/snapshots/${snapshotId}/blocks/0`,
      `blockToken=${escape(token)}&blockToken=garbage`,
    );
    const both = await exchange(
      port,
      requestBytes(server, 'GET', `/snapshots/${snapshotId}/blocks/0?blockToken=${escape(token)}&blockToken=garbage`, headers),
    );
    assert.equal(both.status, 200, describeExchange(both));
    assert.ok(both.body.equals(reference.data));
    await assertServing(server, reference);
  });

  it('SigV4 abuse: a 100 KB Authorization, a signature for another host or method, an old or future date: 400 or 403', async () => {
    const target = `/snapshots/${reference.snapshotId}/blocks`;
    const huge = await exchange(
      port,
      requestBytes(server, 'GET', target, {
        authorization: `AWS4-HMAC-SHA256 Credential=${'A'.repeat(100_000)}`,
        'x-amz-date': '20200101T000000Z',
      }),
      { untilClosed: true },
    );
    assertModeled(huge, 400, 'ValidationException', 'INVALID_PARAMETER_VALUE', '100 KB Authorization');
    assert.ok(huge.closed);
    const big = await exchange(
      port,
      requestBytes(server, 'GET', target, {
        authorization: `AWS4-HMAC-SHA256 Credential=${'A'.repeat(10_000)}, SignedHeaders=host, Signature=00`,
      }),
    );
    assertModeled(big, 403, 'IncompleteSignatureException', undefined, '10 KB Authorization');
    const amzDate = new Date()
      .toISOString()
      .replace(/[-:]/g, '')
      .replace(/\.\d{3}Z$/, 'Z');
    const manyHeaders = await exchange(
      port,
      requestBytes(server, 'GET', target, {
        authorization: `AWS4-HMAC-SHA256 Credential=${server.credentials.accessKeyId}/${amzDate.slice(0, 8)}/us-east-1/ebs/aws4_request, SignedHeaders=${'a;'.repeat(3000)}host;x-amz-date, Signature=${'0'.repeat(64)}`,
        'x-amz-date': amzDate,
      }),
    );
    assertModeled(manyHeaders, 403, 'InvalidSignatureException', undefined, 'thousands of signed header names');

    // Signed for another host, sent to this one.
    const otherHost = await signedHeaders(server, { method: 'GET', path: target, host: 'ebs.us-east-1.amazonaws.com' });
    const { host: _signedHost, ...withoutHost } = otherHost;
    void _signedHost;
    assertModeled(
      await exchange(port, requestBytes(server, 'GET', target, withoutHost)),
      403,
      'InvalidSignatureException',
      undefined,
      'another host',
    );

    // Signed as a GET, sent as a PUT with the same headers and body.
    const data = block(0x51);
    const blockPath = `/snapshots/${reference.pendingId}/blocks/2`;
    const asGet = await signedHeaders(server, { method: 'GET', path: blockPath, headers: putHeaders(data), body: data });
    assertModeled(
      await exchange(port, requestBytes(server, 'PUT', blockPath, asGet, data)),
      403,
      'InvalidSignatureException',
      undefined,
      'another method',
    );

    // A request signed 20 minutes ago (a replay) and one dated 20 minutes ahead.
    const old = await signedHeaders(server, { method: 'GET', path: target, signingDate: new Date(Date.now() - 20 * 60_000) });
    const oldAnswer = await exchange(port, requestBytes(server, 'GET', target, old));
    assertModeled(oldAnswer, 403, 'InvalidSignatureException', undefined, 'old date');
    assert.match(oldAnswer.body.toString(), /Signature expired/);
    const future = await signedHeaders(server, { method: 'GET', path: target, signingDate: new Date(Date.now() + 20 * 60_000) });
    const futureAnswer = await exchange(port, requestBytes(server, 'GET', target, future));
    assertModeled(futureAnswer, 403, 'InvalidSignatureException', undefined, 'future date');
    assert.match(futureAnswer.body.toString(), /not yet current/);

    // The wrong secret.
    const wrong = await signedHeaders(server, { method: 'GET', path: target, secretAccessKey: 'not-the-secret' });
    assertModeled(
      await exchange(port, requestBytes(server, 'GET', target, wrong)),
      403,
      'InvalidSignatureException',
      undefined,
      'wrong secret',
    );

    // Signed, then sent without its Host header.
    const { host: _host, ...hostless } = await signedHeaders(server, { method: 'GET', path: target });
    void _host;
    const noHost = await exchange(
      port,
      `GET ${target} HTTP/1.1\r\n${Object.entries(hostless)
        .map(([name, value]) => `${name}: ${value}\r\n`)
        .join('')}\r\n`,
    );
    assertModeled(noHost, 403, 'InvalidSignatureException', undefined, 'no Host');
    assert.match(noHost.body.toString(), /host/);
    await assertServing(server, reference);
  });

  it('unknown methods and paths: 404 UnknownOperationException, what AWS answers when no operation matches', async () => {
    const id = reference.snapshotId;
    const cases: Array<[string, string]> = [
      ['DELETE', `/snapshots/${id}`],
      ['DELETE', `/snapshots/${id}/blocks/0`],
      ['PATCH', `/snapshots/${id}/blocks/0`],
      ['POST', `/snapshots/${id}/blocks/0`],
      ['PUT', '/snapshots'],
      ['GET', '/snapshots'],
      ['OPTIONS', '/snapshots'],
      ['OPTIONS', '*'],
      ['TRACE', '/'],
      ['GET', '/'],
      ['GET', `/snapshots/${id}`],
      ['GET', '/snapshots/../etc/passwd'],
      ['GET', '/_local-ebs/../_local-ebs/stats'],
      ['POST', '/_local-ebs/stats'],
      ['GET', '/_local-ebs/faults'],
      ['GET', `http://127.0.0.1:${port}/snapshots/${id}/blocks`],
    ];
    for (const [method, target] of cases) {
      const result = await exchange(port, `${method} ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
      assertModeled(result, 404, 'UnknownOperationException', undefined, `${method} ${target}`);
    }
    // Signed or not makes no difference: routing comes first.
    const signed = await rawRequest(server.endpoint, server.credentials, { method: 'DELETE', path: `/snapshots/${id}/blocks/0` });
    assertModeled(
      { status: signed.status, headers: headerRecord(signed.headers), body: signed.body },
      404,
      'UnknownOperationException',
      undefined,
      'signed DELETE',
    );
    // A HEAD gets the same status and error type, without a body.
    const head = await exchange(port, `HEAD /snapshots/${id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`, { head: true });
    assert.deepEqual([head.status, head.headers['x-amzn-errortype']], [404, 'UnknownOperationException']);
    await assertServing(server, reference);
  });

  it('pipelining: up to 16 unanswered requests on a connection are answered in order; more close the connection', async () => {
    const request = `GET /snapshots/${reference.snapshotId}/blocks HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`;
    const sixteen = await new Promise<Buffer>((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      let received = Buffer.alloc(0);
      const timer = setTimeout(() => socket.destroy(), HANG_MS);
      socket.on('data', (chunk: Buffer) => {
        received = Buffer.concat([received, chunk]);
        if ((received.toString('latin1').match(/HTTP\/1\.1 /g) ?? []).length === 16 && received.toString('latin1').endsWith('}'))
          socket.destroy();
      });
      socket.on('close', () => {
        clearTimeout(timer);
        resolve(received);
      });
      socket.write(request.repeat(16));
    });
    const statuses = sixteen.toString('latin1').match(/HTTP\/1\.1 (\d{3})/g) ?? [];
    assert.equal(statuses.length, 16, sixteen.toString('latin1').slice(0, 500));
    assert.ok(
      statuses.every((line) => line === 'HTTP/1.1 403'),
      'each unsigned request gets its 403',
    );
    const flood = await exchange(port, request.repeat(500), { untilClosed: true });
    assert.deepEqual([flood.hung, flood.closed], [false, true], describeExchange(flood));
    await assertServing(server, reference);
  });

  it('clients that go away mid-body or mid-request leave no request behind', async () => {
    const data = block(0x61);
    const target = `/snapshots/${reference.pendingId}/blocks/3`;
    const headers = await signedHeaders(server, { method: 'PUT', path: target, headers: putHeaders(data), body: data });
    const sockets = await Promise.all(
      Array.from(
        { length: 40 },
        (_, i) =>
          new Promise<net.Socket>((resolve) => {
            const socket = net.connect(port, '127.0.0.1', () => {
              // Half of a body, half of the headers, or only the request line.
              const bytes = requestBytes(server, 'PUT', target, headers, data.subarray(0, BLOCK_SIZE_BYTES / 2));
              socket.write(i % 3 === 0 ? bytes : i % 3 === 1 ? bytes.subarray(0, 200) : bytes.subarray(0, 20));
              setTimeout(() => resolve(socket), 50);
            });
            socket.on('error', () => undefined);
          }),
      ),
    );
    for (const [i, socket] of sockets.entries()) {
      if (i % 2 === 0) socket.destroy();
      else socket.resetAndDestroy();
    }
    // The server sees the closes at once; a request still counted after that is stuck for good.
    const deadline = performance.now() + 2_000;
    let stats = await getLocalEbsStats(server.endpoint, server.credentials);
    while (stats.connections.inflightRequests > 0 && performance.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      stats = await getLocalEbsStats(server.endpoint, server.credentials);
    }
    assert.equal(stats.connections.inflightRequests, 0, JSON.stringify(stats.connections));
    await assertServing(server, reference);
  });

  it('300 concurrent connections, each with a signed request, are all answered', async () => {
    const target = `/snapshots/${reference.snapshotId}/blocks`;
    // One signature, sent 300 times: a replay within the 15 minutes is accepted, as AWS accepts it.
    const bytes = requestBytes(server, 'GET', target, await signedHeaders(server, { method: 'GET', path: target }));
    const connected = await Promise.all(
      Array.from(
        { length: 300 },
        () =>
          new Promise<net.Socket>((resolve, reject) => {
            const socket = net.connect(port, '127.0.0.1', () => resolve(socket));
            socket.once('error', reject);
          }),
      ),
    );
    try {
      // A connection the client sees as open may still wait in the kernel's accept queue for a moment.
      const deadline = performance.now() + 3_000;
      let statsWhileOpen = await getLocalEbsStats(server.endpoint, server.credentials);
      while (statsWhileOpen.connections.open < 301 && performance.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        statsWhileOpen = await getLocalEbsStats(server.endpoint, server.credentials);
      }
      assert.ok(statsWhileOpen.connections.open >= 301, JSON.stringify(statsWhileOpen.connections));
      const answers = await Promise.all(
        connected.map(
          (socket) =>
            new Promise<number | undefined>((resolve) => {
              let received = Buffer.alloc(0);
              const timer = setTimeout(() => resolve(undefined), 10_000);
              socket.on('data', (chunk: Buffer) => {
                received = Buffer.concat([received, chunk]);
                const parsed = parseResponse(received, false);
                if (parsed) {
                  clearTimeout(timer);
                  resolve(parsed.status);
                }
              });
              socket.write(bytes);
            }),
        ),
      );
      assert.deepEqual(
        answers.filter((status) => status !== 200),
        [],
        'every connection got its 200',
      );
    } finally {
      for (const socket of connected) socket.destroy();
    }
    await assertServing(server, reference);
  });
});

/** Headers for a GET whose query is signed exactly as `rawQuery` (repeated keys included). */
async function signedHeadersForQuery(server: LocalEbsProcess, pathname: string, rawQuery: string): Promise<Record<string, string>> {
  const query: Record<string, string | string[]> = {};
  for (const [key, value] of new URLSearchParams(rawQuery)) {
    const previous = query[key];
    query[key] = previous === undefined ? value : Array.isArray(previous) ? [...previous, value] : [previous, value];
  }
  const url = new URL(server.endpoint);
  const signer = new SignatureV4({ credentials: { ...server.credentials }, region: 'us-east-1', service: 'ebs', sha256: Sha256 });
  const signed = await signer.sign({
    method: 'GET',
    protocol: 'http:',
    hostname: url.hostname,
    port: Number(url.port),
    path: pathname,
    query,
    headers: { host: url.host },
    body: Buffer.alloc(0),
  });
  return signed.headers;
}

describe('local-ebs timeouts and connection cap', function () {
  this.timeout(30_000);
  // Short deadlines so that the test takes seconds; the defaults are in limits.ts.
  const limits: ConnectionLimits = {
    headersTimeoutMs: 1500,
    requestTimeoutMs: 2500,
    keepAliveTimeoutMs: 500,
    idleTimeoutMs: 20_000,
    maxConnections: 64,
  };
  let server: LocalEbsProcess;
  let reference: Reference;

  checkedServer(
    () => startWithLimits(limits),
    (started, made) => {
      server = started;
      reference = made;
    },
  );

  it('slow-loris connections and a slow body are timed out (408), while other clients are served promptly', async () => {
    const t0 = performance.now();
    interface Slow {
      socket: net.Socket;
      closedAtMs?: number;
      received: Buffer;
      timer?: NodeJS.Timeout;
    }
    const open = (kind: 'loris' | 'silent' | 'slow-body', bodyTarget?: Buffer): Slow => {
      const socket = net.connect(server.port, '127.0.0.1');
      const slow: Slow = { socket, received: Buffer.alloc(0) };
      socket.on('data', (chunk: Buffer) => (slow.received = Buffer.concat([slow.received, chunk])));
      socket.on('error', () => undefined);
      socket.on('close', () => {
        slow.closedAtMs = performance.now() - t0;
        clearInterval(slow.timer);
      });
      if (kind === 'loris') {
        // The header block, one byte every 200 ms: never complete.
        const header = Buffer.from(
          `GET /snapshots/${reference.snapshotId}/blocks HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ${'a'.repeat(1000)}`,
        );
        let sent = 0;
        slow.timer = setInterval(() => {
          if (!socket.destroyed) socket.write(header.subarray(sent, ++sent));
        }, 200);
      } else if (kind === 'slow-body') {
        // Complete headers, then the body one byte every 100 ms.
        socket.write(bodyTarget!);
        let sent = 0;
        slow.timer = setInterval(() => {
          if (!socket.destroyed) socket.write(Buffer.alloc(1, sent++ & 0xff));
        }, 100);
      }
      return slow;
    };
    const data = block(0x71);
    const target = `/snapshots/${reference.pendingId}/blocks/4`;
    const bodyHead = requestBytes(
      server,
      'PUT',
      target,
      await signedHeaders(server, { method: 'PUT', path: target, headers: putHeaders(data), body: data }),
    );
    const slows = [...Array.from({ length: 30 }, () => open('loris')), open('silent'), open('slow-body', bodyHead)];
    try {
      // While they hang around, another client is served, each call promptly.
      const ebs = ebsClient(server);
      const latenciesMs: number[] = [];
      try {
        for (let i = 0; i < 6; i++) {
          const start = performance.now();
          const fresh = block(0x80 + i);
          await ebs.send(putBlockCommand(reference.pendingId, 10 + i, fresh));
          await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: reference.snapshotId }));
          latenciesMs.push(performance.now() - start);
        }
      } finally {
        ebs.destroy();
      }
      const servedByMs = performance.now() - t0;
      assert.ok(
        servedByMs < limits.headersTimeoutMs,
        `served within ${servedByMs.toFixed(0)} ms, before any slow client could be timed out`,
      );
      assert.ok(
        slows.every((slow) => slow.closedAtMs === undefined),
        'the slow clients were still connected while the others were served',
      );
      assert.ok(Math.max(...latenciesMs) < 500, `latencies ${latenciesMs.map((ms) => ms.toFixed(0)).join(' ')} ms`);

      // Then each is closed, shortly after its deadline, with a 408 RequestTimeoutException.
      const waitUntilMs = limits.requestTimeoutMs + 3000;
      while (slows.some((slow) => slow.closedAtMs === undefined) && performance.now() - t0 < waitUntilMs) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      for (const [i, slow] of slows.entries()) {
        const deadlineMs = i === slows.length - 1 ? limits.requestTimeoutMs : limits.headersTimeoutMs;
        const label = `slow client ${i}`;
        assert.ok(slow.closedAtMs !== undefined, `${label} was never closed`);
        assert.ok(
          slow.closedAtMs >= deadlineMs - 100 && slow.closedAtMs <= deadlineMs + 1500,
          `${label} closed at ${slow.closedAtMs.toFixed(0)} ms, deadline ${deadlineMs} ms`,
        );
        const parsed = parseResponse(slow.received, false);
        assert.ok(parsed, `${label}: an answer before the close`);
        assertModeled(parsed, 408, 'RequestTimeoutException', undefined, label);
      }
    } finally {
      for (const slow of slows) {
        clearInterval(slow.timer);
        slow.socket.destroy();
      }
    }
    const stats = await getLocalEbsStats(server.endpoint, server.credentials);
    assert.ok(stats.connections.timedOut >= slows.length, JSON.stringify(stats.connections));
    await assertServing(server, reference);
  });

  it('an idle keep-alive connection is closed 1 s after keepAliveTimeout (Node leaves the client that second to close first)', async () => {
    const target = `/snapshots/${reference.snapshotId}/blocks`;
    const result = await exchange(
      server.port,
      requestBytes(server, 'GET', target, await signedHeaders(server, { method: 'GET', path: target })),
      { untilClosed: true },
    );
    assert.equal(result.status, 200, describeExchange(result));
    const expectedMs = limits.keepAliveTimeoutMs + 1000;
    assert.ok(
      result.closed && result.elapsedMs >= expectedMs - 100 && result.elapsedMs <= expectedMs + 500,
      `closed after ${result.elapsedMs.toFixed(0)} ms`,
    );
    // Closed quietly: the connection was between requests, so there is nothing to answer.
    assert.equal(result.body.length > 0 && /RequestTimeout/.test(result.body.toString()), false);
  });

  it('beyond maxConnections, new connections are closed at once; the server serves again when they go', async () => {
    const sockets: net.Socket[] = [];
    const closedAtMs: number[] = [];
    const t0 = performance.now();
    try {
      for (let i = 0; i < limits.maxConnections + 50; i++) {
        const socket = net.connect(server.port, '127.0.0.1');
        socket.on('error', () => undefined);
        socket.on('close', () => closedAtMs.push(performance.now() - t0));
        sockets.push(socket);
      }
      // The 50 over the cap are dropped long before any header deadline.
      const deadline = performance.now() + limits.headersTimeoutMs - 300;
      while (closedAtMs.length < 50 && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
      assert.ok(closedAtMs.length >= 50, `${closedAtMs.length} closed`);
      assert.ok(closedAtMs.length < limits.maxConnections + 50, 'the others stay open until their deadline');
    } finally {
      for (const socket of sockets) socket.destroy();
    }
    // The server sees the closes a moment later.
    await new Promise((resolve) => setTimeout(resolve, 200));
    const stats = await getLocalEbsStats(server.endpoint, server.credentials);
    assert.ok(stats.connections.refused >= 50, JSON.stringify(stats.connections));
    await assertServing(server, reference);
  });
});

describe('local-ebs connection limits: configuration', () => {
  it('defaults, LOCAL_EBS_* variables, explicit options over both, and one-line errors', () => {
    assert.deepEqual(resolveConnectionLimits({}, {}), DEFAULT_CONNECTION_LIMITS);
    const env = { LOCAL_EBS_HEADERS_TIMEOUT_MS: '1000', LOCAL_EBS_MAX_CONNECTIONS: '10' };
    assert.deepEqual(resolveConnectionLimits({}, env), { ...DEFAULT_CONNECTION_LIMITS, headersTimeoutMs: 1000, maxConnections: 10 });
    assert.equal(resolveConnectionLimits({ maxConnections: 20 }, env).maxConnections, 20);
    for (const [name, value] of [
      ['LOCAL_EBS_HEADERS_TIMEOUT_MS', 'abc'],
      ['LOCAL_EBS_REQUEST_TIMEOUT_MS', '0'],
      ['LOCAL_EBS_KEEP_ALIVE_TIMEOUT_MS', '-5'],
      ['LOCAL_EBS_IDLE_TIMEOUT_MS', '1e6'],
      ['LOCAL_EBS_MAX_CONNECTIONS', '100000'],
    ]) {
      assert.throws(() => resolveConnectionLimits({}, { [name]: value }), new RegExp(`invalid ${name}=`), name);
    }
    assert.throws(
      () => resolveConnectionLimits({}, { LOCAL_EBS_HEADERS_TIMEOUT_MS: '5000', LOCAL_EBS_REQUEST_TIMEOUT_MS: '1000' }),
      /longer than the request timeout/,
    );
  });

  it('the CLI refuses a bad LOCAL_EBS_* value with one line and a non-zero exit', async function () {
    this.timeout(15_000);
    const result = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn(
        process.execPath,
        [CLI_PATH, 'local-ebs', '--port', '0', '--data', '/nonexistent-never-created', '--access-key-id', 'a', '--secret-access-key', 'b'],
        {
          cwd: REPO_ROOT,
          env: { ...process.env, LOCAL_EBS_HEADERS_TIMEOUT_MS: 'soon' },
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      );
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      child.on('exit', (code) => {
        clearTimeout(timer);
        resolve({ code, stdout, stderr });
      });
    });
    assert.notEqual(result.code, 0);
    assert.equal(result.stdout, '');
    assert.equal(result.stderr.trimEnd().split('\n').length, 1, result.stderr);
    assert.match(result.stderr, /invalid LOCAL_EBS_HEADERS_TIMEOUT_MS=soon/);
  });
});
