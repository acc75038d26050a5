// The bounds local-ebs puts on connections, so that a slow or hostile client cannot
// hold the server: how long a request may take to arrive, how long an idle
// connection is kept, and how many connections there may be. Each can be set with
// an environment variable (docs/SEMANTICS.md, local-ebs), which is how tests get
// short ones; an explicit option wins over the environment.
import { UserError } from '../errors';

export interface ConnectionLimits {
  /** Time to receive a request's whole header block; a new connection may stay silent this long too. */
  headersTimeoutMs: number;
  /** Time to receive a whole request, headers and body. */
  requestTimeoutMs: number;
  /** How long a connection is kept open after an answer, waiting for the next request. */
  keepAliveTimeoutMs: number;
  /** A connection on which no byte moves either way for this long is closed (e.g. a client that stops reading). */
  idleTimeoutMs: number;
  /** Connections beyond this many are closed as soon as they are accepted. */
  maxConnections: number;
}

export const DEFAULT_CONNECTION_LIMITS: Readonly<ConnectionLimits> = {
  // An SDK sends its headers in one write: 20 s is slack for a loaded machine.
  headersTimeoutMs: 20_000,
  // A 512 KiB PUT body at 10 KiB/s still arrives.
  requestTimeoutMs: 120_000,
  keepAliveTimeoutMs: 10_000,
  // Above the longest latency fault (60 s), which keeps a connection silent on purpose.
  idleTimeoutMs: 120_000,
  maxConnections: 1024,
};

export const CONNECTION_LIMIT_ENV: Readonly<Record<keyof ConnectionLimits, string>> = {
  headersTimeoutMs: 'LOCAL_EBS_HEADERS_TIMEOUT_MS',
  requestTimeoutMs: 'LOCAL_EBS_REQUEST_TIMEOUT_MS',
  keepAliveTimeoutMs: 'LOCAL_EBS_KEEP_ALIVE_TIMEOUT_MS',
  idleTimeoutMs: 'LOCAL_EBS_IDLE_TIMEOUT_MS',
  maxConnections: 'LOCAL_EBS_MAX_CONNECTIONS',
};

const TIMEOUT_MAX_MS = 3_600_000;
const CONNECTIONS_MAX = 65_536;

function upperBound(key: keyof ConnectionLimits): number {
  return key === 'maxConnections' ? CONNECTIONS_MAX : TIMEOUT_MAX_MS;
}

function describeRange(key: keyof ConnectionLimits): string {
  return key === 'maxConnections' ? `a whole number from 1 to ${CONNECTIONS_MAX}` : `whole milliseconds from 1 to ${TIMEOUT_MAX_MS}`;
}

/** The limits set in `env`; an unparsable value is a one-line UserError naming the variable. */
export function connectionLimitsFromEnv(env: NodeJS.ProcessEnv): Partial<ConnectionLimits> {
  const limits: Partial<ConnectionLimits> = {};
  for (const key of Object.keys(CONNECTION_LIMIT_ENV) as Array<keyof ConnectionLimits>) {
    const name = CONNECTION_LIMIT_ENV[key];
    const text = env[name];
    if (text === undefined || text === '') continue;
    if (!/^[0-9]{1,8}$/.test(text) || Number(text) < 1 || Number(text) > upperBound(key)) {
      throw new UserError(`invalid ${name}=${text.slice(0, 40)}: give ${describeRange(key)}`);
    }
    limits[key] = Number(text);
  }
  return limits;
}

/** Defaults, overridden by the environment, overridden by `explicit`; checked as a whole. */
export function resolveConnectionLimits(explicit: Partial<ConnectionLimits> = {}, env: NodeJS.ProcessEnv = process.env): ConnectionLimits {
  const limits: ConnectionLimits = { ...DEFAULT_CONNECTION_LIMITS, ...connectionLimitsFromEnv(env) };
  for (const key of Object.keys(explicit) as Array<keyof ConnectionLimits>) {
    const value = explicit[key];
    if (value === undefined) continue;
    if (!Number.isInteger(value) || value < 1 || value > upperBound(key)) {
      throw new UserError(`invalid local-ebs ${key} ${value}: give ${describeRange(key)}`);
    }
    limits[key] = value;
  }
  // Node refuses a header deadline later than the whole request's.
  if (limits.headersTimeoutMs > limits.requestTimeoutMs) {
    throw new UserError(
      `local-ebs headers timeout ${limits.headersTimeoutMs} ms is longer than the request timeout ${limits.requestTimeoutMs} ms (${CONNECTION_LIMIT_ENV.headersTimeoutMs}, ${CONNECTION_LIMIT_ENV.requestTimeoutMs})`,
    );
  }
  return limits;
}

/**
 * How often Node checks the header and request deadlines. Its default (30 s) would
 * let a slow client overstay a short deadline by that much; a quarter of the
 * shorter deadline, within 50 ms to 1 s, costs one pass over the connections.
 */
export function deadlineCheckIntervalMs(limits: ConnectionLimits): number {
  return Math.min(1000, Math.max(50, Math.floor(Math.min(limits.headersTimeoutMs, limits.requestTimeoutMs) / 4)));
}
