// SnapshotClient on the AWS SDK (@aws-sdk/client-ebs). One attempt per call:
// retry.ts owns the retry policy, so the SDK runs with maxAttempts 1 and every
// failure leaves here as a SnapshotApiError whose kind says whether trying
// again can help, and whose message is one line a user can act on (classify.ts).
// Over 400 lines because each of the six operations maps its SDK input and output
// here, beside the per-attempt timer and the agents they all share.

import http from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import {
  CompleteSnapshotCommand,
  EBSClient,
  GetSnapshotBlockCommand,
  ListChangedBlocksCommand,
  ListSnapshotBlocksCommand,
  PutSnapshotBlockCommand,
  StartSnapshotCommand,
  type EBSClientConfig,
} from '@aws-sdk/client-ebs';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { sha256Base64 } from './checksum';
import {
  BLOCK_SIZE_BYTES,
  SnapshotApiError,
  type BlockPage,
  type ChangedBlockPage,
  type CompleteSnapshotParams,
  type ListPageParams,
  type PutBlockParams,
  type SnapshotClient,
  type SnapshotStatus,
  type StartSnapshotParams,
  type StartedSnapshot,
} from './client';
import { classifyEbsError, QUOTED_MESSAGE_MAX_CHARS } from './classify';
import { hostOf, readLimitedBody, SignedPut, type ResolvedOrigin } from './signed-put';
import type { SnapshotOperation } from './retry';

export interface AwsCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface AwsSnapshotClientOptions {
  /** Else the SDK's own resolution: AWS_REGION, the profile's region. */
  region?: string;
  /** Else the SDK's own resolution: AWS_ENDPOINT_URL_EBS, AWS_ENDPOINT_URL, the region's endpoint. */
  endpoint?: string;
  /** A profile of ~/.aws/config and ~/.aws/credentials, like AWS_PROFILE. */
  profile?: string;
  /** Else the SDK's default credential chain. */
  credentials?: AwsCredentials;
  /** Sockets per origin; match the upload concurrency so no PUT waits for a socket. */
  maxSockets?: number;
  connectionTimeoutMs?: number;
  /** One attempt, from sending the request to the last byte of the response. */
  requestTimeoutMs?: number;
  /**
   * For this long after this client started a snapshot, ResourceNotFound on
   * PutSnapshotBlock counts as transient: AWS can answer it for puts made just
   * after StartSnapshot (coldsnap retries it for about 130 s).
   */
  resourceNotFoundWindowMs?: number;
  nowMs?: () => number;
  /** Warnings of the HTTP layer (e.g. sockets exhausted), one line each. */
  log?: (line: string) => void;
  /**
   * A caller's SDK client to send through, as it is configured (its own retries
   * run beneath ebs-fuse's); it is left open by close(). The options above that
   * configure a client do not apply to it.
   */
  sdkClient?: EBSClient;
  /** SDK settings under this client's own (a credential provider, a custom user agent…). */
  sdkConfig?: EBSClientConfig;
  /**
   * Send PutSnapshotBlock through the SDK as well, instead of as this client's
   * own signed PUT (signed-put.ts). Always so for a caller's sdkClient or
   * requestHandler, whose transport is theirs to choose.
   */
  putThroughSdk?: boolean;
}

export const DEFAULT_MAX_SOCKETS = 64;
export const DEFAULT_CONNECTION_TIMEOUT_MS = 10_000;
// A 512 KiB PUT on a link shared by 64 of them at a few MB/s still fits well
// inside 30 s; a stalled connection (another uploader has hung on one) ends here
// instead of hanging forever.
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
export const DEFAULT_RESOURCE_NOT_FOUND_WINDOW_MS = 130_000;
// Started snapshots remembered for the ResourceNotFound window; a mount starts one.
const REMEMBERED_STARTS_MAX = 1000;

