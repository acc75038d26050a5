// local-ebs's HTTP pieces that know nothing of a running server: which operation
// a method and path name, query and header parsing, the answers (JSON, errors, a
// raw response for a connection being refused), reading a body up to its cap,
// and the pool of PUT body buffers.
import http from 'node:http';
import { BLOCK_SIZE_BYTES } from '../ebs/client';
import { EbsApiError, validationError } from './errors';
import type { OperationName } from './faults';
import { percentDecode } from './sigv4';

/** StartSnapshot's body (50 tags, a 2048-character ARN) fits in far less. */
export const JSON_BODY_MAX_BYTES = 64 * 1024;
export const ADMIN_BODY_MAX_BYTES = 4 * 1024;

export type AdminRoute = 'AdminStats' | 'AdminFaults' | 'AdminExpire';

export interface Route {
  operation: OperationName | AdminRoute;
  labels: string[];
}

export interface Reply {
  status: number;
  headers: Record<string, string | number>;
  body: Buffer;
}

export function jsonReply(status: number, value: unknown, headers: Record<string, string> = {}): Reply {
  return { status, headers: { 'Content-Type': 'application/json', ...headers }, body: Buffer.from(JSON.stringify(value)) };
}

function errorBody(error: EbsApiError): Record<string, string> {
  const body: Record<string, string> = { Message: error.message };
  if (error.reason !== undefined) body.Reason = error.reason;
  return body;
}

export function errorReply(error: EbsApiError): Reply {
  return jsonReply(error.httpStatus, errorBody(error), { 'x-amzn-ErrorType': error.code });
}

/**
 * A whole HTTP response as bytes, written straight to the connection: for a request
 * Node could not parse, and for a refusal that closes the connection (see `refuse`).
 */
export function rawResponse(reply: Reply, requestId: string, withBody = true): Buffer {
  const head = [`HTTP/1.1 ${reply.status} ${http.STATUS_CODES[reply.status] ?? 'Error'}`];
  for (const [name, value] of Object.entries(reply.headers)) head.push(`${name}: ${value}`);
  head.push(`x-amzn-RequestId: ${requestId}`, `Content-Length: ${reply.body.length}`, 'Connection: close', '', '');
  return Buffer.concat([Buffer.from(head.join('\r\n'), 'latin1'), withBody ? reply.body : Buffer.alloc(0)]);
}

export function isAdminRoute(operation: OperationName | AdminRoute): operation is AdminRoute {
  return operation === 'AdminStats' || operation === 'AdminFaults' || operation === 'AdminExpire';
}

export function route(method: string, rawPath: string): Route | undefined {
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

export function decodeLabel(raw: string): string {
  const decoded = percentDecode(raw);
  if (decoded === undefined) throw validationError('INVALID_PARAMETER_VALUE', 'The request path is not correctly percent-encoded.');
  return decoded;
}

export function parseQuery(rawQuery: string): Map<string, string> {
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

export function headerMap(request: http.IncomingMessage): Map<string, string> {
  const headers = new Map<string, string>();
  const raw = request.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i].toLowerCase();
    const previous = headers.get(name);
    headers.set(name, previous === undefined ? raw[i + 1] : `${previous},${raw[i + 1]}`);
  }
  return headers;
}

/** The body, read up to a cap; `digest` is set for PUT bodies, hashed once. */
export interface Body {
  data: Buffer;
  digest?: Buffer;
}

export class BodyTooLarge extends Error {}

/**
 * Block-sized buffers for PUT bodies: at most `maxOutstanding` in use, so that PUTs
 * on many connections cannot hold unbounded memory; a PUT beyond that waits for one,
 * its body left unread (TCP pushes back on the client). Freed buffers are reused: a
 * fresh 512 KiB buffer per PUT is external memory V8 must account and collect, and
 * at hundreds of PUTs per second that garbage collection is a large share of the
 * event loop's time.
 */
export class BlockBuffers {
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
export const POOLED_BLOCK_BUFFERS_MAX = 128;

export function readBody(request: http.IncomingMessage, capBytes: number, into?: Buffer): Promise<Body> {
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

export function tooLarge(operation: OperationName | AdminRoute, capBytes: number): EbsApiError {
  if (operation === 'PutSnapshotBlock') {
    return validationError('INVALID_PARAMETER_VALUE', `The block data is larger than DataLength: a block is ${BLOCK_SIZE_BYTES} bytes.`);
  }
  return validationError('INVALID_PARAMETER_VALUE', `The request body is larger than ${capBytes} bytes.`);
}
