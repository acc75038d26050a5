import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readlinkSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { removeFreeingLater } from '../src/remove-file';

const MIB = 1024 * 1024;
const FILE_BYTES = 64 * MIB;

/** Free bytes of the file system at `directory`. */
const freeBytes = (directory: string): number => {
  const stats = statfsSync(directory);
  return stats.bfree * stats.bsize;
};

/** Processes other than this one with a descriptor open on `file` (removed or not). */
function holdersOf(file: string): number[] {
  const holders: number[] = [];
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name) && Number(name) !== process.pid)) {
    try {
      for (const fd of readdirSync(`/proc/${pid}/fd`)) {
        if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith(file)) holders.push(Number(pid));
      }
    } catch {
      // Gone meanwhile, or not ours to read.
    }
  }
  return holders;
}

async function until(condition: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadlineMs = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadlineMs) return false;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return true;
}

describe('remove-file: a large file removed without waiting for its space', () => {
  let directory: string;
  const pathBefore = process.env.PATH;
  beforeEach(() => {
    // tmpfs: its free space is this test's alone to watch, and it frees at once.
    directory = mkdtempSync(path.join('/dev/shm', 'ebs-fuse-remove-'));
  });
  afterEach(() => {
    process.env.PATH = pathBefore;
    rmSync(directory, { recursive: true, force: true });
  });

  it('removes the name at once; a holder process frees the space, then exits by itself', async () => {
    const file = path.join(directory, 'local-copy.img');
    const freeBefore = freeBytes(directory);
    writeFileSync(file, Buffer.alloc(FILE_BYTES, 1));
    assert.ok(freeBytes(directory) <= freeBefore - FILE_BYTES, 'the file takes its space');
    assert.equal(await removeFreeingLater(file), 'freed by a holder');
    assert.equal(existsSync(file), false, 'the name is gone when it resolves');
    assert.ok(await until(() => holdersOf(file).length === 0, 5000), `still held by ${holdersOf(file).join(', ')}`);
    assert.ok(await until(() => freeBytes(directory) >= freeBefore, 5000), 'the space comes back');
  });

  it('where no holder can be started, removes and frees the file here', async () => {
    const file = path.join(directory, 'local-copy.img');
    const freeBefore = freeBytes(directory);
    writeFileSync(file, Buffer.alloc(FILE_BYTES, 1));
    process.env.PATH = directory; // no `cat` there
    assert.equal(await removeFreeingLater(file), 'freed here');
    assert.equal(existsSync(file), false);
    assert.ok(freeBytes(directory) >= freeBefore, 'freed before it resolved');
  });

  it('says so when there is no file', async () => {
    assert.equal(await removeFreeingLater(path.join(directory, 'none')), 'absent');
  });
});
