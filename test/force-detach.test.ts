/**
 * One attempt of forceDetachVolume (activities/index.ts), in the SDK's activity test environment: a force
 * sends one forced detach and then waits for the volume to leave, for longer than a wait's hold window.
 * Every attempt that ends before the volume detached is one more forced detach, and the fifth gives the
 * volume up as `failed`. Then what a next attempt reports of a force an earlier one sent: a force cut off before its
 * answer (through stops on the dev server, a worker going away mid-call) counts; one the backend refused does not.
 */
import { MockActivityEnvironment } from '@temporalio/testing';
import { expect, test } from 'vitest';
import { createActivities } from '../activities';
import { type CallOptions, ThrottledProviderError } from '../activities/provider';
import { MemorySimStore, SimulatedProvider } from '../activities/providers/simulated';
import { workflowIdFor } from '../common/names';
import type { VolumeRef } from '../common/request';
import { eventually, type Harness, startHarness } from './helpers';

/** One attempt of forceDetachVolume on vol-1 of i-1 (stuck: it never detaches by itself). */
async function forceOnce(sim: SimulatedProvider) {
  await sim.addInstance('i-1', [{ volumeId: 'vol-1', behavior: { hang: true } }]);
  const activities = createActivities({
    providers: new Map([[sim.name, sim]]),
    defaultProvider: sim.name,
    pollIntervalMs: 100,
    // The waits give their slot back after 300 ms; a force must not.
    holdMs: 300,
  });
  const env = new MockActivityEnvironment({ heartbeatTimeoutMs: 10_000 });
  return env.run(activities.forceDetachVolume, { instanceId: 'i-1', volume: { volumeId: 'vol-1' } });
}

/** A cloud whose forced detaches take effect 1.5 s after they are accepted, as real ones may. */
class SlowForceCloud extends SimulatedProvider {
  forceCalls = 0;
  override async forceDetachVolume(instanceId: string, volume: VolumeRef, options?: CallOptions): Promise<void> {
    this.forceCalls++;
    setTimeout(() => void super.forceDetachVolume(instanceId, volume, options), 1_500);
  }
}

test("a force that takes longer than a wait's hold window is sent once and waited for", async () => {
  const sim = new SlowForceCloud(new MemorySimStore());
  const result = await forceOnce(sim);
  expect(result).toMatchObject({ forced: true, attempts: 1 });
  expect(sim.forceCalls).toBe(1);
  const volume = (await sim.instance('i-1'))?.volumes.find((v) => v.volumeId === 'vol-1');
  expect(volume).toMatchObject({ state: 'detached', forced: true });
});

/** A cloud that refuses the first forced detaches as throttled (RequestLimitExceeded), then accepts. */
class ThrottlingForceCloud extends SimulatedProvider {
  forceCalls = 0;
  constructor(private readonly throttledForces: number) {
    super(new MemorySimStore());
  }
  override async forceDetachVolume(instanceId: string, volume: VolumeRef, options?: CallOptions): Promise<void> {
    this.forceCalls++;
    if (this.forceCalls <= this.throttledForces) throw new ThrottledProviderError('RequestLimitExceeded', 50);
    return super.forceDetachVolume(instanceId, volume, options);
  }
}

test('a force the backend throttles is sent again in its attempt: throttling does not use up its five attempts', async () => {
  const sim = new ThrottlingForceCloud(6);
  const result = await forceOnce(sim);
  expect(result).toMatchObject({ forced: true, attempts: 1 });
  // Six refused, one done: the volume was forced once.
  expect(sim.forceCalls).toBe(7);
  expect((await sim.instance('i-1'))?.volumes[0]).toMatchObject({ state: 'detached', forced: true, forceCalls: 1 });
});

/**
 * A cloud that applies the first forced detach and never answers it (a worker dying mid-call looks the same to the next
 * attempt): the attempt is cut off, and the next finds the volume detached.
 */
class UnansweredForceCloud extends SimulatedProvider {
  forceCalls = 0;
  override async forceDetachVolume(instanceId: string, volume: VolumeRef, options?: CallOptions): Promise<void> {
    this.forceCalls++;
    await super.forceDetachVolume(instanceId, volume, options);
    if (this.forceCalls > 1) return;
    await new Promise<never>((_, reject) => {
      const signal = options?.signal;
      if (signal?.aborted) reject(signal.reason);
      signal?.addEventListener('abort', () => reject(signal.reason), { once: true });
    });
  }
}

