// Byte units shared by every layer, so that no file writes its own 1073741824.
export const MIB_BYTES = 1048576;
export const GIB_BYTES = 1073741824;
/** Decimal megabytes, for rates and sizes shown to people (MB/s as dd prints it). */
export const BYTES_PER_MB = 1e6;

/** Bytes as decimal megabytes with one decimal, e.g. "21.0 MB". */
export function formatMB(bytes: number): string {
  return `${(bytes / BYTES_PER_MB).toFixed(1)} MB`;
}
