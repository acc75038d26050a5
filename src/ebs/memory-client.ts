// An in-memory SnapshotClient: the stand-in for EBS in the core's unit and model
// tests, where the thing under test is the cache and flusher, not the wire.
// It enforces the service rules the core relies on (block size, checksum, states,
// ChangedBlocksCount, LINEAR) so that a core bug shows up as a failed call.
import { randomBytes } from 'node:crypto';
import { linearChecksumBase64, sha256Base64, sha256Digest } from './checksum';
import {
  BLOCK_SIZE_BYTES,
  BLOCKS_PER_GIB,
  type BlockPage,
  type ChangedBlockPage,
  type CompleteSnapshotParams,
  type ListPageParams,
  type PutBlockParams,
  SnapshotApiError,
  type SnapshotClient,
  type SnapshotStatus,
  type StartedSnapshot,
  type StartSnapshotParams,
} from './client';

export type MemoryOperation = 'start' | 'put' | 'complete' | 'list' | 'changed' | 'get';

interface MemorySnapshot {
  id: string;
  volumeSizeGiB: number;
  status: SnapshotStatus;
  parentId?: string;
  /** Blocks PUT to this snapshot itself, by index. */
  ownBlocks: Map<number, Buffer>;
}

export interface MemoryClientOptions {
  /**
   * Called before each operation; a returned error fails it without effect.
   * Lets a test fail uploads on demand.
   */
  failBefore?: (operation: MemoryOperation, detail: { snapshotId?: string; blockIndex?: number }) => SnapshotApiError | undefined;
  /** Delay before each operation resolves, to let concurrency show. */
  latencyMs?: number;
  /** How long listed block tokens stay valid (AWS: 7 days); a GET with an expired token fails. */
  tokenLifetimeMs?: number;
}

const PAGE_SIZE_DEFAULT = 1000;

export class MemorySnapshotClient implements SnapshotClient {
  readonly snapshots = new Map<string, MemorySnapshot>();
  readonly callCounts: Record<MemoryOperation, number> = { start: 0, put: 0, complete: 0, list: 0, changed: 0, get: 0 };
  /** Highest number of PutSnapshotBlock calls in flight at once. */
  maxConcurrentPuts = 0;
  private putsInFlight = 0;
  private readonly putsInFlightByBlock = new Set<string>();
  /** When the tokens last listed for a snapshot expire. */
  private readonly tokenExpiryMs = new Map<string, number>();

  constructor(readonly options: MemoryClientOptions = {}) {}

  async startSnapshot(params: StartSnapshotParams): Promise<StartedSnapshot> {
    await this.enter('start', {});
    if (params.parentSnapshotId !== undefined) {
      const parent = this.mustGet(params.parentSnapshotId);
      if (parent.status !== 'completed') throw permanent('ValidationException', 'parent is not completed');
    }
    const id = `snap-${randomBytes(8).toString('hex')}`;
    this.snapshots.set(id, {
      id,
      volumeSizeGiB: params.volumeSizeGiB,
      status: 'pending',
      parentId: params.parentSnapshotId,
      ownBlocks: new Map(),
    });
    return {
      snapshotId: id,
      volumeSizeGiB: params.volumeSizeGiB,
      blockSizeBytes: BLOCK_SIZE_BYTES,
      status: 'pending',
      parentSnapshotId: params.parentSnapshotId,
    };
  }

