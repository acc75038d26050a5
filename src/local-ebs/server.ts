// local-ebs: the EBS direct API server. This file is the HTTP layer: routing, body
// limits, SigV4, faults, stats, the admin routes and the data-directory lock. What
// the operations mean is in service.ts; how blocks reach the disk is in store.ts.
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { createHash, randomBytes, randomUUID, webcrypto } from 'node:crypto';
import { promises as fsp, readFileSync } from 'node:fs';
import path from 'node:path';
import { BLOCK_SIZE_BYTES } from '../ebs/client';
import { UserError } from '../errors';
import { EbsApiError, internalError, requestThrottled, throttlingError, validationError, authError } from './errors';
import { FaultInjector, FaultSpecError, parseFaultSpec, type OperationName } from './faults';
import { EbsService } from './service';
import { SigV4Verifier, UNSIGNED_PAYLOAD, percentDecode, type SignedRequest } from './sigv4';
import { SnapshotStore } from './store';
import { TokenSigner } from './tokens';
import { writeFileAtomic } from './durable-fs';
import {
  validateBlockIndexText,
  validateBlockToken,
  validateCompleteHeaders,
  validatePage,
  validatePutHeaders,
  validateSnapshotId,
  validateStartSnapshot,
} from './validation';

export interface LocalEbsOptions {
  dataDir: string;
  /** Default 127.0.0.1. */
  host?: string;
  /** 0 = a free port. */
  port?: number;
  accessKeyId: string;
  secretAccessKey: string;
  /** A --faults SPEC (faults.ts). */
  faults?: string;
  log?: (line: string) => void;
  /** The clock of snapshot lifecycles (idle Timeout) and token expiry, in epoch ms; tests move it. */
  now?: () => number;
}

export interface LocalEbsStats {
  /** By operation name, e.g. PutSnapshotBlock. */
  requests: Record<string, number>;
  /** By HTTP status code. */
  responses: Record<string, number>;
  faultsInjected: Record<string, number>;
}

export interface RunningLocalEbs {
  /** http://HOST:PORT */
  endpoint: string;
  host: string;
  port: number;
  stats(): LocalEbsStats;
  setFaults(spec: string): void;
  close(): Promise<void>;
}

export interface RunningLocalEbsRecord {
  pid: number;
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
}

export const DEFAULT_HOST = '127.0.0.1';
const SERVER_FILE = 'server.json';
const TOKEN_KEY_FILE = 'token-key';
/** StartSnapshot's body (50 tags, a 2048-character ARN) fits in far less. */
const MAX_JSON_BODY_BYTES = 64 * 1024;
const MAX_ADMIN_BODY_BYTES = 4 * 1024;
const CLOSE_GRACE_MS = 5_000;
const MAX_CONNECTIONS = 1024;

type AdminRoute = 'AdminStats' | 'AdminFaults';

interface Route {
  operation: OperationName | AdminRoute;
  labels: string[];
}

interface Reply {
  status: number;
  headers: Record<string, string | number>;
  body: Buffer;
}

function jsonReply(status: number, value: unknown, headers: Record<string, string> = {}): Reply {
  return { status, headers: { 'Content-Type': 'application/json', ...headers }, body: Buffer.from(JSON.stringify(value)) };
}

function errorReply(error: EbsApiError): Reply {
  const body: Record<string, string> = { Message: error.message };
  if (error.reason !== undefined) body.Reason = error.reason;
  return jsonReply(error.httpStatus, body, { 'x-amzn-ErrorType': error.code });
}

function route(method: string, rawPath: string): Route | undefined {
  let match: RegExpExecArray | null;
  if (rawPath === '/snapshots') return method === 'POST' ? { operation: 'StartSnapshot', labels: [] } : undefined;
  if ((match = /^\/snapshots\/completion\/([^/]+)$/.exec(rawPath)) && method === 'POST') {
    return { operation: 'CompleteSnapshot', labels: [match[1]] };
  }
  if ((match = /^\/snapshots\/([^/]+)\/blocks\/([^/]+)$/.exec(rawPath))) {
    if (method === 'PUT') return { operation: 'PutSnapshotBlock', labels: [match[1], match[2]] };
    if (method === 'GET') return { operation: 'GetSnapshotBlock', labels: [match[1], match[2]] };
    return undefined;
  }
  if ((match = /^\/snapshots\/([^/]+)\/blocks$/.exec(rawPath)) && method === 'GET') {
    return { operation: 'ListSnapshotBlocks', labels: [match[1]] };
  }
  if ((match = /^\/snapshots\/([^/]+)\/changedblocks$/.exec(rawPath)) && method === 'GET') {
    return { operation: 'ListChangedBlocks', labels: [match[1]] };
  }
  if (rawPath === '/_local-ebs/stats' && method === 'GET') return { operation: 'AdminStats', labels: [] };
  if (rawPath === '/_local-ebs/faults' && method === 'POST') return { operation: 'AdminFaults', labels: [] };
  return undefined;
}

