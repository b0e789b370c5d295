/**
 * The worker process of the memory benchmark (bench/scenarios/memory.ts): a
 * stopflow worker alone in its own process over a simulated cloud seeded with
 * the instances to stop, so process.memoryUsage() and process.cpuUsage() see
 * the worker and nothing of the benchmark's client. Answers `sample` and
 * `shutdown` messages over IPC.
 */
import { DefaultLogger, makeTelemetryFilterString, NativeConnection, Runtime, Worker } from '@temporalio/worker';
import type { AttachmentState, ForceAnswer, Provider } from '../activities/provider';
import { MemorySimStore, SimulatedProvider } from '../activities/providers/simulated';
import type { VolumeRef } from '../common/request';
import { createStopflowWorker } from '../worker/worker';
import { createBaselineActivities } from './baseline-activities';

export interface MemoryWorkerConfig {
  /** stopflow's worker, or a baseline worker running `waitingFloor` or `validatingFloor`. */
  kind: 'stopflow' | 'floor' | 'floor+zod';
  address: string;
  taskQueue: string;
  bundlePath: string;
  instancePrefix: string;
  instances: number;
  volumesPerStop: number;
  pollIntervalMs: number;
  holdMs: number;
  maxPollIntervalMs: number;
  maxCachedWorkflows: number;
  maxConcurrentActivityTaskExecutions: number;
}

export interface MemorySample {
  at: number;
  rss: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
  /** User + system CPU of the whole process, microseconds. */
  cpuMicros: number;
  /** Stops (or floor workflows) whose stuck volume (hang activity) has been tried. */
  stuckWaiting: number;
  /** Healthy volumes the backend reported detached (no-op activities run, for the floor). */
  healthyDetached: number;
  cachedWorkflows: number;
  inFlightActivations: number;
  inFlightActivities: number;
}

export type ToWorker = { type: 'sample'; id: number } | { type: 'shutdown' };
export type FromWorker = { type: 'ready' } | { type: 'sample'; id: number; sample: MemorySample };

const STUCK = 'vol-stuck';

/**
 * Delegates to the simulated cloud and counts progress. Counters and one byte
 * per stop only: a map entry per stop would itself be memory charged to stopflow.
 */
class CountingProvider implements Provider {
  readonly name: string;
  readonly supportsForce: boolean;
  stuckWaiting = 0;
  healthyDetached = 0;
  private readonly seenStuck: Uint8Array;

  constructor(
    private readonly inner: Provider,
    private readonly prefix: string,
    instances: number,
  ) {
    this.name = inner.name;
    this.supportsForce = inner.supportsForce;
    this.seenStuck = new Uint8Array(instances);
  }

  listAttachedVolumes(instanceId: string): Promise<VolumeRef[]> {
    return this.inner.listAttachedVolumes(instanceId);
  }

  async detachVolume(instanceId: string, volume: VolumeRef): Promise<void> {
    await this.inner.detachVolume(instanceId, volume);
    const i = Number(instanceId.slice(this.prefix.length + 1));
    if (volume.volumeId === STUCK && this.seenStuck[i] === 0) {
      this.seenStuck[i] = 1;
      this.stuckWaiting++;
    }
  }

  async getAttachmentState(instanceId: string, volume: VolumeRef): Promise<AttachmentState> {
    const state = await this.inner.getAttachmentState(instanceId, volume);
    if (state === 'detached' && volume.volumeId !== STUCK) this.healthyDetached++;
    return state;
  }

  forceDetachVolume(instanceId: string, volume: VolumeRef): Promise<ForceAnswer> {
    return this.inner.forceDetachVolume(instanceId, volume);
  }

  stopInstance(instanceId: string): Promise<void> {
    return this.inner.stopInstance(instanceId);
  }
}

