// Opaque block tokens and page tokens. Both are base64 of (expiry, MAC): the MAC
// binds a block token to snapshot, index and the block's content digest, and a page
// token to the operation, the snapshots listed and the next index. A token from
// another snapshot, index, operation or server data directory, an edited token or an
// expired one fails to verify. The MAC key lives in the data directory so tokens
// survive a restart.
import { createHmac, timingSafeEqual } from 'node:crypto';

/** AWS FAQ: block tokens are valid for 7 days. */
export const BLOCK_TOKEN_LIFETIME_MS = 7 * 24 * 3600 * 1000;
/** AWS FAQ: NextTokens are valid for 60 minutes. */
export const PAGE_TOKEN_LIFETIME_MS = 60 * 60 * 1000;
const BLOCK_MAC_BYTES = 20;
const PAGE_MAC_BYTES = 16;

export type PageKind = 'ListSnapshotBlocks' | 'ListChangedBlocks';

export class TokenSigner {
  constructor(private readonly key: Buffer) {}

  /** Expiry is rounded to whole seconds, as it travels in the token and in ExpiryTime. */
  blockTokenExpirySeconds(nowMs: number): number {
    return Math.floor((nowMs + BLOCK_TOKEN_LIFETIME_MS) / 1000);
  }

  blockToken(snapshotId: string, blockIndex: number, digest: Buffer, expirySeconds: number): string {
    const expiry = Buffer.alloc(4);
    expiry.writeUInt32BE(expirySeconds);
    const mac = this.mac(['block', snapshotId, String(blockIndex), digest.toString('hex'), String(expirySeconds)]).subarray(
      0,
      BLOCK_MAC_BYTES,
    );
    return Buffer.concat([expiry, mac]).toString('base64');
  }

  verifyBlockToken(token: string, snapshotId: string, blockIndex: number, digest: Buffer, nowMs: number): boolean {
    const raw = decodeCanonicalBase64(token);
    if (!raw || raw.length !== 4 + BLOCK_MAC_BYTES) return false;
    const expirySeconds = raw.readUInt32BE(0);
    if (expirySeconds * 1000 < nowMs) return false;
    const expected = this.mac(['block', snapshotId, String(blockIndex), digest.toString('hex'), String(expirySeconds)]).subarray(
      0,
      BLOCK_MAC_BYTES,
    );
    return timingSafeEqual(raw.subarray(4), expected);
  }

  pageToken(kind: PageKind, snapshotIds: readonly string[], nextIndex: number, nowMs: number): string {
    const body = Buffer.alloc(8);
    body.writeUInt32BE(Math.floor((nowMs + PAGE_TOKEN_LIFETIME_MS) / 1000), 0);
    body.writeUInt32BE(nextIndex, 4);
    const mac = this.mac(['page', kind, ...snapshotIds, body.toString('hex')]).subarray(0, PAGE_MAC_BYTES);
    return Buffer.concat([body, mac]).toString('base64');
  }

  /** The next block index the token stands for, or undefined when it is not valid here. */
  verifyPageToken(token: string, kind: PageKind, snapshotIds: readonly string[], nowMs: number): number | undefined {
    const raw = decodeCanonicalBase64(token);
    if (!raw || raw.length !== 8 + PAGE_MAC_BYTES) return undefined;
    const body = raw.subarray(0, 8);
    const expected = this.mac(['page', kind, ...snapshotIds, body.toString('hex')]).subarray(0, PAGE_MAC_BYTES);
    if (!timingSafeEqual(raw.subarray(8), expected)) return undefined;
    if (body.readUInt32BE(0) * 1000 < nowMs) return undefined;
    return body.readUInt32BE(4);
  }

  private mac(parts: readonly string[]): Buffer {
    // NUL cannot occur in IDs or numbers, so the fields cannot run into each other.
    return createHmac('sha256', this.key).update(parts.join('\0')).digest();
  }
}

/** Decodes only base64 that re-encodes to the same text, so that no two strings name one token. */
function decodeCanonicalBase64(text: string): Buffer | undefined {
  const raw = Buffer.from(text, 'base64');
  return raw.toString('base64') === text ? raw : undefined;
}
