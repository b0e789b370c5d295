/** Exit codes of the `stopflow` CLI (documented in the README). */
export const EXIT = { stopped: 0, stopFailed: 1, badInput: 2, notFoundOrNoConnection: 3 } as const;

/** An error the CLI reports as one clear line and the given exit code. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
    this.name = 'CliError';
  }
}
