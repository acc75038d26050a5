// A signed HTTP request with every part under the test's control (raw query text,
// chunked bodies, lying Content-Length), for what the SDKs never send.
import http from 'node:http';
import { SignatureV4 } from '@smithy/signature-v4';
import { Sha256 } from '../../src/ebs/checksum';
import type { TestCredentials } from '../support/local-ebs-process';

export interface RawRequest {
  method: string;
  path: string;
  /** Signed as these decoded pairs... */
  query?: Record<string, string>;
  /** ...and sent as this text (default: the pairs RFC 3986-encoded). */
  rawQuery?: string;
  headers?: Record<string, string>;
  body?: Buffer;
  /** Sent with Transfer-Encoding: chunked instead of Content-Length. */
  chunks?: Buffer[];
  /** Announce this Content-Length and send no body. */
  announceLength?: number;
  /** Leave the Authorization header off. */
  unsigned?: boolean;
}

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  json(): Record<string, unknown>;
}

const RAW_TIMEOUT_MS = 15_000;

export async function rawRequest(endpoint: string, credentials: TestCredentials, request: RawRequest): Promise<RawResponse> {
  const url = new URL(endpoint);
  const headers: Record<string, string> = { host: url.host, ...request.headers };
  if (request.chunks) headers['transfer-encoding'] = 'chunked';
  else if (request.announceLength !== undefined) headers['content-length'] = String(request.announceLength);
  else headers['content-length'] = String(request.body?.length ?? 0);
  let sent = headers;
  if (!request.unsigned) {
    const signer = new SignatureV4({ credentials, region: 'us-east-1', service: 'ebs', sha256: Sha256 });
    const signed = await signer.sign({
      method: request.method,
      protocol: 'http:',
      hostname: url.hostname,
      port: Number(url.port),
      path: request.path,
      query: request.query ?? {},
      headers,
      body: request.body ?? (request.chunks ? undefined : Buffer.alloc(0)),
    });
    sent = signed.headers;
  }
  const escape = (s: string) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  const queryText =
    request.rawQuery ??
    Object.entries(request.query ?? {})
      .map(([k, v]) => `${escape(k)}=${escape(v)}`)
      .join('&');
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        method: request.method,
        host: url.hostname,
        port: url.port,
        path: queryText ? `${request.path}?${queryText}` : request.path,
        headers: sent,
        timeout: RAW_TIMEOUT_MS,
        agent: false,
      },
      (response) => {
        const parts: Buffer[] = [];
        response.on('data', (chunk: Buffer) => parts.push(chunk));
        response.on('end', () => {
          const body = Buffer.concat(parts);
          resolve({
            status: response.statusCode ?? 0,
            headers: response.headers,
            body,
            json: () => JSON.parse(body.toString('utf8')) as Record<string, unknown>,
          });
          req.destroy();
        });
        response.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('raw request timed out')));
    req.on('error', reject);
    if (request.chunks) {
      for (const chunk of request.chunks) req.write(chunk);
      req.end();
    } else if (request.announceLength !== undefined) {
      req.flushHeaders();
    } else {
      req.end(request.body ?? Buffer.alloc(0));
    }
  });
}
