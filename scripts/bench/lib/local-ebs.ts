// A local-ebs server process on 127.0.0.1 for one measurement, with a fresh data
// directory: its store is content-addressed, so a second upload of the same
// bytes into a used store would skip the writes and flatter the later runs.
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { AwsSnapshotClient } from '../../../src/ebs/aws-client';
import { getLocalEbsStats } from '../../../src/local-ebs/admin-client';
import type { LocalEbsStats } from '../../../src/local-ebs/server';
import type { Cleanup } from './cleanup';
import { spawnTracked, type Rusage, type Tracked } from './proc';
import { CLI_PATH, REPO_ROOT } from './paths';

const START_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 30_000;
const LIST_PAGE_BLOCKS = 10_000;

export interface Credentials {
  accessKeyId: string;
  secretAccessKey: string;
}

export class LocalEbs {
  private constructor(
    readonly endpoint: string,
    readonly credentials: Credentials,
    private readonly process: Tracked,
    private readonly removeDataDir: () => Promise<void>,
  ) {}

  /** `faults`: a --faults spec such as latency=50ms. */
  static async start(cleanup: Cleanup, scratch: string, name: string, options: { faults?: string } = {}): Promise<LocalEbs> {
    const dataDir = path.join(scratch, `${name}-local-ebs`);
    await mkdir(dataDir, { recursive: true });
    const removeDataDir = cleanup.add(`remove ${dataDir}`, () => rm(dataDir, { recursive: true, force: true }));
    const credentials: Credentials = {
      accessKeyId: `AKIABENCH${randomBytes(6).toString('hex').toUpperCase().slice(0, 11)}`,
      secretAccessKey: randomBytes(30).toString('base64'),
    };
    const server = spawnTracked(
      cleanup,
      `local-ebs (${name})`,
      process.execPath,
      [
        CLI_PATH,
        'local-ebs',
        '--host',
        '127.0.0.1',
        '--port',
        '0',
        '--data',
        dataDir,
        '--access-key-id',
        credentials.accessKeyId,
        '--secret-access-key',
        credentials.secretAccessKey,
        ...(options.faults ? ['--faults', options.faults] : []),
      ],
      { cwd: REPO_ROOT, rusageFile: path.join(scratch, `${name}-local-ebs.rusage.json`) },
    );
    const line = await server.waitForLine(0, START_TIMEOUT_MS);
    const match = /^local-ebs listening on (http:\/\/127\.0\.0\.1:\d+)$/.exec(line);
    if (!match) {
      await server.kill();
      throw new Error(`unexpected first line from local-ebs: ${line}`);
    }
    return new LocalEbs(match[1], credentials, server, removeDataDir);
  }

  /** The environment for `ebs-fuse` children: these credentials and nothing of the caller's AWS setup. */
  cliEnvironment(): NodeJS.ProcessEnv {
    return {
      ...environmentWithoutAws(),
      AWS_REGION: 'us-east-1',
      AWS_CONFIG_FILE: '/dev/null',
      AWS_SHARED_CREDENTIALS_FILE: '/dev/null',
      AWS_EC2_METADATA_DISABLED: 'true',
      AWS_ACCESS_KEY_ID: this.credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: this.credentials.secretAccessKey,
    };
  }

  stats(): Promise<LocalEbsStats> {
    return getLocalEbsStats(this.endpoint, this.credentials);
  }

  client(maxSockets = 16, options: { putThroughSdk?: boolean } = {}): AwsSnapshotClient {
    return new AwsSnapshotClient({ endpoint: this.endpoint, region: 'us-east-1', credentials: this.credentials, maxSockets, ...options });
  }

  /** Distinct blocks the snapshot holds, from ListSnapshotBlocks (it must be completed). */
  async countSnapshotBlocks(snapshotId: string): Promise<number> {
    const client = this.client(1);
    try {
      let count = 0;
      let nextToken: string | undefined;
      do {
        const page = await client.listSnapshotBlocks(snapshotId, { maxResults: LIST_PAGE_BLOCKS, nextToken });
        count += page.blocks.length;
        nextToken = page.nextToken;
      } while (nextToken);
      return count;
    } finally {
      client.close();
    }
  }

  /** SIGTERM, wait, then the data directory goes; resolves with the server's own CPU figures. */
  async stop(): Promise<Rusage> {
    this.process.signal('SIGTERM');
    await this.process.waitForExit(STOP_TIMEOUT_MS);
    const usage = await this.process.rusage();
    await this.removeDataDir();
    return usage;
  }
}

/** PutSnapshotBlock requests the server counted between two readings. */
export function putsBetween(before: LocalEbsStats, after: LocalEbsStats): number {
  return (after.requests.PutSnapshotBlock ?? 0) - (before.requests.PutSnapshotBlock ?? 0);
}

/** This process's environment without any AWS_ setting: nothing of the caller's AWS setup leaks into a child. */
export function environmentWithoutAws(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('AWS_')));
}