/** Why an attempt's AbortController fired. */
class AttemptAbort extends Error {
  constructor(
    readonly why: 'timeout' | 'closed',
    readonly afterMs: number,
  ) {
    super(why === 'timeout' ? `no complete response within ${afterMs} ms` : 'the snapshot client was closed');
    this.name = 'AttemptAbort';
  }
}

interface CallContext {
  operation: SnapshotOperation;
  snapshotId?: string;
  blockIndex?: number;
}

export class AwsSnapshotClient implements SnapshotClient {
  readonly sdk: EBSClient;
  private readonly requestTimeoutMs: number;
  private readonly resourceNotFoundWindowMs: number;
  private readonly nowMs: () => number;
  private readonly explicitEndpoint?: string;
  private readonly profile?: string;
  private readonly httpAgent: http.Agent;
  private readonly httpsAgent: https.Agent;
  private readonly inFlight = new Set<AbortController>();
  private readonly startedAtMs = new Map<string, number>();
  /** Where the SDK sent its last request; PutSnapshotBlock goes there too. */
  private origin?: ResolvedOrigin;
  private readonly signedPut?: SignedPut;
  private closed = false;
  private ownsSdk = true;

  constructor(options: AwsSnapshotClientOptions = {}) {
    const maxSockets = options.maxSockets ?? DEFAULT_MAX_SOCKETS;
    if (!Number.isInteger(maxSockets) || maxSockets < 1 || maxSockets > 1024) {
      throw new RangeError(`maxSockets must be an integer in 1..1024, got ${maxSockets}`);
    }
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.resourceNotFoundWindowMs = options.resourceNotFoundWindowMs ?? DEFAULT_RESOURCE_NOT_FOUND_WINDOW_MS;
    this.nowMs = options.nowMs ?? Date.now;
    this.explicitEndpoint = options.endpoint;
    this.profile = options.profile;
    // ebs-fuse supports Node 20 on purpose; the SDK's multi-line notice that
    // later SDK releases will not would land in every command's stderr.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    const agentOptions = { keepAlive: true, maxSockets, maxFreeSockets: maxSockets };
    this.httpAgent = new http.Agent(agentOptions);
    this.httpsAgent = new https.Agent(agentOptions);
    const config: EBSClientConfig = {
      ...options.sdkConfig,
      maxAttempts: options.sdkConfig?.maxAttempts ?? 1,
      requestHandler:
        options.sdkConfig?.requestHandler ??
        new NodeHttpHandler({
          httpAgent: this.httpAgent,
          httpsAgent: this.httpsAgent,
          connectionTimeout: options.connectionTimeoutMs ?? DEFAULT_CONNECTION_TIMEOUT_MS,
          // The handler's own timer covers only up to the response headers; the
          // per-attempt AbortController in call() also covers the body.
          requestTimeout: this.requestTimeoutMs,
          throwOnRequestTimeout: true,
          // Without a logger the handler warns on the console, over several lines.
          logger: httpLogger(options.log),
        }),
    };
    if (options.region !== undefined) config.region = options.region;
    if (options.endpoint !== undefined) config.endpoint = options.endpoint;
    if (options.profile !== undefined) config.profile = options.profile;
    if (options.credentials !== undefined) config.credentials = { ...options.credentials };
    if (options.sdkClient !== undefined) {
      // A caller's client is not changed: no middleware is added to it, so its signer hashes each body itself.
      this.sdk = options.sdkClient;
      this.ownsSdk = false;
      return;
    }
    this.sdk = new EBSClient(config);
    this.sdk.middlewareStack.add(
      (next) => async (args) => {
        const request = args.request as { protocol?: string; hostname?: string; port?: number; path?: string } | undefined;
        if (request?.hostname) {
          const path = request.path ?? '';
          const snapshots = path.lastIndexOf('/snapshots');
          this.origin = {
            protocol: request.protocol === 'http:' ? 'http:' : 'https:',
            hostname: request.hostname.replace(/^\[(.*)\]$/, '$1'),
            ...(request.port ? { port: request.port } : {}),
            basePath: snapshots > 0 ? path.slice(0, snapshots) : '',
          };
        }
        return next(args);
      },
      { step: 'finalizeRequest', name: 'ebsFuseRecordOrigin' },
    );
    // The signer hashes a Buffer body for x-amz-content-sha256 unless the header
    // is already set. The block's SHA-256 is its x-amz-Checksum, computed once by
    // the caller, so reuse it: one 512 KiB hash less per PUT.
    this.sdk.middlewareStack.add(
      (next, context) => async (args) => {
        const request = args.request as { headers?: Record<string, string> } | undefined;
        const checksum = (args.input as { Checksum?: unknown }).Checksum;
        if (context.commandName === 'PutSnapshotBlockCommand' && request?.headers && typeof checksum === 'string') {
          request.headers['x-amz-content-sha256'] = Buffer.from(checksum, 'base64').toString('hex');
        }
        return next(args);
      },
      { step: 'build', name: 'ebsFuseReusePayloadHash' },
    );
    if (options.putThroughSdk !== true && options.sdkConfig?.requestHandler === undefined) {
      if (options.endpoint !== undefined) this.origin = originOf(options.endpoint);
      const sdkConfig = this.sdk.config;
      this.signedPut = new SignedPut({
        credentials: () => sdkConfig.credentials(),
        region: () => sdkConfig.region(),
        httpAgent: this.httpAgent,
        httpsAgent: this.httpsAgent,
        connectionTimeoutMs: options.connectionTimeoutMs ?? DEFAULT_CONNECTION_TIMEOUT_MS,
        clockOffsetMs: () => sdkConfig.systemClockOffset ?? 0,
      });
    }
  }

