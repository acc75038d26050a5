// The part of fuse-native (untyped, CommonJS) that src/fuse uses. Callbacks take
// a negative errno (Fuse.EIO…) or 0, as fuse-native's index.js expects.
declare module 'fuse-native' {
  namespace Fuse {
    type Callback = (errno: number) => void;
    type ValueCallback<T> = (errno: number, value?: T) => void;

    interface FuseStat {
      mode: number;
      uid: number;
      gid: number;
      size: number;
      nlink: number;
      ino?: number;
      blksize?: number;
      blocks?: number;
      atime: Date | number;
      mtime: Date | number;
      ctime: Date | number;
    }

    interface FuseStatfs {
      bsize: number;
      frsize: number;
      blocks: number;
      bfree: number;
      bavail: number;
      files: number;
      ffree: number;
      favail: number;
      fsid: number;
      flag: number;
      namemax: number;
    }

    interface FuseOperations {
      init?(cb: Callback): void;
      getattr?(path: string, cb: ValueCallback<FuseStat>): void;
      fgetattr?(path: string, fd: number, cb: ValueCallback<FuseStat>): void;
      statfs?(path: string, cb: ValueCallback<FuseStatfs>): void;
      readdir?(path: string, cb: (errno: number, names?: string[], stats?: FuseStat[]) => void): void;
      open?(path: string, flags: number, cb: ValueCallback<number>): void;
      create?(path: string, mode: number, cb: ValueCallback<number>): void;
      read?(path: string, fd: number, buffer: Buffer, length: number, position: number, cb: Callback): void;
      write?(path: string, fd: number, buffer: Buffer, length: number, position: number, cb: Callback): void;
      flush?(path: string, fd: number, cb: Callback): void;
      fsync?(path: string, datasync: number, fd: number, cb: Callback): void;
      release?(path: string, fd: number, cb: Callback): void;
      truncate?(path: string, size: number, cb: Callback): void;
      ftruncate?(path: string, fd: number, size: number, cb: Callback): void;
      utimens?(path: string, atime: number, mtime: number, cb: Callback): void;
      chmod?(path: string, mode: number, cb: Callback): void;
      chown?(path: string, uid: number, gid: number, cb: Callback): void;
      unlink?(path: string, cb: Callback): void;
      rename?(src: string, dest: string, cb: Callback): void;
      link?(src: string, dest: string, cb: Callback): void;
      symlink?(src: string, dest: string, cb: Callback): void;
      mkdir?(path: string, mode: number, cb: Callback): void;
      rmdir?(path: string, cb: Callback): void;
      mknod?(path: string, mode: number, dev: number, cb: Callback): void;
      setxattr?(path: string, name: string, value: Buffer, position: number, flags: number, cb: Callback): void;
      removexattr?(path: string, name: string, cb: Callback): void;
    }

    /** Milliseconds, or false for none; per operation name with a `default`. */
    type FuseTimeout = number | false | ({ default?: number } & Record<string, number | false | undefined>);

    interface FuseOptions {
      timeout?: FuseTimeout;
      force?: boolean;
      mkdir?: boolean;
      debug?: boolean;
      fsname?: string;
      subtype?: string;
      attrTimeout?: number;
      entryTimeout?: number;
    }
  }

  class Fuse {
    constructor(mountpoint: string, ops: FuseOperations, options?: FuseOptions);
    readonly mnt: string;
    mount(cb: (error: Error | null) => void): void;
    unmount(cb: (error: Error | null) => void): void;
    static unmount(mountpoint: string, cb: (error: Error | null) => void): void;
    /** The `-o` argument handed to libfuse ('' for none): built from the options, overridable. */
    protected _fuseOptions(): string;
    static readonly EPERM: number;
    static readonly ENOENT: number;
    static readonly EIO: number;
    static readonly EBADF: number;
    static readonly EACCES: number;
    static readonly EEXIST: number;
    static readonly EISDIR: number;
    static readonly EINVAL: number;
    static readonly EFBIG: number;
    static readonly ENOSPC: number;
    static readonly EROFS: number;
    static readonly ENOSYS: number;
    static readonly EOPNOTSUPP: number;
  }

  export = Fuse;
}
