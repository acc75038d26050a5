// The snapshot client of baseline 2: everything a mount does except the network.
// Each PUT is acknowledged after hashing its body and checking the checksum sent
// with it, as the service does; like local-ebs, it hashes on the libuv pool
// (native/digest where built), not on the mount's event loop. With
// verifyChecksums=false it acknowledges without hashing, which is what the
// product's client side costs. Either way it keeps the checksum each block was
// last sent with, so that the bench can check every one after the run against
// the SHA-256 of the data written (checksumListDigest), outside the time
// measured: the service's check runs on its own machines, not on the mount's.
// Nothing else is stored or sent.
// CompleteSnapshot checks ChangedBlocksCount against the distinct blocks PUT.
import { createHash, randomBytes } from 'node:crypto';
import { sha256DigestOffThread } from '../../src/ebs/checksum';
import {
  BLOCK_SIZE_BYTES,
  SnapshotApiError,
  type BlockPage,
  type ChangedBlockPage,
  type CompleteSnapshotParams,
  type PutBlockParams,
  type SnapshotClient,
  type SnapshotStatus,
  type StartedSnapshot,
  type StartSnapshotParams,
} from '../../src/ebs/client';

export class NullSnapshotClient implements SnapshotClient {
  putCount = 0;
  /** Base64 SHA-256 by block index, as last PUT: one entry per distinct block. */
  readonly checksumByBlock = new Map<number, string>();
  private snapshotId = '';

  /** verifyChecksums=false acknowledges without hashing: the AWS client no longer hashes bodies either (x-amz-content-sha256). */
  constructor(private readonly verifyChecksums = true) {}

  async startSnapshot(params: StartSnapshotParams): Promise<StartedSnapshot> {
    this.snapshotId = `snap-${randomBytes(9).toString('hex').slice(0, 17)}`;
    return { snapshotId: this.snapshotId, volumeSizeGiB: params.volumeSizeGiB, blockSizeBytes: BLOCK_SIZE_BYTES, status: 'pending' };
  }

  async putSnapshotBlock(params: PutBlockParams): Promise<void> {
    if (params.data.length !== BLOCK_SIZE_BYTES) {
      throw new SnapshotApiError(`block ${params.blockIndex} has ${params.data.length} bytes`, 'ValidationException', 'permanent', 400);
    }
    if (this.verifyChecksums && (await sha256DigestOffThread(params.data)).toString('base64') !== params.checksumBase64) {
      throw new SnapshotApiError(`block ${params.blockIndex} does not match its checksum`, 'ValidationException', 'permanent', 400);
    }
    this.putCount += 1;
    this.checksumByBlock.set(params.blockIndex, params.checksumBase64);
  }

  async completeSnapshot(params: CompleteSnapshotParams): Promise<SnapshotStatus> {
    return params.changedBlocksCount === this.checksumByBlock.size ? 'completed' : 'error';
  }

  listSnapshotBlocks(): Promise<BlockPage> {
    return Promise.reject(new Error('the null client holds no blocks to list'));
  }

  listChangedBlocks(): Promise<ChangedBlockPage> {
    return Promise.reject(new Error('the null client holds no blocks to list'));
  }

  getSnapshotBlock(): Promise<Buffer> {
    return Promise.reject(new Error('the null client holds no blocks to read'));
  }

  close(): void {}
}

/**
 * SHA-256 (hex) of one line `INDEX CHECKSUM` per block, in block order: two runs
 * sent the same checksums exactly when it is equal. Unlike the LINEAR aggregate
 * (linearChecksumBase64), each line names its block, so a checksum sent under
 * another block's index changes it too.
 */
export function checksumListDigest(checksumByBlock: ReadonlyMap<number, string>): string {
  const hash = createHash('sha256');
  for (const index of [...checksumByBlock.keys()].sort((a, b) => a - b)) hash.update(`${index} ${checksumByBlock.get(index)}\n`);
  return hash.digest('hex');
}
