// ebs-fuse as a library, for programs such as CDK custom resources, Pulumi
// programs and image builders: upload (a file, a stream or a Buffer), download
// and mount. Each takes an SDK EBSClient or an EBSClientConfig, reports
// progress through a callback, stops on an AbortSignal, and resolves with the
// snapshot ID and status. The core, the retry policy and the guarantees are
// the CLI's (docs/SEMANTICS.md); nothing here installs signal handlers, writes
// to the terminal or exits the process.
import { Readable } from 'node:stream';
import type { EBSClient, EBSClientConfig } from '@aws-sdk/client-ebs';
import { CACHE_SIZE_MIN_BYTES, DEFAULT_LIMITS, FINISH_TIMEOUT_MS, TRANSFER_CONCURRENCY_MAX } from './core/limits';
import { defaultStateDir, SnapshotSession } from './core/session';
import { downloadSnapshot } from './core/download';
import { newTransferStats, type TransferStats } from './core/transfer';
import { uploadFile, uploadStream, type UploadResult } from './core/upload';
import type { VolumeStats } from './core/volume-file';
import { AwsSnapshotClient } from './ebs/aws-client';
import type { SnapshotStatus, StartSnapshotParams } from './ebs/client';
import { RetryingSnapshotClient } from './ebs/retry';
import { DEFAULT_FILE_NAME, FILE_RELEASE_GRACE_MS, fileBusyMessage, FuseMount } from './fuse/fuse-mount';
import { GIB_BYTES } from './units';
import { describeError } from './errors';

export type { SnapshotStatus, SnapshotTag } from './ebs/client';
export { UserError } from './errors';

const DEFAULT_PROGRESS_INTERVAL_MS = 1000;

/** How to reach EBS and how to report; shared by every function. */
export interface ClientOptions {
  /** An SDK client to send through, used as it is configured; it is left open. */
  client?: EBSClient;
  /** Else a client made from this configuration (region, endpoint, credentials…); else the SDK's defaults. */
  clientConfig?: EBSClientConfig;
  /** Requests in flight at once (PUTs, or GETs for download): 1 to 1024, default 64. */
  concurrency?: number;
  /** Aborting stops the work: an upload or mount leaves its snapshot pending, a download leaves no file. */
  signal?: AbortSignal;
  /** Called every progressIntervalMs while the work runs, and once at the end. */
  onProgress?: (progress: Progress) => void;
  progressIntervalMs?: number;
  /** Lines a person would want (a missing extents helper, a retry storm); default: none. */
  log?: (line: string) => void;
}

export interface Progress {
  phase: 'uploading' | 'downloading' | 'mounted' | 'flushing';
  /** Upload and download: everything of the volume below this offset is done. */
  doneBytes: number;
  volumeBytes: number;
  /** Blocks sent (upload, mount) or fetched (download), and their bytes. */
  blocksTransferred: number;
  bytesTransferred: number;
  /** Upload: blocks looked at but not sent; download: zero blocks not written. */
  blocksSkipped: number;
  /** Mount: blocks written and not yet acknowledged, and blocks being uploaded. */
  dirtyBlocks: number;
  uploadingBlocks: number;
  retries: number;
  /** Mount: the cause of the last failed upload, until a flush succeeds. */
  lastError?: string;
}

/**
 * What a new snapshot is started with, as the CLI's snapshot options: parentSnapshotId,
 * description, tags, timeoutMinutes (idle minutes before EBS fails it), encrypted,
 * kmsKeyArn, clientToken.
 */
export type SnapshotOptions = Omit<StartSnapshotParams, 'volumeSizeGiB'>;

export interface UploadOptions extends ClientOptions {
  /** A file or block device path, a Readable read once front to back, or the image's bytes. */
  source: string | Readable | Uint8Array;
  /** A file's size rounded up to whole GiB by default (only larger is accepted); required for a stream or bytes. */
  volumeSizeGiB?: number;
  snapshot?: SnapshotOptions;
}

export interface UploadOutcome {
  snapshotId: string;
  /** What CompleteSnapshot answered: `completed`, or `pending` while AWS finishes. */
  status: SnapshotStatus;
  volumeSizeGiB: number;
  blocksPut: number;
  zeroBlocksSkipped: number;
  blocksEqualToParent: number;
}

export interface DownloadOptions extends ClientOptions {
  snapshotId: string;
  /** Written whole under a temporary name first, then renamed into place. */
  filePath: string;
  /** Replace an existing file; without it an existing file is an error. */
  overwrite?: boolean;
}

export interface DownloadOutcome {
  snapshotId: string;
  status: 'completed';
  filePath: string;
  volumeSizeGiB: number;
  blocksFetched: number;
}

