// SIGINT and SIGTERM during upload and download: the first asks the transfer
// to stop cleanly (no new block starts, temporary files are removed); a second
// one ends the process at once.
import { describeError, UserError } from '../errors';

const STOP_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM'];
/** As shells report a process ended by SIGINT. */
export const EXIT_INTERRUPTED = 130;

export interface InterruptHandler {
  remove(): void;
}

export function onInterrupt(stop: (signal: NodeJS.Signals) => void): InterruptHandler {
  let signals = 0;
  const handler = (signal: NodeJS.Signals): void => {
    signals += 1;
    if (signals === 1) {
      stop(signal);
      return;
    }
    process.exit(EXIT_INTERRUPTED);
  };
  for (const signal of STOP_SIGNALS) process.on(signal, handler);
  return {
    remove: () => {
      for (const signal of STOP_SIGNALS) process.off(signal, handler);
    },
  };
}

/**
 * What an upload or download that failed ends with: the interruption (exit 130)
 * when the user stopped it, its own one-line error, or `cannot WHAT: cause`.
 */
export function transferFailure(error: unknown, interrupted: boolean, what: string): UserError {
  if (interrupted) return new UserError(describeError(error), EXIT_INTERRUPTED);
  if (error instanceof UserError) return error;
  return new UserError(`cannot ${what}: ${describeError(error)}`);
}
