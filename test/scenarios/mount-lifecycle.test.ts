// The lifecycle a script uses: `ebs-fuse mount --background` returns once the
// file can be written, `ebs-fuse status [--json]` shows the running mount, and
// `ebs-fuse unmount MOUNTPOINT` ends it and prints `SNAPSHOT_ID STATUS`, exiting
// 0 only if it ended as asked. Bad input (a second unmount, a mountpoint that is
// not ours, a mount whose process died) gets one line and a non-zero exit. The
// runtime directory of the mount records is the suite's own (XDG_RUNTIME_DIR).
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setLocalEbsFaults } from '../../src/local-ebs/admin-client';
import { isMountPoint } from '../../src/fuse/mountinfo';
import type { MountStatus } from '../../src/commands/status';
import { CLI_PATH, cliEnvironment } from '../support/mount-process';
import { createZeroImage, GIB, MIB, mustRun, ScenarioContext, sh, type CommandResult } from './support';

const COMMAND_TIMEOUT_MS = 120_000;

describe('scenario: mount --background, status and unmount', function () {
  this.timeout(300_000);
  const context = new ScenarioContext();
  let runtimeDir = '';
  let mountCount = 0;
  /** Pids of background mounts, killed in after() if a test left one running. */
  const pids = new Set<number>();
  const mountpoints: string[] = [];

  const cli = (args: string[]): Promise<CommandResult> =>
    sh(process.execPath, [CLI_PATH, ...args], {
      env: cliEnvironment(context.endpoint, { XDG_RUNTIME_DIR: runtimeDir }),
      timeoutMs: COMMAND_TIMEOUT_MS,
    });

  /** `mount MOUNTPOINT` of a new 1 GiB snapshot on the suite's local-ebs and state directory. */
  const mountArgs = (mountpoint: string): string[] => [
    'mount',
    mountpoint,
    '--size',
    '1',
    '--endpoint',
    context.endpoint.endpoint,
    '--state-dir',
    context.file('state'),
  ];

  const status = async (mountpoint?: string): Promise<MountStatus[]> => {
    const result = await cli(['status', ...(mountpoint ? [mountpoint] : []), '--json']);
    assert.equal(result.code, 0, result.stderr);
    const parsed = JSON.parse(result.stdout) as MountStatus[] | MountStatus;
    return Array.isArray(parsed) ? parsed : [parsed];
  };

  const assertOneLineFailure = (result: CommandResult, pattern: RegExp): void => {
    assert.notEqual(result.code, 0, `exit ${result.code}: ${result.stdout}`);
    const lines = result.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, `one line, got:\n${result.stderr}`);
    assert.match(lines[0], pattern);
  };

  /** `mount --background` of a fresh 1 GiB snapshot; resolves once the command returned. */
  const background = async (
    args: string[] = [],
  ): Promise<{ snapshotId: string; filePath: string; mountpoint: string; result: CommandResult }> => {
    mountCount += 1;
    const mountpoint = context.file(`mnt-bg-${mountCount}`);
    await mkdir(mountpoint);
    mountpoints.push(mountpoint);
    const result = await cli([...mountArgs(mountpoint), '--background', ...args]);
    assert.equal(result.code, 0, result.stderr);
    const [snapshotId, filePath] = result.stdout.trim().split(' ');
    assert.match(snapshotId, /^snap-[0-9a-f]+$/);
    for (const mount of await status()) pids.add(mount.pid);
    return { snapshotId, filePath, mountpoint, result };
  };

  before(async () => {
    await context.setUp();
    runtimeDir = context.file('run');
    await mkdir(runtimeDir);
  });

  after(async () => {
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Already gone, as it should be.
      }
    }
    for (const mountpoint of mountpoints) {
      if (await isMountPoint(mountpoint).catch(() => true)) await sh('fusermount', ['-uz', mountpoint]);
    }
    await context.tearDown();
  });

  it('--background returns with the file writable; status --json shows the mount; unmount completes it, prints SNAPSHOT_ID completed, exits 0', async () => {
    const { snapshotId, filePath, mountpoint, result } = await background();
    assert.equal(filePath, path.join(mountpoint, 'snapshot.img'));
    const logFile = /logging to (\S+);/.exec(result.stderr)?.[1];
    assert.ok(logFile && existsSync(logFile), `the log file is named: ${result.stderr}`);

    const data = randomBytes(12 * MIB);
    const source = context.file('lifecycle.bin');
    await writeFile(source, data);
    await mustRun('dd', [`if=${source}`, `of=${filePath}`, 'bs=1M', 'seek=5', 'conv=notrunc,fsync', 'status=none']);

    // The record is rewritten about once a second.
    let mine: MountStatus | undefined;
    for (let attempt = 0; attempt < 50; attempt++) {
      mine = (await status()).find((mount) => mount.mountpoint === mountpoint);
      if (mine && mine.blocksUploaded >= 24) break;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    assert.ok(mine, 'status lists the mount');
    assert.deepEqual(
      [mine.snapshotId, mine.state, mine.filePath, mine.logFile, mine.readOnly, mine.complete],
      [snapshotId, 'mounted', filePath, logFile, false, true],
    );
    assert.ok(mine.blocksUploaded >= 24, `${mine.blocksUploaded} blocks uploaded after fsync of 24`);
    assert.equal(mine.dirtyBlocks, 0);
    assert.equal(mine.lastError, null);
    assert.deepEqual(
      (await status(mountpoint)).map((mount) => mount.snapshotId),
      [snapshotId],
    );
    const text = await cli(['status']);
    assert.match(
      text.stdout,
      new RegExp(`^${mountpoint} ${snapshotId} mounted, [\\d.]+ MB uploaded, 0 dirty, 0 uploading, 0 retries$`, 'm'),
    );

    const unmounted = await cli(['unmount', mountpoint]);
    assert.equal(unmounted.stdout, `${snapshotId} completed\n`, unmounted.stderr);
    assert.equal(unmounted.code, 0);
    assert.equal(await isMountPoint(mountpoint), false);
    assert.deepEqual(readdirSync(path.join(runtimeDir, 'ebs-fuse')), [], 'the record is removed');
    assert.match(readFileSync(logFile, 'utf8'), new RegExp(`stdout: ${snapshotId} completed`));

    const expected = context.file('lifecycle-expected.img');
    await createZeroImage(expected, GIB);
    await mustRun('dd', [`if=${source}`, `of=${expected}`, 'bs=1M', 'seek=5', 'conv=notrunc', 'status=none']);
    await context.expectSnapshotEquals(snapshotId, expected);

    assertOneLineFailure(await cli(['unmount', mountpoint]), new RegExp(`^ebs-fuse: ${mountpoint} is not mounted$`));
    assertOneLineFailure(await cli(['status', mountpoint]), /is not an ebs-fuse mount that is running$/);
  });

  it('on a terminal a foreground mount redraws one live status line; off a terminal the log has no escape codes', async () => {
    const mountpoint = context.file('mnt-tty');
    await mkdir(mountpoint);
    mountpoints.push(mountpoint);
    const command = [process.execPath, CLI_PATH, ...mountArgs(mountpoint)].join(' ');
    // script(1) gives the mount a pseudo-terminal as its stdout and stderr.
    const terminal = spawn('script', ['-qfec', command, '/dev/null'], {
      env: cliEnvironment(context.endpoint, { XDG_RUNTIME_DIR: runtimeDir }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    terminal.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => terminal.on('close', resolve));
    const killTimer = setTimeout(() => terminal.kill('SIGKILL'), COMMAND_TIMEOUT_MS);
    try {
      for (let attempt = 0; attempt < 300 && !/^snap-\S+ \S+snapshot\.img\r?$/m.test(output); attempt++)
        await new Promise((resolve) => setTimeout(resolve, 100));
      const [snapshotId, filePath] = /^(snap-\S+) (\S+snapshot\.img)\r?$/m.exec(output)?.slice(1) ?? [];
      assert.ok(filePath, `the mount printed its line on the terminal:\n${output}`);
      for (const mount of await status()) pids.add(mount.pid);
      await mustRun('dd', ['if=/dev/urandom', `of=${filePath}`, 'bs=1M', 'count=12', 'conv=notrunc,fsync', 'status=none']);
      await new Promise((resolve) => setTimeout(resolve, 1500));
      const unmounted = await cli(['unmount', mountpoint]);
      assert.equal(unmounted.stdout, `${snapshotId} completed\n`, unmounted.stderr);
      assert.equal(await exited, 0);
    } finally {
      clearTimeout(killTimer);
    }
    const draws = output.split('\r\x1b[2K').filter((piece) => piece.startsWith('ebs-fuse mounted: '));
    assert.ok(draws.length >= 3, `the live line was drawn in place several times:\n${JSON.stringify(output)}`);
    assert.ok(
      draws.some((piece) => /^ebs-fuse mounted: 12\.6 MB uploaded, [\d.]+ MB\/s, 0 dirty, 0 in flight, 0 retries/.test(piece)),
      `a draw after the fsync shows the 24 blocks uploaded:\n${draws.join('\n')}`,
    );
    const logs = readdirSync(path.join(context.file('state'), 'logs')).map((name) =>
      readFileSync(path.join(context.file('state'), 'logs', name), 'utf8'),
    );
    assert.ok(logs.length > 0 && logs.every((text) => !text.includes('\x1b')), 'background logs hold no terminal escapes');
  });

  it('with --no-complete, unmount prints SNAPSHOT_ID pending and exits 0', async () => {
    const { snapshotId, mountpoint } = await background(['--no-complete']);
    const unmounted = await cli(['unmount', mountpoint]);
    assert.deepEqual([unmounted.stdout, unmounted.code], [`${snapshotId} pending\n`, 0], unmounted.stderr);
  });

  it('with the service failing permanently, unmount prints SNAPSHOT_ID error and exits non-zero', async () => {
    const { snapshotId, filePath, mountpoint } = await background();
    await setLocalEbsFaults(context.endpoint.endpoint, context.endpoint, 'deny=1,ops=put');
    try {
      // close() flushes the file, so dd itself already meets the failure.
      const written = await sh('dd', ['if=/dev/urandom', `of=${filePath}`, 'bs=1M', 'count=4', 'conv=notrunc', 'status=none']);
      assert.notEqual(written.code, 0, 'dd saw the failed upload at close');
      const unmounted = await cli(['unmount', mountpoint]);
      assert.equal(unmounted.stdout, `${snapshotId} error\n`, unmounted.stderr);
      assert.notEqual(unmounted.code, 0);
    } finally {
      await setLocalEbsFaults(context.endpoint.endpoint, context.endpoint, '');
    }
  });

  it('bad input: a mountpoint that is not ours, a mount whose process died, a background mount that cannot start', async () => {
    const plain = context.file('not-mounted');
    await mkdir(plain);
    assertOneLineFailure(await cli(['unmount', plain]), /is not mounted$/);
    assertOneLineFailure(await cli(['unmount', context.file('missing')]), /does not exist$/);

    const tmpfs = context.file('tmpfs');
    await mkdir(tmpfs);
    await mustRun('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', tmpfs]);
    try {
      assertOneLineFailure(await cli(['unmount', tmpfs]), /is mounted, but not by an ebs-fuse mount this user started/);
    } finally {
      await mustRun('umount', [tmpfs]);
    }

    const { snapshotId, mountpoint } = await background();
    const [{ pid }] = await status(mountpoint);
    process.kill(pid, 'SIGKILL');
    for (let attempt = 0; attempt < 50 && existsSync(`/proc/${pid}`); attempt++) await new Promise((resolve) => setTimeout(resolve, 100));
    const died = await status(mountpoint);
    assert.deepEqual([died[0].state, died[0].snapshotId], ['died', snapshotId]);
    assertOneLineFailure(
      await cli(['unmount', mountpoint]),
      new RegExp(`is gone without ending its mount: ${snapshotId} stays pending; run fusermount -uz .*--resume ${snapshotId}`),
    );
    await mustRun('fusermount', ['-uz', mountpoint]);
    assert.deepEqual(await status(), [], 'a died mount whose mountpoint was cleaned up is no longer listed');

    const busy = context.file('busy');
    await mkdir(busy);
    await writeFile(path.join(busy, 'file'), 'x');
    const refused = await cli([...mountArgs(busy), '--background']);
    assertOneLineFailure(refused, /mountpoint .* is not empty/);
    assert.equal(refused.stdout, '');
    assertOneLineFailure(
      await cli(['mount', busy, '--size', '1', '--log-file', context.file('x.log')]),
      /--log-file applies only with --background/,
    );
  });
});
