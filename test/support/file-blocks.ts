import { open } from 'node:fs/promises';
import { BLOCK_SIZE_BYTES } from '../../src/ebs/client';

/** Block `index` of a file as a reader sees it (zeros past the end). */
export async function readFileBlock(file: string, index: number): Promise<Buffer> {
  const block = Buffer.alloc(BLOCK_SIZE_BYTES);
  const handle = await open(file, 'r');
  try {
    await handle.read(block, 0, BLOCK_SIZE_BYTES, index * BLOCK_SIZE_BYTES);
  } finally {
    await handle.close();
  }
  return block;
}
