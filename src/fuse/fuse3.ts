// The libfuse 3 path: native/fuse3/fuse3-binding.c behind the same constructor,
// mount, unmount and operation callbacks that fuse-native has, so the adapter in
// fuse-mount.ts drives either. What is different, and why, is in the C file's
// header: 1 MiB writes, and writes of the file queued in a bounded ring and
// answered on the FUSE thread. This class applies the queued writes in order,
// holds every other operation until the writes queued before it are applied, and
// hands a refused write's errno to the handles open for writing at the time.
import { execFile } from 'node:child_process';
import { constants as fsConstants, existsSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import type Fuse from 'fuse-native';
import { describeError } from '../errors';

type FuseOperations = Fuse.FuseOperations;
type FuseStat = Fuse.FuseStat;
type FuseStatfs = Fuse.FuseStatfs;

/** The op codes of fuse3-binding.c's `enum op`, in its order. */
const OP = {
  INIT: 0,
  EXIT: 1,
  WRITE_QUEUED: 2,
  GETATTR: 3,
  READDIR: 4,
  OPEN: 5,
  READ: 6,
  WRITE: 7,
  STATFS: 8,
  FLUSH: 9,
  RELEASE: 10,
  FSYNC: 11,
  TRUNCATE: 12,
  UTIMENS: 13,
  CHMOD: 14,
  CHOWN: 15,
  CREATE: 16,
  MKNOD: 17,
  UNLINK: 18,
  RMDIR: 19,
  MKDIR: 20,
  SYMLINK: 21,
  RENAME: 22,
  LINK: 23,
} as const;
const OP_COUNT = 24;
/** fuse-native's names, which the timeouts are keyed by. */
const OP_NAMES: Record<number, string> = Object.fromEntries(Object.entries(OP).map(([name, code]) => [code, name.toLowerCase()]));

declare const sessionBrand: unique symbol;
declare const requestBrand: unique symbol;
type Session = { readonly [sessionBrand]: true };
type NativeRequest = { readonly [requestBrand]: true };

type EventHandler = (
  op: number,
  request: NativeRequest | undefined,
  path: string | undefined,
  path2: string | undefined,
  a: number,
  b: number,
  c: number,
  data: Buffer | undefined,
) => void;

interface Fuse3Binding {
  mount(
    mountpoint: string,
    options: string,
    filePath: string,
    ring: ArrayBuffer,
    timeoutsMs: number[],
    limits: [queuedWritesMax: number, writeWaitMs: number, absorbBelowBytes: number],
    handler: EventHandler,
  ): Session;
  /** False when the FUSE thread no longer waits (its timeout passed) or it was answered already. */
  reply(request: NativeRequest, result: number, payload?: unknown): boolean;
  consumed(session: Session, ringEnd: number): void;
  setAbsorbBelow(session: Session, bytes: number): void;
  destroy(session: Session): void;
  readonly WRITE_MAX_BYTES: number;
}

/** Where scripts/setup.sh and the package's install step build the addon. */
const FUSE3_BINDING_PATH = join(__dirname, '..', '..', 'native', 'build', 'fuse3-binding.node');

/** The writes queued between the FUSE thread and the event loop: 8 one-MiB writes. */
const WRITE_QUEUE_BYTES = 8 * 1024 * 1024;
const QUEUED_WRITES_MAX = 256;

let loadedBinding: Fuse3Binding | undefined;

/** The addon, or why it cannot be used (not built, or libfuse3.so.3 missing). */
export function loadFuse3Binding(): Fuse3Binding | string {
  if (loadedBinding) return loadedBinding;
  if (!existsSync(FUSE3_BINDING_PATH)) return `${FUSE3_BINDING_PATH} is not built`;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- a native addon, loaded on first use
    loadedBinding = require(FUSE3_BINDING_PATH) as Fuse3Binding;
    return loadedBinding;
  } catch (error) {
    return `${FUSE3_BINDING_PATH} failed to load (${describeError(error)})`;
  }
}

export interface Fuse3Options extends Fuse.FuseOptions {
  /** The path inside the mount ("/snapshot.img") whose writes are queued. */
  queuedFilePath: string;
  /** Writes ending past this go to the adapter one by one (its errno is the answer); 0 on a read-only mount. */
  absorbBelowBytes: () => number;
  /**
   * Called once when the FUSE session ends, by unmount() or an external umount.
   * Until then the session keeps the event loop alive; afterwards nothing does.
   */
  onSessionEnd: () => void;
}

function errnoConstant(name: keyof typeof osConstants.errno): number {
  return -osConstants.errno[name];
}

function statArray(stat: FuseStat): number[] {
  const ms = (time: Date | number): number => (typeof time === 'number' ? time : time.getTime());
  return [
    stat.mode,
    stat.uid,
    stat.gid,
    stat.size,
    stat.nlink,
    stat.blksize ?? 0,
    stat.blocks ?? 0,
    ms(stat.atime),
    ms(stat.mtime),
    ms(stat.ctime),
  ];
}

function statfsArray(s: FuseStatfs): number[] {
  return [s.bsize, s.frsize, s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.favail, s.fsid, s.flag, s.namemax];
}

