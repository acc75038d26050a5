// The connection options every command but local-ebs shares, and the one way
// to turn them into a SnapshotClient: AWS through the SDK's own configuration
// (environment, profiles), an explicit --endpoint, or --local, which attaches
// to a running local-ebs of that data directory or else runs one in-process.

import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { Command } from 'commander';
import { describeError, UserError } from '../errors';
import { startEmbeddedLocalEbs } from '../local-ebs/embedded';
import { readRunningLocalEbs } from '../local-ebs/data-dir-record';
import { AwsSnapshotClient, type AwsCredentials } from '../ebs/aws-client';
import { RetryingSnapshotClient, type RetryingSnapshotClientOptions } from '../ebs/retry';

export const DEFAULT_LOCAL_DIR = './.ebs-local';
/** local-ebs is region-agnostic, but SigV4 needs one to sign with. */
export const LOCAL_REGION = 'us-east-1';
/** Used to sign for a custom endpoint when no region is configured anywhere. */
export const CUSTOM_ENDPOINT_DEFAULT_REGION = 'us-east-1';
// The first call of a command: a person is waiting, nothing is lost by giving
// up early, and a wrong endpoint should not take a minute to say so.
export const START_SNAPSHOT_TOTAL_TIMEOUT_MS = 15_000;

/** What commander parses from addConnectionOptions. */
export interface ConnectionOptions {
  endpoint?: string;
  region?: string;
  profile?: string;
  /** true for a bare --local (DEFAULT_LOCAL_DIR), a directory, or absent. */
  local?: string | boolean;
}

export interface ConnectionTuning {
  /** Sockets to the endpoint; match the upload concurrency. */
  maxSockets?: number;
  connectionTimeoutMs?: number;
  /** Per attempt. */
  requestTimeoutMs?: number;
  resourceNotFoundWindowMs?: number;
  retry?: RetryingSnapshotClientOptions;
  /** Lines from an embedded local-ebs and warnings of the HTTP layer. */
  log?: (line: string) => void;
}

export interface OpenedClient {
  /** Already wrapped in the retry policy; its retryCount counts retries. */
  client: RetryingSnapshotClient;
  /** Where requests go, for people: a URL, plus what serves it for --local. */
  endpointDescription: string;
  /** Closes the client and stops an embedded local-ebs. */
  close(): Promise<void>;
}

export function addConnectionOptions(command: Command): Command {
  return command
    .option(
      '--endpoint <url>',
      "EBS direct API endpoint (default: the AWS SDK's: AWS_ENDPOINT_URL_EBS, AWS_ENDPOINT_URL, else the region's)",
    )
    .option('--region <region>', "AWS region (default: AWS_REGION or the profile's region)")
    .option('--profile <name>', 'AWS profile for credentials and region (default: AWS_PROFILE)')
    .option(
      '--local [dir]',
      `use local-ebs with its data in DIR (default ${DEFAULT_LOCAL_DIR}) instead of AWS: attaches to a running ` +
        '`ebs-fuse local-ebs --data DIR`, else runs one in this process',
    );
}

/** Checks an --endpoint value: an absolute http or https URL. */
export function parseEndpoint(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new UserError(`--endpoint must be an http or https URL such as http://127.0.0.1:8080, not "${value}"`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new UserError(`--endpoint must be an http or https URL such as http://127.0.0.1:8080, not "${value}"`);
  }
  if (url.username || url.password) {
    throw new UserError('--endpoint must not contain credentials; use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or --profile');
  }
  if (url.search || url.hash) {
    throw new UserError(`--endpoint must not have a query or fragment: "${value}"`);
  }
  // The SDK appends the operation path; a trailing slash would double it.
  return url.href.replace(/\/$/, '');
}

export async function openSnapshotClient(options: ConnectionOptions, tuning: ConnectionTuning = {}): Promise<OpenedClient> {
  if (options.local !== undefined && options.local !== false) return openLocal(options, tuning);
  return openAws(options, tuning);
}

function retryOptions(tuning: ConnectionTuning): RetryingSnapshotClientOptions {
  const retry = tuning.retry ?? {};
  return {
    ...retry,
    operationPolicies: {
      ...retry.operationPolicies,
      StartSnapshot: { totalTimeoutMs: START_SNAPSHOT_TOTAL_TIMEOUT_MS, ...retry.operationPolicies?.StartSnapshot },
    },
  };
}