export interface MountOptions extends ClientOptions {
  /** An existing, empty directory. */
  mountpoint: string;
  volumeSizeGiB: number;
  snapshot?: SnapshotOptions;
  /** Default snapshot.img. */
  fileName?: string;
  /** Default $XDG_STATE_HOME/ebs-fuse, else ~/.local/state/ebs-fuse. */
  stateDir?: string;
  /** Memory for the block cache; default 256 MiB. */
  cacheSizeBytes?: number;
  /** Local disk for copies of uploaded blocks, or 'auto' (the default, as the CLI's). */
  diskCacheSizeBytes?: number | 'auto';
}

export interface Mounted {
  snapshotId: string;
  mountpoint: string;
  /** The one file: write the image here. */
  filePath: string;
  progress(): Progress;
  /**
   * Uploads what is left and completes the snapshot (or leaves it pending with
   * complete: false); rejects while the file is still open, and the mount goes on.
   */
  unmount(options?: { complete?: boolean }): Promise<{ snapshotId: string; status: SnapshotStatus }>;
}

function checkedConcurrency(options: ClientOptions): number {
  const concurrency = options.concurrency ?? DEFAULT_LIMITS.uploadConcurrency;
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > TRANSFER_CONCURRENCY_MAX) {
    throw new RangeError(`concurrency must be an integer from 1 to ${TRANSFER_CONCURRENCY_MAX}, not ${concurrency}`);
  }
  return concurrency;
}

function openClient(options: ClientOptions, concurrency: number): RetryingSnapshotClient {
  return new RetryingSnapshotClient(
    new AwsSnapshotClient({ sdkClient: options.client, sdkConfig: options.clientConfig, maxSockets: concurrency, log: options.log }),
  );
}

/** Calls onProgress every interval until stopped, and once more when stopped. */
function reportEvery(options: ClientOptions, sample: () => Progress): { stop(): void } {
  const onProgress = options.onProgress;
  if (!onProgress) return { stop: () => undefined };
  const timer = setInterval(() => onProgress(sample()), options.progressIntervalMs ?? DEFAULT_PROGRESS_INTERVAL_MS);
  timer.unref();
  return {
    stop: () => {
      clearInterval(timer);
      onProgress(sample());
    },
  };
}

function transferProgress(phase: 'uploading' | 'downloading', stats: TransferStats, client: RetryingSnapshotClient): Progress {
  return { phase, ...stats, dirtyBlocks: 0, uploadingBlocks: 0, retries: client.retryCount };
}

function volumeProgress(phase: 'mounted' | 'flushing', stats: VolumeStats, volumeBytes: number): Progress {
  return {
    phase,
    doneBytes: 0,
    volumeBytes,
    blocksTransferred: stats.blocksUploaded,
    bytesTransferred: stats.bytesUploaded,
    blocksSkipped: 0,
    dirtyBlocks: stats.dirtyBlocks,
    uploadingBlocks: stats.uploadingBlocks,
    retries: stats.retries,
    ...(stats.lastUploadError ? { lastError: stats.lastUploadError } : {}),
  };
}

/** Runs an upload or download with its client, stats and progress reports, closed however it ends. */
async function transfer<T>(
  options: ClientOptions,
  phase: 'uploading' | 'downloading',
  work: (client: RetryingSnapshotClient, stats: TransferStats, concurrency: number) => Promise<T>,
): Promise<T> {
  options.signal?.throwIfAborted();
  const concurrency = checkedConcurrency(options);
  const client = openClient(options, concurrency);
  const stats = newTransferStats();
  const reporter = reportEvery(options, () => transferProgress(phase, stats, client));
  try {
    return await work(client, stats, concurrency);
  } finally {
    reporter.stop();
    client.close();
  }
}

/** Uploads a file, a stream or bytes to a new snapshot and completes it. */
export function upload(options: UploadOptions): Promise<UploadOutcome> {
  return transfer(options, 'uploading', async (client, stats, concurrency) => {
    const common = { snapshot: options.snapshot ?? {}, concurrency, stats, signal: options.signal, log: options.log };
    let result: UploadResult;
    if (typeof options.source === 'string') {
      result = await uploadFile(client, { ...common, filePath: options.source, volumeSizeGiB: options.volumeSizeGiB });
    } else {
      if (options.volumeSizeGiB === undefined) throw new RangeError('volumeSizeGiB is required to upload a stream or bytes');
      const source = options.source;
      const isStream = source instanceof Readable;
      // Bytes are wrapped, not copied: an image held in memory is not doubled.
      const stream = isStream ? source : Readable.from([Buffer.from(source.buffer, source.byteOffset, source.byteLength)]);
      result = await uploadStream(client, {
        ...common,
        stream,
        name: isStream ? 'the stream' : 'the bytes',
        volumeSizeGiB: options.volumeSizeGiB,
      });
    }
    const { snapshotId, status, volumeSizeGiB, blocksPut, zeroBlocksSkipped, blocksEqualToParent } = result;
    return { snapshotId, status, volumeSizeGiB, blocksPut, zeroBlocksSkipped, blocksEqualToParent };
  });
}

