import type { SnapshotStatus } from '../ebs/client';

/**
 * The one file a mount presents, as the FUSE adapter sees it. Every method
 * either resolves or rejects with a FileOperationError (file-errors.ts); the
 * exact behaviour of each is the contract in docs/SEMANTICS.md.
 */
export interface VolumeFile {
  /** Always VolumeSize × 2^30. */
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  /** Exactly `length` bytes, fewer only where the range crosses the end of the file. */
  read(offsetBytes: number, length: number): Promise<Buffer>;
  /**
   * Copies `data` before it resolves (fuse-native reuses the buffer afterwards).
   * Resolves with the count written: short where the range crosses the end;
   * ENOSPC at or past the end.
   */
  write(offsetBytes: number, data: Buffer): Promise<number>;
  /** 0 only once every block dirty at the call is acknowledged; else EIO. */
  fsync(): Promise<void>;
  /** Makes [lengthBytes, size) read as zeros (or parent data); EFBIG past the size. */
  truncate(lengthBytes: number): Promise<void>;
}

export interface VolumeStats {
  dirtyBlocks: number;
  uploadingBlocks: number;
  cachedBlocks: number;
  /** PutSnapshotBlock calls acknowledged so far. */
  blocksUploaded: number;
  bytesUploaded: number;
  /** Distinct block indexes PUT to this snapshot (the ChangedBlocksCount). */
  distinctBlocksPut: number;
  retries: number;
  /** The cause of the last failed upload, until a flush succeeds. */
  lastUploadError?: string;
  /** Blocks kept in the local copy, and the bytes its file takes (at most the budget). */
  localCopyBlocks: number;
  localCopyFileBytes: number;
  /** Bytes written through the mount, to the local copy, and to the journal, since the mount started. */
  bytesWritten: number;
  localCopyBytesWritten: number;
  /** Writes those bytes took: copies of consecutive slots go together. */
  localCopyWriteCount: number;
  journalBytesWritten: number;
  journalBytes: number;
  /** Reads and partial writes that failed because their block is held nowhere. */
  heldNowhereErrors: number;
  /** Blocks whose content after a crash is one of two: the LINEAR checksum is left out while any remains. */
  unsettledBlocks: number;
}

/** What unmount ends in. */
export interface FinishResult {
  snapshotId: string;
  status: SnapshotStatus;
}
