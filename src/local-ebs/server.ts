// local-ebs: the EBS direct API server. This file is the HTTP layer: routing, body
// limits, connection limits and timeouts, answers to malformed HTTP, SigV4, faults,
// stats, the admin routes and the data-directory lock. What the operations mean is
// in service.ts; how blocks reach the disk is in store.ts.
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { createHash, randomBytes, randomUUID, webcrypto } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { BLOCK_SIZE_BYTES } from '../ebs/client';
import { UserError } from '../errors';
import {
  EbsApiError,
  accessDenied,
  expiredToken,
  internalError,
  requestThrottled,
  requestTimeout,
  throttlingError,
  validationError,
  authError,
} from './errors';
import { resolveConnectionLimits, deadlineCheckIntervalMs, type ConnectionLimits } from './limits';
import { FaultInjector, FaultSpecError, parseFaultSpec, type OperationName } from './faults';
import { EbsService, LOCAL_OWNER_ID } from './service';
import { SigV4Verifier, UNSIGNED_PAYLOAD, percentDecode, type SignedRequest } from './sigv4';
import { SnapshotStore } from './store';
import { TokenSigner } from './tokens';
import { makeDirectories, writeFileAtomic } from '../durable-file';
import { acquireDataDir, removeOwnServerRecord, serverRecordFile, writeServerRecord } from './data-dir-record';
import {
  validateBlockIndexText,
  validateBlockToken,
  validateCompleteHeaders,
  validatePage,
  validatePutHeaders,
  validateSnapshotId,
  validateStartSnapshot,
  SNAPSHOT_ID_PATTERN,
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
  /** Timeouts and the connection cap; what is not given comes from LOCAL_EBS_* variables, then defaults (limits.ts). */
  limits?: Partial<ConnectionLimits>;
}

export interface LocalEbsStats {
  /** By operation name, e.g. PutSnapshotBlock. */
  requests: Record<string, number>;
  /** By HTTP status code. */
  responses: Record<string, number>;
  faultsInjected: Record<string, number>;
  connections: ConnectionStats;
}

export interface ConnectionStats {
  /** Connections open now (the one asking included). */
  open: number;
  /** EBS requests (not admin ones) being served now. */
  inflightRequests: number;
  /** Connections closed on accept because `maxConnections` were open. */
  refused: number;
  /** Requests whose headers or body did not arrive within the timeouts (answered 408 or dropped). */
  timedOut: number;
  /** Requests that were not valid HTTP/1.1 (answered 400), and connections dropped for pipelining too deep. */
  malformed: number;
}

export interface RunningLocalEbs {
  /** http://HOST:PORT */
  endpoint: string;
  host: string;
  port: number;
  /** The timeouts and connection cap in force. */
  limits: ConnectionLimits;
  stats(): LocalEbsStats;
  setFaults(spec: string): void;
  /** Moves a pending snapshot to `error` now, as its idle Timeout would. */
  expireSnapshot(snapshotId: string): Promise<void>;
  close(): Promise<void>;
}

export const DEFAULT_HOST = '127.0.0.1';
const TOKEN_KEY_FILE = 'token-key';
/** StartSnapshot's body (50 tags, a 2048-character ARN) fits in far less. */
const JSON_BODY_MAX_BYTES = 64 * 1024;
const ADMIN_BODY_MAX_BYTES = 4 * 1024;
const CLOSE_GRACE_MS = 5_000;
/** The SDKs send about 2 KiB of headers; 16 KiB (Node's default, made explicit) is ample. */
const HEADER_MAX_BYTES = 16 * 1024;
/**
 * Requests a connection may have unanswered at once. Node hands every pipelined request
 * to the handler as soon as it is parsed, so without this one connection could start
 * any number of them; no SDK pipelines at all.
 */
const UNANSWERED_PER_CONNECTION_MAX = 16;
/** PUT bodies held at once (256 x 512 KiB = 128 MiB); more PUTs wait, unread, for a buffer. */
const PUT_BODIES_IN_MEMORY_MAX = 256;
/**
 * After refusing a request whose body is still coming, the connection is half-closed
 * and what the client sends is read and dropped for this long (at most
 * LINGER_MAX_BYTES) before it is closed. Closing at once, with the client's bytes
 * unread, makes the kernel answer with a reset, which can destroy the refusal before
 * the client has read it.
 */