  /**
   * The endpoint requests go to, for messages: the one last used, else the
   * configured one, else the region's. Never throws.
   */
  async endpointDescription(): Promise<string> {
    if (this.origin) return `${this.origin.protocol}//${hostOf(this.origin)}`;
    if (this.explicitEndpoint) return this.explicitEndpoint;
    if (process.env.AWS_IGNORE_CONFIGURED_ENDPOINT_URLS !== 'true') {
      const fromEnv = process.env.AWS_ENDPOINT_URL_EBS || process.env.AWS_ENDPOINT_URL;
      if (fromEnv) return fromEnv;
    }
    try {
      const region = await this.sdk.config.region();
      const resolved = this.sdk.config.endpointProvider({
        Region: region,
        UseFIPS: await this.sdk.config.useFipsEndpoint(),
        UseDualStack: await this.sdk.config.useDualstackEndpoint(),
      });
      return resolved.url.href.replace(/\/$/, '');
    } catch {
      return 'the AWS EBS endpoint (no region configured)';
    }
  }

  async startSnapshot(params: StartSnapshotParams): Promise<StartedSnapshot> {
    const context: CallContext = { operation: 'StartSnapshot' };
    const out = await this.call(context, (abortSignal) =>
      this.sdk.send(
        new StartSnapshotCommand({
          VolumeSize: params.volumeSizeGiB,
          ParentSnapshotId: params.parentSnapshotId,
          Description: params.description,
          Tags: params.tags?.map((tag) => ({ Key: tag.key, Value: tag.value })),
          Timeout: params.timeoutMinutes,
          Encrypted: params.encrypted,
          KmsKeyArn: params.kmsKeyArn,
          ClientToken: params.clientToken,
        }),
        { abortSignal },
      ),
    );
    if (!out.SnapshotId) throw await this.invalidResponse(context, 'no SnapshotId in the response');
    this.rememberStart(out.SnapshotId);
    return {
      snapshotId: out.SnapshotId,
      volumeSizeGiB: out.VolumeSize ?? params.volumeSizeGiB,
      blockSizeBytes: out.BlockSize ?? BLOCK_SIZE_BYTES,
      status: asStatus(out.Status) ?? 'pending',
      ...(out.ParentSnapshotId ? { parentSnapshotId: out.ParentSnapshotId } : {}),
      ...(out.KmsKeyArn ? { kmsKeyArn: out.KmsKeyArn } : {}),
    };
  }

