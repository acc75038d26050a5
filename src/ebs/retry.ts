// Our one retry policy for the EBS direct APIs. The SDK below runs with
// maxAttempts 1 (aws-client.ts) so that retries never nest: this layer alone
// decides whether, when and how often a call is tried again, and it bounds
// both the number of attempts and the wall-clock time of a call, so that a
// dead server turns into an error well before a user gives up on the mount.

import { randomUUID } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import {
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

export type SnapshotOperation =
  'StartSnapshot' | 'PutSnapshotBlock' | 'CompleteSnapshot' | 'ListSnapshotBlocks' | 'ListChangedBlocks' | 'GetSnapshotBlock';

export interface RetryPolicy {
  /** Attempts per call, the first one included. */
  maxAttempts: number;
  /** Back-off base for transient failures: attempt n waits up to base * 2^(n-1). */
  baseDelayMs: number;
  /** Back-off base for throttling, longer so that a throttled account gets air. */
  throttledBaseDelayMs: number;
  /** No single back-off is longer than this. */
  maxDelayMs: number;
  /**
   * No retry starts after this much time since the call began. A call can
   * therefore last at most totalTimeoutMs plus one attempt's own timeout.
   */
  totalTimeoutMs: number;
}

// The 60 s total is the bound that matters: it keeps a dead or black-holed
// server from holding a call for more than about 90 s with the 30 s
// per-attempt timeout of aws-client.ts. 20 attempts let back-off (full jitter,
// capped at 10 s) fill that time, so an outage of up to about half a minute is
// ridden out; with 10, refused connections used the attempts up in ~7 s.
export const DEFAULT_RETRY_POLICY: Readonly<RetryPolicy> = Object.freeze({
  maxAttempts: 20,
  baseDelayMs: 100,
  throttledBaseDelayMs: 1000,
  maxDelayMs: 10_000,
  totalTimeoutMs: 60_000,
});

export interface RetryEvent {
  operation: SnapshotOperation;
  /** The attempt that just failed, from 1. */
  attempt: number;
  /** The back-off before the next attempt. */
  delayMs: number;
  error: SnapshotApiError;
}

/** Time as this layer sees it; tests replace it with a fake clock. */
export interface RetryClock {
  nowMs(): number;
  /** Resolves after ms, or rejects as soon as signal aborts. */
  sleep(ms: number, signal: AbortSignal): Promise<void>;
}

export const systemClock: RetryClock = {
  nowMs: () => Date.now(),
  sleep: (ms, signal) =>
    new Promise<void>((resolve, reject) => {
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      const onAbort = (): void => {
        clearTimeout(timer);
        reject(signal.reason);
      };
      const timer = setTimeout(() => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      signal.addEventListener('abort', onAbort, { once: true });
    }),
};

export interface RetryingSnapshotClientOptions {
  policy?: Partial<RetryPolicy>;
  /** Per-operation overrides on top of policy, e.g. a shorter total for StartSnapshot. */
  operationPolicies?: Partial<Record<SnapshotOperation, Partial<RetryPolicy>>>;
  /** Called before each back-off; for logs and status lines. Must not throw. */
  onRetry?: (event: RetryEvent) => void;
  clock?: RetryClock;
  /** Uniform in [0, 1); the jitter source. */
  random?: () => number;
}

export class RetryingSnapshotClient implements SnapshotClient {
  /** Retries made so far over all calls (attempts beyond each call's first). */
  retryCount = 0;
  private readonly policy: RetryPolicy;
  private readonly operationPolicies: Partial<Record<SnapshotOperation, Partial<RetryPolicy>>>;
  private readonly onRetry?: (event: RetryEvent) => void;
  private readonly clock: RetryClock;
  private readonly random: () => number;
  private readonly closing = new AbortController();

  constructor(
    readonly inner: SnapshotClient,
    options: RetryingSnapshotClientOptions = {},
  ) {
    this.policy = checkedPolicy({ ...DEFAULT_RETRY_POLICY, ...options.policy });
    this.operationPolicies = options.operationPolicies ?? {};
    this.onRetry = options.onRetry;
    this.clock = options.clock ?? systemClock;
    this.random = options.random ?? Math.random;
    // Every call in back-off listens on this one signal; their number is bounded
    // by the caller's concurrency, not by Node's default of 10.
    setMaxListeners(0, this.closing.signal);
  }

  startSnapshot(params: StartSnapshotParams): Promise<StartedSnapshot> {
    // Without a token, a StartSnapshot whose response was lost and that is
    // then retried would start a second snapshot; one token for all attempts
    // makes the retry return the first one instead.
    const withToken: StartSnapshotParams = { ...params, clientToken: params.clientToken ?? randomUUID() };
    return this.run('StartSnapshot', () => this.inner.startSnapshot(withToken));
  }

  putSnapshotBlock(params: PutBlockParams): Promise<void> {
    return this.run('PutSnapshotBlock', () => this.inner.putSnapshotBlock(params));
  }

  completeSnapshot(params: CompleteSnapshotParams): Promise<SnapshotStatus> {
    return this.run('CompleteSnapshot', () => this.inner.completeSnapshot(params));
  }

  listSnapshotBlocks(snapshotId: string, page?: ListPageParams): Promise<BlockPage> {
    return this.run('ListSnapshotBlocks', () => this.inner.listSnapshotBlocks(snapshotId, page));
  }

  listChangedBlocks(secondSnapshotId: string, firstSnapshotId: string | undefined, page?: ListPageParams): Promise<ChangedBlockPage> {
    return this.run('ListChangedBlocks', () => this.inner.listChangedBlocks(secondSnapshotId, firstSnapshotId, page));
  }

  getSnapshotBlock(snapshotId: string, blockIndex: number, blockToken: string): Promise<Buffer> {
    return this.run('GetSnapshotBlock', () => this.inner.getSnapshotBlock(snapshotId, blockIndex, blockToken));
  }

  /** Ends every back-off at once (those calls fail) and closes the inner client. */
  close(): void {
    if (!this.closing.signal.aborted) {
      this.closing.abort(new SnapshotApiError('the snapshot client was closed', 'ClientClosed', 'permanent'));
    }
    this.inner.close();
  }

  /** The policy in force for an operation. */
  policyFor(operation: SnapshotOperation): RetryPolicy {
    const override = this.operationPolicies[operation];
    return override ? checkedPolicy({ ...this.policy, ...override }) : this.policy;
  }

  private async run<T>(operation: SnapshotOperation, attempt: () => Promise<T>): Promise<T> {
    const policy = this.policyFor(operation);
    const startMs = this.clock.nowMs();
    for (let attemptNumber = 1; ; attemptNumber++) {
      this.throwIfClosed();
      let error: SnapshotApiError;
      try {
        return await attempt();
      } catch (caught) {
        error = asSnapshotApiError(operation, caught);
      }
      if (this.closing.signal.aborted) throw this.closedError(operation);
      if (error.kind === 'permanent') throw error;
      const elapsedMs = this.clock.nowMs() - startMs;
      if (attemptNumber >= policy.maxAttempts) {
        throw giveUp(error, attemptNumber, elapsedMs, 'attempts');
      }
      const delayMs = this.backoffMs(policy, error, attemptNumber);
      if (elapsedMs + delayMs >= policy.totalTimeoutMs) {
        throw giveUp(error, attemptNumber, elapsedMs, 'time');
      }
      this.retryCount++;
      this.onRetry?.({ operation, attempt: attemptNumber, delayMs, error });
      try {
        await this.clock.sleep(delayMs, this.closing.signal);
      } catch {
        throw this.closedError(operation);
      }
    }
  }

  /** Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))). */
  private backoffMs(policy: RetryPolicy, error: SnapshotApiError, attemptNumber: number): number {
    const baseMs = error.kind === 'throttled' ? policy.throttledBaseDelayMs : policy.baseDelayMs;
    // The exponent is capped so the power cannot overflow to Infinity.
    const ceilingMs = Math.min(policy.maxDelayMs, baseMs * 2 ** Math.min(attemptNumber - 1, 30));
    return Math.floor(this.random() * ceilingMs);
  }

  private throwIfClosed(): void {
    if (this.closing.signal.aborted) throw this.closedError();
  }

  private closedError(operation?: SnapshotOperation): SnapshotApiError {
    const prefix = operation ? `${operation}: ` : '';
    return new SnapshotApiError(`${prefix}the snapshot client was closed`, 'ClientClosed', 'permanent');
  }
}

function giveUp(last: SnapshotApiError, attempts: number, elapsedMs: number, limit: 'attempts' | 'time'): SnapshotApiError {
  const seconds = (elapsedMs / 1000).toFixed(1);
  const why = limit === 'attempts' ? 'the attempt limit' : 'the time limit';
  // The last cause stays first in the message: it is what the user must act on.
  const message = `${last.message} (gave up after ${attempts} attempt${attempts === 1 ? '' : 's'} in ${seconds} s, ${why})`;
  const error = new SnapshotApiError(message, last.code, last.kind, last.httpStatus, last.reason);
  (error as { cause?: unknown }).cause = last;
  return error;
}

/**
 * Anything an inner client throws, as a SnapshotApiError. A client that
 * throws something else has a bug we cannot fix by retrying: permanent.
 */
function asSnapshotApiError(operation: SnapshotOperation, caught: unknown): SnapshotApiError {
  if (caught instanceof SnapshotApiError) return caught;
  const message = caught instanceof Error ? caught.message : String(caught);
  const error = new SnapshotApiError(`${operation}: ${message}`, 'InternalClientError', 'permanent');
  (error as { cause?: unknown }).cause = caught;
  return error;
}

function checkedPolicy(policy: RetryPolicy): RetryPolicy {
  const { maxAttempts, baseDelayMs, throttledBaseDelayMs, maxDelayMs, totalTimeoutMs } = policy;
  if (!Number.isInteger(maxAttempts) || maxAttempts < 1 || maxAttempts > 100) {
    throw new RangeError(`retry maxAttempts must be an integer in 1..100, got ${maxAttempts}`);
  }
  for (const [name, value] of Object.entries({ baseDelayMs, throttledBaseDelayMs, maxDelayMs, totalTimeoutMs })) {
    if (!Number.isFinite(value) || value < 0) throw new RangeError(`retry ${name} must be a finite number >= 0, got ${value}`);
  }
  return policy;
}
