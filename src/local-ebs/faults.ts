// --faults SPEC: faults injected so that clients can be tested against what AWS
// sends under stress. Grammar (docs/SEMANTICS.md, local-ebs):
//   SPEC  := "" | ITEM ("," ITEM)*
//   ITEM  := ("500"|"throttle"|"reset"|"corrupt"|"deny"|"expired") "=" P   P a probability 0..1
//          | "latency=" MS "ms" | "latency=" MS "-" MS "ms"   added delay (uniform range)
//          | "rate=" N                                          PutSnapshotBlock/s per snapshot
//          | "ops=" OP ("+" OP)*                                which operations P-faults and latency hit
//   OP    := put | get | start | complete | list | changed
import { performance } from 'node:perf_hooks';
import { accessDenied, expiredToken, internalError, requestThrottled, throttlingError, type EbsApiError } from './errors';

export const OPERATION_NAMES = {
  start: 'StartSnapshot',
  put: 'PutSnapshotBlock',
  complete: 'CompleteSnapshot',
  get: 'GetSnapshotBlock',
  list: 'ListSnapshotBlocks',
  changed: 'ListChangedBlocks',
} as const;

export type OperationName = (typeof OPERATION_NAMES)[keyof typeof OPERATION_NAMES];
type OperationKey = keyof typeof OPERATION_NAMES;

export interface FaultSpec {
  internalErrorProbability: number;
  throttleProbability: number;
  resetProbability: number;
  corruptProbability: number;
  /** AccessDeniedException: a permanent failure a client must not retry. */
  denyProbability: number;
  /** ExpiredTokenException: credentials that expired under a running client. */
  expiredProbability: number;
  latencyMinMs: number;
  latencyMaxMs: number;
  /** PutSnapshotBlock requests per second per snapshot; 0 = no limit. */
  putsPerSecondPerSnapshot: number;
  operations: ReadonlySet<OperationName>;
}

export class FaultSpecError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FaultSpecError';
  }
}

const LATENCY_MAX_MS = 60_000;
const RATE_MAX = 1_000_000;
const RATE_BUCKETS_MAX = 10_000;

export function emptyFaultSpec(): FaultSpec {
  return {
    internalErrorProbability: 0,
    throttleProbability: 0,
    resetProbability: 0,
    corruptProbability: 0,
    denyProbability: 0,
    expiredProbability: 0,
    latencyMinMs: 0,
    latencyMaxMs: 0,
    putsPerSecondPerSnapshot: 0,
    operations: new Set(Object.values(OPERATION_NAMES)),
  };
}

function parseProbability(key: string, text: string): number {
  if (!/^(0|1|0?\.[0-9]+|[01]\.[0-9]*)$/.test(text) || Number(text) > 1) {
    throw new FaultSpecError(`invalid --faults item ${key}=${text}: the value must be a probability from 0 to 1`);
  }
  return Number(text);
}

function parseMs(item: string, text: string): number {
  if (!/^[0-9]{1,6}$/.test(text) || Number(text) > LATENCY_MAX_MS) {
    throw new FaultSpecError(
      `invalid --faults item ${item}: latency must be whole milliseconds up to ${LATENCY_MAX_MS}, e.g. latency=20ms or latency=0-50ms`,
    );
  }
  return Number(text);
}

export function parseFaultSpec(spec: string): FaultSpec {
  const result = emptyFaultSpec();
  const trimmed = spec.trim();
  if (trimmed === '') return result;
  const seen = new Set<string>();
  for (const rawItem of trimmed.split(',')) {
    const item = rawItem.trim();
    const equals = item.indexOf('=');
    if (equals <= 0) throw new FaultSpecError(`invalid --faults item "${item}": expected KEY=VALUE, e.g. 500=0.1,latency=20ms`);
    const key = item.slice(0, equals).trim();
    const value = item.slice(equals + 1).trim();
    if (seen.has(key)) throw new FaultSpecError(`invalid --faults spec: "${key}" is given twice`);
    seen.add(key);
    switch (key) {
      case '500':
        result.internalErrorProbability = parseProbability(key, value);
        break;
      case 'throttle':
        result.throttleProbability = parseProbability(key, value);
        break;
      case 'reset':
        result.resetProbability = parseProbability(key, value);
        break;
      case 'corrupt':
        result.corruptProbability = parseProbability(key, value);
        break;
      case 'deny':
        result.denyProbability = parseProbability(key, value);
        break;
      case 'expired':
        result.expiredProbability = parseProbability(key, value);
        break;
      case 'latency': {
        const match = /^([0-9]+)(?:-([0-9]+))?ms$/.exec(value);
        if (!match) throw new FaultSpecError(`invalid --faults item ${item}: expected latency=20ms or latency=0-50ms`);
        result.latencyMinMs = parseMs(item, match[1]);
        result.latencyMaxMs = match[2] === undefined ? result.latencyMinMs : parseMs(item, match[2]);
        if (result.latencyMaxMs < result.latencyMinMs) throw new FaultSpecError(`invalid --faults item ${item}: the range is backwards`);
        break;
      }
      case 'rate':
        if (!/^[0-9]{1,7}$/.test(value) || Number(value) < 1 || Number(value) > RATE_MAX) {
          throw new FaultSpecError(`invalid --faults item ${item}: rate must be a whole number of PUTs per second from 1 to ${RATE_MAX}`);
        }
        result.putsPerSecondPerSnapshot = Number(value);
        break;
      case 'ops': {
        const operations = new Set<OperationName>();
        for (const op of value.split('+')) {
          if (!Object.prototype.hasOwnProperty.call(OPERATION_NAMES, op)) {
            throw new FaultSpecError(
              `invalid --faults item ${item}: operations are ${Object.keys(OPERATION_NAMES).join(', ')} joined with +`,
            );
          }
          operations.add(OPERATION_NAMES[op as OperationKey]);
        }
        result.operations = operations;
        break;
      }
      default:
        throw new FaultSpecError(
          `invalid --faults item "${item}": known keys are 500, throttle, reset, corrupt, deny, expired, latency, rate, ops`,
        );
    }
  }
  return result;
}

