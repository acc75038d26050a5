// The retry policy on its own: a deterministic fake clock and a scripted inner
// client that fails as told. The thing under test is RetryingSnapshotClient,
// so faking what it wraps is the point, not a shortcut.
import assert from 'node:assert/strict';
import {
  BLOCK_SIZE_BYTES,
  SnapshotApiError,
  type FailureKind,
  type PutBlockParams,
  type SnapshotClient,
  type StartSnapshotParams,
  type StartedSnapshot,
} from '../../src/ebs/client';
import {
  DEFAULT_RETRY_POLICY,
  RetryingSnapshotClient,
  systemClock,
  type RetryClock,
  type RetryEvent,
  type RetryPolicy,
} from '../../src/ebs/retry';

class FakeClock implements RetryClock {
  nowValueMs = 0;
  readonly sleeps: number[] = [];
  nowMs(): number {
    return this.nowValueMs;
  }
  sleep(ms: number, signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(signal.reason);
    this.sleeps.push(ms);
    this.nowValueMs += ms;
    return Promise.resolve();
  }
}

/** Sleeps until aborted: for close() during a back-off. */
class StuckClock implements RetryClock {
  sleeping = 0;
  nowMs(): number {
    return 0;
  }
  sleep(_ms: number, signal: AbortSignal): Promise<void> {
    this.sleeping++;
    return new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }));
  }
}

type Outcome = FailureKind | 'ok' | Error;

/** Fails or succeeds as scripted, one outcome per attempt; the last one repeats. */
class ScriptedClient implements SnapshotClient {
  attempts = 0;
  closed = 0;
  readonly startParams: StartSnapshotParams[] = [];
  constructor(
    private readonly script: Outcome[],
    private readonly clock?: FakeClock,
    private readonly attemptDurationMs = 0,
  ) {}

  private async attempt(): Promise<void> {
    const outcome = this.script[Math.min(this.attempts, this.script.length - 1)];
    this.attempts++;
    if (this.clock) this.clock.nowValueMs += this.attemptDurationMs;
    if (outcome === 'ok') return;
    if (outcome instanceof Error) throw outcome;
    throw new SnapshotApiError(`scripted ${outcome} failure ${this.attempts}`, `Scripted${outcome}`, outcome, 500, 'WHY');
  }

  async startSnapshot(params: StartSnapshotParams): Promise<StartedSnapshot> {
    this.startParams.push(params);
    await this.attempt();
    return { snapshotId: 'snap-0123', volumeSizeGiB: params.volumeSizeGiB, blockSizeBytes: BLOCK_SIZE_BYTES, status: 'pending' };
  }
  async putSnapshotBlock(_params: PutBlockParams): Promise<void> {
    await this.attempt();
  }
  async completeSnapshot(): Promise<'completed'> {
    await this.attempt();
    return 'completed';
  }
  async listSnapshotBlocks() {
    await this.attempt();
    return { blocks: [], volumeSizeGiB: 1, expiryTime: new Date(0) };
  }
  async listChangedBlocks() {
    await this.attempt();
    return { changedBlocks: [], volumeSizeGiB: 1, expiryTime: new Date(0) };
  }
  async getSnapshotBlock(): Promise<Buffer> {
    await this.attempt();
    return Buffer.alloc(1);
  }
  close(): void {
    this.closed++;
  }
}

const block: PutBlockParams = { snapshotId: 'snap-0123', blockIndex: 7, data: Buffer.alloc(BLOCK_SIZE_BYTES), checksumBase64: 'x' };

function retrying(inner: SnapshotClient, clock: RetryClock, policy: Partial<RetryPolicy> = {}, random = () => 0.5) {
  const events: RetryEvent[] = [];
  const client = new RetryingSnapshotClient(inner, { policy, clock, random, onRetry: (event) => events.push(event) });
  return { client, events };
}

/** The full-jitter back-off the policy promises, computed from its definition. */
function expectedDelayMs(policy: RetryPolicy, kind: FailureKind, attempt: number, random: number): number {
  const base = kind === 'throttled' ? policy.throttledBaseDelayMs : policy.baseDelayMs;
  return Math.floor(random * Math.min(policy.maxDelayMs, base * 2 ** (attempt - 1)));
}

