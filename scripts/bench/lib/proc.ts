// Child processes of the bench: each is registered with the Cleanup before it
// can outlive anything, runs in its own process group (a Ctrl-C reaches only the
// bench, which then stops its children in order), and can be wrapped in
// rusage-exec.py for its exact peak RSS and CPU time.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Cleanup } from './cleanup';

const RUSAGE_WRAPPER = path.join(__dirname, '..', 'rusage-exec.py');
const STDERR_TAIL_CHARS = 64 * 1024;
const STDOUT_LINES_MAX = 10_000;
const KILL_WAIT_MS = 10_000;

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Rusage {
  maxRssBytes: number;
  userCpuSeconds: number;
  systemCpuSeconds: number;
}

export interface SpawnOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** A file path: run under rusage-exec.py, which writes the child's figures there. */
  rusageFile?: string;
  /** An undo step's own command (umount, losetup -d): allowed while the run is being cleaned up. */
  forCleanup?: boolean;
}

export class Tracked {
  readonly stdoutLines: string[] = [];
  readonly startedAtNs = process.hrtime.bigint();
  exitedAtNs: bigint | undefined;
  exit: ExitInfo | undefined;
  readonly exited: Promise<ExitInfo>;
  private stderrTail = '';
  private stdoutPartial = '';
  private readonly listeners = new Set<() => void>();
  private readonly removeCleanup: () => Promise<void>;

