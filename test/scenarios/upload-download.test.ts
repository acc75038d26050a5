// `ebs-fuse upload`, `download` and `complete` as a user runs them, against a
// local-ebs process: requests are counted at the server (admin stats), faults
// are switched on at run time, and images are compared with cmp.
import { strict as assert } from 'node:assert';
import { stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { SnapshotSession } from '../../src/core/session';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { getLocalEbsStats, setLocalEbsFaults } from '../../src/local-ebs/admin-client';
import { CLI_PATH, cliEnvironment, runCli, type CliResult } from '../support/mount-process';
import { createZeroImage, expectEnded, mustRun, sh, ScenarioContext, GIB, MIB } from './support';
import { readFileBlock } from '../support/file-blocks';

const B = BLOCK_SIZE_BYTES;

/** A write of the image: `length` bytes from /dev/urandom or /dev/zero at `offset`. */
interface Write {
  offset: number;
  length: number;
  zeros?: boolean;
}

/** Applies the writes with dd (conv=notrunc), as a user would build an image. */
async function applyWrites(file: string, writes: Write[]): Promise<void> {
  for (const { offset, length, zeros } of writes) {
    await mustRun('dd', [
      `if=${zeros ? '/dev/zero' : '/dev/urandom'}`,
      `of=${file}`,
      `bs=${length}`,
      'count=1',
      'iflag=fullblock',
      'oflag=seek_bytes',
      `seek=${offset}`,
      'conv=notrunc',
      'status=none',
    ]);
  }
}

/** Block indexes the writes touch, random and zero ones apart. */
function touchedBlocks(writes: Write[], zeros: boolean): Set<number> {
  const blocks = new Set<number>();
  for (const write of writes) {
    if (Boolean(write.zeros) !== zeros) continue;
    for (let index = Math.floor(write.offset / B); index * B < write.offset + write.length; index += 1) blocks.add(index);
  }
  return blocks;
}

/** One line on stderr, naming the problem, and a non-zero exit. */
function expectOneLineError(result: CliResult, pattern: RegExp): void {
  assert.notEqual(result.code, 0, `exit code ${result.code}; stderr:\n${result.stderr}`);
  const lines = result.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `stderr has ${lines.length} lines:\n${result.stderr}`);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(result.stderr, /\n\s+at /, 'no stack trace');
}

