/**
 * Connections for both sides from the same configuration (see ./connect.ts):
 * the client's, re-exported, and the worker's NativeConnection. Client code
 * imports ./connect.ts instead, so that it never loads @temporalio/worker.
 */
import { NativeConnection } from '@temporalio/worker';
import { ConnectionFailedError, loadTemporalTarget, type TemporalTarget } from './connect';

export { ConnectionFailedError, connectTemporalClient, loadTemporalTarget, type TemporalTarget } from './connect';

/** A NativeConnection for workers, from the same configuration. */
export async function connectTemporalWorker(target: TemporalTarget = loadTemporalTarget()): Promise<NativeConnection> {
  try {
    return await NativeConnection.connect({ ...target.connectConfig.connectionOptions, address: target.address });
  } catch (err) {
    throw new ConnectionFailedError(
      `cannot reach Temporal at ${target.address} (namespace ${target.namespace}): ${(err as Error).message}`,
    );
  }
}
