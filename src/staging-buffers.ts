// Page-aligned buffers and the O_DIRECT open for the local copy's writes and
// local-ebs's blocks, and the block cache's page-aligned buffers.
//
// A buffered write of a 512 KiB copy costs the mount more kernel time than the
// rest of that block's path together: page-cache pages to allocate and fill, then
// the writeback that the copy's fdatasync runs in the mount's own threads
// (docs/BENCHMARKS.md, "The local copy written with O_DIRECT"). O_DIRECT
// skips the page cache but needs its memory aligned to the device's logical
// block size, and Node has no aligned allocator. A WebAssembly.Memory is whole
// pages that V8 maps itself, so views of it at multiples of 4096 are aligned.
// The block cache takes its buffers from such memory too (AlignedBuffers), so
// that a copy goes to disk straight from the block, without a staging copy.
import { Semaphore } from 'async-mutex';
import { constants as fsConstants } from 'node:fs';

/** The strictest logical block size of a Linux block device; O_DIRECT needs memory, offset and length aligned to it. */
const DIRECT_IO_ALIGNMENT_BYTES = 4096;

const WASM_PAGE_BYTES = 65536;

/** AlignedBuffers' largest slab: a WebAssembly.Memory holds at most 4 GiB. */
const ALIGNED_SLAB_BYTES_MAX = 1024 * 1024 * 1024;

/** The O_DIRECT flag of open(2), or undefined where the platform has none. */
const O_DIRECT_FLAG = fsConstants.O_DIRECT as number | undefined;

/**
 * Opens a file read-write with O_DIRECT through `open` (given the flags), or
 * gives undefined where the platform or the file system refuses it (EINVAL).
 */
export async function openDirect<T>(open: (flags: number) => Promise<T>): Promise<T | undefined> {
  if (O_DIRECT_FLAG === undefined) return undefined;
  try {
    return await open(fsConstants.O_RDWR | O_DIRECT_FLAG);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EINVAL') return undefined;
    throw error;
  }
}

interface WasmMemoryConstructor {
  new (descriptor: { initial: number; maximum: number }): { readonly buffer: ArrayBuffer };
}

/** The memory alignedViews() allocated: what isPageAligned() vouches for. */
const pageAlignedMemories = new WeakSet<ArrayBufferLike>();

/** True when `buffer` starts at a page-aligned address: a view at a multiple of 4096 into memory from this module. */
export function isPageAligned(buffer: Buffer): boolean {
  return buffer.byteOffset % DIRECT_IO_ALIGNMENT_BYTES === 0 && pageAlignedMemories.has(buffer.buffer);
}

/**
 * `count` buffers of `bufferBytes` (a multiple of 4096), zeroed, in one allocation
 * that is never resized (growing a WebAssembly.Memory would detach every view of
 * it), or undefined where the runtime has no WebAssembly (`node --jitless`) or
 * cannot map the memory.
 */
function alignedViews(count: number, bufferBytes: number): Buffer[] | undefined {
  if (bufferBytes % DIRECT_IO_ALIGNMENT_BYTES !== 0) throw new Error(`buffers of ${bufferBytes} bytes cannot be aligned`);
  const Memory = (globalThis as { WebAssembly?: { Memory: WasmMemoryConstructor } }).WebAssembly?.Memory;
  if (!Memory) return undefined;
  const pages = Math.ceil((count * bufferBytes) / WASM_PAGE_BYTES);
  let buffer: ArrayBuffer;
  try {
    ({ buffer } = new Memory({ initial: pages, maximum: pages }));
  } catch {
    return undefined;
  }
  pageAlignedMemories.add(buffer);
  return Array.from({ length: count }, (_, i) => Buffer.from(buffer, i * bufferBytes, bufferBytes));
}

/**
 * Hands out up to `count` page-aligned buffers of `bufferBytes`, each once, from
 * slabs of at most `slabBuffersMax` allocated as they are needed. Each
 * WebAssembly.Memory also reserves address space well beyond its size, so a few
 * large slabs, not one per buffer. A slab's pages take memory once written and
 * are freed only with the whole slab, when no view of it is left: the owner keeps
 * the buffers for reuse.
 */
export class AlignedBuffers {
  private slab: Buffer[] = [];
  private notAllocated: number;

  constructor(
    count: number,
    private readonly bufferBytes: number,
    private readonly slabBuffersMax = Math.floor(ALIGNED_SLAB_BYTES_MAX / bufferBytes),
  ) {
    this.notAllocated = count;
  }

  /** A zeroed buffer never handed out before, or undefined once `count` were or where no aligned memory can be had. */
  take(): Buffer | undefined {
    if (this.slab.length === 0 && this.notAllocated > 0) {
      const size = Math.min(this.notAllocated, this.slabBuffersMax);
      const views = alignedViews(size, this.bufferBytes);
      // Without aligned memory, no later slab would get it either.
      this.notAllocated = views ? this.notAllocated - size : 0;
      this.slab = views?.reverse() ?? [];
    }
    return this.slab.pop();
  }
}

/** A fixed set of aligned buffers, lent one at a time; borrowers beyond the set wait their turn. */
export class StagingBuffers {
  private readonly free: Buffer[];
  private readonly turns: Semaphore;

  private constructor(buffers: Buffer[]) {
    this.free = buffers;
    this.turns = new Semaphore(buffers.length);
  }

  /** `count` buffers of `bufferBytes` from alignedViews(), or undefined where it has none. */
  static allocate(count: number, bufferBytes: number): StagingBuffers | undefined {
    const buffers = alignedViews(count, bufferBytes);
    return buffers && new StagingBuffers(buffers);
  }

  /** Runs `use` with a buffer of the set holding a copy of `data` (at most one buffer long). */
  async withCopyOf<T>(data: Buffer, use: (aligned: Buffer) => Promise<T>): Promise<T> {
    return this.with(async (aligned) => {
      data.copy(aligned);
      return use(aligned);
    });
  }

  /** Runs `use` with a buffer of the set to itself; the buffer goes back when it settles. */
  private async with<T>(use: (buffer: Buffer) => Promise<T>): Promise<T> {
    return this.turns.runExclusive(async () => {
      const buffer = this.free.pop()!;
      try {
        return await use(buffer);
      } finally {
        this.free.push(buffer);
      }
    });
  }
}
