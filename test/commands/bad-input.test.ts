// Bad input that needs a real service or a real machine state: an unknown parent,
// an unreachable endpoint, wrong credentials, a port in use for local-ebs,
// --resume or complete of a completed or unknown snapshot, malformed snapshot IDs,
// a state directory that is read-only or full, a /dev/fuse that is not the FUSE
// device. Each gives exactly one line on stderr (what is wrong and what to do, no
// stack trace), nothing on stdout and exit code 1; the cases that the mount can
// see before it starts a snapshot start none. (Flags, mountpoints, a missing
// /dev/fuse and libfuse are in test/scenarios/mount-flags.test.ts.)
// The cases run at once, in before(): the unreachable endpoint alone takes the
// StartSnapshot retry limit (15 s).
import { strict as assert } from 'node:assert';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { isMountPoint } from '../../src/fuse/mountinfo';
import { getLocalEbsStats } from '../../src/local-ebs/admin-client';
import {
  removeTemporaryDataDirs,
  startLocalEbsProcess,
  stopAllLocalEbsProcesses,
  type LocalEbsProcess,
} from '../support/local-ebs-process';
import { CLI_PATH, MountProcess, cliEnvironment, runCli, type CliResult } from '../support/mount-process';
import { sh } from '../scenarios/support';

const UNKNOWN_ID = 'snap-0123456789abcdef0';

interface BadInputCase {
  name: string;
  /** Placeholders: MNT (a fresh empty directory), EP, STATE, COMPLETED, RO, FULL, CLOSED, DATA, PORT. */
  args: string[];
  message: RegExp;
  /** The credentials the CLI gets; the server's by default. */
  credentials?: { accessKeyId: string; secretAccessKey: string };
  /** A shell command run first in a private mount namespace (unshare -m). */
  namespaceSetup?: string;
  /** Sent to the server that must see no StartSnapshot. */
  startsNoSnapshot?: boolean;
}