export type InjectedFault = 'deny' | 'expired' | 'reset' | '500' | 'throttle';

/** What the request-level faults decided for one request. */
export interface RequestFaults {
  /** Answer no sooner than this many ms after the request arrived. */
  delayMs?: number;
  /** Destroy the connection instead of answering. */
  reset: boolean;
  /** Answer this error instead of serving the request. */
  error?: EbsApiError;
  /** The kinds injected, for the server's counters. */
  injected: string[];
}

export class FaultInjector {
  private throttleToggle = false;
  private readonly rateBuckets = new Map<string, { tokens: number; updatedMs: number }>();

  constructor(
    readonly spec: FaultSpec,
    private readonly random: () => number = Math.random,
  ) {}

  /** The one way a spec becomes faults: at start-up, through the admin route and setFaults alike. */
  static fromSpec(spec: string): FaultInjector {
    return new FaultInjector(parseFaultSpec(spec));
  }

  /**
   * The latency and the probabilistic fault of one request, drawn in the
   * documented order. `resource` is the snapshot named in the request, for
   * AccessDenied's message; `region` is the one it was signed for.
   */
  forRequest(operation: OperationName, context: { resource: string; region: string; ownerId: string }): RequestFaults {
    const decided: RequestFaults = { reset: false, injected: [] };
    if (!this.active) return decided;
    const delayMs = this.latencyMs(operation);
    if (delayMs !== undefined) {
      decided.injected.push('latency');
      if (delayMs > 0) decided.delayMs = delayMs;
    }
    const fault = this.draw(operation);
    if (fault === undefined) return decided;
    decided.injected.push(fault);
    if (fault === 'deny') decided.error = accessDenied(operation, context.region.slice(0, 64), context.ownerId, context.resource);
    else if (fault === 'expired') decided.error = expiredToken();
    else if (fault === 'reset') decided.reset = true;
    else if (fault === '500') decided.error = internalError();
    else {
      decided.error = this.nextThrottleIsAccountLevel()
        ? throttlingError()
        : requestThrottled('ACCOUNT_THROTTLED', 'The request was throttled: too many requests for this account.');
    }
    return decided;
  }

  get active(): boolean {
    const s = this.spec;
    return (
      s.internalErrorProbability > 0 ||
      s.throttleProbability > 0 ||
      s.resetProbability > 0 ||
      s.corruptProbability > 0 ||
      s.denyProbability > 0 ||
      s.expiredProbability > 0 ||
      s.latencyMaxMs > 0 ||
      s.putsPerSecondPerSnapshot > 0
    );
  }

  /** The delay drawn for this request, or undefined when no latency fault applies to it. */
  latencyMs(operation: OperationName): number | undefined {
    const { latencyMinMs, latencyMaxMs, operations } = this.spec;
    if (latencyMaxMs === 0 || !operations.has(operation)) return undefined;
    return latencyMinMs + Math.floor(this.random() * (latencyMaxMs - latencyMinMs + 1));
  }

  /** The probabilistic fault for this request, if any. */
  draw(operation: OperationName): InjectedFault | undefined {
    const s = this.spec;
    if (!s.operations.has(operation)) return undefined;
    // The permanent failures first: AWS refuses a request it is not allowed to serve
    // before it could fail in any other way.
    if (s.denyProbability > 0 && this.random() < s.denyProbability) return 'deny';
    if (s.expiredProbability > 0 && this.random() < s.expiredProbability) return 'expired';
    if (s.resetProbability > 0 && this.random() < s.resetProbability) return 'reset';
    if (s.internalErrorProbability > 0 && this.random() < s.internalErrorProbability) return '500';
    if (s.throttleProbability > 0 && this.random() < s.throttleProbability) return 'throttle';
    return undefined;
  }

  /** Alternates, so that clients meet both throttle names AWS sends. */
  nextThrottleIsAccountLevel(): boolean {
    this.throttleToggle = !this.throttleToggle;
    return this.throttleToggle;
  }

  shouldCorrupt(operation: OperationName): boolean {
    return (
      operation === 'GetSnapshotBlock' &&
      this.spec.corruptProbability > 0 &&
      this.spec.operations.has(operation) &&
      this.random() < this.spec.corruptProbability
    );
  }

  /** Token bucket per snapshot (capacity one second's worth); true when this PUT is over the rate. */
  overRate(snapshotId: string): boolean {
    const rate = this.spec.putsPerSecondPerSnapshot;
    if (rate === 0) return false;
    const nowMs = performance.now();
    let bucket = this.rateBuckets.get(snapshotId);
    if (!bucket) {
      if (this.rateBuckets.size >= RATE_BUCKETS_MAX) this.rateBuckets.clear();
      bucket = { tokens: rate, updatedMs: nowMs };
      this.rateBuckets.set(snapshotId, bucket);
    }
    bucket.tokens = Math.min(rate, bucket.tokens + ((nowMs - bucket.updatedMs) * rate) / 1000);
    bucket.updatedMs = nowMs;
    if (bucket.tokens < 1) return true;
    bucket.tokens -= 1;
    return false;
  }
}
