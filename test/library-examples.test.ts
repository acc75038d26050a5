// The README's library examples, run as a user runs them: each ```ts example=NAME
// block is written to its own .mts file in a scratch project whose
// node_modules/ebs-fuse is this checkout (through package.json's exports), run
// with Node against a local-ebs process that the SDK finds through the standard
// environment (AWS_ENDPOINT_URL_EBS, keys, region), and checked by its output
// and by the snapshots it made.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { isMountPoint } from '../src/fuse/mountinfo';
import { REPO_ROOT } from './support/local-ebs-process';
import { cliEnvironment } from './support/mount-process';
import { createZeroImage, GIB, MIB, mustRun, ScenarioContext, sh, type CommandResult } from './scenarios/support';

const EXAMPLE_TIMEOUT_MS = 120_000;

/** The README's examples by name. */
function readmeExamples(): Map<string, string> {
  const readme = readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8');
  return new Map([...readme.matchAll(/```ts example=(\w+)\n([\s\S]*?)```/g)].map((match) => [match[1], match[2]]));
}

describe('library: the README examples', function () {
  this.timeout(4 * EXAMPLE_TIMEOUT_MS);
  const context = new ScenarioContext();
  const examples = readmeExamples();
  let project = '';

  const run = async (name: string, args: string[] = []): Promise<CommandResult> => {
    const code = examples.get(name);
    assert.ok(code, `README.md has a \`\`\`ts example=${name} block`);
    const file = path.join(project, `example-${name}.mts`);
    await writeFile(file, code);
    const tsx = pathToFileURL(require.resolve('tsx/esm')).href;
    const env = cliEnvironment(context.endpoint, {
      AWS_ENDPOINT_URL_EBS: context.endpoint.endpoint,
      XDG_STATE_HOME: path.join(project, 'state'),
    });
    const result = await sh(process.execPath, ['--import', tsx, file, ...args], { cwd: project, env, timeoutMs: EXAMPLE_TIMEOUT_MS });
    assert.equal(result.code, 0, `example ${name} failed:\n${result.stderr}`);
    return result;
  };

  before(async () => {
    await context.setUp();
    project = context.file('project');
    await mkdir(path.join(project, 'node_modules'), { recursive: true });
    await symlink(REPO_ROOT, path.join(project, 'node_modules', 'ebs-fuse'));
  });

  after(async () => {
    await context.tearDown();
  });

  it('README has the three examples: upload, download, mount', () => {
    assert.deepEqual([...examples.keys()].sort(), ['download', 'mount', 'upload']);
  });

  it('upload, then download: the copy is the uploaded image, zero-padded to the volume', async () => {
    const image = Buffer.concat([randomBytes(3 * MIB + 5), Buffer.alloc(MIB), randomBytes(100)]);
    await writeFile(path.join(project, 'disk.img'), image);
    const uploaded = await run('upload');
    const [snapshotId, status] = uploaded.stdout.trim().split(' ');
    assert.match(snapshotId, /^snap-[0-9a-f]+$/);
    assert.equal(status, 'completed');
    let nonZeroBlocks = 0;
    for (let at = 0; at < image.length; at += 524288) if (image.subarray(at, at + 524288).some((byte) => byte !== 0)) nonZeroBlocks += 1;
    const reported = uploaded.stderr.trim().split('\n');
    assert.equal(reported[reported.length - 1], `${nonZeroBlocks * 524288} bytes sent`, 'the last progress report counts every block sent');

    const downloaded = await run('download', [snapshotId]);
    assert.equal(downloaded.stdout, `${snapshotId}: 1 GiB in copy.img\n`);
    const expected = context.file('expected.img');
    await createZeroImage(expected, GIB);
    await writeFile(expected, image, { flag: 'r+' });
    await mustRun('cmp', [expected, path.join(project, 'copy.img')]);
  });

  it('mount: the written bytes are in the completed snapshot', async () => {
    await mkdir(path.join(project, 'mnt'));
    const mounted = await run('mount');
    const [snapshotId, status] = mounted.stdout.trim().split(' ');
    assert.equal(status, 'completed');
    const copy = context.file('mounted-copy.img');
    await context.download(snapshotId, copy);
    const head = readFileSync(copy).subarray(0, 32);
    assert.equal(head.subarray(0, 15).toString(), 'hello, snapshot');
    assert.ok(head.subarray(15).every((byte) => byte === 0));
    assert.equal(await isMountPoint(path.join(project, 'mnt')), false, 'unmounted');
  });
});