  async putSnapshotBlock(params: PutBlockParams): Promise<void> {
    const key = `${params.snapshotId}/${params.blockIndex}`;
    // Two PUTs of one block at once is a core bug (CONFLICTING_BLOCK_UPDATE on AWS).
    if (this.putsInFlightByBlock.has(key)) throw permanent('ValidationException', `concurrent PUT of block ${params.blockIndex}`);
    this.putsInFlightByBlock.add(key);
    this.putsInFlight += 1;
    this.maxConcurrentPuts = Math.max(this.maxConcurrentPuts, this.putsInFlight);
    // Copy now: the caller may reuse the buffer once the call returns.
    const data = Buffer.from(params.data);
    try {
      await this.enter('put', { snapshotId: params.snapshotId, blockIndex: params.blockIndex });
      const snapshot = this.mustGet(params.snapshotId);
      if (snapshot.status !== 'pending') throw permanent('ValidationException', 'snapshot is not pending');
      if (data.length !== BLOCK_SIZE_BYTES) throw permanent('ValidationException', 'DataLength must be 524288');
      if (sha256Base64(data) !== params.checksumBase64) throw permanent('ValidationException', 'checksum mismatch');
      if (params.blockIndex < 0 || params.blockIndex >= snapshot.volumeSizeGiB * BLOCKS_PER_GIB) {
        throw permanent('ValidationException', 'block index out of range');
      }
      snapshot.ownBlocks.set(params.blockIndex, data);
    } finally {
      this.putsInFlight -= 1;
      this.putsInFlightByBlock.delete(key);
    }
  }

  async completeSnapshot(params: CompleteSnapshotParams): Promise<SnapshotStatus> {
    await this.enter('complete', { snapshotId: params.snapshotId });
    const snapshot = this.mustGet(params.snapshotId);
    if (snapshot.status !== 'pending') throw permanent('ValidationException', 'snapshot is not pending');
    if (params.changedBlocksCount !== snapshot.ownBlocks.size) {
      throw permanent('ValidationException', `ChangedBlocksCount ${params.changedBlocksCount} != ${snapshot.ownBlocks.size}`);
    }
    if (params.linearChecksumBase64 !== undefined) {
      const digests = new Map([...snapshot.ownBlocks].map(([index, data]) => [index, sha256Digest(data)]));
      if (linearChecksumBase64(digests) !== params.linearChecksumBase64) throw permanent('ValidationException', 'LINEAR checksum mismatch');
    }
    snapshot.status = 'completed';
    return 'completed';
  }

  async listSnapshotBlocks(snapshotId: string, page: ListPageParams = {}): Promise<BlockPage> {
    await this.enter('list', { snapshotId });
    const snapshot = this.mustGetCompleted(snapshotId);
    const indexes = [...this.visibleBlocks(snapshot).keys()].sort((a, b) => a - b);
    const { slice, nextToken } = paginate(indexes, page);
    return {
      blocks: slice.map((blockIndex) => ({ blockIndex, blockToken: tokenFor(snapshotId, blockIndex) })),
      volumeSizeGiB: snapshot.volumeSizeGiB,
      expiryTime: this.issueTokens(snapshotId),
      nextToken,
    };
  }

  async listChangedBlocks(
    secondSnapshotId: string,
    firstSnapshotId: string | undefined,
    page: ListPageParams = {},
  ): Promise<ChangedBlockPage> {
    await this.enter('changed', { snapshotId: secondSnapshotId });
    const second = this.mustGetCompleted(secondSnapshotId);
    const secondBlocks = this.visibleBlocks(second);
    const firstBlocks =
      firstSnapshotId === undefined ? new Map<number, Buffer>() : this.visibleBlocks(this.mustGetCompleted(firstSnapshotId));
    const indexes = [...new Set([...firstBlocks.keys(), ...secondBlocks.keys()])]
      .filter((index) => firstBlocks.get(index) !== secondBlocks.get(index))
      .sort((a, b) => a - b);
    const { slice, nextToken } = paginate(indexes, page);
    return {
      changedBlocks: slice.map((blockIndex) => ({
        blockIndex,
        firstBlockToken: firstBlocks.has(blockIndex) ? tokenFor(firstSnapshotId!, blockIndex) : undefined,
        secondBlockToken: secondBlocks.has(blockIndex) ? tokenFor(secondSnapshotId, blockIndex) : undefined,
      })),
      volumeSizeGiB: second.volumeSizeGiB,
      expiryTime: this.issueTokens(secondSnapshotId),
      nextToken,
    };
  }