const LINGER_MS = 1_000;
const LINGER_MAX_BYTES = 4 * 1024 * 1024;

type AdminRoute = 'AdminStats' | 'AdminFaults' | 'AdminExpire';

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

function errorBody(error: EbsApiError): Record<string, string> {
  const body: Record<string, string> = { Message: error.message };
  if (error.reason !== undefined) body.Reason = error.reason;
  return body;
}

function errorReply(error: EbsApiError): Reply {
  return jsonReply(error.httpStatus, errorBody(error), { 'x-amzn-ErrorType': error.code });
}

/**
 * A whole HTTP response as bytes, written straight to the connection: for a request
 * Node could not parse, and for a refusal that closes the connection (see `refuse`).
 */
function rawResponse(reply: Reply, requestId: string, withBody = true): Buffer {
  const head = [`HTTP/1.1 ${reply.status} ${http.STATUS_CODES[reply.status] ?? 'Error'}`];
  for (const [name, value] of Object.entries(reply.headers)) head.push(`${name}: ${value}`);
  head.push(`x-amzn-RequestId: ${requestId}`, `Content-Length: ${reply.body.length}`, 'Connection: close', '', '');
  return Buffer.concat([Buffer.from(head.join('\r\n'), 'latin1'), withBody ? reply.body : Buffer.alloc(0)]);
}

