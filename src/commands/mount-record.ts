// Running mounts, for `ebs-fuse status` and `ebs-fuse unmount`. Each mount
// process owns one record file in the runtime directory, named after its
// mountpoint, and rewrites it about once a second: its phase, progress and last
// error, and at the end how it ended. Other commands only read records; they
// remove one only after its process is gone. A record is runtime state, like a
// pid file: it is not fsync'd, and the runtime directory is usually a tmpfs.
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { SnapshotStatus } from '../ebs/client';
import { describeError, UserError } from '../errors';

/** How often a running mount rewrites its record. */
export const RECORD_INTERVAL_MS = 1000;
/** Records read by one `status`, at most: one per mountpoint in use, far below this. */
const RECORDS_MAX = 4096;
/** A record file larger than this is not ours. */
const RECORD_MAX_BYTES = 64 * 1024;

export type MountPhase = 'mounted' | 'flushing' | 'ended';

/** What `status` shows: the phase of a live process, or `died` for a process gone without ending. */
export type MountState = MountPhase | 'died';

export interface MountProgress {
  dirtyBlocks: number;
  uploadingBlocks: number;
  blocksUploaded: number;
  bytesUploaded: number;
  retries: number;
  /** The cause of the last failed upload, until a flush succeeds. */
  lastUploadError?: string;
  /** Handles of the file open now (a loop device counts as one). */
  openHandles: number;
  /** The largest write the kernel sent: 131072 when big_writes took effect. */
  largestWriteBytes: number;
}

export interface MountRecord {
  format: 'ebs-fuse-mount';
  version: 1;
  pid: number;
  mountpoint: string;
  filePath: string;
  snapshotId: string;
  readOnly: boolean;
  /** Whether unmount completes the snapshot (false with --no-complete). */
  complete: boolean;
  endpoint: string;
  stateDir?: string;
  logFile?: string;
  startedAt: string;
  updatedAt: string;
  phase: MountPhase;
  progress: MountProgress;
  /** Once ended: the status printed on stdout, and the exit status (0 only if it ended as asked). */
  endStatus?: SnapshotStatus;
  exitCode?: number;
}

/** $XDG_RUNTIME_DIR/ebs-fuse; else /run/ebs-fuse for root; else one under the temporary directory per user. */
export function runtimeDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_RUNTIME_DIR;
  if (xdg && path.isAbsolute(xdg)) return path.join(xdg, 'ebs-fuse');
  const uid = process.getuid?.() ?? 0;
  return uid === 0 ? '/run/ebs-fuse' : path.join(tmpdir(), `ebs-fuse-${uid}`);
}

function recordPath(mountpoint: string, directory = runtimeDir()): string {
  return path.join(directory, `${createHash('sha256').update(mountpoint).digest('hex').slice(0, 16)}.json`);
}

/** The one record a mount process writes; other code only reads records. */
/**
 * Whether records in this directory can be trusted: it is this user's and no one
 * else may write to it (the temporary-directory fallback is shared by all users).
 */
function isOwnPrivateDirectory(directory: string): boolean {
  try {
    const stat = statSync(directory);
    return stat.isDirectory() && stat.uid === (process.getuid?.() ?? stat.uid) && (stat.mode & 0o022) === 0;
  } catch {
    return false;
  }
}

export class MountRecordFile {
  private timer: NodeJS.Timeout | undefined;
  private failureLogged = false;

  private constructor(
    private readonly file: string | undefined,
    private record: MountRecord,
    private readonly log: (line: string) => void,
  ) {}

  /**
   * Writes the first record. The mount is up by then, so a runtime directory that
   * cannot be used costs only `status` and `unmount` their view of it: one line says so.
   */
  static create(
    fields: Omit<MountRecord, 'format' | 'version' | 'pid' | 'startedAt' | 'updatedAt' | 'phase'>,
    log: (line: string) => void,
    directory = runtimeDir(),
  ): MountRecordFile {
    const unusable = (why: string): void =>
      log(
        `cannot use the runtime directory ${directory}: ${why}; ebs-fuse status and unmount will not see this mount (set XDG_RUNTIME_DIR to a directory of your own)`,
      );
    let usable = true;
    try {
      mkdirSync(directory, { recursive: true, mode: 0o700 });
      if (!isOwnPrivateDirectory(directory)) {
        unusable('it belongs to another user or others may write to it');
        usable = false;
      }
    } catch (error) {
      unusable(describeError(error));
      usable = false;
    }
    const now = new Date().toISOString();
    const record: MountRecord = {
      format: 'ebs-fuse-mount',
      version: 1,
      pid: process.pid,
      startedAt: now,
      updatedAt: now,
      phase: 'mounted',
      ...fields,
    };
    const file = new MountRecordFile(usable ? recordPath(fields.mountpoint, directory) : undefined, record, log);
    file.write();
    return file;
  }

