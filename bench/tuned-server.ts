/**
 * A second dev server for the reaction and incident benchmarks, with the history service's
 * queue readers allowed to poll more often than the dev server's default of
 * 20 reads per second (it has a single history shard, so that limit is
 * server-wide). It shows how much of the reaction time that limit accounts
 * for. Same binary, search attributes and matcher setting as
 * devserver/server.ts; only the queue-read limits differ.
 */
import { Client, Connection } from '@temporalio/client';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { NativeConnection } from '@temporalio/worker';
import { StopCauseKey, StopForcedKey, StopPhaseKey, StopVolumesKey } from '../common/names';
import { freePort } from '../devserver/ports';
import { RECOMMENDED_DYNAMIC_CONFIG } from '../devserver/server';
import { resolveTemporalCli } from '../devserver/temporal-cli';
import type { BenchContext } from './common';

export const TUNED_DYNAMIC_CONFIG = {
  'history.transferProcessorMaxPollRPS': 1000,
  'history.timerProcessorMaxPollRPS': 1000,
} as const;

/** Every setting the tuned server starts with, as recorded beside its figures. */
const TUNED_SETTINGS = { ...RECOMMENDED_DYNAMIC_CONFIG, ...TUNED_DYNAMIC_CONFIG };

export async function startTunedDevServer(): Promise<{ address: string; metricsUrl: string; stop(): Promise<void> }> {
  const cli = await resolveTemporalCli();
  // The settings of devserver/server.ts too, so that the two servers differ by the limits only.
  const extraArgs = Object.entries(TUNED_SETTINGS).flatMap(([key, value]) => [
    '--dynamic-config-value',
    `${key}=${value}`,
  ]);
  const metricsPort = await freePort();
  extraArgs.push('--metrics-port', String(metricsPort));
  const env = await TestWorkflowEnvironment.createLocal({
    server: {
      executable: cli.kind === 'path' ? { type: 'existing-path', path: cli.path } : { type: 'cached-download' },
      ip: '127.0.0.1',
      log: { format: 'pretty', level: 'error' },
      searchAttributes: [StopPhaseKey, StopCauseKey, StopForcedKey, StopVolumesKey],
      extraArgs,
    },
  });
  return { address: env.address, metricsUrl: `http://127.0.0.1:${metricsPort}/metrics`, stop: () => env.teardown() };
}

/**
 * Runs `measure` against a tuned dev server (started and torn down here) with the same context otherwise,
 * and records the settings beside its figures.
 */
export async function onTunedServer<T extends object>(
  ctx: BenchContext,
  measure: (tuned: BenchContext) => Promise<T>,
): Promise<T & { dynamicConfig: Record<string, number | boolean> }> {
  const server = await startTunedDevServer();
  try {
    const connection = await NativeConnection.connect({ address: server.address });
    const clientConnection = await Connection.connect({ address: server.address });
    try {
      const tuned: BenchContext = {
        ...ctx,
        address: server.address,
        serverMetricsUrl: server.metricsUrl,
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
