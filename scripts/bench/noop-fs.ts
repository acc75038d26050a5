// The FUSE ceilings in Node, one process per mount:
//   raw      fuse-native with a no-op write handler (big_writes, 128 KiB writes),
//            the most any fuse-native file system can do on this machine
//   adapter  the product's FuseMount over a VolumeFile whose write does nothing:
//            the adapter's own cost on top of raw fuse-native
//
//   tsx scripts/bench/noop-fs.ts raw|adapter MOUNTPOINT
//
// Prints `READY FILE_PATH` once mounted; SIGINT/SIGTERM unmounts, prints one JSON
// line (write calls and the largest write seen) and exits.
import type Fuse from 'fuse-native';
import type { VolumeFile } from '../../src/core/volume-file';
import { FuseMount, loadFuseNative } from '../../src/fuse/fuse-mount';

const FILE_NAME = 'null';
/** 16 TiB, like the C null file system. */
const FILE_SIZE_BYTES = 2 ** 44;

interface WriteCounters {
  writeCalls: number;
  largestWriteBytes: number;
}

function waitForSignal(): Promise<void> {
  return new Promise((resolve) => {
    const onSignal = (): void => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      resolve();
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}

async function runRaw(mountpoint: string): Promise<WriteCounters> {
  const FuseConstructor = loadFuseNative();
  const counters: WriteCounters = { writeCalls: 0, largestWriteBytes: 0 };
  const now = Date.now();
  const stat = (directory: boolean): Fuse.FuseStat => ({
    mode: directory ? 0o040755 : 0o100644,
    uid: 0,
    gid: 0,
    size: directory ? 4096 : FILE_SIZE_BYTES,
    nlink: directory ? 2 : 1,
    atime: now,
    mtime: now,
    ctime: now,
  });
  const operations: Fuse.FuseOperations = {
    getattr: (path, cb) => {
      if (path === '/') return cb(0, stat(true));
      if (path === `/${FILE_NAME}`) return cb(0, stat(false));
      return cb(FuseConstructor.ENOENT);
    },
    open: (_path, _flags, cb) => cb(0, 1),
    write: (_path, _fd, _buffer, length, _position, cb) => {
      counters.writeCalls += 1;
      if (length > counters.largestWriteBytes) counters.largestWriteBytes = length;
      cb(length);
    },
    fsync: (_path, _datasync, _fd, cb) => cb(0),
    flush: (_path, _fd, cb) => cb(0),
    release: (_path, _fd, cb) => cb(0),
    truncate: (_path, _size, cb) => cb(0),
    ftruncate: (_path, _fd, _size, cb) => cb(0),
  };
  const fuse = new FuseConstructor(mountpoint, operations, { timeout: false, force: false, mkdir: false });
  await new Promise<void>((resolve, reject) => fuse.mount((error) => (error ? reject(error) : resolve())));
  process.stdout.write(`READY ${mountpoint}/${FILE_NAME}\n`);
  await waitForSignal();
  await new Promise<void>((resolve) => fuse.unmount(() => resolve()));
  return counters;
}

class NoopFile implements VolumeFile {
  readonly sizeBytes = FILE_SIZE_BYTES;
  readonly readOnly = false;

  async read(_offsetBytes: number, length: number): Promise<Buffer> {
    return Buffer.alloc(length);
  }

  async write(_offsetBytes: number, data: Buffer): Promise<number> {
    return data.length;
  }

  async fsync(): Promise<void> {}

  async truncate(): Promise<void> {}
}

async function runAdapter(mountpoint: string): Promise<WriteCounters> {
  const fuseMount = await FuseMount.mount({
    mountpoint,
    fileName: FILE_NAME,
    file: new NoopFile(),
    log: (line) => void process.stderr.write(`noop-fs: ${line}\n`),
    // 1d measures the adapter's own cost against 1c, fuse-native's no-op handler: the same binding.
    binding: 'fuse-native',
  });
  process.stdout.write(`READY ${fuseMount.filePath}\n`);
  await waitForSignal();
  await fuseMount.unmount();
  const { writeCalls, largestWriteBytes } = fuseMount.stats();
  return { writeCalls, largestWriteBytes };
}

async function main(): Promise<void> {
  const [mode, mountpoint] = process.argv.slice(2);
  if ((mode !== 'raw' && mode !== 'adapter') || !mountpoint) throw new Error('usage: noop-fs.ts raw|adapter MOUNTPOINT');
  const counters = mode === 'raw' ? await runRaw(mountpoint) : await runAdapter(mountpoint);
  process.stdout.write(`${JSON.stringify(counters)}\n`);
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    process.stderr.write(`noop-fs: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exit(1);
  },
);
