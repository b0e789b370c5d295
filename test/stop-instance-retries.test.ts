/**
 * One attempt of stopInstanceIfDetached (activities/index.ts), in the SDK's activity test environment: how many
 * stop calls reach the backend when a call fails. A call the backend refused (throttled) was not made, so the next
 * try sends it again without asking; a call whose answer was lost may have stopped the instance, so the next try
 * asks first and sends nothing when it reads stopped; so does a retried attempt, whose earlier one may have stopped
 * it. Every try lists what is attached first, whatever happened before (the invariant's side: test/invariant.test.ts).
 */
import { MockActivityEnvironment } from '@temporalio/testing';
import { expect, test } from 'vitest';
import { createActivities } from '../activities';
import { type CallOptions, ThrottledProviderError, TransientProviderError } from '../activities/provider';
import { MemorySimStore, SimulatedProvider } from '../activities/providers/simulated';
import { activityAttemptInfo } from './helpers';

type StopAnswer = 'throttled' | 'lost' | 'ok';

/** A cloud whose stop calls answer as scripted, counting the calls and the "is it stopped?" reads. */
class ScriptedStopCloud extends SimulatedProvider {
  stopCalls = 0;
  stoppedReads = 0;
  constructor(private readonly answers: StopAnswer[]) {
    super(new MemorySimStore());
  }
  override async stopInstance(instanceId: string, options?: CallOptions): Promise<void> {
    const answer = this.answers[this.stopCalls++] ?? 'ok';
    if (answer === 'throttled') throw new ThrottledProviderError('RequestLimitExceeded', 20);
    await super.stopInstance(instanceId, options);
    if (answer === 'lost') throw new TransientProviderError(`stopInstance of ${instanceId}: the answer was lost`);
  }
  override async isInstanceStopped(instanceId: string, options?: CallOptions): Promise<boolean> {
    this.stoppedReads++;
    return super.isInstanceStopped(instanceId, options);
  }
}

async function stopOnce(cloud: ScriptedStopCloud, attempt = 1) {
  const activities = createActivities({
    providers: new Map([[cloud.name, cloud]]),
    defaultProvider: cloud.name,
    pollIntervalMs: 100,
  });
  // The activity's own start-to-close (15 min), not the test environment's 1 s: the stop call is bounded by it.
  const env = new MockActivityEnvironment({ ...activityAttemptInfo(), attempt });
  return env.run(activities.stopInstanceIfDetached, { instanceId: 'i-1' });
}

test('a throttled stop call was refused, not made: it is sent again without asking whether the instance stopped', async () => {
  const cloud = new ScriptedStopCloud(['throttled', 'throttled', 'ok']);
  await cloud.addInstance('i-1', [{ volumeId: 'vol-1' }]);
  await cloud.detachVolume('i-1', { volumeId: 'vol-1' });
  expect(await stopOnce(cloud)).toEqual({ stopped: true, instanceId: 'i-1' });
  expect(cloud.stopCalls).toBe(3);
  expect(cloud.stoppedReads).toBe(0);
  // Each try listed what is attached before its stop call.
  expect(cloud.calls.get('listAttachedVolumes')).toBe(3);
  expect((await cloud.instance('i-1'))?.state).toBe('stopped');
});

test('a stop call whose answer was lost is not sent again once the instance reads stopped', async () => {
  const cloud = new ScriptedStopCloud(['lost']);
  await cloud.addInstance('i-1', []);
  expect(await stopOnce(cloud)).toEqual({ stopped: true, instanceId: 'i-1' });
  expect(cloud.stopCalls).toBe(1);
  expect(cloud.stoppedReads).toBe(1);
  expect(cloud.calls.get('listAttachedVolumes')).toBe(2);
});

test('a retried attempt asks first: an instance its earlier attempt stopped gets no second call, one still running does', async () => {
  const stoppedBefore = new ScriptedStopCloud([]);
  await stoppedBefore.addInstance('i-1', []);
  await stoppedBefore.stopInstance('i-1'); // the earlier attempt's call, whose answer never came back
  stoppedBefore.stopCalls = 0;
  expect(await stopOnce(stoppedBefore, 2)).toEqual({ stopped: true, instanceId: 'i-1' });
  expect(stoppedBefore.stopCalls).toBe(0);
  expect(stoppedBefore.stoppedReads).toBe(1);

  const stillRunning = new ScriptedStopCloud([]);
  await stillRunning.addInstance('i-1', []);
  expect(await stopOnce(stillRunning, 2)).toEqual({ stopped: true, instanceId: 'i-1' });
  expect(stillRunning.stopCalls).toBe(1);
  expect(stillRunning.stoppedReads).toBe(1);
  expect((await stillRunning.instance('i-1'))?.state).toBe('stopped');
});

test('a retried attempt that finds a volume attached stops nothing, and does not ask whether the instance stopped', async () => {
  const cloud = new ScriptedStopCloud([]);
  await cloud.addInstance('i-1', [{ volumeId: 'vol-1' }]);
  const outcome = await stopOnce(cloud, 2);
  expect(outcome).toMatchObject({ stopped: false, instanceId: 'i-1', attached: [{ volumeId: 'vol-1' }] });
  expect(cloud.stopCalls).toBe(0);
  expect(cloud.stoppedReads).toBe(0);
});
