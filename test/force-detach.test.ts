/**
 * One attempt of forceDetachVolume (activities/index.ts), in the SDK's activity test environment: a force
 * sends one forced detach and then waits for the volume to leave, for longer than a wait's hold window.
 * Every attempt that ends before the volume detached is one more forced detach, and the fifth gives the
 * volume up as `failed`. Then what a next attempt reports of a force an earlier one sent: a force cut off before its
 * answer (through stops on the dev server, a worker going away mid-call) counts; one the backend refused does not.
 * Last, that the server has recorded a force's moment before the force leaves, and what an attempt does when not.
 */
import {
  ActivityCancelledError,
  ActivityNotFoundError,
  ActivityPausedError,
  ActivityResetError,
  type Client,
} from '@temporalio/client';
import {
  ActivityCancellationDetails,
  ActivityFailure,
  ApplicationFailure,
  CancelledFailure,
  RetryState,
  TimeoutFailure,
  TimeoutType,
} from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { expect, test } from 'vitest';
import { createActivities } from '../activities';
import type { ConfirmHeartbeat } from '../activities/force-moment';
import { type CallOptions, type ForceAnswer, ThrottledProviderError } from '../activities/provider';
import { MemorySimStore, SimulatedProvider } from '../activities/providers/simulated';
import { workflowIdFor } from '../common/names';
import type { VolumeRef } from '../common/request';
import { type ForceResult, forceSentAt } from '../common/stop-activities';
import { forceWentOut } from '../workflows/volume-path';
import { connectClient, eventually, type Harness, startHarness } from './helpers';

/** The worker's activities over one simulated cloud, checking every 100 ms; `confirmHeartbeat` plays the server. */
function activitiesOver(sim: SimulatedProvider, holdMs?: number, confirmHeartbeat?: ConfirmHeartbeat) {
  return createActivities({
    providers: new Map([[sim.name, sim]]),
    defaultProvider: sim.name,
    pollIntervalMs: 100,
    ...(holdMs !== undefined ? { holdMs } : {}),
    ...(confirmHeartbeat ? { confirmHeartbeat } : {}),
  });
}

/** Starts a stop of one volume that never detaches by itself, and waits until its detach is waiting. */
async function stopUntilDetaching(
  h: Harness,
  sim: SimulatedProvider,
  instanceId: string,
  volumeId: string,
  behavior: NonNullable<Parameters<SimulatedProvider['addInstance']>[1][number]['behavior']> = { hang: true },
): Promise<void> {
  await sim.addInstance(instanceId, [{ volumeId, behavior }]);
  await h.stopflow.stop({ instanceId, volumes: [{ volumeId }] });
  const { stopflow } = h;
  await eventually(async () => (await stopflow.status(instanceId)).volumes[0]?.state === 'detaching', 'detaching');
}

/** One attempt of forceDetachVolume on vol-1 of i-1 (stuck: it never detaches by itself). */
async function forceOnce(sim: SimulatedProvider) {
  await sim.addInstance('i-1', [{ volumeId: 'vol-1', behavior: { hang: true } }]);
  // The waits give their slot back after 300 ms; a force must not.
  const activities = activitiesOver(sim, 300);
  const env = new MockActivityEnvironment({ heartbeatTimeoutMs: 10_000 });
  return env.run(activities.forceDetachVolume, { instanceId: 'i-1', volume: { volumeId: 'vol-1' } });
}

