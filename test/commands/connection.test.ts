// The connection options and openSnapshotClient: --local embedding or attaching
// to local-ebs, the SDK's environment variables and profiles, and the one-line
// errors for a bad endpoint, no region, an unreachable endpoint and wrong keys.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { AwsSnapshotClient } from '../../src/ebs/aws-client';
import { sha256Base64, sha256Digest, linearChecksumBase64 } from '../../src/ebs/checksum';
import { BLOCK_SIZE_BYTES, SnapshotApiError } from '../../src/ebs/client';
import {
  DEFAULT_LOCAL_DIR,
  START_SNAPSHOT_TOTAL_TIMEOUT_MS,
  addConnectionOptions,
  openSnapshotClient,
  parseEndpoint,
  type ConnectionOptions,
  type OpenedClient,
} from '../../src/commands/connection';
import { UserError } from '../../src/errors';
import { getLocalEbsStats } from '../../src/local-ebs/admin-client';
import { readRunningLocalEbs } from '../../src/local-ebs/data-dir-record';
import { CLI_PATH, startLocalEbsProcess, stopAllLocalEbsProcesses, type LocalEbsProcess } from '../support/local-ebs-process';

// Every variable through which the SDK could find a region, credentials or an
// endpoint; each test starts from none of them and sets its own.
const SDK_ENV = [
  'AWS_REGION',
  'AWS_DEFAULT_REGION',
  'AWS_PROFILE',
  'AWS_ACCESS_KEY_ID',
  'AWS_SECRET_ACCESS_KEY',
  'AWS_SESSION_TOKEN',
  'AWS_ENDPOINT_URL',
  'AWS_ENDPOINT_URL_EBS',
  'AWS_CONFIG_FILE',
  'AWS_SHARED_CREDENTIALS_FILE',
  'AWS_EC2_METADATA_DISABLED',
  'AWS_IGNORE_CONFIGURED_ENDPOINT_URLS',
];

function parse(argv: string[]): ConnectionOptions {
  const command = addConnectionOptions(new Command('test').exitOverride());
  command.parse(argv, { from: 'user' });
  return command.opts<ConnectionOptions>();
}