  async putSnapshotBlock(params: PutBlockParams): Promise<void> {
    const context: CallContext = {
      operation: 'PutSnapshotBlock',
      snapshotId: params.snapshotId,
      blockIndex: params.blockIndex,
    };
    if (params.data.length !== BLOCK_SIZE_BYTES) {
      throw new SnapshotApiError(
        `PutSnapshotBlock ${params.snapshotId} block ${params.blockIndex}: the data is ${params.data.length} bytes, not ${BLOCK_SIZE_BYTES} (a bug in the caller)`,
        'InvalidBlockLength',
        'permanent',
      );
    }
    const { origin, signedPut } = this;
    // With no endpoint given, the SDK sends until it has resolved one: only the
    // first PUTs of a resumed mount, which makes no call before them.
    const out = await this.call(context, async (abortSignal) => {
      if (origin !== undefined && signedPut !== undefined) return signedPut.put(origin, params, abortSignal);
      const sent = await this.sdk.send(
        new PutSnapshotBlockCommand({
          SnapshotId: params.snapshotId,
          BlockIndex: params.blockIndex,
          // A Buffer, not a stream: the SDK signs its real hash and we can resend it.
          BlockData: params.data,
          DataLength: BLOCK_SIZE_BYTES,
          Checksum: params.checksumBase64,
          ChecksumAlgorithm: 'SHA256',
          Progress: params.progressPercent,
        }),
        { abortSignal },
      );
      return { statusCode: sent.$metadata.httpStatusCode, checksumBase64: sent.Checksum };
    });
    if (out.checksumBase64 !== params.checksumBase64) {
      const got = out.checksumBase64 ? `checksum ${out.checksumBase64}` : 'no checksum';
      throw new SnapshotApiError(
        `${await this.subject(context)} was acknowledged with ${got}, but ${params.checksumBase64} was sent; the block will be sent again`,
        'ChecksumMismatch',
        'transient',
        out.statusCode,
      );
    }
  }

  async completeSnapshot(params: CompleteSnapshotParams): Promise<SnapshotStatus> {
    const context: CallContext = { operation: 'CompleteSnapshot', snapshotId: params.snapshotId };
    const linear = params.linearChecksumBase64;
    const out = await this.call(context, (abortSignal) =>
      this.sdk.send(
        new CompleteSnapshotCommand({
          SnapshotId: params.snapshotId,
          ChangedBlocksCount: params.changedBlocksCount,
          ...(linear !== undefined ? { Checksum: linear, ChecksumAlgorithm: 'SHA256', ChecksumAggregationMethod: 'LINEAR' } : {}),
        }),
        { abortSignal },
      ),
    );
    // A 202 with no Status was still accepted; AWS seals asynchronously, so
    // "pending" is the honest reading of an accepted completion.
    return asStatus(out.Status) ?? 'pending';
  }

  async listSnapshotBlocks(snapshotId: string, page: ListPageParams = {}): Promise<BlockPage> {
    const context: CallContext = { operation: 'ListSnapshotBlocks', snapshotId };
    const out = await this.call(context, (abortSignal) =>
      this.sdk.send(
        new ListSnapshotBlocksCommand({
          SnapshotId: snapshotId,
          MaxResults: page.maxResults,
          StartingBlockIndex: page.startingBlockIndex,
          NextToken: page.nextToken,
        }),
        { abortSignal },
      ),
    );
    const blocks = [];
    for (const block of out.Blocks ?? []) {
      if (block.BlockIndex === undefined || !block.BlockToken) {
        throw await this.invalidResponse(context, 'a block without BlockIndex or BlockToken');
      }
      blocks.push({ blockIndex: block.BlockIndex, blockToken: block.BlockToken });
    }
    return {
      blocks,
      volumeSizeGiB: await this.required(context, 'VolumeSize', out.VolumeSize),
      expiryTime: await this.date(context, out.ExpiryTime),
      ...(out.NextToken ? { nextToken: out.NextToken } : {}),
    };
  }

