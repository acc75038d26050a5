// PutSnapshotBlock as one signed HTTP PUT of our own, beside the SDK.
//
// Why: the SDK's per-request JavaScript (its middleware stack, serializers and
// HTTP handler) cost 2.0–3.2 ms of CPU per PUT on the 2-core bench machine,
// against 0.6–1.0 ms for this request (docs/BENCHMARKS.md). In the mount that CPU
// is spent on the event loop that also answers FUSE writes, so dd waits behind it.
//
// What stays the SDK's: where a PUT goes (the origin the SDK resolved for an
// earlier call of this client), as whom (the SDK's resolved credential chain and
// region), and the clock offset it learned. The signature is @smithy/signature-v4's,
// the signer the SDK itself uses. A failure leaves here in the SDK's error shape
// (name, $fault, $metadata, Reason), so classify.ts reads both paths alike.
import http from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import { EBSServiceException } from '@aws-sdk/client-ebs';
import { SignatureV4 } from '@smithy/signature-v4';
import { Sha256 } from './checksum';
import type { PutBlockParams } from './client';

/** Where the SDK sent an earlier request: the scheme, host, port and any base path of the endpoint. */
export interface ResolvedOrigin {
  protocol: 'http:' | 'https:';
  /** Without brackets, also for IPv6. */
  hostname: string;
  port?: number;
  /** The endpoint's own path before /snapshots; '' for AWS's endpoints. */
  basePath: string;
}

/** The Host header's form: host[:port], an IPv6 address in brackets. */
export function hostOf(origin: ResolvedOrigin): string {
  const name = origin.hostname.includes(':') ? `[${origin.hostname}]` : origin.hostname;
  return origin.port === undefined ? name : `${name}:${origin.port}`;
}

export interface SignedPutOptions {
  /** The SDK client's resolved credential provider (config.credentials), which caches and refreshes. */
  credentials: () => Promise<{ accessKeyId: string; secretAccessKey: string; sessionToken?: string }>;
  region: () => Promise<string>;
  httpAgent: http.Agent;
  httpsAgent: https.Agent;
  connectionTimeoutMs: number;
  /** Milliseconds to add to the local clock when signing (the SDK's systemClockOffset). */
  clockOffsetMs: () => number;
}

/** What a 2xx answer carried that the caller checks. */
export interface PutAnswer {
  statusCode: number;
  checksumBase64?: string;
}

// An error body is JSON of a few hundred bytes; more is not worth reading.
const ERROR_BODY_MAX_BYTES = 64 * 1024;
const USER_AGENT = 'ebs-fuse (PutSnapshotBlock)';

export class SignedPut {
  private readonly signer: SignatureV4;

  constructor(private readonly options: SignedPutOptions) {
    this.signer = new SignatureV4({ credentials: options.credentials, region: options.region, service: 'ebs', sha256: Sha256 });
  }

  async put(origin: ResolvedOrigin, params: PutBlockParams, abortSignal: AbortSignal): Promise<PutAnswer> {
    const path = `${origin.basePath}/snapshots/${encodeURIComponent(params.snapshotId)}/blocks/${params.blockIndex}`;
    const host = hostOf(origin);
    const headers: Record<string, string> = {
      host,
      'content-type': 'application/octet-stream',
      'content-length': String(params.data.length),
      'x-amz-data-length': String(params.data.length),
      'x-amz-checksum': params.checksumBase64,
      'x-amz-checksum-algorithm': 'SHA256',
      // The block's SHA-256 is already known; the signer would hash 512 KiB again without it.
      'x-amz-content-sha256': Buffer.from(params.checksumBase64, 'base64').toString('hex'),
    };
    if (params.progressPercent !== undefined) headers['x-amz-progress'] = String(params.progressPercent);
    const signed = await this.signer.sign(
      { method: 'PUT', protocol: origin.protocol, hostname: origin.hostname, port: origin.port, path, query: {}, headers },
      { signingDate: new Date(Date.now() + this.options.clockOffsetMs()) },
    );
    abortSignal.throwIfAborted();
    return this.send(origin, path, { ...signed.headers, 'user-agent': USER_AGENT }, params.data, abortSignal);
  }

