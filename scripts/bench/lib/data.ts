// Input data and what it contains: random files (no block of them is all zeros,
// so every block must be sent), the count of non-zero 512 KiB blocks of a file,
// which sequential PUT counts are checked against, and their checksums, which
// what the null client was sent is checked against.
import { randomFillSync } from 'node:crypto';
import { open } from 'node:fs/promises';
import { sha256Base64 } from '../../../src/ebs/checksum';
import { BLOCK_SIZE_BYTES } from '../../../src/ebs/client';
import type { Cleanup } from './cleanup';
import { run } from './proc';

const CHUNK_BYTES = 8 * 1024 * 1024;

/** Writes `sizeBytes` of random bytes; the file then sits in the page cache, as dd will read it. */
export async function createRandomFile(file: string, sizeBytes: number): Promise<void> {
  const handle = await open(file, 'w', 0o600);
  try {
    const chunk = Buffer.alloc(CHUNK_BYTES);
    for (let written = 0; written < sizeBytes;) {
      const length = Math.min(CHUNK_BYTES, sizeBytes - written);
      randomFillSync(chunk, 0, length);
      await handle.write(chunk, 0, length, written);
      written += length;
    }
  } finally {
    await handle.close();
  }
}

/** 512 KiB blocks of the file's first limitBytes holding at least one non-zero byte (a partial last block counts). */
export async function countNonZeroBlocks(file: string, limitBytes = Number.MAX_SAFE_INTEGER): Promise<number> {
  let count = 0;
  await forEachNonZeroBlock(file, limitBytes, () => {
    count += 1;
  });
  return count;
}

/**
 * The x-amz-Checksum (base64 SHA-256) of each non-zero 512 KiB block of the
 * file's first limitBytes, by block index: what a dd of them from offset 0 must
 * send (all-zero blocks are skipped, as the mount skips them).
 */
export async function nonZeroBlockChecksums(file: string, limitBytes: number): Promise<Map<number, string>> {
  const checksumByBlock = new Map<number, string>();
  await forEachNonZeroBlock(file, limitBytes, (index, block) => {
    checksumByBlock.set(index, sha256Base64(block));
  });
  return checksumByBlock;
}

async function forEachNonZeroBlock(file: string, limitBytes: number, visit: (index: number, block: Buffer) => void): Promise<void> {
  const handle = await open(file, 'r');
  const zero = Buffer.alloc(BLOCK_SIZE_BYTES);
  const buffer = Buffer.alloc(BLOCK_SIZE_BYTES * 16);
  try {
    for (let position = 0; ;) {
      const { bytesRead } = await handle.read(buffer, 0, Math.min(buffer.length, limitBytes - position), position);
      if (bytesRead === 0) break;
      for (let offset = 0; offset < bytesRead; offset += BLOCK_SIZE_BYTES) {
        const block = buffer.subarray(offset, Math.min(bytesRead, offset + BLOCK_SIZE_BYTES));
        if (!block.equals(zero.subarray(0, block.length))) visit((position + offset) / BLOCK_SIZE_BYTES, block);
      }
      position += bytesRead;
    }
  } finally {
    await handle.close();
  }
}

export interface DdOptions {
  input: string;
  output: string;
  blockSizeBytes: number;
  count: number;
  /** dd's conv=, e.g. 'fsync' or 'fsync,notrunc'. */
  conv: string;
  timeoutMs: number;
}

/** `dd bs=… count=… conv=…`; resolves with its wall time in seconds (spawn to exit). */
export async function dd(cleanup: Cleanup, options: DdOptions): Promise<number> {
  const result = await run(
    cleanup,
    'dd',
    [
      `if=${options.input}`,
      `of=${options.output}`,
      `bs=${options.blockSizeBytes}`,
      `count=${options.count}`,
      `conv=${options.conv}`,
      'status=none',
    ],
    { timeoutMs: options.timeoutMs },
  );
  return result.elapsedSeconds;
}
