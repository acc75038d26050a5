// What the six operations mean, above the durable store: the snapshot state machine
// (pending -> completed | error), idempotent StartSnapshot, lineage, the idle
// Timeout, CompleteSnapshot's checks, block tokens and pagination. No HTTP here.
// Over 400 lines because the state machine is one piece: every operation checks
// and moves the same per-snapshot state, and split by operation each file would
// need the others' rules.
import { createHash, randomBytes } from 'node:crypto';
import { BLOCK_SIZE_BYTES, type SnapshotStatus } from '../ebs/client';
import { linearChecksumBase64 } from '../ebs/checksum';
import { describeError } from '../errors';
import { EbsApiError, conflictError, snapshotNotFound, validationError } from './errors';
import type { SnapshotMeta, SnapshotStore, StoredSnapshot } from './store';
import type { TokenSigner } from './tokens';
import { blocksInVolume, checkBlockIndexInVolume, type CompleteInput, type PageInput, type StartSnapshotInput } from './validation';

/** The account that owns every local snapshot (AWS's documentation example account). */
export const LOCAL_OWNER_ID = '123456789012';
const IDLE_SWEEP_INTERVAL_MS = 30_000;
const CHANGED_BLOCKS_CACHE_MAX_ENTRIES = 8;
/** Views are rebuilt on demand; the bound keeps many large snapshots from pinning memory. */
const VIEW_CACHE_MAX_ENTRIES = 32;

type JsonObject = Record<string, unknown>;

interface ViewEntry {
  digest: Buffer;
  /** The snapshot whose PUT wrote this version of the block. */
  origin: string;
}

/** The logical content of a completed snapshot: inherited blocks overlaid by its own. */
interface SnapshotView {
  entries: Map<number, ViewEntry>;
  sortedIndexes: number[];
}

interface ChangedEntry {
  blockIndex: number;
  first?: Buffer;
  second?: Buffer;
}

interface Runtime {
  lastActivityMs: number;
  inflightPuts: number;
  drained: Array<() => void>;
  completion?: Promise<SnapshotStatus>;
  statusChange?: Promise<void>;
}

export interface BlockRead {
  data: Buffer;
  digest: Buffer;
}

function seconds(ms: number): number {
  return ms / 1000;
}

function lowerBound(sorted: readonly number[], value: number): number {
  let low = 0;
  let high = sorted.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (sorted[middle] < value) low = middle + 1;
    else high = middle;
  }
  return low;
}

function statusError(snapshot: StoredSnapshot, wanted: 'pending' | 'completed', status: string = snapshot.meta.status): EbsApiError {
  if (wanted === 'pending') {
    return validationError(
      'INVALID_SNAPSHOT_ID',
      `The snapshot '${snapshot.id}' is ${status}: blocks can be written only to a pending snapshot.`,
    );
  }
  return validationError(
    'INVALID_SNAPSHOT_ID',
    `The snapshot '${snapshot.id}' is ${status}: blocks can be read only from a completed snapshot.`,
  );
}

export class EbsService {
  private readonly runtimes = new Map<string, Runtime>();
  private readonly snapshotByClientToken = new Map<string, string>();
  private readonly startsByClientToken = new Map<string, Promise<JsonObject>>();
  private readonly views = new Map<string, SnapshotView>();
  private readonly changedCache = new Map<string, ChangedEntry[]>();
  private readonly sweepTimer: NodeJS.Timeout;

  constructor(
    private readonly store: SnapshotStore,
    private readonly tokens: TokenSigner,
    private readonly now: () => number,
    private readonly log: (line: string) => void,
  ) {
    const startMs = now();
    for (const snapshot of store.all()) {
      // A restart gives pending snapshots a fresh idle period: the server was not
      // there to receive their writes.
      this.runtimes.set(snapshot.id, { lastActivityMs: startMs, inflightPuts: 0, drained: [] });
      if (snapshot.meta.clientToken) this.snapshotByClientToken.set(snapshot.meta.clientToken, snapshot.id);
    }
    this.sweepTimer = setInterval(() => void this.sweepIdle(), IDLE_SWEEP_INTERVAL_MS);
    this.sweepTimer.unref();
  }

  close(): void {
    clearInterval(this.sweepTimer);
  }

