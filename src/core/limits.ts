import { BLOCK_SIZE_BYTES } from '../ebs/client';
import type { DiskBudget } from './local-copy';

/** Every bound of the core in one place, so that each limit is chosen, not implied. */
export interface CoreLimits {
  /** Memory for block buffers: cached blocks plus copies held by in-flight uploads. */
  cacheSizeBytes: number;
  /** PutSnapshotBlock calls in flight at once. */
  uploadConcurrency: number;
  /** How long a writer may wait for cache room before its write fails with EIO. */
  writerWaitTimeoutMs: number;
  /** Dirty blocks beyond this share of the cache are uploaded in the background. */
  dirtyHighWaterRatio: number;
  /** Written ranges tracked per block before the block's base content is merged in. */
  writtenRangesPerBlockMax: number;
  /**
   * Bytes of uploaded blocks kept on local disk (local-copy.ts), or `auto`:
   * whatever the state directory's file system has free beyond a reserve of a
   * tenth of it (at least 64 MiB). 0 keeps no block copy at all.
   */
  diskCacheSizeBytes: DiskBudget;
}

/**
 * Copy writes past the page cache through a staging buffer at once, at most
 * (local-copy.ts): 4 MiB of staging memory beside --cache-size, taken at the
 * first copy of a buffer that is not page-aligned (the block cache's are, where
 * the runtime has WebAssembly). More wait for a buffer. While a waiting copy
 * held a PUT slot, 16 measured slower than 32; since the copy runs outside the
 * PUT slots (flusher.ts), a dd through the mount measured alike with 8 and 32,
 * and 8 keeps 12 MiB less (docs/BENCHMARKS.md).
 */
const DIRECT_COPY_WRITES_AT_ONCE_MAX = 8;

/**
 * The local copy's staging buffers: one copy is written per upload at most, so
 * more buffers than uploads would stay unused, and their memory stays within a
 * sixteenth of the cache's.
 */
export function directCopyWritesAtOnce(limits: Pick<CoreLimits, 'uploadConcurrency' | 'cacheSizeBytes'>): number {
  const perCache = Math.floor(limits.cacheSizeBytes / BLOCK_SIZE_BYTES / 16);
  return Math.max(1, Math.min(DIRECT_COPY_WRITES_AT_ONCE_MAX, limits.uploadConcurrency, perCache));
}

/** PUTs (or GETs) in flight at once, at most: --upload-concurrency, --download-concurrency, the library's concurrency. */
export const TRANSFER_CONCURRENCY_MAX = 1024;

/** The final flush and CompleteSnapshot of a mount or `complete`, together; retries are bounded well inside it. */
export const FINISH_TIMEOUT_MS = 30 * 60_000;

export const CACHE_SIZE_MIN_BYTES = 16 * 1024 * 1024;

export const DEFAULT_LIMITS: CoreLimits = {
  cacheSizeBytes: 256 * 1024 * 1024,
  uploadConcurrency: 64,
  // Well under the FUSE adapter's write timeout (src/fuse), so a stalled writer
  // gets EIO from us rather than ETIMEDOUT from fuse-native.
  writerWaitTimeoutMs: 30_000,
  // A quarter of the cache stays for clean blocks and uploads in flight, so a
  // writer rarely waits; at one half, 64 KiB random writes over data that fit in
  // the cache cost 1.2 PUTs per block instead of 1.0 (docs/BENCHMARKS.md).
  dirtyHighWaterRatio: 0.75,
  writtenRangesPerBlockMax: 64,
  diskCacheSizeBytes: 'auto',
};
