// Spawns `node dist/cli.js mount ...` against a local-ebs endpoint, waits for
// its `SNAPSHOT_ID PATH` line, and always cleans up: kill, then a lazy
// unmount if a mount is left. Every wait has a fixed limit.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { realpathSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { isMountPoint } from '../../src/fuse/mountinfo';

const execFileAsync = promisify(execFile);
const REPOSITORY_ROOT = path.resolve(__dirname, '..', '..');
export const CLI_PATH = path.join(REPOSITORY_ROOT, 'dist', 'cli.js');

const READY_TIMEOUT_MS = 30_000;
const EXIT_TIMEOUT_MS = 120_000;
const KILL_WAIT_MS = 5000;

export interface Endpoint {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** The environment for the CLI: only the given credentials, nothing of the caller's AWS setup. */
export function cliEnvironment(endpoint?: Endpoint, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('AWS_')) env[key] = value;
  }
  env.AWS_REGION = 'us-east-1';
  // No ~/.aws files of whoever runs the tests.
  env.AWS_CONFIG_FILE = '/dev/null';
  env.AWS_SHARED_CREDENTIALS_FILE = '/dev/null';
  if (endpoint) {
    env.AWS_ACCESS_KEY_ID = endpoint.accessKeyId;
    env.AWS_SECRET_ACCESS_KEY = endpoint.secretAccessKey;
  }
  return { ...env, ...extra };
}

/** Runs the CLI to its end (for commands that fail before mounting). */
export function runCli(args: string[], options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI_PATH, ...args], {
      env: options.env ?? cliEnvironment(),
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: options.timeoutMs ?? 30_000,
      killSignal: 'SIGKILL',
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

export interface MountProcessOptions {
  mountpoint: string;
  /** Omitted for --resume and --read-only mounts. */
  sizeGiB?: number;
  endpoint: Endpoint;
  stateDir: string;
  /** More flags, e.g. ['--cache-size', '32MiB']. */
  args?: string[];
  env?: NodeJS.ProcessEnv;
  /** The program and its first arguments; default node and this checkout's dist/cli.js. */
  command?: string[];
}

export class MountProcess {
  readonly stdoutLines: string[] = [];
  stderr = '';
  snapshotId = '';
  filePath = '';
  readonly mountpoint: string;
  private readonly exited: Promise<CliResult>;
  private exitResult: CliResult | undefined;
  private stdoutBuffer = '';
  private readonly lineListeners: Array<() => void> = [];

  private constructor(
    private readonly child: ChildProcess,
    mountpoint: string,
  ) {
    this.mountpoint = realpathSync(mountpoint);
    child.stdout!.on('data', (chunk: Buffer) => {
      this.stdoutBuffer += chunk.toString();
      let newline: number;
      while ((newline = this.stdoutBuffer.indexOf('\n')) >= 0) {
        this.stdoutLines.push(this.stdoutBuffer.slice(0, newline));
        this.stdoutBuffer = this.stdoutBuffer.slice(newline + 1);
        for (const listener of this.lineListeners) listener();
      }
    });
    child.stderr!.on('data', (chunk: Buffer) => {
      this.stderr += chunk.toString();
      if (process.env.EBS_FUSE_TEST_VERBOSE) process.stderr.write(chunk);
    });
    this.exited = new Promise((resolve) => {
      child.on('close', (code, signal) => {
        this.exitResult = { code, signal, stdout: this.stdoutLines.join('\n'), stderr: this.stderr };
        for (const listener of this.lineListeners) listener();
        resolve(this.exitResult);
      });
    });
  }

  static async start(options: MountProcessOptions): Promise<MountProcess> {
    const [program, ...leading] = options.command ?? [process.execPath, CLI_PATH];
    const args = [
      ...leading,
      'mount',
      options.mountpoint,
      ...(options.sizeGiB === undefined ? [] : ['--size', String(options.sizeGiB)]),
      '--endpoint',
      options.endpoint.endpoint,
      '--state-dir',
      options.stateDir,
      ...(options.args ?? []),
    ];
    const child = spawn(program, args, {
      env: options.env ?? cliEnvironment(options.endpoint),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const mount = new MountProcess(child, options.mountpoint);
    try {
      await mount.waitForLines(1, READY_TIMEOUT_MS);
    } catch (error) {
      await mount.cleanup();
      throw error;
    }
    const [snapshotId, filePath] = mount.stdoutLines[0].split(' ');
    mount.snapshotId = snapshotId;
    mount.filePath = filePath;
    return mount;
  }

  get running(): boolean {
    return this.exitResult === undefined;
  }

  signal(signal: NodeJS.Signals): void {
    if (this.running) this.child.kill(signal);
  }

  /** Resolves once stdout has `count` lines; rejects on exit or after timeoutMs. */
  waitForLines(count: number, timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        if (this.stdoutLines.length >= count) {
          finish();
          resolve();
          return true;
        }
        if (this.exitResult) {
          finish();
          reject(
            new Error(
              `mount exited (code ${this.exitResult.code}, signal ${this.exitResult.signal}) before printing ${count} lines; stderr:\n${this.stderr}`,
            ),
          );
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`mount printed ${this.stdoutLines.length} of ${count} lines within ${timeoutMs} ms; stderr:\n${this.stderr}`));
      }, timeoutMs);
      const finish = (): void => {
        clearTimeout(timer);
        const at = this.lineListeners.indexOf(listener);
        if (at >= 0) this.lineListeners.splice(at, 1);
      };
      const listener = (): void => void check();
      this.lineListeners.push(listener);
      check();
    });
  }

  /** Waits for the process to end by itself within timeoutMs. */
  async waitForExit(timeoutMs = EXIT_TIMEOUT_MS): Promise<CliResult> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`mount did not exit within ${timeoutMs} ms; stderr:\n${this.stderr}`)), timeoutMs);
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Sends the signal and waits for the exit. */
  async stop(signal: NodeJS.Signals = 'SIGINT', timeoutMs = EXIT_TIMEOUT_MS): Promise<CliResult> {
    this.signal(signal);
    return this.waitForExit(timeoutMs);
  }

  /** Always safe: kills a process still running and lazily unmounts what it left. */
  async cleanup(): Promise<void> {
    if (this.running) {
      this.child.kill('SIGKILL');
      await Promise.race([this.exited, new Promise((resolve) => setTimeout(resolve, KILL_WAIT_MS))]);
    }
    if (await isMountPoint(this.mountpoint).catch(() => false)) {
      await execFileAsync('fusermount', ['-uz', this.mountpoint]).catch(() => undefined);
    }
  }
}
