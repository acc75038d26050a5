// Everything the bench starts registers how to undo it here: processes, mounts,
// loop devices, servers and temp dirs. The actions run last-in first-out at the
// end of the run, after a failure, or on SIGINT/SIGTERM, each under a time
// limit so that one stuck step cannot keep the rest from running.

const ACTION_TIMEOUT_MS = 30_000;

interface Action {
  name: string;
  run: () => Promise<void> | void;
}

export class Cleanup {
  private actions: Action[] = [];
  private running: Promise<void> | undefined;
  /** Set once a signal asked the run to stop; long loops check it between steps. */
  interrupted = false;
  /** Set once the undo steps started: from then on only they may start processes. */
  closing = false;

  /** Registers an undo step; the returned function runs it now (once) and forgets it. */
  add(name: string, run: () => Promise<void> | void): () => Promise<void> {
    const action: Action = { name, run };
    this.actions.push(action);
    let done: Promise<void> | undefined;
    return () => {
      done ??= (async () => {
        this.actions = this.actions.filter((candidate) => candidate !== action);
        await runWithLimit(action);
      })();
      return done;
    };
  }

  /** Runs every registered action, newest first; errors are reported, never thrown. */
  runAll(): Promise<void> {
    this.closing = true;
    this.running ??= (async () => {
      while (this.actions.length > 0) {
        const action = this.actions.pop()!;
        await runWithLimit(action);
      }
    })();
    return this.running;
  }

  /** Stops the run on the first SIGINT/SIGTERM: undo everything, then exit 130. */
  installSignalHandlers(log: (line: string) => void): void {
    let signals = 0;
    const onSignal = (signal: NodeJS.Signals): void => {
      signals += 1;
      this.interrupted = true;
      if (signals > 1) {
        log(`${signal} again: still cleaning up, please wait`);
        return;
      }
      log(`${signal}: stopping and removing everything the bench started`);
      void this.runAll().finally(() => process.exit(130));
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    process.on('SIGHUP', onSignal);
  }
}

async function runWithLimit(action: Action): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      Promise.resolve().then(action.run),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ACTION_TIMEOUT_MS} ms`)), ACTION_TIMEOUT_MS);
      }),
    ]);
  } catch (error) {
    process.stderr.write(`bench: cleanup "${action.name}" failed: ${error instanceof Error ? error.message : String(error)}\n`);
  } finally {
    clearTimeout(timer);
  }
}
