// The durable store behind local-ebs. Layout under the data directory:
//
//   store.json                    {"format":"local-ebs-store","version":1}
//   blocks/<sha256 hex>           one file per distinct block content (content-addressed)
//   tmp/                          block files being written; emptied at start
//   snapshots/<snap-id>/meta.json snapshot metadata, replaced atomically
//   snapshots/<snap-id>/blocks.log append-only (index, digest) records, see block-log.ts
//
// A PUT is acknowledged only after (1) its block file was written, fdatasync'd and
// renamed into blocks/, (2) blocks/ was fsync'd so the name is durable, and (3) its
// log record was written and the log fdatasync'd. Steps 2 and 3 are group commits:
// one directory fsync and one fdatasync per snapshot log serve every PUT that
// arrived while the previous commit was running. After a crash, the log replays up
// to its first torn record; block files nobody references (written but never
// acknowledged, or overwritten) are deleted at start.
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { BLOCK_SIZE_BYTES, type SnapshotStatus } from '../ebs/client';
import { encodeRecords, replayLog, type BlockRecord } from './block-log';
import { fsyncDirectory, writeFileAtomic } from './durable-fs';
import { SNAPSHOT_ID_PATTERN, type Tag } from './validation';

const STORE_FORMAT = 'local-ebs-store';
const STORE_VERSION = 1;
const DIGEST_HEX_PATTERN = /^[0-9a-f]{64}$/;
/** A bound on one group commit, so one slow fdatasync never holds an unbounded batch. */
const MAX_RECORDS_PER_COMMIT = 4096;

export interface SnapshotMeta {
  snapshotId: string;
  ownerId: string;
  volumeSizeGiB: number;
  parentSnapshotId?: string;
  description?: string;
  tags?: Tag[];
  encrypted: boolean;
  kmsKeyArn?: string;
  timeoutMinutes: number;
  clientToken?: string;
  /** The StartSnapshot parameters in a canonical form, to tell a ClientToken retry from a conflict. */
  requestFingerprint?: string;
  startTimeMs: number;
  status: SnapshotStatus;
  statusMessage?: string;
  /** Set at completion: what CompleteSnapshot was checked against. */
  changedBlocksCount?: number;
  linearChecksumBase64?: string;
}

export class StoredSnapshot {
  /** Latest digest per block index written to this snapshot (not inherited ones). */
  readonly ownBlocks = new Map<number, Buffer>();
  logHandle: FileHandle | undefined;
  logBytes = 0;

  constructor(
    public meta: SnapshotMeta,
    readonly directory: string,
  ) {}

  get id(): string {
    return this.meta.snapshotId;
  }

  get logFile(): string {
    return path.join(this.directory, 'blocks.log');
  }
}

interface QueuedRecord {
  snapshot: StoredSnapshot;
  record: BlockRecord;
  resolve: () => void;
  reject: (error: unknown) => void;
}

export class SnapshotStore {
  private readonly snapshots = new Map<string, StoredSnapshot>();
  /** Digest hex -> true when the file is in blocks/, or the promise of its write. */
  private readonly blockFiles = new Map<string, true | Promise<void>>();
  private renameGeneration = 0;
  private syncedRenameGeneration = 0;
  private readonly commitQueue: QueuedRecord[] = [];
  /** Set and cleared synchronously with the queue check, so no record is ever left unserved. */
  private committing = false;
  private commitDone: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(
    readonly dataDir: string,
    private readonly log: (line: string) => void,
  ) {}

  private get blocksDir(): string {
    return path.join(this.dataDir, 'blocks');
  }

  private get tmpDir(): string {
    return path.join(this.dataDir, 'tmp');
  }

  private get snapshotsDir(): string {
    return path.join(this.dataDir, 'snapshots');
  }

  static async open(dataDir: string, log: (line: string) => void): Promise<SnapshotStore> {
    const store = new SnapshotStore(path.resolve(dataDir), log);
    await store.recover();
    return store;
  }

  get(snapshotId: string): StoredSnapshot | undefined {
    return this.snapshots.get(snapshotId);
  }

  all(): IterableIterator<StoredSnapshot> {
    return this.snapshots.values();
  }

  /** Durable before it resolves: a crash after this leaves the snapshot in place. */
  async create(meta: SnapshotMeta): Promise<StoredSnapshot> {
    this.assertOpen();
    if (!SNAPSHOT_ID_PATTERN.test(meta.snapshotId) || this.snapshots.has(meta.snapshotId)) {
      throw new Error(`cannot create snapshot ${meta.snapshotId}`);
    }
    const directory = path.join(this.snapshotsDir, meta.snapshotId);
    await fsp.mkdir(directory);
    const snapshot = new StoredSnapshot(meta, directory);
    const log = await fsp.open(snapshot.logFile, 'wx', 0o600);
    await log.sync();
    await log.close();
    // meta.json appears last: a directory without it is an unfinished create, removed at start.
    await writeFileAtomic(path.join(directory, 'meta.json'), JSON.stringify(meta), 0o600);
    await fsyncDirectory(this.snapshotsDir);
    this.snapshots.set(meta.snapshotId, snapshot);
    return snapshot;
  }

