// local-ebs: the EBS direct API server. This file runs it: the data directory at
// start-up, connection limits and timeouts, answers to malformed HTTP, each
// request from arrival to answer (body cap, SigV4, faults, admin routes), stats,
// and shutdown. The pieces it uses: http.ts (routing, replies, body reading),
// faults.ts (what a fault spec injects), operations.ts (what each operation does
// with a request), service.ts (what the operations mean), store.ts (how blocks
// reach the disk), data-dir-record.ts (who holds the data directory).
// It is longer than 400 lines because one closure over the server's state
// (sockets, counters, the fault injector) serves every request; split further,
// that state would have to be passed around instead.
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { createHash, randomBytes, randomUUID, webcrypto } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { BLOCK_SIZE_BYTES } from '../ebs/client';
import { describeError, UserError } from '../errors';
import { EbsApiError, internalError, requestTimeout, validationError, authError } from './errors';
import { resolveConnectionLimits, deadlineCheckIntervalMs, type ConnectionLimits } from './limits';
import { FaultInjector, FaultSpecError, type OperationName } from './faults';
import { EbsService, LOCAL_OWNER_ID } from './service';
import { SigV4Verifier, UNSIGNED_PAYLOAD, percentDecode, type SignedRequest } from './sigv4';
import { SnapshotStore } from './store';
import { TokenSigner } from './tokens';
import { makeDirectories, writeFileAtomic } from '../durable-file';
import { acquireDataDir, removeOwnServerRecord, serverRecordFile, writeServerRecord } from './data-dir-record';
import { SNAPSHOT_ID_PATTERN, validateSnapshotId } from './validation';
import {
  ADMIN_BODY_MAX_BYTES,
  BlockBuffers,
  BodyTooLarge,
  JSON_BODY_MAX_BYTES,
  POOLED_BLOCK_BUFFERS_MAX,
  decodeLabel,
  errorReply,
  headerMap,
  isAdminRoute,
  jsonReply,
  parseQuery,
  rawResponse,
  readBody,
  route,
  tooLarge,
  type AdminRoute,
  type Body,
  type Reply,
  type Route,
} from './http';
import { increment, runOperation } from './operations';

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
 * and what the client sends is read and dropped for this long before it is closed;
 * past LINGER_MAX_BYTES it is no longer read, so flow control holds the client back
 * until then. Closing at once, or at the byte bound, with the client's bytes unread,
 * makes the kernel answer with a reset, which can destroy the refusal before the
 * client has read it: a client descheduled for a few milliseconds lost it that way.
 */
const LINGER_MS = 1_000;
const LINGER_MAX_BYTES = 4 * 1024 * 1024;
/** What serving a request leaves: its answer, out now or at a latency fault's due time. */
interface Served {
  answered: Promise<void>;
}

/** A request as it arrives: routed, not yet read. */
interface IncomingRequest {
  request: http.IncomingMessage;
  response: http.ServerResponse;
  expectsContinue: boolean;
  matched: Route | undefined;
  isAdmin: boolean;
  method: string;
  rawPath: string;
  rawQuery: string;
}

