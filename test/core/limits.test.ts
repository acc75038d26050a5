import assert from 'node:assert/strict';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { DEFAULT_LIMITS, directCopyWritesAtOnce } from '../../src/core/limits';

const MIB = 1024 * 1024;

describe('core: limits', () => {
  it('the local copy has one staging buffer per upload in flight, at most 8 and at most a sixteenth of the cache', () => {
    assert.equal(directCopyWritesAtOnce(DEFAULT_LIMITS), 8, '256 MiB cache, 64 uploads');
    assert.equal(directCopyWritesAtOnce({ cacheSizeBytes: 256 * MIB, uploadConcurrency: 4 }), 4);
    assert.equal(directCopyWritesAtOnce({ cacheSizeBytes: 32 * MIB, uploadConcurrency: 64 }), 4);
    assert.equal(directCopyWritesAtOnce({ cacheSizeBytes: 16 * MIB, uploadConcurrency: 1024 }), 2);
    assert.equal(directCopyWritesAtOnce({ cacheSizeBytes: 16 * MIB, uploadConcurrency: 1 }), 1);
    for (const cacheMiB of [16, 32, 100, 256, 4096]) {
      const staging = directCopyWritesAtOnce({ cacheSizeBytes: cacheMiB * MIB, uploadConcurrency: 1024 }) * BLOCK_SIZE_BYTES;
      assert.ok(staging <= Math.min(4 * MIB, (cacheMiB * MIB) / 16), `${cacheMiB} MiB cache: ${staging} bytes of staging`);
    }
  });
});