describe('RetryingSnapshotClient', () => {
  it('retries transient failures until one attempt succeeds, counting the retries', async () => {
    const clock = new FakeClock();
    const inner = new ScriptedClient(['transient', 'transient', 'ok']);
    const { client, events } = retrying(inner, clock);
    await client.putSnapshotBlock(block);
    assert.equal(inner.attempts, 3);
    assert.equal(client.retryCount, 2);
    assert.deepEqual(
      events.map((event) => [event.operation, event.attempt]),
      [
        ['PutSnapshotBlock', 1],
        ['PutSnapshotBlock', 2],
      ],
    );
    assert.deepEqual(
      clock.sleeps,
      events.map((event) => event.delayMs),
    );
  });

  it('fails fast on a permanent error: one attempt, no back-off, the error unchanged', async () => {
    const clock = new FakeClock();
    const inner = new ScriptedClient(['permanent', 'ok']);
    const { client, events } = retrying(inner, clock);
    await assert.rejects(client.putSnapshotBlock(block), (error: unknown) => {
      assert.ok(error instanceof SnapshotApiError);
      assert.equal(error.kind, 'permanent');
      assert.equal(error.message, 'scripted permanent failure 1');
      return true;
    });
    assert.equal(inner.attempts, 1);
    assert.equal(client.retryCount, 0);
    assert.equal(events.length, 0);
    assert.deepEqual(clock.sleeps, []);
  });

  it('treats anything but a SnapshotApiError from the inner client as permanent', async () => {
    const inner = new ScriptedClient([new TypeError('a bug'), 'ok']);
    const { client } = retrying(inner, new FakeClock());
    await assert.rejects(client.completeSnapshot({ snapshotId: 'snap-1', changedBlocksCount: 0 }), (error: unknown) => {
      assert.ok(error instanceof SnapshotApiError);
      assert.equal(error.kind, 'permanent');
      assert.match(error.message, /^CompleteSnapshot: a bug$/);
      return true;
    });
    assert.equal(inner.attempts, 1);
  });

  it('stops at maxAttempts, keeping the last cause, its code and kind', async () => {
    const maxAttempts = 4;
    const inner = new ScriptedClient(['throttled']);
    const { client } = retrying(inner, new FakeClock(), { maxAttempts });
    await assert.rejects(client.getSnapshotBlock('snap-1', 0, 'token'), (error: unknown) => {
      assert.ok(error instanceof SnapshotApiError);
      assert.equal(error.kind, 'throttled');
      assert.equal(error.code, 'Scriptedthrottled');
      assert.equal(error.httpStatus, 500);
      assert.equal(error.reason, 'WHY');
      assert.match(
        error.message,
        new RegExp(
          `^scripted throttled failure ${maxAttempts} \\(gave up after ${maxAttempts} attempts in [0-9.]+ s, the attempt limit\\)$`,
        ),
      );
      return true;
    });
    assert.equal(inner.attempts, maxAttempts);
    assert.equal(client.retryCount, maxAttempts - 1);
  });

  it('stops retrying once the total time is used up, even with attempts left', async () => {
    const clock = new FakeClock();
    const attemptDurationMs = 5000;
    const totalTimeoutMs = 20_000;
    // random 0 gives zero back-off: attempt k ends at k * 5 s, and a retry
    // starts only while k * 5 s + 0 < 20 s, so attempts 1..4 run.
    const expectedAttempts = Math.ceil(totalTimeoutMs / attemptDurationMs);
    const inner = new ScriptedClient(['transient'], clock, attemptDurationMs);
    const { client } = retrying(inner, clock, { maxAttempts: 100, totalTimeoutMs }, () => 0);
    await assert.rejects(client.listSnapshotBlocks('snap-1'), /the time limit\)$/);
    assert.equal(inner.attempts, expectedAttempts);
    assert.ok(clock.nowMs() <= totalTimeoutMs + attemptDurationMs);
  });

  it('does not sleep past the total time: a back-off that would end after it gives up instead', async () => {
    const clock = new FakeClock();
    const policy = { ...DEFAULT_RETRY_POLICY, maxAttempts: 100, baseDelayMs: 1000, maxDelayMs: 8000, totalTimeoutMs: 10_000 };
    const inner = new ScriptedClient(['transient']);
    const { client } = retrying(inner, clock, policy, () => 0.999);
    await assert.rejects(client.putSnapshotBlock(block), /the time limit\)$/);
    assert.ok(clock.nowMs() < policy.totalTimeoutMs, `slept until ${clock.nowMs()} ms`);
    // Each sleep was the full-jitter delay of its attempt.
    clock.sleeps.forEach((ms, i) => assert.equal(ms, expectedDelayMs(policy, 'transient', i + 1, 0.999)));
  });

  it('backs off exponentially with full jitter, capped, with a longer base for throttling', async () => {
    const policy: RetryPolicy = { maxAttempts: 8, baseDelayMs: 100, throttledBaseDelayMs: 1000, maxDelayMs: 5000, totalTimeoutMs: 1e9 };
    for (const kind of ['transient', 'throttled'] as const) {
      for (const random of [0, 0.25, 0.999]) {
        const clock = new FakeClock();
        const inner = new ScriptedClient([kind]);
        const { client, events } = retrying(inner, clock, policy, () => random);
        await assert.rejects(client.putSnapshotBlock(block));
        const expected = Array.from({ length: policy.maxAttempts - 1 }, (_, i) => expectedDelayMs(policy, kind, i + 1, random));
        assert.deepEqual(clock.sleeps, expected, `${kind} at random ${random}`);
        assert.deepEqual(
          events.map((event) => event.delayMs),
          expected,
        );
        assert.ok(clock.sleeps.every((ms) => ms <= policy.maxDelayMs));
      }
    }
    // The cap was reached in that run, and throttling waited longer than transient.
    assert.ok(expectedDelayMs(policy, 'throttled', 7, 0.999) === Math.floor(0.999 * policy.maxDelayMs));
    assert.ok(expectedDelayMs(policy, 'throttled', 1, 0.5) > expectedDelayMs(policy, 'transient', 1, 0.5));
  });

  it('with the defaults, a dead server fails a call in well under 2 minutes', async () => {
    // Worst cases: instant refusals with the longest jitter, and black-holed
    // attempts that each run into a 30 s per-attempt timeout.
    for (const attemptDurationMs of [0, 30_000]) {
      const clock = new FakeClock();
      const inner = new ScriptedClient(['transient'], clock, attemptDurationMs);
      const client = new RetryingSnapshotClient(inner, { clock, random: () => 0.999 });
      await assert.rejects(client.putSnapshotBlock(block), /gave up after/);
      assert.ok(clock.nowMs() <= DEFAULT_RETRY_POLICY.totalTimeoutMs + attemptDurationMs);
      assert.ok(clock.nowMs() < 120_000, `took ${clock.nowMs()} ms`);
      assert.ok(inner.attempts >= 2);
    }
  });

  it('applies per-operation overrides on top of the policy', async () => {
    const inner = new ScriptedClient(['transient']);
    const client = new RetryingSnapshotClient(inner, {
      policy: { maxAttempts: 5 },
      operationPolicies: { StartSnapshot: { maxAttempts: 2 } },
      clock: new FakeClock(),
    });
    await assert.rejects(client.startSnapshot({ volumeSizeGiB: 1 }));
    assert.equal(inner.attempts, 2);
    await assert.rejects(client.putSnapshotBlock(block));
    assert.equal(inner.attempts, 2 + 5);
    assert.equal(client.policyFor('PutSnapshotBlock').maxAttempts, 5);
  });

  it('sends one client token with every attempt of a StartSnapshot, and keeps a given one', async () => {
    const inner = new ScriptedClient(['transient', 'transient', 'ok']);
    const { client } = retrying(inner, new FakeClock());
    await client.startSnapshot({ volumeSizeGiB: 1 });
    const tokens = new Set(inner.startParams.map((params) => params.clientToken));
    assert.equal(inner.startParams.length, 3);
    assert.equal(tokens.size, 1);
    assert.match([...tokens][0] ?? '', /^[0-9a-f-]{36}$/);

    const second = new ScriptedClient(['ok']);
    await retrying(second, new FakeClock()).client.startSnapshot({ volumeSizeGiB: 1, clientToken: 'mine' });
    assert.equal(second.startParams[0].clientToken, 'mine');
  });

  it('close() ends a back-off at once with a permanent ClientClosed, and closes the inner client', async () => {
    const clock = new StuckClock();
    const inner = new ScriptedClient(['transient']);
    const { client } = retrying(inner, clock);
    const pending = client.putSnapshotBlock(block);
    while (clock.sleeping === 0) await new Promise((resolve) => setImmediate(resolve));
    client.close();
    await assert.rejects(pending, (error: unknown) => {
      assert.ok(error instanceof SnapshotApiError);
      assert.equal(error.code, 'ClientClosed');
      assert.equal(error.kind, 'permanent');
      return true;
    });
    assert.equal(inner.closed, 1);
    assert.equal(inner.attempts, 1);
    // Calls after close fail without reaching the inner client.
    await assert.rejects(client.putSnapshotBlock(block), /closed/);
    assert.equal(inner.attempts, 1);
  });

  it('rejects a nonsensical policy', () => {
    const inner = new ScriptedClient(['ok']);
    assert.throws(() => new RetryingSnapshotClient(inner, { policy: { maxAttempts: 0 } }), RangeError);
    assert.throws(() => new RetryingSnapshotClient(inner, { policy: { totalTimeoutMs: Number.NaN } }), RangeError);
  });

  it('many calls in back-off at once raise no listener-leak warning', async () => {
    const warnings: string[] = [];
    const onWarning = (warning: Error): void => {
      warnings.push(warning.name);
    };
    process.on('warning', onWarning);
    try {
      // The first attempt of every call fails, so all of them back off together.
      const calls = 32;
      const inner = new ScriptedClient([...Array<Outcome>(calls).fill('transient'), 'ok']);
      const client = new RetryingSnapshotClient(inner, { policy: { baseDelayMs: 5, maxDelayMs: 5 }, random: () => 0.99 });
      await Promise.all(Array.from({ length: calls }, () => client.putSnapshotBlock(block)));
      assert.equal(client.retryCount, calls);
      // Warnings are emitted on the next tick.
      await new Promise((resolve) => setImmediate(resolve));
    } finally {
      process.off('warning', onWarning);
    }
    assert.deepEqual(
      warnings.filter((name) => name === 'MaxListenersExceededWarning'),
      [],
    );
  });

  it('the system clock sleeps for real and wakes early on abort', async () => {
    const started = Date.now();
    await systemClock.sleep(20, new AbortController().signal);
    assert.ok(Date.now() - started >= 15);
    const controller = new AbortController();
    const sleeping = systemClock.sleep(60_000, controller.signal);
    controller.abort(new Error('stop'));
    await assert.rejects(sleeping, /stop/);
  });
});
