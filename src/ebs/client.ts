// The one interface the core talks to. Everything above src/ebs sees snapshots
// only through SnapshotClient; the AWS SDK lives behind it (aws-client.ts) and
// the in-memory client (memory-client.ts) stands in for it in core tests.

/** EBS direct APIs move data in fixed 512 KiB blocks. */
export const BLOCK_SIZE_BYTES = 524288;
/** Blocks per GiB of volume (2^30 / 2^19). */
export const BLOCKS_PER_GIB = 2048;
export const VOLUME_SIZE_MAX_GIB = 65536;
/** The documented limit on tags per snapshot. */
export const TAGS_MAX = 50;

export type SnapshotStatus = 'pending' | 'completed' | 'error';

export interface SnapshotTag {
  key: string;
  value: string;
}

export interface StartSnapshotParams {
  volumeSizeGiB: number;
  parentSnapshotId?: string;
  description?: string;
  tags?: SnapshotTag[];
  timeoutMinutes?: number;
  encrypted?: boolean;
  kmsKeyArn?: string;
  clientToken?: string;
}

export interface StartedSnapshot {
  snapshotId: string;
  volumeSizeGiB: number;
  blockSizeBytes: number;
  status: SnapshotStatus;
  parentSnapshotId?: string;
  kmsKeyArn?: string;
}

export interface PutBlockParams {
  snapshotId: string;
  blockIndex: number;
  /** Exactly BLOCK_SIZE_BYTES. A Buffer, so that a retry can resend it. */
  data: Buffer;
  /** base64 SHA-256 of data. */
  checksumBase64: string;
  progressPercent?: number;
}

export interface CompleteSnapshotParams {
  snapshotId: string;
  changedBlocksCount: number;
  /** LINEAR aggregate (checksum.ts); omitted when unknown. */
  linearChecksumBase64?: string;
}

export interface BlockEntry {
  blockIndex: number;
  blockToken: string;
}

export interface BlockPage {
  blocks: BlockEntry[];
  volumeSizeGiB: number;
  expiryTime: Date;
  nextToken?: string;
}

export interface ChangedBlockEntry {
  blockIndex: number;
  firstBlockToken?: string;
  secondBlockToken?: string;
}

export interface ChangedBlockPage {
  changedBlocks: ChangedBlockEntry[];
  volumeSizeGiB: number;
  expiryTime: Date;
  nextToken?: string;
}

export interface ListPageParams {
  maxResults?: number;
  startingBlockIndex?: number;
  nextToken?: string;
}

export interface SnapshotClient {
  startSnapshot(params: StartSnapshotParams): Promise<StartedSnapshot>;
  /** Resolves only once the service acknowledged the block with the checksum sent. */
  putSnapshotBlock(params: PutBlockParams): Promise<void>;
  completeSnapshot(params: CompleteSnapshotParams): Promise<SnapshotStatus>;
  listSnapshotBlocks(snapshotId: string, page?: ListPageParams): Promise<BlockPage>;
  listChangedBlocks(secondSnapshotId: string, firstSnapshotId: string | undefined, page?: ListPageParams): Promise<ChangedBlockPage>;
  /** Returns the block's bytes after checking them against the returned checksum. */
  getSnapshotBlock(snapshotId: string, blockIndex: number, blockToken: string): Promise<Buffer>;
  /** Releases sockets and timers. */
  close(): void;
}

/**
 * How the caller should treat a failure:
 * - transient: a 5xx, a reset, a timeout, "Failed to read block data", or
 *   ResourceNotFound right after StartSnapshot: try again after a back-off.
 * - throttled: RequestThrottledException / ThrottlingException: back off longer.
 * - permanent: validation, access denied, conflict, snapshot gone: trying again
 *   cannot help, so fail fast.
 */
export type FailureKind = 'transient' | 'throttled' | 'permanent';

export class SnapshotApiError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly kind: FailureKind,
    readonly httpStatus?: number,
    readonly reason?: string,
  ) {
    super(message);
    this.name = 'SnapshotApiError';
  }
}
