// What a person sees on standard error while a mount runs: on a terminal one
// live status line redrawn in place while mounted, and a progress bar while the
// final flush runs; elsewhere (logs, CI, systemd) one status line every few
// seconds, while mounted and while flushing.
import { SingleBar } from 'cli-progress';
import type { VolumeStats } from '../core/volume-file';
import { BYTES_PER_MB, formatMB } from '../units';

export interface StatsSource {
  stats(): VolumeStats;
}

export interface ProgressStream {
  write(text: string): boolean;
  isTTY?: boolean;
  /** A terminal's width; the live line is cut to fit, so that it never wraps. */
  columns?: number;
}

export const STATUS_LINE_INTERVAL_MS = 5000;
export const IDLE_STATUS_LINE_INTERVAL_MS = 60_000;
const BAR_REDRAW_INTERVAL_MS = 200;
const LIVE_REDRAW_INTERVAL_MS = 500;
/** Carriage return and erase-line: the live line is redrawn where it is. */
const ERASE_LINE = '\r\x1b[2K';

/** MB/s of a growing byte count between two samples; the mount's, upload's and download's. */
export class RateMeter {
  private lastAtMs = Date.now();

  constructor(private lastBytes: number) {}

  sampleMBps(bytes: number, nowMs: number): number {
    const elapsedMs = nowMs - this.lastAtMs;
    const rate = elapsedMs > 0 ? (bytes - this.lastBytes) / BYTES_PER_MB / (elapsedMs / 1000) : 0;
    this.lastBytes = bytes;
    this.lastAtMs = nowMs;
    return rate;
  }
}

/** One line: dirty blocks, uploaded blocks, MB/s, retries, the local copy, blocks held nowhere, and the last upload error if any. */
export function formatStatusLine(phase: string, stats: VolumeStats, rateMBps: number): string {
  const parts = [
    `${stats.dirtyBlocks} dirty blocks`,
    `${stats.uploadingBlocks} uploading`,
    `${stats.blocksUploaded} uploaded (${formatMB(stats.bytesUploaded)})`,
    `${rateMBps.toFixed(1)} MB/s`,
    `${stats.retries} retries`,
    `local copy ${formatMB(stats.localCopyFileBytes)}`,
  ];
  if (stats.heldNowhereErrors > 0) parts.push(`${stats.heldNowhereErrors} reads or partial writes of blocks held nowhere`);
  if (stats.lastUploadError) parts.push(`last upload error: ${stats.lastUploadError}`);
  return `ebs-fuse: ${phase}: ${parts.join(', ')}`;
}

export interface Reporter {
  stop(): void;
}

/** Redraws a bar every BAR_REDRAW_INTERVAL_MS; stop() draws it a last time, then ends it. */
export function redrawnBar(redraw: () => void, endBar: () => void): Reporter {
  const timer = setInterval(redraw, BAR_REDRAW_INTERVAL_MS);
  timer.unref();
  return {
    stop: () => {
      clearInterval(timer);
      redraw();
      endBar();
    },
  };
}

/** The live line: uploaded bytes, MB/s, dirty, in flight, retries, and the last error. */
export function formatLiveLine(phase: string, stats: VolumeStats, rateMBps: number): string {
  const parts = [
    `${formatMB(stats.bytesUploaded)} uploaded`,
    `${rateMBps.toFixed(1)} MB/s`,
    `${stats.dirtyBlocks} dirty`,
    `${stats.uploadingBlocks} in flight`,
    `${stats.retries} retries`,
  ];
  if (stats.lastUploadError) parts.push(`last error: ${stats.lastUploadError}`);
  return `ebs-fuse ${phase}: ${parts.join(', ')}`;
}

/** While mounted: the live line on a terminal, status lines elsewhere. */
export function startMountedStatus(source: StatsSource, stream: ProgressStream): Reporter {
  return stream.isTTY ? startLiveLine(source, stream, 'mounted') : startStatusLines(source, stream, 'mounted');
}

/**
 * One line redrawn in place every intervalMs. Whatever else is written to the
 * stream meanwhile (a log line) goes above it: the line is erased first and
 * drawn again after. stop() erases it and gives the stream back.
 */
