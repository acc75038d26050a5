// Baseline 2's mount: the product's SnapshotSession (cache, flusher, read-back
// store, journal) behind the product's FUSE adapter, with NullSnapshotClient in
// place of the network. Bench-only, so the product CLI needs no hidden flags.
//
//   tsx scripts/bench/null-mount.ts MOUNTPOINT SIZE_GIB STATE_DIR [CACHE_SIZE] [UPLOAD_CONCURRENCY] [DISK_CACHE_SIZE]
//   NULL_CLIENT_VERIFY=0: the client acknowledges without hashing the body
//
// stdout, like `ebs-fuse mount`: `SNAPSHOT_ID FILE_PATH` once writable; after
// SIGINT/SIGTERM the final flush and `SNAPSHOT_ID STATUS`, then one JSON line
// with what the null client saw (PUTs, blocks, the digest of their checksums).
import { DEFAULT_CACHE_SIZE } from '../../src/commands/mount';
import { DEFAULT_LIMITS } from '../../src/core/limits';
import { parseSizeBytes } from '../../src/commands/options';
import { SnapshotSession } from '../../src/core/session';
import { DEFAULT_FILE_NAME, FuseMount } from '../../src/fuse/fuse-mount';
import { capYoungGeneration } from '../../src/young-generation';
import { checksumListDigest, NullSnapshotClient } from './null-client';

const RELEASE_GRACE_MS = 5000;
const FINISH_TIMEOUT_MS = 10 * 60_000;

async function main(): Promise<number> {
  const [mountpoint, sizeText, stateDir, cacheText, concurrencyText, diskCacheText] = process.argv.slice(2);
  if (!mountpoint || !sizeText || !stateDir)
    throw new Error('usage: null-mount.ts MOUNTPOINT SIZE_GIB STATE_DIR [CACHE_SIZE] [UPLOAD_CONCURRENCY] [DISK_CACHE_SIZE]');
  const log = (line: string): void => void process.stderr.write(`null-mount: ${line}\n`);
  capYoungGeneration(); // as ebs-fuse mount does
  // NULL_CLIENT_VERIFY=0: acknowledge without hashing (the bench's variant 2n).
  const client = new NullSnapshotClient(process.env.NULL_CLIENT_VERIFY !== '0');
  const session = await SnapshotSession.start(
    client,
    { volumeSizeGiB: Number(sizeText) },
    {
      stateDir,
      cacheSizeBytes: parseSizeBytes(cacheText ?? DEFAULT_CACHE_SIZE, 'CACHE_SIZE'),
      uploadConcurrency: Number(concurrencyText ?? DEFAULT_LIMITS.uploadConcurrency),
      diskCacheSizeBytes:
        diskCacheText === undefined || diskCacheText === 'auto' ? 'auto' : parseSizeBytes(diskCacheText, 'DISK_CACHE_SIZE'),
      log,
    },
  );
  const fuseMount = await FuseMount.mount({ mountpoint, fileName: DEFAULT_FILE_NAME, file: session.file, log });
  process.stdout.write(`${session.snapshotId} ${fuseMount.filePath}\n`);

  await new Promise<void>((resolve) => {
    const onSignal = (): void => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      resolve();
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
  if (!(await fuseMount.waitForHandlesClosed(RELEASE_GRACE_MS))) log('the file is still open; unmounting anyway');
  await fuseMount.unmount();
  const result = await session.finish({ complete: true, timeoutMs: FINISH_TIMEOUT_MS });
  process.stdout.write(`${result.snapshotId} ${result.status}\n`);
  const report = {
    puts: client.putCount,
    distinctBlocks: client.checksumByBlock.size,
    checksumListDigest: checksumListDigest(client.checksumByBlock),
    fuse: fuseMount.stats(),
  };
  process.stdout.write(`${JSON.stringify(report)}\n`);
  return result.status === 'completed' ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`null-mount: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exit(1);
  },
);
