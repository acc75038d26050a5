// Baseline 1, the FUSE ceilings: null file systems that discard every write.
//   nullfs3   C, libfuse 3, 1 MiB writes            (native/nullfs, built here)
//   nullfs2   C, libfuse 2.9, big_writes, 128 KiB   (the same source)
//   noop-raw  fuse-native with a no-op handler      (scripts/bench/noop-fs.ts raw)
//   noop-adapter  the product's FuseMount over a no-op file (noop-fs.ts adapter)
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { Cleanup } from './cleanup';
import { registerFuseMountpoint, waitForMounted, waitForUnmounted } from './mounts';
import { run, spawnTracked, type Tracked } from './proc';
import { BENCH_DIR, NATIVE_BUILD_DIR, NULLFS_SOURCE, REPO_ROOT } from './paths';

const MOUNT_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 20_000;

export type CeilingKind = 'nullfs3' | 'nullfs2' | 'noop-raw' | 'noop-adapter';

/** Compiles both C null file systems with gcc and pkg-config; resolves with the binaries. */
export async function buildNullfs(cleanup: Cleanup): Promise<{ nullfs3: string; nullfs2: string }> {
  await mkdir(NATIVE_BUILD_DIR, { recursive: true });
  const build = async (output: string, fuseVersion: string, pkg: string): Promise<string> => {
    const flags = (await run(cleanup, 'pkg-config', ['--cflags', '--libs', pkg])).stdout.trim().split(/\s+/).filter(Boolean);
    const binary = path.join(NATIVE_BUILD_DIR, output);
    await run(cleanup, 'gcc', [
      '-O2',
      '-Wall',
      '-Wextra',
      '-Werror',
      `-DFUSE_USE_VERSION=${fuseVersion}`,
      NULLFS_SOURCE,
      ...flags,
      '-o',
      binary,
    ]);
    return binary;
  };
  return { nullfs3: await build('nullfs3', '31', 'fuse3'), nullfs2: await build('nullfs2', '26', 'fuse') };
}

export interface CeilingMount {
  kind: CeilingKind;
  filePath: string;
  /** Unmounts and resolves with the write calls seen and the largest write, as the file system reports them. */
  stop(): Promise<{ writeCalls: number; largestWriteBytes: number }>;
}

export async function mountCeiling(
  cleanup: Cleanup,
  kind: CeilingKind,
  scratch: string,
  binaries: { nullfs3: string; nullfs2: string },
): Promise<CeilingMount> {
  const mountpoint = path.join(scratch, `mnt-${kind}`);
  await mkdir(mountpoint, { recursive: true });
  const unregister = registerFuseMountpoint(cleanup, mountpoint);
  let child: Tracked;
  if (kind === 'nullfs3') child = spawnTracked(cleanup, kind, binaries.nullfs3, ['-f', mountpoint]);
  else if (kind === 'nullfs2')
    child = spawnTracked(cleanup, kind, binaries.nullfs2, ['-f', '-o', 'big_writes,max_write=131072', mountpoint]);
  else {
    child = spawnTracked(
      cleanup,
      kind,
      process.execPath,
      ['-r', 'tsx/cjs', path.join(BENCH_DIR, 'noop-fs.ts'), kind === 'noop-raw' ? 'raw' : 'adapter', mountpoint],
      {
        cwd: REPO_ROOT,
      },
    );
  }
  try {
    if (kind === 'nullfs3' || kind === 'nullfs2') await waitForMounted(mountpoint, MOUNT_TIMEOUT_MS);
    else await child.waitForLine(0, MOUNT_TIMEOUT_MS);
  } catch (error) {
    await child.kill();
    await unregister();
    throw error;
  }
  return {
    kind,
    filePath: path.join(mountpoint, 'null'),
    stop: async () => {
      if (kind === 'nullfs3' || kind === 'nullfs2') await run(cleanup, 'fusermount', ['-u', mountpoint], { timeoutMs: STOP_TIMEOUT_MS });
      else child.signal('SIGTERM');
      await child.waitForExit(STOP_TIMEOUT_MS);
      await waitForUnmounted(mountpoint, STOP_TIMEOUT_MS);
      await unregister();
      if (kind === 'nullfs3' || kind === 'nullfs2') {
        const match = /nullfs: writes=(\d+) bytes=\d+ largest=(\d+)/.exec(child.stderr());
        if (!match) throw new Error(`${kind} did not report its writes: ${child.stderr().trim()}`);
        return { writeCalls: Number(match[1]), largestWriteBytes: Number(match[2]) };
      }
      const last = child.stdoutLines[child.stdoutLines.length - 1];
      return JSON.parse(last) as { writeCalls: number; largestWriteBytes: number };
    },
  };
}
