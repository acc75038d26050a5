// The FUSE adapter against real FUSE mounts, in this process, over an
// in-memory VolumeFile: the translation of each file operation, the errnos,
// the mount options reaching the kernel, and unmount detection. Everything
// that touches the mount runs asynchronously (child processes or fs.promises):
// FUSE handlers run on this process's event loop, so a synchronous call into
// the mount would deadlock.
import { strict as assert } from 'node:assert';
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readdir, rm, stat, mkdir, writeFile, unlink, truncate, readFile, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { FuseMount, LIBFUSE3_WRITE_MAX_BYTES, WRITE_MAX_BYTES, type FuseBindingName } from '../../src/fuse/fuse-mount';
import { FileOperationError } from '../../src/core/file-errors';
import { isMountPoint } from '../../src/fuse/mountinfo';
import { MemoryVolumeFile } from './memory-volume-file';

const execFileAsync = promisify(execFile);
const MIB = 1048576;
const VOLUME_BYTES = 64 * MIB;

interface Mounted {
  mount: FuseMount;
  file: MemoryVolumeFile;
  dir: string;
  logs: string[];
  externalUnmounts: number;
}

async function errnoOf(action: () => Promise<unknown>): Promise<string | undefined> {
  try {
    await action();
    return undefined;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code;
  }
}

/** Runs a command with a time limit; resolves with its exit code and stderr. */
function run(command: string, args: string[], timeoutMs = 60_000): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'], timeout: timeoutMs });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stderr }));
  });
}

// Both FUSE paths: libfuse 3 (native/fuse3, the default) and fuse-native (libfuse 2.9, where libfuse 3 is missing).
const BINDINGS: Array<{ name: FuseBindingName; writeMaxBytes: number }> = [
  { name: 'libfuse3', writeMaxBytes: LIBFUSE3_WRITE_MAX_BYTES },
  { name: 'fuse-native', writeMaxBytes: WRITE_MAX_BYTES },
];

