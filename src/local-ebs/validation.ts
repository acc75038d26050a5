// Server-side validation of every constraint in the EBS service model and the API
// reference, both AWS's. The JS client validates nothing, so this is the only place a
// malformed request is caught before it reaches the store or a file path.
import { BLOCK_SIZE_BYTES, BLOCKS_PER_GIB, TAGS_MAX, VOLUME_SIZE_MAX_GIB } from '../ebs/client';
import { validationError } from './errors';

export const SNAPSHOT_ID_PATTERN = /^snap-[0-9a-f]+$/;
export const SNAPSHOT_ID_MAX_LENGTH = 64;
const BASE64_CHARSET = /^[A-Za-z0-9+/=]+$/;
const TOKEN_MAX_LENGTH = 256;
const CHECKSUM_MAX_LENGTH = 64;
const KMS_KEY_ARN_PATTERN = /^arn:aws[a-z-]*:kms:.*:[0-9]{12}:key\/.*$/s;
/** The model's BlockIndex and ChangedBlocksCount are `integer`: 32-bit signed. */
const INT32_MAX = 2 ** 31 - 1;

export const TIMEOUT_MIN_MINUTES = 10;
export const TIMEOUT_MAX_MINUTES = 4320;
export const DEFAULT_TIMEOUT_MINUTES = 60;
export const MAX_RESULTS_MIN = 100;
export const MAX_RESULTS_MAX = 10000;
/** AWS does not document a default page size; the model's maximum keeps round trips few. */
export const DEFAULT_MAX_RESULTS = 10000;

export interface Tag {
  Key: string;
  Value: string;
}

export interface StartSnapshotInput {
  volumeSizeGiB: number;
  parentSnapshotId?: string;
  tags?: Tag[];
  description?: string;
  clientToken?: string;
  encrypted?: boolean;
  kmsKeyArn?: string;
  timeoutMinutes: number;
}

export interface PutBlockHeaders {
  dataLengthBytes: number;
  checksumBase64: string;
  progressPercent?: number;
}

export interface CompleteInput {
  changedBlocksCount: number;
  checksumBase64?: string;
}

export interface PageInput {
  maxResults: number;
  startingBlockIndex: number;
  nextToken?: string;
}

export function blocksInVolume(volumeSizeGiB: number): number {
  return volumeSizeGiB * BLOCKS_PER_GIB;
}

export function validateSnapshotId(value: string | undefined, name = 'SnapshotId'): string {
  if (value === undefined || value === '') {
    throw validationError('INVALID_SNAPSHOT_ID', `${name} is required.`);
  }
  if (value.length > SNAPSHOT_ID_MAX_LENGTH || !SNAPSHOT_ID_PATTERN.test(value)) {
    throw validationError(
      'INVALID_SNAPSHOT_ID',
      `The value of ${name} is not a valid snapshot ID: it must match ^snap-[0-9a-f]+$ and be at most 64 characters.`,
    );
  }
  return value;
}

/** A decimal integer as it appears in a path, header or query: digits only, no sign, no exponent. */
export function parseStrictInt(text: string | undefined): number | undefined {
  if (text === undefined || !/^[0-9]{1,10}$/.test(text)) return undefined;
  const value = Number(text);
  return value <= INT32_MAX ? value : undefined;
}

export function validateBlockIndexText(text: string): number {
  const index = parseStrictInt(text);
  if (index === undefined) {
    throw validationError('INVALID_PARAMETER_VALUE', `BlockIndex must be an integer between 0 and ${INT32_MAX}.`);
  }
  return index;
}

