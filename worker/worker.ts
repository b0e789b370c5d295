/**
 * Builds a stopflow worker: the one place that wires workflows, activities and
 * providers together. It is three SDK Workers in one process, sharing one
 * connection and one set of providers (and so one call budget per provider):
 *
 * - the stop's task queue: workflows and the urgent activities (list, request,
 *   state read, stop), with their own slots;
 * - `<taskQueue>-waits`: only the read-only waits for `detached`, with slots of
 *   their own, so stuck volumes can fill those and never delay a healthy stop
 *   or the force an abort asks for (docs/worker.md "Isolation");
 * - `<taskQueue>-forces`: only force-detaches (workflow version 12), with slots
 *   of their own, so a force never waits for an urgent slot and a mass abort's
 *   forces never take them.
 */

import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Client } from '@temporalio/client';
import { bundleWorkflowCode, type NativeConnection, Runtime, Worker, type WorkerOptions } from '@temporalio/worker';
import type MinimizerPlugin from 'minimizer-webpack-plugin';
import { type ActivityDeps, Backends, createActivities, type StopflowActivities } from '../activities';
import { type CompletionEventsOptions, createCompletionEventActivities } from '../activities/completion-event';
import { DetachWatch } from '../activities/detach-watch';
import { CONFIRM_TIMEOUT_MS } from '../activities/force-moment';
import type { Provider } from '../activities/provider';
import { askWorkerActivity, createVolumeHolderActivities } from '../activities/volume-holders';
import { DEFAULT_TASK_QUEUE } from '../common/names';
import type { OwnershipEventActivities } from '../common/ownership-events';
import { forcesTaskQueue, waitsTaskQueue } from '../common/stop-activities';
import {
  DEFAULT_DETACH_HOLD_MS,
  DEFAULT_MAX_CACHED_WORKFLOWS,
  DEFAULT_MAX_CONCURRENT_FORCES,
  DEFAULT_MAX_CONCURRENT_WAITS,
} from './defaults';
import { stopflowNexusHandler } from './nexus-handlers';
import { NO_TRACING_SINKS, TRACING_WORKFLOW_MODULES, type WorkerTracing } from './tracing';
import { limitNextWorkflowThreadHeap } from './workflow-heap';
import { withoutStackTraces } from './workflow-stack-traces';

export const WORKFLOWS_PATH = fileURLToPath(new URL('../workflows/index.ts', import.meta.url));

/**
 * Activities registered beside stopflow's own, on the stop's task queue; one named like stopflow's (the legacy
 * ones included) must keep its signature. `awaitDetached` runs on the waits queue, so one given here is never called.
 */
export type ExtraActivities = Partial<StopflowActivities & OwnershipEventActivities> &
  Record<string, (...args: never[]) => Promise<unknown>>;

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
  /**
   * How often the watch list heartbeats each wait it answers for (activities/detach-watch.ts), at most: a cancel
   * reaches it within this long. Default: a little before the wait's heartbeat timeout (13 min of the default 15 min).
   */
  watchHeartbeatMs?: number;
  /**
   * The heartbeat timeout stops schedule their watched waits with (workflow version 9; STOPFLOW_WATCH_HEARTBEAT_TIMEOUT):
   * how long a worker killed without a shutdown keeps its waits. Default DEFAULT_WATCH_HEARTBEAT_TIMEOUT_MS (15 min).
   */
  watchHeartbeatTimeoutMs?: number;
  /** Slots of the waits task queue. Default DEFAULT_MAX_CONCURRENT_WAITS. */
  maxConcurrentWaits?: number;
  /** Slots of the forces task queue. Default DEFAULT_MAX_CONCURRENT_FORCES. */
  maxConcurrentForces?: number;
  observe?: ActivityDeps['observe'];
  /** Refuse a volume another instance's running stop holds (VolumeHeld). Default false: activities/volume-holders.ts. */
  refuseHeldVolumes?: boolean;
  /** Where completion events go (STOPFLOW_EVENTS_URL, STOPFLOW_EVENTS_SECRET); none when unset. */
  completionEvents?: CompletionEventsOptions;
  /**
   * More activities to register beside stopflow's own (e.g. the sweep's). One named like one of stopflow's
   * replaces it, and must keep its signature: the workflows call it as stopflow's (askWorker, for one).
   */
  extraActivities?: ExtraActivities;
  /**
   * The providers' call budgets and batched checks, when the caller shares them with activities of its own (the
   * sweep's: worker/main.ts), built over these same providers. Built here otherwise.
   */
  backends?: Backends;
  /** Serve the `stopflow` Nexus service on the task queue (worker/nexus-handlers.ts). Default true. */
  nexus?: boolean;
  /**
   * A pre-built bundle (tests build one per run; bundleStopflowWorkflows): it decides tracing and stack
   * traces. Otherwise the workflows are bundled at start, with the tracing interceptors when `tracing` is set.
   */
  workflowBundle?: WorkerOptions['workflowBundle'];
  /** Workflow stack traces for a worker that bundles at start (worker/workflow-stack-traces.ts). Default false. */
  workflowStackTraces?: boolean;
  /** Traces (worker/tracing.ts startWorkerTracing); none when absent. */
  tracing?: WorkerTracing;
  /** Passed through to the main worker: concurrency, cache size, shutdown grace, interceptors. */
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

