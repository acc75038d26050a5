// Bad flags and unusable environments: `ebs-fuse mount` must refuse before it
// starts a snapshot, with one line on stderr (what is wrong, what to do),
// nothing on stdout, and exit code 1. The endpoint is a closed port: none of
// these may get as far as a request.
import { strict as assert } from 'node:assert';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { isMountPoint } from '../../src/fuse/mountinfo';
import { CLI_PATH, cliEnvironment, runCli } from '../support/mount-process';
import { sh } from './support';

const UNREACHABLE_ENDPOINT = 'http://127.0.0.1:9';
const LIBFUSE_PATH = '/usr/lib/x86_64-linux-gnu/libfuse.so.2';
const LIBFUSE3_PATH = '/usr/lib/x86_64-linux-gnu/libfuse3.so.3';

interface FlagCase {
  name: string;
  /** Arguments after `mount`; MNT is replaced by the mountpoint of the case. */
  args: string[];
  message: RegExp;
  mountpoint?: 'missing' | 'file' | 'not-empty' | 'mounted';
  /** Run inside a private mount namespace after this shell command. */
  namespaceSetup?: string;
  /** Added to the CLI's environment. */
  env?: NodeJS.ProcessEnv;
}

const CASES: FlagCase[] = [
  { name: '--size missing', args: ['MNT'], message: /^--size GIB is required/ },
  { name: '--size 0', args: ['MNT', '--size', '0'], message: /^--size must be at least 1 GiB, not 0$/ },
  { name: '--size negative', args: ['MNT', '--size=-3'], message: /^--size must be at least 1 GiB, not -3$/ },
  { name: '--size above 65536', args: ['MNT', '--size', '65537'], message: /^--size must be at most 65536 GiB .*not 65537$/ },
  {
    name: '--size not a number',
    args: ['MNT', '--size', 'ten'],
    message: /^--size must be a whole number of GiB from 1 to 65536, not "ten"$/,
  },
  { name: '--size fractional', args: ['MNT', '--size', '1.5'], message: /^--size must be a whole number of GiB/ },
  {
    name: 'bad --parent-snapshot-id',
    args: ['MNT', '--size', '1', '--parent-snapshot-id', 'snap-XYZ'],
    message: /^--parent-snapshot-id must be a snapshot ID such as snap-/,
  },
  {
    name: '--encrypted with a parent',
    args: ['MNT', '--size', '1', '--parent-snapshot-id', 'snap-0123456789abcdef0', '--encrypted'],
    message: /^--encrypted cannot be combined with --parent-snapshot-id/,
  },
  { name: 'bad --tag', args: ['MNT', '--size', '1', '--tag', 'novalue'], message: /^--tag must be KEY=VALUE/ },
  { name: '--timeout out of range', args: ['MNT', '--size', '1', '--timeout', '5'], message: /^--timeout must be from 10 to 4320, not 5$/ },
  {
    name: 'bad --cache-size',
    args: ['MNT', '--size', '1', '--cache-size', 'lots'],
    message: /^--cache-size must be a size such as 256MiB/,
  },
  { name: '--cache-size too small', args: ['MNT', '--size', '1', '--cache-size', '1MiB'], message: /^--cache-size must be at least 16MiB/ },
  {
    name: 'bad --disk-cache-size',
    args: ['MNT', '--size', '1', '--disk-cache-size', '-1'],
    message: /^--disk-cache-size must be a size such as 256MiB or 2GiB, not "-1"$/,
  },
  {
    name: '--disk-cache-size with a unit unknown',
    args: ['MNT', '--size', '1', '--disk-cache-size', '5 parsecs'],
    message: /^--disk-cache-size must be a size such as 256MiB/,
  },
  {
    name: '--upload-concurrency 0',
    args: ['MNT', '--size', '1', '--upload-concurrency', '0'],
    message: /^--upload-concurrency must be from 1 to/,
  },
  {
    name: '--file-name with a slash',
    args: ['MNT', '--size', '1', '--file-name', 'a/b'],
    message: /^--file-name must be a plain file name/,
  },
  { name: 'mountpoint missing', args: ['MNT', '--size', '1'], mountpoint: 'missing', message: /does not exist; create it with: mkdir -p / },
  { name: 'mountpoint not a directory', args: ['MNT', '--size', '1'], mountpoint: 'file', message: /is not a directory$/ },
  { name: 'mountpoint not empty', args: ['MNT', '--size', '1'], mountpoint: 'not-empty', message: /is not empty; use an empty directory$/ },
  {
    name: 'mountpoint already mounted',
    args: ['MNT', '--size', '1'],
    mountpoint: 'mounted',
    message: /is already mounted; unmount it first/,
  },
  {
    name: '--resume with --size',
    args: ['MNT', '--resume', 'snap-0123456789abcdef0', '--size', '1'],
    message: /^--size cannot be combined with --resume/,
  },
  { name: 'bad --resume id', args: ['MNT', '--resume', 'vol-123'], message: /^--resume must be a snapshot ID such as snap-/ },
  {
    name: '--resume without local state',
    args: ['MNT', '--resume', 'snap-0123456789abcdef0'],
    message: /^no local state for snap-0123456789abcdef0 in /,
  },
  { name: '--read-only without --snapshot-id', args: ['MNT', '--read-only'], message: /^--read-only needs --snapshot-id/ },
  {
    name: '--snapshot-id without --read-only',
    args: ['MNT', '--snapshot-id', 'snap-0123456789abcdef0'],
    message: /^--snapshot-id mounts a completed snapshot and needs --read-only/,
  },
  {
    name: 'bad --endpoint',
    args: ['MNT', '--size', '1', '--endpoint', 'ftp://127.0.0.1:9'],
    message: /^--endpoint must be an http or https URL/,
  },
  {
    name: 'no /dev/fuse',
    args: ['MNT', '--size', '1'],
    namespaceSetup: 'mount -t tmpfs none /dev',
    message: /^\/dev\/fuse is missing: load the FUSE module \(modprobe fuse\)/,
  },
  {
    name: 'libfuse 2 and 3 missing (neither FUSE path loads)',
    args: ['MNT', '--size', '1'],
    namespaceSetup: `mount --bind /dev/null "$(readlink -f ${LIBFUSE_PATH})" && mount --bind /dev/null "$(readlink -f ${LIBFUSE3_PATH})"`,
    message:
      /^FUSE is not usable: fuse-native failed to load \(.*\), and the libfuse 3 path is not either \(.*failed to load.*\); install libfuse with: apt-get install libfuse2 libfuse3-3$/,
  },
  {
    name: 'libfuse 2 missing with EBS_FUSE_BINDING=fuse-native',
    args: ['MNT', '--size', '1'],
    namespaceSetup: `mount --bind /dev/null "$(readlink -f ${LIBFUSE_PATH})"`,
    env: { EBS_FUSE_BINDING: 'fuse-native' },
    message: /^FUSE is not usable: fuse-native failed to load \(.*\); install libfuse with: apt-get install libfuse2 libfuse3-3$/,
  },
];