function decodeLabel(raw: string): string {
  const decoded = percentDecode(raw);
  if (decoded === undefined) throw validationError('INVALID_PARAMETER_VALUE', 'The request path is not correctly percent-encoded.');
  return decoded;
}

function parseQuery(rawQuery: string): Map<string, string> {
  const query = new Map<string, string>();
  if (rawQuery === '') return query;
  for (const part of rawQuery.split('&')) {
    if (part === '') continue;
    const equals = part.indexOf('=');
    const key = percentDecode(equals < 0 ? part : part.slice(0, equals));
    const value = percentDecode(equals < 0 ? '' : part.slice(equals + 1));
    if (key === undefined || value === undefined) {
      throw validationError('INVALID_PARAMETER_VALUE', 'The query string is not correctly percent-encoded.');
    }
    // The first of a repeated parameter counts; all of them are in the signature.
    if (!query.has(key)) query.set(key, value);
  }
  return query;
}

function headerMap(request: http.IncomingMessage): Map<string, string> {
  const headers = new Map<string, string>();
  const raw = request.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i].toLowerCase();
    const previous = headers.get(name);
    headers.set(name, previous === undefined ? raw[i + 1] : `${previous},${raw[i + 1]}`);
  }
  return headers;
}

function isProcessAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function parseServerRecord(text: string): RunningLocalEbsRecord | undefined {
  try {
    const value = JSON.parse(text) as Partial<RunningLocalEbsRecord>;
    if (typeof value.pid !== 'number' || typeof value.endpoint !== 'string' || typeof value.accessKeyId !== 'string' || typeof value.secretAccessKey !== 'string') {
      return undefined;
    }
    return { pid: value.pid, endpoint: value.endpoint, accessKeyId: value.accessKeyId, secretAccessKey: value.secretAccessKey };
  } catch {
    return undefined;
  }
}

/**
 * The server that holds `dataDir`, so that an embedded client can attach to it;
 * undefined when none is recorded, or its process is gone.
 */
export function readRunningLocalEbs(dataDir: string): RunningLocalEbsRecord | undefined {
  let text: string;
  try {
    text = readFileSync(path.join(path.resolve(dataDir), SERVER_FILE), 'utf8');
  } catch {
    return undefined;
  }
  const record = parseServerRecord(text);
  if (!record || record.endpoint === '' || !isProcessAlive(record.pid)) return undefined;
  return record;
}