const CASES: BadInputCase[] = [
  {
    name: 'mount: an unknown parent',
    args: ['mount', 'MNT', '--size', '1', '--parent-snapshot-id', UNKNOWN_ID, '--endpoint', 'EP', '--state-dir', 'STATE'],
    message: new RegExp(
      `^cannot start a snapshot at http://127\\.0\\.0\\.1:\\d+: .*ResourceNotFoundException .*'${UNKNOWN_ID}' does not exist; check the snapshot ID`,
    ),
  },
  {
    name: 'mount: an unreachable endpoint (a closed port)',
    args: ['mount', 'MNT', '--size', '1', '--endpoint', 'CLOSED', '--state-dir', 'STATE'],
    message:
      /^cannot start a snapshot at http:\/\/127\.0\.0\.1:\d+: .*connection was refused \(ECONNREFUSED\); check the endpoint and that the server is running \(gave up after \d+ attempts in [\d.]+ s/,
  },
  {
    name: 'mount: a wrong secret access key',
    args: ['mount', 'MNT', '--size', '1', '--endpoint', 'EP', '--state-dir', 'STATE'],
    credentials: { accessKeyId: 'AKIALOCALEBSTEST0001', secretAccessKey: 'not-the-secret' },
    message:
      /InvalidSignatureException .*; the request signature was rejected; check that the secret access key belongs to the access key ID/,
  },
  {
    name: 'mount: an unknown access key ID',
    args: ['mount', 'MNT', '--size', '1', '--endpoint', 'EP', '--state-dir', 'STATE'],
    credentials: { accessKeyId: 'AKIAUNKNOWNKEY000001', secretAccessKey: 'whatever' },
    message: /UnrecognizedClientException .*; the access key ID is not known to the service; check AWS_ACCESS_KEY_ID or the profile$/,
  },
  {
    name: 'local-ebs: a port in use (generated credentials)',
    args: ['local-ebs', '--port', 'PORT', '--data', 'DATA'],
    message: /^port \d+ on 127\.0\.0\.1 is in use: choose another with --port \(0 picks a free one\)$/,
  },
  {
    name: 'local-ebs: a port in use (given credentials)',
    args: ['local-ebs', '--port', 'PORT', '--data', 'DATA', '--access-key-id', 'AKIAEXAMPLE000000001', '--secret-access-key', 'secret'],
    message: /^port \d+ on 127\.0\.0\.1 is in use: choose another with --port \(0 picks a free one\)$/,
  },
  {
    name: 'mount --resume of a completed snapshot',
    args: ['mount', 'MNT', '--resume', 'COMPLETED', '--endpoint', 'EP', '--state-dir', 'STATE'],
    message: /^snap-[0-9a-f]+ is already completed; there is nothing to resume$/,
  },
  {
    name: 'complete of a completed snapshot',
    args: ['complete', 'COMPLETED', '--endpoint', 'EP', '--state-dir', 'STATE'],
    message: /^snap-[0-9a-f]+ is already completed; there is nothing to resume$/,
  },
  {
    name: 'complete of an unknown snapshot',
    args: ['complete', UNKNOWN_ID, '--endpoint', 'EP', '--state-dir', 'STATE'],
    message: new RegExp(
      `^no local state for ${UNKNOWN_ID} in \\S+: only a snapshot started by a mount with this --state-dir can be resumed$`,
    ),
  },
  {
    name: 'complete: a malformed snapshot ID',
    args: ['complete', 'snap-XYZ', '--endpoint', 'EP', '--state-dir', 'STATE'],
    message: /^SNAPSHOT_ID must be a snapshot ID such as snap-0123456789abcdef0, not "snap-XYZ"$/,
  },
  {
    name: 'download: a malformed snapshot ID',
    args: ['download', '../etc/passwd', 'DATA/out.img', '--endpoint', 'EP'],
    message: /^SNAPSHOT_ID must be a snapshot ID such as snap-0123456789abcdef0, not "\.\.\/etc\/passwd"$/,
  },
  {
    name: 'download: an unknown snapshot',
    args: ['download', UNKNOWN_ID, 'DATA/out.img', '--endpoint', 'EP'],
    message: new RegExp(`^cannot read snapshot ${UNKNOWN_ID}: .*ResourceNotFoundException .*does not exist`),
  },
  {
    name: 'mount: a state directory on a read-only file system',
    args: ['mount', 'MNT', '--size', '1', '--endpoint', 'EP', '--state-dir', 'RO/state'],
    message:
      /^cannot use the state directory \S+\/state: it is on a read-only file system; pass --state-dir DIR on a writable file system$/,
    startsNoSnapshot: true,
  },
  {
    name: 'mount: a state directory on a full file system',
    args: ['mount', 'MNT', '--size', '1', '--endpoint', 'EP', '--state-dir', 'FULL/state'],
    message:
      /^cannot use the state directory \S+\/state: its file system is full; free space there, or pass --state-dir DIR on a file system with room/,
    startsNoSnapshot: true,
  },
  {
    name: 'mount --resume: a state directory on a full file system',
    args: ['mount', 'MNT', '--resume', UNKNOWN_ID, '--endpoint', 'EP', '--state-dir', 'FULL'],
    message: /^cannot use the state directory \S+: its file system is full/,
    startsNoSnapshot: true,
  },
  {
    name: 'mount: /dev/fuse is an empty file (bind-mounted over in a mount namespace)',
    args: ['mount', 'MNT', '--size', '1', '--endpoint', 'EP', '--state-dir', 'STATE'],
    namespaceSetup: 'mount --bind "$EMPTY_FILE" /dev/fuse',
    message: /^\/dev\/fuse is not the FUSE device: load the FUSE module \(modprobe fuse\), or in a container pass --device \/dev\/fuse$/,
    startsNoSnapshot: true,
  },
];

/** A port nothing listens on: bound once by us, then released. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe('bad input: one line, exit 1, no stack trace', function () {
  this.timeout(120_000);
  let scratch: string;
  let server: LocalEbsProcess;
  /** Only the cases that must start nothing talk to this one. */
  let untouched: LocalEbsProcess;
  const tmpfsMounts: string[] = [];
  const results = new Map<string, CliResult>();
  const mountpoints = new Map<string, string>();

  before(async () => {
    scratch = await mkdtemp(path.join(tmpdir(), 'ebs-fuse-bad-input-'));
    [server, untouched] = await Promise.all([startLocalEbsProcess(), startLocalEbsProcess()]);
    const stateDir = path.join(scratch, 'state');

    // A completed snapshot whose state is on this machine.
    const completedMountpoint = path.join(scratch, 'completed-mnt');
    await mkdir(completedMountpoint);
    const endpoint = { endpoint: server.endpoint, ...server.credentials };
    const completed = await MountProcess.start({ mountpoint: completedMountpoint, sizeGiB: 1, endpoint, stateDir });
    try {
      const ended = await completed.stop('SIGINT');
      assert.equal(ended.code, 0, ended.stderr);
    } finally {
      await completed.cleanup();
    }

    const readOnly = path.join(scratch, 'ro');
    const full = path.join(scratch, 'full');
    for (const [directory, options] of [
      [readOnly, 'ro,size=1m'],
      [full, 'size=256k'],
    ] as const) {
      await mkdir(directory);
      tmpfsMounts.push(directory);
      const mounted = await sh('mount', ['-t', 'tmpfs', '-o', options, 'ebs-fuse-test', directory]);
      assert.equal(mounted.code, 0, mounted.stderr);
    }
    // Fill it: the last write fails with ENOSPC.
    await sh('dd', ['if=/dev/zero', `of=${path.join(full, 'filler')}`, 'bs=64k', 'status=none']);
    const emptyFile = path.join(scratch, 'empty-file');
    await writeFile(emptyFile, '');
    const closed = await closedPort();

    await Promise.all(
      CASES.map(async (badInput, index) => {
        const mountpoint = path.join(scratch, `mnt-${index}`);
        await mkdir(mountpoint);
        mountpoints.set(badInput.name, mountpoint);
        const target = badInput.startsNoSnapshot ? untouched : server;
        const dataDir = path.join(scratch, `data-${index}`);
        await mkdir(dataDir);
        const replacements: Record<string, string> = {
          MNT: mountpoint,
          EP: target.endpoint,
          STATE: stateDir,
          COMPLETED: completed.snapshotId,
          CLOSED: `http://127.0.0.1:${closed}`,
          PORT: String(server.port),
          DATA: dataDir,
        };
        const args = badInput.args.map((arg) =>
          arg.replace(/^(MNT|EP|STATE|COMPLETED|CLOSED|PORT|DATA|RO|FULL)(?=\/|$)/, (name) => {
            if (name === 'RO') return readOnly;
            if (name === 'FULL') return full;
            return replacements[name];
          }),
        );
        const env = cliEnvironment(
          { endpoint: target.endpoint, ...(badInput.credentials ?? target.credentials) },
          { EMPTY_FILE: emptyFile },
        );
        const result = badInput.namespaceSetup
          ? await sh('unshare', ['-m', 'sh', '-c', `${badInput.namespaceSetup} && exec "$0" "$@"`, process.execPath, CLI_PATH, ...args], {
              env,
              timeoutMs: 60_000,
            })
          : await runCli(args, { env, timeoutMs: 60_000 });
        results.set(badInput.name, { signal: null, ...result });
      }),
    );
  });

  after(async () => {
    for (const mountpoint of [...tmpfsMounts, ...mountpoints.values()]) {
      if (await isMountPoint(mountpoint).catch(() => false)) await sh('umount', ['-l', mountpoint]);
    }
    await stopAllLocalEbsProcesses();
    removeTemporaryDataDirs();
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  for (const badInput of CASES) {
    it(badInput.name, async () => {
      const result = results.get(badInput.name);
      assert.ok(result, 'the case ran');
      const lines = result.stderr.split('\n').filter((line) => line.length > 0);
      assert.equal(lines.length, 1, `expected one line on stderr, got:\n${result.stderr}`);
      assert.doesNotMatch(result.stderr, /^\s+at /m);
      assert.match(lines[0], /^ebs-fuse: /);
      assert.match(lines[0].slice('ebs-fuse: '.length), badInput.message);
      assert.equal(result.stdout, '');
      assert.equal(result.code, 1);
      assert.equal(await isMountPoint(mountpoints.get(badInput.name)!).catch(() => false), false);
    });
  }

  it('the cases refused before StartSnapshot started no snapshot', async () => {
    const stats = await getLocalEbsStats(untouched.endpoint, untouched.credentials);
    assert.equal(stats.requests.StartSnapshot ?? 0, 0, JSON.stringify(stats.requests));
  });
});
