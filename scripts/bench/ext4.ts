// Baseline 5: a file system workload. mkfs.ext4, a loop mount, `cp -a` of a tree
// of small files and the umount, done (a) on the mounted snapshot file, ending
// with the completed snapshot, and (b) on a local image file followed by
// `ebs-fuse upload`, the coldsnap way. Both against a fresh local-ebs.
//
// -E nodiscard: fuse-native has no fallocate handler, so discard would fail.
// -o noinit_itable: no ext4lazyinit thread zeroing inode tables in the
// background while the workload runs; the same options on both sides.
import { randomBytes } from 'node:crypto';
import { mkdir, rm, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Cleanup } from './lib/cleanup';
import { countNonZeroBlocks } from './lib/data';
import { RunningMount, runUpload } from './lib/ebs-fuse';
import { LocalEbs, putsBetween } from './lib/local-ebs';
import { registerKernelMountpoint, registerLoopBacking, waitForLoopDetached } from './lib/mounts';
import { run, type Rusage } from './lib/proc';

const FILES_PER_DIRECTORY = 100;
const DIRECTORIES_PER_PARENT = 10;
const COMMAND_TIMEOUT_MS = 10 * 60_000;

export interface Ext4Settings {
  scratch: string;
  fileCount: number;
  fileSizeMaxBytes: number;
  volumeSizeGiB: number;
  rounds: number;
  uploadAvailable: boolean;
  log: (line: string) => void;
}

export interface TreeInfo {
  files: number;
  directories: number;
  bytes: number;
}

export interface Ext4MountSample {
  /** Spawn of `ebs-fuse mount` to the completed snapshot. */
  wallSeconds: number;
  /** mkfs + loop mount + cp + umount. */
  workloadSeconds: number;
  /** Unmount signal to completed. */
  finishSeconds: number;
  puts: number;
  distinctBlocks: number;
  rusage: Rusage;
}

export interface Ext4UploadSample {
  /** truncate + mkfs + loop mount + cp + umount + upload. */
  wallSeconds: number;
  workloadSeconds: number;
  uploadSeconds: number;
  puts: number;
  distinctBlocks: number;
  /** Non-zero 512 KiB blocks of the finished local image. */
  nonZeroBlocks: number;
  rusage: Rusage;
}

export interface Ext4Result {
  tree: TreeInfo;
  rounds: Array<{ mount: Ext4MountSample; upload?: Ext4UploadSample }>;
}

/** A small deterministic generator for file sizes, so both sides and every run copy the same shape of tree. */
function sizeGenerator(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

export async function makeTree(root: string, fileCount: number, fileSizeMaxBytes: number): Promise<TreeInfo> {
  const random = sizeGenerator(6);
  const pool = randomBytes(fileSizeMaxBytes + 4096);
  let bytes = 0;
  let directories = 0;
  for (let file = 0; file < fileCount; file += FILES_PER_DIRECTORY) {
    const directoryIndex = file / FILES_PER_DIRECTORY;
    const folder = path.join(
      root,
      `d${Math.floor(directoryIndex / DIRECTORIES_PER_PARENT)}`,
      `s${directoryIndex % DIRECTORIES_PER_PARENT}`,
    );
    await mkdir(folder, { recursive: true });
    directories += 1;
    const writes: Array<Promise<void>> = [];
    for (let inDirectory = 0; inDirectory < FILES_PER_DIRECTORY && file + inDirectory < fileCount; inDirectory += 1) {
      const size = Math.floor(random() * (fileSizeMaxBytes + 1));
      // Distinct content per file (a fresh random prefix), without generating every byte anew.
      const content = Buffer.concat([randomBytes(Math.min(64, size)), pool.subarray(0, Math.max(0, size - 64))]);
      bytes += content.length;
      writes.push(writeFile(path.join(folder, `f${inDirectory}.bin`), content));
    }
    await Promise.all(writes);
  }
  return { files: fileCount, directories, bytes };
}

/** mkfs.ext4, loop mount, cp -a, umount; resolves with the seconds it took. */
export async function fileSystemWorkload(cleanup: Cleanup, image: string, inner: string, tree: string): Promise<number> {
  const startNs = process.hrtime.bigint();
  await mkdir(inner, { recursive: true });
  const detachLoops = registerLoopBacking(cleanup, image);
  const unmountInner = registerKernelMountpoint(cleanup, inner);
  await run(cleanup, 'mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', image], { timeoutMs: COMMAND_TIMEOUT_MS });
  await run(cleanup, 'mount', ['-o', 'loop,noinit_itable', image, inner], { timeoutMs: COMMAND_TIMEOUT_MS });
  await run(cleanup, 'cp', ['-a', tree, path.join(inner, 'tree')], { timeoutMs: COMMAND_TIMEOUT_MS });
  await run(cleanup, 'umount', [inner], { timeoutMs: COMMAND_TIMEOUT_MS });
  await waitForLoopDetached(cleanup, image, 60_000);
  const seconds = Number(process.hrtime.bigint() - startNs) / 1e9;
  await unmountInner();
  await detachLoops();
  return seconds;
}