  async updateMeta(snapshot: StoredSnapshot, meta: SnapshotMeta): Promise<void> {
    this.assertOpen();
    await writeFileAtomic(path.join(snapshot.directory, 'meta.json'), JSON.stringify(meta), 0o600);
    snapshot.meta = meta;
    if (meta.status !== 'pending') await this.closeLog(snapshot);
  }

  /**
   * Resolves once the block is durable and visible in snapshot.ownBlocks. Concurrent
   * PUTs of one index become visible in the order their records reach the log.
   */
  async putBlock(snapshot: StoredSnapshot, blockIndex: number, digest: Buffer, data: Buffer): Promise<void> {
    this.assertOpen();
    if (data.length !== BLOCK_SIZE_BYTES) throw new Error('a block is 524288 bytes');
    await this.ensureBlockFile(digest, data);
    await new Promise<void>((resolve, reject) => {
      this.commitQueue.push({ snapshot, record: { blockIndex, digest }, resolve, reject });
      if (!this.committing) {
        this.committing = true;
        this.commitDone = this.commitLoop();
      }
    });
  }

  async readBlock(digest: Buffer): Promise<Buffer> {
    const data = await fsp.readFile(path.join(this.blocksDir, digest.toString('hex')));
    if (data.length !== BLOCK_SIZE_BYTES) throw new Error(`block file ${digest.toString('hex')} has ${data.length} bytes`);
    return data;
  }

  /** Waits for queued commits, then closes every log. */
  async close(): Promise<void> {
    while (this.committing) await this.commitDone;
    this.closed = true;
    for (const snapshot of this.snapshots.values()) await this.closeLog(snapshot);
  }

  private assertOpen(): void {
    if (this.closed) throw new Error('the local-ebs store is closed');
  }

  private async closeLog(snapshot: StoredSnapshot): Promise<void> {
    const handle = snapshot.logHandle;
    snapshot.logHandle = undefined;
    if (handle) await handle.close().catch(() => undefined);
  }

  private async ensureBlockFile(digest: Buffer, data: Buffer): Promise<void> {
    const hex = digest.toString('hex');
    // Two attempts: if a concurrent writer of the same content failed, try once ourselves.
    for (let attempt = 0; ; attempt++) {
      const state = this.blockFiles.get(hex);
      if (state === true) return;
      if (state) {
        try {
          await state;
          return;
        } catch (error) {
          if (attempt > 0) throw error;
          continue;
        }
      }
      const writing = this.writeBlockFile(hex, data);
      this.blockFiles.set(hex, writing);
      try {
        await writing;
        this.blockFiles.set(hex, true);
        return;
      } catch (error) {
        this.blockFiles.delete(hex);
        throw error;
      }
    }
  }

  private async writeBlockFile(hex: string, data: Buffer): Promise<void> {
    const temporary = path.join(this.tmpDir, `${hex}.${randomBytes(6).toString('hex')}`);
    const handle = await fsp.open(temporary, 'wx', 0o600);
    try {
      await handle.write(data, 0, data.length, 0);
      await handle.datasync();
    } catch (error) {
      await handle.close();
      await fsp.rm(temporary, { force: true });
      throw error;
    }
    await handle.close();
    await fsp.rename(temporary, path.join(this.blocksDir, hex));
    this.renameGeneration++;
  }

  private async commitLoop(): Promise<void> {
    // The emptiness check and clearing `committing` happen in one synchronous step.
    try {
      while (this.commitQueue.length > 0) await this.commitBatch();
    } finally {
      this.committing = false;
    }
  }

  private async commitBatch(): Promise<void> {
    const batch = this.commitQueue.splice(0, MAX_RECORDS_PER_COMMIT);
    const generation = this.renameGeneration;
    if (generation > this.syncedRenameGeneration) {
      try {
        await fsyncDirectory(this.blocksDir);
        this.syncedRenameGeneration = Math.max(this.syncedRenameGeneration, generation);
      } catch (error) {
        for (const queued of batch) queued.reject(error);
        return;
      }
    }
    const bySnapshot = new Map<StoredSnapshot, QueuedRecord[]>();
    for (const queued of batch) {
      const list = bySnapshot.get(queued.snapshot);
      if (list) list.push(queued);
      else bySnapshot.set(queued.snapshot, [queued]);
    }
    await Promise.all(
      [...bySnapshot].map(async ([snapshot, items]) => {
        try {
          await this.appendToLog(snapshot, items.map((item) => item.record));
        } catch (error) {
          for (const item of items) item.reject(error);
          return;
        }
        // Visible only now, in log order, so memory never shows what the disk may lose.
        for (const item of items) {
          snapshot.ownBlocks.set(item.record.blockIndex, item.record.digest);
          item.resolve();
        }
      }),
    );
  }

