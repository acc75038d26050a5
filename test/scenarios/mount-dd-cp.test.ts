// dd, cp and shell redirection into a real mount against a local-ebs process.
// The expected image comes from running the very same commands against a
// sparse local file (then restoring its size, since a regular file shrinks
// where the mounted one reads zeros); the completed snapshot, read back
// through GetSnapshotBlock, must equal it byte for byte.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { LIBFUSE3_WRITE_MAX_BYTES, WRITE_MAX_BYTES } from '../../src/fuse/fuse-mount';
import { ScenarioContext, createZeroImage, expectEnded, mustRun, GIB, MIB } from './support';

const KIB = 1024;
const BLOCK = 512 * KIB;
const VOLUME_GIB = 1;

interface DdStep {
  why: string;
  /** dd operands after if= and of=. */
  operands: string[];
}

// Offsets are in bytes through oflag=seek_bytes where they must not be aligned.
const DD_STEPS: DdStep[] = [
  { why: '4 KiB writes at a small aligned offset', operands: ['bs=4K', 'count=300', 'seek=7', 'conv=notrunc'] },
  {
    why: '128 KiB writes from just before a block boundary',
    operands: ['bs=128K', 'count=40', 'skip=3', 'oflag=seek_bytes', `seek=${5 * BLOCK - 3000}`, 'conv=notrunc'],
  },
  {
    why: '1 MiB writes at an odd offset, with fsync',
    operands: ['bs=1M', 'count=16', 'skip=1', 'oflag=seek_bytes', `seek=${100 * MIB + 12345}`, 'conv=notrunc,fsync'],
  },
  { why: '4 MiB writes, aligned', operands: ['bs=4M', 'count=4', 'skip=2', 'seek=50', 'conv=notrunc'] },
  {
    why: '4 KiB writes straddling a block boundary over earlier data',
    operands: ['bs=4K', 'count=3', 'skip=100', 'oflag=seek_bytes', `seek=${3 * BLOCK - 4096 - 100}`, 'conv=notrunc'],
  },
  {
    why: 'data past 300 MiB that the truncating dd below must zero',
    operands: ['bs=1M', 'count=2', 'skip=5', 'seek=400', 'conv=notrunc,fsync'],
  },
  {
    why: 'dd without conv=notrunc: truncates to its seek offset',
    operands: ['bs=128K', 'count=10', 'skip=7', `seek=${(300 * MIB) / (128 * KIB)}`],
  },
  {
    why: 'an unaligned write after the truncation',
    operands: ['bs=4K', 'count=33', 'skip=9', 'oflag=seek_bytes', `seek=${500 * MIB + 777}`, 'conv=notrunc'],
  },
];

// Through both FUSE paths: libfuse 3 (the default) and fuse-native (where libfuse 3 is missing).
const BINDINGS = [
  { binding: 'libfuse3', writeMaxBytes: LIBFUSE3_WRITE_MAX_BYTES },
  { binding: 'fuse-native', writeMaxBytes: WRITE_MAX_BYTES },
] as const;

