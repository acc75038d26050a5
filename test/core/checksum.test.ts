import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { linearChecksumBase64, sha256Base64, sha256Digest, sha256DigestOffThread } from '../../src/ebs/checksum';

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

  it('the off-thread SHA-256 (native/digest, built by setup) matches node:crypto, many at once', async () => {
    // setup.sh builds it strictly, so here the pool path is the one under test, not the fallback.
    assert.ok(
      existsSync(path.join(__dirname, '..', '..', 'native', 'build', 'sha256-binding.node')),
      'native/build/sha256-binding.node is not built',
    );
    assert.equal((await sha256DigestOffThread(block0)).toString('base64'), 'M6FQvOsTwamSIx5ltPrRaBUhL8Bs20CJltMu6yzvnrs=');
    const inputs = [Buffer.alloc(0), randomBytes(1), randomBytes(4097), ...Array.from({ length: 64 }, () => randomBytes(BLOCK_SIZE_BYTES))];
    const digests = await Promise.all(inputs.map((input) => sha256DigestOffThread(input)));
    digests.forEach((digest, i) => assert.ok(digest.equals(sha256Digest(inputs[i])), `input ${i}`));
  });

  it('LINEAR of no blocks is SHA-256 of empty input', () => {
    assert.equal(linearChecksumBase64(new Map()), '47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=');
  });
});
