import { BLOCK_SIZE_BYTES } from '../ebs/client';

export interface BlockSegment {
  index: number;
  /** Offset of the segment inside its block. */
  inBlock: number;
  count: number;
  /** Offset of the segment from the start of the range. */
  fromStart: number;
}

/** Splits the byte range [startBytes, endBytes) at block boundaries. */
export function* blockSegments(startBytes: number, endBytes: number): Generator<BlockSegment> {
  for (let position = startBytes; position < endBytes;) {
    const index = Math.floor(position / BLOCK_SIZE_BYTES);
    const inBlock = position - index * BLOCK_SIZE_BYTES;
    const count = Math.min(BLOCK_SIZE_BYTES - inBlock, endBytes - position);
    yield { index, inBlock, count, fromStart: position - startBytes };
    position += count;
  }
}