  async listChangedBlocks(
    secondSnapshotId: string,
    firstSnapshotId: string | undefined,
    page: ListPageParams = {},
  ): Promise<ChangedBlockPage> {
    const context: CallContext = { operation: 'ListChangedBlocks', snapshotId: secondSnapshotId };
    const out = await this.call(context, (abortSignal) =>
      this.sdk.send(
        new ListChangedBlocksCommand({
          SecondSnapshotId: secondSnapshotId,
          FirstSnapshotId: firstSnapshotId,
          MaxResults: page.maxResults,
          StartingBlockIndex: page.startingBlockIndex,
          NextToken: page.nextToken,
        }),
        { abortSignal },
      ),
    );
    const changedBlocks = [];
    for (const block of out.ChangedBlocks ?? []) {
      if (block.BlockIndex === undefined) throw await this.invalidResponse(context, 'a changed block without BlockIndex');
      changedBlocks.push({
        blockIndex: block.BlockIndex,
        ...(block.FirstBlockToken ? { firstBlockToken: block.FirstBlockToken } : {}),
        ...(block.SecondBlockToken ? { secondBlockToken: block.SecondBlockToken } : {}),
      });
    }
    return {
      changedBlocks,
      volumeSizeGiB: await this.required(context, 'VolumeSize', out.VolumeSize),
      expiryTime: await this.date(context, out.ExpiryTime),
      ...(out.NextToken ? { nextToken: out.NextToken } : {}),
    };
  }