  // ---- StartSnapshot ------------------------------------------------------

  async startSnapshot(input: StartSnapshotInput): Promise<JsonObject> {
    const token = input.clientToken;
    if (token === undefined) return this.createSnapshot(input);
    // Serialise starts per token so that two concurrent retries make one snapshot.
    for (;;) {
      const running = this.startsByClientToken.get(token);
      if (!running) break;
      await running.catch(() => undefined);
    }
    const existingId = this.snapshotByClientToken.get(token);
    if (existingId !== undefined) {
      const existing = this.store.get(existingId);
      if (existing && existing.meta.requestFingerprint === fingerprint(input)) {
        await this.refreshIdle(existing);
        return this.describe(existing);
      }
      throw conflictError('The request uses the same client token as a previous, but non-identical request.');
    }
    const creating = this.createSnapshot(input);
    this.startsByClientToken.set(token, creating);
    try {
      return await creating;
    } finally {
      this.startsByClientToken.delete(token);
    }
  }

  private async createSnapshot(input: StartSnapshotInput): Promise<JsonObject> {
    let encrypted = input.encrypted === true;
    let kmsKeyArn = input.kmsKeyArn;
    if (input.parentSnapshotId !== undefined) {
      const parent = this.store.get(input.parentSnapshotId);
      if (!parent) throw snapshotNotFound(input.parentSnapshotId);
      await this.refreshIdle(parent);
      if (parent.meta.status !== 'completed') {
        throw validationError(
          'INVALID_SNAPSHOT_ID',
          `The parent snapshot '${parent.id}' is ${parent.meta.status}: only a completed snapshot can be a parent.`,
        );
      }
      if (input.volumeSizeGiB < parent.meta.volumeSizeGiB) {
        throw validationError(
          'INVALID_VOLUME_SIZE',
          `VolumeSize ${input.volumeSizeGiB} is smaller than the parent snapshot's ${parent.meta.volumeSizeGiB} GiB.`,
        );
      }
      encrypted = parent.meta.encrypted;
      kmsKeyArn = kmsKeyArn ?? parent.meta.kmsKeyArn;
    } else if (kmsKeyArn !== undefined) {
      encrypted = true;
    }
    let snapshotId: string;
    do {
      snapshotId = `snap-${randomBytes(9).toString('hex').slice(0, 17)}`;
    } while (this.store.get(snapshotId));
    const meta: SnapshotMeta = {
      snapshotId,
      ownerId: LOCAL_OWNER_ID,
      volumeSizeGiB: input.volumeSizeGiB,
      encrypted,
      timeoutMinutes: input.timeoutMinutes,
      startTimeMs: this.now(),
      status: 'pending',
    };
    if (input.parentSnapshotId !== undefined) meta.parentSnapshotId = input.parentSnapshotId;
    if (input.description !== undefined) meta.description = input.description;
    if (input.tags !== undefined) meta.tags = input.tags;
    if (kmsKeyArn !== undefined) meta.kmsKeyArn = kmsKeyArn;
    if (input.clientToken !== undefined) {
      meta.clientToken = input.clientToken;
      meta.requestFingerprint = fingerprint(input);
    }
    const snapshot = await this.store.create(meta);
    this.runtimes.set(snapshotId, { lastActivityMs: this.now(), inflightPuts: 0, drained: [] });
    if (input.clientToken !== undefined) this.snapshotByClientToken.set(input.clientToken, snapshotId);
    return this.describe(snapshot);
  }

  private describe(snapshot: StoredSnapshot): JsonObject {
    const meta = snapshot.meta;
    const out: JsonObject = {};
    if (meta.description !== undefined) out.Description = meta.description;
    out.SnapshotId = meta.snapshotId;
    out.OwnerId = meta.ownerId;
    out.Status = meta.status;
    out.StartTime = seconds(meta.startTimeMs);
    out.VolumeSize = meta.volumeSizeGiB;
    out.BlockSize = BLOCK_SIZE_BYTES;
    if (meta.tags !== undefined) out.Tags = meta.tags;
    if (meta.parentSnapshotId !== undefined) out.ParentSnapshotId = meta.parentSnapshotId;
    if (meta.kmsKeyArn !== undefined) out.KmsKeyArn = meta.kmsKeyArn;
    out.SseType = !meta.encrypted ? 'none' : meta.kmsKeyArn !== undefined ? 'sse-kms' : 'sse-ebs';
    return out;
  }

