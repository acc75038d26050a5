// The modeled errors of the EBS direct APIs (AWS's service model) plus the few
// unmodeled ones AWS's front end sends (signature failures, ThrottlingException).
// Each carries everything the HTTP layer needs to write the restJson1 error.

export type ValidationReason =
  | 'INVALID_CUSTOMER_KEY'
  | 'INVALID_PAGE_TOKEN'
  | 'INVALID_BLOCK_TOKEN'
  | 'INVALID_SNAPSHOT_ID'
  | 'UNRELATED_SNAPSHOTS'
  | 'INVALID_BLOCK'
  | 'INVALID_CONTENT_ENCODING'
  | 'INVALID_TAG'
  | 'INVALID_PARAMETER_VALUE'
  | 'INVALID_VOLUME_SIZE'
  | 'CONFLICTING_BLOCK_UPDATE';

export class EbsApiError extends Error {
  constructor(
    /** The x-amzn-ErrorType, e.g. ValidationException. */
    readonly code: string,
    readonly httpStatus: number,
    message: string,
    /** The Reason member, where the model has one. */
    readonly reason?: string,
  ) {
    super(message);
    this.name = code;
  }
}

export function validationError(reason: ValidationReason, message: string): EbsApiError {
  return new EbsApiError('ValidationException', 400, message, reason);
}

export function snapshotNotFound(snapshotId: string): EbsApiError {
  // The message AWS sends for an unknown snapshot.
  return new EbsApiError('ResourceNotFoundException', 404, `The snapshot '${snapshotId}' does not exist.`, 'SNAPSHOT_NOT_FOUND');
}

export function conflictError(message: string): EbsApiError {
  return new EbsApiError('ConflictException', 409, message);
}

export function internalError(): EbsApiError {
  return new EbsApiError('InternalServerException', 500, 'An internal error occurred. Try again later.');
}

export function requestThrottled(reason: 'ACCOUNT_THROTTLED' | 'RESOURCE_LEVEL_THROTTLE', message: string): EbsApiError {
  return new EbsApiError('RequestThrottledException', 400, message, reason);
}

export function throttlingError(): EbsApiError {
  // Account-level throttle: not in the service model, and without a Reason.
  return new EbsApiError('ThrottlingException', 400, 'Rate exceeded');
}

/** Signature and credential failures, named as AWS's front end names them; all 403. */
export function authError(
  code:
    'MissingAuthenticationTokenException' | 'IncompleteSignatureException' | 'UnrecognizedClientException' | 'InvalidSignatureException',
  message: string,
): EbsApiError {
  return new EbsApiError(code, 403, message);
}

/**
 * AccessDeniedException as IAM phrases a missing permission; Reason UNAUTHORIZED_ACCOUNT
 * (the model makes Reason required). `resource` is the snapshot, or `*` when the
 * request names none (StartSnapshot).
 */
export function accessDenied(operation: string, region: string, ownerId: string, resource: string): EbsApiError {
  return new EbsApiError(
    'AccessDeniedException',
    403,
    `User: arn:aws:iam::${ownerId}:user/local-ebs is not authorized to perform: ebs:${operation} on resource: arn:aws:ec2:${region}::snapshot/${resource} because no identity-based policy allows the ebs:${operation} action`,
    'UNAUTHORIZED_ACCOUNT',
  );
}

/** What services behind STS credentials send once the session token has expired. */
export function expiredToken(): EbsApiError {
  return new EbsApiError('ExpiredTokenException', 403, 'The security token included in the request is expired');
}

/** A request that did not arrive in full in time; the SDKs retry this name as transient. */
export function requestTimeout(message: string): EbsApiError {
  return new EbsApiError('RequestTimeoutException', 408, message);
}
