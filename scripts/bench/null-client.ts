// The snapshot client of baseline 2: everything a mount does except the network.
// Each PUT is acknowledged after hashing its body and checking the checksum sent
// with it, as the service does; like local-ebs, it hashes on the libuv pool
// (native/digest where built), not on the mount's event loop. With
// verifyChecksums=false it acknowledges without hashing, which is what the
// product's client side costs. Nothing is stored or sent.
// CompleteSnapshot checks ChangedBlocksCount against the distinct blocks PUT.
import { randomBytes } from 'node:crypto';
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
  readonly blocksPut = new Set<number>();
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
    this.blocksPut.add(params.blockIndex);
  }

  async completeSnapshot(params: CompleteSnapshotParams): Promise<SnapshotStatus> {
    return params.changedBlocksCount === this.blocksPut.size ? 'completed' : 'error';
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