  // ---- PutSnapshotBlock ---------------------------------------------------

  /** Checks that can fail before the body is worth keeping: existence, state, index range. */
  async checkPutTarget(snapshotId: string, blockIndex: number): Promise<StoredSnapshot> {
    const snapshot = this.require(snapshotId);
    await this.refreshIdle(snapshot);
    this.assertWritable(snapshot, blockIndex);
    return snapshot;
  }

  private assertWritable(snapshot: StoredSnapshot, blockIndex: number): void {
    const runtime = this.runtime(snapshot);
    // A change to `error` under way is as good as done: the PUT would land on a dead snapshot.
    if (runtime.statusChange) throw statusError(snapshot, 'pending', 'error');
    if (snapshot.meta.status !== 'pending' || runtime.completion) throw statusError(snapshot, 'pending');
    checkBlockIndexInVolume(blockIndex, snapshot.meta.volumeSizeGiB);
  }

  async putSnapshotBlock(snapshotId: string, blockIndex: number, digest: Buffer, data: Buffer): Promise<void> {
    const snapshot = this.require(snapshotId);
    await this.refreshIdle(snapshot);
    // The check and the count of PUTs in flight happen in one synchronous step, so a
    // CompleteSnapshot either refuses this PUT or waits for it: never both miss each other.
    this.assertWritable(snapshot, blockIndex);
    const runtime = this.runtime(snapshot);
    runtime.inflightPuts++;
    runtime.lastActivityMs = this.now();
    try {
      await this.store.putBlock(snapshot, blockIndex, digest, data);
    } finally {
      runtime.inflightPuts--;
      runtime.lastActivityMs = this.now();
      if (runtime.inflightPuts === 0) for (const wake of runtime.drained.splice(0)) wake();
    }
  }

  // ---- CompleteSnapshot ---------------------------------------------------

  async completeSnapshot(snapshotId: string, input: CompleteInput): Promise<SnapshotStatus> {
    const snapshot = this.require(snapshotId);
    await this.refreshIdle(snapshot);
    const runtime = this.runtime(snapshot);
    while (runtime.completion || runtime.statusChange) await (runtime.completion ?? runtime.statusChange)!.catch(() => undefined);
    if (snapshot.meta.status === 'completed') {
      // A retried CompleteSnapshot (its first answer lost) gets the same answer.
      const sameCount = input.changedBlocksCount === snapshot.meta.changedBlocksCount;
      const sameChecksum = input.checksumBase64 === undefined || this.checksumMatches(snapshot, input.checksumBase64);
      if (sameCount && sameChecksum) return 'completed';
      throw validationError(
        'INVALID_SNAPSHOT_ID',
        `The snapshot '${snapshot.id}' is already completed, with other values than this request's.`,
      );
    }
    if (snapshot.meta.status !== 'pending') throw statusError(snapshot, 'pending');
    runtime.completion = this.runCompletion(snapshot, runtime, input);
    try {
      return await runtime.completion;
    } finally {
      runtime.completion = undefined;
    }
  }

  private async runCompletion(snapshot: StoredSnapshot, runtime: Runtime, input: CompleteInput): Promise<SnapshotStatus> {
    runtime.lastActivityMs = this.now();
    // New PUTs are refused from here on; wait for the ones already accepted.
    if (runtime.inflightPuts > 0) await new Promise<void>((resolve) => runtime.drained.push(resolve));
    const written = snapshot.ownBlocks.size;
    if (input.changedBlocksCount !== written) {
      throw validationError(
        'INVALID_PARAMETER_VALUE',
        `ChangedBlocksCount ${input.changedBlocksCount} does not match the ${written} distinct blocks written to snapshot '${snapshot.id}'.`,
      );
    }
    if (input.checksumBase64 !== undefined && !this.checksumMatches(snapshot, input.checksumBase64)) {
      throw validationError(
        'INVALID_PARAMETER_VALUE',
        `The Checksum does not match the LINEAR aggregate of the ${written} blocks written to snapshot '${snapshot.id}'.`,
      );
    }
    await this.store.updateMeta(snapshot, {
      ...snapshot.meta,
      status: 'completed',
      changedBlocksCount: written,
      linearChecksumBase64: linearChecksumBase64(snapshot.ownBlocks),
    });
    runtime.lastActivityMs = this.now();
    return 'completed';
  }

