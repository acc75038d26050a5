// Ctrl-C while a program still has the file open: unmounting then would lose
// that program's later writes, so the mount says it is busy and keeps serving;
// once the file is closed, the next Ctrl-C completes the snapshot.
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { ScenarioContext, createZeroImage, expectEnded, mustRun, GIB, MIB } from './support';

const HOLDER_LIMIT_S = 60;

describe('scenario: Ctrl-C while the file is open', function () {
  this.timeout(120_000);
  const context = ScenarioContext.forSuite();

  it('refuses to unmount while the file is open, then completes once it is closed', async () => {
    const source = context.file('busy-source.bin');
    await writeFile(source, randomBytes(MIB));
    const expected = context.file('busy-expected.img');
    await createZeroImage(expected, GIB);
    const mount = await context.mount(1);

    // A writer that keeps the file open after its write, as a loop device or a slow tool would.
    const holder = spawn(
      'sh',
      [
        '-c',
        `exec 3<>"$0"; dd if="$1" bs=1M count=1 seek=5 conv=notrunc status=none >&3; exec sleep ${HOLDER_LIMIT_S}`,
        mount.filePath,
        source,
      ],
      {
        stdio: 'ignore',
      },
    );
    const holderExited = new Promise((resolve) => holder.on('close', resolve));
    try {
      await mustRun('dd', [`if=${source}`, `of=${expected}`, 'bs=1M', 'count=1', 'seek=5', 'conv=notrunc', 'status=none']);
      const deadline = Date.now() + 10_000;
      // Wait until the holder's write is visible through the mount.
      while ((await mustRun('cmp', ['-n', String(6 * MIB), expected, mount.filePath]).catch(() => undefined)) === undefined) {
        assert.ok(Date.now() < deadline, 'the holder did not write in time');
        await new Promise((resolve) => setTimeout(resolve, 100));
      }

      mount.signal('SIGINT');
      const busyDeadline = Date.now() + 10_000;
      while (!mount.stderr.includes('is busy')) {
        assert.ok(Date.now() < busyDeadline, `no busy message: ${mount.stderr}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      assert.ok(mount.running);
      assert.equal(mount.stdoutLines.length, 1);
    } finally {
      holder.kill('SIGKILL');
      await holderExited;
    }

    const result = await mount.stop('SIGINT');
    expectEnded(result, mount.snapshotId);
    await context.expectSnapshotEquals(mount.snapshotId, expected);
  });
});