/** A cloud whose forced detaches take effect 1.5 s after they are accepted, as real ones may. */
class SlowForceCloud extends SimulatedProvider {
  forceCalls = 0;
  override async forceDetachVolume(
    instanceId: string,
    volume: VolumeRef,
    _options?: CallOptions,
  ): Promise<ForceAnswer> {
    this.forceCalls++;
    // Accepted: applied later whatever becomes of the call that sent it (its caller cancelled, say).
    setTimeout(() => void super.forceDetachVolume(instanceId, volume).catch(() => undefined), 1_500);
    return 'sent';
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
  override async forceDetachVolume(instanceId: string, volume: VolumeRef, options?: CallOptions): Promise<ForceAnswer> {
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
  override async forceDetachVolume(instanceId: string, volume: VolumeRef, options?: CallOptions): Promise<ForceAnswer> {
    this.forceCalls++;
    const answer = await super.forceDetachVolume(instanceId, volume, options);
    if (this.forceCalls > 1) return answer;
    return new Promise<never>((_, reject) => {
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
    await stopUntilDetaching(first, sim, instanceId, 'vol-stuck');
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
  const activities = activitiesOver(sim);
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

/** The simulated cloud as a backend that cannot tell a force it refused for a volume not attached. */
class UnreadableRefusalCloud extends SimulatedProvider {
  override readonly forceRefusesDetached = false;
}

test('a first force goes out unread where the backend refuses one of a detached volume; elsewhere the volume is read first', async () => {
  for (const sim of [new SimulatedProvider(new MemorySimStore()), new UnreadableRefusalCloud(new MemorySimStore())]) {
    await sim.addInstance('i-1', [{ volumeId: 'vol-1', behavior: { hang: true } }]);
    // The graceful detach won just before the force.
    await sim.store.mutate((cloud) => {
      const v = cloud.instances['i-1']?.volumes[0];
      if (v) v.state = 'detached';
    });
    const env = new MockActivityEnvironment({ heartbeatTimeoutMs: 10_000 });
    const beats: unknown[] = [];
    env.on('heartbeat', (details: unknown) => beats.push(details));
    const result: ForceResult = await env.run(activitiesOver(sim).forceDetachVolume, {
      instanceId: 'i-1',
      volume: { volumeId: 'vol-1' },
    });
    const volume = (await sim.instance('i-1'))?.volumes[0];
    expect(volume?.forced).toBe(false);
    expect(result).toMatchObject({ forced: false, attempts: 1 });
    if (sim.forceRefusesDetached) {
      // Sent unread and refused: its moment said, then taken back.
      expect(result.checks).toBe(0);
      expect(volume?.forceCalls).toBe(1);
      expect(sim.calls.get('getAttachmentStates') ?? 0).toBe(0);
      expect(beats[0]).toMatchObject({ forceSentAt: expect.any(String) });
      expect(beats.at(-1)).toBeUndefined();
    } else {
      expect(result.checks).toBe(1);
      expect(volume?.forceCalls).toBe(0);
    }
  }
});

test('a failed force attempt says in its failure whether a force went out: a refusal says none, a lost answer says one', async () => {
  const sim = new SimulatedProvider(new MemorySimStore());
  await sim.addInstance('i-1', [
    { volumeId: 'vol-refused', behavior: { hang: true, force: 'fails' } },
    { volumeId: 'vol-lost', behavior: { hang: true, force: 'answer-lost', forceTakesEffectAt: 99 } },
    { volumeId: 'vol-pinned', behavior: { hang: true, force: 'unsupported' } },
  ]);
  const activities = activitiesOver(sim);
  const target = (volumeId: string) => ({ instanceId: 'i-1', volume: { volumeId } });
  const failureOf = async (volumeId: string, heartbeatDetails?: unknown) => {
    const env = new MockActivityEnvironment({ heartbeatTimeoutMs: 10_000, attempt: 2, heartbeatDetails });
    const err = await env.run(activities.forceDetachVolume, target(volumeId)).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ApplicationFailure);
    return err as ApplicationFailure;
  };
  // Refused: nothing was forced, and the failure is as the backend's answer made it.
  const refused = await failureOf('vol-refused');
  expect(refused.message).toMatch(/still held by the host/);
  expect(refused.details ?? []).toEqual([]);
  // No answer: the force may have been applied. The failure keeps its type and retry, and says when it went out.
  const lost = await failureOf('vol-lost');
  expect(lost).toMatchObject({ type: 'TransientProviderError', nonRetryable: false });
  expect(forceSentAt(lost.details?.[0])).toEqual(expect.any(String));
  // A refusal after an earlier attempt's force: that force still went out, and the failure carries its moment.
  const earlier = '2026-12-02T01:00:00.000Z';
  const refusedAfter = await failureOf('vol-refused', { forceSentAt: earlier });
  expect(forceSentAt(refusedAfter.details?.[0])).toBe(earlier);
  expect(refusedAfter).toMatchObject({ type: 'TransientProviderError', nonRetryable: false });
  // A failure that ends the attempts stays final: the backend cannot force this volume, whatever went out before.
  const unsupported = await failureOf('vol-pinned', { forceSentAt: earlier });
  expect(unsupported).toMatchObject({ type: 'ForceUnsupported', nonRetryable: true });
  expect(forceSentAt(unsupported.details?.[0])).toBe(earlier);
});

test('a worker shutting down during a force attempt says the force went out: the server keeps no details of that end', async () => {
  const sim = new SlowForceCloud(new MemorySimStore());
  await sim.addInstance('i-1', [
    { volumeId: 'vol-1', behavior: { hang: true } },
    { volumeId: 'vol-2', behavior: { hang: true } },
  ]);
  const activities = activitiesOver(sim);
  const run = (volumeId: string, cancel: ActivityCancellationDetails) => {
    const env = new MockActivityEnvironment({ heartbeatTimeoutMs: 10_000 });
    // The context's `cancelled` promise rejects on a cancel; the activity listens to its signal instead.
    env.context.cancelled.catch(() => undefined);
    const attempt = env.run(activities.forceDetachVolume, { instanceId: 'i-1', volume: { volumeId } }).then(
      () => undefined,
      (e: unknown) => e,
    );
    // Once the force went out (it takes effect 1.5 s later), while the attempt waits for the volume to leave.
    setTimeout(() => env.cancel(cancel.workerShutdown ? 'WORKER_SHUTDOWN' : 'CANCELLED', cancel), 300);
    return attempt;
  };
  const shutDown = await run('vol-1', new ActivityCancellationDetails({ workerShutdown: true }));
  expect(shutDown).toBeInstanceOf(ApplicationFailure);
  expect(shutDown).toMatchObject({ type: 'WorkerShutdown', nonRetryable: false });
  expect(forceSentAt((shutDown as ApplicationFailure).details?.[0])).toEqual(expect.any(String));
  // The stop's own cancel is passed on as a cancel: the stop has decided, and no attempt follows.
  const cancelled = await run('vol-2', new ActivityCancellationDetails({ cancelRequested: true }));
  expect(cancelled).toBeInstanceOf(CancelledFailure);
});

test('a volume that detaches only after its five force attempts failed, one of which went out, is `force_detached` (version 10)', async () => {
  const sim = new SimulatedProvider(new MemorySimStore());
  const h = await startHarness({ sim });
  try {
    const instanceId = h.instanceId('forced-late');
    // Every force call fails as a timeout would; the fifth, the last attempt's, is the one the backend applied.
    await stopUntilDetaching(h, sim, instanceId, 'vol-late', {
      hang: true,
      force: 'answer-lost',
      forceTakesEffectAt: 5,
    });
    await h.stopflow.abort(instanceId, { reason: 'test' });
    const status = await h.stopflow.result(instanceId);
    expect(status.phase).toBe('stopped');
    // Five attempts failed; the read after them found the volume detached, by the force the last one sent.
    expect(status.volumes[0]).toMatchObject({ volumeId: 'vol-late', state: 'force_detached' });
    expect((await sim.instance(instanceId))?.volumes[0]).toMatchObject({ forceCalls: 5, forced: true });
    const events = (await h.client.workflow.getHandle(workflowIdFor(instanceId)).fetchHistory()).events ?? [];
    const patches = events
      .flatMap((e) => e.markerRecordedEventAttributes?.details?.['patch-data']?.payloads ?? [])
      .map((p) => (JSON.parse(Buffer.from(p.data ?? new Uint8Array()).toString()) as { id?: string }).id);
    expect(patches).toContain('force-sent-audited');
  } finally {
    await h.close();
  }
});

test('the workflow reads a force that went out from the last attempt’s failure details, or from a timed-out attempt’s last heartbeat', () => {
  const ended = (cause: Error) =>
    new ActivityFailure('force ended', 'forceDetachVolume', '7', RetryState.MAXIMUM_ATTEMPTS_REACHED, 'w', cause);
  const at = { forceSentAt: '2026-12-02T01:00:00.000Z' };
  expect(forceWentOut(ended(ApplicationFailure.create({ message: 'no answer', details: [at] })))).toBe(true);
  expect(forceWentOut(ended(ApplicationFailure.create({ message: 'refused' })))).toBe(false);
  // The last attempt's worker was lost: the server's timeout carries the details that attempt last heartbeated.
  expect(forceWentOut(ended(new TimeoutFailure('heartbeat', at, TimeoutType.HEARTBEAT)))).toBe(true);
  expect(forceWentOut(ended(new TimeoutFailure('heartbeat', undefined, TimeoutType.HEARTBEAT)))).toBe(false);
  expect(forceWentOut(ended(new CancelledFailure('cancelled', [at])))).toBe(false);
  expect(forceWentOut(undefined)).toBe(false);
});

/** A cloud that accepts a force and applies it only when told: after the worker that sent it is gone. */
class HeldForceCloud extends SimulatedProvider {
  forceCalls = 0;
  override async forceDetachVolume(
    _instanceId: string,
    _volume: VolumeRef,
    _options?: CallOptions,
  ): Promise<ForceAnswer> {
    this.forceCalls++;
    return 'sent';
  }
  apply(instanceId: string, volume: VolumeRef): Promise<ForceAnswer> {
    return super.forceDetachVolume(instanceId, volume);
  }
}

test('a worker shut down mid-force hands the force on through the server: the next worker reports the volume `force_detached`', async () => {
  const sim = new HeldForceCloud(new MemorySimStore());
  const first = await startHarness({ sim });
  let firstOpen = true;
  let second: Harness | undefined;
  let client: Client | undefined;
  try {
    // The first harness's client closes with its worker; this one reads the server after.
    client = await connectClient();
    const instanceId = first.instanceId('force-handover');
    await stopUntilDetaching(first, sim, instanceId, 'vol-1');
    await first.stopflow.abort(instanceId, { reason: 'test' });
    await eventually(async () => sim.forceCalls > 0, 'the force sent');
    // The SDK cancels the running attempt for the shutdown; the attempt fails saying its force went out.
    firstOpen = false;
    await first.close();
    const handle = client.workflow.getHandle(workflowIdFor(instanceId));
    const lastFailure = await eventually(async () => {
      const pending = (await handle.describe()).raw.pendingActivities ?? [];
      return pending.find((a) => a.activityType?.name === 'forceDetachVolume')?.lastFailure;
    }, 'the force attempt’s failure on the server');
    expect(lastFailure.applicationFailureInfo).toMatchObject({ type: 'WorkerShutdown', nonRetryable: false });
    const said = lastFailure.applicationFailureInfo?.details?.payloads?.[0]?.data;
    expect(said).toBeDefined();
    expect(forceSentAt(JSON.parse(Buffer.from(said ?? new Uint8Array()).toString()))).toEqual(expect.any(String));
    // The backend applies the force now; another worker takes the next attempt and finds the volume detached by it.
    await sim.apply(instanceId, { volumeId: 'vol-1' });
    second = await startHarness({ sim, taskQueue: first.taskQueue });
    const status = await second.stopflow.result(instanceId);
    expect(status.phase).toBe('stopped');
    expect(status.volumes[0]).toMatchObject({ volumeId: 'vol-1', state: 'force_detached' });
    expect(sim.forceCalls).toBe(1);
  } finally {
    if (firstOpen) await first.close();
    await second?.close();
    await client?.connection.close();
  }
});

/**
 * A cloud that, when a force reaches it, reads what the server holds of the force attempt's heartbeat. Once told
 * to, its state reads take 1.2 s: the attempt then heartbeats during the read before the force (every second), and
 * the SDK holds the heartbeat that says the force is leaving for up to a second after that one (its throttle).
 */
class ServerWitnessCloud extends SimulatedProvider {
  seen: unknown[] = [];
  slowReads = false;
  constructor(private readonly client: Client) {
    super(new MemorySimStore());
  }
  override async getAttachmentStates(
    ...args: Parameters<SimulatedProvider['getAttachmentStates']>
  ): ReturnType<SimulatedProvider['getAttachmentStates']> {
    if (this.slowReads) await new Promise((resolve) => setTimeout(resolve, 1_200));
    return super.getAttachmentStates(...args);
  }
  override async forceDetachVolume(instanceId: string, volume: VolumeRef, options?: CallOptions): Promise<ForceAnswer> {
    const { raw } = await this.client.workflow.getHandle(workflowIdFor(instanceId)).describe();
    const attempt = raw.pendingActivities?.find((a) => a.activityType?.name === 'forceDetachVolume');
    const data = attempt?.heartbeatDetails?.payloads?.[0]?.data;
    this.seen.push(data && data.length > 0 ? JSON.parse(Buffer.from(data).toString()) : null);
    return super.forceDetachVolume(instanceId, volume, options);
  }
}

test('the server has recorded a force attempt’s moment before its force reaches the backend: a worker killed just after leaves word of it', async () => {
  const client = await connectClient();
  let h: Harness | undefined;
  try {
    const sim = new ServerWitnessCloud(client);
    h = await startHarness({ sim });
    const instanceId = h.instanceId('force-recorded');
    await stopUntilDetaching(h, sim, instanceId, 'vol-1');
    sim.slowReads = true;
    await h.stopflow.abort(instanceId, { reason: 'test' });
    const status = await h.stopflow.result(instanceId);
    expect(status.volumes[0]).toMatchObject({ volumeId: 'vol-1', state: 'force_detached' });
    expect(sim.seen).toHaveLength(1);
    expect(forceSentAt(sim.seen[0])).toEqual(expect.any(String));
  } finally {
    await h?.close();
    await client.connection.close();
  }
});

test('a force whose moment the server did not record is not sent: a retryable failure that keeps an earlier force’s moment, or the SDK’s answer to the server’s news', async () => {
  const run = async (
    volumeId: string,
    answer: (env: MockActivityEnvironment) => Promise<void>,
    heartbeatDetails?: unknown,
  ) => {
    const sim = new SimulatedProvider(new MemorySimStore());
    await sim.addInstance('i-1', [{ volumeId, behavior: { hang: true } }]);
    let asked = 0;
    const env = new MockActivityEnvironment({ heartbeatTimeoutMs: 10_000, attempt: 2, heartbeatDetails });
    const activities = activitiesOver(sim, undefined, () => {
      asked++;
      return answer(env);
    });
    const failure = await env.run(activities.forceDetachVolume, { instanceId: 'i-1', volume: { volumeId } }).then(
      () => undefined,
      (e: unknown) => e,
    );
    return { failure, asked, volume: (await sim.instance('i-1'))?.volumes[0] };
  };
  const refuse = (err: Error) => async () => {
    throw err;
  };
  const nothingSent = { forceCalls: 0, forced: false };
  // No answer, three times: nothing went out, so the failure carries no moment.
  const unanswered = await run('vol-1', refuse(new Error('14 UNAVAILABLE: no connection')));
  expect(unanswered.asked).toBe(3);
  expect(unanswered.failure).toMatchObject({ type: 'ForceNotRecorded', nonRetryable: false });
  expect(forceSentAt((unanswered.failure as ApplicationFailure).details?.[0])).toBeUndefined();
  expect(unanswered.volume).toMatchObject(nothingSent);
  // After an earlier attempt's force, the failure still says that one went out.
  const earlier = '2026-12-02T01:00:00.000Z';
  const afterEarlier = await run('vol-2', refuse(new Error('14 UNAVAILABLE')), { forceSentAt: earlier });
  expect(afterEarlier.failure).toMatchObject({ type: 'ForceNotRecorded' });
  expect(forceSentAt((afterEarlier.failure as ApplicationFailure).details?.[0])).toBe(earlier);
  // The server's news is not asked again, and nothing is sent: paused and reset end as the SDK ends such attempts,
  // an attempt no longer current as ForceNotRecorded.
  const paused = await run('vol-3', refuse(new ActivityPausedError('paused')));
  expect(paused).toMatchObject({ asked: 1, failure: { type: 'ActivityPause' }, volume: nothingSent });
  const reset = await run('vol-4', refuse(new ActivityResetError('reset')));
  expect(reset).toMatchObject({ asked: 1, failure: { type: 'ActivityReset' }, volume: nothingSent });
  const gone = await run('vol-5', refuse(new ActivityNotFoundError('not found')));
  expect(gone).toMatchObject({ asked: 1, failure: { type: 'ForceNotRecorded' }, volume: nothingSent });
  // A cancel the server told of first ends as the SDK's cancel once the SDK hears of it too.
  const cancelled = await run('vol-6', async (env) => {
    setTimeout(() => env.cancel('CANCELLED'), 50);
    throw new ActivityCancelledError('cancelled');
  });
  expect(cancelled).toMatchObject({ asked: 1, volume: nothingSent });
  expect(cancelled.failure).toBeInstanceOf(CancelledFailure);
  // A cancel while the server is still being asked ends the attempt at once, with nothing sent.
  const cutOff = await run('vol-7', (env) => {
    setTimeout(() => env.cancel('CANCELLED'), 50);
    return new Promise<void>(() => undefined);
  });
  expect(cutOff).toMatchObject({ asked: 1, volume: nothingSent });
  expect(cutOff.failure).toBeInstanceOf(CancelledFailure);
});

test('a throttled force was refused, not sent: its moment is taken back, and it is recorded again before it goes out again', async () => {
  const sim = new ThrottlingForceCloud(1);
  await sim.addInstance('i-1', [{ volumeId: 'vol-1', behavior: { hang: true } }]);
  // Everything the attempt told of its force, in order: the server's records and the SDK's heartbeats.
  const told: Array<{ via: 'server' | 'sdk'; forceSentAt: string | undefined }> = [];
  const env = new MockActivityEnvironment({ heartbeatTimeoutMs: 10_000 });
  env.on('heartbeat', (details: unknown) => told.push({ via: 'sdk', forceSentAt: forceSentAt(details) }));
  const activities = activitiesOver(sim, undefined, async (_taskToken, details) => {
    told.push({ via: 'server', forceSentAt: forceSentAt(details) });
  });
  const result = await env.run(activities.forceDetachVolume, { instanceId: 'i-1', volume: { volumeId: 'vol-1' } });
  expect(result).toMatchObject({ forced: true });
  expect(sim.forceCalls).toBe(2);
  expect((await sim.instance('i-1'))?.volumes[0]).toMatchObject({ forceCalls: 1, forced: true });
  // Each try's moment reached the server before that try left; the refused one's was taken back in between.
  const recorded = told.flatMap((t, i) => (t.via === 'server' ? [i] : []));
  expect(recorded).toHaveLength(2);
  const [first, second] = recorded.map((i) => told[i]?.forceSentAt);
  expect(first).toEqual(expect.any(String));
  expect(second).toEqual(expect.any(String));
  expect(Date.parse(second ?? '')).toBeGreaterThanOrEqual(Date.parse(first ?? ''));
  const between = told.slice((recorded[0] ?? 0) + 1, recorded[1]);
  expect(between).toContainEqual({ via: 'sdk', forceSentAt: undefined });
  // Until the force went out for good, the attempt's last word is the second moment.
  expect(told.at(-1)?.forceSentAt).toBe(second);
});
