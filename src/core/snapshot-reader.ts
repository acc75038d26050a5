// Reads the blocks of a completed snapshot: the parent of an incremental mount,
// or the snapshot of a read-only mount. The block map comes from paginated
// ListSnapshotBlocks and is listed again before its tokens expire; concurrent
// reads of one block share one GetSnapshotBlock; recently read blocks stay in a
// small clean LRU so that sequential small reads fetch each block once.
import { LRUCache } from 'lru-cache';
import { BLOCK_SIZE_BYTES, type SnapshotClient } from '../ebs/client';
import { SnapshotBlockList } from './transfer';

/** List again this long before the tokens' ExpiryTime. */
const TOKEN_REFRESH_MARGIN_MS = 10 * 60_000;

export interface SnapshotReaderOptions {
  /** Fetched blocks kept in memory. */
  cachedBlocksMax: number;
  /** Blocks fetched ahead of a sequential reader, concurrently. */
  readAheadBlocks: number;
}

export class SnapshotReader {
  private tokens = new Map<number, string>();
  private expiryMs = 0;
  private listing?: Promise<void>;
  private readonly fetching = new Map<number, Promise<Buffer>>();
  private readonly recent: LRUCache<number, Buffer>;
  /** Where the last read ended, to notice a sequential reader. */
  private lastReadEndIndex = -1;

  private constructor(
    private readonly client: SnapshotClient,
    readonly snapshotId: string,
    readonly volumeSizeGiB: number,
    private readonly options: SnapshotReaderOptions,
  ) {
    this.recent = new LRUCache<number, Buffer>({ max: Math.max(1, options.cachedBlocksMax) });
  }

  /** Lists the snapshot's blocks; fails if it is not readable (pending, unknown, no access). */
  static async open(client: SnapshotClient, snapshotId: string, options: SnapshotReaderOptions): Promise<SnapshotReader> {
    const list = await SnapshotBlockList.open(client, snapshotId);
    const reader = new SnapshotReader(client, snapshotId, list.volumeSizeGiB, options);
    await reader.list(list);
    return reader;
  }

  /** True when the snapshot holds data for the block. */
  has(index: number): boolean {
    return this.tokens.has(index);
  }

  blockIndexes(): IterableIterator<number> {
    return this.tokens.keys();
  }

  /** The whole block; zeros where the snapshot has none. */
  async readBlock(index: number): Promise<Buffer> {
    if (!this.tokens.has(index)) return Buffer.alloc(BLOCK_SIZE_BYTES);
    const cached = this.recent.get(index);
    if (cached) return cached;
    let pending = this.fetching.get(index);
    if (!pending) {
      pending = this.fetch(index).finally(() => this.fetching.delete(index));
      this.fetching.set(index, pending);
    }
    return pending;
  }

  /** Bytes of one block, fetching ahead when reads are sequential. */
  async readRange(index: number, inBlock: number, count: number): Promise<Buffer> {
    const sequential = index === this.lastReadEndIndex || index === this.lastReadEndIndex + 1;
    this.lastReadEndIndex = index;
    if (sequential && this.options.readAheadBlocks > 0) {
      for (let ahead = index + 1; ahead <= index + this.options.readAheadBlocks; ahead += 1) {
        if (this.tokens.has(ahead) && !this.recent.has(ahead) && !this.fetching.has(ahead)) {
          // A failed read-ahead is only a missed prefetch; the real read retries.
          this.readBlock(ahead).catch(() => {});
        }
      }
    }
    const block = await this.readBlock(index);
    return block.subarray(inBlock, inBlock + count);
  }

  private async fetch(index: number): Promise<Buffer> {
    if (Date.now() > this.expiryMs - TOKEN_REFRESH_MARGIN_MS) await this.relist();
    const token = this.tokens.get(index);
    if (token === undefined) return Buffer.alloc(BLOCK_SIZE_BYTES);
    const data = await this.client.getSnapshotBlock(this.snapshotId, index, token);
    this.recent.set(index, data);
    return data;
  }

  private relist(): Promise<void> {
    if (!this.listing) {
      this.listing = SnapshotBlockList.open(this.client, this.snapshotId)
        .then((list) => this.list(list))
        .finally(() => {
          this.listing = undefined;
        });
    }
    return this.listing;
  }

  private async list(list: SnapshotBlockList): Promise<void> {
    const tokens = new Map<number, string>();
    for await (const block of list.entries()) tokens.set(block.blockIndex, block.blockToken);
    this.tokens = tokens;
    this.expiryMs = list.earliestExpiryMs;
  }
}
