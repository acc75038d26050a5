// SDK commands the tests send as any client would.
import { PutSnapshotBlockCommand } from '@aws-sdk/client-ebs';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';
import { sha256Base64 } from '../../src/ebs/checksum';

/** PutSnapshotBlock of a whole block with its SHA-256 checksum. */
export function putBlockCommand(snapshotId: string, blockIndex: number, data: Buffer): PutSnapshotBlockCommand {
  return new PutSnapshotBlockCommand({
    SnapshotId: snapshotId,
    BlockIndex: blockIndex,
    BlockData: data,
    DataLength: BLOCK_SIZE_BYTES,
    Checksum: sha256Base64(data),
    ChecksumAlgorithm: 'SHA256',
  });
}