export async function runExt4(cleanup: Cleanup, settings: Ext4Settings): Promise<Ext4Result> {
  const { scratch } = settings;
  const treeRoot = path.join(scratch, 'ext4-tree');
  const removeTree = cleanup.add(`remove ${treeRoot}`, () => rm(treeRoot, { recursive: true, force: true }));
  const tree = await makeTree(treeRoot, settings.fileCount, settings.fileSizeMaxBytes);
  settings.log(`ext4: tree of ${tree.files} files in ${tree.directories} directories, ${(tree.bytes / 2 ** 20).toFixed(0)} MiB`);

  const rounds: Ext4Result['rounds'] = [];
  for (let round = 1; round <= settings.rounds; round += 1) {
    if (cleanup.interrupted) throw new Error('interrupted');
    const mount = await throughMount(cleanup, settings, treeRoot, round);
    settings.log(
      `ext4 round ${round}: through the mount ${mount.wallSeconds.toFixed(1)} s, ${mount.puts} PUTs, ${mount.distinctBlocks} blocks`,
    );
    let upload: Ext4UploadSample | undefined;
    if (settings.uploadAvailable) {
      upload = await localThenUpload(cleanup, settings, treeRoot, round);
      settings.log(
        `ext4 round ${round}: local image + upload ${upload.wallSeconds.toFixed(1)} s, ${upload.puts} PUTs, ${upload.nonZeroBlocks} non-zero blocks`,
      );
    }
    rounds.push({ mount, upload });
  }
  await removeTree();
  return { tree, rounds };
}

async function throughMount(cleanup: Cleanup, settings: Ext4Settings, treeRoot: string, round: number): Promise<Ext4MountSample> {
  const name = `ext4-mount-${round}`;
  const server = await LocalEbs.start(cleanup, settings.scratch, name);
  const before = await server.stats();
  const startNs = process.hrtime.bigint();
  const mount = await RunningMount.start(cleanup, { name, scratch: settings.scratch, volumeSizeGiB: settings.volumeSizeGiB, server });
  const workloadSeconds = await fileSystemWorkload(cleanup, mount.filePath, path.join(settings.scratch, `inner-${name}`), treeRoot);
  const finished = await mount.finish();
  const wallSeconds = Number(finished.endedAtNs - startNs) / 1e9;
  const puts = putsBetween(before, await server.stats());
  const distinctBlocks = await server.countSnapshotBlocks(finished.snapshotId);
  await server.stop();
  return { wallSeconds, workloadSeconds, finishSeconds: finished.finishSeconds, puts, distinctBlocks, rusage: finished.rusage };
}

async function localThenUpload(cleanup: Cleanup, settings: Ext4Settings, treeRoot: string, round: number): Promise<Ext4UploadSample> {
  const name = `ext4-upload-${round}`;
  const image = path.join(settings.scratch, `${name}.img`);
  const removeImage = cleanup.add(`remove ${image}`, () => rm(image, { force: true }));
  const server = await LocalEbs.start(cleanup, settings.scratch, name);
  const before = await server.stats();
  const startNs = process.hrtime.bigint();
  await writeFile(image, '');
  await truncate(image, settings.volumeSizeGiB * 2 ** 30);
  const workloadSeconds = await fileSystemWorkload(cleanup, image, path.join(settings.scratch, `inner-${name}`), treeRoot);
  const uploaded = await runUpload(cleanup, server, settings.scratch, name, image);
  const wallSeconds = Number(process.hrtime.bigint() - startNs) / 1e9;
  const puts = putsBetween(before, await server.stats());
  const distinctBlocks = await server.countSnapshotBlocks(uploaded.snapshotId);
  await server.stop();
  const nonZeroBlocks = await countNonZeroBlocks(image);
  await removeImage();
  return { wallSeconds, workloadSeconds, uploadSeconds: uploaded.seconds, puts, distinctBlocks, nonZeroBlocks, rusage: uploaded.rusage };
}
