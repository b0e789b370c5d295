/**
 * The worker process of the incident benchmark (bench/scenarios/incident.ts):
 * a stopflow worker built exactly as `stopflow worker` builds it with no
 * settings (createStopflowWorker without tuning: default cache, slots, waits
 * slots, poll, hold; no Node flags but `--import tsx`), in its own process so
 * its RSS is its own. Rows with abort probes also run a small baseline worker
 * here for the in-process floor, from the start: its memory is in every sample
 * of those rows (idle included), so it cancels out of the per-stop figure.
 * Its backend is the simulated cloud (seeded here, before the idle sample,
 * with a call budget declared on it) or the aws provider against the local
 * EC2 server the benchmark runs.
 *
 * It answers `sample` and `shutdown` messages over IPC, and reports the
 * moments the benchmark times: a detach request reaching the backend, a
 * force-detach activity starting and its force reaching the backend, for the
 * healthy and abort-probe stops only (a message per stuck stop would itself
 * load the worker).
 */
import { monitorEventLoopDelay, PerformanceObserver, constants as perfConstants } from 'node:perf_hooks';
import {
  type ActivityInterceptorsFactory,
  DefaultLogger,
  makeTelemetryFilterString,
  NativeConnection,
  Runtime,
  Worker,
} from '@temporalio/worker';
import { z } from 'zod';
import type { AttachmentState, CallBudget, CallOptions, ForceAnswer, Provider } from '../activities/provider';
import { MemorySimStore, SimulatedProvider } from '../activities/providers/simulated';
import type { VolumeRef } from '../common/request';
import { createStopflowWorker } from '../worker/worker';
import { createBaselineActivities, Marks } from './baseline-activities';
import {
  type FromIncidentWorker,
  healthyId,
  healthyVolumes,
  type IncidentEventKind,
  type IncidentSample,
  type IncidentWorkerConfig,
  probeId,
  probePrefix,
  stuckId,
  stuckVolume,
  type ToIncidentWorker,
  warmUpId,
} from './incident-shared';

/**
 * Delegates every call (options, budget and batching included) and counts.
 * Counters and one byte per stuck stop only: a map entry per stop would be memory charged to stopflow.
 */
class CountingProvider implements Provider {
  readonly name: string;
  readonly supportsForce: boolean;
  readonly forceRefusesDetached?: boolean;
  readonly budget?: CallBudget;
  readonly maxBatch?: number;
  readonly getAttachmentStates?: NonNullable<Provider['getAttachmentStates']>;
  stuckRequested = 0;
  stuckChecked = 0;
  volumesChecked = 0;
  private readonly requested: Uint8Array;
  private readonly checked: Uint8Array;
  private readonly stuckPrefix: string;

  constructor(
    private readonly inner: Provider,
    prefix: string,
    stuck: number,
    private readonly report: (kind: IncidentEventKind, instanceId: string, at: number) => void,
  ) {
    this.name = inner.name;
    this.supportsForce = inner.supportsForce;
    if (inner.forceRefusesDetached !== undefined) this.forceRefusesDetached = inner.forceRefusesDetached;
    if (inner.budget) this.budget = inner.budget;
    if (inner.maxBatch !== undefined) this.maxBatch = inner.maxBatch;
    this.requested = new Uint8Array(stuck);
    this.checked = new Uint8Array(stuck);
    this.stuckPrefix = `${prefix}-s`;
    const batch = inner.getAttachmentStates?.bind(inner);
    if (batch) {
      this.getAttachmentStates = async (targets, options) => {
        const states = await batch(targets, options);
        this.volumesChecked += targets.length;
        for (const t of targets) this.markChecked(t.instanceId);
        return states;
      };
    }
  }

  /** Index of a stuck stop's instance, or -1. */
  private stuckIndex(instanceId: string): number {
    return instanceId.startsWith(this.stuckPrefix) ? Number(instanceId.slice(this.stuckPrefix.length)) : -1;
  }