  private async appendToLog(snapshot: StoredSnapshot, records: BlockRecord[]): Promise<void> {
    if (snapshot.meta.status !== 'pending') throw new Error(`snapshot ${snapshot.id} is ${snapshot.meta.status}`);
    if (!snapshot.logHandle) snapshot.logHandle = await fsp.open(snapshot.logFile, 'r+');
    const handle = snapshot.logHandle;
    const bytes = encodeRecords(records);
    try {
      await handle.write(bytes, 0, bytes.length, snapshot.logBytes);
      await handle.datasync();
    } catch (error) {
      // Cut back what may have reached the file, so that a replay after a later
      // success cannot surface records that were refused.
      await handle.truncate(snapshot.logBytes).catch(() => undefined);
      throw error;
    }
    snapshot.logBytes += bytes.length;
  }

  private async recover(): Promise<void> {
    await fsp.mkdir(this.dataDir, { recursive: true, mode: 0o700 });
    await this.checkFormat();
    for (const directory of [this.blocksDir, this.tmpDir, this.snapshotsDir]) {
      await fsp.mkdir(directory, { recursive: true, mode: 0o700 });
    }
    // Unfinished block writes: never acknowledged.
    for (const name of await fsp.readdir(this.tmpDir)) await fsp.rm(path.join(this.tmpDir, name), { force: true, recursive: true });

    const present = new Set<string>();
    for (const name of await fsp.readdir(this.blocksDir)) {
      if (DIGEST_HEX_PATTERN.test(name)) present.add(name);
    }

    const referenced = new Set<string>();
    for (const name of await fsp.readdir(this.snapshotsDir)) {
      if (!SNAPSHOT_ID_PATTERN.test(name)) continue;
      const snapshot = await this.loadSnapshot(name, present);
      if (!snapshot) continue;
      this.snapshots.set(snapshot.id, snapshot);
      for (const digest of snapshot.ownBlocks.values()) referenced.add(digest.toString('hex'));
    }

    let removed = 0;
    for (const hex of present) {
      if (referenced.has(hex)) {
        this.blockFiles.set(hex, true);
      } else {
        await fsp.rm(path.join(this.blocksDir, hex), { force: true });
        removed++;
      }
    }
    if (removed > 0) this.log(`local-ebs: removed ${removed} unreferenced block file(s) left by an interrupted or overwritten write`);
  }

  private async checkFormat(): Promise<void> {
    const file = path.join(this.dataDir, 'store.json');
    let text: string | undefined;
    try {
      text = await fsp.readFile(file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
    if (text === undefined) {
      await writeFileAtomic(file, JSON.stringify({ format: STORE_FORMAT, version: STORE_VERSION }), 0o600);
      return;
    }
    let parsed: { format?: unknown; version?: unknown } = {};
    try {
      parsed = JSON.parse(text) as typeof parsed;
    } catch {
      // fall through to the error below
    }
    if (parsed.format !== STORE_FORMAT || parsed.version !== STORE_VERSION) {
      throw new Error(`${file} is not a local-ebs store of version ${STORE_VERSION}`);
    }
  }

  private async loadSnapshot(snapshotId: string, presentBlocks: ReadonlySet<string>): Promise<StoredSnapshot | undefined> {
    const directory = path.join(this.snapshotsDir, snapshotId);
    let metaText: string;
    try {
      metaText = await fsp.readFile(path.join(directory, 'meta.json'), 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      // StartSnapshot never answered for it: meta.json is written last.
      await fsp.rm(directory, { recursive: true, force: true });
      return undefined;
    }
    for (const name of await fsp.readdir(directory)) {
      if (name.endsWith('.tmp')) await fsp.rm(path.join(directory, name), { force: true });
    }
    let meta: SnapshotMeta;
    try {
      meta = JSON.parse(metaText) as SnapshotMeta;
    } catch {
      this.log(`local-ebs: ignoring snapshot ${snapshotId}: its meta.json is not valid JSON`);
      return undefined;
    }
    if (meta.snapshotId !== snapshotId || !Number.isInteger(meta.volumeSizeGiB)) {
      this.log(`local-ebs: ignoring snapshot ${snapshotId}: its meta.json does not describe it`);
      return undefined;
    }
    const snapshot = new StoredSnapshot(meta, directory);
    let contents: Buffer;
    try {
      contents = await fsp.readFile(snapshot.logFile);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      contents = Buffer.alloc(0);
      await fsp.writeFile(snapshot.logFile, contents, { mode: 0o600 });
    }
    const replay = replayLog(contents);
    if (replay.validBytes < contents.length) {
      this.log(`local-ebs: snapshot ${snapshotId}: cut a torn log tail of ${contents.length - replay.validBytes} byte(s) (unacknowledged writes)`);
      const handle = await fsp.open(snapshot.logFile, 'r+');
      try {
        await handle.truncate(replay.validBytes);
        await handle.sync();
      } finally {
        await handle.close();
      }
    }
    snapshot.logBytes = replay.validBytes;
    for (const record of replay.records) {
      if (!presentBlocks.has(record.digest.toString('hex'))) {
        // Cannot happen when the ordering above holds; say so rather than serve a hole.
        this.log(`local-ebs: snapshot ${snapshotId}: block ${record.blockIndex} refers to a missing block file; ignoring that record`);
        continue;
      }
      snapshot.ownBlocks.set(record.blockIndex, record.digest);
    }
    return snapshot;
  }
}
