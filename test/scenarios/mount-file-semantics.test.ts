// The contract's edge cases through a real mount: fsync against a server that
// fails every PUT, writes at and past the end, and truncation. File calls run
// in a child node process (synchronous fs calls, errno codes reported as JSON)
// so that each call's own result is observed.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { setLocalEbsFaults } from '../../src/local-ebs/admin-client';
import { ScenarioContext, createZeroImage, expectEnded, mustRun, sh, GIB, MIB } from './support';

type FileOp =
  | { op: 'write'; offset: number; source: string; sourceOffset?: number; length: number }
  | { op: 'fsync' }
  | { op: 'fdatasync' }
  | { op: 'ftruncate'; length: number }
  | { op: 'truncate'; length: number }
  | { op: 'size' };

interface OpResult {
  op: string;
  code?: string;
  value?: number;
}

// Runs the ops on one descriptor opened r+, then closes it; each result is the value or the errno code.
const FILE_OPS_SCRIPT = `
const fs = require('fs');
const [file, opsJson] = process.argv.slice(1);
const fd = fs.openSync(file, 'r+');
const results = [];
for (const step of JSON.parse(opsJson)) {
  try {
    let value;
    if (step.op === 'write') {
      const data = fs.readFileSync(step.source).subarray(step.sourceOffset || 0, (step.sourceOffset || 0) + step.length);
      value = fs.writeSync(fd, data, 0, data.length, step.offset);
    } else if (step.op === 'fsync') fs.fsyncSync(fd);
    else if (step.op === 'fdatasync') fs.fdatasyncSync(fd);
    else if (step.op === 'ftruncate') fs.ftruncateSync(fd, step.length);
    else if (step.op === 'truncate') fs.truncateSync(file, step.length);
    else if (step.op === 'size') value = fs.fstatSync(fd).size;
    results.push({ op: step.op, value });
  } catch (error) {
    results.push({ op: step.op, code: error.code });
  }
}
try {
  fs.closeSync(fd);
  results.push({ op: 'close' });
} catch (error) {
  results.push({ op: 'close', code: error.code });
}
process.stdout.write(JSON.stringify(results));
`;

async function runFileOps(file: string, ops: FileOp[], timeoutMs = 120_000): Promise<OpResult[]> {
  const result = await sh(process.execPath, ['-e', FILE_OPS_SCRIPT, file, JSON.stringify(ops)], { timeoutMs });
  assert.equal(result.code, 0, `file ops failed: ${result.stderr}`);
  return JSON.parse(result.stdout) as OpResult[];
}