  /** Rewrites the record every RECORD_INTERVAL_MS with fresh progress, until ended. */
  keepUpdated(sample: () => MountProgress): void {
    this.timer = setInterval(() => this.update({ progress: sample() }), RECORD_INTERVAL_MS);
    this.timer.unref();
  }

  update(fields: Partial<Pick<MountRecord, 'phase' | 'progress'>>): void {
    if (this.record.phase === 'ended') return;
    this.record = { ...this.record, ...fields, updatedAt: new Date().toISOString() };
    this.write();
  }

  /** The last write: how the mount ended. */
  end(endStatus: SnapshotStatus, exitCode: number, progress?: MountProgress): void {
    if (this.timer) clearInterval(this.timer);
    if (this.record.phase === 'ended') return;
    this.record = {
      ...this.record,
      ...(progress ? { progress } : {}),
      phase: 'ended',
      endStatus,
      exitCode,
      updatedAt: new Date().toISOString(),
    };
    this.write();
  }

  private write(): void {
    if (this.file === undefined) return;
    // Renamed into place, so a reader never sees half a record. A failed write costs
    // only `status` its freshness; the mount itself goes on, and says so once.
    const temporary = `${this.file}.${randomBytes(4).toString('hex')}.tmp`;
    try {
      writeFileSync(temporary, `${JSON.stringify(this.record)}\n`, { mode: 0o600 });
      renameSync(temporary, this.file);
    } catch (error) {
      rmSync(temporary, { force: true });
      if (!this.failureLogged)
        this.log(
          `cannot write the mount's record ${this.file}: ${describeError(error)}; ebs-fuse status and unmount may not see this mount`,
        );
      this.failureLogged = true;
    }
  }
}

function parseRecord(text: string): MountRecord | undefined {
  try {
    const value = JSON.parse(text) as Partial<MountRecord>;
    if (value.format !== 'ebs-fuse-mount' || value.version !== 1 || typeof value.pid !== 'number' || typeof value.mountpoint !== 'string')
      return undefined;
    return value as MountRecord;
  } catch {
    return undefined;
  }
}

function readRecordFile(file: string): MountRecord | undefined {
  try {
    if (statSync(file).size > RECORD_MAX_BYTES) return undefined;
    return parseRecord(readFileSync(file, 'utf8'));
  } catch {
    return undefined;
  }
}

/** The record of the mount at this (absolute) mountpoint, if any. */
export function readRecord(mountpoint: string, directory = runtimeDir()): MountRecord | undefined {
  if (!isOwnPrivateDirectory(directory)) return undefined;
  const record = readRecordFile(recordPath(mountpoint, directory));
  return record?.mountpoint === mountpoint ? record : undefined;
}

/** Every record in the runtime directory, oldest first. */
export function readRecords(directory = runtimeDir()): MountRecord[] {
  if (!isOwnPrivateDirectory(directory)) return [];
  let names: string[];
  try {
    names = readdirSync(directory).filter((name) => /^[0-9a-f]{16}\.json$/.test(name));
  } catch {
    return [];
  }
  return names
    .slice(0, RECORDS_MAX)
    .flatMap((name) => readRecordFile(path.join(directory, name)) ?? [])
    .sort((a, b) => a.startedAt.localeCompare(b.startedAt));
}

export function removeRecord(record: MountRecord, directory = runtimeDir()): void {
  rmSync(recordPath(record.mountpoint, directory), { force: true });
}

/** Whether the record's process still runs: its pid is alive and is an ebs-fuse mount (a reused pid is not). */
export function mountProcessAlive(record: MountRecord): boolean {
  let commandLine: string;
  try {
    commandLine = readFileSync(`/proc/${record.pid}/cmdline`, 'utf8');
  } catch {
    return false;
  }
  const args = commandLine.split('\0');
  return args.includes('mount') && args.some((arg) => /ebs-fuse|cli\.[jt]s$/.test(arg));
}

/**
 * The absolute mountpoint a record is filed under. A mount whose process died
 * answers ENOTCONN to every lookup; its path is then taken as given.
 */
export function resolveMountpoint(argument: string): string {
  try {
    return realpathSync(argument);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOTCONN') return path.resolve(argument);
    throw new UserError(code === 'ENOENT' ? `${argument} does not exist` : `cannot use ${argument}: ${describeError(error)}`);
  }
}

export function stateOf(record: MountRecord): MountState {
  if (mountProcessAlive(record)) return record.phase;
  return record.phase === 'ended' ? 'ended' : 'died';
}