/** Writes a completed snapshot to a local file, every block checked against its checksum. */
export function download(options: DownloadOptions): Promise<DownloadOutcome> {
  return transfer(options, 'downloading', async (client, stats, concurrency) => {
    const result = await downloadSnapshot(client, {
      snapshotId: options.snapshotId,
      filePath: options.filePath,
      force: options.overwrite ?? false,
      concurrency,
      stats,
      signal: options.signal,
    });
    return {
      snapshotId: result.snapshotId,
      status: 'completed',
      filePath: result.filePath,
      volumeSizeGiB: result.volumeSizeGiB,
      blocksFetched: result.blocksFetched,
    };
  });
}

/**
 * Starts a snapshot and mounts it as MOUNTPOINT/snapshot.img; resolves once the
 * file can be written. Aborting the signal unmounts and leaves the snapshot pending.
 */
export async function mount(options: MountOptions): Promise<Mounted> {
  options.signal?.throwIfAborted();
  const concurrency = checkedConcurrency(options);
  if (options.cacheSizeBytes !== undefined && !(options.cacheSizeBytes >= CACHE_SIZE_MIN_BYTES)) {
    throw new RangeError(`cacheSizeBytes must be at least ${CACHE_SIZE_MIN_BYTES}, not ${options.cacheSizeBytes}`);
  }
  const client = openClient(options, concurrency);
  const log = options.log ?? (() => undefined);
  let session: SnapshotSession | undefined;
  let fuseMount: FuseMount;
  try {
    session = await SnapshotSession.start(
      client,
      { ...options.snapshot, volumeSizeGiB: options.volumeSizeGiB },
      {
        stateDir: options.stateDir ?? defaultStateDir(),
        cacheSizeBytes: options.cacheSizeBytes,
        diskCacheSizeBytes: options.diskCacheSizeBytes,
        uploadConcurrency: concurrency,
        retryCount: () => client.retryCount,
        log,
      },
    );
    fuseMount = await FuseMount.mount({
      mountpoint: options.mountpoint,
      fileName: options.fileName ?? DEFAULT_FILE_NAME,
      file: session.file,
      log,
    });
  } catch (error) {
    await session?.close().catch(() => undefined);
    client.close();
    throw error;
  }
  const opened = session;
  const volumeBytes = options.volumeSizeGiB * GIB_BYTES;
  let phase: 'mounted' | 'flushing' = 'mounted';
  const progress = (): Progress => volumeProgress(phase, opened.stats(), volumeBytes);
  const reporter = reportEvery(options, progress);
  let ending: Promise<{ snapshotId: string; status: SnapshotStatus }> | undefined;
  const unmount = async (unmountOptions: { complete?: boolean } = {}): Promise<{ snapshotId: string; status: SnapshotStatus }> => {
    if (ending) return ending;
    if (!(await fuseMount.waitForHandlesClosed(FILE_RELEASE_GRACE_MS))) {
      throw new Error(
        `${fileBusyMessage(fuseMount.mountpoint, fuseMount.filePath, fuseMount.openHandleCount())}; close it, then unmount again`,
      );
    }
    ending ??= (async () => {
      phase = 'flushing';
      try {
        await fuseMount.unmount();
        return await opened.finish({ complete: unmountOptions.complete ?? true, timeoutMs: FINISH_TIMEOUT_MS });
      } finally {
        reporter.stop();
        client.close();
      }
    })();
    return ending;
  };
  const signal = options.signal;
  if (signal) {
    // Aborted: unmount, leaving the snapshot pending; while the file is open, try
    // again every grace period until it is closed or unmount() was called.
    let busyLogged = false;
    const onAbort = (): void => {
      unmount({ complete: false }).catch((error: unknown) => {
        if (ending) return;
        if (!busyLogged) log(`unmount after abort: ${describeError(error)}; trying again until the file is closed`);
        busyLogged = true;
        setTimeout(onAbort, FILE_RELEASE_GRACE_MS).unref();
      });
    };
    // An abort while the mount was starting: the mount is not handed out.
    if (signal.aborted) {
      await unmount({ complete: false }).catch(() => undefined);
      throw signal.reason;
    }
    signal.addEventListener('abort', onAbort, { once: true });
    const stopListening = (): void => signal.removeEventListener('abort', onAbort);
    const unmountAndStopListening = async (unmountOptions?: {
      complete?: boolean;
    }): Promise<{ snapshotId: string; status: SnapshotStatus }> => {
      const result = await unmount(unmountOptions);
      stopListening();
      return result;
    };
    return {
      snapshotId: opened.snapshotId,
      mountpoint: fuseMount.mountpoint,
      filePath: fuseMount.filePath,
      progress,
      unmount: unmountAndStopListening,
    };
  }
  return { snapshotId: opened.snapshotId, mountpoint: fuseMount.mountpoint, filePath: fuseMount.filePath, progress, unmount };
}
