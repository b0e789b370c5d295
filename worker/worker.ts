/** Builds a stopflow Worker: the one place that wires workflows, activities and providers together. */
import { fileURLToPath } from 'node:url';
import { bundleWorkflowCode, type NativeConnection, Worker, type WorkerOptions } from '@temporalio/worker';
import { type ActivityDeps, createActivities } from '../activities';
import type { Provider } from '../activities/provider';
import { DEFAULT_TASK_QUEUE } from '../common/names';

export const WORKFLOWS_PATH = fileURLToPath(new URL('../workflows/index.ts', import.meta.url));

export interface StopflowWorkerOptions {
  connection: NativeConnection;
  namespace?: string;
  taskQueue?: string;
  providers: Provider[];
  defaultProvider?: string;
  pollIntervalMs?: number;
  /** See ActivityDeps.holdMs / maxPollIntervalMs. */
  holdMs?: number;
  maxPollIntervalMs?: number;
  observe?: ActivityDeps['observe'];
  /** More activities to register beside stopflow's own (e.g. the sweep's). */
  extraActivities?: Record<string, (...args: never[]) => Promise<unknown>>;
  /** A pre-built bundle (tests build one per run); otherwise the workflows are bundled at start. */
  workflowBundle?: WorkerOptions['workflowBundle'];
  /** Passed through: concurrency, cache size, shutdown grace, interceptors, sinks. */
  tuning?: Partial<
    Pick<
      WorkerOptions,
      | 'maxConcurrentActivityTaskExecutions'
      | 'maxConcurrentWorkflowTaskExecutions'
      | 'maxCachedWorkflows'
      | 'shutdownGraceTime'
      | 'shutdownForceTime'
      | 'interceptors'
      | 'identity'
    >
  >;
}

export async function createStopflowWorker(options: StopflowWorkerOptions): Promise<Worker> {
  const providers = new Map(options.providers.map((p) => [p.name, p]));
  const defaultProvider = options.defaultProvider ?? options.providers[0]?.name;
  if (!defaultProvider || !providers.has(defaultProvider)) {
    throw new Error(
      `defaultProvider "${defaultProvider ?? ''}" is not among the configured providers (${[...providers.keys()].join(', ') || 'none'})`,
    );
  }
  const activityDeps: ActivityDeps = {
    providers,
    defaultProvider,
    pollIntervalMs: options.pollIntervalMs ?? 5_000,
  };
  if (options.observe) activityDeps.observe = options.observe;
  if (options.holdMs !== undefined) activityDeps.holdMs = options.holdMs;
  if (options.maxPollIntervalMs !== undefined) activityDeps.maxPollIntervalMs = options.maxPollIntervalMs;
  return Worker.create({
    connection: options.connection,
    namespace: options.namespace ?? 'default',
    taskQueue: options.taskQueue ?? DEFAULT_TASK_QUEUE,
    activities: { ...createActivities(activityDeps), ...options.extraActivities },
    ...(options.workflowBundle ? { workflowBundle: options.workflowBundle } : { workflowsPath: WORKFLOWS_PATH }),
    // Heartbeats carry cancellation back to a detach wait when a stop escalates;
    // sending them at most every second (not every 24s) stops that wait promptly.
    maxHeartbeatThrottleInterval: '1s',
    ...options.tuning,
  });
}

/** Bundles the workflow code once (webpack), so many workers can share it. */
export async function bundleStopflowWorkflows(): Promise<{ code: string }> {
  return bundleWorkflowCode({ workflowsPath: WORKFLOWS_PATH, logger: quietLogger });
}

const noop = () => undefined;
const quietLogger = { trace: noop, debug: noop, info: noop, warn: noop, error: noop, log: noop };