for (const { name: binding, writeMaxBytes } of BINDINGS)
  describe(`fuse adapter through ${binding} (real FUSE mount, in-memory file)`, function () {
    this.timeout(60_000);
    let mounted: Mounted | undefined;
    const tempDirs: string[] = [];

    async function mountFile(file: MemoryVolumeFile, fileName = 'snapshot.img'): Promise<Mounted> {
      const dir = await mkdtemp(join(tmpdir(), 'ebs-fuse-adapter-'));
      tempDirs.push(dir);
      const state: Mounted = { mount: undefined as unknown as FuseMount, file, dir, logs: [], externalUnmounts: 0 };
      state.mount = await FuseMount.mount({
        mountpoint: dir,
        fileName,
        file,
        log: (line) => state.logs.push(line),
        onExternalUnmount: () => (state.externalUnmounts += 1),
        binding,
      });
      mounted = state;
      return state;
    }

    afterEach(async () => {
      if (mounted) {
        await mounted.mount.unmount().catch(async () => {
          await execFileAsync('fusermount', ['-uz', mounted!.dir]).catch(() => undefined);
        });
        mounted = undefined;
      }
      for (const dir of tempDirs.splice(0)) {
        if (await isMountPoint(dir).catch(() => false)) await execFileAsync('fusermount', ['-uz', dir]).catch(() => undefined);
        await rm(dir, { recursive: true, force: true });
      }
    });

    it('shows one directory holding exactly one file of the volume size', async () => {
      const { mount, dir } = await mountFile(new MemoryVolumeFile(VOLUME_BYTES), 'disk.raw');
      assert.equal(mount.filePath, join(dir, 'disk.raw'));
      assert.deepEqual(await readdir(dir), ['disk.raw']);
      const dirStat = await stat(dir);
      assert.ok(dirStat.isDirectory());
      assert.equal(dirStat.mode & 0o777, 0o755);
      const fileStat = await stat(mount.filePath);
      assert.ok(fileStat.isFile());
      assert.equal(fileStat.mode & 0o777, 0o644);
      assert.equal(fileStat.size, VOLUME_BYTES);
      assert.equal(await errnoOf(() => stat(join(dir, 'other'))), 'ENOENT');
    });

    it(`gets the largest writes its libfuse allows: dd bs=1M arrives as ${writeMaxBytes / 1024} KiB writes`, async () => {
      const file = new MemoryVolumeFile(VOLUME_BYTES);
      const { mount, dir } = await mountFile(file);
      const source = join(tempDirs[0], '..', `ebs-fuse-source-${process.pid}.bin`);
      const data = randomBytes(16 * MIB);
      await writeFile(source, data);
      try {
        const started = process.hrtime.bigint();
        const result = await run('dd', [`if=${source}`, `of=${mount.filePath}`, 'bs=1M', 'conv=notrunc']);
        const seconds = Number(process.hrtime.bigint() - started) / 1e9;
        assert.equal(result.code, 0, result.stderr);
        const stats = mount.stats();
        assert.equal(stats.binding, binding);
        assert.equal(mount.writeMaxBytes, writeMaxBytes);
        assert.equal(stats.largestWriteBytes, writeMaxBytes);
        assert.equal(stats.writeBytes, data.length);
        assert.equal(stats.writeCalls, data.length / writeMaxBytes);
        assert.ok((await file.read(0, data.length)).equals(data));
        // Reading back through the mount goes through the adapter's read.
        assert.ok((await readFile(mount.filePath)).subarray(0, data.length).equals(data));
        process.stderr.write(
          `      (dd bs=1M of ${data.length / MIB} MiB into the in-memory file: ${(data.length / MIB / seconds).toFixed(0)} MiB/s)\n`,
        );
        assert.equal(dir, mount.mountpoint);
      } finally {
        await rm(source, { force: true });
      }
    });

    it(
      binding === 'libfuse3'
        ? 'answers a write at once, and a read, fsync or close only after the core applied every write before it'
        : 'answers a write only after the core resolved it',
      async () => {
        const file = new MemoryVolumeFile(VOLUME_BYTES);
        file.writeDelayMs = 50;
        const { mount } = await mountFile(file);
        const data = randomBytes(3 * writeMaxBytes + 1000);
        const handle = await open(mount.filePath, 'r+');
        try {
          const { bytesWritten } = await handle.write(data, 0, data.length, 777);
          assert.equal(bytesWritten, data.length);
          // Four writes of 50 ms each: through libfuse 3 none of them is applied yet.
          const applied = (await file.read(777, data.length)).equals(data);
          assert.equal(applied, binding === 'fuse-native');
          const readBack = Buffer.alloc(data.length);
          await handle.read(readBack, 0, data.length, 777);
          assert.ok(readBack.equals(data));
          await handle.write(Buffer.from('after'), 0, 5, 10);
          await handle.sync();
          assert.equal((await file.read(10, 5)).toString(), 'after');
        } finally {
          await handle.close();
        }
        assert.ok((await file.read(777, data.length)).equals(data));
      },
    );

    if (binding === 'libfuse3') {
      it('applies queued writes in order while the queue fills and wraps, from several writers at once', async () => {
        const file = new MemoryVolumeFile(VOLUME_BYTES);
        // Slow enough that the 8 MiB queue fills, so writers wait for room and the ring wraps.
        file.writeDelayMs = 2;
        const { mount } = await mountFile(file);
        const model = Buffer.alloc(VOLUME_BYTES);
        const writerCount = 4;
        const regionBytes = VOLUME_BYTES / writerCount;
        let seed = 12345;
        const random = (limit: number): number => {
          seed = (seed * 1103515245 + 12345) % 2147483648;
          return seed % limit;
        };
        // Each writer overwrites its own region again and again, so only the order within a writer decides the result.
        const plans = Array.from({ length: writerCount }, (_, writer) =>
          Array.from({ length: 40 }, (_, i) => {
            // Every tenth write is over 1 MiB, so that the kernel sends it in parts.
            const length = i % 10 === 0 ? MIB + 1 + random(MIB) : 1 + random(MIB + 4096);
            const offset = writer * regionBytes + random(regionBytes - length);
            return { offset, data: randomBytes(length) };
          }),
        );
        for (const plan of plans) for (const { offset, data } of plan) data.copy(model, offset);
        await Promise.all(
          plans.map(async (plan) => {
            const handle = await open(mount.filePath, 'r+');
            try {
              for (const { offset, data } of plan)
                assert.equal((await handle.write(data, 0, data.length, offset)).bytesWritten, data.length);
            } finally {
              await handle.close();
            }
          }),
        );
        assert.ok((await file.read(0, VOLUME_BYTES)).equals(model));
        assert.ok(mount.stats().writeCalls > plans.flat().length, 'writes over 1 MiB arrive in parts');
      });

      it('opens the file with direct_io: a write reaches the core with no page cache, a shared mapping fails with ENODEV, a private one reads', async () => {
        const file = new MemoryVolumeFile(VOLUME_BYTES);
        const { mount } = await mountFile(file);
        await file.write(0, Buffer.from('mapped'));
        const script = [
          'import errno, mmap, sys',
          "f = open(sys.argv[1], 'r+b')",
          'try:',
          '    mmap.mmap(f.fileno(), 4096, flags=mmap.MAP_SHARED)',
          "    print('shared mapped')",
          'except OSError as e:',
          "    print('shared', errno.errorcode[e.errno])",
          "print('private', mmap.mmap(f.fileno(), 4096, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)[:6].decode())",
        ].join('\n');
        const { stdout } = await execFileAsync('python3', ['-c', script, mount.filePath]);
        assert.equal(stdout, 'shared ENODEV\nprivate mapped\n');
        // Without a page cache a read after a change in the core sees the change at once.
        await file.write(0, Buffer.from('MAPPED'));
        assert.equal((await readFile(mount.filePath)).subarray(0, 6).toString(), 'MAPPED');
      });

      it('reports a queued write the core refused at the next fsync, once, like a writeback error', async () => {
        const file = new MemoryVolumeFile(VOLUME_BYTES);
        const { mount } = await mountFile(file);
        const handle = await open(mount.filePath, 'r+');
        try {
          file.writeFailure = new FileOperationError('EIO', 'the local copy failed');
          const { bytesWritten } = await handle.write(Buffer.alloc(4096, 1), 0, 4096, 0);
          assert.equal(bytesWritten, 4096);
          assert.equal(await errnoOf(() => handle.sync()), 'EIO');
          file.writeFailure = undefined;
          await handle.sync();
          await handle.write(Buffer.alloc(4096, 2), 0, 4096, 0);
          await handle.sync();
          assert.ok((await file.read(0, 4096)).equals(Buffer.alloc(4096, 2)));
        } finally {
          await handle.close();
        }
      });
    }

    it('reads zeros where nothing was written and the latest data elsewhere', async () => {
      const file = new MemoryVolumeFile(VOLUME_BYTES);
      const { mount } = await mountFile(file);
      const data = randomBytes(1000);
      await file.write(5 * MIB + 10, data);
      const handle = await open(mount.filePath, 'r');
      try {
        const out = Buffer.alloc(3000);
        const { bytesRead } = await handle.read(out, 0, out.length, 5 * MIB);
        assert.equal(bytesRead, out.length);
        assert.ok(out.subarray(0, 10).equals(Buffer.alloc(10)));
        assert.ok(out.subarray(10, 1010).equals(data));
        assert.ok(out.subarray(1010).equals(Buffer.alloc(out.length - 1010)));
      } finally {
        await handle.close();
      }
    });

    it('cuts a write crossing the end and answers ENOSPC at or past the end', async () => {
      const file = new MemoryVolumeFile(VOLUME_BYTES);
      const { mount } = await mountFile(file);
      const handle = await open(mount.filePath, 'r+');
      try {
        const crossing = randomBytes(4096);
        const { bytesWritten } = await handle.write(crossing, 0, crossing.length, VOLUME_BYTES - 1000);
        assert.equal(bytesWritten, 1000);
        assert.ok((await file.read(VOLUME_BYTES - 1000, 1000)).equals(crossing.subarray(0, 1000)));
        assert.equal(await errnoOf(() => handle.write(crossing, 0, 10, VOLUME_BYTES)), 'ENOSPC');
        assert.equal(await errnoOf(() => handle.write(crossing, 0, 10, VOLUME_BYTES + MIB)), 'ENOSPC');
      } finally {
        await handle.close();
      }
      assert.equal((await stat(mount.filePath)).size, VOLUME_BYTES);
    });

    it('truncates as the contract says: zeros after L, EFBIG past the size, the size unchanged', async () => {
      const file = new MemoryVolumeFile(VOLUME_BYTES);
      const { mount } = await mountFile(file);
      const data = randomBytes(2 * MIB);
      await file.write(MIB, data);
      await truncate(mount.filePath, 2 * MIB);
      assert.equal((await stat(mount.filePath)).size, VOLUME_BYTES);
      const content = await file.read(MIB, 2 * MIB);
      assert.ok(content.subarray(0, MIB).equals(data.subarray(0, MIB)));
      assert.ok(content.subarray(MIB).equals(Buffer.alloc(MIB)));
      assert.equal(await errnoOf(() => truncate(mount.filePath, VOLUME_BYTES + 1)), 'EFBIG');
      // O_TRUNC arrives as a truncate to 0.
      const handle = await open(mount.filePath, 'w');
      await handle.close();
      assert.ok((await file.read(MIB, MIB)).equals(Buffer.alloc(MIB)));
      assert.equal((await stat(mount.filePath)).size, VOLUME_BYTES);
    });

    it('answers fsync and close with EIO while the core cannot upload, then 0 once it can', async () => {
      const file = new MemoryVolumeFile(VOLUME_BYTES);
      const { mount, logs } = await mountFile(file);
      const handle = await open(mount.filePath, 'r+');
      let closed = false;
      try {
        await handle.write(Buffer.from('hello'), 0, 5, 0);
        file.failFsync = true;
        assert.equal(await errnoOf(() => handle.sync()), 'EIO');
        assert.equal(await errnoOf(() => handle.datasync()), 'EIO');
        file.failFsync = false;
        await handle.sync();
        file.failFsync = true;
        assert.equal(await errnoOf(() => handle.close()), 'EIO');
        closed = true;
        assert.ok(
          logs.some((line) => line.includes('close of snapshot.img')),
          logs.join('\n'),
        );
      } finally {
        if (!closed) await handle.close().catch(() => undefined);
      }
      file.failFsync = false;
      // A read-only handle has nothing to upload: its close does not fsync.
      const callsBefore = file.fsyncCalls;
      const reader = await open(mount.filePath, 'r');
      await reader.close();
      assert.equal(file.fsyncCalls, callsBefore);
    });

    it('uploads at the close of the last writer only: a close while another writable handle is open does not fsync', async () => {
      const file = new MemoryVolumeFile(VOLUME_BYTES);
      const { mount } = await mountFile(file);
      // Every handle the test opens is closed at the end, whatever failed.
      const unclosed = new Set<FileHandle>();
      const openHandle = async (flags: string): Promise<FileHandle> => {
        const handle = await open(mount.filePath, flags);
        unclosed.add(handle);
        return handle;
      };
      const closeHandle = async (handle: FileHandle): Promise<void> => {
        unclosed.delete(handle);
        await handle.close();
      };
      try {
        const first = await openHandle('r+');
        const second = await openHandle('r+');
        await openHandle('r');
        await first.write(Buffer.from('first'), 0, 5, 0);
        await second.write(Buffer.from('second'), 0, 6, MIB);
        const callsBefore = file.fsyncCalls;
        await closeHandle(first);
        assert.equal(file.fsyncCalls, callsBefore, 'the first of two writers closed: nothing uploaded');
        // A reader still open does not count as a writer.
        await closeHandle(second);
        assert.equal(file.fsyncCalls, callsBefore + 1, 'the last writer closed: one fsync of the whole file');
        // Both close before either release arrives: the second close still finds the first one closed.
        const third = await openHandle('r+');
        const fourth = await openHandle('r+');
        await Promise.all([closeHandle(third), closeHandle(fourth)]);
        assert.equal(file.fsyncCalls, callsBefore + 2, 'two writers closing together: the later close uploads');
        // An fsync is an fsync whoever else has the file open.
        const fifth = await openHandle('r+');
        const sixth = await openHandle('r+');
        await fifth.sync();
        assert.equal(file.fsyncCalls, callsBefore + 3);
        await closeHandle(fifth);
        await closeHandle(sixth);
        assert.equal(file.fsyncCalls, callsBefore + 4);
      } finally {
        for (const handle of unclosed) await handle.close().catch(() => undefined);
      }
    });

    it('answers EIO to a failure the core did not classify, and logs it', async () => {
      const file = new MemoryVolumeFile(VOLUME_BYTES);
      const { mount, logs } = await mountFile(file);
      file.readFailure = new Error('read-back store unreadable');
      const handle = await open(mount.filePath, 'r');
      try {
        // O_DIRECT is not needed: nothing of the file is in the page cache yet.
        assert.equal(await errnoOf(() => handle.read(Buffer.alloc(4096), 0, 4096, 0)), 'EIO');
      } finally {
        await handle.close();
      }
      assert.ok(
        logs.some((line) => line.includes('read-back store unreadable')),
        logs.join('\n'),
      );
    });

    it("lets an fsync take longer than fuse-native's default 15 s op timeout", async function () {
      this.timeout(60_000);
      const file = new MemoryVolumeFile(VOLUME_BYTES);
      file.fsyncDelayMs = 16_000;
      const { mount } = await mountFile(file);
      const handle = await open(mount.filePath, 'r+');
      try {
        await handle.write(Buffer.from('slow'), 0, 4, 0);
        // With fuse-native's default this answers ETIMEDOUT after 15 s while the upload goes on.
        await handle.sync();
      } finally {
        file.fsyncDelayMs = 0;
        await handle.close();
      }
    });

    it('refuses to create, remove or rename anything', async () => {
      const { mount, dir } = await mountFile(new MemoryVolumeFile(VOLUME_BYTES));
      assert.equal(await errnoOf(() => writeFile(join(dir, 'new-file'), 'x')), 'EPERM');
      assert.equal(await errnoOf(() => mkdir(join(dir, 'sub'))), 'EPERM');
      assert.equal(await errnoOf(() => unlink(mount.filePath)), 'EPERM');
      const mv = await run('mv', [mount.filePath, join(dir, 'renamed.img')]);
      assert.notEqual(mv.code, 0);
      assert.deepEqual(await readdir(dir), ['snapshot.img']);
      // Harmless metadata calls succeed so that `touch` and `cp -p` work.
      assert.equal((await run('touch', [mount.filePath])).code, 0);
      assert.equal((await run('chmod', ['0600', mount.filePath])).code, 0);
    });

    it('answers EROFS to writes on a read-only volume', async () => {
      const file = new MemoryVolumeFile(VOLUME_BYTES, true);
      const { mount } = await mountFile(file);
      assert.equal(await errnoOf(() => open(mount.filePath, 'r+')), 'EROFS');
      assert.equal(await errnoOf(() => truncate(mount.filePath, 0)), 'EROFS');
      const reader = await open(mount.filePath, 'r');
      await reader.close();
    });

    it('reports an external umount and unmounts idempotently', async () => {
      const { mount, dir } = await mountFile(new MemoryVolumeFile(VOLUME_BYTES));
      assert.ok(await isMountPoint(mount.mountpoint));
      const result = await run('umount', [dir]);
      assert.equal(result.code, 0, result.stderr);
      const deadline = Date.now() + 5000;
      while (mounted!.externalUnmounts === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
      assert.equal(mounted!.externalUnmounts, 1);
      await mount.unmount();
      await mount.unmount();
      assert.equal(await isMountPoint(mount.mountpoint), false);
    });

    it('unmounts on request without reporting it as external, and tracks open handles', async () => {
      const { mount } = await mountFile(new MemoryVolumeFile(VOLUME_BYTES));
      const handle = await open(mount.filePath, 'r');
      assert.equal(mount.openHandleCount(), 1);
      assert.equal(await mount.waitForHandlesClosed(200), false);
      const waiting = mount.waitForHandlesClosed(5000);
      await handle.close();
      assert.equal(await waiting, true);
      await Promise.all([mount.unmount(), mount.unmount()]);
      assert.equal(await isMountPoint(mount.mountpoint), false);
      await new Promise((resolve) => setTimeout(resolve, 1200));
      assert.equal(mounted!.externalUnmounts, 0);
    });
  });
