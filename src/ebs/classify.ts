// What a failed EBS call means: every error the SDK, the HTTP layer or our own
// timer throws is turned into a code, a kind (transient: worth retrying;
// permanent: a retry cannot change it) and one line for a person, with the fix
// where it is clear. Kept apart from the client so that it is tested on error
// shapes local-ebs never sends.
import type { FailureKind } from './client';
import type { SnapshotOperation } from './retry';

// An error message from the service is quoted up to this length.
export const QUOTED_MESSAGE_MAX_CHARS = 300;

export interface ClassifiedError {
  code: string;
  kind: FailureKind;
  httpStatus?: number;
  reason?: string;
  /** What happened and, where it is clear, what to do; one line. */
  detail: string;
}

export interface ClassifyContext {
  /** ResourceNotFound right after this client's StartSnapshot of the snapshot. */
  resourceNotFoundIsTransient?: boolean;
  /** Set when our own per-attempt timer aborted the attempt. */
  timedOutAfterMs?: number;
  /** The profile asked for, to name it when its credentials are missing. */
  profile?: string;
  /** The call that failed: a write to a snapshot that is gone or not pending needs its own advice. */
  operation?: SnapshotOperation;
}

// A PUT that can never succeed again: the data is safe only where it was written.
const SNAPSHOT_LOST_HINT =
  'nothing more can be written to it: copy the data out (the mounted file still reads it) and start a new snapshot with it (ebs-fuse upload IMAGE)';

const THROTTLING_CODES = new Set([
  'ThrottlingException',
  'RequestThrottledException',
  'Throttling',
  'ThrottledException',
  'TooManyRequestsException',
  'RequestLimitExceeded',
  'SlowDown',
]);

const TRANSIENT_CODES = new Set([
  'InternalServerException',
  'InternalServerError',
  'InternalFailure',
  'ServiceUnavailable',
  'ServiceUnavailableException',
  'RequestTimeout',
  'RequestTimeoutException',
]);

const NETWORK_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ERR_STREAM_PREMATURE_CLOSE',
]);

const CREDENTIAL_HINTS: Record<string, string> = {
  ExpiredTokenException: 'the session token has expired; refresh the credentials (e.g. `aws sso login` or a new AWS_SESSION_TOKEN)',
  ExpiredToken: 'the session token has expired; refresh the credentials (e.g. `aws sso login` or a new AWS_SESSION_TOKEN)',
  RequestExpired: 'the request expired before it arrived; check the system clock',
  UnrecognizedClientException: 'the access key ID is not known to the service; check AWS_ACCESS_KEY_ID or the profile',
  InvalidClientTokenId: 'the access key ID is not known to the service; check AWS_ACCESS_KEY_ID or the profile',
  InvalidAccessKeyId: 'the access key ID is not known to the service; check AWS_ACCESS_KEY_ID or the profile',
  InvalidSignatureException:
    'the request signature was rejected; check that the secret access key belongs to the access key ID, and the system clock',
  SignatureDoesNotMatch:
    'the request signature was rejected; check that the secret access key belongs to the access key ID, and the system clock',
  IncompleteSignatureException: 'the request signature was incomplete; check the credentials',
  MissingAuthenticationTokenException: 'the request was not signed; check the credentials',
  MissingAuthenticationToken: 'the request was not signed; check the credentials',
};

/**
 * Classifies anything the SDK (or the network below it) throws, as AWS's
 * error-retry guidance says: 5xx, throttling, "Failed to read block
 * data", network failures and timeouts are worth retrying; everything a
 * retry cannot change is permanent.
 */
