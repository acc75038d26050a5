// Writes to consecutive slots of a file, sent together.
//
// Each write of the local copy costs the mount a fixed toll beside its bytes: a
// turn of the libuv pool and its two context switches, a system call, the
// file's inode lock, a request to the device and its completion. Under a
// stream, copies come one per acknowledged block, into slots handed out one
// after another, many at once. Up to `inFlightMax` writes go out as the copies
// come; copies that come while those are in flight wait, and each run of
// consecutive slots among them goes out as one pwritev of up to `runSlotsMax`.

interface Waiting {
  slot: number;
  data: Buffer;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/** Writes `buffers` back to back from `positionBytes`, whole, or rejects. */
export type WriteAt = (buffers: Buffer[], positionBytes: number) => Promise<void>;

export class ConsecutiveWrites {
  /** Copies not yet sent; at most one per slot handed out, so bounded by the caller's writes in flight. */
  private readonly waiting: Waiting[] = [];
  private inFlight = 0;

  constructor(
    private readonly writeAt: WriteAt,
    private readonly slotBytes: number,
    private readonly inFlightMax: number,
    private readonly runSlotsMax: number,
  ) {}

  /** Writes `data` (one slot's worth) into `slot`; resolves once it is written, rejects with the write's error. */
  write(slot: number, data: Buffer): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.waiting.push({ slot, data, resolve, reject });
      this.send();
    });
  }

  private send(): void {
    while (this.inFlight < this.inFlightMax && this.waiting.length > 0) {
      const run = this.takeRun();
      this.inFlight += 1;
      this.writeAt(
        run.map((entry) => entry.data),
        run[0].slot * this.slotBytes,
      ).then(
        () => this.settle(run, (entry) => entry.resolve()),
        (error: unknown) => this.settle(run, (entry) => entry.reject(error)),
      );
    }
  }

  /** The waiting copy with the lowest slot and those in the slots right after it. */
  private takeRun(): Waiting[] {
    this.waiting.sort((a, b) => a.slot - b.slot);
    let length = 1;
    while (length < this.waiting.length && length < this.runSlotsMax && this.waiting[length].slot === this.waiting[0].slot + length) {
      length += 1;
    }
    return this.waiting.splice(0, length);
  }

  private settle(run: Waiting[], each: (entry: Waiting) => void): void {
    this.inFlight -= 1;
    for (const entry of run) each(entry);
    this.send();
  }
}