describe('scenario: mount refuses bad flags with one line and exit code 1', function () {
  this.timeout(30_000);
  let scratch: string;
  const tmpfsMounts: string[] = [];

  before(async () => {
    scratch = await mkdtemp(path.join(tmpdir(), 'ebs-fuse-flags-'));
  });

  after(async () => {
    for (const mountpoint of tmpfsMounts) {
      if (await isMountPoint(mountpoint).catch(() => false)) await sh('umount', ['-l', mountpoint]);
    }
    await rm(scratch, { recursive: true, force: true });
  });

  for (const [index, flagCase] of CASES.entries()) {
    it(flagCase.name, async () => {
      const mountpoint = path.join(scratch, `mnt-${index}`);
      if (flagCase.mountpoint === 'file') await writeFile(mountpoint, 'x');
      else if (flagCase.mountpoint !== 'missing') await mkdir(mountpoint);
      if (flagCase.mountpoint === 'not-empty') await writeFile(path.join(mountpoint, 'existing'), 'x');
      if (flagCase.mountpoint === 'mounted') {
        tmpfsMounts.push(mountpoint);
        const tmpfs = await sh('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'ebs-fuse-test', mountpoint]);
        assert.equal(tmpfs.code, 0, tmpfs.stderr);
      }
      const args = ['mount', ...flagCase.args.map((arg) => (arg === 'MNT' ? mountpoint : arg))];
      if (!args.includes('--endpoint')) args.push('--endpoint', UNREACHABLE_ENDPOINT);
      args.push('--state-dir', path.join(scratch, 'state'));

      const env = {
        ...cliEnvironment({ endpoint: UNREACHABLE_ENDPOINT, accessKeyId: 'AKIAUNUSED', secretAccessKey: 'unused' }),
        ...flagCase.env,
      };
      const result = flagCase.namespaceSetup
        ? await sh('unshare', ['-m', 'sh', '-c', `${flagCase.namespaceSetup} && exec "$0" "$@"`, process.execPath, CLI_PATH, ...args], {
            env,
            timeoutMs: 20_000,
          })
        : await runCli(args, { env });

      const lines = result.stderr.split('\n').filter((line) => line.length > 0);
      assert.equal(lines.length, 1, `expected one line on stderr, got:\n${result.stderr}`);
      assert.match(lines[0], /^ebs-fuse: /);
      assert.match(lines[0].slice('ebs-fuse: '.length), flagCase.message);
      assert.equal(result.stdout, '');
      assert.equal(result.code, 1);
      assert.equal(await isMountPoint(mountpoint).catch(() => false), flagCase.mountpoint === 'mounted');
    });
  }
});
