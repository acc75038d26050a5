// Shared pieces of the mount scenarios: a local-ebs process and temp dirs per
// suite, commands with time limits, and reading a completed snapshot back
// through GetSnapshotBlock (never through the mount) into a local file.
import { spawn } from 'node:child_process';
import { mkdtemp, open, rm, truncate as truncateFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { AwsSnapshotClient } from '../../src/ebs/aws-client';
import { BLOCK_SIZE_BYTES, type SnapshotClient } from '../../src/ebs/client';
import { isMountPoint } from '../../src/fuse/mountinfo';
import type { FuseBindingName } from '../../src/fuse/fuse-mount';
import { startLocalEbsProcess, stopAllLocalEbsProcesses, type LocalEbsProcess } from '../support/local-ebs-process';
import { cliEnvironment, MountProcess, type CliResult, type Endpoint, type MountProcessOptions } from '../support/mount-process';

export const MIB = 1048576;
export const GIB = 1073741824;
const DOWNLOAD_CONCURRENCY = 16;

export interface CommandResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command with a time limit, never through a shell. */
export function sh(
  command: string,
  args: string[],
  options: { timeoutMs?: number; env?: NodeJS.ProcessEnv; cwd?: string } = {},
): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: options.timeoutMs ?? 120_000,
      killSignal: 'SIGKILL',
      env: options.env ?? process.env,
      cwd: options.cwd,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Like sh, but rejects unless the command exits 0. */
export async function mustRun(command: string, args: string[], options: { timeoutMs?: number; cwd?: string } = {}): Promise<CommandResult> {
  const result = await sh(command, args, options);
  if (result.code !== 0) {
    throw new Error(`${command} ${args.join(' ')} exited ${result.code}: ${result.stderr.trim() || result.stdout.trim()}`);
  }
  return result;
}

/** One local-ebs process, a scratch folder and the mounts of a suite, all torn down in after(). */
export class ScenarioContext {
  localEbs!: LocalEbsProcess;
  scratch!: string;
  private readonly mounts: MountProcess[] = [];
  private mountCount = 0;

  /** binding: the FUSE path every mount of this context takes (EBS_FUSE_BINDING); the default choice when absent. */
  constructor(private readonly binding?: FuseBindingName) {}

  get endpoint(): Endpoint {
    return { endpoint: this.localEbs.endpoint, ...this.localEbs.credentials };
  }

  /**
   * A context for the enclosing describe(): set up before its tests and torn down
   * after them, also when one fails. Suites that need more before or after use
   * setUp() and tearDown() in hooks of their own.
   */
  static forSuite(faults?: string, binding?: FuseBindingName): ScenarioContext {
    const context = new ScenarioContext(binding);
    before(() => context.setUp(faults));
    after(() => context.tearDown());
    return context;
  }

  async setUp(faults?: string): Promise<void> {
    this.scratch = await mkdtemp(path.join(tmpdir(), 'ebs-fuse-scenario-'));
    this.localEbs = await startLocalEbsProcess({ dataDir: path.join(this.scratch, 'local-ebs'), faults });
  }

  /** A fresh empty mountpoint and a mount of sizeGiB on it (undefined for --resume / --read-only). */
  async mount(sizeGiB: number | undefined, args: string[] = [], extra: Partial<MountProcessOptions> = {}): Promise<MountProcess> {
    this.mountCount += 1;
    const mountpoint = path.join(this.scratch, `mnt-${this.mountCount}`);
    await mkdir(mountpoint);
    const mount = await MountProcess.start({
      mountpoint,
      sizeGiB,
      endpoint: this.endpoint,
      stateDir: path.join(this.scratch, 'state'),
      args,
      ...extra,
      ...(this.binding ? { env: { ...(extra.env ?? cliEnvironment(this.endpoint)), EBS_FUSE_BINDING: this.binding } } : {}),
    });
    this.mounts.push(mount);
    return mount;
  }

  file(name: string): string {
    return path.join(this.scratch, name);
  }

  async tearDown(): Promise<void> {
    for (const mount of this.mounts.splice(0)) await mount.cleanup();
    if (this.localEbs) await this.localEbs.stop();
    await stopAllLocalEbsProcesses();
    if (this.scratch) await rm(this.scratch, { recursive: true, force: true });
  }

  client(): AwsSnapshotClient {
    return new AwsSnapshotClient({
      endpoint: this.localEbs.endpoint,
      region: 'us-east-1',
      credentials: this.localEbs.credentials,
      maxSockets: DOWNLOAD_CONCURRENCY,
    });
  }

  /**
   * Writes the completed snapshot into `outFile` (sparse, exactly the volume
   * size) from ListSnapshotBlocks + GetSnapshotBlock; resolves with the count
   * of blocks the snapshot holds. `client` (closed at the end) defaults to a
   * plain AWS client.
   */
  async download(snapshotId: string, outFile: string, client: SnapshotClient = this.client()): Promise<number> {
    const handle = await open(outFile, 'w');
    try {
      let nextToken: string | undefined;
      let blocks = 0;
      let volumeSizeGiB = 0;
      do {
        const page = await client.listSnapshotBlocks(snapshotId, { nextToken, maxResults: 10000 });
        volumeSizeGiB = page.volumeSizeGiB;
        for (let at = 0; at < page.blocks.length; at += DOWNLOAD_CONCURRENCY) {
          await Promise.all(
            page.blocks.slice(at, at + DOWNLOAD_CONCURRENCY).map(async ({ blockIndex, blockToken }) => {
              const data = await client.getSnapshotBlock(snapshotId, blockIndex, blockToken);
              await handle.write(data, 0, data.length, blockIndex * BLOCK_SIZE_BYTES);
            }),
          );
        }
        blocks += page.blocks.length;
        nextToken = page.nextToken;
      } while (nextToken);
      await handle.truncate(volumeSizeGiB * GIB);
      return blocks;
    } finally {
      await handle.close();
      client.close();
    }
  }

  /** Downloads the snapshot and compares it byte for byte with the expected image. */
  async expectSnapshotEquals(snapshotId: string, expectedImage: string): Promise<number> {
    const downloaded = this.file(`${snapshotId}.img`);
    const blocks = await this.download(snapshotId, downloaded);
    const result = await sh('cmp', [expectedImage, downloaded]);
    await rm(downloaded, { force: true });
    if (result.code !== 0)
      throw new Error(`snapshot ${snapshotId} differs from the expected image: ${result.stdout.trim()} ${result.stderr.trim()}`);
    return blocks;
  }
}

/** A sparse file of sizeBytes zeros: the expected image of a fresh snapshot. */
export async function createZeroImage(file: string, sizeBytes: number): Promise<void> {
  const handle = await open(file, 'w');
  await handle.close();
  await truncateFile(file, sizeBytes);
}

/** Asserts the mount ended as asked: the second line `SNAPSHOT_ID STATUS` and exit 0. */
export function expectEnded(result: CliResult, snapshotId: string, status = 'completed'): void {
  const lines = result.stdout.split('\n').filter((line) => line.length > 0);
  const last = lines[lines.length - 1];
  if (result.code !== 0 || last !== `${snapshotId} ${status}` || lines.length !== 2) {
    throw new Error(
      `mount ended with code ${result.code} signal ${result.signal}, stdout ${JSON.stringify(result.stdout)}; stderr:\n${result.stderr}`,
    );
  }
}

/** Waits until no loop device is backed by `file` (the kernel detaches autoclear loops asynchronously). */
export async function waitForLoopDetached(file: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const result = await sh('losetup', ['-j', file]);
    if (result.stdout.trim() === '') return;
    if (Date.now() > deadline) throw new Error(`a loop device still uses ${file}: ${result.stdout.trim()}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** Loop mounts and loop-attached files a scenario made; cleanUp() undoes them, also after a failure. */
export class LoopDevices {
  readonly mountpoints: string[] = [];
  readonly files: string[] = [];

  async cleanUp(): Promise<void> {
    for (const mountpoint of this.mountpoints) {
      if (await isMountPoint(mountpoint).catch(() => false)) await sh('umount', ['-l', mountpoint]);
    }
    for (const file of this.files) {
      const attached = await sh('losetup', ['-j', file]);
      for (const line of attached.stdout.split('\n')) {
        const device = line.split(':')[0];
        if (device) await sh('losetup', ['-d', device]);
      }
    }
  }
}

/** mkfs.ext4 on the mounted file, a loop mount, `cp -a` of `tree` into it, umount, and the loop device detached. */
export async function copyTreeIntoExt4(
  context: ScenarioContext,
  loops: LoopDevices,
  filePath: string,
  tree: string,
  mkfsExtended = 'nodiscard',
): Promise<void> {
  loops.files.push(filePath);
  await mustRun('mkfs.ext4', ['-q', '-F', '-E', mkfsExtended, filePath], { timeoutMs: 180_000 });
  const inner = context.file(`inner-${path.basename(path.dirname(filePath))}`);
  await mkdir(inner);
  loops.mountpoints.push(inner);
  await mustRun('mount', ['-o', 'loop', filePath, inner]);
  await mustRun('cp', ['-a', tree, path.join(inner, 'tree')], { timeoutMs: 300_000 });
  await mustRun('umount', [inner]);
  await waitForLoopDetached(filePath);
}

/** Downloads the completed snapshot; returns e2fsck -fn's result and diff -r's of `tree` against its copy in the image. */
export async function checkExt4Tree(
  context: ScenarioContext,
  loops: LoopDevices,
  snapshotId: string,
  tree: string,
): Promise<{ fsck: CommandResult; diff: CommandResult }> {
  const image = context.file(`${snapshotId}-ext4.img`);
  loops.files.push(image);
  await context.download(snapshotId, image);
  const fsck = await sh('e2fsck', ['-fn', image], { timeoutMs: 180_000 });
  const check = context.file(`${snapshotId}-check`);
  await mkdir(check);
  loops.mountpoints.push(check);
  await mustRun('mount', ['-o', 'loop,ro', image, check]);
  const diff = await sh('diff', ['-r', '--no-dereference', tree, path.join(check, 'tree')], { timeoutMs: 180_000 });
  await mustRun('umount', [check]);
  return { fsck, diff };
}
