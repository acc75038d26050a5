// Three independent clients (the JS SDK, the AWS CLI, boto3) drive the same
// scenario against a running local-ebs; each reports what it observed in one shape
// (Observed) so that conformance.test.ts checks all three with one set of asserts.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import {
  CompleteSnapshotCommand,
  EBSClient,
  GetSnapshotBlockCommand,
  ListChangedBlocksCommand,
  ListSnapshotBlocksCommand,
  PutSnapshotBlockCommand,
  StartSnapshotCommand,
} from '@aws-sdk/client-ebs';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { linearChecksumBase64, sha256Base64, sha256Digest } from '../../src/ebs/checksum';
import { awsClientEnv, type TestCredentials } from '../support/local-ebs-process';

export interface ObservedError {
  code: string | null;
  reason?: string | null;
  status?: number;
  message?: string | null;
}

export interface Observed {
  parentId: string;
  start: { status: string; blockSize: number; volumeSize: number; httpStatus: number };
  retrySameId: boolean;
  conflict: ObservedError;
  put: { httpStatus: number; checksum: string; expected: string };
  badChecksum: ObservedError;
  badDataLength: ObservedError;
  readWhilePending: ObservedError;
  unknownSnapshot: ObservedError;
  complete: { status: string; httpStatus: number };
  writeAfterComplete: ObservedError;
  childId: string;
  childParent: string | undefined;
  childComplete: string;
  childBlocks: number[];
  childReads: Record<string, { sha: string; headerChecksum: string; dataLength: number }>;
  changed: Array<{ index: number; first: boolean; second: boolean }>;
  changedNoFirst: number[];
  invalidBlockToken: ObservedError;
  bigPages: number[];
  bigIndexes: number[];
  bigChangedPages: number[];
  bigChangedIndexes: number[];
  bigRead: { index: number; sha: string };
  invalidPageToken: ObservedError;
  unrelated: ObservedError;
  badSignature: ObservedError;
}

/** The same pattern as boto3_conformance.py: the label and '|' repeated over one block. */
export function pattern(label: string): Buffer {
  const unit = Buffer.from(`${label}|`, 'ascii');
  const block = Buffer.alloc(BLOCK_SIZE_BYTES);
  for (let offset = 0; offset < BLOCK_SIZE_BYTES; offset += unit.length) unit.copy(block, offset);
  return block;
}

function linearOf(blocks: Record<number, Buffer>): string {
  return linearChecksumBase64(new Map(Object.entries(blocks).map(([index, data]) => [Number(index), sha256Digest(data)])));
}

export function makeJsClient(endpoint: string, credentials: TestCredentials): EBSClient {
  return new EBSClient({ endpoint, region: 'us-east-1', credentials: { ...credentials }, maxAttempts: 1 });
}

async function jsError(call: () => Promise<unknown>): Promise<ObservedError> {
  try {
    await call();
  } catch (error) {
    const e = error as { name: string; Reason?: string; message: string; $metadata?: { httpStatusCode?: number } };
    return { code: e.name, reason: e.Reason ?? null, status: e.$metadata?.httpStatusCode, message: e.message };
  }
  return { code: null };
}

async function listAll<T>(
  fetch: (token: string | undefined) => Promise<{ entries: T[]; next?: string }>,
): Promise<{ pages: number[]; entries: T[] }> {
  const pages: number[] = [];
  const entries: T[] = [];
  let token: string | undefined;
  do {
    const page = await fetch(token);
    pages.push(page.entries.length);
    entries.push(...page.entries);
    token = page.next;
  } while (token && pages.length <= 100);
  return { pages, entries };
}