export function checkBlockIndexInVolume(blockIndex: number, volumeSizeGiB: number): void {
  const blocks = blocksInVolume(volumeSizeGiB);
  if (blockIndex >= blocks) {
    throw validationError(
      'INVALID_BLOCK',
      `BlockIndex ${blockIndex} is outside the volume: a ${volumeSizeGiB} GiB volume has blocks 0 to ${blocks - 1}.`,
    );
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** JSON null is treated as absent, as both SDKs do. */
function member(body: Record<string, unknown>, name: string): unknown {
  const value = body[name];
  return value === null ? undefined : value;
}

function isInteger(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value);
}

export function validateStartSnapshot(body: unknown): StartSnapshotInput {
  if (!isObject(body)) {
    throw validationError('INVALID_PARAMETER_VALUE', 'The request body must be a JSON object.');
  }
  const volumeSize = member(body, 'VolumeSize');
  if (volumeSize === undefined) throw validationError('INVALID_VOLUME_SIZE', 'VolumeSize is required.');
  if (!isInteger(volumeSize) || volumeSize < 1 || volumeSize > VOLUME_SIZE_MAX_GIB) {
    throw validationError('INVALID_VOLUME_SIZE', `VolumeSize must be an integer from 1 to ${VOLUME_SIZE_MAX_GIB} (GiB).`);
  }
  const input: StartSnapshotInput = { volumeSizeGiB: volumeSize, timeoutMinutes: DEFAULT_TIMEOUT_MINUTES };

  const parent = member(body, 'ParentSnapshotId');
  if (parent !== undefined) {
    if (typeof parent !== 'string') throw validationError('INVALID_SNAPSHOT_ID', 'ParentSnapshotId must be a string.');
    input.parentSnapshotId = validateSnapshotId(parent, 'ParentSnapshotId');
  }

  const tags = member(body, 'Tags');
  if (tags !== undefined) input.tags = validateTags(tags);

  const description = member(body, 'Description');
  if (description !== undefined) {
    if (typeof description !== 'string' || description.length < 1 || description.length > 255) {
      throw validationError('INVALID_PARAMETER_VALUE', 'Description must be a string of 1 to 255 characters.');
    }
    input.description = description;
  }

  const clientToken = member(body, 'ClientToken');
  if (clientToken !== undefined) {
    if (typeof clientToken !== 'string' || clientToken.length > 255 || !/^\S+$/.test(clientToken)) {
      throw validationError('INVALID_PARAMETER_VALUE', 'ClientToken must be 1 to 255 characters with no whitespace.');
    }
    input.clientToken = clientToken;
  }

  const encrypted = member(body, 'Encrypted');
  if (encrypted !== undefined) {
    if (typeof encrypted !== 'boolean') throw validationError('INVALID_PARAMETER_VALUE', 'Encrypted must be a boolean.');
    input.encrypted = encrypted;
  }

  const kmsKeyArn = member(body, 'KmsKeyArn');
  if (kmsKeyArn !== undefined) {
    if (typeof kmsKeyArn !== 'string' || kmsKeyArn.length < 1 || kmsKeyArn.length > 2048 || !KMS_KEY_ARN_PATTERN.test(kmsKeyArn)) {
      throw validationError(
        'INVALID_CUSTOMER_KEY',
        'KmsKeyArn must be a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID) of at most 2048 characters.',
      );
    }
    input.kmsKeyArn = kmsKeyArn;
  }

  const timeout = member(body, 'Timeout');
  if (timeout !== undefined) {
    if (!isInteger(timeout) || timeout < TIMEOUT_MIN_MINUTES || timeout > TIMEOUT_MAX_MINUTES) {
      throw validationError(
        'INVALID_PARAMETER_VALUE',
        `Timeout must be an integer from ${TIMEOUT_MIN_MINUTES} to ${TIMEOUT_MAX_MINUTES} (minutes).`,
      );
    }
    input.timeoutMinutes = timeout;
  }

  // The model: "You can't specify Encrypted and ParentSnapshotId in the same request."
  if (input.parentSnapshotId !== undefined && input.encrypted !== undefined) {
    throw validationError(
      'INVALID_PARAMETER_VALUE',
      'You cannot specify both ParentSnapshotId and Encrypted: a child snapshot takes its encryption from its parent.',
    );
  }
  return input;
}

function validateTags(tags: unknown): Tag[] {
  if (!Array.isArray(tags)) throw validationError('INVALID_TAG', 'Tags must be a list of {Key, Value}.');
  if (tags.length > TAGS_MAX) throw validationError('INVALID_TAG', `A snapshot can have at most ${TAGS_MAX} tags.`);
  const seen = new Set<string>();
  return tags.map((tag): Tag => {
    if (!isObject(tag)) throw validationError('INVALID_TAG', 'Each tag must be an object {Key, Value}.');
    const key = member(tag, 'Key');
    const value = member(tag, 'Value') ?? '';
    if (typeof key !== 'string' || key.length < 1 || key.length > 127) {
      throw validationError('INVALID_TAG', 'A tag Key must be a string of 1 to 127 characters.');
    }
    if (key.toLowerCase().startsWith('aws:')) {
      throw validationError('INVALID_TAG', `Tag keys starting with "aws:" are reserved: ${key}`);
    }
    if (typeof value !== 'string' || value.length > 255) {
      throw validationError('INVALID_TAG', 'A tag Value must be a string of at most 255 characters.');
    }
    if (seen.has(key)) throw validationError('INVALID_TAG', `Duplicate tag key: ${key}`);
    seen.add(key);
    return { Key: key, Value: value };
  });
}

/** A lower-cased header lookup: HTTP header names are case-insensitive. */
export type HeaderGetter = (lowerCaseName: string) => string | undefined;

function validateChecksumAlgorithm(value: string | undefined, required: boolean): void {
  if (value === undefined) {
    if (required) throw validationError('INVALID_PARAMETER_VALUE', 'The x-amz-Checksum-Algorithm header is required.');
    return;
  }
  if (value !== 'SHA256') {
    throw validationError('INVALID_PARAMETER_VALUE', `ChecksumAlgorithm must be SHA256, not ${truncate(value)}.`);
  }
}

function validateChecksumText(value: string): void {
  if (value.length > CHECKSUM_MAX_LENGTH || !BASE64_CHARSET.test(value)) {
    throw validationError('INVALID_PARAMETER_VALUE', 'Checksum must be a base64 string of at most 64 characters.');
  }
}

export function validatePutHeaders(header: HeaderGetter): PutBlockHeaders {
  const dataLengthText = header('x-amz-data-length');
  if (dataLengthText === undefined) throw validationError('INVALID_PARAMETER_VALUE', 'The x-amz-Data-Length header is required.');
  const dataLength = parseStrictInt(dataLengthText);
  if (dataLength !== BLOCK_SIZE_BYTES) {
    throw validationError('INVALID_PARAMETER_VALUE', `DataLength must be ${BLOCK_SIZE_BYTES}, not ${truncate(dataLengthText)}.`);
  }
  const checksum = header('x-amz-checksum');
  if (checksum === undefined) throw validationError('INVALID_PARAMETER_VALUE', 'The x-amz-Checksum header is required.');
  validateChecksumText(checksum);
  validateChecksumAlgorithm(header('x-amz-checksum-algorithm'), true);
  const result: PutBlockHeaders = { dataLengthBytes: dataLength, checksumBase64: checksum };
  const progressText = header('x-amz-progress');
  if (progressText !== undefined) {
    const progress = parseStrictInt(progressText);
    if (progress === undefined || progress > 100) {
      throw validationError('INVALID_PARAMETER_VALUE', 'Progress must be an integer from 0 to 100.');
    }
    result.progressPercent = progress;
  }
  return result;
}

export function validateCompleteHeaders(header: HeaderGetter): CompleteInput {
  const countText = header('x-amz-changedblockscount');
  if (countText === undefined) throw validationError('INVALID_PARAMETER_VALUE', 'The x-amz-ChangedBlocksCount header is required.');
  const count = parseStrictInt(countText);
  if (count === undefined) throw validationError('INVALID_PARAMETER_VALUE', 'ChangedBlocksCount must be a non-negative integer.');
  const result: CompleteInput = { changedBlocksCount: count };
  const checksum = header('x-amz-checksum');
  const algorithm = header('x-amz-checksum-algorithm');
  const method = header('x-amz-checksum-aggregation-method');
  if (checksum !== undefined) {
    validateChecksumText(checksum);
    result.checksumBase64 = checksum;
  }
  validateChecksumAlgorithm(algorithm, false);
  if (method !== undefined && method !== 'LINEAR') {
    throw validationError('INVALID_PARAMETER_VALUE', `ChecksumAggregationMethod must be LINEAR, not ${truncate(method)}.`);
  }
  if (checksum !== undefined && (algorithm === undefined || method === undefined)) {
    throw validationError('INVALID_PARAMETER_VALUE', 'A Checksum needs ChecksumAlgorithm SHA256 and ChecksumAggregationMethod LINEAR.');
  }
  return result;
}

export function validateBlockToken(token: string | undefined): string {
  if (token === undefined || token === '') throw validationError('INVALID_BLOCK_TOKEN', 'BlockToken is required.');
  if (token.length > TOKEN_MAX_LENGTH || !BASE64_CHARSET.test(token)) {
    throw validationError('INVALID_BLOCK_TOKEN', 'The block token is not valid.');
  }
  return token;
}

export function validatePage(query: ReadonlyMap<string, string>): PageInput {
  const page: PageInput = { maxResults: DEFAULT_MAX_RESULTS, startingBlockIndex: 0 };
  const maxText = query.get('maxResults');
  if (maxText !== undefined) {
    const max = parseStrictInt(maxText);
    if (max === undefined || max < MAX_RESULTS_MIN || max > MAX_RESULTS_MAX) {
      throw validationError('INVALID_PARAMETER_VALUE', `MaxResults must be an integer from ${MAX_RESULTS_MIN} to ${MAX_RESULTS_MAX}.`);
    }
    page.maxResults = max;
  }
  const startText = query.get('startingBlockIndex');
  if (startText !== undefined) {
    const start = parseStrictInt(startText);
    if (start === undefined) throw validationError('INVALID_PARAMETER_VALUE', 'StartingBlockIndex must be a non-negative integer.');
    page.startingBlockIndex = start;
  }
  const token = query.get('pageToken');
  if (token !== undefined) {
    if (token === '' || token.length > TOKEN_MAX_LENGTH || !BASE64_CHARSET.test(token)) {
      throw validationError('INVALID_PAGE_TOKEN', 'The pagination token is not valid.');
    }
    page.nextToken = token;
  }
  return page;
}

/** Echo at most a few characters of a client's value in a message. */
function truncate(value: string): string {
  return value.length > 40 ? `${value.slice(0, 40)}...` : value;
}
