// Parsers and option sets shared by the commands that start snapshots (mount,
// upload) or take sizes. Each parser either returns the value or throws a
// UserError of one line naming the flag, the value and what is accepted.
import type { Command } from 'commander';
import { TAGS_MAX, VOLUME_SIZE_MAX_GIB, type SnapshotTag, type StartSnapshotParams } from '../ebs/client';
import { UserError } from '../errors';

// Limits of the EBS direct API's service model.
const SNAPSHOT_ID_PATTERN = /^snap-[0-9a-f]+$/;
const SNAPSHOT_ID_MAX_LENGTH = 64;
const DESCRIPTION_MAX_LENGTH = 255;
const TAG_KEY_MAX_LENGTH = 127;
const TAG_VALUE_MAX_LENGTH = 255;
const TIMEOUT_MINUTES_MIN = 10;
const TIMEOUT_MINUTES_MAX = 4320;
const CLIENT_TOKEN_MAX_LENGTH = 255;
const KMS_KEY_ARN_PATTERN = /^arn:aws[a-z-]*:kms:.*:[0-9]{12}:key\/.*$/;
const KMS_KEY_ARN_MAX_LENGTH = 2048;

const SIZE_UNITS_BYTES: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tib: 1024 ** 4,
  kb: 1000,
  mb: 1000 ** 2,
  gb: 1000 ** 3,
  tb: 1000 ** 4,
};

/** "256MiB", "2GiB", "1.5G", "4096": a byte count (K/M/G/T and KiB… are powers of 1024, KB… of 1000). */
export function parseSizeBytes(value: string, flag: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
  const unit = match ? SIZE_UNITS_BYTES[match[2].toLowerCase()] : undefined;
  if (!match || unit === undefined) {
    throw new UserError(`${flag} must be a size such as 256MiB or 2GiB, not "${value}"`);
  }
  const bytes = Math.floor(Number(match[1]) * unit);
  if (!Number.isSafeInteger(bytes)) throw new UserError(`${flag} is too large: "${value}"`);
  return bytes;
}

/** A whole number within [min, max]. */
export function parseInteger(value: string, flag: string, min: number, max: number): number {
  if (!/^\s*-?\d+\s*$/.test(value)) {
    throw new UserError(`${flag} must be a whole number from ${min} to ${max}, not "${value}"`);
  }
  const number = Number(value);
  if (number < min || number > max) {
    throw new UserError(`${flag} must be from ${min} to ${max}, not ${number}`);
  }
  return number;
}

/** A volume size in GiB: 1 to 65536, as EBS allows. */
export function parseVolumeSizeGiB(value: string, flag = '--size'): number {
  if (!/^\s*-?\d+\s*$/.test(value)) {
    throw new UserError(`${flag} must be a whole number of GiB from 1 to ${VOLUME_SIZE_MAX_GIB}, not "${value}"`);
  }
  const gib = Number(value);
  if (gib < 1) throw new UserError(`${flag} must be at least 1 GiB, not ${gib}`);
  if (gib > VOLUME_SIZE_MAX_GIB) {
    throw new UserError(`${flag} must be at most ${VOLUME_SIZE_MAX_GIB} GiB (64 TiB, the EBS limit), not ${gib}`);
  }
  return gib;
}

export function parseSnapshotId(value: string, flag: string): string {
  if (!SNAPSHOT_ID_PATTERN.test(value) || value.length > SNAPSHOT_ID_MAX_LENGTH) {
    throw new UserError(`${flag} must be a snapshot ID such as snap-0123456789abcdef0, not "${value}"`);
  }
  return value;
}

/** KEY=VALUE; the value may be empty, the key may not. */
export function parseTag(value: string): SnapshotTag {
  const equals = value.indexOf('=');
  if (equals <= 0) throw new UserError(`--tag must be KEY=VALUE with a non-empty KEY, not "${value}"`);
  const key = value.slice(0, equals);
  const tagValue = value.slice(equals + 1);
  if (key.length > TAG_KEY_MAX_LENGTH) {
    throw new UserError(`--tag key "${key.slice(0, 20)}…" is longer than ${TAG_KEY_MAX_LENGTH} characters`);
  }
  if (tagValue.length > TAG_VALUE_MAX_LENGTH) {
    throw new UserError(`--tag value for "${key}" is longer than ${TAG_VALUE_MAX_LENGTH} characters`);
  }
  return { key, value: tagValue };
}

