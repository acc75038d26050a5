/**
 * A level-free wake-up: waiters resolve on the next notify() or after their own
 * time limit. Used where a caller must re-check state after "something changed"
 * (an upload finished, room appeared) without polling.
 */
export class ChangeSignal {
  private waiters: Array<() => void> = [];

  notify(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  /** Resolves true on a notify, false when timeoutMs passed first. */
  wait(timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const timer = setTimeout(
        () => {
          this.waiters = this.waiters.filter((wake) => wake !== onNotify);
          resolve(false);
        },
        Math.max(0, timeoutMs),
      );
      const onNotify = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      this.waiters.push(onNotify);
    });
  }
}
