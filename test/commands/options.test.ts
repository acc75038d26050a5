// The shared option parsers of src/commands/options.ts and the status line of
// progress.ts: values accepted, values refused with a one-line UserError.
import { strict as assert } from 'node:assert';
import { Writable } from 'node:stream';
import { UserError } from '../../src/errors';
import { parseInteger, parseSizeBytes, parseSnapshotId, parseTag, parseVolumeSizeGiB, snapshotParams } from '../../src/commands/options';
import {
  formatLiveLine,
  formatStatusLine,
  startFlushProgress,
  startLiveLine,
  startMountedStatus,
  startStatusLines,
} from '../../src/commands/progress';
import { defaultStateDir } from '../../src/core/session';
import type { VolumeStats } from '../../src/core/volume-file';

function refusal(action: () => unknown): string {
  try {
    action();
  } catch (error) {
    assert.ok(error instanceof UserError, `not a UserError: ${String(error)}`);
    assert.ok(!error.message.includes('\n'), 'a UserError is one line');
    return error.message;
  }
  assert.fail('expected a UserError');
}

describe('command options', () => {
  it('parses sizes with binary and decimal units', () => {
    assert.equal(parseSizeBytes('256MiB', '--cache-size'), 256 * 1024 ** 2);
    assert.equal(parseSizeBytes('2GiB', '--cache-size'), 2 * 1024 ** 3);
    assert.equal(parseSizeBytes('2g', '--cache-size'), 2 * 1024 ** 3);
    assert.equal(parseSizeBytes('1.5M', '--cache-size'), 1.5 * 1024 ** 2);
    assert.equal(parseSizeBytes('3MB', '--cache-size'), 3_000_000);
    assert.equal(parseSizeBytes('4096', '--cache-size'), 4096);
    assert.match(
      refusal(() => parseSizeBytes('lots', '--cache-size')),
      /^--cache-size must be a size such as 256MiB/,
    );
    assert.match(
      refusal(() => parseSizeBytes('5 parsecs', '--cache-size')),
      /^--cache-size must be a size/,
    );
    assert.match(
      refusal(() => parseSizeBytes('-1MiB', '--cache-size')),
      /^--cache-size must be a size/,
    );
  });

  it('parses volume sizes from 1 to 65536 GiB only', () => {
    assert.equal(parseVolumeSizeGiB('1'), 1);
    assert.equal(parseVolumeSizeGiB('65536'), 65536);
    assert.match(
      refusal(() => parseVolumeSizeGiB('0')),
      /at least 1 GiB/,
    );
    assert.match(
      refusal(() => parseVolumeSizeGiB('65537')),
      /at most 65536 GiB/,
    );
    assert.match(
      refusal(() => parseVolumeSizeGiB('1e3')),
      /whole number of GiB/,
    );
    assert.match(
      refusal(() => parseVolumeSizeGiB('')),
      /whole number of GiB/,
    );
    assert.equal(parseInteger('64', '--upload-concurrency', 1, 1024), 64);
    assert.match(
      refusal(() => parseInteger('2000', '--upload-concurrency', 1, 1024)),
      /from 1 to 1024, not 2000/,
    );
  });

  it('checks snapshot IDs and tags as the EBS model does', () => {
    assert.equal(parseSnapshotId('snap-0123456789abcdef0', '--resume'), 'snap-0123456789abcdef0');
    assert.match(
      refusal(() => parseSnapshotId('snap-ABC', '--resume')),
      /^--resume must be a snapshot ID/,
    );
    assert.match(
      refusal(() => parseSnapshotId(`snap-${'a'.repeat(60)}`, '--resume')),
      /^--resume must be a snapshot ID/,
    );
    assert.deepEqual(parseTag('team=storage'), { key: 'team', value: 'storage' });
    assert.deepEqual(parseTag('empty='), { key: 'empty', value: '' });
    assert.deepEqual(parseTag('k=a=b'), { key: 'k', value: 'a=b' });
    assert.match(
      refusal(() => parseTag('=value')),
      /KEY=VALUE/,
    );
    assert.match(
      refusal(() => parseTag(`${'k'.repeat(128)}=v`)),
      /longer than 127/,
    );
  });

  it('builds StartSnapshot parameters and refuses the combinations EBS refuses', () => {
    assert.deepEqual(snapshotParams(8, { description: 'nightly', tag: ['a=1', 'b=2'], timeout: '120', clientToken: 'token-1' }), {
      volumeSizeGiB: 8,
      description: 'nightly',
      tags: [
        { key: 'a', value: '1' },
        { key: 'b', value: '2' },
      ],
      timeoutMinutes: 120,
      clientToken: 'token-1',
    });
    assert.deepEqual(snapshotParams(1, { encrypted: true }), { volumeSizeGiB: 1, encrypted: true });
    const arn = 'arn:aws:kms:us-east-1:123456789012:key/abcd';
    // A key implies encryption for a fresh snapshot; with a parent, EBS takes the key alone.
    assert.deepEqual(snapshotParams(1, { kmsKeyArn: arn }), { volumeSizeGiB: 1, kmsKeyArn: arn, encrypted: true });
    assert.deepEqual(snapshotParams(1, { kmsKeyArn: arn, parentSnapshotId: 'snap-01' }), {
      volumeSizeGiB: 1,
      parentSnapshotId: 'snap-01',
      kmsKeyArn: arn,
    });
    assert.match(
      refusal(() => snapshotParams(1, { encrypted: true, parentSnapshotId: 'snap-01' })),
      /--encrypted cannot be combined with --parent-snapshot-id/,
    );
    assert.match(
      refusal(() => snapshotParams(1, { kmsKeyArn: 'key-1' })),
      /--kms-key-arn must be a KMS key ARN/,
    );
    assert.match(
      refusal(() => snapshotParams(1, { tag: ['a=1', 'a=2'] })),
      /--tag a= is given twice/,
    );
    assert.match(
      refusal(() => snapshotParams(1, { tag: Array.from({ length: 51 }, (_, i) => `k${i}=v`) })),
      /at most 50 --tag/,
    );
    assert.match(
      refusal(() => snapshotParams(1, { timeout: '4321' })),
      /--timeout must be from 10 to 4320/,
    );
    assert.match(
      refusal(() => snapshotParams(1, { description: '' })),
      /--description must not be empty/,
    );
    assert.match(
      refusal(() => snapshotParams(1, { clientToken: 'has space' })),
      /--client-token/,
    );
  });

  it('puts state under $XDG_STATE_HOME when it is absolute, else ~/.local/state', () => {
    assert.equal(defaultStateDir({ XDG_STATE_HOME: '/var/lib/x' }), '/var/lib/x/ebs-fuse');
    assert.match(defaultStateDir({ XDG_STATE_HOME: 'relative' }), /\/\.local\/state\/ebs-fuse$/);
    assert.match(defaultStateDir({}), /\/\.local\/state\/ebs-fuse$/);
  });
});