export async function driveJs(endpoint: string, credentials: TestCredentials, bigId: string): Promise<Observed> {
  const client = 'js';
  const ebs = makeJsClient(endpoint, credentials);
  try {
    const startInput = {
      VolumeSize: 1,
      Description: `conformance ${client}`,
      Tags: [{ Key: 'client', Value: client }],
      ClientToken: `tok-${client}-${randomUUID()}`,
      Timeout: 60,
    };
    const started = await ebs.send(new StartSnapshotCommand(startInput));
    const parentId = started.SnapshotId!;
    const retried = await ebs.send(new StartSnapshotCommand(startInput));
    const conflict = await jsError(() => ebs.send(new StartSnapshotCommand({ ...startInput, VolumeSize: 2 })));
    const blocks: Record<number, Buffer> = { 0: pattern(`${client}-parent-0`), 5: pattern(`${client}-parent-5`) };
    const putBlock = (snapshotId: string, index: number, data: Buffer, overrides: { Checksum?: string; DataLength?: number } = {}) =>
      ebs.send(
        new PutSnapshotBlockCommand({
          SnapshotId: snapshotId,
          BlockIndex: index,
          BlockData: data,
          DataLength: overrides.DataLength ?? BLOCK_SIZE_BYTES,
          Checksum: overrides.Checksum ?? sha256Base64(data),
          ChecksumAlgorithm: 'SHA256',
        }),
      );
    await putBlock(parentId, 0, blocks[0]);
    const put = await putBlock(parentId, 5, blocks[5]);
    const badChecksum = await jsError(() => putBlock(parentId, 1, blocks[0], { Checksum: sha256Base64(blocks[5]) }));
    const badDataLength = await jsError(() => putBlock(parentId, 1, blocks[0], { DataLength: 1000 }));
    const readWhilePending = await jsError(() => ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: parentId })));
    const unknownSnapshot = await jsError(() => ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: 'snap-0123456789abcdef0' })));
    const completed = await ebs.send(
      new CompleteSnapshotCommand({
        SnapshotId: parentId,
        ChangedBlocksCount: 2,
        Checksum: linearOf(blocks),
        ChecksumAlgorithm: 'SHA256',
        ChecksumAggregationMethod: 'LINEAR',
      }),
    );
    const writeAfterComplete = await jsError(() => putBlock(parentId, 2, blocks[0]));

    const childStarted = await ebs.send(new StartSnapshotCommand({ VolumeSize: 1, ParentSnapshotId: parentId }));
    const childId = childStarted.SnapshotId!;
    await putBlock(childId, 5, pattern(`${client}-child-5`));
    await putBlock(childId, 7, pattern(`${client}-child-7`));
    const childComplete = await ebs.send(new CompleteSnapshotCommand({ SnapshotId: childId, ChangedBlocksCount: 2 }));
    const listed = await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: childId }));
    const tokens = new Map(listed.Blocks!.map((b) => [b.BlockIndex!, b.BlockToken!]));
    const childReads: Observed['childReads'] = {};
    for (const index of [0, 5]) {
      const got = await ebs.send(new GetSnapshotBlockCommand({ SnapshotId: childId, BlockIndex: index, BlockToken: tokens.get(index) }));
      const data = Buffer.from(await got.BlockData!.transformToByteArray());
      childReads[String(index)] = { sha: sha256Base64(data), headerChecksum: got.Checksum!, dataLength: got.DataLength! };
    }
    const changed = await ebs.send(new ListChangedBlocksCommand({ FirstSnapshotId: parentId, SecondSnapshotId: childId }));
    const own = await ebs.send(new ListChangedBlocksCommand({ SecondSnapshotId: childId }));
    const invalidBlockToken = await jsError(() =>
      ebs.send(new GetSnapshotBlockCommand({ SnapshotId: childId, BlockIndex: 5, BlockToken: tokens.get(0) })),
    );

    const big = await listAll(async (token) => {
      const page = await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: bigId, MaxResults: 100, NextToken: token }));
      return { entries: page.Blocks ?? [], next: page.NextToken };
    });
    const bigChanged = await listAll(async (token) => {
      const page = await ebs.send(new ListChangedBlocksCommand({ SecondSnapshotId: bigId, MaxResults: 100, NextToken: token }));
      return { entries: page.ChangedBlocks ?? [], next: page.NextToken };
    });
    const firstPage = await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: bigId, MaxResults: 100 }));
    const last = firstPage.Blocks![firstPage.Blocks!.length - 1];
    const bigBlock = await ebs.send(
      new GetSnapshotBlockCommand({ SnapshotId: bigId, BlockIndex: last.BlockIndex, BlockToken: last.BlockToken }),
    );
    const bigData = Buffer.from(await bigBlock.BlockData!.transformToByteArray());
    const invalidPageToken = await jsError(() =>
      ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: childId, NextToken: firstPage.NextToken })),
    );
    const unrelated = await jsError(() => ebs.send(new ListChangedBlocksCommand({ FirstSnapshotId: bigId, SecondSnapshotId: childId })));
    const wrong = makeJsClient(endpoint, { accessKeyId: credentials.accessKeyId, secretAccessKey: 'wrong-secret' });
    const badSignature = await jsError(() => wrong.send(new ListSnapshotBlocksCommand({ SnapshotId: childId })));
    wrong.destroy();

    return {
      parentId,
      start: {
        status: started.Status!,
        blockSize: started.BlockSize!,
        volumeSize: started.VolumeSize!,
        httpStatus: started.$metadata.httpStatusCode!,
      },
      retrySameId: retried.SnapshotId === parentId,
      conflict,
      put: { httpStatus: put.$metadata.httpStatusCode!, checksum: put.Checksum!, expected: sha256Base64(blocks[5]) },
      badChecksum,
      badDataLength,
      readWhilePending,
      unknownSnapshot,
      complete: { status: completed.Status!, httpStatus: completed.$metadata.httpStatusCode! },
      writeAfterComplete,
      childId,
      childParent: childStarted.ParentSnapshotId,
      childComplete: childComplete.Status!,
      childBlocks: listed.Blocks!.map((b) => b.BlockIndex!),
      childReads,
      changed: changed.ChangedBlocks!.map((c) => ({
        index: c.BlockIndex!,
        first: c.FirstBlockToken !== undefined,
        second: c.SecondBlockToken !== undefined,
      })),
      changedNoFirst: own.ChangedBlocks!.map((c) => c.BlockIndex!),
      invalidBlockToken,
      bigPages: big.pages,
      bigIndexes: big.entries.map((b) => b.BlockIndex!),
      bigChangedPages: bigChanged.pages,
      bigChangedIndexes: bigChanged.entries.map((c) => c.BlockIndex!),
      bigRead: { index: last.BlockIndex!, sha: sha256Base64(bigData) },
      invalidPageToken,
      unrelated,
      badSignature,
    };
  } finally {
    ebs.destroy();
  }
}