  async getSnapshotBlock(snapshotId: string, blockIndex: number, blockToken: string): Promise<Buffer> {
    const context: CallContext = { operation: 'GetSnapshotBlock', snapshotId, blockIndex };
    const { data, checksum, dataLength } = await this.call(context, async (abortSignal) => {
      const out = await this.sdk.send(
        new GetSnapshotBlockCommand({ SnapshotId: snapshotId, BlockIndex: blockIndex, BlockToken: blockToken }),
        { abortSignal },
      );
      // Read inside call() so that the attempt's timeout also covers the body.
      const body = await readLimitedBody(out.BlockData as Readable | undefined, BLOCK_SIZE_BYTES, abortSignal);
      return { data: body, checksum: out.Checksum, dataLength: out.DataLength };
    });
    // Bad bytes are never returned: a retry fetches the block again.
    let problem: string | undefined;
    if (data === undefined) problem = `more than ${BLOCK_SIZE_BYTES} bytes of block data`;
    else if (dataLength !== data.length) problem = `${data.length} bytes of block data but DataLength ${dataLength}`;
    else if (data.length !== BLOCK_SIZE_BYTES) problem = `${data.length} bytes of block data, not ${BLOCK_SIZE_BYTES}`;
    else if (!checksum) problem = 'no checksum with the block data';
    else if (sha256Base64(data) !== checksum)
      problem = `block data whose SHA-256 is ${sha256Base64(data)}, not the ${checksum} sent with it`;
    if (problem !== undefined || data === undefined) {
      throw new SnapshotApiError(
        `${await this.subject(context)} returned ${problem}; it will be read again`,
        'CorruptBlockData',
        'transient',
      );
    }
    return data;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const controller of this.inFlight) controller.abort(new AttemptAbort('closed', 0));
    this.inFlight.clear();
    if (this.ownsSdk) this.sdk.destroy();
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }

  /** Runs one attempt under its own timeout, turning any failure into a SnapshotApiError. */
  private async call<T>(context: CallContext, attempt: (abortSignal: AbortSignal) => Promise<T>): Promise<T> {
    if (this.closed) throw closedError(context);
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(new AttemptAbort('timeout', this.requestTimeoutMs)), this.requestTimeoutMs);
    this.inFlight.add(controller);
    try {
      return await attempt(controller.signal);
    } catch (error) {
      const reason: unknown = controller.signal.aborted ? controller.signal.reason : undefined;
      if (this.closed || (reason instanceof AttemptAbort && reason.why === 'closed')) throw closedError(context);
      const classified = classifyEbsError(error, {
        resourceNotFoundIsTransient:
          context.operation === 'PutSnapshotBlock' && context.snapshotId !== undefined && this.recentlyStarted(context.snapshotId),
        timedOutAfterMs: reason instanceof AttemptAbort && reason.why === 'timeout' ? reason.afterMs : undefined,
        profile: this.profile ?? process.env.AWS_PROFILE,
        operation: context.operation,
      });
      const message = `${await this.subject(context)} failed: ${classified.detail}`;
      const wrapped = new SnapshotApiError(message, classified.code, classified.kind, classified.httpStatus, classified.reason);
      (wrapped as { cause?: unknown }).cause = error;
      throw wrapped;
    } finally {
      clearTimeout(timer);
      this.inFlight.delete(controller);
    }
  }

  private async subject(context: CallContext): Promise<string> {
    const what: string[] = [context.operation];
    if (context.snapshotId !== undefined) what.push(context.snapshotId);
    if (context.blockIndex !== undefined) what.push(`block ${context.blockIndex}`);
    return `${what.join(' ')} at ${await this.endpointDescription()}`;
  }

  private rememberStart(snapshotId: string): void {
    this.startedAtMs.delete(snapshotId);
    this.startedAtMs.set(snapshotId, this.nowMs());
    // Map order is insertion order: the first entries are the oldest.
    while (this.startedAtMs.size > REMEMBERED_STARTS_MAX) {
      const oldest = this.startedAtMs.keys().next().value as string;
      this.startedAtMs.delete(oldest);
    }
  }

  private recentlyStarted(snapshotId: string): boolean {
    const startedAt = this.startedAtMs.get(snapshotId);
    return startedAt !== undefined && this.nowMs() - startedAt < this.resourceNotFoundWindowMs;
  }

  private async invalidResponse(context: CallContext, what: string): Promise<SnapshotApiError> {
    return new SnapshotApiError(
      `${await this.subject(context)} returned an invalid response: ${what}; is the endpoint an EBS direct API?`,
      'InvalidResponse',
      'permanent',
    );
  }

  private async required<T>(context: CallContext, name: string, value: T | undefined): Promise<T> {
    if (value === undefined || value === null) throw await this.invalidResponse(context, `no ${name}`);
    return value;
  }

  private async date(context: CallContext, value: Date | number | string | undefined): Promise<Date> {
    const date = value instanceof Date ? value : typeof value === 'number' ? new Date(value * 1000) : undefined;
    if (date === undefined || Number.isNaN(date.getTime())) throw await this.invalidResponse(context, 'no valid ExpiryTime');
    return date;
  }
}

function httpLogger(log: ((line: string) => void) | undefined) {
  const warn = (...parts: unknown[]): void => {
    const text = parts.map(String).join(' ').replace(/\s+/g, ' ').trim();
    log?.(`ebs http: ${text.slice(0, QUOTED_MESSAGE_MAX_CHARS)}`);
  };
  const ignore = (): void => undefined;
  return { trace: ignore, debug: ignore, info: ignore, warn, error: warn };
}

/** An endpoint URL as the SDK sends to it: its path, less a trailing '/', goes before /snapshots. */
function originOf(endpoint: string): ResolvedOrigin | undefined {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    return undefined; // the SDK reports the bad endpoint on the first call
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return undefined;
  return {
    protocol: url.protocol,
    hostname: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    ...(url.port === '' ? {} : { port: Number(url.port) }),
    basePath: url.pathname.replace(/\/+$/, ''),
  };
}

function closedError(context: CallContext): SnapshotApiError {
  return new SnapshotApiError(`${context.operation}: the snapshot client was closed`, 'ClientClosed', 'permanent');
}

function asStatus(value: string | undefined): SnapshotStatus | undefined {
  return value === 'pending' || value === 'completed' || value === 'error' ? value : undefined;
}