function increment(counter: Record<string, number>, key: string): void {
  counter[key] = (counter[key] ?? 0) + 1;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The body, read up to a cap; `digest` is set for PUT bodies, hashed once. */
interface Body {
  data: Buffer;
  digest?: Buffer;
}

class BodyTooLarge extends Error {}

/**
 * Reusable block-sized buffers for PUT bodies. A fresh 512 KiB buffer per PUT is
 * external memory V8 must account and collect; at hundreds of PUTs per second that
 * garbage collection is a large share of the event loop's time.
 */
class BlockBufferPool {
  private readonly free: Buffer[] = [];

  constructor(private readonly maxPooled: number) {}

  acquire(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafe(BLOCK_SIZE_BYTES);
  }

  /** Only once nothing reads or writes the buffer any more. */
  release(buffer: Buffer): void {
    if (buffer.length === BLOCK_SIZE_BYTES && this.free.length < this.maxPooled) this.free.push(buffer);
  }
}

/** 128 × 512 KiB: enough for every PUT of 64 busy clients twice over. */
const MAX_POOLED_BLOCK_BUFFERS = 128;

function readBody(request: http.IncomingMessage, capBytes: number, into?: Buffer): Promise<Body> {
  return new Promise((resolve, reject) => {
    const declared = request.headers['content-length'];
    const expected = declared === undefined ? undefined : Number(declared);
    let buffer = into ?? Buffer.allocUnsafe(expected !== undefined && expected <= capBytes ? expected : Math.min(capBytes, 64 * 1024));
    let length = 0;
    let settled = false;
    const fail = (error: Error): void => {
      if (settled) return;
      settled = true;
      request.removeListener('data', onData);
      request.pause();
      reject(error);
    };
    const onData = (chunk: Buffer): void => {
      if (settled) return;
      if (length + chunk.length > capBytes) {
        fail(new BodyTooLarge());
        return;
      }
      if (length + chunk.length > buffer.length) {
        const grown = Buffer.allocUnsafe(Math.min(capBytes, Math.max(buffer.length * 2, length + chunk.length)));
        buffer.copy(grown, 0, 0, length);
        buffer = grown;
      }
      chunk.copy(buffer, length);
      length += chunk.length;
    };
    request.on('data', onData);
    request.once('end', () => {
      if (settled) return;
      settled = true;
      resolve({ data: length === buffer.length ? buffer : buffer.subarray(0, length), });
    });
    request.once('error', (error) => fail(error));
    request.once('aborted', () => fail(new Error('request aborted')));
  });
}

export async function startLocalEbs(options: LocalEbsOptions): Promise<RunningLocalEbs> {
  const host = options.host ?? DEFAULT_HOST;
  const port = options.port ?? 0;
  const log = options.log ?? (() => undefined);
  const now = options.now ?? Date.now;
  if (!options.accessKeyId || !options.secretAccessKey) throw new UserError('local-ebs needs an access key ID and a secret access key');
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UserError(`invalid port ${port}: give a number from 0 to 65535`);
  let injector: FaultInjector;
  try {
    injector = new FaultInjector(parseFaultSpec(options.faults ?? ''));
  } catch (error) {
    if (error instanceof FaultSpecError) throw new UserError(error.message);
    throw error;
  }
  const dataDir = path.resolve(options.dataDir);
  const serverFile = path.join(dataDir, SERVER_FILE);

  try {
    await fsp.mkdir(dataDir, { recursive: true, mode: 0o700 });
  } catch (error) {
    throw new UserError(`cannot create the local-ebs data directory ${dataDir}: ${(error as Error).message}`);
  }
  await acquireDataDir(dataDir, serverFile);

  let store: SnapshotStore;
  let tokenKey: Buffer;
  try {
    store = await SnapshotStore.open(dataDir, log);
    tokenKey = await loadTokenKey(dataDir);
  } catch (error) {
    await fsp.rm(serverFile, { force: true }).catch(() => undefined);
    throw new UserError(`cannot use the local-ebs data directory ${dataDir}: ${(error as Error).message}`);
  }
  const service = new EbsService(store, new TokenSigner(tokenKey), now, log);
  const verifier = new SigV4Verifier({ accessKeyId: options.accessKeyId, secretAccessKey: options.secretAccessKey });
  const stats: LocalEbsStats = { requests: {}, responses: {}, faultsInjected: {} };
  const blockBuffers = new BlockBufferPool(MAX_POOLED_BLOCK_BUFFERS);
  const sockets = new Set<Socket>();

  const handle = async (request: http.IncomingMessage, response: http.ServerResponse): Promise<void> => {
    const requestId = randomUUID();
    const url = request.url ?? '';
    const question = url.indexOf('?');
    const rawPath = question < 0 ? url : url.slice(0, question);
    const rawQuery = question < 0 ? '' : url.slice(question + 1);
    const method = request.method ?? '';
    const matched = route(method, rawPath);
    const isAdmin = matched?.operation === 'AdminStats' || matched?.operation === 'AdminFaults';
    if (!isAdmin) increment(stats.requests, matched?.operation ?? 'Unknown');

    const send = (reply: Reply, closeConnection = false): void => {
      if (!isAdmin) increment(stats.responses, String(reply.status));
      if (response.headersSent || response.destroyed) return;
      const headers: Record<string, string | number> = { ...reply.headers, 'x-amzn-RequestId': requestId, 'Content-Length': reply.body.length };
      if (closeConnection) headers.Connection = 'close';
      response.writeHead(reply.status, headers);
      response.end(reply.body);
    };

    if (!matched) {
      // Drain what is small, so the client reads our answer rather than a broken pipe.
      send(errorReply(new EbsApiError('UnknownOperationException', 404, `No operation matches ${method} ${rawPath.slice(0, 200)}.`)), true);
      return;
    }
    const operation = matched.operation;
    const capBytes = operation === 'PutSnapshotBlock' ? BLOCK_SIZE_BYTES : isAdmin ? MAX_ADMIN_BODY_BYTES : MAX_JSON_BODY_BYTES;
    const declaredLength = request.headers['content-length'];
    if (declaredLength !== undefined && !(Number(declaredLength) <= capBytes)) {
      // Refused before a byte of the body is read.
      send(errorReply(tooLarge(operation, capBytes)), true);
      return;
    }

    const pooled = operation === 'PutSnapshotBlock' ? blockBuffers.acquire() : undefined;
    try {
      await serve(request, matched, operation, capBytes, pooled, send, requestId, rawPath, rawQuery, method);
    } finally {
      // Every use of the body (hash, store write) has finished by now.
      if (pooled) blockBuffers.release(pooled);
    }
  };

  const serve = async (
    request: http.IncomingMessage,
    matched: Route,
    operation: OperationName | AdminRoute,
    capBytes: number,
    pooled: Buffer | undefined,
    send: (reply: Reply, closeConnection?: boolean) => void,
    requestId: string,
    rawPath: string,
    rawQuery: string,
    method: string,
  ): Promise<void> => {
    let body: Body;
    try {
      body = await readBody(request, capBytes, pooled);
      if (operation === 'PutSnapshotBlock') {
        // WebCrypto hashes on the libuv thread pool: half a megabyte of SHA-256 per PUT
        // stays off the event loop and can use another core. Each body is hashed once.
        body.digest = Buffer.from(await webcrypto.subtle.digest('SHA-256', body.data));
      }
    } catch (error) {
      if (error instanceof BodyTooLarge) send(errorReply(tooLarge(operation, capBytes)), true);
      else request.socket.destroy();
      return;
    }

    try {
      const headers = headerMap(request);
      const claimedHash = headers.get('x-amz-content-sha256');
      const bodyHashHex = (): string => (body.digest ?? createHash('sha256').update(body.data).digest()).toString('hex');
      const signed: SignedRequest = { method, rawPath, rawQuery, headers };
      verifier.verify(signed, claimedHash ?? bodyHashHex(), Date.now());
      if (claimedHash !== undefined && claimedHash !== UNSIGNED_PAYLOAD && claimedHash.toLowerCase() !== bodyHashHex()) {
        throw authError('InvalidSignatureException', 'The provided x-amz-content-sha256 header does not match what was computed.');
      }

      if (operation === 'AdminStats') {
        send(jsonReply(200, snapshotStats(stats)));
        return;
      }
      if (operation === 'AdminFaults') {
        const spec = body.data.toString('utf8');
        try {
          injector = new FaultInjector(parseFaultSpec(spec));
        } catch (error) {
          if (error instanceof FaultSpecError) throw validationError('INVALID_PARAMETER_VALUE', error.message);
          throw error;
        }
        log(`local-ebs: faults set to "${spec}"`);
        send(jsonReply(200, { faults: spec }));
        return;
      }

      const faults = injector;
      if (faults.active) {
        const delayMs = faults.latencyMs(operation);
        if (delayMs !== undefined) {
          increment(stats.faultsInjected, 'latency');
          if (delayMs > 0) await sleep(delayMs);
        }
        const fault = faults.draw(operation);
        if (fault === 'reset') {
          increment(stats.faultsInjected, 'reset');
          request.socket.destroy();
          return;
        }
        if (fault === '500') {
          increment(stats.faultsInjected, '500');
          throw internalError();
        }
        if (fault === 'throttle') {
          increment(stats.faultsInjected, 'throttle');
          throw faults.nextThrottleIsAccountLevel()
            ? throttlingError()
            : requestThrottled('ACCOUNT_THROTTLED', 'The request was throttled: too many requests for this account.');
        }
      }

      const query = parseQuery(rawQuery);
      const header = (name: string): string | undefined => headers.get(name);
      switch (operation) {
        case 'StartSnapshot': {
          let parsed: unknown;
          try {
            parsed = body.data.length === 0 ? {} : JSON.parse(body.data.toString('utf8'));
          } catch {
            throw validationError('INVALID_PARAMETER_VALUE', 'The request body is not valid JSON.');
          }
          send(jsonReply(201, await service.startSnapshot(validateStartSnapshot(parsed))));
          return;
        }
        case 'PutSnapshotBlock': {
          const snapshotId = validateSnapshotId(decodeLabel(matched.labels[0]));
          const blockIndex = validateBlockIndexText(decodeLabel(matched.labels[1]));
          if (faults.overRate(snapshotId)) {
            increment(stats.faultsInjected, 'rate');
            throw requestThrottled('RESOURCE_LEVEL_THROTTLE', `The request was throttled: more than ${faults.spec.putsPerSecondPerSnapshot} PutSnapshotBlock requests per second for snapshot '${snapshotId}'.`);
          }
          const putHeaders = validatePutHeaders(header);
          await service.checkPutTarget(snapshotId, blockIndex);
          if (body.data.length !== putHeaders.dataLengthBytes) {
            // AWS's words for a body shorter or longer than DataLength (reference §3.2).
            throw validationError('INVALID_PARAMETER_VALUE', 'Failed to read block data');
          }
          const digest = body.digest!;
          if (digest.toString('base64') !== putHeaders.checksumBase64) {
            throw validationError('INVALID_PARAMETER_VALUE', 'The x-amz-Checksum does not match the SHA-256 of the block data.');
          }
          await service.putSnapshotBlock(snapshotId, blockIndex, digest, body.data);
          send(jsonReply(201, {}, { 'x-amz-Checksum': putHeaders.checksumBase64, 'x-amz-Checksum-Algorithm': 'SHA256' }));
          return;
        }
        case 'CompleteSnapshot': {
          const snapshotId = validateSnapshotId(decodeLabel(matched.labels[0]));
          const input = validateCompleteHeaders(header);
          send(jsonReply(202, { Status: await service.completeSnapshot(snapshotId, input) }));
          return;
        }
        case 'GetSnapshotBlock': {
          const snapshotId = validateSnapshotId(decodeLabel(matched.labels[0]));
          const blockIndex = validateBlockIndexText(decodeLabel(matched.labels[1]));
          const token = validateBlockToken(query.get('blockToken'));
          const block = await service.getSnapshotBlock(snapshotId, blockIndex, token);
          let data = block.data;
          if (faults.shouldCorrupt(operation)) {
            increment(stats.faultsInjected, 'corrupt');
            data = Buffer.from(data);
            data[0] ^= 0xff;
          }
          send({
            status: 200,
            headers: {
              'Content-Type': 'application/octet-stream',
              'x-amz-Data-Length': data.length,
              'x-amz-Checksum': block.digest.toString('base64'),
              'x-amz-Checksum-Algorithm': 'SHA256',
            },
            body: data,
          });
          return;
        }
        case 'ListSnapshotBlocks': {
          const snapshotId = validateSnapshotId(decodeLabel(matched.labels[0]));
          send(jsonReply(200, await service.listSnapshotBlocks(snapshotId, validatePage(query))));
          return;
        }
        case 'ListChangedBlocks': {
          const secondId = validateSnapshotId(decodeLabel(matched.labels[0]), 'SecondSnapshotId');
          const firstText = query.get('firstSnapshotId');
          const firstId = firstText === undefined ? undefined : validateSnapshotId(firstText, 'FirstSnapshotId');
          send(jsonReply(200, await service.listChangedBlocks(secondId, firstId, validatePage(query))));
          return;
        }
      }
    } catch (error) {
      if (error instanceof EbsApiError) {
        send(errorReply(error));
      } else {
        log(`local-ebs: ${operation} request ${requestId} failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
        send(errorReply(internalError()));
      }
    }
  };

  const server = http.createServer({ keepAliveTimeout: 10_000, requestTimeout: 120_000, headersTimeout: 30_000 }, (request, response) => {
    handle(request, response).catch((error: unknown) => {
      log(`local-ebs: unexpected failure: ${String(error)}`);
      if (!response.headersSent) {
        response.writeHead(500, { 'Content-Type': 'application/json', 'x-amzn-ErrorType': 'InternalServerException' });
        response.end(JSON.stringify({ Message: 'An internal error occurred. Try again later.' }));
      } else {
        response.destroy();
      }
    });
  });
  server.maxConnections = MAX_CONNECTIONS;
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });

  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.removeListener('error', reject);
        resolve();
      });
    });
  } catch (error) {
    service.close();
    await store.close();
    await fsp.rm(serverFile, { force: true }).catch(() => undefined);
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE') throw new UserError(`port ${port} on ${host} is in use: choose another with --port (0 picks a free one)`);
    throw new UserError(`cannot listen on ${host}:${port}: ${(error as Error).message}`);
  }
  server.on('error', (error) => log(`local-ebs: server error: ${error.message}`));
  const address = server.address() as AddressInfo;
  const urlHost = address.family === 'IPv6' || address.address.includes(':') ? `[${address.address}]` : address.address;
  const endpoint = `http://${urlHost}:${address.port}`;
  try {
    await writeFileAtomic(
      serverFile,
      JSON.stringify({ pid: process.pid, endpoint, accessKeyId: options.accessKeyId, secretAccessKey: options.secretAccessKey } satisfies RunningLocalEbsRecord),
      0o600,
    );
  } catch (error) {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    service.close();
    await store.close();
    await fsp.rm(serverFile, { force: true }).catch(() => undefined);
    throw new UserError(`cannot write ${serverFile}: ${(error as Error).message}`);
  }

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      const grace = setTimeout(() => {
        for (const socket of sockets) socket.destroy();
      }, CLOSE_GRACE_MS);
      await stopped;
      clearTimeout(grace);
      service.close();
      await store.close();
      const current = await fsp.readFile(serverFile, 'utf8').catch(() => '');
      if (parseServerRecord(current)?.pid === process.pid) await fsp.rm(serverFile, { force: true });
    })();
    return closing;
  };

  return {
    endpoint,
    host: address.address,
    port: address.port,
    stats: () => snapshotStats(stats),
    setFaults: (spec: string) => {
      try {
        injector = new FaultInjector(parseFaultSpec(spec));
      } catch (error) {
        if (error instanceof FaultSpecError) throw new UserError(error.message);
        throw error;
      }
    },
    close,
  };
}

function snapshotStats(stats: LocalEbsStats): LocalEbsStats {
  return { requests: { ...stats.requests }, responses: { ...stats.responses }, faultsInjected: { ...stats.faultsInjected } };
}

function tooLarge(operation: OperationName | AdminRoute, capBytes: number): EbsApiError {
  if (operation === 'PutSnapshotBlock') {
    return validationError('INVALID_PARAMETER_VALUE', `The block data is larger than DataLength: a block is ${BLOCK_SIZE_BYTES} bytes.`);
  }
  return validationError('INVALID_PARAMETER_VALUE', `The request body is larger than ${capBytes} bytes.`);
}

/** Takes the data directory for this process, or says which live server holds it. */
async function acquireDataDir(dataDir: string, serverFile: string): Promise<void> {
  // Two attempts: the second after removing the record of a server that is gone.
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await fsp.open(serverFile, 'wx', 0o600);
      await handle.writeFile(JSON.stringify({ pid: process.pid, endpoint: '', accessKeyId: '', secretAccessKey: '' }));
      await handle.close();
      return;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'EEXIST') throw new UserError(`cannot use the local-ebs data directory ${dataDir}: ${(error as Error).message}`);
    }
    const text = await fsp.readFile(serverFile, 'utf8').catch(() => '');
    const record = parseServerRecord(text);
    if (record && isProcessAlive(record.pid)) {
      throw new UserError(`local-ebs data directory ${dataDir} is in use by pid ${record.pid} at ${record.endpoint || '(starting)'}`);
    }
    await fsp.rm(serverFile, { force: true });
  }
  throw new UserError(`local-ebs data directory ${dataDir} is being taken by another process; try again`);
}

async function loadTokenKey(dataDir: string): Promise<Buffer> {
  const file = path.join(dataDir, TOKEN_KEY_FILE);
  try {
    const key = await fsp.readFile(file);
    if (key.length === 32) return key;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  const key = randomBytes(32);
  await writeFileAtomic(file, key, 0o600);
  return key;
}
