// Pieces shared by upload and download: a completed snapshot's block list read
// one page at a time, a bounded pool that runs work in dispatch order, and the
// figures a progress display shows. Memory stays bounded by the pool's limits
// and one page of the list, whatever the volume size.
import { BLOCK_SIZE_BYTES, BLOCKS_PER_GIB, type BlockEntry, type BlockPage, type SnapshotClient } from '../ebs/client';

/** The model's largest ListSnapshotBlocks page: fewest round trips. */
export const LIST_PAGE_SIZE_MAX = 10_000;
/** The model's smallest page; tests use it to exercise paging. */
export const LIST_PAGE_SIZE_MIN = 100;
/** Pages listed at most (10^8 blocks at the largest page, past any 64 TiB volume). */
const LIST_PAGES_MAX = 20_000;

/** An all-zero block, never written to; compared against and sent as the zeros block. */
export const ZERO_BLOCK: Buffer = Buffer.alloc(BLOCK_SIZE_BYTES);

export function isZeroBlock(data: Buffer): boolean {
  return data.length === BLOCK_SIZE_BYTES ? data.equals(ZERO_BLOCK) : data.every((byte) => byte === 0);
}

/**
 * The blocks of a completed snapshot in ascending index. Each page after a
 * non-empty one is asked for by StartingBlockIndex rather than NextToken, so a
 * page that takes longer than the NextToken's 60 minutes to work through does
 * not break the listing; an empty page (the service may send one) is followed
 * by its NextToken at once.
 */
export class SnapshotBlockList {
  /** The earliest ExpiryTime of the block tokens listed so far. */
  earliestExpiryMs: number;

  private constructor(
    private readonly client: SnapshotClient,
    readonly snapshotId: string,
    readonly volumeSizeGiB: number,
    private readonly firstPage: BlockPage,
    private readonly pageSize: number,
  ) {
    this.earliestExpiryMs = firstPage.expiryTime.getTime();
  }

  /** Lists the first page; fails when the snapshot is unknown, pending or not readable. */
  static async open(client: SnapshotClient, snapshotId: string, pageSize = LIST_PAGE_SIZE_MAX): Promise<SnapshotBlockList> {
    const first = await client.listSnapshotBlocks(snapshotId, { maxResults: pageSize });
    return new SnapshotBlockList(client, snapshotId, first.volumeSizeGiB, first, pageSize);
  }

  get volumeBlocks(): number {
    return this.volumeSizeGiB * BLOCKS_PER_GIB;
  }

  /** Every block once, ascending. Can be iterated once per list. */
  async *entries(): AsyncGenerator<BlockEntry> {
    let page = this.firstPage;
    let lastIndex = -1;
    for (let pages = 1; ; pages += 1) {
      for (const block of page.blocks) {
        if (block.blockIndex <= lastIndex) {
          throw new Error(
            `ListSnapshotBlocks of ${this.snapshotId} returned block ${block.blockIndex} after ${lastIndex}: not in ascending order`,
          );
        }
        if (block.blockIndex >= this.volumeBlocks) {
          throw new Error(
            `ListSnapshotBlocks of ${this.snapshotId} returned block ${block.blockIndex}, past its ${this.volumeSizeGiB} GiB`,
          );
        }
        lastIndex = block.blockIndex;
        yield block;
      }
      if (!page.nextToken) return;
      if (pages >= LIST_PAGES_MAX) throw new Error(`${this.snapshotId} lists more than ${LIST_PAGES_MAX} pages of blocks`);
      page =
        page.blocks.length > 0
          ? await this.client.listSnapshotBlocks(this.snapshotId, { maxResults: this.pageSize, startingBlockIndex: lastIndex + 1 })
          : await this.client.listSnapshotBlocks(this.snapshotId, { maxResults: this.pageSize, nextToken: page.nextToken });
      this.earliestExpiryMs = Math.min(this.earliestExpiryMs, page.expiryTime.getTime());
    }
  }
}

export interface PoolLimits {
  /** Work items running at once. */
  concurrency: number;
  /**
   * No item starts while one dispatched this many items earlier is unfinished,
   * so whatever is kept per finished item until the ones before it finish
   * (results put back in order) stays bounded too.
   */
  windowMax: number;
}

/**
 * Runs work over items with at most `concurrency` at once. Stops dispatching
 * at the first failure or when the signal aborts, waits for the running work,
 * then throws that failure (or the abort reason).
 */
export async function forEachBounded<T>(
  items: AsyncIterable<T>,
  limits: PoolLimits,
  work: (item: T, sequence: number) => Promise<void>,
  signal?: AbortSignal,
): Promise<void> {
  const running = new Map<number, Promise<void>>();
  let failure: { error: unknown } | undefined;
  let next = 0;
  const lowestRunning = (): number => (running.size === 0 ? next : Math.min(...running.keys()));
  const stopped = (): boolean => failure !== undefined || signal?.aborted === true;
  try {
    for await (const item of items) {
      while (!stopped() && (running.size >= limits.concurrency || next - lowestRunning() >= limits.windowMax)) {
        await Promise.race(running.values());
      }
      if (stopped()) break;
      const sequence = next;
      next += 1;
      const task = work(item, sequence)
        .catch((error: unknown) => {
          failure ??= { error };
        })
        .finally(() => running.delete(sequence));
      running.set(sequence, task);
    }
  } catch (error) {
    failure ??= { error };
  }
  await Promise.all(running.values());
  if (failure) throw failure.error;
  if (signal?.aborted) throw signal.reason;
}

/**
 * Results of out-of-order work handed on in dispatch order. With the pool's
 * window, at most windowMax results wait here.
 */
export class InOrder<V> {
  private nextSequence = 0;
  private readonly waiting = new Map<number, V>();

  constructor(private readonly deliver: (value: V) => void) {}

  complete(sequence: number, value: V): void {
    this.waiting.set(sequence, value);
    while (this.waiting.has(this.nextSequence)) {
      const ready = this.waiting.get(this.nextSequence) as V;
      this.waiting.delete(this.nextSequence);
      this.nextSequence += 1;
      this.deliver(ready);
    }
  }
}

/** Live figures of an upload or download, for a progress bar or status lines. */
export interface TransferStats {
  /** The volume's size: the bar's total. */
  volumeBytes: number;
  /** Everything of the volume below this offset is done. */
  doneBytes: number;
  /** Blocks sent (upload) or fetched (download). */
  blocksTransferred: number;
  bytesTransferred: number;
  /** Blocks looked at but not sent (zeros, equal to the parent) or not written (zeros). */
  blocksSkipped: number;
}

export function newTransferStats(): TransferStats {
  return { volumeBytes: 0, doneBytes: 0, blocksTransferred: 0, bytesTransferred: 0, blocksSkipped: 0 };
}
