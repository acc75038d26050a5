// The FUSE adapter: with fuse3.ts the only code that talks to a FUSE binding
// (native/fuse3 through fuse3.ts, or fuse-native). It translates FUSE calls into
// VolumeFile calls and FileOperationError errnos into negative codes, keeps the
// table of open handles, and nothing else; every decision about data lives in the
// core. Over 400 lines because both bindings take the operations as one object,
// and each needs its errno mapping and timeout beside it.
import { execFile } from 'node:child_process';
import { constants as fsConstants, readFileSync, realpathSync } from 'node:fs';
import { promisify } from 'node:util';
import type Fuse from 'fuse-native';

type FuseOperations = Fuse.FuseOperations;
type FuseStat = Fuse.FuseStat;
type FuseStatfs = Fuse.FuseStatfs;
type FuseOptions = Fuse.FuseOptions;
import { FileOperationError, type FileErrno } from '../core/file-errors';
import { Fuse3, loadFuse3Binding } from './fuse3';
import type { VolumeFile } from '../core/volume-file';
import { isMountPoint, watchForUnmount, type UnmountWatcher } from './mountinfo';
import { describeError } from '../errors';

const execFileAsync = promisify(execFile);

/** libfuse 2.9 caps a write at 128 KiB; asking for it needs big_writes too. */
export const WRITE_MAX_BYTES = 131072;
/** libfuse 3 and the kernel (max_pages) agree to 1 MiB; native/fuse3 asks for it in init. */
export const LIBFUSE3_WRITE_MAX_BYTES = 1048576;
/** The one file's name in the mountpoint, unless --file-name says otherwise. */
export const DEFAULT_FILE_NAME = 'snapshot.img';
/** The kernel sends release shortly after the last close; a file still open past this is busy. */
export const FILE_RELEASE_GRACE_MS = 2000;

/** The one line, less what to do next, for a file still open when asked to unmount. */
export function fileBusyMessage(mountpoint: string, filePath: string, handles: number): string {
  return `${mountpoint} is busy: ${filePath} is still open (${handles} handle${handles === 1 ? '' : 's'}; a loop device? see losetup -j ${filePath})`;
}

/**
 * Both bindings answer ETIMEDOUT to the kernel when a handler takes longer than
 * its timeout (fuse-native's default: 15 s), while the handler keeps running. fsync and
 * close wait for uploads, which may take minutes on a slow link with retries,
 * so they get a long limit. Reads and writes wait at most for a cache slot or a
 * read-back, which the core bounds well under these limits; a write timing out
 * would let libfuse reuse the buffer the core may not have copied yet.
 */
export const FUSE_OP_TIMEOUTS_MS = {
  default: 60_000,
  read: 120_000,
  write: 120_000,
  truncate: 120_000,
  ftruncate: 120_000,
  fsync: 900_000,
  flush: 900_000,
  release: 900_000,
} as const;

const UNMOUNT_POLL_INTERVAL_MS = 500;
const MOUNT_TIMEOUT_MS = 30_000;
const UNMOUNT_COMMAND_TIMEOUT_MS = 30_000;
/** Unexpected (non-FileOperationError) failures logged before going quiet. */
const UNEXPECTED_ERRORS_LOGGED_MAX = 20;

const DIRECTORY_MODE = 0o040755;
const FILE_MODE = 0o100644;
const STATFS_BLOCK_BYTES = 524288;
const NAME_MAX_BYTES = 255;

export class FuseUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FuseUnavailableError';
  }
}

type FuseClass = typeof Fuse;
let loadedFuse: FuseClass | undefined;

/** What the adapter needs of either binding: fuse-native's shape. */
interface FuseSession {
  mount(cb: (error: Error | null) => void): void;
  unmount(cb: (error: Error | null) => void): void;
}
/** The negative errnos the adapter answers with, which both bindings export. */
type FuseErrnos = Record<FileErrno | 'EPERM' | 'ENOENT' | 'EISDIR', number>;

/** The two FUSE paths: libfuse 3 through native/fuse3 where it loads, fuse-native (libfuse 2.9) otherwise. */
export type FuseBindingName = 'libfuse3' | 'fuse-native';

/**
 * libfuse 3 unless EBS_FUSE_BINDING=fuse-native asks for the other, or the
 * addon is not there; with the reason when it fell back.
 */
