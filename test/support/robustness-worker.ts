/**
 * A test-only worker process for the crash tests (test/robustness/worker-crash.test.ts):
 * createStopflowWorker over the simulated cloud in a JSON file shared with the
 * test, so the test can SIGKILL this process mid-stop and start another.
 * Configured like the production worker, by environment:
 *   TEMPORAL_ADDRESS, STOPFLOW_TASK_QUEUE, STOPFLOW_SIM_STATE,
 *   STOPFLOW_WORKFLOW_BUNDLE (a pre-built bundle), STOPFLOW_POLL_INTERVAL,
 *   STOPFLOW_HOLD_MS, STOPFLOW_MAX_POLL_INTERVAL, STOPFLOW_WATCH_HEARTBEAT_TIMEOUT_MS (ms), and
 *   STOPFLOW_FORCE_DELAY_MS: the force-detach of a volume whose id starts
 *   with "slow-force" waits this long before it reaches the backend, so a
 *   test can kill the worker in the middle of one.
 * Prints "ROBUSTNESS-WORKER READY <pid>" once it polls.
 */
import { DefaultLogger, NativeConnection, Runtime } from '@temporalio/worker';
import type { Provider } from '../../activities/provider';
import { FileSimStore, SimulatedProvider } from '../../activities/providers/simulated';
import type { VolumeRef } from '../../common/request';
import { createStopflowWorker } from '../../worker/worker';

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
}

function milliseconds(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name} must be a number of milliseconds, got "${raw}"`);
  return value;
}

/** The simulated cloud, with the force-detach of `slow-force*` volumes made slow. */
class SlowForceProvider implements Provider {
  readonly name: string;
  readonly supportsForce: boolean;
  constructor(
    private readonly inner: Provider,
    private readonly forceDelayMs: number,
  ) {
    this.name = inner.name;
    this.supportsForce = inner.supportsForce;
  }
  listAttachedVolumes(instanceId: string) {
    return this.inner.listAttachedVolumes(instanceId);
  }
  detachVolume(instanceId: string, volume: VolumeRef) {
    return this.inner.detachVolume(instanceId, volume);
  }
  getAttachmentState(instanceId: string, volume: VolumeRef) {
    return this.inner.getAttachmentState(instanceId, volume);
  }
  async forceDetachVolume(instanceId: string, volume: VolumeRef) {
    if (volume.volumeId.startsWith('slow-force')) await new Promise((r) => setTimeout(r, this.forceDelayMs));
    return this.inner.forceDetachVolume(instanceId, volume);
  }
  stopInstance(instanceId: string) {
    return this.inner.stopInstance(instanceId);
  }
}

Runtime.install({
  logger: new DefaultLogger('ERROR'),
  // Core's own warnings (e.g. heartbeats failing while the server is down) are expected here.
  telemetryOptions: { logging: { filter: { core: 'ERROR', other: 'ERROR' }, console: {} } },
});

const address = required('TEMPORAL_ADDRESS');
const taskQueue = required('STOPFLOW_TASK_QUEUE');
const sim = new SimulatedProvider(new FileSimStore(required('STOPFLOW_SIM_STATE')));
const forceDelayMs = milliseconds('STOPFLOW_FORCE_DELAY_MS', 0);
const provider: Provider = forceDelayMs > 0 ? new SlowForceProvider(sim, forceDelayMs) : sim;

const connection = await NativeConnection.connect({ address });
const worker = await createStopflowWorker({
  connection,
  taskQueue,
  providers: [provider],
  pollIntervalMs: milliseconds('STOPFLOW_POLL_INTERVAL', 250),
  holdMs: milliseconds('STOPFLOW_HOLD_MS', 2_000),
  maxPollIntervalMs: milliseconds('STOPFLOW_MAX_POLL_INTERVAL', 1_000),
  watchHeartbeatTimeoutMs: milliseconds('STOPFLOW_WATCH_HEARTBEAT_TIMEOUT_MS', 20_000),
  workflowBundle: { codePath: required('STOPFLOW_WORKFLOW_BUNDLE') },
  tuning: { shutdownGraceTime: '2s' },
});
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => worker.shutdown());
const running = worker.run();
console.log(`ROBUSTNESS-WORKER READY ${process.pid}`);
try {
  await running;
} finally {
  await connection.close();
}