/** The errnos are those the adapter answers with (fuse-mount.ts: FuseErrnos) and ENOSYS. */
export class Fuse3 {
  static readonly EPERM = errnoConstant('EPERM');
  static readonly ENOENT = errnoConstant('ENOENT');
  static readonly EIO = errnoConstant('EIO');
  static readonly EISDIR = errnoConstant('EISDIR');
  static readonly EINVAL = errnoConstant('EINVAL');
  static readonly EFBIG = errnoConstant('EFBIG');
  static readonly ENOSPC = errnoConstant('ENOSPC');
  static readonly EROFS = errnoConstant('EROFS');
  static readonly ENOSYS = errnoConstant('ENOSYS');

  readonly mnt: string;
  private readonly binding: Fuse3Binding;
  private readonly ring = new ArrayBuffer(WRITE_QUEUE_BYTES);
  private session: Session | undefined;
  private mountCallback: ((error: Error | null) => void) | undefined;
  private exited = false;
  private exitWaiters: Array<() => void> = [];
  /** Settles once every write queued so far is applied. */
  private writesApplied: Promise<void> = Promise.resolve();
  private writesPending = 0;
  /**
   * Handles opened for writing, each with the errno of a queued write the adapter
   * refused while it was open (0: none). Its next fsync or flush reports it once:
   * Linux's rule for writeback errors, every descriptor open at the time sees it.
   */
  private readonly writableHandles = new Map<number, number>();

  constructor(
    mountpoint: string,
    private readonly ops: FuseOperations,
    private readonly options: Fuse3Options,
  ) {
    const binding = loadFuse3Binding();
    if (typeof binding === 'string') throw new Error(binding);
    this.binding = binding;
    this.mnt = mountpoint;
  }

  mount(cb: (error: Error | null) => void): void {
    const timeoutsMs = Array.from({ length: OP_COUNT }, (_, code) => this.timeoutMs(OP_NAMES[code]));
    const fuseOptions = [`fsname=${this.options.fsname ?? 'fuse'}`, `subtype=${this.options.subtype ?? 'fuse'}`].join(',');
    this.mountCallback = cb;
    try {
      this.session = this.binding.mount(
        this.mnt,
        fuseOptions,
        this.options.queuedFilePath,
        this.ring,
        timeoutsMs,
        [QUEUED_WRITES_MAX, this.timeoutMs('write'), this.options.absorbBelowBytes()],
        this.onEvent,
      );
    } catch (error) {
      this.mountCallback = undefined;
      cb(new Error(describeError(error)));
    }
  }

  /** A plain umount (EBUSY while the file is open); resolves when the FUSE thread has ended. */
  unmount(cb: (error: Error | null) => void): void {
    if (this.exited || this.session === undefined) return cb(null);
    const [command, args] = process.getuid?.() === 0 ? ['umount', [this.mnt]] : ['fusermount3', ['-u', this.mnt]];
    execFile(command, args, (error) => {
      if (error) return cb(new Error(`${command} ${this.mnt}: ${describeError(error)}`));
      if (this.exited) return cb(null);
      this.exitWaiters.push(() => cb(null));
    });
  }

  private timeoutMs(name: string | undefined): number {
    const timeout = this.options.timeout;
    if (timeout === false || timeout === undefined) return 0;
    if (typeof timeout === 'number') return timeout;
    const named = name === undefined ? undefined : timeout[name];
    if (named === false) return 0;
    return named ?? timeout.default ?? 0;
  }

  private readonly onEvent: EventHandler = (op, request, path, path2, a, b, c, data) => {
    if (op === OP.INIT) {
      const cb = this.mountCallback;
      this.mountCallback = undefined;
      cb?.(null);
      return;
    }
    if (op === OP.EXIT) return this.onExit();
    if (op === OP.WRITE_QUEUED) return this.applyQueuedWrite(a, b, c);
    if (request === undefined) return;
    const run = (): void => this.dispatch(op, request, path ?? '/', path2 ?? '', a, b, c, data);
    if (this.writesPending === 0) run();
    else void this.writesApplied.then(run);
  };

  private applyQueuedWrite(ringOffset: number, length: number, position: number): void {
    const session = this.session;
    if (session === undefined) return;
    this.writesPending += 1;
    const data = Buffer.from(this.ring, ringOffset, length);
    this.writesApplied = this.writesApplied.then(
      () =>
        new Promise<void>((resolve) => {
          let settled = false;
          const done = (result: number): void => {
            // The ring is freed exactly once per write, whatever the callback does.
            if (settled) return;
            settled = true;
            if (result !== length) this.deferWriteError(result < 0 ? result : Fuse3.EIO);
            this.binding.consumed(session, ringOffset + length);
            this.writesPending -= 1;
            resolve();
          };
          const write = this.ops.write;
          if (!write) return done(Fuse3.ENOSYS);
          try {
            write(this.options.queuedFilePath, 0, data, length, position, done);
          } catch {
            done(Fuse3.EIO);
          }
        }),
    );
  }