export function chooseFuseBinding(env: NodeJS.ProcessEnv = process.env): { name: FuseBindingName; fallbackReason?: string } {
  const asked = env.EBS_FUSE_BINDING;
  if (asked === 'fuse-native') return { name: 'fuse-native' };
  const binding = loadFuse3Binding();
  if (typeof binding !== 'string') return { name: 'libfuse3' };
  if (asked === 'libfuse3') throw new FuseUnavailableError(`EBS_FUSE_BINDING=libfuse3, but ${binding}`);
  return { name: 'fuse-native', fallbackReason: binding };
}

/**
 * Loads fuse-native on first use, so that a missing libfuse.so.2 becomes an
 * error the CLI can explain instead of a crash at start-up. What it returns
 * mounts with big_writes and max_write, which fuse-native's fixed list of
 * mount options lacks: without them the kernel sends 4 KiB writes.
 */
export function loadFuseNative(): FuseClass {
  if (loadedFuse) return loadedFuse;
  let Base: FuseClass;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded on first use, so that a missing libfuse is an error the CLI explains
    Base = require('fuse-native') as FuseClass;
  } catch (error) {
    const reason = describeError(error);
    throw new FuseUnavailableError(`fuse-native failed to load (${reason})`);
  }
  // The override below is only called if fuse-native still builds its options here;
  // a release without it would mount silently with 4 KiB writes.
  if (typeof (Base.prototype as unknown as { _fuseOptions?: unknown })._fuseOptions !== 'function') {
    throw new FuseUnavailableError('this fuse-native release has no _fuseOptions() to add big_writes to; install fuse-native 2.2.x');
  }
  loadedFuse = class LargeWriteFuse extends Base {
    protected override _fuseOptions(): string {
      const options = super._fuseOptions();
      const added = `big_writes,max_write=${WRITE_MAX_BYTES}`;
      return options === '' ? `-o${added}` : `${options},${added}`;
    }
  };
  return loadedFuse;
}

/**
 * Which FUSE path a mount takes and the version of its libfuse, from the file
 * this process mapped (libfuse.so.2 links to libfuse.so.2.9.9), or why there is none.
 */
export function libfuseVersion(): string {
  let binding: FuseBindingName;
  try {
    binding = chooseFuseBinding().name;
    if (binding === 'fuse-native') loadFuseNative();
  } catch (error) {
    return `not loadable: ${describeError(error)}`;
  }
  const library = binding === 'libfuse3' ? /\/libfuse3\.so/ : /\/libfuse\.so/;
  const mapped = readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .map((line) => line.slice(line.indexOf('/')))
    .find((file) => library.test(file));
  if (mapped === undefined) return `unknown (${binding}: libfuse is not mapped)`;
  const version = /libfuse3?\.so\.(\d+(?:\.\d+)*)$/.exec(realpathSync(mapped));
  return `${version ? version[1] : `unknown (${mapped})`} through ${binding}`;
}

export interface FuseMountOptions {
  /** An existing, empty directory. */
  mountpoint: string;
  /** The one file's name in the mounted directory. */
  fileName: string;
  file: VolumeFile;
  /** One line for people (stderr). */
  log: (line: string) => void;
  /** Called once when the mount disappears without unmount() (an external `umount`). */
  onExternalUnmount?: () => void;
  /** Which FUSE path; chooseFuseBinding() when absent. */
  binding?: FuseBindingName;
}

export interface FuseMountStats {
  binding: FuseBindingName;
  writeCalls: number;
  writeBytes: number;
  /** The largest write the kernel sent: 1 MiB through libfuse 3, 128 KiB through fuse-native with big_writes. */
  largestWriteBytes: number;
  readCalls: number;
  fsyncCalls: number;
  flushCalls: number;
  openHandles: number;
}

interface OpenHandle {
  writable: boolean;
  /** A close (flush) came through it; the file description may live on (a dup), but its writer is done or nearly. */
  closed: boolean;
}

export class FuseMount {
  readonly mountpoint: string;
  readonly filePath: string;

  readonly binding: FuseBindingName;
  /** The largest write the kernel sends: 1 MiB through libfuse 3, 128 KiB through fuse-native. */
  readonly writeMaxBytes: number;
  private readonly fuse: FuseSession;
  private readonly handles = new Map<number, OpenHandle>();
  private nextHandleId = 1;
  private readonly counters = { writeCalls: 0, writeBytes: 0, largestWriteBytes: 0, readCalls: 0, fsyncCalls: 0, flushCalls: 0 };
  private unexpectedErrorsLogged = 0;
  private modifiedAtMs = Date.now();
  private readonly mountedAtMs = Date.now();
  private watcher: UnmountWatcher | undefined;
  private unmountPromise: Promise<void> | undefined;
  private handlesClosedWaiters: Array<() => void> = [];