describe('scenario: fsync errors, the end of the file and truncation', function () {
  this.timeout(300_000);
  const context = ScenarioContext.forSuite();

  it('fsync returns EIO while every PUT fails and keeps the data; after recovery fsync returns 0 and the snapshot is right', async () => {
    const source = context.file('fsync-source.bin');
    await writeFile(source, randomBytes(3 * MIB));
    const expected = context.file('fsync-expected.img');
    await createZeroImage(expected, GIB);
    const mount = await context.mount(1);
    const { endpoint } = context;

    const before = await runFileOps(mount.filePath, [{ op: 'write', offset: MIB, source, length: MIB }, { op: 'fsync' }]);
    assert.deepEqual(before, [{ op: 'write', value: MIB }, { op: 'fsync' }, { op: 'close' }]);
    await mustRun('dd', [`if=${source}`, `of=${expected}`, 'bs=1M', 'count=1', 'seek=1', 'conv=notrunc', 'status=none']);

    await setLocalEbsFaults(endpoint.endpoint, endpoint, '500=1,ops=put');
    let failing: OpResult[];
    try {
      // Unaligned, so the failed blocks are also partly old data.
      failing = await runFileOps(mount.filePath, [
        { op: 'write', offset: 10 * MIB + 1000, source, sourceOffset: MIB, length: 2 * MIB },
        { op: 'fsync' },
      ]);
    } catch (error) {
      await setLocalEbsFaults(endpoint.endpoint, endpoint, '');
      throw error;
    }
    // close uploads like fsync, and fails the same way.
    assert.deepEqual(failing, [
      { op: 'write', value: 2 * MIB },
      { op: 'fsync', code: 'EIO' },
      { op: 'close', code: 'EIO' },
    ]);
    await mustRun('dd', [
      `if=${source}`,
      `of=${expected}`,
      'bs=1M',
      'iflag=skip_bytes,count_bytes',
      `skip=${MIB}`,
      `count=${2 * MIB}`,
      'oflag=seek_bytes',
      `seek=${10 * MIB + 1000}`,
      'conv=notrunc',
      'status=none',
    ]);
    // The data stays: reading it back through the mount shows it.
    const shown = context.file('fsync-shown.bin');
    await mustRun('dd', [`if=${mount.filePath}`, `of=${shown}`, 'bs=1M', 'count=16', 'iflag=direct', 'status=none']);
    await mustRun('dd', [`if=${expected}`, `of=${shown}.expected`, 'bs=1M', 'count=16', 'status=none']);
    await mustRun('cmp', [`${shown}.expected`, shown]);

    await setLocalEbsFaults(endpoint.endpoint, endpoint, '');
    const recovered = await runFileOps(mount.filePath, [{ op: 'fdatasync' }, { op: 'fsync' }]);
    assert.deepEqual(recovered, [{ op: 'fdatasync' }, { op: 'fsync' }, { op: 'close' }]);

    const result = await mount.stop('SIGINT');
    expectEnded(result, mount.snapshotId);
    await context.expectSnapshotEquals(mount.snapshotId, expected);
  });

  it('cuts a write crossing the end, answers ENOSPC past it, and truncates without changing the size', async () => {
    const sizeBytes = GIB;
    const source = context.file('end-source.bin');
    await writeFile(source, randomBytes(4 * MIB));
    const mount = await context.mount(1);

    const results = await runFileOps(mount.filePath, [
      { op: 'write', offset: 2 * MIB, source, length: 3 * MIB },
      { op: 'truncate', length: 3 * MIB + 5 },
      { op: 'size' },
      { op: 'ftruncate', length: sizeBytes + 1 },
      { op: 'truncate', length: sizeBytes + 512 * 1024 },
      { op: 'write', offset: sizeBytes - 500, source, length: 1000 },
      { op: 'write', offset: sizeBytes, source, length: 10 },
      { op: 'write', offset: sizeBytes + MIB, source, length: 10 },
      { op: 'ftruncate', length: sizeBytes },
      { op: 'size' },
      { op: 'fsync' },
    ]);
    assert.deepEqual(results, [
      { op: 'write', value: 3 * MIB },
      { op: 'truncate' },
      { op: 'size', value: sizeBytes },
      { op: 'ftruncate', code: 'EFBIG' },
      { op: 'truncate', code: 'EFBIG' },
      { op: 'write', value: 500 },
      { op: 'write', code: 'ENOSPC' },
      { op: 'write', code: 'ENOSPC' },
      { op: 'ftruncate' },
      { op: 'size', value: sizeBytes },
      { op: 'fsync' },
      { op: 'close' },
    ]);
    assert.equal((await sh('stat', ['-c', '%s', mount.filePath])).stdout.trim(), String(sizeBytes));

    // The same sequence on a regular file, where truncation shrinks it, then the size restored: zeros after L.
    const expected = context.file('end-expected.img');
    await createZeroImage(expected, sizeBytes);
    await mustRun('dd', [`if=${source}`, `of=${expected}`, 'bs=1M', 'count=3', 'seek=2', 'conv=notrunc', 'status=none']);
    await mustRun('truncate', ['-s', String(3 * MIB + 5), expected]);
    await mustRun('truncate', ['-s', String(sizeBytes), expected]);
    await mustRun('dd', [
      `if=${source}`,
      `of=${expected}`,
      'bs=500',
      'count=1',
      'oflag=seek_bytes',
      `seek=${sizeBytes - 500}`,
      'conv=notrunc',
      'status=none',
    ]);

    const result = await mount.stop('SIGTERM');
    expectEnded(result, mount.snapshotId);
    await context.expectSnapshotEquals(mount.snapshotId, expected);
  });
});