/** The three Workers of one stopflow worker, run and shut down together. */
export class StopflowWorker {
  constructor(
    /** Workflows and urgent activities, on the stop's task queue. */
    readonly main: Worker,
    /** Waits for `detached`, on the waits task queue. */
    readonly waits: Worker,
    /** Force-detaches, on the forces task queue (workflow version 12; forces scheduled before it run on the stop's queue). */
    readonly forces: Worker,
    /** The volumes whose waits this worker answers for (activities/detach-watch.ts). */
    readonly watch: DetachWatch,
    /** The workflow thread's heap limit this worker set (worker/workflow-heap.ts); undefined: the operator's. */
    readonly workflowHeapLimitMb?: number,
  ) {}

  get options(): Worker['options'] {
    return this.main.options;
  }

  getState(): ReturnType<Worker['getState']> {
    return this.main.getState();
  }

  private get workers(): readonly Worker[] {
    return [this.main, this.waits, this.forces];
  }

  /** Runs all three until shutdown; if one fails, the others are shut down too and the failure is thrown. */
  async run(): Promise<void> {
    const all = this.workers.map((w) =>
      w.run().catch((err: unknown) => {
        this.shutdown();
        throw err;
      }),
    );
    const results = await Promise.allSettled(all);
    // Before the caller closes the connection: the watched waits go back to the server for another worker.
    await this.watch.release();
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  shutdown(): void {
    for (const w of this.workers) if (w.getState() === 'RUNNING') w.shutdown();
    void this.watch.release();
  }

  /** Runs the workers while `fn` runs, then shuts them down. */
  async runUntil<T>(fn: () => Promise<T>): Promise<T> {
    const running = this.run();
    try {
      return await fn();
    } finally {
      this.shutdown();
      await running;
    }
  }
}

export async function createStopflowWorker(options: StopflowWorkerOptions): Promise<StopflowWorker> {
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
  activityDeps.holdMs = options.holdMs ?? DEFAULT_DETACH_HOLD_MS;
  if (options.maxPollIntervalMs !== undefined) activityDeps.maxPollIntervalMs = options.maxPollIntervalMs;
  if (options.watchHeartbeatTimeoutMs !== undefined)
    activityDeps.watchHeartbeatTimeoutMs = options.watchHeartbeatTimeoutMs;
  // One Backends for all three Workers: a provider's call budget and its batched checks are per process.
  const backends = options.backends ?? new Backends(activityDeps);
  for (const provider of options.providers) {
    if (backends.resolve(provider.name).provider !== provider) {
      throw new Error(`backends: built over another provider "${provider.name}" than the worker's`);
    }
  }
  const namespace = options.namespace ?? 'default';
  const { tuning = {} } = options;
  // The watch list answers for waits with this client: under the worker's identity, as the worker would.
  const client = new Client({
    connection: options.connection,
    namespace,
    ...(tuning.identity !== undefined ? { identity: tuning.identity } : {}),
  });
  // A force attempt's moment is recorded by the server before the force leaves (activities/force-moment.ts).
  activityDeps.confirmHeartbeat = (taskToken, details) =>
    client.connection.withDeadline(Date.now() + CONFIRM_TIMEOUT_MS, () =>
      client.activity.heartbeat(taskToken, details),
    );
  const watch = new DetachWatch(client.activity, backends.forcedVolumes, {
    pollIntervalMs: activityDeps.pollIntervalMs,
    maxPollIntervalMs: Math.max(options.maxPollIntervalMs ?? 60_000, activityDeps.pollIntervalMs),
    ...(options.watchHeartbeatMs !== undefined ? { heartbeatEveryMs: options.watchHeartbeatMs } : {}),
    warn: (message, meta) => Runtime.instance().logger.warn(message, meta),
  });
  const { awaitDetached, ...urgent } = createActivities(activityDeps, backends, watch);
  const taskQueue = options.taskQueue ?? DEFAULT_TASK_QUEUE;
  // Tracing's activity interceptors go first (outermost), so the others run inside the activity's span.
  const activityInterceptors = [
    ...(options.tracing?.activityInterceptors(defaultProvider) ?? []),
    ...(tuning.interceptors?.activity ?? []),
  ];
  const shared = {
    connection: options.connection,
    namespace,
    // Heartbeats carry cancellation to a running activity; sending them at most every second (not every
    // 24 s) lets a cancel reach it within about a second.
    maxHeartbeatThrottleInterval: '1s',
    ...(tuning.shutdownGraceTime !== undefined ? { shutdownGraceTime: tuning.shutdownGraceTime } : {}),
    ...(tuning.shutdownForceTime !== undefined ? { shutdownForceTime: tuning.shutdownForceTime } : {}),
    interceptors: { activity: activityInterceptors },
    ...(tuning.identity !== undefined ? { identity: tuning.identity } : {}),
  } satisfies Partial<WorkerOptions>;
  if (options.workflowBundle && options.workflowStackTraces !== undefined) {
    throw new Error(
      'workflowStackTraces: a prebuilt workflowBundle already decides it; build the bundle with bundleStopflowWorkflows({ stackTraces }) instead',
    );
  }
  if (options.workflowBundle && (tuning.interceptors?.workflowModules?.length ?? 0) > 0) {
    throw new Error(
      'tuning.interceptors.workflowModules: a prebuilt workflowBundle already holds its workflow interceptors; pass the modules to bundleStopflowWorkflows({ interceptorModules }) instead',
    );
  }
  const mainActivities = {
    ...urgent,
    // Volume ownership asks visibility; completion events need the worker's endpoint (docs/contract.md).
    ...createVolumeHolderActivities(client, {
      refuse: options.refuseHeldVolumes ?? false,
    }),
    ...createCompletionEventActivities(options.completionEvents),
    ...options.extraActivities,
  };
  // Bundled here rather than by the SDK (workflowsPath): only bundleStopflowWorkflows can turn stack traces off.
  const workflowBundle =
    options.workflowBundle ??
    (await bundleStopflowWorkflows({
      traced: options.tracing !== undefined,
      stackTraces: options.workflowStackTraces ?? false,
      interceptorModules: tuning.interceptors?.workflowModules ?? [],
    }));
  // Three Workers on one connection: if a later one cannot be created, the earlier ones let the connection go
  // (a Worker created and never run keeps its hold on it, and the caller could not close it). The main Worker comes
  // last, so a failed start never starts its workflow thread only to tear it down.
  const created: Worker[] = [];
  const create = async (workerOptions: WorkerOptions): Promise<Worker> => {
    try {
      const worker = await Worker.create(workerOptions);
      created.push(worker);
      return worker;
    } catch (err) {
      // Released first: a Worker run only to be shut down can still be handed a task by a poll already out, and a
      // wait it takes then finds the list closed and hands itself back instead of staying watched.
      const handedBack = watch.release();
      const released = await Promise.allSettled(created.map(releaseUnstarted));
      await handedBack;
      for (const outcome of released) {
        if (outcome.status === 'rejected') {
          Runtime.instance().logger.warn('a Worker created before the failed one did not shut down cleanly', {
            error: String(outcome.reason),
          });
        }
      }
      // Whatever the release met, the caller hears why the start failed.
      throw err;
    }
  };
  const waits = await create({
    ...shared,
    taskQueue: waitsTaskQueue(taskQueue),
    activities: { awaitDetached },
    maxConcurrentActivityTaskExecutions: options.maxConcurrentWaits ?? DEFAULT_MAX_CONCURRENT_WAITS,
    // A wait is read-only and abandoned when cancelled: it needs no prompt cancel, and five thousand of them
    // heartbeating every second would be five thousand calls a second to Temporal.
    maxHeartbeatThrottleInterval: '20s',
  });
  const forces = await create({
    ...shared,
    taskQueue: forcesTaskQueue(taskQueue),
    // The main worker's (an embedded worker's own, if it gave one): the same activity on either queue.
    activities: { forceDetachVolume: mainActivities.forceDetachVolume },
    maxConcurrentActivityTaskExecutions: options.maxConcurrentForces ?? DEFAULT_MAX_CONCURRENT_FORCES,
  });
  // Set just before the SDK starts the workflow thread: its heap follows the cache (worker/workflow-heap.ts).
  const workflowHeapLimitMb = limitNextWorkflowThreadHeap(tuning.maxCachedWorkflows ?? DEFAULT_MAX_CACHED_WORKFLOWS);
  const main = await create({
    ...shared,
    taskQueue,
    // askWorker first: an embedded worker's own (in extraActivities) wins, as every other activity does.
    activities: { ...askWorkerActivity(mainActivities), ...mainActivities },
    // The `stopflow` Nexus service (docs/contract.md): idle unless a Nexus endpoint targets this task queue.
    ...(options.nexus === false ? {} : { nexusServices: [stopflowNexusHandler()] }),
    workflowBundle,
    maxCachedWorkflows: DEFAULT_MAX_CACHED_WORKFLOWS,
    ...tuning,
    // Workflow interceptor modules are in the bundle (built above, or by whoever built the one passed in).
    interceptors: { ...tuning.interceptors, activity: activityInterceptors, workflowModules: [] },
    sinks: options.tracing?.sinks ?? NO_TRACING_SINKS,
  });
  return new StopflowWorker(main, waits, forces, watch, workflowHeapLimitMb);
}

/**
 * Runs a Worker that was created but not started straight into its shutdown: only then does it let its connection
 * go. Bounded: a Worker that does not drain within 10 s is left behind rather than hold up the error it is released for.
 */
async function releaseUnstarted(worker: Worker): Promise<void> {
  const running = worker.run().catch(() => undefined);
  // run() sets RUNNING before its first await (SDK 1.24, no plugin wrapping runWorker); a plugin that starts the
  // Worker later leaves it INITIALIZED here, and then the bound below is what ends the wait.
  if (worker.getState() === 'RUNNING') worker.shutdown();
  await Promise.race([running, sleep(10_000, undefined, { ref: false })]);
}

/**
 * Bundles the workflow code once (webpack), so many workers can share it. `traced` adds the OpenTelemetry
 * workflow interceptors (worker/tracing.ts). Without them a stop evaluates half the code: every workflow
 * the worker creates or replays evaluates its bundle's modules afresh, so they would cost every stop
 * memory and CPU whether or not anyone traces (BENCHMARKS.md, "Incident scale"). The two bundles replay
 * each other's histories: the interceptors add a header to scheduled activities and no command.
 */
export async function bundleStopflowWorkflows(
  options: {
    traced?: boolean;
    /** Workflow stack traces (worker/workflow-stack-traces.ts). Default false. */
    stackTraces?: boolean;
    /** More workflow interceptor modules, after tracing's. */
    interceptorModules?: readonly string[];
  } = {},
): Promise<{ code: string }> {
  const modules = [...(options.traced ? TRACING_WORKFLOW_MODULES : []), ...(options.interceptorModules ?? [])];
  const { code } = await bundleWorkflowCode({
    workflowsPath: WORKFLOWS_PATH,
    ...(modules.length > 0 ? { workflowInterceptorModules: modules } : {}),
    webpackConfigHook: treeShaken(await deadCodeOnly()),
    logger: quietLogger,
  });
  return { code: options.stackTraces ? code : withoutStackTraces(code) };
}

/**
 * The SDK bundles in webpack's development mode, which keeps every export of every module. A workflow's
 * modules are evaluated afresh for each stop the worker creates or replays (only the SDK's own are shared),
 * so this turns on what production mode would: unused exports found (zod/mini is built for it), modules
 * concatenated, and the code nothing uses dropped by terser. Finding is not dropping: without the last step
 * every stop still ran all 159 of zod's constructors (schemas, checks, errors) at module load, where it needs 36.
 * Replaying a recorded stop 600 times, the SDK's call that loads a stop's modules fell from 1.9 to 1.4 ms. Terser
 * only drops code here: nothing is renamed or rewritten, and names are kept, so stack traces in the Temporal UI stay
 * readable. Bundling takes about two seconds more (2.8 s to 5.2 s here): a worker that bundles at start pays it
 * once; a prebuilt bundle, as `npm run build` writes, not at all.
 */
type WebpackConfig = Parameters<NonNullable<NonNullable<WorkerOptions['bundlerOptions']>['webpackConfigHook']>>[0];
function treeShaken(minimizer: MinimizerPlugin): (config: WebpackConfig) => WebpackConfig {
  return (config) => ({
    ...config,
    optimization: {
      ...config.optimization,
      providedExports: true,
      usedExports: true,
      sideEffects: true,
      concatenateModules: true,
      minimize: true,
      minimizer: [minimizer],
    },
  });
}

/**
 * Terser set to drop unused code and nothing else: every other transform off, nothing renamed, names kept, the
 * layout readable. Licence comments stay in the bundle (not moved to a LICENSE.txt the SDK would not write). Loaded
 * when bundling, one per bundle: a worker that runs a prebuilt bundle never loads it.
 */
async function deadCodeOnly(): Promise<MinimizerPlugin> {
  const { default: Minimizer } = await import('minimizer-webpack-plugin');
  return new Minimizer({
    extractComments: false,
    terserOptions: {
      compress: { defaults: false, unused: true, dead_code: true, side_effects: true },
      mangle: false,
      format: { beautify: true, comments: /@license|@preserve|^!/ },
      keep_classnames: true,
      keep_fnames: true,
    },
  });
}

const noop = () => undefined;
const quietLogger = { trace: noop, debug: noop, info: noop, warn: noop, error: noop, log: noop };