  /** The raw-digest rule (coldsnap's), or the reading that hashes the base64 strings. */
  private checksumMatches(snapshot: StoredSnapshot, checksumBase64: string): boolean {
    if (checksumBase64 === linearChecksumBase64(snapshot.ownBlocks)) return true;
    const hash = createHash('sha256');
    for (const index of [...snapshot.ownBlocks.keys()].sort((a, b) => a - b)) {
      hash.update(snapshot.ownBlocks.get(index)!.toString('base64'), 'ascii');
    }
    return checksumBase64 === hash.digest('base64');
  }

  // ---- Reads --------------------------------------------------------------

  async getSnapshotBlock(snapshotId: string, blockIndex: number, blockToken: string): Promise<BlockRead> {
    const snapshot = await this.requireCompleted(snapshotId);
    checkBlockIndexInVolume(blockIndex, snapshot.meta.volumeSizeGiB);
    const entry = this.view(snapshot).entries.get(blockIndex);
    if (!entry || !this.tokens.verifyBlockToken(blockToken, snapshot.id, blockIndex, entry.digest, this.now())) {
      throw validationError(
        'INVALID_BLOCK_TOKEN',
        `The block token is not valid for block ${blockIndex} of snapshot '${snapshot.id}', or it has expired.`,
      );
    }
    const origin = this.store.get(entry.origin);
    if (!origin) throw new Error(`snapshot ${entry.origin} vanished`);
    return { data: await this.store.readBlock(origin, blockIndex), digest: entry.digest };
  }

  async listSnapshotBlocks(snapshotId: string, page: PageInput): Promise<JsonObject> {
    const snapshot = await this.requireCompleted(snapshotId);
    const nowMs = this.now();
    const view = this.view(snapshot);
    const start = this.pageStart(page, 'ListSnapshotBlocks', [snapshot.id], nowMs);
    const first = lowerBound(view.sortedIndexes, start);
    const indexes = view.sortedIndexes.slice(first, first + page.maxResults);
    const expirySeconds = this.tokens.blockTokenExpirySeconds(nowMs);
    const out: JsonObject = {
      Blocks: indexes.map((index) => ({
        BlockIndex: index,
        BlockToken: this.tokens.blockToken(snapshot.id, index, view.entries.get(index)!.digest, expirySeconds),
      })),
      ExpiryTime: expirySeconds,
      VolumeSize: snapshot.meta.volumeSizeGiB,
      BlockSize: BLOCK_SIZE_BYTES,
    };
    const next = first + page.maxResults;
    if (next < view.sortedIndexes.length) {
      out.NextToken = this.tokens.pageToken('ListSnapshotBlocks', [snapshot.id], view.sortedIndexes[next], nowMs);
    }
    return out;
  }