for (const { binding, writeMaxBytes } of BINDINGS)
  describe(`scenario: dd, cp and redirection through the mount (${binding})`, function () {
    this.timeout(240_000);
    const context = ScenarioContext.forSuite(undefined, binding);

    it('dd at 4K/128K/1M/4M, aligned and straddling, with and without notrunc and fsync; ended by umount', async () => {
      const source = context.file('dd-source.bin');
      await writeFile(source, randomBytes(24 * MIB));
      const expected = context.file('dd-expected.img');
      await createZeroImage(expected, VOLUME_GIB * GIB);

      const mount = await context.mount(VOLUME_GIB);
      for (const step of DD_STEPS) {
        const intoMount = await mustRun('dd', [`if=${source}`, `of=${mount.filePath}`, 'status=none', ...step.operands]).catch(
          (error: Error) => {
            throw new Error(`${step.why}: ${error.message}`);
          },
        );
        assert.equal(intoMount.code, 0);
        await mustRun('dd', [`if=${source}`, `of=${expected}`, 'status=none', ...step.operands]);
        await mustRun('truncate', ['-s', String(VOLUME_GIB * GIB), expected]);
      }
      // The mount shows what the snapshot will hold, before it is even uploaded.
      await mustRun('cmp', [expected, mount.filePath]);

      await mustRun('umount', [mount.mountpoint]);
      const result = await mount.waitForExit();
      expectEnded(result, mount.snapshotId);
      assert.match(result.stderr, new RegExp(`kernel requests through ${binding}: \\d+ writes \\(\\d+ bytes, largest ${writeMaxBytes}\\)`));
      const blocks = await context.expectSnapshotEquals(mount.snapshotId, expected);
      assert.ok(blocks > 0);
    });

    it('measures dd bs=1M into the mount, then fsync, and keeps every byte', async () => {
      const sizeBytes = 128 * MIB;
      const source = context.file('throughput-source.bin');
      await writeFile(source, randomBytes(sizeBytes));
      const mount = await context.mount(VOLUME_GIB);

      let started = process.hrtime.bigint();
      await mustRun('dd', [`if=${source}`, `of=${mount.filePath}`, 'bs=1M', 'conv=notrunc', 'status=none']);
      const writeSeconds = Number(process.hrtime.bigint() - started) / 1e9;
      started = process.hrtime.bigint();
      await mustRun('dd', [`if=${source}`, `of=${mount.filePath}`, 'bs=1M', 'count=0', 'conv=notrunc,fsync', 'status=none']);
      const fsyncSeconds = Number(process.hrtime.bigint() - started) / 1e9;
      process.stderr.write(
        `      (dd bs=1M, ${sizeBytes / MIB} MiB: write ${(sizeBytes / MIB / writeSeconds).toFixed(0)} MiB/s; ` +
          `write + fsync ${(sizeBytes / MIB / (writeSeconds + fsyncSeconds)).toFixed(0)} MiB/s)\n`,
      );

      const expected = context.file('throughput-expected.img');
      await createZeroImage(expected, VOLUME_GIB * GIB);
      await mustRun('dd', [`if=${source}`, `of=${expected}`, 'bs=1M', 'conv=notrunc', 'status=none']);
      const result = await mount.stop('SIGINT');
      expectEnded(result, mount.snapshotId);
      assert.equal(await context.expectSnapshotEquals(mount.snapshotId, expected), sizeBytes / BLOCK);
    });

    for (const [name, copy] of [
      ['cp of an image file', (image: string, target: string) => mustRun('cp', [image, target])],
      [
        'shell redirection: cat img > mnt/snapshot.img',
        (image: string, target: string) => mustRun('sh', ['-c', 'cat "$0" > "$1"', image, target]),
      ],
    ] as const) {
      it(`${name} replaces the whole content (zeros after the image)`, async () => {
        const image = context.file('copy-source.img');
        // Not a whole number of blocks, so the last block is partly the image and partly zeros.
        await writeFile(image, randomBytes(20 * MIB + 12345));
        const leftover = context.file('leftover.bin');
        await writeFile(leftover, randomBytes(3 * MIB));
        const mount = await context.mount(VOLUME_GIB);
        // Data beyond the image that the copy's O_TRUNC must turn into zeros.
        await mustRun('dd', [`if=${leftover}`, `of=${mount.filePath}`, 'bs=1M', 'seek=600', 'conv=notrunc,fsync', 'status=none']);
        await mustRun('dd', [`if=${leftover}`, `of=${mount.filePath}`, 'bs=1M', 'seek=10', 'conv=notrunc', 'status=none']);

        await copy(image, mount.filePath);

        const expected = context.file('copy-expected.img');
        await mustRun('cp', [image, expected]);
        await mustRun('truncate', ['-s', String(VOLUME_GIB * GIB), expected]);
        const result = await mount.stop('SIGINT');
        expectEnded(result, mount.snapshotId);
        await context.expectSnapshotEquals(mount.snapshotId, expected);
      });
    }
  });