  private constructor(
    private readonly options: FuseMountOptions,
    binding: FuseBindingName,
  ) {
    this.mountpoint = realpathSync(options.mountpoint);
    this.filePath = `${this.mountpoint}/${options.fileName}`;
    this.binding = binding;
    const fuseOptions: FuseOptions = {
      timeout: { ...FUSE_OP_TIMEOUTS_MS },
      fsname: 'ebs-fuse',
      subtype: 'ebs-fuse',
      force: false,
      mkdir: false,
    };
    if (binding === 'libfuse3') {
      this.writeMaxBytes = LIBFUSE3_WRITE_MAX_BYTES;
      const file = options.file;
      this.fuse = new Fuse3(this.mountpoint, this.operations(Fuse3), {
        ...fuseOptions,
        queuedFilePath: `/${options.fileName}`,
        absorbBelowBytes: () => (file.readOnly ? 0 : file.sizeBytes),
        // Without this an external umount would let the process exit before the poll below sees it.
        onSessionEnd: () => this.noticeUnmounted(),
      });
    } else {
      this.writeMaxBytes = WRITE_MAX_BYTES;
      const FuseConstructor = loadFuseNative();
      this.fuse = new FuseConstructor(this.mountpoint, this.operations(FuseConstructor), fuseOptions);
    }
  }

  /** Mounts and resolves once the kernel finished the FUSE handshake: the file is then usable. */
  static async mount(options: FuseMountOptions): Promise<FuseMount> {
    let binding = options.binding;
    if (binding === undefined) {
      const choice = chooseFuseBinding();
      if (choice.fallbackReason !== undefined)
        options.log(`the libfuse 3 path is not usable (${choice.fallbackReason}); mounting through fuse-native and libfuse 2.9`);
      binding = choice.name;
    }
    const mount = new FuseMount(options, binding);
    await mount.start();
    return mount;
  }

  stats(): FuseMountStats {
    return { ...this.counters, binding: this.binding, openHandles: this.handles.size };
  }

  openHandleCount(): number {
    return this.handles.size;
  }

