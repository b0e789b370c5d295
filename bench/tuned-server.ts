/**
 * A second dev server for the reaction and incident benchmarks, with the history service's
 * queue readers allowed to poll more often than the dev server's default of
 * 20 reads per second (it has a single history shard, so that limit is
 * server-wide). It shows how much of the reaction time that limit accounts
 * for. Same binary, search attributes and matcher setting as
 * devserver/server.ts; only the queue-read limits differ.
 */
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { freePort } from '../devserver/ports';
import { RECOMMENDED_DYNAMIC_CONFIG, startDevServer } from '../devserver/server';
import type { BenchContext } from './common';

export const TUNED_DYNAMIC_CONFIG = {
  'history.transferProcessorMaxPollRPS': 1000,
  'history.timerProcessorMaxPollRPS': 1000,
} as const;

/** Every setting the tuned server starts with, as recorded beside its figures. */
const TUNED_SETTINGS = { ...RECOMMENDED_DYNAMIC_CONFIG, ...TUNED_DYNAMIC_CONFIG };

/**
 * Runs `measure` against a tuned dev server (started and torn down here) with the same context otherwise,
 * and records the settings beside its figures.
 */
export async function onTunedServer<T extends object>(
  ctx: BenchContext,
  measure: (tuned: BenchContext) => Promise<T>,
): Promise<T & { dynamicConfig: Record<string, number | boolean> }> {
  // The settings of devserver/server.ts too (startDevServer adds them), so the two servers differ by the limits only.
  const server = await startDevServer({
    logLevel: 'error',
    metricsPort: await freePort(),
    dynamicConfig: TUNED_DYNAMIC_CONFIG,
  });
  try {
    const connection = await NativeConnection.connect({ address: server.address });
    const clientConnection = await Connection.connect({ address: server.address });
    try {
      const tuned: BenchContext = {
        ...ctx,
        address: server.address,
        ...(server.metricsUrl ? { serverMetricsUrl: server.metricsUrl } : {}),
        connection,
        client: new Client({ connection: clientConnection }),
      };
      return { ...(await measure(tuned)), dynamicConfig: { ...TUNED_SETTINGS } };
    } finally {
      await clientConnection.close();
      await connection.close();
    }
  } finally {
    await server.stop();
  }
}