  private markChecked(instanceId: string): void {
    const i = this.stuckIndex(instanceId);
    if (i >= 0 && this.checked[i] === 0) {
      this.checked[i] = 1;
      this.stuckChecked++;
    }
  }

  listAttachedVolumes(instanceId: string, options?: CallOptions): Promise<VolumeRef[]> {
    return this.inner.listAttachedVolumes(instanceId, options);
  }

  async detachVolume(instanceId: string, volume: VolumeRef, options?: CallOptions): Promise<void> {
    const i = this.stuckIndex(instanceId);
    if (i < 0) this.report('detach', instanceId, Date.now());
    await this.inner.detachVolume(instanceId, volume, options);
    if (i >= 0 && this.requested[i] === 0) {
      this.requested[i] = 1;
      this.stuckRequested++;
    }
  }

  async getAttachmentState(instanceId: string, volume: VolumeRef, options?: CallOptions): Promise<AttachmentState> {
    const state = await this.inner.getAttachmentState(instanceId, volume, options);
    this.volumesChecked++;
    this.markChecked(instanceId);
    return state;
  }

  forceDetachVolume(instanceId: string, volume: VolumeRef, options?: CallOptions): Promise<ForceAnswer> {
    // The moment the force reaches the backend, as bench/instrumented-provider.ts times it for `reaction`.
    this.report('force', instanceId, Date.now());
    return this.inner.forceDetachVolume(instanceId, volume, options);
  }

  stopInstance(instanceId: string, options?: CallOptions): Promise<void> {
    return this.inner.stopInstance(instanceId, options);
  }
}

/** The floor's marks, each also reported to the benchmark with its moment. */
class ReportingMarks extends Marks {
  constructor(private readonly report: (id: string, at: number) => void) {
    super();
  }

  override record(id: string): void {
    this.report(id, Date.now());
    super.record(id);
  }
}

async function backend(config: IncidentWorkerConfig): Promise<{ inner: Provider; sim?: SimulatedProvider }> {
  if (config.provider === 'aws') {
    if (!config.ec2Endpoint) throw new Error('incident-worker: aws needs ec2Endpoint');
    // Loaded only here: the simulated rows' idle worker does not carry the AWS SDK.
    const { AwsProvider } = await import('../activities/providers/aws');
    // Defaults as the worker builds it (budget, batch, timeouts, stop poll); only the endpoint points home.
    return { inner: new AwsProvider({ region: 'us-east-1', endpoint: config.ec2Endpoint }) };
  }
  const sim = new SimulatedProvider(
    new MemorySimStore(),
    {},
    config.budget ? { name: 'simulated', budget: config.budget } : 'simulated',
  );
  for (let i = 0; i < config.stuck; i++) {
    const id = stuckId(config.prefix, i);
    await sim.addInstance(id, [{ volumeId: stuckVolume(id), behavior: { hang: true } }]);
  }
  for (const id of [
    warmUpId(config.prefix),
    ...Array.from({ length: config.healthy }, (_, i) => healthyId(config.prefix, i)),
  ]) {
    await sim.addInstance(
      id,
      healthyVolumes(id).map((volumeId) => ({ volumeId })),
    );
  }
  for (let i = 0; i < config.probes; i++) {
    const id = probeId(config.prefix, i);
    await sim.addInstance(id, [{ volumeId: stuckVolume(id), behavior: { hang: true } }]);
  }
  return { inner: sim, sim };
}

