/**
 * An instance stop under way (stopInstanceIfDetached, activities/index.ts), in the SDK's activity test environment:
 * the cancel a workflow asks for (its own cancel, an escalation) lets it finish, as the contract says; a worker
 * shutting down, or an attempt the server timed out, still ends it.
 */
import { ActivityCancellationDetails } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { expect, test } from 'vitest';
import { createActivities } from '../activities';
import type { CallOptions } from '../activities/provider';
import { MemorySimStore, SimulatedProvider } from '../activities/providers/simulated';

/** A cloud whose instance stop takes 2 s (its wait for `stopped`), and says whether the call was aborted. */
class SlowStopCloud extends SimulatedProvider {
  begun = false;
  aborted = false;
  override async stopInstance(instanceId: string, options?: CallOptions): Promise<void> {
    this.begun = true;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(resolve, 2_000);
      options?.signal?.addEventListener('abort', () => {
        clearTimeout(timer);
        this.aborted = true;
        reject(options.signal?.reason);
      });
    });
    return super.stopInstance(instanceId, options);
  }
}

async function stopCancelledWith(
  reason: 'CANCELLED' | 'WORKER_SHUTDOWN' | 'TIMED_OUT',
  details: ActivityCancellationDetails,
) {
  const sim = new SlowStopCloud(new MemorySimStore());
  await sim.addInstance('i-1', []);
  const activities = createActivities({
    providers: new Map([[sim.name, sim]]),
    defaultProvider: sim.name,
    pollIntervalMs: 100,
  });
  const env = new MockActivityEnvironment({ heartbeatTimeoutMs: 10_000 });
  const outcome = env.run(activities.stopInstanceIfDetached, { instanceId: 'i-1' }).then(
    (value) => ({ value }),
    (error: unknown) => ({ error }),
  );
  for (let waited = 0; !sim.begun && waited < 10_000; waited += 20) await new Promise((r) => setTimeout(r, 20));
  env.cancel(reason, details);
  return { sim, outcome: await outcome };
}

test('a workflow cancel (or an escalation) lets a stop under way finish', async () => {
  const { sim, outcome } = await stopCancelledWith(
    'CANCELLED',
    new ActivityCancellationDetails({ cancelRequested: true }),
  );
  expect(outcome).toEqual({ value: { stopped: true, instanceId: 'i-1' } });
  expect(sim.aborted).toBe(false);
  expect((await sim.instance('i-1'))?.state).toBe('stopped');
});

test('a worker shutting down, or an attempt the server timed out, still ends it', async () => {
  for (const [reason, details] of [
    ['WORKER_SHUTDOWN', new ActivityCancellationDetails({ workerShutdown: true })],
    ['TIMED_OUT', new ActivityCancellationDetails({ timedOut: true })],
  ] as const) {
    const { sim, outcome } = await stopCancelledWith(reason, details);
    expect(outcome).toHaveProperty('error');
    expect(sim.aborted).toBe(true);
    expect((await sim.instance('i-1'))?.state).toBe('running');
  }
});