const block = Buffer.alloc(BLOCK_SIZE_BYTES, 0x5a);

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe('connection options', function () {
  this.timeout(60_000);
  const savedEnv = new Map<string, string | undefined>();
  const opened: OpenedClient[] = [];
  let scratch: string;
  let server: LocalEbsProcess;

  async function open(options: ConnectionOptions, tuning: Parameters<typeof openSnapshotClient>[1] = {}): Promise<OpenedClient> {
    const client = await openSnapshotClient(options, { requestTimeoutMs: 5_000, connectionTimeoutMs: 2_000, ...tuning });
    opened.push(client);
    return client;
  }

  /** Empty config files of the test's own, so nothing of the machine's leaks in. */
  function isolateSdkEnv(files: { config?: string; credentials?: string } = {}): void {
    for (const name of SDK_ENV) delete process.env[name];
    const unique = `${Date.now()}-${Math.random().toString(16).slice(2)}`;
    const configFile = path.join(scratch, `config-${unique}`);
    const credentialsFile = path.join(scratch, `credentials-${unique}`);
    writeFileSync(configFile, files.config ?? '');
    writeFileSync(credentialsFile, files.credentials ?? '');
    process.env.AWS_CONFIG_FILE = configFile;
    process.env.AWS_SHARED_CREDENTIALS_FILE = credentialsFile;
    process.env.AWS_EC2_METADATA_DISABLED = 'true';
  }

  before(async () => {
    if (!existsSync(CLI_PATH)) throw new Error(`${CLI_PATH} is missing: run npx tsc -p tsconfig.json first`);
    for (const name of SDK_ENV) savedEnv.set(name, process.env[name]);
    scratch = mkdtempSync(path.join(os.tmpdir(), 'ebs-connection-test-'));
    server = await startLocalEbsProcess();
  });

  beforeEach(() => isolateSdkEnv());

  afterEach(async () => {
    for (const client of opened.splice(0)) await client.close();
  });

  after(async () => {
    for (const [name, value] of savedEnv) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
    await stopAllLocalEbsProcesses();
    rmSync(server.dataDir, { recursive: true, force: true });
    rmSync(scratch, { recursive: true, force: true });
  });

  describe('parsing', () => {
    it('adds --endpoint, --region, --profile and --local [DIR]', () => {
      assert.deepEqual(parse([]), {});
      assert.deepEqual(parse(['--local']), { local: true });
      assert.deepEqual(parse(['--local', '/tmp/x']), { local: '/tmp/x' });
      assert.deepEqual(parse(['--endpoint', 'http://127.0.0.1:1', '--region', 'eu-west-1', '--profile', 'p']), {
        endpoint: 'http://127.0.0.1:1',
        region: 'eu-west-1',
        profile: 'p',
      });
      assert.equal(DEFAULT_LOCAL_DIR, './.ebs-local');
    });

    it('accepts http and https endpoint URLs and rejects anything else with one line', () => {
      assert.equal(parseEndpoint('http://127.0.0.1:8080/'), 'http://127.0.0.1:8080');
      assert.equal(parseEndpoint('https://ebs.eu-west-1.amazonaws.com'), 'https://ebs.eu-west-1.amazonaws.com');
      assert.equal(parseEndpoint('http://proxy:3128/prefix'), 'http://proxy:3128/prefix');
      for (const bad of ['127.0.0.1:8080', 'ftp://host', 'nonsense', '', 'http://user:pw@host', 'http://host/?q=1']) {
        assert.throws(
          () => parseEndpoint(bad),
          (error: unknown) => error instanceof UserError && !error.message.includes('\n') && /--endpoint/.test(error.message),
          bad,
        );
      }
    });
  });

  describe('--local', () => {
    it('with no server for DIR, runs one in-process; the next command with DIR sees the same snapshots', async () => {
      const dataDir = path.join(scratch, 'embedded');
      const first = await open({ local: dataDir });
      assert.match(
        first.endpointDescription,
        /^http:\/\/127\.0\.0\.1:\d+ \(local-ebs in this process, on its own thread, data in .*embedded\)$/,
      );
      assert.equal(readRunningLocalEbs(dataDir)?.pid, process.pid);
      const { snapshotId } = await first.client.startSnapshot({ volumeSizeGiB: 1 });
      await first.client.putSnapshotBlock({ snapshotId, blockIndex: 1, data: block, checksumBase64: sha256Base64(block) });
      await first.client.completeSnapshot({
        snapshotId,
        changedBlocksCount: 1,
        linearChecksumBase64: linearChecksumBase64(new Map([[1, sha256Digest(block)]])),
      });
      await first.close();
      assert.equal(readRunningLocalEbs(dataDir), undefined, 'the embedded server stopped with close()');
      await assert.rejects(first.client.listSnapshotBlocks(snapshotId), /closed/);

      const second = await open({ local: dataDir });
      const page = await second.client.listSnapshotBlocks(snapshotId);
      assert.deepEqual(
        page.blocks.map((entry) => entry.blockIndex),
        [1],
      );
      assert.ok((await second.client.getSnapshotBlock(snapshotId, 1, page.blocks[0].blockToken)).equals(block));
    });

    it("a data directory that cannot be made (under /proc, where Node's recursive mkdir never returns) fails in one line", async () => {
      const started = Date.now();
      await assert.rejects(
        open({ local: '/proc/ebs-fuse-no-such-dir/data' }),
        (error: Error) =>
          error instanceof UserError &&
          !error.message.includes('\n') &&
          error.message.startsWith('cannot create the local-ebs data directory /proc/ebs-fuse-no-such-dir/data: ENOENT'),
      );
      assert.ok(Date.now() - started < 10_000);
    });

    it('a bare --local uses ./.ebs-local of the working directory', async () => {
      const cwd = process.cwd();
      const dir = mkdtempSync(path.join(scratch, 'cwd-'));
      process.chdir(dir);
      try {
        const client = await open({ local: true });
        assert.ok(client.endpointDescription.includes(path.join(dir, '.ebs-local')), client.endpointDescription);
        await client.client.startSnapshot({ volumeSizeGiB: 1 });
        assert.ok(existsSync(path.join(dir, '.ebs-local')));
      } finally {
        process.chdir(cwd);
      }
    });

    it('attaches to a local-ebs process that holds DIR, with its credentials, and leaves it running', async () => {
      const before = (await getLocalEbsStats(server.endpoint, server.credentials)).requests.StartSnapshot ?? 0;
      const client = await open({ local: server.dataDir });
      assert.ok(
        client.endpointDescription.startsWith(`${server.endpoint} (local-ebs process ${server.child.pid}`),
        client.endpointDescription,
      );
      await client.client.startSnapshot({ volumeSizeGiB: 1 });
      const after = (await getLocalEbsStats(server.endpoint, server.credentials)).requests.StartSnapshot ?? 0;
      assert.equal(after - before, 1, 'the request went to the process');
      await client.close();
      assert.equal(server.child.exitCode, null);
      assert.equal(readRunningLocalEbs(server.dataDir)?.pid, server.child.pid);
    });

    it('cannot be combined with --endpoint or --profile', async () => {
      for (const extra of [{ endpoint: 'http://127.0.0.1:1' }, { profile: 'p' }]) {
        await assert.rejects(
          open({ local: path.join(scratch, 'never'), ...extra }),
          (error: unknown) => error instanceof UserError && /--local cannot be combined/.test(error.message),
        );
      }
      assert.ok(!existsSync(path.join(scratch, 'never')));
    });
  });

  describe('AWS configuration', () => {
    it('an invalid --endpoint is a one-line UserError', async () => {
      await assert.rejects(
        open({ endpoint: 'localhost:8080' }),
        (error: unknown) => error instanceof UserError && /--endpoint must be an http or https URL/.test(error.message),
      );
    });

    it('no region anywhere and no endpoint is a one-line UserError', async () => {
      await assert.rejects(
        open({}),
        (error: unknown) => error instanceof UserError && /no AWS region configured.*--region/.test(error.message),
      );
    });

    it('a custom endpoint works without a region, with credentials from the environment', async () => {
      process.env.AWS_ACCESS_KEY_ID = server.credentials.accessKeyId;
      process.env.AWS_SECRET_ACCESS_KEY = server.credentials.secretAccessKey;
      const client = await open({ endpoint: server.endpoint });
      assert.equal(client.endpointDescription, server.endpoint);
      assert.match((await client.client.startSnapshot({ volumeSizeGiB: 1 })).snapshotId, /^snap-/);
    });

    it("AWS_ENDPOINT_URL_EBS and AWS_REGION are the SDK's, and respected", async () => {
      process.env.AWS_ACCESS_KEY_ID = server.credentials.accessKeyId;
      process.env.AWS_SECRET_ACCESS_KEY = server.credentials.secretAccessKey;
      process.env.AWS_REGION = 'eu-central-1';
      process.env.AWS_ENDPOINT_URL_EBS = server.endpoint;
      const client = await open({});
      assert.equal(client.endpointDescription, server.endpoint);
      await client.client.startSnapshot({ volumeSizeGiB: 1 });
    });

    it('--region names the AWS endpoint of that region when nothing overrides it', async () => {
      const client = await open({ region: 'ap-southeast-2' });
      assert.equal(client.endpointDescription, 'https://ebs.ap-southeast-2.amazonaws.com');
    });

    it('--profile takes credentials and region from the shared files', async () => {
      isolateSdkEnv({
        config: '[profile tester]\nregion = us-west-2\n',
        credentials: `[tester]\naws_access_key_id = ${server.credentials.accessKeyId}\naws_secret_access_key = ${server.credentials.secretAccessKey}\n`,
      });
      const client = await open({ profile: 'tester', endpoint: server.endpoint });
      await client.client.startSnapshot({ volumeSizeGiB: 1 });
      assert.ok(client.client.inner instanceof AwsSnapshotClient);
      assert.equal(await client.client.inner.sdk.config.region(), 'us-west-2');

      const missing = await open({ profile: 'nobody', endpoint: server.endpoint, region: 'us-east-1' });
      const error = await missing.client.startSnapshot({ volumeSizeGiB: 1 }).then(
        () => assert.fail('started without credentials'),
        (caught: unknown) => caught,
      );
      assert.ok(error instanceof SnapshotApiError);
      assert.equal(error.kind, 'permanent');
      assert.match(error.message, /profile "nobody"/);
      assert.ok(!error.message.includes('\n'));
    });

    it('wrong credentials fail at once with one line naming the endpoint', async () => {
      process.env.AWS_ACCESS_KEY_ID = server.credentials.accessKeyId;
      process.env.AWS_SECRET_ACCESS_KEY = 'not-the-secret';
      const client = await open({ endpoint: server.endpoint, region: 'us-east-1' });
      const started = Date.now();
      const error = await client.client.startSnapshot({ volumeSizeGiB: 1 }).then(
        () => assert.fail('started with a wrong secret'),
        (caught: unknown) => caught,
      );
      assert.ok(error instanceof SnapshotApiError);
      assert.equal(error.kind, 'permanent');
      assert.ok(error.message.includes(server.endpoint), error.message);
      assert.match(error.message, /secret access key/);
      assert.ok(!error.message.includes('\n'));
      assert.equal(client.client.retryCount, 0);
      assert.ok(Date.now() - started < 2_000);
    });

    it('an unreachable endpoint fails StartSnapshot within its time limit, naming the endpoint', async () => {
      process.env.AWS_ACCESS_KEY_ID = 'AKIAEXAMPLE';
      process.env.AWS_SECRET_ACCESS_KEY = 'secret';
      const endpoint = `http://127.0.0.1:${await freePort()}`;
      const defaults = await open({ endpoint, region: 'us-east-1' });
      assert.equal(defaults.client.policyFor('StartSnapshot').totalTimeoutMs, START_SNAPSHOT_TOTAL_TIMEOUT_MS);
      assert.ok(START_SNAPSHOT_TOTAL_TIMEOUT_MS < defaults.client.policyFor('PutSnapshotBlock').totalTimeoutMs);

      const totalTimeoutMs = 1_500;
      const client = await open(
        { endpoint, region: 'us-east-1' },
        { retry: { policy: { baseDelayMs: 20, maxDelayMs: 200 }, operationPolicies: { StartSnapshot: { totalTimeoutMs } } } },
      );
      const started = Date.now();
      const error = await client.client.startSnapshot({ volumeSizeGiB: 1 }).then(
        () => assert.fail('started against nothing'),
        (caught: unknown) => caught,
      );
      const elapsedMs = Date.now() - started;
      assert.ok(error instanceof SnapshotApiError);
      assert.equal(error.code, 'ECONNREFUSED');
      assert.ok(error.message.startsWith(`StartSnapshot at ${endpoint} failed: cannot connect`), error.message);
      assert.match(error.message, /check the endpoint.*gave up after \d+ attempts/);
      assert.ok(!error.message.includes('\n'));
      assert.ok(client.client.retryCount >= 1);
      assert.ok(elapsedMs < totalTimeoutMs + 1_000, `${elapsedMs} ms`);
    });
  });
});
