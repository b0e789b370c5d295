/** Test harness: a real worker on the run's dev server, on its own task queue, over a simulated cloud. */
import { randomUUID } from 'node:crypto';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime } from '@temporalio/worker';
import { inject } from 'vitest';
import type { Provider } from '../activities/provider';
import { MemorySimStore, type SimFaults, SimulatedProvider } from '../activities/providers/simulated';
import { StopflowClient } from '../client/stopflow-client';
import { workflowIdFor } from '../common/names';
import { createStopflowWorker, type StopflowWorker, type StopflowWorkerOptions } from '../worker/worker';

export interface Harness {
  taskQueue: string;
  client: Client;
  stopflow: StopflowClient;
  sim: SimulatedProvider;
  worker: StopflowWorker;
  /** A fresh instance id, unique across test files sharing the server. */
  instanceId(prefix?: string): string;
  close(): Promise<void>;
}

export interface HarnessOptions {
  faults?: SimFaults;
  pollIntervalMs?: number;
  holdMs?: number;
  extraProviders?: Provider[];
  /** Passed through to createStopflowWorker (e.g. the sweep's activities). */
  extraActivities?: StopflowWorkerOptions['extraActivities'];
  /** Bundle at start with or without workflow stack traces, instead of the run's shared bundle. */
  workflowStackTraces?: boolean;
  /** Passed through to createStopflowWorker. */
  maxConcurrentWaits?: number;
  watchHeartbeatMs?: number;
  /** Passed through to createStopflowWorker (the production default, 15 min, when unset). */
  watchHeartbeatTimeoutMs?: number;
  /** The task queue of another harness: a second worker for the same stops. */
  taskQueue?: string;
  /** The simulated cloud of another harness (its store and behaviours). */
  sim?: SimulatedProvider;
}

export async function connectClient(): Promise<Client> {
  const connection = await Connection.connect({ address: inject('temporalAddress') });
  return new Client({ connection });
}

let runtimeInstalled = false;
/** Worker logs at ERROR: expected transient failures are the tests' subject, not noise to print. */
export function installQuietRuntime(): void {
  if (runtimeInstalled) return;
  runtimeInstalled = true;
  // Core's own warnings too: an abandoned wait finishing after its stop is expected (docs/contract.md).
  Runtime.install({
    logger: new DefaultLogger('ERROR'),
    telemetryOptions: { logging: { filter: { core: 'ERROR', other: 'ERROR' }, forward: {} } },
  });
}

export async function startHarness(options: HarnessOptions = {}): Promise<Harness> {
  installQuietRuntime();
  const taskQueue = options.taskQueue ?? `test-${randomUUID()}`;
  const client = await connectClient();
  const sim = options.sim ?? new SimulatedProvider(new MemorySimStore(), options.faults ?? {});
  const nativeConnection = await NativeConnection.connect({ address: inject('temporalAddress') });
  const worker = await createStopflowWorker({
    connection: nativeConnection,
    taskQueue,
    providers: [sim, ...(options.extraProviders ?? [])],
    pollIntervalMs: options.pollIntervalMs ?? 200,
    // Short hold so tests exercise the release-and-retry path of stuck volumes too.
    holdMs: options.holdMs ?? 2_000,
    maxPollIntervalMs: 1_000,
    ...(options.workflowStackTraces === undefined
      ? { workflowBundle: { codePath: inject('workflowBundlePath') } }
      : { workflowStackTraces: options.workflowStackTraces }),
    ...(options.extraActivities ? { extraActivities: options.extraActivities } : {}),
    ...(options.maxConcurrentWaits !== undefined ? { maxConcurrentWaits: options.maxConcurrentWaits } : {}),
    // Watched waits heartbeat every second (13 min in production): `stopflow status` and cancels keep up with tests.
    watchHeartbeatMs: options.watchHeartbeatMs ?? 1_000,
    ...(options.watchHeartbeatTimeoutMs !== undefined
      ? { watchHeartbeatTimeoutMs: options.watchHeartbeatTimeoutMs }
      : {}),
  });
  const running = worker.run();
  return {
    taskQueue,
    client,
    stopflow: new StopflowClient({ client, taskQueue }),
    sim,
    worker,
    instanceId: (prefix = 'i') => `${prefix}-${randomUUID().slice(0, 8)}`,
    async close() {
      worker.shutdown();
      await running;
      await nativeConnection.close();
      await client.connection.close();
    },
  };
}

/** A real attempt's timing for MockActivityEnvironment (its default info has an attempt that ended in 1970). */
export const activityAttemptInfo = () => ({
  heartbeatTimeoutMs: 10_000,
  startToCloseTimeoutMs: 15 * 60_000,
  currentAttemptScheduledTimestampMs: Date.now(),
});

/** Polls `fn` until it returns a truthy value; for waiting on workflow state without fixed sleeps. */
export async function eventually<T>(
  fn: () => Promise<T | undefined | null | false>,
  what: string,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await fn();
      if (value) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Whether a stop of this instance exists at all (bad input must start none). */
export async function workflowExists(client: Client, instanceId: string): Promise<boolean> {
  try {
    await client.workflow.getHandle(workflowIdFor(instanceId)).describe();
    return true;
  } catch {
    return false;
  }
}