describe('scenario: upload, download and complete against local-ebs', function () {
  this.timeout(240_000);
  const context = ScenarioContext.forSuite();

  const cli = (args: string[]): Promise<CliResult> =>
    runCli([...args, '--endpoint', context.localEbs.endpoint], { env: cliEnvironment(context.endpoint), timeoutMs: 120_000 });
  const serverCounts = async (): Promise<Record<string, number>> =>
    (await getLocalEbsStats(context.localEbs.endpoint, context.localEbs.credentials)).requests;
  const delta = (after: Record<string, number>, before: Record<string, number>, operation: string): number =>
    (after[operation] ?? 0) - (before[operation] ?? 0);

  /** Uploads with the CLI; resolves with the snapshot ID it printed. */
  async function upload(args: string[]): Promise<string> {
    const result = await cli(['upload', ...args]);
    assert.equal(result.code, 0, `upload failed:\n${result.stderr}`);
    assert.match(result.stdout, /^snap-[0-9a-f]+\n$/);
    return result.stdout.trim();
  }

  async function download(snapshotId: string, file: string, extra: string[] = []): Promise<CliResult> {
    const result = await cli(['download', snapshotId, file, ...extra]);
    assert.equal(result.code, 0, `download failed:\n${result.stderr}`);
    assert.equal(result.stdout, '');
    return result;
  }

  // A 1 GiB image, mostly holes: 16 MiB of random data (so a corrupt-fault run has
  // enough blocks to hit), scattered small writes, an unaligned one across two
  // blocks, the last block, and a block written as zeros.
  const baseWrites: Write[] = [
    { offset: 4 * MIB, length: 16 * MIB },
    { offset: 100 * MIB + 12345, length: 4096 },
    { offset: 300 * MIB - 100, length: 200 },
    { offset: 512 * MIB, length: B, zeros: true },
    { offset: GIB - 4096, length: 4096 },
  ];
  let baseImage = '';
  let baseSnapshotId = '';
  let baseBlocks = 0;

  it('round trip: upload of a sparse image sends exactly its non-zero blocks; download gives an identical, sparse image', async () => {
    baseImage = context.file('base.img');
    await createZeroImage(baseImage, GIB);
    await applyWrites(baseImage, baseWrites);
    const nonZero = touchedBlocks(baseWrites, false);

    const before = await serverCounts();
    baseSnapshotId = await upload([baseImage]);
    const after = await serverCounts();
    assert.equal(delta(after, before, 'PutSnapshotBlock'), nonZero.size);
    assert.equal(delta(after, before, 'CompleteSnapshot'), 1);
    baseBlocks = nonZero.size;

    const copy = context.file('base-copy.img');
    const result = await download(baseSnapshotId, copy);
    assert.match(result.stderr, new RegExp(`${baseBlocks} blocks fetched`));
    await mustRun('cmp', [baseImage, copy]);
    const info = await stat(copy);
    assert.equal(info.size, GIB);
    assert.ok(info.blocks * 512 < (baseBlocks + 8) * B, `the download takes ${info.blocks * 512} bytes: not sparse`);
  });

  it('upload with --parent-snapshot-id sends only the changed blocks; the downloaded child equals the new image', async () => {
    assert.ok(baseSnapshotId, 'needs the round trip');
    const childImage = context.file('child.img');
    await mustRun('cp', ['--sparse=always', baseImage, childImage]);
    const changes: Write[] = [
      { offset: 6 * MIB + 1000, length: 3000 }, // inside the parent's data
      { offset: 10 * MIB, length: B, zeros: true }, // zeros over the parent's data
      { offset: 700 * MIB, length: 2 * B }, // where the parent has nothing
      { offset: 800 * MIB, length: B, zeros: true }, // zeros where the parent has nothing
    ];
    await applyWrites(childImage, changes);
    const touched = new Set([...touchedBlocks(changes, false), ...touchedBlocks(changes, true)]);
    const differing: number[] = [];
    for (const index of touched) {
      if (!(await readFileBlock(childImage, index)).equals(await readFileBlock(baseImage, index))) differing.push(index);
    }
    assert.ok(differing.length >= 3 && differing.length < touched.size, `differing blocks ${differing}`);

    const before = await serverCounts();
    const childId = await upload([childImage, '--parent-snapshot-id', baseSnapshotId]);
    const after = await serverCounts();
    assert.equal(delta(after, before, 'PutSnapshotBlock'), differing.length);

    const copy = context.file('child-copy.img');
    await download(childId, copy);
    await mustRun('cmp', [childImage, copy]);
    // The parent is unchanged.
    const parentCopy = context.file('parent-again.img');
    await download(baseSnapshotId, parentCopy);
    await mustRun('cmp', [baseImage, parentCopy]);
  });

  it('download refuses to overwrite without --force; with corrupted blocks it retries and still writes the exact image', async () => {
    assert.ok(baseSnapshotId, 'needs the round trip');
    const target = context.file('existing.img');
    await writeFile(target, 'keep me');
    expectOneLineError(
      await cli(['download', baseSnapshotId, target]),
      /^ebs-fuse: .*existing\.img already exists; pass --force to replace it$/,
    );
    assert.equal((await stat(target)).size, 'keep me'.length);

    await setLocalEbsFaults(context.localEbs.endpoint, context.localEbs.credentials, 'corrupt=0.3');
    try {
      const before = await serverCounts();
      const result = await download(baseSnapshotId, target, ['--force']);
      const after = await serverCounts();
      const gets = delta(after, before, 'GetSnapshotBlock');
      assert.ok(gets > baseBlocks, `${gets} GetSnapshotBlock for ${baseBlocks} blocks: no corrupted block was fetched again`);
      assert.match(result.stderr, / [1-9]\d* retries/);
    } finally {
      await setLocalEbsFaults(context.localEbs.endpoint, context.localEbs.credentials, '');
    }
    await mustRun('cmp', [baseImage, target]);
  });

  it('uploads a block device (a loop device), its size from the device', async () => {
    // 256 MiB: the volume rounds up to 1 GiB, zeros past the device's end.
    const backing = context.file('loop-backing.img');
    await createZeroImage(backing, 256 * MIB);
    const writes: Write[] = [
      { offset: 0, length: 8192 },
      { offset: 33 * MIB, length: 3 * B },
      { offset: 200 * MIB, length: B, zeros: true },
      { offset: 256 * MIB - 100, length: 100 },
    ];
    await applyWrites(backing, writes);
    const device = (await mustRun('losetup', ['--find', '--show', backing])).stdout.trim();
    try {
      assert.match(device, /^\/dev\/loop\d+$/);
      const before = await serverCounts();
      const snapshotId = await upload([device]);
      const after = await serverCounts();
      assert.equal(delta(after, before, 'PutSnapshotBlock'), touchedBlocks(writes, false).size);
      const copy = context.file('loop-copy.img');
      await download(snapshotId, copy);
      const expected = context.file('loop-expected.img');
      await mustRun('cp', ['--sparse=always', backing, expected]);
      await mustRun('truncate', ['-s', String(GIB), expected]);
      await mustRun('cmp', [expected, copy]);
    } finally {
      await sh('losetup', ['-d', device]);
    }
  });

  /** `… | ebs-fuse upload - ARGS`: the image arrives through a pipe, as from curl or xz. */
  const uploadFromPipe = (producer: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> =>
    sh(
      'bash',
      [
        '-o',
        'pipefail',
        '-c',
        `${producer} | "$0" "$1" upload - "\${@:2}"`,
        process.execPath,
        CLI_PATH,
        ...args,
        '--endpoint',
        context.localEbs.endpoint,
      ],
      {
        env: cliEnvironment(context.endpoint),
        timeoutMs: 120_000,
      },
    );

  it('upload - reads the image from a pipe: the downloaded snapshot equals it, zero-padded to the volume', async () => {
    const data = context.file('piped.bin');
    await writeFile(data, Buffer.concat([randomBytes(5 * B + 1000), Buffer.alloc(3 * B), randomBytes(B)]));
    const before = await serverCounts();
    const result = await uploadFromPipe(`cat '${data}'`, ['--size', '1']);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /^snap-[0-9a-f]+\n$/);
    assert.match(result.stderr, new RegExp(`standard input ended after ${(await stat(data)).size} bytes`));
    // 10 blocks of data, of which 2 are zeros (block 5 holds the tail of the first piece).
    assert.equal(delta(await serverCounts(), before, 'PutSnapshotBlock'), 8);
    const copy = context.file('piped-copy.img');
    await download(result.stdout.trim(), copy);
    const expected = context.file('piped-expected.img');
    await mustRun('cp', [data, expected]);
    await mustRun('truncate', ['-s', String(GIB), expected]);
    await mustRun('cmp', [expected, copy]);
  });

  it('upload - of a stream longer than the volume fails in one line, and nothing is completed', async () => {
    const before = await serverCounts();
    const result = await uploadFromPipe(`head -c ${GIB + 1} /dev/zero`, ['--size', '1']);
    expectOneLineError(
      {
        ...result,
        signal: null,
        stderr: result.stderr
          .split('\n')
          // The start line, and the status lines a slow run prints every 5 s, are not the error.
          .filter((line) => !line.includes('uploading standard input to') && !line.startsWith('ebs-fuse: uploading: '))
          .join('\n'),
      },
      /^ebs-fuse: standard input is longer than the volume \(1073741824 bytes, --size\); snap-\S+ was not completed and stays pending/,
    );
    assert.equal(result.stdout, '');
    assert.equal(delta(await serverCounts(), before, 'CompleteSnapshot'), 0);
    expectOneLineError(await cli(['upload', '-']), /^ebs-fuse: upload - needs --size GIB/);
  });

  it('refuses --size smaller than the file, in one line, before starting a snapshot', async () => {
    const file = context.file('one-byte-over.img');
    await createZeroImage(file, GIB + 1);
    const before = await serverCounts();
    expectOneLineError(
      await cli(['upload', file, '--size', '1']),
      /^ebs-fuse: --size 1 is smaller than .*one-byte-over\.img \(1073741825 bytes, 2 GiB rounded up\); --size may only make the volume larger$/,
    );
    assert.equal(delta(await serverCounts(), before, 'StartSnapshot'), 0);
  });

  it('complete: a snapshot left pending by the session API, then by mount --no-complete', async () => {
    const stateDir = context.file('session-state');
    const expected = context.file('session-expected.img');
    await createZeroImage(expected, GIB);
    const data = randomBytes(3 * B + 777);
    await writeFile(context.file('session-data.bin'), data);
    await mustRun('dd', [
      `if=${context.file('session-data.bin')}`,
      `of=${expected}`,
      'bs=1M',
      'oflag=seek_bytes',
      `seek=${5 * MIB + 333}`,
      'conv=notrunc',
      'status=none',
    ]);

    const client = context.client();
    let snapshotId: string;
    try {
      const session = await SnapshotSession.start(client, { volumeSizeGiB: 1 }, { stateDir, log: () => undefined });
      snapshotId = session.snapshotId;
      await session.file.write(5 * MIB + 333, data);
      assert.equal((await session.finish({ complete: false, timeoutMs: 60_000 })).status, 'pending');
    } finally {
      client.close();
    }

    const completed = await cli(['complete', snapshotId, '--state-dir', stateDir]);
    assert.equal(completed.code, 0, completed.stderr);
    assert.equal(completed.stdout, `${snapshotId} completed\n`);
    await context.expectSnapshotEquals(snapshotId, expected);

    expectOneLineError(
      await cli(['complete', snapshotId, '--state-dir', stateDir]),
      new RegExp(`^ebs-fuse: ${snapshotId} is already completed`),
    );
    expectOneLineError(
      await cli(['complete', 'snap-0123456789abcdef0', '--state-dir', stateDir]),
      /^ebs-fuse: no local state for snap-0123456789abcdef0 in /,
    );
    expectOneLineError(await cli(['complete', 'not-a-snapshot', '--state-dir', stateDir]), /^ebs-fuse: SNAPSHOT_ID must be a snapshot ID/);

    // The mount keeps its state in the context's state dir.
    const mountExpected = context.file('mount-expected.img');
    await createZeroImage(mountExpected, GIB);
    const mount = await context.mount(1, ['--no-complete']);
    for (const target of [mount.filePath, mountExpected]) {
      await mustRun('dd', [`if=${context.file('session-data.bin')}`, `of=${target}`, 'bs=1M', 'seek=40', 'conv=notrunc', 'status=none']);
    }
    expectEnded(await mount.stop('SIGINT'), mount.snapshotId, 'pending');
    const fromMount = await cli(['complete', mount.snapshotId, '--state-dir', path.join(context.scratch, 'state')]);
    assert.equal(fromMount.code, 0, fromMount.stderr);
    assert.equal(fromMount.stdout, `${mount.snapshotId} completed\n`);
    await context.expectSnapshotEquals(mount.snapshotId, mountExpected);
  });
});
