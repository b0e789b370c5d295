/**
 * One attempt of forceDetachVolume (activities/index.ts), in the SDK's activity test environment: a force
 * sends one forced detach and then waits for the volume to leave, for longer than a wait's hold window.
 * Every attempt that ends before the volume detached is one more forced detach, and the fifth gives the
 * volume up as `failed`.
 */
import { MockActivityEnvironment } from '@temporalio/testing';
import { expect, test } from 'vitest';
import { createActivities } from '../activities';
import { type CallOptions, ThrottledProviderError } from '../activities/provider';
import { MemorySimStore, SimulatedProvider } from '../activities/providers/simulated';
import type { VolumeRef } from '../common/request';

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