test('a force cut off before its answer is reported by the next attempt as forced: the audit never hides a force', async () => {
  const sim = new UnansweredForceCloud(new MemorySimStore());
  const first = await startHarness({ sim });
  let second: Harness | undefined;
  try {
    const instanceId = first.instanceId('cut-off-force');
    await sim.addInstance(instanceId, [{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
    await first.stopflow.stop({ instanceId, volumes: [{ volumeId: 'vol-stuck' }] });
    await eventually(
      async () => (await first.stopflow.status(instanceId)).volumes[0]?.state === 'detaching',
      'waiting',
    );
    await first.stopflow.abort(instanceId, { reason: 'test' });
    // The first worker is the only one yet, so the force runs there (with both polling, it could run on the second,
    // which would then hold the unanswered call until the attempt's 5 min start-to-close).
    await eventually(async () => sim.forceCalls === 1, 'the force to reach the cloud');
    second = await startHarness({ sim, taskQueue: first.taskQueue });
    // The worker running the force goes away mid-call; the force's next attempt runs on the second.
    await first.close();
    const status = await second.stopflow.result(instanceId);
    expect(status.phase).toBe('stopped');
    expect(status.volumes[0]).toMatchObject({ volumeId: 'vol-stuck', state: 'force_detached' });
    // Sent once: the next attempt found the volume detached and sent nothing.
    expect(sim.forceCalls).toBe(1);
    const events = (await second.client.workflow.getHandle(workflowIdFor(instanceId)).fetchHistory()).events ?? [];
    const forceScheduled = events
      .filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'forceDetachVolume')
      .map((e) => String(e.eventId));
    const forceAttempts = events
      .filter((e) => forceScheduled.includes(String(e.activityTaskStartedEventAttributes?.scheduledEventId)))
      .map((e) => e.activityTaskStartedEventAttributes?.attempt ?? 0);
    expect(Math.max(...forceAttempts)).toBeGreaterThanOrEqual(2);
  } finally {
    await second?.close();
    await first.close().catch(() => undefined);
  }
});

test('a force the backend refused is not counted: a volume that then detaches by itself is `detached`', async () => {
  const sim = new SimulatedProvider(new MemorySimStore());
  await sim.addInstance('i-1', [{ volumeId: 'vol-1', behavior: { hang: true, force: 'fails' } }]);
  const activities = createActivities({
    providers: new Map([[sim.name, sim]]),
    defaultProvider: sim.name,
    pollIntervalMs: 100,
  });
  const target = { instanceId: 'i-1', volume: { volumeId: 'vol-1' } };
  const refused = new MockActivityEnvironment({ heartbeatTimeoutMs: 10_000 });
  const beats: unknown[] = [];
  refused.on('heartbeat', (details: unknown) => beats.push(details));
  await expect(refused.run(activities.forceDetachVolume, target)).rejects.toThrow(/still held by the host/);
  // Said before the request left, then taken back once the backend answered no.
  expect(beats[0]).toMatchObject({ forceSentAt: expect.any(String) });
  expect(beats.at(-1)).toBeUndefined();
  // A next attempt whose earlier one was cut off before any answer counts that force; one told "no" does not.
  await sim.store.mutate((cloud) => {
    const v = cloud.instances['i-1']?.volumes[0];
    if (v) v.state = 'detached';
  });
  const afterCutOff = new MockActivityEnvironment({
    heartbeatTimeoutMs: 10_000,
    attempt: 2,
    heartbeatDetails: { forceSentAt: new Date().toISOString() },
  });
  expect(await afterCutOff.run(activities.forceDetachVolume, target)).toMatchObject({ forced: true, attempts: 2 });
  const afterRefusal = new MockActivityEnvironment({
    heartbeatTimeoutMs: 10_000,
    attempt: 2,
    heartbeatDetails: beats.at(-1),
  });
  expect(await afterRefusal.run(activities.forceDetachVolume, target)).toMatchObject({ forced: false, attempts: 2 });
});