  /**
   * Resolves true once no handle of the file is open, false after timeoutMs.
   * The kernel sends release asynchronously after the last close, so a caller
   * that just closed the file may have to wait a moment.
   */
  waitForHandlesClosed(timeoutMs: number): Promise<boolean> {
    if (this.handles.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const onClosed = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.handlesClosedWaiters = this.handlesClosedWaiters.filter((waiter) => waiter !== onClosed);
        resolve(false);
      }, timeoutMs);
      this.handlesClosedWaiters.push(onClosed);
    });
  }

  /**
   * Detaches the mount. Idempotent, and a no-op once the mount is already gone
   * (an external umount). fuse-native's own unmount first, `fusermount -uz`
   * and `umount -l` as fallbacks.
   */
  unmount(): Promise<void> {
    if (!this.unmountPromise) this.unmountPromise = this.detach();
    return this.unmountPromise;
  }

  private async start(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        reject(new Error(`FUSE did not finish mounting ${this.mountpoint} within ${MOUNT_TIMEOUT_MS / 1000} s`));
        void this.detach().catch(() => undefined);
      }, MOUNT_TIMEOUT_MS);
      this.fuse.mount((error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (error) reject(new Error(`cannot mount FUSE at ${this.mountpoint}: ${error.message}`));
        else resolve();
      });
    });
    this.watcher = watchForUnmount(this.mountpoint, UNMOUNT_POLL_INTERVAL_MS, () => this.noticeUnmounted());
  }

  /** The mount is gone: an external umount unless unmount() was asked for first. */
  private noticeUnmounted(): void {
    if (this.unmountPromise) return;
    this.unmountPromise = Promise.resolve();
    this.watcher?.stop();
    this.options.onExternalUnmount?.();
  }

  private async detach(): Promise<void> {
    this.watcher?.stop();
    if (!(await isMountPoint(this.mountpoint))) return;
    const attempts: Array<[string, () => Promise<unknown>]> = [
      [
        `${this.binding} unmount`,
        () => withTimeout(promisify((cb: (error: Error | null) => void) => this.fuse.unmount(cb))(), UNMOUNT_COMMAND_TIMEOUT_MS),
      ],
      ['fusermount -uz', () => execFileAsync('fusermount', ['-uz', this.mountpoint], { timeout: UNMOUNT_COMMAND_TIMEOUT_MS })],
      ['umount -l', () => execFileAsync('umount', ['-l', this.mountpoint], { timeout: UNMOUNT_COMMAND_TIMEOUT_MS })],
    ];
    const failures: string[] = [];
    for (const [name, attempt] of attempts) {
      try {
        await attempt();
      } catch (error) {
        failures.push(`${name}: ${describeError(error)}`);
      }
      if (!(await isMountPoint(this.mountpoint))) return;
    }
    throw new Error(`cannot unmount ${this.mountpoint} (${failures.join('; ')}); run: fusermount -uz ${this.mountpoint}`);
  }

  private isFile(path: string): boolean {
    return path === `/${this.options.fileName}`;
  }

  private fileStat(): FuseStat {
    const sizeBytes = this.options.file.sizeBytes;
    return {
      mode: FILE_MODE,
      uid: process.getuid?.() ?? 0,
      gid: process.getgid?.() ?? 0,
      size: sizeBytes,
      nlink: 1,
      blksize: this.writeMaxBytes,
      // Reported fully allocated, so that copying tools read it instead of seeking for holes.
      blocks: Math.ceil(sizeBytes / 512),
      atime: this.modifiedAtMs,
      mtime: this.modifiedAtMs,
      ctime: this.modifiedAtMs,
    };
  }

  private directoryStat(): FuseStat {
    return {
      mode: DIRECTORY_MODE,
      uid: process.getuid?.() ?? 0,
      gid: process.getgid?.() ?? 0,
      size: 4096,
      nlink: 2,
      atime: this.mountedAtMs,
      mtime: this.mountedAtMs,
      ctime: this.mountedAtMs,
    };
  }

  /** The negative errno either binding expects for a failure of the core. */
  private errnoOf(FuseConstructor: FuseErrnos, operation: string, error: unknown): number {
    if (error instanceof FileOperationError) {
      return FuseConstructor[error.errno];
    }
    if (this.unexpectedErrorsLogged < UNEXPECTED_ERRORS_LOGGED_MAX) {
      this.unexpectedErrorsLogged += 1;
      const message = describeError(error);
      this.options.log(`${operation} of ${this.options.fileName} failed unexpectedly, answering EIO: ${message}`);
      if (this.unexpectedErrorsLogged === UNEXPECTED_ERRORS_LOGGED_MAX) {
        this.options.log('further unexpected errors are not logged');
      }
    }
    return FuseConstructor.EIO;
  }

  /** A writable handle other than `fd` that no close has come through yet. */
  private anotherWriterOpen(fd: number): boolean {
    for (const [id, handle] of this.handles) if (id !== fd && handle.writable && !handle.closed) return true;
    return false;
  }

  private releaseHandle(fd: number): void {
    this.handles.delete(fd);
    if (this.handles.size > 0) return;
    const waiters = this.handlesClosedWaiters;
    this.handlesClosedWaiters = [];
    for (const waiter of waiters) waiter();
  }

  private allocateHandleId(): number {
    // fuse-native treats 0 as "no handle", and passes handles as uint32.
    for (;;) {
      const id = this.nextHandleId;
      this.nextHandleId = id >= 0xffffffff ? 1 : id + 1;
      if (!this.handles.has(id)) return id;
    }
  }

  private operations(F: FuseErrnos): FuseOperations {
    const file = this.options.file;
    const fail = (operation: string, error: unknown): number => this.errnoOf(F, operation, error);
    const getattr = (path: string, cb: (errno: number, stat?: FuseStat) => void): void => {
      if (path === '/') return cb(0, this.directoryStat());
      if (this.isFile(path)) return cb(0, this.fileStat());
      return cb(F.ENOENT);
    };
    const truncate = (path: string, sizeBytes: number, cb: (errno: number) => void): void => {
      if (!this.isFile(path)) return cb(path === '/' ? F.EISDIR : F.ENOENT);
      if (file.readOnly) return cb(F.EROFS);
      file.truncate(sizeBytes).then(
        () => {
          this.modifiedAtMs = Date.now();
          cb(0);
        },
        (error: unknown) => cb(fail('truncate', error)),
      );
    };
    const refuse = (...args: unknown[]): void => {
      const cb = args[args.length - 1] as (errno: number) => void;
      cb(F.EPERM);
    };
    const accept = (...args: unknown[]): void => {
      const cb = args[args.length - 1] as (errno: number) => void;
      cb(0);
    };

    return {
      init: (cb) => cb(0),
      getattr,
      // fuse-native routes fgetattr to ops.getattr; defining it only makes the kernel use it.
      fgetattr: (path, _fd, cb) => getattr(path, cb),
      statfs: (_path, cb) => {
        const blocks = Math.ceil(file.sizeBytes / STATFS_BLOCK_BYTES);
        const statfs: FuseStatfs = {
          bsize: STATFS_BLOCK_BYTES,
          frsize: STATFS_BLOCK_BYTES,
          blocks,
          bfree: 0,
          bavail: 0,
          files: 1,
          ffree: 0,
          favail: 0,
          fsid: 0,
          flag: file.readOnly ? 1 : 0,
          namemax: NAME_MAX_BYTES,
        };
        cb(0, statfs);
      },
      readdir: (path, cb) => {
        if (path !== '/') return cb(this.isFile(path) ? -20 /* ENOTDIR */ : F.ENOENT);
        cb(0, ['.', '..', this.options.fileName]);
      },
      open: (path, flags, cb) => {
        if (!this.isFile(path)) return cb(F.ENOENT);
        const writable = (flags & 3) !== fsConstants.O_RDONLY;
        if (writable && file.readOnly) return cb(F.EROFS);
        const id = this.allocateHandleId();
        this.handles.set(id, { writable, closed: false });
        cb(0, id);
      },
      read: (path, _fd, buffer, length, position, cb) => {
        if (!this.isFile(path)) return cb(F.ENOENT);
        this.counters.readCalls += 1;
        if (position >= file.sizeBytes) return cb(0);
        file.read(position, length).then(
          (data) => {
            const count = Math.min(data.length, length);
            data.copy(buffer, 0, 0, count);
            cb(count);
          },
          (error: unknown) => cb(fail('read', error)),
        );
      },
      write: (path, _fd, buffer, length, position, cb) => {
        if (!this.isFile(path)) return cb(F.ENOENT);
        if (file.readOnly) return cb(F.EROFS);
        this.counters.writeCalls += 1;
        this.counters.writeBytes += length;
        if (length > this.counters.largestWriteBytes) this.counters.largestWriteBytes = length;
        // The core copies the bytes before it resolves; only then may libfuse reuse the buffer.
        const data = buffer.length === length ? buffer : buffer.subarray(0, length);
        file.write(position, data).then(
          (written) => {
            this.modifiedAtMs = Date.now();
            cb(written);
          },
          (error: unknown) => cb(fail('write', error)),
        );
      },
      fsync: (_path, _datasync, _fd, cb) => {
        this.counters.fsyncCalls += 1;
        file.fsync().then(
          () => cb(0),
          (error: unknown) => cb(fail('fsync', error)),
        );
      },
      flush: (_path, fd, cb) => {
        const handle = this.handles.get(fd);
        // A read-only handle has nothing of its own to upload.
        if (!handle?.writable) return cb(0);
        this.counters.flushCalls += 1;
        handle.closed = true;
        // Another writer is still at work (fio's jobs, parallel tools): uploading
        // now would send blocks it is about to dirty again, and its close will
        // upload them. The last writer's close is the fsync (SEMANTICS.md).
        if (this.anotherWriterOpen(fd)) return cb(0);
        file.fsync().then(
          () => cb(0),
          (error: unknown) => {
            const errno = fail('close', error);
            const message = describeError(error);
            // Many programs ignore close's result; say it where a person will see it.
            this.options.log(
              `close of ${this.options.fileName} could not upload its data (${message}); the data stays dirty and the next fsync or unmount tries again`,
            );
            cb(errno);
          },
        );
      },
      release: (_path, fd, cb) => {
        this.releaseHandle(fd);
        cb(0);
      },
      truncate,
      ftruncate: (path, _fd, sizeBytes, cb) => truncate(path, sizeBytes, cb),
      // Timestamps, mode and owner are fixed; accepting the calls keeps `cp -p`, `touch` and `rsync` working.
      utimens: accept,
      chmod: accept,
      chown: accept,
      // The directory holds exactly one file.
      create: refuse,
      mknod: refuse,
      unlink: refuse,
      rename: refuse,
      link: refuse,
      symlink: refuse,
      mkdir: refuse,
      rmdir: refuse,
    };
  }
}

function withTimeout<T>(promise: Promise<T>, timeoutMs: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}