const PYTHON = '/usr/bin/python3';
const CHILD_TIMEOUT_MS = 60_000;

function run(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { env, timeout: CHILD_TIMEOUT_MS, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

export function boto3Available(): boolean {
  return existsSync(PYTHON) && existsSync('/usr/lib/python3/dist-packages/boto3/__init__.py');
}

export async function driveBoto3(endpoint: string, credentials: TestCredentials, bigId: string): Promise<Observed> {
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'local-ebs-boto3-'));
  const script = path.join(__dirname, 'boto3_conformance.py');
  const result = await run(PYTHON, [script, endpoint, bigId], awsClientEnv(credentials, scratch)).finally(() =>
    rmSync(scratch, { recursive: true, force: true }),
  );
  if (result.code !== 0) throw new Error(`boto3 scenario failed (exit ${result.code}):\n${result.stderr.slice(-4000)}`);
  return JSON.parse(result.stdout) as Observed;
}

/** Debian's awscli if present, else the one on PATH. */
export function awsCliPath(): string | undefined {
  if (existsSync('/usr/bin/aws')) return '/usr/bin/aws';
  for (const dir of (process.env.PATH ?? '').split(':')) {
    const candidate = path.join(dir, 'aws');
    if (dir && existsSync(candidate)) return candidate;
  }
  return undefined;
}

interface CliResult {
  json: Record<string, unknown>;
  /** The HTTP status of the last response, from the --debug log. */
  status: number | undefined;
}

/** The debug log shows the body as a Python bytes literal: undo its escapes. */
function unescapePythonBytes(text: string): string {
  return text.replace(/\\(x[0-9a-fA-F]{2}|.)/g, (_, escaped: string) => {
    if (escaped.startsWith('x') && escaped.length === 3) return String.fromCharCode(parseInt(escaped.slice(1), 16));
    return ({ n: '\n', r: '\r', t: '\t' } as Record<string, string>)[escaped] ?? escaped;
  });
}