export function startLiveLine(source: StatsSource, stream: ProgressStream, phase: string, intervalMs = LIVE_REDRAW_INTERVAL_MS): Reporter {
  const meter = new RateMeter(source.stats().bytesUploaded);
  const write = stream.write.bind(stream);
  let rateMBps = 0;
  let lastSampleAtMs = Date.now();
  let line = '';
  const draw = (): void => {
    const stats = source.stats();
    const nowMs = Date.now();
    // A rate over half a second jitters; sample it once a second.
    if (nowMs - lastSampleAtMs >= 1000) {
      rateMBps = meter.sampleMBps(stats.bytesUploaded, nowMs);
      lastSampleAtMs = nowMs;
    }
    // A pseudo-terminal may report no width (0): take the classic 80 then.
    const width = Math.max(20, (stream.columns !== undefined && stream.columns > 0 ? stream.columns : 80) - 1);
    const full = formatLiveLine(phase, stats, rateMBps);
    line = full.length > width ? `${full.slice(0, width - 1)}…` : full;
    write(`${ERASE_LINE}${line}`);
  };
  const hadOwnWrite = Object.prototype.hasOwnProperty.call(stream, 'write');
  const ownWrite = stream.write;
  const interleaved = (chunk: string | Uint8Array): boolean => {
    const text = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString();
    const result = write(`${ERASE_LINE}${text}`);
    if (text.endsWith('\n')) write(line);
    return result;
  };
  (stream as { write: (chunk: string | Uint8Array) => boolean }).write = interleaved;
  draw();
  const timer = setInterval(draw, intervalMs);
  timer.unref();
  return {
    stop: () => {
      clearInterval(timer);
      if (hadOwnWrite) stream.write = ownWrite;
      else delete (stream as { write?: unknown }).write;
      write(ERASE_LINE);
    },
  };
}

/**
 * Status lines every intervalMs (not on a terminal, where it would only clutter
 * the prompt). While nothing changes, a line repeats only every
 * IDLE_STATUS_LINE_INTERVAL_MS, so an idle mount does not fill its log.
 */
export function startStatusLines(
  source: StatsSource,
  stream: ProgressStream,
  phase: string,
  intervalMs = STATUS_LINE_INTERVAL_MS,
): Reporter {
  if (stream.isTTY) return { stop: () => undefined };
  const meter = new RateMeter(source.stats().bytesUploaded);
  let lastLine = '';
  let lastWrittenAtMs = 0;
  const timer = setInterval(() => {
    const stats = source.stats();
    const nowMs = Date.now();
    const line = formatStatusLine(phase, stats, meter.sampleMBps(stats.bytesUploaded, nowMs));
    if (line === lastLine && nowMs - lastWrittenAtMs < IDLE_STATUS_LINE_INTERVAL_MS) return;
    lastLine = line;
    lastWrittenAtMs = nowMs;
    stream.write(`${line}\n`);
  }, intervalMs);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}

/**
 * The final flush: a bar of blocks to upload on a terminal, status lines
 * elsewhere. The total is what was dirty or uploading when the flush began.
 */
export function startFlushProgress(
  source: StatsSource,
  stream: ProgressStream & NodeJS.WritableStream,
  intervalMs = STATUS_LINE_INTERVAL_MS,
): Reporter {
  if (!stream.isTTY) return startStatusLines(source, stream, 'flushing', intervalMs);
  const first = source.stats();
  const uploadedAtStart = first.blocksUploaded;
  // Nothing left to upload: a bar would only flash.
  if (first.dirtyBlocks + first.uploadingBlocks === 0) return { stop: () => undefined };
  let total = first.dirtyBlocks + first.uploadingBlocks;
  const meter = new RateMeter(first.bytesUploaded);
  const bar = new SingleBar({
    stream,
    format: 'flushing |{bar}| {value}/{total} blocks | {rate} MB/s | {retries} retries',
    hideCursor: true,
    clearOnComplete: false,
    barsize: 30,
  });
  bar.start(total, 0, { rate: '0.0', retries: first.retries });
  let lastRate = 0;
  let ticks = 0;
  const redraw = (): void => {
    const stats = source.stats();
    const done = stats.blocksUploaded - uploadedAtStart;
    const remaining = stats.dirtyBlocks + stats.uploadingBlocks;
    // Blocks rewritten during the flush are uploaded again: grow the total rather than overflow.
    if (done + remaining > total) {
      total = done + remaining;
      bar.setTotal(total);
    }
    ticks += 1;
    // The rate over one redraw period jitters; sample it once a second.
    if (ticks % Math.max(1, Math.round(1000 / BAR_REDRAW_INTERVAL_MS)) === 0) lastRate = meter.sampleMBps(stats.bytesUploaded, Date.now());
    bar.update(done, { rate: lastRate.toFixed(1), retries: stats.retries });
  };
  return redrawnBar(redraw, () => bar.stop());
}
