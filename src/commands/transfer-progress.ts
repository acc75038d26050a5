// What a person sees on standard error during `upload` and `download`: a bar on
// a terminal, one status line every few seconds elsewhere (as for the mount,
// progress.ts). The bar measures how far through the volume the transfer is:
// both sides work in ascending block order, and the volume size is known at
// once, where the number of blocks to send is only known at the end.
import { SingleBar } from 'cli-progress';
import type { TransferStats } from '../core/transfer';
import { RateMeter, redrawnBar, STATUS_LINE_INTERVAL_MS, type ProgressStream, type Reporter } from './progress';
import { MIB_BYTES, formatMB } from '../units';

const RATE_SAMPLE_INTERVAL_MS = 1000;

export interface TransferProgressSource {
  stats: TransferStats;
  retries(): number;
}

/** `uploading` or `downloading`, and the verb for the blocks moved. */
export interface TransferLabels {
  phase: string;
  moved: string;
}

function percent(stats: TransferStats): string {
  return stats.volumeBytes > 0 ? ((100 * stats.doneBytes) / stats.volumeBytes).toFixed(1) : '0.0';
}

export function formatTransferLine(labels: TransferLabels, stats: TransferStats, rateMBps: number, retries: number): string {
  // The volume size is known once the snapshot is started or listed.
  if (stats.volumeBytes === 0) return `ebs-fuse: ${labels.phase}: waiting for the service, ${retries} retries`;
  return (
    `ebs-fuse: ${labels.phase}: ${percent(stats)}% of ${(stats.volumeBytes / 2 ** 30).toFixed(0)} GiB, ` +
    `${stats.blocksTransferred} blocks ${labels.moved} (${formatMB(stats.bytesTransferred)}), ` +
    `${stats.blocksSkipped} skipped, ${rateMBps.toFixed(1)} MB/s, ${retries} retries`
  );
}

export function startTransferProgress(
  labels: TransferLabels,
  source: TransferProgressSource,
  stream: ProgressStream & NodeJS.WritableStream,
  intervalMs = STATUS_LINE_INTERVAL_MS,
): Reporter {
  const meter = new RateMeter(0);
  let rateMBps = 0;
  if (!stream.isTTY) {
    const timer = setInterval(() => {
      rateMBps = meter.sampleMBps(source.stats.bytesTransferred, Date.now());
      stream.write(`${formatTransferLine(labels, source.stats, rateMBps, source.retries())}\n`);
    }, intervalMs);
    timer.unref();
    return { stop: () => clearInterval(timer) };
  }
  const bar = new SingleBar({
    stream,
    format: `${labels.phase} |{bar}| {percentage}% of {volume} | {blocks} blocks ${labels.moved}, {skipped} skipped | {rate} MB/s | {retries} retries`,
    hideCursor: true,
    clearOnComplete: false,
    barsize: 30,
  });
  let started = false;
  let lastSampleMs = 0;
  const redraw = (): void => {
    const stats = source.stats;
    // The volume size is known only once the snapshot is listed or started.
    if (stats.volumeBytes === 0) return;
    const now = Date.now();
    if (now - lastSampleMs >= RATE_SAMPLE_INTERVAL_MS) {
      rateMBps = meter.sampleMBps(stats.bytesTransferred, now);
      lastSampleMs = now;
    }
    const payload = {
      volume: `${(stats.volumeBytes / 2 ** 30).toFixed(0)} GiB`,
      blocks: stats.blocksTransferred,
      skipped: stats.blocksSkipped,
      rate: rateMBps.toFixed(1),
      retries: source.retries(),
    };
    const total = Math.max(1, Math.round(stats.volumeBytes / MIB_BYTES));
    const value = Math.min(total, Math.floor(stats.doneBytes / MIB_BYTES));
    if (!started) {
      bar.start(total, value, payload);
      started = true;
    } else {
      bar.update(value, payload);
    }
  };
  return redrawnBar(redraw, () => {
    if (started) bar.stop();
  });
}