/** A request being served: its route, body cap and buffer, and how to answer it. */
interface RequestContext extends IncomingRequest {
  matched: Route;
  operation: OperationName | AdminRoute;
  capBytes: number;
  /** The pooled block buffer of a PUT's body. */
  pooled: Buffer | undefined;
  send: (reply: Reply, closeConnection?: boolean) => void;
  /** Answers and closes the connection without reading the rest of the body. */
  refuse: (reply: Reply) => void;
  requestId: string;
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
    injector = FaultInjector.fromSpec(options.faults ?? '');
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
    throw new UserError(`cannot create the local-ebs data directory ${dataDir}: ${describeError(error)}`);
  }
  await acquireDataDir(dataDir, serverFile);

  let store: SnapshotStore;
  let tokenKey: Buffer;
  try {
    store = await SnapshotStore.open(dataDir, log);
    tokenKey = await loadTokenKey(dataDir);
  } catch (error) {
    await fsp.rm(serverFile, { force: true }).catch(() => undefined);
    throw new UserError(`cannot use the local-ebs data directory ${dataDir}: ${describeError(error)}`);
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
    // Counted until the answer is out, a delayed one included.
    if (!isAdmin) stats.connections.inflightRequests++;
    try {
      await handleRequest({
        request,
        response,
        expectsContinue,
        matched,
        isAdmin,
        method,
        rawPath,
        rawQuery: question < 0 ? '' : url.slice(question + 1),
      });
    } finally {
      if (!isAdmin) stats.connections.inflightRequests--;
    }
  };

  const handleRequest = async (incoming: IncomingRequest): Promise<void> => {
    const { request, response, expectsContinue, matched, isAdmin, method, rawPath } = incoming;
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
        if (droppedBytes > LINGER_MAX_BYTES) request.pause();
      });
      request.resume();
    };

    if (!matched) {
      // What AWS's service framework answers when no operation claims a request
      // (as its Smithy framework does), for an unknown path and a known path with another
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
    let served: Served;
    try {
      served = await serve({ ...incoming, matched, operation, capBytes, pooled, send, refuse, requestId });
    } finally {
      // Every use of the body (hash, store write) has finished by now.
      if (pooled) blockBuffers.release(pooled);
    }
    // A latency fault's answer goes out later, without the buffer.
    await served.answered;
  };

  /** Serves the request; resolves, once its work is done, with when its answer is out. */
  const serve = async (context: RequestContext): Promise<Served> => {
    const { request, matched, operation, capBytes, pooled, send, refuse, requestId, rawPath, rawQuery, method } = context;
    const arrivedAtMs = performance.now();
    // A latency fault sets when the answer is due: the request's work (body, hash,
    // store) runs at once and counts toward the delay, as a service's own work counts
    // toward its latency, and the wait holds no body buffer, so it limits no concurrency.
    let answerNotBeforeMs: number | undefined;
    let answered: Promise<void> = Promise.resolve();
    const whenDue = (act: () => void): void => {
      const waitMs = answerNotBeforeMs === undefined ? 0 : answerNotBeforeMs - performance.now();
      if (waitMs <= 0) {
        act();
        return;
      }
      answered = new Promise((resolve) => {
        setTimeout(() => {
          act();
          resolve();
        }, waitMs).unref();
      });
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
      return { answered };
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
        return { answered };
      }
      if (operation === 'AdminFaults') {
        const spec = body.data.toString('utf8');
        try {
          injector = FaultInjector.fromSpec(spec);
        } catch (error) {
          if (error instanceof FaultSpecError) throw validationError('INVALID_PARAMETER_VALUE', error.message);
          throw error;
        }
        log(`local-ebs: faults set to "${spec}"`);
        answer(jsonReply(200, { faults: spec }));
        return { answered };
      }
      if (operation === 'AdminExpire') {
        const snapshotId = validateSnapshotId(decodeLabel(matched.labels[0]));
        answer(jsonReply(200, { SnapshotId: snapshotId, Status: await service.expireSnapshot(snapshotId) }));
        return { answered };
      }

      const faults = injector;
      const label = matched.labels.length > 0 ? percentDecode(matched.labels[0]) : undefined;
      const decided = faults.forRequest(operation, {
        resource: label !== undefined && SNAPSHOT_ID_PATTERN.test(label) ? label : '*',
        region: verified.region,
        ownerId: LOCAL_OWNER_ID,
      });
      for (const kind of decided.injected) increment(stats.faultsInjected, kind);
      if (decided.delayMs !== undefined) answerNotBeforeMs = arrivedAtMs + decided.delayMs;
      if (decided.reset) {
        whenDue(() => request.socket.destroy());
        return { answered };
      }
      if (decided.error) throw decided.error;
      answer(await runOperation({ operation, labels: matched.labels, query: parseQuery(rawQuery), headers, body, service, faults, stats }));
    } catch (error) {
      if (error instanceof EbsApiError) {
        answer(errorReply(error));
      } else {
        log(`local-ebs: ${operation} request ${requestId} failed: ${describeError(error)}`);
        answer(errorReply(internalError()));
      }
    }
    return { answered };
  };

  const onRequest =
    (expectsContinue: boolean) =>
    (request: http.IncomingMessage, response: http.ServerResponse): void => {
      handle(request, response, expectsContinue).catch((error: unknown) => {
        log(`local-ebs: unexpected failure: ${describeError(error)}`);
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
    throw new UserError(`cannot listen on ${host}:${port}: ${describeError(error)}`);
  }
  server.on('error', (error) => log(`local-ebs: server error: ${describeError(error)}`));
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
    throw new UserError(`cannot write ${serverFile}: ${describeError(error)}`);
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
        injector = FaultInjector.fromSpec(spec);
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
