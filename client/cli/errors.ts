import type { Client } from '@temporalio/client';
import { ConnectionFailedError, connectTemporalClient } from '../connect';

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

/**
 * Connects to Temporal for one command, runs `fn`, and closes the connection.
 * No connection is exit 3; `mapError` turns the command's own errors into
 * CliErrors (return undefined to rethrow as is).
 */
export async function withTemporalClient<T>(
  fn: (client: Client) => Promise<T>,
  mapError: (err: unknown) => CliError | undefined = () => undefined,
): Promise<T> {
  let client: Client;
  try {
    client = await connectTemporalClient();
  } catch (err) {
    if (err instanceof ConnectionFailedError) throw new CliError(err.message, EXIT.notFoundOrNoConnection);
    throw err;
  }
  try {
    return await fn(client);
  } catch (err) {
    throw mapError(err) ?? err;
  } finally {
    await client.connection.close();
  }
}
