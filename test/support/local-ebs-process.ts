// Runs `node dist/cli.js local-ebs` as a child process for tests: parses the first
// stdout line for the endpoint, keeps stderr for failure messages, and always kills
// the process in cleanup (stop(), kill9(), or stopAllLocalEbsProcesses()).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const REPO_ROOT = path.resolve(__dirname, '..', '..');
export const CLI_PATH = path.join(REPO_ROOT, 'dist', 'cli.js');
const START_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 10_000;
const STDERR_MAX_CHARS = 64 * 1024;

export interface TestCredentials {
  accessKeyId: string;
  secretAccessKey: string;
}

export const TEST_CREDENTIALS: TestCredentials = {
  accessKeyId: 'AKIALOCALEBSTEST0001',
  secretAccessKey: 'local-ebs-test-secret/with+odd=chars',
};

export interface LocalEbsProcess {
  endpoint: string;
  port: number;
  dataDir: string;
  credentials: TestCredentials;
  child: ChildProcess;
  stderr(): string;
  /** SIGTERM and wait; resolves to the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL and wait. */
  kill9(): Promise<void>;
}

export interface StartOptions {
  dataDir?: string;
  faults?: string;
  credentials?: TestCredentials;
  extraArgs?: string[];
}

const running = new Set<ChildProcess>();
const createdDataDirs = new Set<string>();

function waitForExit(child: ChildProcess, timeoutMs: number): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

export function startLocalEbsProcess(options: StartOptions = {}): Promise<LocalEbsProcess> {
  let dataDir = options.dataDir;
  if (dataDir === undefined) {
    dataDir = mkdtempSync(path.join(os.tmpdir(), 'local-ebs-test-'));
    createdDataDirs.add(dataDir);
  }
  // A copy: the JS SDK writes bookkeeping into the credentials objects it is given.
  const credentials = { ...(options.credentials ?? TEST_CREDENTIALS) };
  const args = [
    CLI_PATH,
    'local-ebs',
    '--port',
    '0',
    '--data',
    dataDir,
    '--access-key-id',
    credentials.accessKeyId,
    '--secret-access-key',
    credentials.secretAccessKey,
  ];
  if (options.faults !== undefined) args.push('--faults', options.faults);
  args.push(...(options.extraArgs ?? []));
  const child = spawn(process.execPath, args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  child.once('exit', () => running.delete(child));
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (text: string) => {
    if (stderr.length < STDERR_MAX_CHARS) stderr += text;
  });

  return new Promise((resolve, reject) => {
    let stdout = '';
    const fail = (why: string): void => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`local-ebs did not start: ${why}\nstderr: ${stderr}`));
    };
    const timer = setTimeout(() => fail(`no "listening" line within ${START_TIMEOUT_MS} ms`), START_TIMEOUT_MS);
    child.once('exit', (code, signal) => fail(`exited with ${code ?? signal}`));
    child.stdout!.setEncoding('utf8');
    const onData = (text: string): void => {
      stdout += text;
      const newline = stdout.indexOf('\n');
      if (newline < 0) return;
      child.stdout!.removeListener('data', onData);
      child.removeAllListeners('exit');
      child.once('exit', () => running.delete(child));
      clearTimeout(timer);
      const match = /^local-ebs listening on (http:\/\/127\.0\.0\.1:(\d+))$/.exec(stdout.slice(0, newline));
      if (!match) {
        child.kill('SIGKILL');
        reject(new Error(`unexpected first line from local-ebs: ${stdout.slice(0, newline)}`));
        return;
      }
      // Keep draining stdout so the child never blocks on a full pipe.
      child.stdout!.resume();
      resolve({
        endpoint: match[1],
        port: Number(match[2]),
        dataDir,
        credentials,
        child,
        stderr: () => stderr,
        stop: () => {
          child.kill('SIGTERM');
          return waitForExit(child, STOP_TIMEOUT_MS);
        },
        kill9: async () => {
          child.kill('SIGKILL');
          await waitForExit(child, STOP_TIMEOUT_MS);
        },
      });
    };
    child.stdout!.on('data', onData);
  });
}

/** For after() hooks: nothing a test started outlives it, whatever happened. */
export async function stopAllLocalEbsProcesses(): Promise<void> {
  await Promise.all(
    [...running].map((child) => {
      child.kill('SIGKILL');
      return waitForExit(child, STOP_TIMEOUT_MS);
    }),
  );
}

/** Removes the data directories startLocalEbsProcess made itself; call after stopping. */
export function removeTemporaryDataDirs(): void {
  for (const dir of createdDataDirs) rmSync(dir, { recursive: true, force: true });
  createdDataDirs.clear();
}

process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/**
 * The environment for an AWS CLI or boto3 child: explicit credentials, us-east-1,
 * empty config files of its own and no instance metadata, so that nothing reaches
 * any address but the endpoint the caller passes with --endpoint-url.
 */
export function awsClientEnv(credentials: TestCredentials, scratchDir: string): NodeJS.ProcessEnv {
  const configFile = path.join(scratchDir, 'aws-config');
  const credentialsFile = path.join(scratchDir, 'aws-credentials');
  writeFileSync(configFile, '[default]\nregion = us-east-1\n');
  writeFileSync(credentialsFile, '');
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: scratchDir,
    LANG: 'C.UTF-8',
    AWS_ACCESS_KEY_ID: credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey,
    AWS_REGION: 'us-east-1',
    AWS_DEFAULT_REGION: 'us-east-1',
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_CONFIG_FILE: configFile,
    AWS_SHARED_CREDENTIALS_FILE: credentialsFile,
    AWS_PAGER: '',
    AWS_RETRY_MODE: 'standard',
    AWS_MAX_ATTEMPTS: '1',
  };
  return env;
}