  private onExit(): void {
    void this.writesApplied.then(() => {
      if (this.session !== undefined && !this.exited) this.binding.destroy(this.session);
      this.exited = true;
      const mountCallback = this.mountCallback;
      this.mountCallback = undefined;
      mountCallback?.(new Error('the FUSE session ended before the kernel finished mounting'));
      const waiters = this.exitWaiters;
      this.exitWaiters = [];
      for (const waiter of waiters) waiter();
      this.options.onSessionEnd();
    });
  }

  private deferWriteError(errno: number): void {
    for (const [handle, pending] of this.writableHandles) if (pending === 0) this.writableHandles.set(handle, errno);
  }

  /** Hands an fsync or flush of `handle` the error of a queued write refused while it was open. */
  private withDeferredError(handle: number, errno: number): number {
    const deferred = this.writableHandles.get(handle) ?? 0;
    if (deferred === 0) return errno;
    this.writableHandles.set(handle, 0);
    return errno !== 0 ? errno : deferred;
  }

  private dispatch(
    op: number,
    request: NativeRequest,
    path: string,
    path2: string,
    a: number,
    b: number,
    c: number,
    data: Buffer | undefined,
  ): void {
    const ops = this.ops;
    const reply = (result: number, payload?: unknown): boolean => this.binding.reply(request, result, payload);
    const done = (errno: number): void => void reply(errno);
    const missing = (): void => done(Fuse3.ENOSYS);
    try {
      switch (op) {
        case OP.GETATTR:
          if (!ops.getattr) return missing();
          return ops.getattr(path, (errno, stat) => (errno === 0 && stat ? reply(0, statArray(stat)) : reply(errno || Fuse3.EIO)));
        case OP.READDIR:
          if (!ops.readdir) return missing();
          return ops.readdir(path, (errno, names) => reply(errno, names ?? []));
        case OP.OPEN:
          if (!ops.open) return missing();
          return ops.open(path, a, (errno, handle) => {
            if (errno !== 0 || handle === undefined) return void reply(errno || Fuse3.EIO);
            if (!reply(0, handle)) return ops.release?.(path, handle, () => undefined);
            if ((a & 3) !== fsConstants.O_RDONLY) this.writableHandles.set(handle, 0);
          });
        case OP.READ: {
          if (!ops.read) return missing();
          const buffer = Buffer.allocUnsafe(a);
          return ops.read(path, c, buffer, a, b, (result) => reply(result, buffer));
        }
        case OP.WRITE:
          if (!ops.write || !data) return missing();
          return ops.write(path, c, data, a, b, done);
        case OP.STATFS:
          if (!ops.statfs) return missing();
          return ops.statfs(path, (errno, statfs) => (errno === 0 && statfs ? reply(0, statfsArray(statfs)) : reply(errno || Fuse3.EIO)));
        case OP.FLUSH:
          if (!this.writableHandles.has(c)) return ops.flush ? ops.flush(path, c, done) : done(0);
          if (!ops.flush) return done(this.withDeferredError(c, 0));
          return ops.flush(path, c, (errno) => done(this.withDeferredError(c, errno)));
        case OP.FSYNC:
          if (!ops.fsync) return done(this.withDeferredError(c, 0));
          return ops.fsync(path, a, c, (errno) => done(this.withDeferredError(c, errno)));
        case OP.RELEASE:
          this.writableHandles.delete(c);
          if (!ops.release) return done(0);
          return ops.release(path, c, done);
        case OP.TRUNCATE: {
          const after = (errno: number): void => {
            if (errno === 0 && this.session !== undefined) this.binding.setAbsorbBelow(this.session, this.options.absorbBelowBytes());
            done(errno);
          };
          if (c !== 0 && ops.ftruncate) return ops.ftruncate(path, c, a, after);
          if (!ops.truncate) return missing();
          return ops.truncate(path, a, after);
        }
        case OP.UTIMENS:
          return ops.utimens ? ops.utimens(path, 0, 0, done) : missing();
        case OP.CHMOD:
          return ops.chmod ? ops.chmod(path, a, done) : missing();
        case OP.CHOWN:
          return ops.chown ? ops.chown(path, a, b, done) : missing();
        case OP.CREATE:
          return ops.create ? ops.create(path, a, (errno) => done(errno)) : missing();
        case OP.MKNOD:
          return ops.mknod ? ops.mknod(path, a, b, done) : missing();
        case OP.UNLINK:
          return ops.unlink ? ops.unlink(path, done) : missing();
        case OP.RMDIR:
          return ops.rmdir ? ops.rmdir(path, done) : missing();
        case OP.MKDIR:
          return ops.mkdir ? ops.mkdir(path, a, done) : missing();
        case OP.SYMLINK:
          return ops.symlink ? ops.symlink(path, path2, done) : missing();
        case OP.RENAME:
          return ops.rename ? ops.rename(path, path2, done) : missing();
        case OP.LINK:
          return ops.link ? ops.link(path, path2, done) : missing();
        default:
          return missing();
      }
    } catch {
      reply(Fuse3.EIO);
    }
  }
}