export function classifyEbsError(error: unknown, context: ClassifyContext = {}): ClassifiedError {
  const fields = errorFields(error);
  const { name, code, httpStatus, reason } = fields;
  const quoted = quote(fields.message);
  const status = httpStatus !== undefined ? ` (HTTP ${httpStatus}${reason ? `, ${reason}` : ''})` : reason ? ` (${reason})` : '';

  if (context.timedOutAfterMs !== undefined) {
    return { code: 'RequestTimeout', kind: 'transient', detail: `no complete response within ${context.timedOutAfterMs} ms` };
  }
  if (name === 'CredentialsProviderError' || /could not load credentials/i.test(fields.message)) {
    return {
      code: 'CredentialsNotFound',
      kind: 'permanent',
      detail: context.profile
        ? `no AWS credentials found for profile "${context.profile}" (${quoted}); check that the profile exists in ~/.aws/config or ~/.aws/credentials`
        : `no AWS credentials found (${quoted}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE / --profile, or use --local`,
    };
  }
  if (/region is missing/i.test(fields.message)) {
    return { code: 'RegionMissing', kind: 'permanent', detail: 'no AWS region configured; pass --region REGION or set AWS_REGION' };
  }

  if (httpStatus !== undefined || fields.isServiceError) {
    if (THROTTLING_CODES.has(name) || httpStatus === 429) {
      return { code: name, kind: 'throttled', httpStatus, reason, detail: `${name}${status}: ${quoted}` };
    }
    if (name === 'ValidationException' && /failed to read block data/i.test(fields.message)) {
      return { code: name, kind: 'transient', httpStatus, reason, detail: `${name}${status}: ${quoted}` };
    }
    if (name === 'ResourceNotFoundException') {
      if (context.resourceNotFoundIsTransient) {
        return {
          code: name,
          kind: 'transient',
          httpStatus,
          reason,
          detail: `${name}${status}: ${quoted} (just after StartSnapshot, so retrying)`,
        };
      }
      return {
        code: name,
        kind: 'permanent',
        httpStatus,
        reason,
        detail:
          `${name}${status}: ${quoted}; check the snapshot ID (and the region), and that the snapshot is still there` +
          (context.operation === 'PutSnapshotBlock' ? `; if it is gone, ${SNAPSHOT_LOST_HINT}` : ''),
      };
    }
    if (name === 'AccessDeniedException') {
      return {
        code: name,
        kind: 'permanent',
        httpStatus,
        reason,
        detail: `${name}${status}: ${quoted}; check the credentials and their IAM permissions for the EBS direct APIs (and the KMS key, if encrypted)`,
      };
    }
    const credentialHint = CREDENTIAL_HINTS[name];
    if (credentialHint) {
      return { code: name, kind: 'permanent', httpStatus, reason, detail: `${name}${status}: ${quoted}; ${credentialHint}` };
    }
    if (TRANSIENT_CODES.has(name) || (httpStatus !== undefined && httpStatus >= 500)) {
      return { code: name, kind: 'transient', httpStatus, reason, detail: `${name}${status}: ${quoted}` };
    }
    if (name === 'ValidationException' && reason === 'INVALID_SNAPSHOT_ID' && context.operation === 'PutSnapshotBlock') {
      // The snapshot is no longer pending: failed (idle past its Timeout) or completed.
      return { code: name, kind: 'permanent', httpStatus, reason, detail: `${name}${status}: ${quoted}; ${SNAPSHOT_LOST_HINT}` };
    }
    const hint = PERMANENT_HINTS[name];
    return { code: name, kind: 'permanent', httpStatus, reason, detail: `${name}${status}: ${quoted}${hint ? `; ${hint}` : ''}` };
  }

  if ((code !== undefined && NETWORK_CODES.has(code)) || /socket hang up|premature close/i.test(fields.message)) {
    const label = code ?? 'ECONNRESET';
    const hint =
      label === 'ECONNREFUSED' || label === 'ENOTFOUND' || label === 'EAI_AGAIN'
        ? '; check the endpoint and that the server is running'
        : '';
    // Node's own text ("connect ECONNREFUSED 127.0.0.1:9") adds nothing to the code and URL.
    const extra = fields.message.includes(label) ? '' : `: ${quoted}`;
    return { code: label, kind: 'transient', detail: `${networkVerb(label)} (${label})${extra}${hint}` };
  }
  if (name === 'TimeoutError' || name === 'AbortError') {
    return { code: 'RequestTimeout', kind: 'transient', detail: `timed out: ${quoted}` };
  }
  return {
    code: name || 'UnknownError',
    kind: 'permanent',
    detail: `${name || 'error'}: ${quoted}`,
  };
}

const PERMANENT_HINTS: Record<string, string> = {
  ValidationException: 'the request was refused as invalid; trying again cannot help',
  ConflictException: 'the client token was already used with different parameters; use another --client-token',
  ServiceQuotaExceededException: 'a service quota was reached; request a higher quota or wait for other snapshots to finish',
  ConcurrentLimitExceededException: 'too many snapshots are in progress; complete some first',
};

function networkVerb(code: string): string {
  switch (code) {
    case 'ECONNREFUSED':
      return 'cannot connect, the connection was refused';
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return 'cannot resolve the host name';
    case 'ETIMEDOUT':
      return 'the connection timed out';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'ENETDOWN':
      return 'the network is unreachable';
    default:
      return 'the connection was lost';
  }
}

interface ErrorFields {
  name: string;
  code?: string;
  message: string;
  httpStatus?: number;
  reason?: string;
  isServiceError: boolean;
}

function errorFields(error: unknown): ErrorFields {
  if (!(error instanceof Error)) return { name: 'UnknownError', message: String(error), isServiceError: false };
  const bag = error as Error & {
    code?: unknown;
    Reason?: unknown;
    $fault?: unknown;
    $metadata?: { httpStatusCode?: unknown };
    $response?: { statusCode?: unknown };
    cause?: unknown;
  };
  // Node puts the errno code on the error, or on its cause when it was wrapped.
  let code = typeof bag.code === 'string' ? bag.code : undefined;
  if (code === undefined && bag.cause instanceof Error) {
    const causeCode = (bag.cause as { code?: unknown }).code;
    if (typeof causeCode === 'string') code = causeCode;
  }
  const statusValue = bag.$metadata?.httpStatusCode ?? bag.$response?.statusCode;
  const httpStatus = typeof statusValue === 'number' ? statusValue : undefined;
  return {
    name: error.name,
    code,
    message: error.message,
    httpStatus,
    reason: typeof bag.Reason === 'string' ? bag.Reason : undefined,
    isServiceError: bag.$fault === 'client' || bag.$fault === 'server',
  };
}

/** A service message, on one line and of bounded length. */
function quote(message: string): string {
  // Without its final period, so that "; what to do" can follow it.
  const oneLine = message.replace(/\s+/g, ' ').trim().replace(/\.$/, '') || '(no message)';
  return oneLine.length > QUOTED_MESSAGE_MAX_CHARS ? `${oneLine.slice(0, QUOTED_MESSAGE_MAX_CHARS)}…` : oneLine;
}