function lastHttpStatus(debugLog: string): number | undefined {
  const statuses = [...debugLog.matchAll(/HTTP\/1\.1" (\d{3})/g)];
  return statuses.length > 0 ? Number(statuses[statuses.length - 1][1]) : undefined;
}

export async function driveAwsCli(endpoint: string, credentials: TestCredentials, bigId: string): Promise<Observed> {
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'local-ebs-cli-'));
  try {
    return await driveAwsCliIn(scratch, endpoint, credentials, bigId);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

async function driveAwsCliIn(scratch: string, endpoint: string, credentials: TestCredentials, bigId: string): Promise<Observed> {
  const awsPath = awsCliPath();
  if (!awsPath) throw new Error('no AWS CLI: install Debian awscli (scripts/setup.sh --test does)');
  const client = 'cli';
  const env = awsClientEnv(credentials, scratch);
  const base = ['--endpoint-url', endpoint, '--region', 'us-east-1', '--output', 'json', '--no-cli-pager'];

  const ok = async (args: string[], useEnv = env): Promise<CliResult> => {
    const result = await run(awsPath, [...base, '--debug', 'ebs', ...args], useEnv);
    if (result.code !== 0) throw new Error(`aws ebs ${args[0]} failed (exit ${result.code}): ${result.stderr.slice(-2000)}`);
    return {
      json: result.stdout.trim() === '' ? {} : (JSON.parse(result.stdout) as Record<string, unknown>),
      status: lastHttpStatus(result.stderr),
    };
  };
  // The CLI prints only the code and message; --debug shows the response body with the Reason.
  const fails = async (args: string[], useEnv = env): Promise<ObservedError> => {
    const result = await run(awsPath, [...base, '--debug', 'ebs', ...args], useEnv);
    if (result.code === 0) return { code: null };
    const code = /An error occurred \(([A-Za-z]+)\)/.exec(result.stderr)?.[1] ?? null;
    const bodyMatch = /Response body:\s*\r?\nb'(\{.*?\})'/.exec(result.stderr);
    let reason: string | null = null;
    let message: string | null = null;
    if (bodyMatch) {
      const body = JSON.parse(unescapePythonBytes(bodyMatch[1])) as { Reason?: string; Message?: string };
      reason = body.Reason ?? null;
      message = body.Message ?? null;
    }
    return { code, reason, message, status: lastHttpStatus(result.stderr) };
  };
  const blockFile = (label: string): { file: string; data: Buffer } => {
    const data = pattern(label);
    const file = path.join(scratch, `${label}.bin`);
    writeFileSync(file, data);
    return { file, data };
  };
  const putArgs = (snapshotId: string, index: number, file: string, checksum: string, dataLength = BLOCK_SIZE_BYTES): string[] => [
    'put-snapshot-block',
    '--snapshot-id',
    snapshotId,
    '--block-index',
    String(index),
    '--block-data',
    file,
    '--data-length',
    String(dataLength),
    '--checksum',
    checksum,
    '--checksum-algorithm',
    'SHA256',
  ];
  const getBlock = async (snapshotId: string, index: number, token: string): Promise<{ data: Buffer; json: Record<string, unknown> }> => {
    const out = path.join(scratch, `get-${snapshotId}-${index}.bin`);
    const result = await ok([
      'get-snapshot-block',
      '--snapshot-id',
      snapshotId,
      '--block-index',
      String(index),
      '--block-token',
      token,
      out,
    ]);
    return { data: readFileSync(out), json: result.json };
  };

  const token = `tok-${client}-${randomUUID()}`;
  const startArgs = [
    'start-snapshot',
    '--volume-size',
    '1',
    '--description',
    `conformance ${client}`,
    '--tags',
    `Key=client,Value=${client}`,
    '--client-token',
    token,
    '--timeout',
    '60',
  ];
  const startResult = await ok(startArgs);
  const started = startResult.json;
  const parentId = started.SnapshotId as string;
  const retried = (await ok(startArgs)).json;
  const conflict = await fails(startArgs.map((arg, i) => (startArgs[i - 1] === '--volume-size' ? '2' : arg)));
  const b0 = blockFile(`${client}-parent-0`);
  const b5 = blockFile(`${client}-parent-5`);
  await ok(putArgs(parentId, 0, b0.file, sha256Base64(b0.data)));
  const putResult = await ok(putArgs(parentId, 5, b5.file, sha256Base64(b5.data)));
  const put = putResult.json;
  const badChecksum = await fails(putArgs(parentId, 1, b0.file, sha256Base64(b5.data)));
  const badDataLength = await fails(putArgs(parentId, 1, b0.file, sha256Base64(b0.data), 1000));
  const readWhilePending = await fails(['list-snapshot-blocks', '--snapshot-id', parentId]);
  const unknownSnapshot = await fails(['list-snapshot-blocks', '--snapshot-id', 'snap-0123456789abcdef0']);
  const linear = linearOf({ 0: b0.data, 5: b5.data });
  const completeResult = await ok([
    'complete-snapshot',
    '--snapshot-id',
    parentId,
    '--changed-blocks-count',
    '2',
    '--checksum',
    linear,
    '--checksum-algorithm',
    'SHA256',
    '--checksum-aggregation-method',
    'LINEAR',
  ]);
  const completed = completeResult.json;
  const writeAfterComplete = await fails(putArgs(parentId, 2, b0.file, sha256Base64(b0.data)));

  const childStarted = (await ok(['start-snapshot', '--volume-size', '1', '--parent-snapshot-id', parentId])).json;
  const childId = childStarted.SnapshotId as string;
  const c5 = blockFile(`${client}-child-5`);
  const c7 = blockFile(`${client}-child-7`);
  await ok(putArgs(childId, 5, c5.file, sha256Base64(c5.data)));
  await ok(putArgs(childId, 7, c7.file, sha256Base64(c7.data)));
  const childComplete = (await ok(['complete-snapshot', '--snapshot-id', childId, '--changed-blocks-count', '2'])).json;
  const listed = (await ok(['list-snapshot-blocks', '--snapshot-id', childId])).json as {
    Blocks: Array<{ BlockIndex: number; BlockToken: string }>;
  };
  const tokens = new Map(listed.Blocks.map((b) => [b.BlockIndex, b.BlockToken]));
  const childReads: Observed['childReads'] = {};
  for (const index of [0, 5]) {
    const got = await getBlock(childId, index, tokens.get(index)!);
    // This CLI prints the header-bound DataLength as the header's text ("524288").
    childReads[String(index)] = {
      sha: sha256Base64(got.data),
      headerChecksum: got.json.Checksum as string,
      dataLength: Number(got.json.DataLength),
    };
  }
  type Changed = { ChangedBlocks: Array<{ BlockIndex: number; FirstBlockToken?: string; SecondBlockToken?: string }>; NextToken?: string };
  const changed = (await ok(['list-changed-blocks', '--first-snapshot-id', parentId, '--second-snapshot-id', childId])).json as Changed;
  const own = (await ok(['list-changed-blocks', '--second-snapshot-id', childId])).json as Changed;
  const invalidBlockToken = await fails([
    'get-snapshot-block',
    '--snapshot-id',
    childId,
    '--block-index',
    '5',
    '--block-token',
    tokens.get(0)!,
    path.join(scratch, 'bad.bin'),
  ]);

  // Pagination by hand (one request per call), so that NextToken passes through the CLI.
  type Blocks = { Blocks: Array<{ BlockIndex: number; BlockToken: string }>; NextToken?: string };
  const big = await listAll(async (next) => {
    const page = (
      await ok([
        'list-snapshot-blocks',
        '--snapshot-id',
        bigId,
        '--max-results',
        '100',
        '--no-paginate',
        ...(next ? ['--next-token', next] : []),
      ])
    ).json as Blocks;
    return { entries: page.Blocks, next: page.NextToken };
  });
  const bigChanged = await listAll(async (next) => {
    const page = (
      await ok([
        'list-changed-blocks',
        '--second-snapshot-id',
        bigId,
        '--max-results',
        '100',
        '--no-paginate',
        ...(next ? ['--next-token', next] : []),
      ])
    ).json as Changed;
    return { entries: page.ChangedBlocks, next: page.NextToken };
  });
  const firstPage = (await ok(['list-snapshot-blocks', '--snapshot-id', bigId, '--max-results', '100', '--no-paginate'])).json as Blocks;
  const last = firstPage.Blocks[firstPage.Blocks.length - 1];
  const bigData = (await getBlock(bigId, last.BlockIndex, last.BlockToken)).data;
  const invalidPageToken = await fails([
    'list-snapshot-blocks',
    '--snapshot-id',
    childId,
    '--next-token',
    firstPage.NextToken!,
    '--no-paginate',
  ]);
  const unrelated = await fails(['list-changed-blocks', '--first-snapshot-id', bigId, '--second-snapshot-id', childId]);
  const badSignature = await fails(['list-snapshot-blocks', '--snapshot-id', childId], { ...env, AWS_SECRET_ACCESS_KEY: 'wrong-secret' });

  return {
    parentId,
    start: {
      status: started.Status as string,
      blockSize: started.BlockSize as number,
      volumeSize: started.VolumeSize as number,
      httpStatus: startResult.status!,
    },
    retrySameId: retried.SnapshotId === parentId,
    conflict,
    put: { httpStatus: putResult.status!, checksum: put.Checksum as string, expected: sha256Base64(b5.data) },
    badChecksum,
    badDataLength,
    readWhilePending,
    unknownSnapshot,
    complete: { status: completed.Status as string, httpStatus: completeResult.status! },
    writeAfterComplete,
    childId,
    childParent: childStarted.ParentSnapshotId as string | undefined,
    childComplete: childComplete.Status as string,
    childBlocks: listed.Blocks.map((b) => b.BlockIndex),
    childReads,
    changed: changed.ChangedBlocks.map((c) => ({
      index: c.BlockIndex,
      first: c.FirstBlockToken !== undefined,
      second: c.SecondBlockToken !== undefined,
    })),
    changedNoFirst: own.ChangedBlocks.map((c) => c.BlockIndex),
    invalidBlockToken,
    bigPages: big.pages,
    bigIndexes: big.entries.map((b) => b.BlockIndex),
    bigChangedPages: bigChanged.pages,
    bigChangedIndexes: bigChanged.entries.map((c) => c.BlockIndex),
    bigRead: { index: last.BlockIndex, sha: sha256Base64(bigData) },
    invalidPageToken,
    unrelated,
    badSignature,
  };
}
