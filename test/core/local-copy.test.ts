import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { sha256Digest } from '../../src/ebs/checksum';
import { autoReserveBytes, LocalCopy, type CopyKind, type CopyWriteMode } from '../../src/core/local-copy';
import { AlignedBuffers } from '../../src/staging-buffers';

const B = BLOCK_SIZE_BYTES;
const notBusy = (): boolean => false;

describe('core: local copy', () => {
  let directory: string;
  const copies: LocalCopy[] = [];
  beforeEach(() => {
    directory = mkdtempSync(path.join(os.tmpdir(), 'ebs-fuse-local-copy-'));
  });
  afterEach(async () => {
    for (const copy of copies.splice(0)) await copy.close();
    rmSync(directory, { recursive: true, force: true });
  });

  const open = (budget: number | 'auto', existingSlots = 0, writeMode: CopyWriteMode = 'direct'): LocalCopy => {
    const copy = new LocalCopy(directory, budget, existingSlots, { mode: writeMode, directAtOnce: 2 });
    copies.push(copy);
    return copy;
  };

  async function keep(copy: LocalCopy, blockIndex: number, kind: CopyKind, fill = blockIndex): Promise<number | undefined> {
    const slot = await copy.allocate(kind, notBusy);
    if (slot === undefined) return undefined;
    const data = Buffer.alloc(B, fill);
    assert.equal(await copy.write(slot, data), true);
    copy.commit(blockIndex, slot, sha256Digest(data), kind);
    return slot;
  }

  it('keeps blocks within the budget and reads them back', async () => {
    const copy = open(3 * B);
    for (const index of [10, 11, 12]) assert.notEqual(await keep(copy, index, 'pieces'), undefined);
    assert.equal(copy.blocksHeld, 3);
    assert.equal(copy.fileBytes, 3 * B);
    assert.ok((await copy.readRange(11, 100, 50))!.equals(Buffer.alloc(50, 11)));
    assert.ok(statSync(LocalCopy.fileIn(directory)).size <= 3 * B);
  });

  it('a whole-block copy displaces the oldest whole one, never a pieces one', async () => {
    const copy = open(3 * B);
    await keep(copy, 1, 'pieces');
    await keep(copy, 2, 'whole');
    await keep(copy, 3, 'whole');
    await keep(copy, 4, 'whole'); // displaces 2, the oldest whole copy
    assert.deepEqual(
      [1, 2, 3, 4].map((index) => copy.holds(index)),
      [true, false, true, true],
    );
    await keep(copy, 5, 'whole'); // displaces 3
    await keep(copy, 6, 'whole'); // displaces 4; block 1 (pieces) stays
    assert.deepEqual(
      [1, 3, 4, 5, 6].map((index) => copy.holds(index)),
      [true, false, false, true, true],
    );
    assert.equal(copy.fileBytes, 3 * B, 'the file never grows past the budget');
  });

  it('a pieces copy displaces whole copies first, then the least recently used pieces copy', async () => {
    const copy = open(2 * B);
    await keep(copy, 1, 'pieces');
    await keep(copy, 2, 'pieces');
    assert.ok(await copy.readRange(1, 0, 10)); // 1 is now more recent than 2
    await keep(copy, 3, 'pieces');
    assert.deepEqual(
      [1, 2, 3].map((index) => copy.holds(index)),
      [true, false, true],
    );
    // Only pieces copies are left: a whole block gets no copy at all.
    assert.equal(await copy.allocate('whole', notBusy), undefined);
  });

  it('a rewritten copy displaces whole and pieces copies before another rewritten one; they never displace it', async () => {
    const copy = open(2 * B);
    await keep(copy, 1, 'rewritten');
    await keep(copy, 2, 'pieces');
    await keep(copy, 3, 'rewritten'); // displaces 2
    assert.deepEqual(
      [1, 2, 3].map((index) => copy.holds(index)),
      [true, false, true],
    );
    assert.equal(await copy.allocate('pieces', notBusy), undefined);
    await keep(copy, 4, 'rewritten'); // displaces 1, the least recently used
    assert.deepEqual(
      [1, 3, 4].map((index) => copy.holds(index)),
      [false, true, true],
    );
  });

  it('never takes the slot of a block that is being uploaded', async () => {
    const copy = open(1 * B);
    await keep(copy, 1, 'whole');
    assert.equal(await copy.allocate('pieces', (index) => index === 1), undefined);
    assert.ok(copy.holds(1));
  });

  it('keeps nothing with a budget of 0', async () => {
    const copy = open(0);
    assert.equal(copy.enabled, false);
    assert.equal(await copy.allocate('pieces', notBusy), undefined);
  });

  it('auto grows only while the file system keeps its reserve free', async () => {
    assert.equal(autoReserveBytes(100 * 1024 ** 3), 10 * 1024 ** 3);
    assert.equal(autoReserveBytes(100 * 1024 ** 2), 64 * 1024 ** 2);
    const copy = open('auto');
    assert.notEqual(await keep(copy, 1, 'pieces'), undefined, 'the test machine has room beyond the reserve');
  });

  it('a replayed copy is hashed before it is read; a torn or reused one is dropped, never returned', async () => {
    const first = open(4 * B);
    const slot = (await keep(first, 7, 'pieces'))!;
    const other = (await keep(first, 8, 'pieces'))!;
    await first.sync();
    await first.close();
    copies.splice(0);
    const reopened = open(4 * B, 2);
    assert.equal(reopened.adopt(7, slot, sha256Digest(Buffer.alloc(B, 7))), true);
    assert.equal(reopened.adopt(9, other, sha256Digest(Buffer.alloc(B, 9))), true); // a claim the bytes do not bear out
    assert.equal(reopened.adopt(10, other, sha256Digest(Buffer.alloc(B, 9))), false, 'a slot has one owner');
    assert.ok((await reopened.readRange(7, 0, B))!.equals(Buffer.alloc(B, 7)));
    assert.equal(await reopened.readRange(9, 0, 10), undefined);
    assert.equal(reopened.holds(9), false);
  });

  it('a copy the disk refuses frees its slot and reports false', async () => {
    const copy = open(2 * B);
    // The directory is gone: the file cannot even be opened.
    rmSync(directory, { recursive: true, force: true });
    const slot = (await copy.allocate('pieces', notBusy))!;
    assert.equal(await copy.write(slot, Buffer.alloc(B, 1)), false);
    assert.equal(copy.blocksHeld, 0);
    assert.notEqual(await copy.allocate('pieces', notBusy), undefined, 'the slot is free again');
  });

  /** Bytes of the file in the page cache, by util-linux's fincore (mincore(2)). */
  const residentBytes = (file: string): number =>
    Number(execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', file], { encoding: 'utf8' }).trim());

  function takesDirectIo(dir: string): boolean {
    const probe = path.join(dir, 'probe');
    try {
      closeSync(openSync(probe, constants.O_RDWR | constants.O_CREAT | constants.O_DIRECT));
      return true;
    } catch {
      return false;
    } finally {
      rmSync(probe, { force: true });
    }
  }

  const cases = [
    { writeMode: 'direct', buffers: 'plain' },
    { writeMode: 'direct', buffers: 'page-aligned' },
    { writeMode: 'buffered', buffers: 'plain' },
  ] as const;
  for (const { writeMode, buffers } of cases) {
    const how = writeMode === 'buffered' ? 'go through' : buffers === 'plain' ? 'bypass (staged)' : 'bypass (no staging copy)';
    it(`writeMode ${writeMode}, ${buffers} buffers: copies ${how} the page cache, read back exactly and sync`, async function () {
      if (writeMode === 'direct' && !takesDirectIo(directory)) {
        this.skip(); // the temporary directory's file system refuses O_DIRECT: nothing to check here
      }
      const copy = open(8 * B, 0, writeMode);
      const aligned = new AlignedBuffers(4, B);
      const data = [3, 4, 5, 6].map((index) => {
        const bytes = buffers === 'plain' ? Buffer.alloc(B) : aligned.take()!;
        return bytes.fill(index).fill(index + 100, 1000, 2000);
      });
      const slots = await Promise.all(
        data.map(async (bytes, i) => {
          const slot = (await copy.allocate('whole', notBusy))!;
          assert.equal(await copy.write(slot, bytes), true);
          copy.commit(3 + i, slot, sha256Digest(bytes), 'whole');
          return slot;
        }),
      );
      assert.equal(new Set(slots).size, 4);
      assert.equal(copy.directWriteCount, writeMode === 'direct' ? 4 : 0);
      assert.equal(copy.stagedWriteCount, writeMode === 'direct' && buffers === 'plain' ? 4 : 0, 'copies through a staging buffer');
      assert.equal(
        copy.diskWriteCount,
        writeMode === 'direct' && buffers === 'page-aligned' ? 2 : 4,
        'page-aligned copies into consecutive slots: the first alone, the three that came while it was written in one',
      );
      const resident = residentBytes(LocalCopy.fileIn(directory));
      if (writeMode === 'direct') assert.equal(resident, 0, 'no page of the copies in the page cache');
      else assert.equal(resident, 4 * B, 'every page of the copies in the page cache');
      await copy.sync();
      for (const [i, bytes] of data.entries()) {
        assert.ok((await copy.readRange(3 + i, 0, B))!.equals(bytes));
        assert.ok((await copy.readRange(3 + i, 990, 20))!.equals(bytes.subarray(990, 1010)));
      }
      assert.equal(copy.bytesWritten, 4 * B);
    });
  }
});