function isAdminRoute(operation: OperationName | AdminRoute): operation is AdminRoute {
  return operation === 'AdminStats' || operation === 'AdminFaults' || operation === 'AdminExpire';
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
  if ((match = /^\/_local-ebs\/snapshots\/([^/]+)\/expire$/.exec(rawPath)) && method === 'POST') {
    return { operation: 'AdminExpire', labels: [match[1]] };
  }
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

function increment(counter: Record<string, number>, key: string): void {
  counter[key] = (counter[key] ?? 0) + 1;
}

/** The body, read up to a cap; `digest` is set for PUT bodies, hashed once. */
interface Body {
  data: Buffer;
  digest?: Buffer;
}

class BodyTooLarge extends Error {}

/**
 * Block-sized buffers for PUT bodies: at most `maxOutstanding` in use, so that PUTs
 * on many connections cannot hold unbounded memory; a PUT beyond that waits for one,
 * its body left unread (TCP pushes back on the client). Freed buffers are reused: a
 * fresh 512 KiB buffer per PUT is external memory V8 must account and collect, and
 * at hundreds of PUTs per second that garbage collection is a large share of the
 * event loop's time.
 */
class BlockBuffers {
  private readonly free: Buffer[] = [];
  private readonly waiting: Array<(buffer: Buffer) => void> = [];
  private outstanding = 0;

  constructor(
    private readonly maxOutstanding: number,
    private readonly maxPooled: number,
  ) {}

  acquire(): Promise<Buffer> {
    if (this.outstanding < this.maxOutstanding) {
      this.outstanding++;
      return Promise.resolve(this.free.pop() ?? Buffer.allocUnsafe(BLOCK_SIZE_BYTES));
    }
    // Bounded by the connections times UNANSWERED_PER_CONNECTION_MAX.
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  /** Only once nothing reads or writes the buffer any more. */
  release(buffer: Buffer): void {
    const next = this.waiting.shift();
    if (next) {
      next(buffer);
      return;
    }
    this.outstanding--;
    if (this.free.length < this.maxPooled) this.free.push(buffer);
  }
}

/** 128 × 512 KiB: enough for every PUT of 64 busy clients twice over. */
const POOLED_BLOCK_BUFFERS_MAX = 128;

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
      resolve({ data: length === buffer.length ? buffer : buffer.subarray(0, length) });
    });
    request.once('error', (error) => fail(error));
    request.once('aborted', () => fail(new Error('request aborted')));
    // A connection that went away before the body ended (also while this request
    // waited for a buffer) must not leave the handler waiting for ever.
    request.once('close', () => fail(new Error('request closed before its body ended')));
    if (request.destroyed) fail(new Error('request closed before its body was read'));
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
  const limits = resolveConnectionLimits(options.limits);
  const dataDir = path.resolve(options.dataDir);
  const serverFile = serverRecordFile(dataDir);

  try {
    await makeDirectories(dataDir);
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
  const stats: LocalEbsStats = {
    requests: {},
    responses: {},
    faultsInjected: {},
    connections: { open: 0, inflightRequests: 0, refused: 0, timedOut: 0, malformed: 0 },
  };
  const blockBuffers = new BlockBuffers(PUT_BODIES_IN_MEMORY_MAX, POOLED_BLOCK_BUFFERS_MAX);
  const sockets = new Set<Socket>();
  /** The answers each connection owes, in order; bounded by UNANSWERED_PER_CONNECTION_MAX. */
  const unanswered = new WeakMap<Duplex, Set<http.ServerResponse>>();
  /** Connections already answered after a parse error or timeout: the next error only closes them. */
  const failedConnections = new WeakSet<Duplex>();

  const handle = async (request: http.IncomingMessage, response: http.ServerResponse, expectsContinue: boolean): Promise<void> => {
    const socket = request.socket;
    // Pipelined requests parsed from a chunk that arrived before the connection was dropped.
    if (socket.destroyed) return;
    let owed = unanswered.get(socket);
    if (!owed) unanswered.set(socket, (owed = new Set()));
    if (owed.size >= UNANSWERED_PER_CONNECTION_MAX) {
      stats.connections.malformed++;
      socket.destroy();
      return;
    }
    owed.add(response);
    response.once('close', () => owed.delete(response));
    // A request that arrived behind a refusal, while that connection lingers: it is not served.
    if (failedConnections.has(socket)) return;

    const url = request.url ?? '';
    const question = url.indexOf('?');
    const rawPath = question < 0 ? url : url.slice(0, question);
    const method = request.method ?? '';
    const matched = route(method, rawPath);
    const isAdmin = matched !== undefined && isAdminRoute(matched.operation);
    if (!isAdmin) stats.connections.inflightRequests++;
    try {
      await handleRequest(
        request,
        response,
        expectsContinue,
        matched,
        isAdmin,
        method,
        rawPath,
        question < 0 ? '' : url.slice(question + 1),
      );
    } finally {
      if (!isAdmin) stats.connections.inflightRequests--;
    }
  };

  const handleRequest = async (
    request: http.IncomingMessage,
    response: http.ServerResponse,
    expectsContinue: boolean,
    matched: Route | undefined,
    isAdmin: boolean,
    method: string,
    rawPath: string,
    rawQuery: string,
  ): Promise<void> => {
    const requestId = randomUUID();
    if (!isAdmin) increment(stats.requests, matched?.operation ?? 'Unknown');

    const send = (reply: Reply, closeConnection = false): void => {
      if (!isAdmin) increment(stats.responses, String(reply.status));
      if (response.headersSent || response.destroyed) return;
      const headers: Record<string, string | number> = {
        ...reply.headers,
        'x-amzn-RequestId': requestId,
        'Content-Length': reply.body.length,
      };
      if (closeConnection) headers.Connection = 'close';
      response.writeHead(reply.status, headers);
      response.end(reply.body);
    };

    /** Answers and closes the connection without reading the rest of the body (see LINGER_MS). */
    const refuse = (reply: Reply): void => {
      const socket = request.socket;
      const bodyComing = request.headers['transfer-encoding'] !== undefined || Number(request.headers['content-length'] ?? 0) > 0;
      if (!bodyComing || request.complete) {
        send(reply, true);
        return;
      }
      if (!isAdmin) increment(stats.responses, String(reply.status));
      if (response.headersSent || !socket.writable || (unanswered.get(socket)?.size ?? 0) > 1) {
        // An earlier answer on this connection is still due: there is no room for this one.
        socket.destroy();
        return;
      }
      failedConnections.add(socket);
      socket.end(rawResponse(reply, requestId, method !== 'HEAD'));
      const timer = setTimeout(() => socket.destroy(), LINGER_MS);
      socket.once('close', () => clearTimeout(timer));
      let droppedBytes = 0;
      request.on('data', (chunk: Buffer) => {
        droppedBytes += chunk.length;
        if (droppedBytes > LINGER_MAX_BYTES) socket.destroy();
      });
      request.resume();
    };

    if (!matched) {
      // What AWS's service framework answers when no operation claims a request
      // (smithy-lang/smithy#1368), for an unknown path and a known path with another
      // method alike. The body is not read: the connection closes after the answer.
      refuse(errorReply(new EbsApiError('UnknownOperationException', 404, `No operation matches ${method} ${rawPath.slice(0, 200)}.`)));
      return;
    }
    const operation = matched.operation;
    const capBytes = operation === 'PutSnapshotBlock' ? BLOCK_SIZE_BYTES : isAdmin ? ADMIN_BODY_MAX_BYTES : JSON_BODY_MAX_BYTES;
    const declaredLength = request.headers['content-length'];
    if (declaredLength !== undefined && !(Number(declaredLength) <= capBytes)) {
      // Refused before a byte of the body is read (and without a 100 Continue).
      refuse(errorReply(tooLarge(operation, capBytes)));
      return;
    }
    if (expectsContinue) response.writeContinue();

    const pooled = operation === 'PutSnapshotBlock' ? await blockBuffers.acquire() : undefined;
    try {
      await serve(request, matched, operation, capBytes, pooled, send, refuse, requestId, rawPath, rawQuery, method);
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
    refuse: (reply: Reply) => void,
    requestId: string,
    rawPath: string,
    rawQuery: string,
    method: string,
  ): Promise<void> => {
    const arrivedAtMs = performance.now();
    // A latency fault sets when the answer is due: the request's work (body, hash,
    // store) runs at once and counts toward the delay, as a service's own work counts
    // toward its latency, and the wait holds no body buffer, so it limits no concurrency.
    let answerNotBeforeMs: number | undefined;
    const whenDue = (act: () => void): void => {
      const waitMs = answerNotBeforeMs === undefined ? 0 : answerNotBeforeMs - performance.now();
      if (waitMs <= 0) act();
      else setTimeout(act, waitMs).unref();
    };
    const answer = (reply: Reply): void => whenDue(() => send(reply));
    let body: Body;
    try {
      body = await readBody(request, capBytes, pooled);
      if (operation === 'PutSnapshotBlock') {
        // WebCrypto hashes on the libuv thread pool: half a megabyte of SHA-256 per PUT
        // stays off the event loop and can use another core. Each body is hashed once.
        body.digest = Buffer.from(await webcrypto.subtle.digest('SHA-256', body.data));
      }
    } catch (error) {
      if (error instanceof BodyTooLarge) refuse(errorReply(tooLarge(operation, capBytes)));
      else request.socket.destroy();
      return;
    }

    try {
      const headers = headerMap(request);
      const claimedHash = headers.get('x-amz-content-sha256');
      const bodyHashHex = (): string => (body.digest ?? createHash('sha256').update(body.data).digest()).toString('hex');
      const signed: SignedRequest = { method, rawPath, rawQuery, headers };
      const verified = verifier.verify(signed, claimedHash ?? bodyHashHex(), Date.now());
      if (claimedHash !== undefined && claimedHash !== UNSIGNED_PAYLOAD && claimedHash.toLowerCase() !== bodyHashHex()) {
        throw authError('InvalidSignatureException', 'The provided x-amz-content-sha256 header does not match what was computed.');
      }

      if (operation === 'AdminStats') {
        answer(jsonReply(200, snapshotStats(stats, sockets.size)));
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
        answer(jsonReply(200, { faults: spec }));
        return;
      }
      if (operation === 'AdminExpire') {
        const snapshotId = validateSnapshotId(decodeLabel(matched.labels[0]));
        answer(jsonReply(200, { SnapshotId: snapshotId, Status: await service.expireSnapshot(snapshotId) }));
        return;
      }

      const faults = injector;
      if (faults.active) {
        const delayMs = faults.latencyMs(operation);
        if (delayMs !== undefined) {
          increment(stats.faultsInjected, 'latency');
          if (delayMs > 0) answerNotBeforeMs = arrivedAtMs + delayMs;
        }
        const fault = faults.draw(operation);
        if (fault === 'deny') {
          increment(stats.faultsInjected, 'deny');
          const label = matched.labels.length > 0 ? percentDecode(matched.labels[0]) : undefined;
          const resource = label !== undefined && SNAPSHOT_ID_PATTERN.test(label) ? label : '*';
          throw accessDenied(operation, verified.region.slice(0, 64), LOCAL_OWNER_ID, resource);
        }
        if (fault === 'expired') {
          increment(stats.faultsInjected, 'expired');
          throw expiredToken();
        }
        if (fault === 'reset') {
          increment(stats.faultsInjected, 'reset');
          whenDue(() => request.socket.destroy());
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
          answer(jsonReply(201, await service.startSnapshot(validateStartSnapshot(parsed))));
          return;
        }
        case 'PutSnapshotBlock': {
          const snapshotId = validateSnapshotId(decodeLabel(matched.labels[0]));
          const blockIndex = validateBlockIndexText(decodeLabel(matched.labels[1]));
          if (faults.overRate(snapshotId)) {
            increment(stats.faultsInjected, 'rate');
            throw requestThrottled(
              'RESOURCE_LEVEL_THROTTLE',
              `The request was throttled: more than ${faults.spec.putsPerSecondPerSnapshot} PutSnapshotBlock requests per second for snapshot '${snapshotId}'.`,
            );
          }
          const putHeaders = validatePutHeaders(header);
          await service.checkPutTarget(snapshotId, blockIndex);
          if (body.data.length !== putHeaders.dataLengthBytes) {
            // AWS's words for a body shorter or longer than DataLength.
            throw validationError('INVALID_PARAMETER_VALUE', 'Failed to read block data');
          }
          const digest = body.digest!;
          if (digest.toString('base64') !== putHeaders.checksumBase64) {
            throw validationError('INVALID_PARAMETER_VALUE', 'The x-amz-Checksum does not match the SHA-256 of the block data.');
          }
          await service.putSnapshotBlock(snapshotId, blockIndex, digest, body.data);
          answer(jsonReply(201, {}, { 'x-amz-Checksum': putHeaders.checksumBase64, 'x-amz-Checksum-Algorithm': 'SHA256' }));
          return;
        }
        case 'CompleteSnapshot': {
          const snapshotId = validateSnapshotId(decodeLabel(matched.labels[0]));
          const input = validateCompleteHeaders(header);
          answer(jsonReply(202, { Status: await service.completeSnapshot(snapshotId, input) }));
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
          answer({
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
          answer(jsonReply(200, await service.listSnapshotBlocks(snapshotId, validatePage(query))));
          return;
        }
        case 'ListChangedBlocks': {
          const secondId = validateSnapshotId(decodeLabel(matched.labels[0]), 'SecondSnapshotId');
          const firstText = query.get('firstSnapshotId');
          const firstId = firstText === undefined ? undefined : validateSnapshotId(firstText, 'FirstSnapshotId');
          answer(jsonReply(200, await service.listChangedBlocks(secondId, firstId, validatePage(query))));
          return;
        }
      }
    } catch (error) {
      if (error instanceof EbsApiError) {
        answer(errorReply(error));
      } else {
        log(
          `local-ebs: ${operation} request ${requestId} failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`,
        );
        answer(errorReply(internalError()));
      }
    }
  };

  const onRequest =
    (expectsContinue: boolean) =>
    (request: http.IncomingMessage, response: http.ServerResponse): void => {
      handle(request, response, expectsContinue).catch((error: unknown) => {
        log(`local-ebs: unexpected failure: ${String(error)}`);
        if (!response.headersSent && !response.destroyed) {
          response.writeHead(500, {
            'Content-Type': 'application/json',
            'x-amzn-ErrorType': 'InternalServerException',
            Connection: 'close',
          });
          response.end(JSON.stringify({ Message: 'An internal error occurred. Try again later.' }));
        } else {
          response.destroy();
        }
      });
    };
  const server = http.createServer(
    {
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      keepAliveTimeout: limits.keepAliveTimeoutMs,
      connectionsCheckingInterval: deadlineCheckIntervalMs(limits),
      maxHeaderSize: HEADER_MAX_BYTES,
      // Node would answer a missing Host with an empty 400 of its own; here it reaches
      // SigV4, which needs a signed Host, and gets a modeled 403.
      requireHostHeader: false,
    },
    onRequest(false),
  );
  // The SDKs send `Expect: 100-continue` on none of these calls, but a client that does
  // gets its refusal (a body over the cap, an unknown route) before sending the body.
  server.on('checkContinue', onRequest(true));
  // Other expectations are ignored (RFC 9110 allows it) rather than refused with Node's bare 417.
  server.on('checkExpectation', onRequest(false));
  server.setTimeout(limits.idleTimeoutMs);
  server.maxConnections = limits.maxConnections;
  server.on('drop', () => stats.connections.refused++);
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  // Requests Node could not parse, and requests that overran headersTimeout or
  // requestTimeout: a modeled JSON error instead of Node's bare one, then the
  // connection is closed. Nothing is written into an answer already under way.
  server.on('clientError', (error: NodeJS.ErrnoException, socket: Duplex) => {
    const code = error.code ?? '';
    const timedOut = code === 'ERR_HTTP_REQUEST_TIMEOUT';
    const malformed = code.startsWith('HPE_');
    if (timedOut) stats.connections.timedOut++;
    else if (malformed) stats.connections.malformed++;
    const answering = [...(unanswered.get(socket) ?? [])].some((response) => response.headersSent);
    if ((!timedOut && !malformed) || failedConnections.has(socket) || !socket.writable || answering) {
      socket.destroy();
      return;
    }
    failedConnections.add(socket);
    let answer: EbsApiError;
    if (timedOut) {
      answer = requestTimeout(
        `The request did not arrive in time: its headers are allowed ${limits.headersTimeoutMs} ms and the whole request ${limits.requestTimeoutMs} ms.`,
      );
    } else if (code === 'HPE_HEADER_OVERFLOW') {
      answer = validationError('INVALID_PARAMETER_VALUE', `The request line and headers are larger than ${HEADER_MAX_BYTES} bytes.`);
    } else {
      // llhttp's words for what it could not parse, e.g. "Invalid header value char".
      const parserReason: unknown = (error as { reason?: unknown }).reason;
      const reason = typeof parserReason === 'string' ? `: ${parserReason.slice(0, 100)}` : '';
      answer = validationError('INVALID_PARAMETER_VALUE', `The request is not valid HTTP/1.1 (${code}${reason}).`);
    }
    increment(stats.responses, String(answer.httpStatus));
    // As Node does it: the answer goes out in one write, then the connection is closed.
    socket.write(rawResponse(errorReply(answer), randomUUID()));
    socket.destroy();
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
    await writeServerRecord(serverFile, {
      pid: process.pid,
      endpoint,
      accessKeyId: options.accessKeyId,
      secretAccessKey: options.secretAccessKey,
    });
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
      await removeOwnServerRecord(serverFile);
    })();
    return closing;
  };

  return {
    endpoint,
    host: address.address,
    port: address.port,
    limits,
    stats: () => snapshotStats(stats, sockets.size),
    setFaults: (spec: string) => {
      try {
        injector = new FaultInjector(parseFaultSpec(spec));
      } catch (error) {
        if (error instanceof FaultSpecError) throw new UserError(error.message);
        throw error;
      }
    },
    expireSnapshot: async (snapshotId: string) => {
      await service.expireSnapshot(snapshotId);
    },
    close,
  };
}

function snapshotStats(stats: LocalEbsStats, openConnections: number): LocalEbsStats {
  return {
    requests: { ...stats.requests },
    responses: { ...stats.responses },
    faultsInjected: { ...stats.faultsInjected },
    connections: { ...stats.connections, open: openConnections },
  };
}

function tooLarge(operation: OperationName | AdminRoute, capBytes: number): EbsApiError {
  if (operation === 'PutSnapshotBlock') {
    return validationError('INVALID_PARAMETER_VALUE', `The block data is larger than DataLength: a block is ${BLOCK_SIZE_BYTES} bytes.`);
  }
  return validationError('INVALID_PARAMETER_VALUE', `The request body is larger than ${capBytes} bytes.`);
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