async function main(): Promise<void> {
  const raw = process.env.STOPFLOW_BENCH_INCIDENT;
  if (!raw)
    throw new Error('incident-worker: STOPFLOW_BENCH_INCIDENT is not set (started by bench/scenarios/incident.ts)');
  const config = JSON.parse(raw) as IncidentWorkerConfig;
  Runtime.install({
    logger: new DefaultLogger('ERROR'),
    telemetryOptions: {
      logging: { filter: makeTelemetryFilterString({ core: 'ERROR', other: 'ERROR' }), forward: {} },
    },
  });
  const send = (message: FromIncidentWorker) => process.send?.(message);
  const { inner, sim } = await backend(config);
  const provider = new CountingProvider(inner, config.prefix, config.stuck, (kind, instanceId, at) =>
    send({ type: 'event', kind, instanceId, at }),
  );
  const connection = await NativeConnection.connect({ address: config.address });
  // A probe's force-detach activity starting, before its state read and budget: the part of abort → force
  // that Temporal's own floor (signal → activity) measures too.
  const probes = probePrefix(config.prefix);
  const forceStarted: ActivityInterceptorsFactory = (ctx) => ({
    inbound: {
      execute(input, next) {
        const instanceId = (input.args[0] as { instanceId?: unknown } | undefined)?.instanceId;
        const isProbe = typeof instanceId === 'string' && instanceId.startsWith(probes);
        if (isProbe && ctx.info.activityType === 'forceDetachVolume')
          send({ type: 'event', kind: 'forceStarted', instanceId, at: Date.now() });
        return next(input);
      },
    },
  });
  // Nothing but what `stopflow worker` passes with an empty environment (no tuning, default timings), and
  // the probes' moment above; and what an operator set by hand to look inside a row (never in committed rows).
  const { maxCachedWorkflows, watchHeartbeatTimeoutMs } = optionsByHand();
  const worker = await createStopflowWorker({
    connection,
    taskQueue: config.taskQueue,
    providers: [provider],
    workflowBundle: { codePath: config.bundlePath },
    tuning: { interceptors: { activity: [forceStarted] }, ...(maxCachedWorkflows ? { maxCachedWorkflows } : {}) },
    ...(watchHeartbeatTimeoutMs ? { watchHeartbeatTimeoutMs } : {}),
  });
  // Temporal's floor beside it, in the same process (idle but for the floor's own samples).
  const floorWorker = config.floor
    ? await Worker.create({
        connection,
        taskQueue: config.floor.taskQueue,
        workflowBundle: { codePath: config.floor.bundlePath },
        activities: createBaselineActivities({
          provider: new SimulatedProvider(new MemorySimStore()),
          marks: new ReportingMarks((id, at) => send({ type: 'event', kind: 'floorMark', instanceId: id, at })),
        }),
      })
    : undefined;
  const running = Promise.all([worker.run(), floorWorker?.run()]);
  // The main thread's stalls: it runs the activities, the provider calls and the SDK's hand-offs to the
  // workflow thread, so a stall here delays a workflow task the server has already handed over.
  const loopDelay = monitorEventLoopDelay({ resolution: 5 });
  loopDelay.enable();
  // The main thread's garbage collections since the previous sample (the workflow thread's are its own isolate's,
  // out of this observer's sight): a pause stops everything the loop does, like a stall.
  let collections = freshCollections();
  const gcObserver = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const ms = entry.duration;
      collections.count++;
      collections.totalMs += ms;
      collections.maxMs = Math.max(collections.maxMs, ms);
      if (ms >= LONG_PAUSE_MS) collections.longCount++;
      if (ms >= LONG_PAUSE_MS && collections.long.length < MAX_LONG_PAUSES) {
        const kind = (entry as { detail?: { kind?: number } }).detail?.kind;
        collections.long.push({
          at: Math.round(performance.timeOrigin + entry.startTime),
          ms: Math.round(ms * 10) / 10,
          kind: GC_KINDS.get(kind ?? -1) ?? 'other',
        });
      }
    }
  });
  gcObserver.observe({ entryTypes: ['gc'] });

  const sample = (): IncidentSample => {
    const mem = process.memoryUsage();
    const cpu = process.cpuUsage();
    const main = worker.main.getStatus();
    const waits = worker.waits.getStatus();
    return {
      at: Date.now(),
      rss: mem.rss,
      heapUsed: mem.heapUsed,
      cpuMicros: cpu.user + cpu.system,
      stuckRequested: provider.stuckRequested,
      stuckChecked: provider.stuckChecked,
      volumesChecked: provider.volumesChecked,
      backendCalls: sim ? Object.fromEntries(sim.calls) : {},
      cachedWorkflows: main.numCachedWorkflows,
      inFlightActivations: main.numInFlightWorkflowActivations,
      urgentActivities: main.numInFlightActivities,
      waitActivities: waits.numInFlightActivities,
      watchedWaits: worker.watch.size,
      gc: ((taken) => {
        collections = freshCollections();
        return { ...taken, totalMs: Math.round(taken.totalMs * 10) / 10, maxMs: Math.round(taken.maxMs * 10) / 10 };
      })(collections),
      eventLoopDelay: ((ms) => {
        const figure = {
          p50Ms: ms(loopDelay.percentile(50)),
          p99Ms: ms(loopDelay.percentile(99)),
          maxMs: ms(loopDelay.max),
        };
        loopDelay.reset();
        return figure;
      })((ns: number) => Math.round(ns / 1e5) / 10),
    };
  };

  let closing = false;
  const shutdown = async (code: number) => {
    if (closing) return;
    closing = true;
    worker.shutdown();
    if (floorWorker?.getState() === 'RUNNING') floorWorker.shutdown();
    await running.catch(() => undefined);
    await connection.close().catch(() => undefined);
    process.exit(code);
  };
  process.on('message', (message: ToIncidentWorker) => {
    if (message.type === 'sample') send({ type: 'sample', id: message.id, sample: sample() });
    else void shutdown(0);
  });
  // The benchmark went away (crashed or was killed): do not linger.
  process.on('disconnect', () => void shutdown(1));
  running.catch((err: unknown) => {
    process.stderr.write(`incident-worker: worker failed: ${String(err)}\n`);
    process.exit(1);
  });
  send({ type: 'ready' });
}

