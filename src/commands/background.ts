// `ebs-fuse mount … --background`: the command starts the same mount as a
// detached child process (its own session, so no terminal signal reaches it),
// waits for the child's `SNAPSHOT_ID PATH` line, prints it and exits 0. Until
// then the child's failure is the command's: its lines and exit status are
// passed on. The child logs to a file (--log-file, else one per mountpoint under
// the state directory) of at most LOG_FILE_MAX_BYTES, with one older file
// beside it; `ebs-fuse status` names the file, `ebs-fuse unmount` ends the mount.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync, renameSync, statSync, writeSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import path from 'node:path';
import { makeDirectories } from '../durable-file';
import { describeError, UserError } from '../errors';

/** Set in the child's environment: the file it logs to. */
const BACKGROUND_LOG_VARIABLE = 'EBS_FUSE_BACKGROUND_LOG';
/** Past this the log moves to FILE.1 (replacing the older one): two files at most. */
const LOG_FILE_MAX_BYTES = 8 * 1024 * 1024;
/** StartSnapshot with its retries, the state directory and the FUSE handshake, with room to spare. */
const READY_TIMEOUT_MS = 5 * 60_000;
/** What is passed on of a child that failed before it was ready: its last lines. */
const FAILURE_LINES_MAX = 20;
const FAILURE_BYTES_MAX = 64 * 1024;

/** The log file of this process when it is a background mount, else undefined. */
export function backgroundLogFile(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const file = env[BACKGROUND_LOG_VARIABLE];
  return file && path.isAbsolute(file) ? file : undefined;
}

/** Where a background mount logs without --log-file: one file per mountpoint, so mounting again appends. */
export function defaultLogFile(stateDir: string, mountpoint: string): string {
  const name = `${path
    .basename(mountpoint)
    .replace(/[^A-Za-z0-9._-]/g, '_')
    .slice(0, 64)}-${createHash('sha256').update(mountpoint).digest('hex').slice(0, 8)}.log`;
  return path.join(stateDir, 'logs', name);
}

/**
 * In the background child: standard error, and a copy of standard output, go to
 * the log file, bounded by LOG_FILE_MAX_BYTES. The file was opened by the parent as the child's fd 2 too,
 * which catches what bypasses process.stderr (a native crash).
 */
export function redirectOutputToLog(file: string): void {
  let fd = openSync(file, 'a', 0o600);
  let sizeBytes = fstatSync(fd).size;
  const write = (text: string): void => {
    const bytes = Buffer.from(text);
    if (sizeBytes + bytes.length > LOG_FILE_MAX_BYTES && sizeBytes > 0) {
      try {
        closeSync(fd);
        renameSync(file, `${file}.1`);
      } catch {
        // Rotation is best effort; the cap below still holds for this file.
      }
      fd = openSync(file, 'a', 0o600);
      sizeBytes = fstatSync(fd).size;
    }
    try {
      writeSync(fd, bytes);
      sizeBytes += bytes.length;
    } catch {
      // A full disk must not take the mount down with it.
    }
  };
  const text = (chunk: string | Uint8Array): string => (typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString());
  const stderr = process.stderr as unknown as WritableStream;
  stderr.write = (chunk, ...rest) => {
    write(`${new Date().toISOString()} ${text(chunk)}`);
    rest.find((item): item is () => void => typeof item === 'function')?.();
    return true;
  };
  // stdout still goes to the parent (it waits for the first line), and into the log
  // too, since nobody reads it once the parent is gone.
  const stdout = process.stdout as unknown as WritableStream;
  const toParent = stdout.write.bind(stdout);
  stdout.write = (chunk, ...rest) => {
    write(`${new Date().toISOString()} stdout: ${text(chunk)}`);
    return toParent(chunk, ...rest);
  };
}

interface WritableStream {
  write: (chunk: string | Uint8Array, ...rest: unknown[]) => boolean;
}

/**
 * Starts `ebs-fuse ARGS` (ARGS without --background) in the background and
 * resolves with this command's exit status once the child is ready or failed.
 */
export async function runInBackground(args: string[], logFile: string, mountpoint: string): Promise<number> {
  try {
    await makeDirectories(path.dirname(logFile));
  } catch (error) {
    throw new UserError(`cannot use the log file ${logFile}: ${describeError(error)}; pass --log-file FILE in a writable directory`);
  }
  let logFd: number;
  try {
    logFd = openSync(logFile, 'a', 0o600);
  } catch (error) {
    throw new UserError(`cannot use the log file ${logFile}: ${describeError(error)}; pass --log-file FILE in a writable directory`);
  }
  const startOffset = fstatSync(logFd).size;
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1], ...args], {
    detached: true,
    stdio: ['ignore', 'pipe', logFd],
    env: { ...process.env, [BACKGROUND_LOG_VARIABLE]: logFile },
  });
  closeSync(logFd);

  const outcome = await new Promise<{ line: string } | { exitCode: number } | { timedOut: true }>((resolve) => {
    let buffered = '';
    const timer = setTimeout(() => resolve({ timedOut: true }), READY_TIMEOUT_MS);
    child.stdout!.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      const newline = buffered.indexOf('\n');
      if (newline >= 0) {
        clearTimeout(timer);
        resolve({ line: buffered.slice(0, newline) });
      }
    });
    child.on('error', (error) => {
      clearTimeout(timer);
      process.stderr.write(`ebs-fuse: cannot start the background mount: ${describeError(error)}\n`);
      resolve({ exitCode: 1 });
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      // As a shell reports a child killed by a signal: 128 plus its number.
      resolve({ exitCode: code ?? (signal ? 128 + (osConstants.signals[signal] ?? 0) : 1) });
    });
  });

  if ('line' in outcome) {
    process.stdout.write(`${outcome.line}\n`);
    process.stderr.write(
      `ebs-fuse: mounted in the background (pid ${child.pid}), logging to ${logFile}; end it with: ebs-fuse unmount ${mountpoint}\n`,
    );
    // Later stdout lines of the child have no reader; the mount ignores the broken pipe.
    child.stdout!.destroy();
    child.unref();
    return 0;
  }
  if ('timedOut' in outcome) {
    child.kill('SIGTERM');
    process.stderr.write(
      `ebs-fuse: the background mount was not ready within ${READY_TIMEOUT_MS / 1000} s and was stopped; see ${logFile}\n`,
    );
    return 1;
  }
  for (const line of failureLines(logFile, startOffset)) process.stderr.write(`${line}\n`);
  return outcome.exitCode === 0 ? 1 : outcome.exitCode;
}

/** The child's own lines of the log, from where this start began: what it said before it failed. */
function failureLines(logFile: string, startOffset: number): string[] {
  try {
    const sizeBytes = statSync(logFile).size;
    const from = Math.max(startOffset, sizeBytes - FAILURE_BYTES_MAX);
    const buffer = Buffer.alloc(Math.max(0, sizeBytes - from));
    const fd = openSync(logFile, 'r');
    try {
      readSync(fd, buffer, 0, buffer.length, from);
    } finally {
      closeSync(fd);
    }
    const lines = buffer
      .toString()
      .split('\n')
      .filter((line) => line.length > 0)
      .map((line) => line.replace(/^\d{4}-\d\d-\d\dT[\d:.]+Z /, ''));
    return lines.length > 0 ? lines.slice(-FAILURE_LINES_MAX) : [`ebs-fuse: the background mount failed without a message; see ${logFile}`];
  } catch {
    return [`ebs-fuse: the background mount failed; see ${logFile}`];
  }
}
