import assert from 'node:assert/strict';
import { writevFully } from '../src/durable-file';

describe('durable-file: writing whole', () => {
  it('writevFully goes on after a short write, from the byte where it stopped, and fails when nothing is written', async () => {
    const file = Buffer.alloc(12);
    const sizes = [5, 100];
    const handle = {
      writev: async (buffers: Buffer[], position: number): Promise<{ bytesWritten: number }> => {
        const bytes = Buffer.concat(buffers).subarray(0, sizes.shift() ?? 0);
        bytes.copy(file, position);
        return { bytesWritten: bytes.length };
      },
    };
    await writevFully(handle, [Buffer.from('abcd'), Buffer.from('efgh'), Buffer.from('ij')], 1);
    assert.equal(file.subarray(1, 11).toString(), 'abcdefghij');
    await assert.rejects(writevFully(handle, [Buffer.from('k')], 0), /wrote nothing/);
  });
});