  async listChangedBlocks(secondSnapshotId: string, firstSnapshotId: string | undefined, page: PageInput): Promise<JsonObject> {
    const second = await this.requireCompleted(secondSnapshotId);
    const first = firstSnapshotId === undefined ? undefined : await this.requireCompleted(firstSnapshotId);
    if (first && this.lineageRoot(first) !== this.lineageRoot(second)) {
      throw validationError('UNRELATED_SNAPSHOTS', `The snapshots '${first.id}' and '${second.id}' are not of one lineage.`);
    }
    const nowMs = this.now();
    const pair = [first?.id ?? '', second.id];
    const changed = this.changedBlocks(first, second);
    const start = this.pageStart(page, 'ListChangedBlocks', pair, nowMs);
    let low = 0;
    let high = changed.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (changed[middle].blockIndex < start) low = middle + 1;
      else high = middle;
    }
    const expirySeconds = this.tokens.blockTokenExpirySeconds(nowMs);
    const slice = changed.slice(low, low + page.maxResults);
    const out: JsonObject = {
      ChangedBlocks: slice.map((entry) => {
        const item: JsonObject = { BlockIndex: entry.blockIndex };
        if (first && entry.first) item.FirstBlockToken = this.tokens.blockToken(first.id, entry.blockIndex, entry.first, expirySeconds);
        if (entry.second) item.SecondBlockToken = this.tokens.blockToken(second.id, entry.blockIndex, entry.second, expirySeconds);
        return item;
      }),
      ExpiryTime: expirySeconds,
      VolumeSize: second.meta.volumeSizeGiB,
      BlockSize: BLOCK_SIZE_BYTES,
    };
    const next = low + page.maxResults;
    if (next < changed.length) out.NextToken = this.tokens.pageToken('ListChangedBlocks', pair, changed[next].blockIndex, nowMs);
    return out;
  }

  private pageStart(page: PageInput, kind: 'ListSnapshotBlocks' | 'ListChangedBlocks', snapshotIds: string[], nowMs: number): number {
    if (page.nextToken === undefined) return page.startingBlockIndex;
    const next = this.tokens.verifyPageToken(page.nextToken, kind, snapshotIds, nowMs);
    if (next === undefined) {
      throw validationError('INVALID_PAGE_TOKEN', 'The pagination token is not valid for this request, or it has expired.');
    }
    return next;
  }

  private changedBlocks(first: StoredSnapshot | undefined, second: StoredSnapshot): ChangedEntry[] {
    const key = `${first?.id ?? ''}/${second.id}`;
    const cached = this.changedCache.get(key);
    if (cached) return cached;
    const result: ChangedEntry[] = [];
    if (!first) {
      // No first snapshot: the blocks the second snapshot itself wrote.
      for (const index of [...second.ownBlocks.keys()].sort((a, b) => a - b)) {
        result.push({ blockIndex: index, second: second.ownBlocks.get(index)! });
      }
    } else {
      const a = this.view(first).entries;
      const b = this.view(second).entries;
      const indexes = new Set<number>([...a.keys(), ...b.keys()]);
      for (const index of [...indexes].sort((x, y) => x - y)) {
        const inFirst = a.get(index);
        const inSecond = b.get(index);
        // Compared by which PUT wrote the block, not by bytes: a block the child
        // re-wrote is a change even when its content happens to be equal.
        if (inFirst && inSecond && inFirst.origin === inSecond.origin && inFirst.digest.equals(inSecond.digest)) continue;
        result.push({ blockIndex: index, first: inFirst?.digest, second: inSecond?.digest });
      }
    }
    if (this.changedCache.size >= CHANGED_BLOCKS_CACHE_MAX_ENTRIES) this.changedCache.delete(this.changedCache.keys().next().value!);
    this.changedCache.set(key, result);
    return result;
  }

  private lineageRoot(snapshot: StoredSnapshot): string {
    let current = snapshot;
    // Parents are created before children, so the chain is finite; the bound guards a damaged store.
    for (let depth = 0; depth < 100_000 && current.meta.parentSnapshotId !== undefined; depth++) {
      const parent = this.store.get(current.meta.parentSnapshotId);
      if (!parent) break;
      current = parent;
    }
    return current.id;
  }

  /** Only completed snapshots have a view; they never change, so it is cached. */
  private view(snapshot: StoredSnapshot): SnapshotView {
    const cached = this.views.get(snapshot.id);
    if (cached) return cached;
    const entries = new Map<number, ViewEntry>();
    const parentId = snapshot.meta.parentSnapshotId;
    const parent = parentId === undefined ? undefined : this.store.get(parentId);
    if (parent) {
      const limit = blocksInVolume(snapshot.meta.volumeSizeGiB);
      for (const [index, entry] of this.view(parent).entries) if (index < limit) entries.set(index, entry);
    }
    for (const [index, digest] of snapshot.ownBlocks) entries.set(index, { digest, origin: snapshot.id });
    const view: SnapshotView = { entries, sortedIndexes: [...entries.keys()].sort((a, b) => a - b) };
    if (this.views.size >= VIEW_CACHE_MAX_ENTRIES) this.views.delete(this.views.keys().next().value!);
    this.views.set(snapshot.id, view);
    return view;
  }

  // ---- States -------------------------------------------------------------

  private require(snapshotId: string): StoredSnapshot {
    const snapshot = this.store.get(snapshotId);
    if (!snapshot) throw snapshotNotFound(snapshotId);
    return snapshot;
  }

  private async requireCompleted(snapshotId: string): Promise<StoredSnapshot> {
    const snapshot = this.require(snapshotId);
    await this.refreshIdle(snapshot);
    if (snapshot.meta.status !== 'completed') throw statusError(snapshot, 'completed');
    return snapshot;
  }

  private runtime(snapshot: StoredSnapshot): Runtime {
    let runtime = this.runtimes.get(snapshot.id);
    if (!runtime) {
      runtime = { lastActivityMs: this.now(), inflightPuts: 0, drained: [] };
      this.runtimes.set(snapshot.id, runtime);
    }
    return runtime;
  }

  /** Moves a pending snapshot that saw no put or complete for its Timeout to `error`. */
  private async refreshIdle(snapshot: StoredSnapshot): Promise<void> {
    const runtime = this.runtime(snapshot);
    if (runtime.statusChange) await runtime.statusChange;
    if (snapshot.meta.status !== 'pending' || runtime.inflightPuts > 0 || runtime.completion) return;
    const idleMs = this.now() - runtime.lastActivityMs;
    if (idleMs <= snapshot.meta.timeoutMinutes * 60_000) return;
    await this.changeToTimedOut(snapshot, runtime, `timed out after ${snapshot.meta.timeoutMinutes} idle minutes`);
  }

  /**
   * The idle-Timeout transition, run now whatever the clock says (the admin route
   * `POST /_local-ebs/snapshots/{id}/expire`), so that tests meet a snapshot in `error`
   * without waiting. PUTs already accepted finish first; later ones are refused.
   * A snapshot already in `error` stays there; a completed one is refused.
   */
  async expireSnapshot(snapshotId: string): Promise<SnapshotStatus> {
    const snapshot = this.require(snapshotId);
    const runtime = this.runtime(snapshot);
    // Bounded: each pass waits for one transition that then clears itself.
    for (;;) {
      if (runtime.statusChange) await runtime.statusChange.catch(() => undefined);
      else if (runtime.completion) await runtime.completion.catch(() => undefined);
      else break;
    }
    if (snapshot.meta.status === 'error') return 'error';
    if (snapshot.meta.status !== 'pending') {
      throw validationError(
        'INVALID_SNAPSHOT_ID',
        `The snapshot '${snapshot.id}' is ${snapshot.meta.status}: only a pending snapshot can time out.`,
      );
    }
    await this.changeToTimedOut(snapshot, runtime, 'expired on request (POST /_local-ebs/snapshots/{id}/expire)');
    return 'error';
  }

  /**
   * pending -> error, as the idle Timeout does it. While this runs, `statusChange` is
   * set: every request on the snapshot waits for it, then sees `error`.
   */
  private async changeToTimedOut(snapshot: StoredSnapshot, runtime: Runtime, why: string): Promise<void> {
    runtime.statusChange = (async () => {
      if (runtime.inflightPuts > 0) await new Promise<void>((resolve) => runtime.drained.push(resolve));
      await this.store.updateMeta(snapshot, {
        ...snapshot.meta,
        status: 'error',
        statusMessage: `No put or complete request for ${snapshot.meta.timeoutMinutes} minutes (the snapshot's Timeout).`,
      });
      this.log(`local-ebs: snapshot ${snapshot.id} ${why}; it is now in error`);
    })();
    try {
      await runtime.statusChange;
    } finally {
      runtime.statusChange = undefined;
    }
  }

  private async sweepIdle(): Promise<void> {
    for (const snapshot of [...this.store.all()]) {
      if (snapshot.meta.status !== 'pending') continue;
      try {
        await this.refreshIdle(snapshot);
      } catch (error) {
        this.log(`local-ebs: could not record the timeout of ${snapshot.id}: ${describeError(error)}`);
      }
    }
  }
}

function fingerprint(input: StartSnapshotInput): string {
  return JSON.stringify([
    input.volumeSizeGiB,
    input.parentSnapshotId ?? null,
    input.tags ?? null,
    input.description ?? null,
    input.encrypted ?? null,
    input.kmsKeyArn ?? null,
    input.timeoutMinutes,
  ]);
}
