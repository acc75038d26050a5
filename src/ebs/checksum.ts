import { createHash, createHmac, type Hash, type Hmac } from 'node:crypto';
import { join } from 'node:path';

export function sha256Digest(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

interface DigestBinding {
  sha256(data: Buffer): Promise<Buffer>;
}

const DIGEST_BINDING_PATH = join(__dirname, '..', '..', 'native', 'build', 'sha256-binding.node');
let digestBinding: DigestBinding | null | undefined;

/**
 * SHA-256 on the libuv pool (native/digest), where the addon was built, else on
 * the calling thread. `data` must not change until the promise settles.
 */
export async function sha256DigestOffThread(data: Buffer): Promise<Buffer> {
  if (digestBinding === undefined) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports -- a native addon, loaded on first use
      digestBinding = require(DIGEST_BINDING_PATH) as DigestBinding;
    } catch {
      digestBinding = null;
    }
  }
  return digestBinding ? digestBinding.sha256(data) : sha256Digest(data);
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

type SourceData = string | ArrayBuffer | ArrayBufferView;

function toBuffer(data: SourceData): Buffer {
  if (typeof data === 'string') return Buffer.from(data, 'utf8');
  if (ArrayBuffer.isView(data)) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  return Buffer.from(data);
}

/** The hash @smithy/signature-v4 asks for, on node:crypto: the client's own PutSnapshotBlock and local-ebs's admin client sign with it. */
export class Sha256 {
  private readonly hash: Hash | Hmac;

  constructor(secret?: SourceData) {
    this.hash = secret === undefined ? createHash('sha256') : createHmac('sha256', toBuffer(secret));
  }

  update(data: SourceData): void {
    this.hash.update(toBuffer(data));
  }

  async digest(): Promise<Uint8Array> {
    return this.hash.digest();
  }
}