/** A collection at least this long is listed with its moment, so a slow stop can be matched with it. */
const LONG_PAUSE_MS = 5;
const MAX_LONG_PAUSES = 500;

function freshCollections(): NonNullable<IncidentSample['gc']> {
  return { count: 0, totalMs: 0, maxMs: 0, longCount: 0, long: [] };
}

const GC_KINDS = new Map<number, 'minor' | 'major' | 'incremental' | 'weakcb'>([
  [perfConstants.NODE_PERFORMANCE_GC_MINOR, 'minor'],
  [perfConstants.NODE_PERFORMANCE_GC_MAJOR, 'major'],
  [perfConstants.NODE_PERFORMANCE_GC_INCREMENTAL, 'incremental'],
  [perfConstants.NODE_PERFORMANCE_GC_WEAKCB, 'weakcb'],
]);

main().catch((err: unknown) => {
  process.stderr.write(`incident-worker: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});

/**
 * STOPFLOW_BENCH_WORKER_OPTIONS sets worker options by hand, to test what bounds a row: `{"maxCachedWorkflows":6000}`
 * (no stuck stop evicted for a healthy one), `{"watchHeartbeatTimeoutMs":1800000}` (about half the default's heartbeats).
 * Like STOPFLOW_BENCH_WORKER_FLAGS, for looking inside a row; BENCHMARKS.md's rows are measured without it.
 */
function optionsByHand(): { maxCachedWorkflows?: number | undefined; watchHeartbeatTimeoutMs?: number | undefined } {
  const raw = process.env.STOPFLOW_BENCH_WORKER_OPTIONS;
  if (!raw) return {};
  return z
    .strictObject({
      maxCachedWorkflows: z.number().int().positive().optional(),
      watchHeartbeatTimeoutMs: z.number().int().positive().optional(),
    })
    .parse(JSON.parse(raw));
}