describe('progress output', () => {
  const stats = (overrides: Partial<VolumeStats> = {}): VolumeStats => ({
    dirtyBlocks: 3,
    uploadingBlocks: 2,
    cachedBlocks: 10,
    blocksUploaded: 40,
    bytesUploaded: 40 * 524288,
    distinctBlocksPut: 40,
    retries: 1,
    localCopyBlocks: 4,
    localCopyFileBytes: 4 * 524288,
    bytesWritten: 40 * 524288,
    localCopyBytesWritten: 4 * 524288,
    localCopyWriteCount: 2,
    journalBytesWritten: 900,
    journalBytes: 450,
    heldNowhereErrors: 0,
    unsettledBlocks: 0,
    ...overrides,
  });

  it('says dirty blocks, uploaded blocks, MB/s and retries in one status line', () => {
    const line = formatStatusLine('mounted', stats({ lastUploadError: 'HTTP 500' }), 12.34);
    assert.equal(
      line,
      'ebs-fuse: mounted: 3 dirty blocks, 2 uploading, 40 uploaded (21.0 MB), 12.3 MB/s, 1 retries, local copy 2.1 MB, last upload error: HTTP 500',
    );
    assert.match(formatStatusLine('mounted', stats({ heldNowhereErrors: 2 }), 1), /, 2 reads or partial writes of blocks held nowhere$/);
  });

  it('writes status lines periodically without a terminal, and none on a terminal', async () => {
    let current = stats({ bytesUploaded: 0 });
    const lines: string[] = [];
    const reporter = startStatusLines({ stats: () => current }, { write: (text) => lines.push(text) > 0, isTTY: false }, 'flushing', 30);
    current = stats({ bytesUploaded: 10_000_000 });
    await new Promise((resolve) => setTimeout(resolve, 100));
    reporter.stop();
    assert.ok(lines.length >= 2, lines.join(''));
    assert.match(lines[0], /^ebs-fuse: flushing: 3 dirty blocks, .* MB\/s, 1 retries, local copy 2\.1 MB\n$/);
    const silent: string[] = [];
    startStatusLines({ stats: () => current }, { write: (text) => silent.push(text) > 0, isTTY: true }, 'mounted', 10).stop();
    assert.deepEqual(silent, []);
  });

  it('does not repeat an unchanged status line while idle', async () => {
    const idle = stats({ bytesUploaded: 0 });
    const lines: string[] = [];
    const reporter = startStatusLines({ stats: () => idle }, { write: (text) => lines.push(text) > 0, isTTY: false }, 'mounted', 10);
    await new Promise((resolve) => setTimeout(resolve, 150));
    reporter.stop();
    assert.equal(lines.length, 1, lines.join(''));
  });

  it('on a terminal, redraws one live line in place: uploaded, MB/s, dirty, in flight, retries, last error', async () => {
    assert.equal(
      formatLiveLine('mounted', stats({ lastUploadError: 'HTTP 500' }), 12.34),
      'ebs-fuse mounted: 21.0 MB uploaded, 12.3 MB/s, 3 dirty, 2 in flight, 1 retries, last error: HTTP 500',
    );
    let current = stats({ bytesUploaded: 0 });
    const written: string[] = [];
    const terminal = { write: (text: string) => written.push(text) > 0, isTTY: true, columns: 60 };
    const original = terminal.write;
    const live = startLiveLine({ stats: () => current }, terminal, 'mounted', 20);
    current = stats({ bytesUploaded: 5_000_000, dirtyBlocks: 7 });
    await new Promise((resolve) => setTimeout(resolve, 70));
    terminal.write('ebs-fuse: a log line\n');
    live.stop();
    assert.equal(terminal.write, original, 'stop() gives the stream its own write back');
    const draws = written.filter((text) => text.startsWith('\r\x1b[2Kebs-fuse mounted: '));
    assert.ok(draws.length >= 3, written.join('|'));
    assert.ok(
      draws.some((text) => text.includes('5.0 MB uploaded') && text.includes('7 dirty')),
      written.join('|'),
    );
    assert.ok(
      draws.every((text) => text.length - 5 <= 59),
      'cut to the terminal width',
    );
    const logAt = written.indexOf('\r\x1b[2Kebs-fuse: a log line\n');
    assert.ok(logAt > 0, 'a log line erases the live line first');
    assert.match(written[logAt + 1], /^ebs-fuse mounted: /, 'then the live line is drawn again below it');
    assert.equal(written[written.length - 1], '\r\x1b[2K', 'stop() erases the line');

    const lines: string[] = [];
    startMountedStatus({ stats: () => current }, { write: (text) => lines.push(text) > 0, isTTY: false }).stop();
    assert.deepEqual(lines, [], 'off a terminal no live line: the periodic status lines instead');
  });

  it('draws a bar of the blocks left on a terminal during the final flush', async () => {
    let current = stats({ dirtyBlocks: 8, uploadingBlocks: 2, blocksUploaded: 0 });
    let output = '';
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        output += chunk.toString();
        done();
      },
    });
    const terminal = Object.assign(sink, { isTTY: true, columns: 120 });
    const bar = startFlushProgress({ stats: () => current }, terminal);
    current = stats({ dirtyBlocks: 0, uploadingBlocks: 0, blocksUploaded: 10 });
    await new Promise((resolve) => setTimeout(resolve, 50));
    bar.stop();
    assert.match(output, /flushing \|.*\| 10\/10 blocks/);
  });
});
