/**
 * An error whose message is already the one line a user should read: what went
 * wrong and what to do. The CLI prints it without a stack trace.
 */
export class UserError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
    this.name = 'UserError';
  }
}

/** The one way an error becomes text for a person: its first line, with its code when the message lacks it. */
export function describeError(error: unknown): string {
  if (error instanceof UserError) return error.message;
  if (error instanceof Error) {
    const code = (error as NodeJS.ErrnoException).code;
    const first = error.message.split('\n')[0];
    return code && !first.includes(code) ? `${first} (${code})` : first;
  }
  return String(error);
}