  async getSnapshotBlock(snapshotId: string, blockIndex: number, blockToken: string): Promise<Buffer> {
    await this.enter('get', { snapshotId, blockIndex });
    const snapshot = this.mustGetCompleted(snapshotId);
    const data = this.visibleBlocks(snapshot).get(blockIndex);
    if (data === undefined || blockToken !== tokenFor(snapshotId, blockIndex))
      throw permanent('ValidationException', 'invalid block token');
    if (Date.now() > (this.tokenExpiryMs.get(snapshotId) ?? 0)) throw permanent('ValidationException', 'expired block token');
    return Buffer.from(data);
  }

  close(): void {}

  /** Every block a reader of the snapshot sees: the parent chain, then its own. */
  visibleBlocks(snapshot: MemorySnapshot): Map<number, Buffer> {
    const inherited = snapshot.parentId === undefined ? new Map<number, Buffer>() : this.visibleBlocks(this.mustGet(snapshot.parentId));
    return new Map([...inherited, ...snapshot.ownBlocks]);
  }

  /** Blocks [firstBlock, firstBlock + blockCount) as a reader of the snapshot sees them (zeros where none). */
  imageRange(snapshotId: string, firstBlock: number, blockCount: number): Buffer {
    const image = Buffer.alloc(blockCount * BLOCK_SIZE_BYTES);
    for (const [index, data] of this.visibleBlocks(this.mustGet(snapshotId))) {
      if (index >= firstBlock && index < firstBlock + blockCount) data.copy(image, (index - firstBlock) * BLOCK_SIZE_BYTES);
    }
    return image;
  }

  private issueTokens(snapshotId: string): Date {
    const expiryMs = Date.now() + (this.options.tokenLifetimeMs ?? 7 * 24 * 3600 * 1000);
    this.tokenExpiryMs.set(snapshotId, expiryMs);
    return new Date(expiryMs);
  }

  private async enter(operation: MemoryOperation, detail: { snapshotId?: string; blockIndex?: number }): Promise<void> {
    this.callCounts[operation] += 1;
    if (this.options.latencyMs) await new Promise((resolve) => setTimeout(resolve, this.options.latencyMs));
    const injected = this.options.failBefore?.(operation, detail);
    if (injected) throw injected;
  }

  private mustGet(snapshotId: string): MemorySnapshot {
    const snapshot = this.snapshots.get(snapshotId);
    if (!snapshot)
      throw new SnapshotApiError(
        `The snapshot '${snapshotId}' does not exist.`,
        'ResourceNotFoundException',
        'permanent',
        404,
        'SNAPSHOT_NOT_FOUND',
      );
    return snapshot;
  }

  private mustGetCompleted(snapshotId: string): MemorySnapshot {
    const snapshot = this.mustGet(snapshotId);
    if (snapshot.status !== 'completed') throw permanent('ValidationException', 'snapshot is not completed');
    return snapshot;
  }
}

function permanent(code: string, message: string): SnapshotApiError {
  return new SnapshotApiError(message, code, 'permanent', 400);
}

function tokenFor(snapshotId: string, blockIndex: number): string {
  return Buffer.from(`${snapshotId}:${blockIndex}`).toString('base64');
}

function paginate(indexes: number[], page: ListPageParams): { slice: number[]; nextToken?: string } {
  const start = page.nextToken !== undefined ? Number(Buffer.from(page.nextToken, 'base64').toString()) : 0;
  const fromIndex = page.startingBlockIndex ?? 0;
  const eligible = page.nextToken !== undefined ? indexes.slice(start) : indexes.filter((index) => index >= fromIndex);
  const offset = page.nextToken !== undefined ? start : indexes.length - eligible.length;
  const size = page.maxResults ?? PAGE_SIZE_DEFAULT;
  const slice = eligible.slice(0, size);
  const end = offset + slice.length;
  return { slice, nextToken: end < indexes.length ? Buffer.from(String(end)).toString('base64') : undefined };
}