function awsClient(
  tuning: ConnectionTuning,
  connection: { region?: string; endpoint?: string; profile?: string; credentials?: AwsCredentials },
): AwsSnapshotClient {
  return new AwsSnapshotClient({
    ...connection,
    maxSockets: tuning.maxSockets,
    connectionTimeoutMs: tuning.connectionTimeoutMs,
    requestTimeoutMs: tuning.requestTimeoutMs,
    resourceNotFoundWindowMs: tuning.resourceNotFoundWindowMs,
    log: tuning.log,
  });
}

async function openAws(options: ConnectionOptions, tuning: ConnectionTuning): Promise<OpenedClient> {
  const endpoint = options.endpoint !== undefined ? parseEndpoint(options.endpoint) : undefined;
  const connection = { region: options.region, endpoint, profile: options.profile };
  let aws = awsClient(tuning, connection);
  if (options.region === undefined && !(await hasRegion(aws))) {
    const customEndpoint = endpoint ?? configuredEndpointFromEnv();
    if (customEndpoint === undefined) {
      aws.close();
      const profile = options.profile ?? process.env.AWS_PROFILE;
      throw new UserError(
        `no AWS region configured${profile ? ` (profile "${profile}" has none)` : ''}: pass --region REGION or set AWS_REGION`,
      );
    }
    // A custom endpoint still needs a region to sign with; any will do for it.
    aws.close();
    aws = awsClient(tuning, { ...connection, region: CUSTOM_ENDPOINT_DEFAULT_REGION });
  }
  const client = new RetryingSnapshotClient(aws, retryOptions(tuning));
  return {
    client,
    endpointDescription: await aws.endpointDescription(),
    close: async () => client.close(),
  };
}

async function hasRegion(aws: AwsSnapshotClient): Promise<boolean> {
  try {
    return Boolean(await aws.sdk.config.region());
  } catch {
    return false;
  }
}

function configuredEndpointFromEnv(): string | undefined {
  if (process.env.AWS_IGNORE_CONFIGURED_ENDPOINT_URLS === 'true') return undefined;
  return process.env.AWS_ENDPOINT_URL_EBS || process.env.AWS_ENDPOINT_URL || undefined;
}

async function openLocal(options: ConnectionOptions, tuning: ConnectionTuning): Promise<OpenedClient> {
  for (const [flag, value] of [
    ['--endpoint', options.endpoint],
    ['--profile', options.profile],
  ] as const) {
    if (value !== undefined) throw new UserError(`--local cannot be combined with ${flag}: it picks its own endpoint and credentials`);
  }
  const dataDir = path.resolve(typeof options.local === 'string' ? options.local : DEFAULT_LOCAL_DIR);
  const region = options.region ?? LOCAL_REGION;

  const running = readRunningLocalEbs(dataDir);
  // readRunningLocalEbs already drops a record whose process is gone.
  if (running) {
    const aws = awsClient(tuning, {
      region,
      endpoint: running.endpoint,
      credentials: { accessKeyId: running.accessKeyId, secretAccessKey: running.secretAccessKey },
    });
    const client = new RetryingSnapshotClient(aws, retryOptions(tuning));
    return {
      client,
      endpointDescription: `${running.endpoint} (local-ebs process ${running.pid}, data in ${dataDir})`,
      close: async () => client.close(),
    };
  }

  const credentials = {
    accessKeyId: `LOCAL${randomBytes(8).toString('hex').toUpperCase()}`,
    secretAccessKey: randomBytes(30).toString('base64'),
  };
  let server;
  try {
    server = await startEmbeddedLocalEbs({ dataDir, ...credentials }, tuning.log);
  } catch (error) {
    if (error instanceof UserError) throw error;
    const message = describeError(error);
    throw new UserError(`cannot start the embedded local-ebs with data in ${dataDir}: ${message}`);
  }
  const aws = awsClient(tuning, { region, endpoint: server.endpoint, credentials });
  const client = new RetryingSnapshotClient(aws, retryOptions(tuning));
  const embedded = server;
  let closing: Promise<void> | undefined;
  return {
    client,
    endpointDescription: `${server.endpoint} (local-ebs in this process, on its own thread, data in ${dataDir})`,
    close: () => {
      closing ??= (async () => {
        client.close();
        await embedded.close();
      })();
      return closing;
    },
  };
}
