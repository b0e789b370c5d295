/**
 * An instance stop under way (stopInstanceIfDetached, activities/index.ts), in the SDK's activity test environment:
 * the cancel a workflow asks for (its own cancel, an escalation) lets it finish, as the contract says; a worker
 * shutting down, or an attempt the server timed out, still ends it.
 */
import { Context, type Info } from '@temporalio/activity';
import { ActivityCancellationDetails } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { expect, test } from 'vitest';
import { createActivities } from '../activities';
import type { CallOptions } from '../activities/provider';
import { MemorySimStore, SimulatedProvider } from '../activities/providers/simulated';
import { activityAttemptInfo } from './helpers';

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

/** stopInstanceIfDetached on i-1 (no volumes) of `sim`, in an activity environment; its outcome as a value. */
async function stopInstanceOf(sim: SimulatedProvider, info: Partial<Info> = {}) {
  await sim.addInstance('i-1', []);
  const activities = createActivities({
    providers: new Map([[sim.name, sim]]),
    defaultProvider: sim.name,
    pollIntervalMs: 100,
  });
  const env = new MockActivityEnvironment({ ...activityAttemptInfo(), ...info });
  const outcome = env.run(activities.stopInstanceIfDetached, { instanceId: 'i-1' }).then(
    (value) => ({ value }),
    (error: unknown) => ({ error }),
  );
  return { env, outcome };
}

async function stopCancelledWith(
  reason: 'CANCELLED' | 'WORKER_SHUTDOWN' | 'TIMED_OUT',
  details: ActivityCancellationDetails,
) {
  const sim = new SlowStopCloud(new MemorySimStore());
  const { env, outcome } = await stopInstanceOf(sim);
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

test('a cancel that came before the stop call was under way stops it being sent, even if the listing ignored it', async () => {
  // The listing does not look at its signal (a local file read, say) and answers after the cancel landed.
  class SlowList extends SimulatedProvider {
    stopCalls = 0;
    override async listAttachedVolumes(instanceId: string, options?: CallOptions) {
      const activity = Context.current().cancellationSignal;
      for (let waited = 0; !activity.aborted && waited < 10_000; waited += 20)
        await new Promise((r) => setTimeout(r, 20));
      return super.listAttachedVolumes(instanceId, { ...options, signal: undefined });
    }
    override async stopInstance(instanceId: string, options?: CallOptions) {
      this.stopCalls++;
      return super.stopInstance(instanceId, options);
    }
  }
  const sim = new SlowList(new MemorySimStore());
  const { env, outcome } = await stopInstanceOf(sim);
  await new Promise((r) => setTimeout(r, 100));
  env.cancel('CANCELLED', new ActivityCancellationDetails({ cancelRequested: true }));
  expect(await outcome).toHaveProperty('error');
  expect(sim.stopCalls).toBe(0);
  expect((await sim.instance('i-1'))?.state).toBe('running');
});

test('an attempt that waited long in the queue still has its whole start-to-close for the stop', async () => {
  // Scheduled 20 minutes ago (a backlog, workers down for a while); start-to-close runs from the start.
  const sim = new SlowStopCloud(new MemorySimStore());
  const { outcome } = await stopInstanceOf(sim, { currentAttemptScheduledTimestampMs: Date.now() - 20 * 60_000 });
  expect(await outcome).toEqual({ value: { stopped: true, instanceId: 'i-1' } });
  expect(sim.aborted).toBe(false);
});
