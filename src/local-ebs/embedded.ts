// The embedded local-ebs of `--local`: the server on a worker thread of the
// command's own process. On its own thread it has its own event loop, so on a
// two-core machine it runs beside the mount's FUSE and client work instead of
// taking turns with them (a separate local-ebs process gets that for free).
// It is still this process: its record names this pid, and it stops with us.
import path from 'node:path';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { describeError, UserError } from '../errors';
import { startLocalEbs, type RunningLocalEbs } from './server';

/** What the embedded server needs; the data directory is absolute (a worker cannot chdir). */
export interface EmbeddedLocalEbsOptions {
  dataDir: string;
  accessKeyId: string;
  secretAccessKey: string;
}

export interface EmbeddedLocalEbs {
  endpoint: string;
  close(): Promise<void>;
}

/** Longer than the server's own close grace (5 s), so that it can finish first. */
const CLOSE_TIMEOUT_MS = 10_000;
const START_TIMEOUT_MS = 60_000;
/** Marks the workers this module starts, so that no other worker that loads it starts a server. */
const WORKER_MARK = 'ebsFuseEmbeddedLocalEbs';

type FromWorker =
  | { kind: 'ready'; endpoint: string }
  | { kind: 'failed'; message: string; userError: boolean }
  | { kind: 'log'; line: string }
  | { kind: 'closed' };

/** Starts the server on a worker thread; rejects with its one-line error when it cannot start. */
export async function startEmbeddedLocalEbs(
  options: EmbeddedLocalEbsOptions,
  log: (line: string) => void = () => undefined,
): Promise<EmbeddedLocalEbs> {
  const worker = newWorker(options);
  const messages = new MessageQueue(worker, log);
  const first = await messages.next(START_TIMEOUT_MS);
  if (first?.kind !== 'ready') {
    await worker.terminate();
    if (first?.kind === 'failed') throw first.userError ? new UserError(first.message) : new Error(first.message);
    throw new Error(first === undefined ? `it did not start within ${START_TIMEOUT_MS / 1000} s` : 'its thread ended while starting');
  }
  // Requests to it keep the process alive while they last; the thread alone must not.
  worker.unref();
  let closing: Promise<void> | undefined;
  return {
    endpoint: first.endpoint,
    close: () => {
      closing ??= (async () => {
        worker.postMessage('close');
        const reply = await messages.next(CLOSE_TIMEOUT_MS);
        if (reply?.kind !== 'closed')
          log(`local-ebs: the embedded server did not stop within ${CLOSE_TIMEOUT_MS / 1000} s; ending its thread`);
        await worker.terminate();
      })();
      return closing;
    },
  };
}

function newWorker(options: EmbeddedLocalEbsOptions): Worker {
  // Under tsx (tests, scripts) this file is TypeScript, and a worker does not
  // inherit a loader given to mocha: it loads tsx itself.
  if (path.extname(__filename) === '.ts') {
    const code = `require(${JSON.stringify(require.resolve('tsx/cjs'))}); require(${JSON.stringify(__filename)});`;
    return new Worker(code, { eval: true, workerData: { [WORKER_MARK]: options } });
  }
  return new Worker(__filename, { workerData: { [WORKER_MARK]: options } });
}

/** The worker's messages in order; `next` resolves undefined at the timeout or when the thread has ended. */
class MessageQueue {
  private readonly queued: FromWorker[] = [];
  private waiter?: (message: FromWorker | undefined) => void;
  private ended = false;

  constructor(worker: Worker, log: (line: string) => void) {
    worker.on('message', (message: FromWorker) => {
      if (message.kind === 'log') return log(message.line);
      this.push(message);
    });
    worker.on('error', (error) => log(`local-ebs: the embedded server failed: ${describeError(error)}`));
    worker.on('exit', () => {
      this.ended = true;
      this.waiter?.(undefined);
    });
  }

  next(timeoutMs: number): Promise<FromWorker | undefined> {
    const queued = this.queued.shift();
    if (queued || this.ended) return Promise.resolve(queued);
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.waiter?.(undefined), timeoutMs);
      this.waiter = (message) => {
        clearTimeout(timer);
        this.waiter = undefined;
        resolve(message);
      };
    });
  }

  private push(message: FromWorker): void {
    if (this.waiter) this.waiter(message);
    else this.queued.push(message);
  }
}

async function runInWorker(port: NonNullable<typeof parentPort>, options: EmbeddedLocalEbsOptions): Promise<void> {
  const send = (message: FromWorker): void => port.postMessage(message);
  let server: RunningLocalEbs;
  try {
    server = await startLocalEbs({ ...options, host: '127.0.0.1', port: 0, log: (line) => send({ kind: 'log', line }) });
  } catch (error) {
    const message = describeError(error);
    send({ kind: 'failed', message, userError: error instanceof UserError });
    return;
  }
  port.once('message', () => {
    server
      .close()
      .catch((error: unknown) => send({ kind: 'log', line: `local-ebs: closing the embedded server: ${describeError(error)}` }))
      .finally(() => {
        send({ kind: 'closed' });
        port.close();
      });
  });
  send({ kind: 'ready', endpoint: server.endpoint });
}

const marked = (workerData as Record<string, EmbeddedLocalEbsOptions> | null)?.[WORKER_MARK];
if (!isMainThread && parentPort && marked) void runInWorker(parentPort, marked);
