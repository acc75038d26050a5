import { createHash } from 'node:crypto';

export function sha256Digest(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

/** The x-amz-Checksum form: standard base64, with padding, of SHA-256. */
export function sha256Base64(data: Uint8Array): string {
  return sha256Digest(data).toString('base64');
}

/**
 * The LINEAR aggregate of CompleteSnapshot, by the raw-digest rule that coldsnap
 * uses against AWS: SHA-256 over the raw 32-byte digests of every block written
 * to this snapshot, in ascending block index, then base64.
 * `digestsByIndex` maps a block index to its latest raw digest.
 */
export function linearChecksumBase64(digestsByIndex: ReadonlyMap<number, Buffer>): string {
  const hash = createHash('sha256');
  const indexes = [...digestsByIndex.keys()].sort((a, b) => a - b);
  for (const index of indexes) hash.update(digestsByIndex.get(index)!);
  return hash.digest('base64');
}