  private send(
    origin: ResolvedOrigin,
    path: string,
    headers: Record<string, string>,
    body: Buffer,
    abortSignal: AbortSignal,
  ): Promise<PutAnswer> {
    const transport = origin.protocol === 'https:' ? https : http;
    return new Promise<PutAnswer>((resolve, reject) => {
      let connectTimer: NodeJS.Timeout | undefined;
      const request = transport.request(
        {
          method: 'PUT',
          hostname: origin.hostname,
          port: origin.port,
          path,
          headers,
          agent: origin.protocol === 'https:' ? this.options.httpsAgent : this.options.httpAgent,
          signal: abortSignal,
        },
        (response) => {
          readLimitedBody(response, ERROR_BODY_MAX_BYTES, abortSignal).then((text) => {
            const statusCode = response.statusCode ?? 0;
            if (statusCode >= 200 && statusCode < 300) {
              const checksum = response.headers['x-amz-checksum'];
              resolve({ statusCode, ...(typeof checksum === 'string' ? { checksumBase64: checksum } : {}) });
            } else {
              reject(serviceError(statusCode, response.headers, text?.toString('utf8')));
            }
          }, reject);
        },
      );
      request.on('socket', (socket) => {
        if (!socket.connecting) return;
        connectTimer = setTimeout(() => {
          const error = new Error(`no connection within ${this.options.connectionTimeoutMs} ms`);
          error.name = 'TimeoutError';
          request.destroy(error);
        }, this.options.connectionTimeoutMs);
        socket.once('connect', () => clearTimeout(connectTimer));
      });
      request.on('close', () => clearTimeout(connectTimer));
      request.on('error', reject);
      request.end(body);
    });
  }
}

/**
 * The whole body, or undefined as soon as it exceeds limitBytes (the stream is
 * then destroyed rather than drained: the socket is not worth saving).
 */
export async function readLimitedBody(stream: Readable | undefined, limitBytes: number, signal: AbortSignal): Promise<Buffer | undefined> {
  if (!stream) return Buffer.alloc(0);
  const onAbort = (): void => {
    stream.destroy(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
  };
  if (signal.aborted) onAbort();
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    const chunks: Buffer[] = [];
    let total = 0;
    for await (const chunk of stream) {
      const buffer = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
      total += buffer.length;
      if (total > limitBytes) {
        stream.destroy();
        return undefined;
      }
      chunks.push(buffer);
    }
    return Buffer.concat(chunks, total);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}

/**
 * An error answer as the SDK's restJson1 deserializer would throw it: the name
 * from x-amzn-ErrorType (before any ':' or ',', after any '#'), else the body's
 * code or __type; the message from message or Message; Reason kept.
 */
export function serviceError(statusCode: number, headers: http.IncomingHttpHeaders, bodyText: string | undefined): EBSServiceException {
  let body: Record<string, unknown> = {};
  try {
    const parsed: unknown = bodyText ? JSON.parse(bodyText) : {};
    if (parsed !== null && typeof parsed === 'object') body = parsed as Record<string, unknown>;
  } catch {
    body = { message: bodyText };
  }
  const bodyCode = Object.entries(body).find(([key]) => key.toLowerCase() === 'code')?.[1] ?? body.__type;
  const headerType = headers['x-amzn-errortype'];
  const rawName = typeof headerType === 'string' ? headerType : typeof bodyCode === 'string' ? bodyCode : '';
  const name = rawName.split(/[:,]/)[0].split('#').pop()?.trim() || 'UnknownError';
  const message = body.message ?? body.Message;
  const requestId = headers['x-amzn-requestid'];
  const error = new EBSServiceException({
    name,
    $fault: statusCode >= 500 ? 'server' : 'client',
    $metadata: { httpStatusCode: statusCode, ...(typeof requestId === 'string' ? { requestId } : {}) },
    message: typeof message === 'string' ? message : `HTTP ${statusCode}`,
  });
  if (typeof body.Reason === 'string') Object.assign(error, { Reason: body.Reason });
  return error;
}
