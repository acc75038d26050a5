// Mount points and loop devices the bench makes, and how it gets rid of them.
import { isMountPoint } from '../../../src/fuse/mountinfo';
import type { Cleanup } from './cleanup';
import { run, sleep } from './proc';

const POLL_MS = 20;

export async function waitForMounted(mountpoint: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await isMountPoint(mountpoint))) {
    if (Date.now() > deadline) throw new Error(`${mountpoint} was not mounted within ${timeoutMs} ms`);
    await sleep(POLL_MS);
  }
}

export async function waitForUnmounted(mountpoint: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (await isMountPoint(mountpoint)) {
    if (Date.now() > deadline) return false;
    await sleep(POLL_MS);
  }
  return true;
}

/** A FUSE mount that may be left behind by a killed process: lazily detached. */
export function registerFuseMountpoint(cleanup: Cleanup, mountpoint: string): () => Promise<void> {
  return cleanup.add(`unmount ${mountpoint}`, async () => {
    if (await isMountPoint(mountpoint))
      await run(cleanup, 'fusermount', ['-uz', mountpoint], { allowFailure: true, timeoutMs: 20_000, forCleanup: true });
  });
}

/** A kernel mount (ext4 on a loop device): unmounted, lazily if busy. */
export function registerKernelMountpoint(cleanup: Cleanup, mountpoint: string): () => Promise<void> {
  return cleanup.add(`umount ${mountpoint}`, async () => {
    if (!(await isMountPoint(mountpoint))) return;
    const plain = await run(cleanup, 'umount', [mountpoint], { allowFailure: true, timeoutMs: 60_000, forCleanup: true });
    if (plain.exit.code !== 0)
      await run(cleanup, 'umount', ['-l', mountpoint], { allowFailure: true, timeoutMs: 20_000, forCleanup: true });
  });
}

/** Loop devices backed by `file`, detached (a `mount -o loop` sets autoclear, but not after a failure). */
export function registerLoopBacking(cleanup: Cleanup, file: string): () => Promise<void> {
  return cleanup.add(`detach loop devices of ${file}`, async () => {
    for (const device of await loopDevicesOf(cleanup, file))
      await run(cleanup, 'losetup', ['-d', device], { allowFailure: true, timeoutMs: 20_000, forCleanup: true });
  });
}

export async function loopDevicesOf(cleanup: Cleanup, file: string): Promise<string[]> {
  const result = await run(cleanup, 'losetup', ['-j', file], { allowFailure: true, timeoutMs: 20_000, forCleanup: true });
  return result.stdout
    .split('\n')
    .map((line) => line.split(':')[0].trim())
    .filter((device) => device.startsWith('/dev/loop'));
}

/** The kernel detaches an autoclear loop device asynchronously after the umount. */
export async function waitForLoopDetached(cleanup: Cleanup, file: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while ((await loopDevicesOf(cleanup, file)).length > 0) {
    if (Date.now() > deadline) throw new Error(`a loop device still uses ${file} after ${timeoutMs} ms`);
    await sleep(100);
  }
}