async function main(): Promise<void> {
  const raw = process.env.STOPFLOW_BENCH_MEMORY;
  if (!raw) throw new Error('memory-worker: STOPFLOW_BENCH_MEMORY is not set (started by bench/scenarios/memory.ts)');
  const config = JSON.parse(raw) as MemoryWorkerConfig;
  // Core's own warnings (e.g. "workflow task took over 5 s" while thousands of stops start on two loaded
  // cores) would flood the benchmark's output; errors still show.
  Runtime.install({
    logger: new DefaultLogger('ERROR'),
    telemetryOptions: {
      logging: { filter: makeTelemetryFilterString({ core: 'ERROR', other: 'ERROR' }), forward: {} },
    },
  });

  const sim = new SimulatedProvider(new MemorySimStore());
  const volumes = [
    { volumeId: STUCK, behavior: { hang: true } },
    ...Array.from({ length: config.volumesPerStop - 1 }, (_, i) => ({ volumeId: `vol-${i}` })),
  ];
  for (let i = 0; i < config.instances; i++) await sim.addInstance(`${config.instancePrefix}-${i}`, volumes);

  const provider = new CountingProvider(sim, config.instancePrefix, config.instances);

  // The floor's counters: the first `hang` of each workflow is not told apart from its retries,
  // so count no-ops and hangs and let the benchmark wait for both totals.
  const floor = { noops: 0, hangs: 0 };
  const connection = await NativeConnection.connect({ address: config.address });
  const tuning = {
    maxCachedWorkflows: config.maxCachedWorkflows,
    maxConcurrentActivityTaskExecutions: config.maxConcurrentActivityTaskExecutions,
  };
  const worker =
    config.kind === 'stopflow'
      ? await createStopflowWorker({
          connection,
          taskQueue: config.taskQueue,
          providers: [provider],
          pollIntervalMs: config.pollIntervalMs,
          holdMs: config.holdMs,
          maxPollIntervalMs: config.maxPollIntervalMs,
          workflowBundle: { codePath: config.bundlePath },
          tuning,
        })
      : await Worker.create({
          connection,
          taskQueue: config.taskQueue,
          workflowBundle: { codePath: config.bundlePath },
          activities: createBaselineActivities({
            provider: sim,
            hangRetryDelayMs: config.pollIntervalMs,
            hangMaxRetryDelayMs: config.maxPollIntervalMs,
            observe: (name) => {
              if (name === 'noop') floor.noops++;
              else floor.hangs++;
            },
          }),
          maxHeartbeatThrottleInterval: '1s',
          ...tuning,
        });
  const running = worker.run();
  const gc = (globalThis as { gc?: () => void }).gc;

  const sample = (): MemorySample => {
    gc?.();
    gc?.();
    const mem = process.memoryUsage();
    const cpu = process.cpuUsage();
    const status = ('main' in worker ? worker.main : worker).getStatus();
    return {
      at: Date.now(),
      rss: mem.rss,
      heapUsed: mem.heapUsed,
      external: mem.external,
      arrayBuffers: mem.arrayBuffers,
      cpuMicros: cpu.user + cpu.system,
      stuckWaiting: config.kind === 'stopflow' ? provider.stuckWaiting : floor.hangs,
      healthyDetached: config.kind === 'stopflow' ? provider.healthyDetached : floor.noops,
      cachedWorkflows: status.numCachedWorkflows,
      inFlightActivations: status.numInFlightWorkflowActivations,
      inFlightActivities: status.numInFlightActivities,
    };
  };
  const send = (message: FromWorker) => process.send?.(message);

  let closing = false;
  const shutdown = async (code: number) => {
    if (closing) return;
    closing = true;
    if (worker.getState() === 'RUNNING') worker.shutdown();
    await running.catch(() => undefined);
    await connection.close().catch(() => undefined);
    process.exit(code);
  };
  process.on('message', (message: ToWorker) => {
    if (message.type === 'sample') send({ type: 'sample', id: message.id, sample: sample() });
    else void shutdown(0);
  });
  // The benchmark went away (crashed or was killed): do not linger.
  process.on('disconnect', () => void shutdown(1));
  running.catch((err: unknown) => {
    process.stderr.write(`memory-worker: worker failed: ${String(err)}\n`);
    process.exit(1);
  });
  send({ type: 'ready' });
}

main().catch((err: unknown) => {
  process.stderr.write(`memory-worker: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
