import assert from 'node:assert/strict';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { linearChecksumBase64, sha256Base64, sha256Digest } from '../../src/ebs/checksum';

// Test vectors of the LINEAR checksum, as AWS's direct API documentation defines it.
describe('checksum', () => {
  const block0 = Buffer.alloc(BLOCK_SIZE_BYTES, 0x01);
  const block5 = Buffer.alloc(BLOCK_SIZE_BYTES, 0x02);

  it('per-block checksums match the reference vectors', () => {
    assert.equal(sha256Base64(block0), 'M6FQvOsTwamSIx5ltPrRaBUhL8Bs20CJltMu6yzvnrs=');
    assert.equal(sha256Base64(block5), 'Ioxb8/mw3beyMReNfgZ6/5ZqGRsfzT7Q4uNx7KM/zfw=');
    assert.equal(sha256Base64(Buffer.alloc(BLOCK_SIZE_BYTES)), 'B4VNL+8pega6gWheZgwzLeNtXRjVRpJ9MNqtbX/aFUE=');
  });

  it('LINEAR over raw digests, in ascending index whatever the insertion order', () => {
    const digests = new Map([
      [5, sha256Digest(block5)],
      [0, sha256Digest(block0)],
    ]);
    assert.equal(linearChecksumBase64(digests), 'fccGN1xyY7l5uqsw58BLULbsU8thbz9pDvzr9oCk5yk=');
  });

  it('LINEAR of no blocks is SHA-256 of empty input', () => {
    assert.equal(linearChecksumBase64(new Map()), '47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=');
  });
});
