// The package as a user gets it: `npm pack` of this checkout, `npm install -g`
// of the tarball into a temporary prefix (dependencies from the npm registry),
// then the installed `ebs-fuse` binary: --version, the extents helper built by
// the install script, and a mount that dd writes through in 128 KiB kernel
// writes (big_writes and max_write from the fuse-native subclass, with nothing
// patched in node_modules), to a completed snapshot equal to what was written.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { LIBFUSE3_WRITE_MAX_BYTES } from '../../src/fuse/fuse-mount';
import { REPO_ROOT } from '../support/local-ebs-process';
import { cliEnvironment } from '../support/mount-process';
import { createZeroImage, expectEnded, GIB, MIB, mustRun, ScenarioContext } from './support';

const PACK_TIMEOUT_MS = 120_000;
const INSTALL_TIMEOUT_MS = 240_000;

describe('scenario: the packed package installed with npm install -g', function () {
  this.timeout(INSTALL_TIMEOUT_MS + PACK_TIMEOUT_MS + 120_000);
  const context = new ScenarioContext();
  let installedBin = '';
  let installedPackage = '';

  before(async () => {
    await context.setUp();
    const packDir = context.file('pack');
    await mustRun('mkdir', ['-p', packDir]);
    await mustRun('npm', ['pack', '--pack-destination', packDir, '--loglevel=error'], { cwd: REPO_ROOT, timeoutMs: PACK_TIMEOUT_MS });
    const tarballs = readdirSync(packDir).filter((name) => name.endsWith('.tgz'));
    assert.equal(tarballs.length, 1, `npm pack made ${tarballs.join(', ')}`);
    const prefix = context.file('prefix');
    await mustRun(
      'npm',
      ['install', '-g', '--prefix', prefix, '--no-audit', '--no-fund', '--loglevel=error', path.join(packDir, tarballs[0])],
      {
        cwd: context.scratch,
        timeoutMs: INSTALL_TIMEOUT_MS,
      },
    );
    installedBin = path.join(prefix, 'bin', 'ebs-fuse');
    installedPackage = path.join(prefix, 'lib', 'node_modules', 'ebs-fuse');
  });

  after(async () => {
    await context.tearDown();
  });

  it('holds only what runs: dist (code and types), the extents source and its build script, SEMANTICS.md', () => {
    assert.ok(existsSync(path.join(installedPackage, 'dist', 'cli.js')));
    for (const absent of ['src', 'test', 'scripts', 'native/nullfs', 'tsconfig.json']) {
      assert.ok(!existsSync(path.join(installedPackage, absent)), `${absent} was packed`);
    }
    assert.ok(
      !readdirSync(path.join(installedPackage, 'dist'), { recursive: true }).some((name) => String(name).endsWith('.map')),
      'source maps were packed',
    );
  });

  it("is a library too: require('ebs-fuse') gives upload, download and mount, with their types", async () => {
    const script = `const m = require(${JSON.stringify(installedPackage)}); console.log(['upload', 'download', 'mount'].map((name) => typeof m[name]).join(' '))`;
    assert.equal((await mustRun(process.execPath, ['-e', script])).stdout, 'function function function\n');
    const types = readFileSync(path.join(installedPackage, 'dist', 'index.d.ts'), 'utf8');
    for (const name of ['upload', 'download', 'mount']) assert.match(types, new RegExp(`export declare function ${name}\\(`));
  });

  it('--version names the package, Node.js and libfuse versions', async () => {
    const { version } = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
    const result = await mustRun(installedBin, ['--version']);
    assert.match(
      result.stdout.trim(),
      new RegExp(
        `^ebs-fuse ${version.replace(/\./g, '\\.')} \\(Node\\.js ${process.version.replace(/\./g, '\\.')}, libfuse 3\\.\\d+\\.\\d+ through libfuse3\\)$`,
      ),
    );
  });

  it('built the libfuse 3 addon on install', () => {
    const addon = path.join(installedPackage, 'native', 'build', 'fuse3-binding.node');
    assert.ok(existsSync(addon), `${addon} is missing`);
  });

  it('built the SHA-256 addon on install, and it hashes as node:crypto does', async () => {
    const addon = path.join(installedPackage, 'native', 'build', 'sha256-binding.node');
    assert.ok(existsSync(addon), `${addon} is missing`);
    const script = `require(${JSON.stringify(addon)}).sha256(Buffer.from('abc')).then((d) => console.log(d.toString('hex')))`;
    assert.equal(
      (await mustRun(process.execPath, ['-e', script])).stdout,
      'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n',
    );
  });

  it('built the extents helper on install', async () => {
    const helper = path.join(installedPackage, 'native', 'build', 'extents');
    assert.ok(existsSync(helper), `${helper} is missing`);
    const sparse = context.file('sparse.img');
    await mustRun('truncate', ['-s', `${8 * MIB}`, sparse]);
    assert.equal((await mustRun(helper, [sparse, '0'])).stdout, `size ${8 * MIB}\n`, 'a hole of 8 MiB has no data extent');
  });

  it('mounts through libfuse 3, and dd bs=1M arrives as 1 MiB kernel writes, to a completed snapshot of what was written', async () => {
    const data = context.file('data.bin');
    await writeFile(data, randomBytes(16 * MIB));
    const mount = await context.mount(1, [], { command: [installedBin], env: cliEnvironment(context.endpoint) });
    await mustRun('dd', [`if=${data}`, `of=${mount.filePath}`, 'bs=1M', 'seek=3', 'conv=notrunc,fsync', 'status=none']);
    const result = await mount.stop('SIGINT');
    expectEnded(result, mount.snapshotId);
    const largest = /kernel requests through libfuse3: \d+ writes \(\d+ bytes, largest (\d+)\)/.exec(result.stderr);
    assert.ok(largest, `no kernel-requests line in:\n${result.stderr}`);
    assert.equal(Number(largest[1]), LIBFUSE3_WRITE_MAX_BYTES);

    const expected = context.file('expected.img');
    await createZeroImage(expected, GIB);
    await mustRun('dd', [`if=${data}`, `of=${expected}`, 'bs=1M', 'seek=3', 'conv=notrunc', 'status=none']);
    await context.expectSnapshotEquals(mount.snapshotId, expected);
  });
});