  constructor(
    readonly name: string,
    private readonly child: ChildProcess,
    cleanup: Cleanup,
    private readonly rusageFile?: string,
  ) {
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (text: string) => {
      this.stdoutPartial += text;
      let newline: number;
      while ((newline = this.stdoutPartial.indexOf('\n')) >= 0) {
        if (this.stdoutLines.length < STDOUT_LINES_MAX) this.stdoutLines.push(this.stdoutPartial.slice(0, newline));
        this.stdoutPartial = this.stdoutPartial.slice(newline + 1);
      }
      this.notify();
    });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (text: string) => {
      this.stderrTail = (this.stderrTail + text).slice(-STDERR_TAIL_CHARS);
      if (process.env.BENCH_VERBOSE) process.stderr.write(`[${name}] ${text}`);
    });
    this.exited = new Promise((resolve) => {
      child.on('error', (error) => {
        this.stderrTail += `\nspawn failed: ${error.message}`;
        this.exit ??= { code: null, signal: null };
        this.exitedAtNs ??= process.hrtime.bigint();
        this.notify();
        resolve(this.exit);
      });
      child.on('exit', (code, signal) => {
        this.exitedAtNs = process.hrtime.bigint();
        this.exit = { code, signal };
      });
      // 'close' waits for stdout to drain, so every printed line is in stdoutLines.
      child.on('close', () => {
        this.exitedAtNs ??= process.hrtime.bigint();
        this.exit ??= { code: child.exitCode, signal: child.signalCode };
        this.notify();
        resolve(this.exit);
      });
    });
    this.removeCleanup = cleanup.add(`stop ${name}`, () => this.kill());
    void this.exited.then(() => this.removeCleanup());
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get running(): boolean {
    return this.exit === undefined;
  }

  stderr(): string {
    return this.stderrTail;
  }

  /** Sends a signal to the process itself (rusage-exec.py passes it on), never to its group. */
  signal(signal: NodeJS.Signals): void {
    if (this.running && this.child.pid !== undefined) process.kill(this.child.pid, signal);
  }

  /** SIGKILL to the whole process group (the wrapper and what it runs), then wait. */
  async kill(): Promise<void> {
    if (!this.running || this.child.pid === undefined) return;
    try {
      process.kill(-this.child.pid, 'SIGKILL');
    } catch {
      this.child.kill('SIGKILL');
    }
    await Promise.race([this.exited, sleep(KILL_WAIT_MS)]);
  }

  /** Resolves with stdout line `index` (0-based) once printed; rejects on exit or timeout. */
  waitForLine(index: number, timeoutMs: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (this.stdoutLines.length > index) {
          done();
          resolve(this.stdoutLines[index]);
        } else if (!this.running) {
          done();
          reject(
            new Error(
              `${this.name} exited (${describeExit(this.exit!)}) before printing line ${index + 1}: ${this.stderrTail.trim().slice(-2000)}`,
            ),
          );
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${this.name} printed no line ${index + 1} within ${timeoutMs} ms: ${this.stderrTail.trim().slice(-2000)}`));
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        this.listeners.delete(check);
      };
      this.listeners.add(check);
      check();
    });
  }

  /** Waits for the exit; kills the process and rejects after timeoutMs. */
  async waitForExit(timeoutMs: number): Promise<ExitInfo> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        this.exited,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            void this.kill();
            reject(new Error(`${this.name} did not exit within ${timeoutMs} ms: ${this.stderrTail.trim().slice(-2000)}`));
          }, timeoutMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The wrapper's figures; only after the exit and only with rusageFile. */
  async rusage(): Promise<Rusage> {
    if (!this.rusageFile) throw new Error(`${this.name} was not started under rusage-exec.py`);
    await this.exited;
    const parsed = JSON.parse(await readFile(this.rusageFile, 'utf8')) as Rusage;
    return { maxRssBytes: parsed.maxRssBytes, userCpuSeconds: parsed.userCpuSeconds, systemCpuSeconds: parsed.systemCpuSeconds };
  }

  /** Seconds from the spawn to the exit. */
  get elapsedSeconds(): number {
    if (this.exitedAtNs === undefined) throw new Error(`${this.name} is still running`);
    return Number(this.exitedAtNs - this.startedAtNs) / 1e9;
  }

  private notify(): void {
    for (const listener of [...this.listeners]) listener();
  }
}

export function spawnTracked(cleanup: Cleanup, name: string, command: string, args: string[], options: SpawnOptions = {}): Tracked {
  // Once cleaning up, a benchmark step still running must not start anything new that could outlive it.
  if ((cleanup.interrupted || cleanup.closing) && !options.forCleanup) throw new Error('interrupted');
  const [file, argv] = options.rusageFile ? ['python3', [RUSAGE_WRAPPER, options.rusageFile, '--', command, ...args]] : [command, args];
  const child = spawn(file, argv, {
    env: options.env ?? process.env,
    cwd: options.cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    // Its own process group: a terminal's Ctrl-C reaches the bench only, and kill() can take the group.
    detached: true,
  });
  return new Tracked(name, child, cleanup, options.rusageFile);
}

export interface CommandResult {
  exit: ExitInfo;
  stdout: string;
  stderr: string;
  elapsedSeconds: number;
}

/** Runs a command to its end under a time limit; rejects unless it exits 0 (unless allowFailure). */
export async function run(
  cleanup: Cleanup,
  command: string,
  args: string[],
  options: SpawnOptions & { timeoutMs?: number; allowFailure?: boolean } = {},
): Promise<CommandResult> {
  const tracked = spawnTracked(cleanup, `${command} ${args.join(' ')}`.slice(0, 120), command, args, options);
  const exit = await tracked.waitForExit(options.timeoutMs ?? 120_000);
  const result = { exit, stdout: tracked.stdoutLines.join('\n'), stderr: tracked.stderr(), elapsedSeconds: tracked.elapsedSeconds };
  if (!options.allowFailure && exit.code !== 0) {
    throw new Error(
      `${command} ${args.join(' ')} failed (${describeExit(exit)}): ${result.stderr.trim().slice(-2000) || result.stdout.trim().slice(-2000)}`,
    );
  }
  return result;
}

export function describeExit(exit: ExitInfo): string {
  return exit.signal ? `signal ${exit.signal}` : `exit code ${exit.code}`;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