/** The raw values commander collects from addSnapshotOptions. */
export interface SnapshotOptionValues {
  parentSnapshotId?: string;
  description?: string;
  tag?: string[];
  timeout?: string;
  encrypted?: boolean;
  kmsKeyArn?: string;
  clientToken?: string;
}

export function addSnapshotOptions(command: Command): Command {
  return command
    .option('--parent-snapshot-id <id>', 'make the new snapshot an incremental child of this completed snapshot')
    .option('--description <text>', `snapshot description (up to ${DESCRIPTION_MAX_LENGTH} characters)`)
    .option(
      '--tag <key=value>',
      `tag the snapshot; may be repeated (up to ${TAGS_MAX})`,
      (value: string, previous: string[] | undefined) => [...(previous ?? []), value],
    )
    .option(
      '--timeout <minutes>',
      `minutes the snapshot may stay idle before EBS fails it (${TIMEOUT_MINUTES_MIN}-${TIMEOUT_MINUTES_MAX}, EBS default 60)`,
    )
    .option('--encrypted', 'encrypt the snapshot (not with --parent-snapshot-id, which inherits encryption)')
    .option('--kms-key-arn <arn>', 'KMS key to encrypt with (implies --encrypted unless there is a parent)')
    .option('--client-token <token>', 'makes StartSnapshot idempotent: the same token and options give the same snapshot');
}

/** The StartSnapshot parameters from the snapshot options and a volume size. */
export function snapshotParams(volumeSizeGiB: number, values: SnapshotOptionValues): StartSnapshotParams {
  const params: StartSnapshotParams = { volumeSizeGiB };
  if (values.parentSnapshotId !== undefined) {
    params.parentSnapshotId = parseSnapshotId(values.parentSnapshotId, '--parent-snapshot-id');
  }
  if (values.description !== undefined) {
    if (values.description.length === 0) throw new UserError('--description must not be empty');
    if (values.description.length > DESCRIPTION_MAX_LENGTH) {
      throw new UserError(`--description is longer than ${DESCRIPTION_MAX_LENGTH} characters`);
    }
    params.description = values.description;
  }
  if (values.tag !== undefined) {
    if (values.tag.length > TAGS_MAX) throw new UserError(`at most ${TAGS_MAX} --tag options, not ${values.tag.length}`);
    params.tags = values.tag.map(parseTag);
    const keys = new Set<string>();
    for (const { key } of params.tags) {
      if (keys.has(key)) throw new UserError(`--tag ${key}= is given twice`);
      keys.add(key);
    }
  }
  if (values.timeout !== undefined) {
    params.timeoutMinutes = parseInteger(values.timeout, '--timeout', TIMEOUT_MINUTES_MIN, TIMEOUT_MINUTES_MAX);
  }
  if (values.kmsKeyArn !== undefined) {
    if (!KMS_KEY_ARN_PATTERN.test(values.kmsKeyArn) || values.kmsKeyArn.length > KMS_KEY_ARN_MAX_LENGTH) {
      throw new UserError(`--kms-key-arn must be a KMS key ARN such as arn:aws:kms:REGION:ACCOUNT:key/ID, not "${values.kmsKeyArn}"`);
    }
    params.kmsKeyArn = values.kmsKeyArn;
  }
  if (values.encrypted) {
    if (params.parentSnapshotId !== undefined) {
      // StartSnapshot refuses both (ValidationException): a child inherits its parent's encryption.
      throw new UserError("--encrypted cannot be combined with --parent-snapshot-id: the child takes the parent's encryption");
    }
    params.encrypted = true;
  } else if (params.kmsKeyArn !== undefined && params.parentSnapshotId === undefined) {
    // A key only means something for an encrypted snapshot; with a parent, EBS takes the key alone.
    params.encrypted = true;
  }
  if (values.clientToken !== undefined) {
    if (!/^\S+$/.test(values.clientToken) || values.clientToken.length > CLIENT_TOKEN_MAX_LENGTH) {
      throw new UserError(`--client-token must be 1 to ${CLIENT_TOKEN_MAX_LENGTH} characters without spaces`);
    }
    params.clientToken = values.clientToken;
  }
  return params;
}
