/**
 * Where to find Temporal, never hard-coded: the environment (TEMPORAL_ADDRESS,
 * TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*) and Temporal's
 * configuration profiles (TEMPORAL_PROFILE, TEMPORAL_CONFIG_FILE), through
 * @temporalio/envconfig. Defaults to a local dev server.
 *
 * The client side only: this module is part of the published client package,
 * so it must not import @temporalio/worker (and with it the native core
 * bridge). The worker's connection is in ./connection.ts.
 */
import { Client, Connection } from '@temporalio/client';
import { loadClientConnectConfig } from '@temporalio/envconfig';
import { clientTracing } from './tracing';

export interface TemporalTarget {
  address: string;
  namespace: string;
  connectConfig: ReturnType<typeof loadClientConnectConfig>;
}

export function loadTemporalTarget(env: NodeJS.ProcessEnv = process.env): TemporalTarget {
  const options = env.TEMPORAL_PROFILE ? { profile: env.TEMPORAL_PROFILE } : {};
  const connectConfig = loadClientConnectConfig(options);
  return {
    address: connectConfig.connectionOptions.address ?? 'localhost:7233',
    namespace: connectConfig.namespace ?? 'default',
    connectConfig,
  };
}

export class ConnectionFailedError extends Error {
  override name = 'ConnectionFailedError';
}

/**
 * A Client for services and the CLI. Fails with ConnectionFailedError naming the address.
 *
 * When the OTEL_* variables ask for traces (./tracing.ts), its workflow calls are traced, so a stop's
 * trace starts at `StopflowClient.stop`; closing the connection first sends the spans still buffered
 * (the CLI exits right after). Otherwise nothing of OpenTelemetry is loaded.
 */
export async function connectTemporalClient(
  target: TemporalTarget = loadTemporalTarget(),
  env: NodeJS.ProcessEnv = process.env,
): Promise<Client> {
  // Tracing that cannot start (a bad OTEL_* value, the optional packages not installed) must not keep a stop from
  // being sent: it is reported as a process warning, and the client works untraced.
  const tracing = await clientTracing(env).catch((err: unknown) => {
    process.emitWarning(`traces off: ${(err as Error).message}`, 'StopflowTracingWarning');
    return undefined;
  });
  try {
    const connection = await Connection.connect({
      ...target.connectConfig.connectionOptions,
      address: target.address,
      connectTimeout: '5s',
    });
    if (tracing) {
      const close = connection.close.bind(connection);
      connection.close = async () => {
        try {
          await tracing.flush();
        } finally {
          await close();
        }
      };
    }
    return new Client({
      connection,
      namespace: target.namespace,
      ...(tracing ? { interceptors: { workflow: tracing.interceptors } } : {}),
    });
  } catch (err) {
    throw new ConnectionFailedError(
      `cannot reach Temporal at ${target.address} (namespace ${target.namespace}): ${(err as Error).message}. Set TEMPORAL_ADDRESS or TEMPORAL_PROFILE, or start one with \`npm run dev-server\`.`,
    );
  }
}
