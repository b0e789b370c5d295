/**
 * The watch list (activities/detach-watch.ts), through the workflow on the dev server: a stuck volume's wait
 * (workflow version 8) holds no slot of the waits queue, is completed by task token when its volume detaches,
 * heartbeats what `stopflow status` shows, hears of a cancel at its next heartbeat, and goes back to the server
 * when its worker shuts down, for another worker to take at once. Then, against a fake server, the answers it
 * gives to what the server says (paused, reset, cancelled, unreachable).
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import {
  ActivityCancelledError,
  ActivityPausedError,
  ActivityResetError,
  type AsyncCompletionClient,
} from '@temporalio/client';
import { afterEach, describe, expect, test, vi } from 'vitest';
import { Backend } from '../activities/backend';
import { beatEveryMs, DetachWatch } from '../activities/detach-watch';
import { ForcedVolumes } from '../activities/forced-volumes';
import type { CallOptions, VolumeOfInstance } from '../activities/provider';
import { MemorySimStore, type SeedVolume, SimulatedProvider } from '../activities/providers/simulated';
import { workflowIdFor } from '../common/names';
import {
  DEFAULT_WATCH_HEARTBEAT_TIMEOUT_MS,
  UNSAID_WATCH_HEARTBEAT_TIMEOUT_MS,
  type VolumeTarget,
  watchHeartbeatTimeoutMs,
} from '../common/stop-activities';
import { eventually, type Harness, type HarnessOptions, startHarness } from './helpers';

const harnesses: Harness[] = [];
afterEach(async () => {
  await Promise.all(harnesses.splice(0).map((h) => h.close()));
});

async function harness(options: HarnessOptions = {}): Promise<Harness> {
  const h = await startHarness({ watchHeartbeatMs: 500, ...options });
  harnesses.push(h);
  return h;
}

const stuck: SeedVolume = { volumeId: 'vol-stuck', behavior: { hang: true } };

async function stuckStop(h: Harness): Promise<string> {
  const instanceId = h.instanceId('watched');
  await h.sim.addInstance(instanceId, [stuck]);
  await h.stopflow.stop({ instanceId, volumes: [{ volumeId: stuck.volumeId }] });
  return instanceId;
}

/** Lets a hung volume finish its detach, as a backend that recovers does. */
async function unstick(h: Harness, instanceId: string): Promise<void> {
  await h.sim.store.mutate((cloud) => {
    for (const v of cloud.instances[instanceId]?.volumes ?? []) v.behavior.hang = false;
  });
}

test('stuck volumes hold no wait slot: with one slot, three waits are watched at once, and each ends when its volume detaches', async () => {
  const h = await harness({ maxConcurrentWaits: 1 });
  const ids = [await stuckStop(h), await stuckStop(h), await stuckStop(h)];
  await eventually(async () => h.worker.watch.size === 3, 'three waits in the watch list');
  for (const id of ids) {
    const work = (await h.stopflow.progress(id)).volumes[0]?.work;
    expect(work).toMatchObject({ activityType: 'awaitDetached', state: 'started', attempt: 1 });
  }
  const [first, ...others] = ids as [string, string, string];
  await unstick(h, first);
  const status = await h.stopflow.result(first);
  expect(status.phase).toBe('stopped');
  expect(status.volumes[0]?.state).toBe('detached');
  expect((await h.sim.instance(first))?.volumes[0]?.forceCalls).toBe(0);
  // Completed by its task token: one scheduled wait, one completion, no retries in between in history.
  const events = (await h.client.workflow.getHandle(workflowIdFor(first)).fetchHistory()).events ?? [];
  const waits = events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'awaitDetached');
  expect(waits).toHaveLength(1);
  const waitCompleted = events.find(
    (e) => String(e.activityTaskCompletedEventAttributes?.scheduledEventId) === String(waits[0]?.eventId),
  );
  expect(waitCompleted).toBeDefined();
  // On its first attempt: the list answered for the one attempt it was given.
  const waitStarted = events.find(
    (e) => String(e.activityTaskStartedEventAttributes?.scheduledEventId) === String(waits[0]?.eventId),
  );
  expect(waitStarted?.activityTaskStartedEventAttributes?.attempt).toBe(1);
  for (const id of others) expect((await h.stopflow.status(id)).phase).toBe('stopping');
  await eventually(async () => h.worker.watch.size === 2, 'the detached volume to leave the watch list');

  // An abort forces the others at once; their waits leave the list (the force's news, or their next heartbeat).
  for (const id of others) await h.stopflow.abort(id, { reason: 'test' });
  for (const id of others) {
    const ended = await h.stopflow.result(id);
    expect(ended.phase).toBe('stopped');
    expect(ended.volumes[0]?.state).toBe('force_detached');
  }
  await eventually(async () => h.worker.watch.size === 0, 'the forced volumes to leave the watch list');
});

test('a watched wait is scheduled with its worker’s heartbeat timeout (version 9): 15 min by default, or the operator’s', async () => {
  const scheduledTimeoutSeconds = async (h: Harness, instanceId: string) => {
    await eventually(async () => h.worker.watch.size === 1, 'the wait in the watch list');
    const events = (await h.client.workflow.getHandle(workflowIdFor(instanceId)).fetchHistory()).events ?? [];
    const scheduled = events.find(
      (e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'awaitDetached',
    );
    const timeout = scheduled?.activityTaskScheduledEventAttributes?.heartbeatTimeout;
    await h.stopflow.abort(instanceId, { reason: 'test' });
    expect((await h.stopflow.result(instanceId)).phase).toBe('stopped');
    return Number(timeout?.seconds ?? Number.NaN);
  };
  const byDefault = await harness();
  expect(await scheduledTimeoutSeconds(byDefault, await stuckStop(byDefault))).toBe(900);
  const configured = await harness({ watchHeartbeatTimeoutMs: 45_000 });
  expect(await scheduledTimeoutSeconds(configured, await stuckStop(configured))).toBe(45);
});

test('the list heartbeats each wait: `stopflow status` shows its checks, and a lost worker would be noticed', async () => {
  const h = await harness();
  const instanceId = await stuckStop(h);
  const work = await eventually(async () => {
    const w = (await h.stopflow.progress(instanceId)).volumes[0]?.work;
    return w?.checks !== undefined && w.checks >= 2 ? w : undefined;
  }, 'a heartbeat with checks counted');
  expect(work).toMatchObject({ activityType: 'awaitDetached', backendState: 'detaching', attempt: 1 });
  expect(work.waitingSince).toBeDefined();
  expect(work.lastHeartbeatAt).toBeDefined();
});

test('a cancel of the stop reaches its watched wait at the next heartbeat: the stop ends, nothing is forced, the list lets go', async () => {
  const h = await harness();
  const instanceId = await stuckStop(h);
  await eventually(async () => h.worker.watch.size === 1, 'the wait in the watch list');
  await h.client.workflow.getHandle(workflowIdFor(instanceId)).cancel();
  await expect(h.stopflow.result(instanceId)).rejects.toThrow(/cancelled/);
  await eventually(async () => h.worker.watch.size === 0, 'the list to hear of the cancel');
  const cloud = await h.sim.instance(instanceId);
  expect(cloud?.state).toBe('running');
  expect(cloud?.volumes[0]?.forceCalls).toBe(0);
});

test('a terminated stop’s watched wait is let go at the next heartbeat: the server no longer knows it, and its volume is checked no more', async () => {
  const h = await harness();
  const instanceId = await stuckStop(h);
  await eventually(async () => h.worker.watch.size === 1, 'the wait in the watch list');
  await h.client.workflow.getHandle(workflowIdFor(instanceId)).terminate('operator gave up');
  await eventually(async () => h.worker.watch.size === 0, 'the list to let the terminated stop’s wait go');
  // No more checks of the volume for a stop that is gone: the list lets go once its checks have ended, and the
  // waits' pause at this harness's settings is at most 1 s, so a list still checking would show within 3 s.
  const checks = () => h.sim.calls.get('getAttachmentStates') ?? 0;
  const checksWhenLetGo = checks();
  expect(checksWhenLetGo).toBeGreaterThan(0);
  await new Promise((resolve) => setTimeout(resolve, 3_000));
  expect(checks()).toBe(checksWhenLetGo);
  const cloud = await h.sim.instance(instanceId);
  expect(cloud?.state).toBe('running');
  expect(cloud?.volumes[0]?.forceCalls).toBe(0);
});

test('a worker that shuts down hands its watched waits back: another worker takes them before any timeout', async () => {
  const first = await harness();
  const instanceId = await stuckStop(first);
  await eventually(async () => first.worker.watch.size === 1, 'the wait in the first worker’s list');
  await first.close();
  harnesses.splice(harnesses.indexOf(first), 1);
  const second = await harness({ taskQueue: first.taskQueue, sim: first.sim });
  // Well within the 15 min heartbeat timeout a dead worker's wait would need: handed back, retried within a second.
  await eventually(async () => second.worker.watch.size === 1, 'the second worker to watch the wait', 60_000);
  const progress = await second.stopflow.progress(instanceId);
  expect(progress.volumes[0]?.work?.attempt).toBeGreaterThanOrEqual(2);
  expect(progress.volumes[0]?.work?.lastFailure).toMatch(/StillDetaching|still detaching/);
  await unstick(second, instanceId);
  const status = await second.stopflow.result(instanceId);
  expect(status.phase).toBe('stopped');
  expect(status.volumes[0]?.state).toBe('detached');
});

test('an operator who pauses a watched wait pauses it: the list lets go at its next heartbeat, and an unpause brings it back', async () => {
  const h = await harness();
  const instanceId = await stuckStop(h);
  await eventually(async () => h.worker.watch.size === 1, 'the wait in the watch list');
  const execution = { workflowId: workflowIdFor(instanceId) };
  const id = (await h.stopflow.progress(instanceId)).volumes[0]?.work?.activityId ?? null;
  expect(id).not.toBeNull();
  await h.client.workflowService.pauseActivity({
    namespace: 'default',
    execution,
    id,
    identity: 'test',
    reason: 'test',
  });
  await eventually(async () => h.worker.watch.size === 0, 'the list to let the paused wait go');
  await eventually(
    async () => (await h.stopflow.progress(instanceId)).volumes[0]?.work?.state === 'paused',
    'the wait paused on the server',
  );
  await h.client.workflowService.unpauseActivity({ namespace: 'default', execution, id, identity: 'test' });
  await eventually(async () => h.worker.watch.size === 1, 'the unpaused wait watched again');
  await unstick(h, instanceId);
  const status = await h.stopflow.result(instanceId);
  expect(status.phase).toBe('stopped');
  expect(status.volumes[0]?.state).toBe('detached');
});

/** What the list said to the server, by task token; each method can be told to throw. */
class FakeCompletion {
  readonly said: { call: string; arg?: unknown; token?: number | undefined; at?: number }[] = [];
  heartbeatError: (() => Error) | undefined;
  completeErrors: Error[] = [];
  async heartbeat(token: Uint8Array, details?: unknown): Promise<void> {
    this.said.push({ call: 'heartbeat', arg: details, token: token[0], at: Date.now() });
    if (this.heartbeatError) throw this.heartbeatError();
  }
  async complete(_token: Uint8Array, result: unknown): Promise<void> {
    this.said.push({ call: 'complete', arg: result });
    const error = this.completeErrors.shift();
    if (error) throw error;
  }
  async fail(_token: Uint8Array, err: unknown): Promise<void> {
    this.said.push({ call: 'fail', arg: err });
  }
  async reportCancellation(): Promise<void> {
    this.said.push({ call: 'reportCancellation' });
  }
  calls(name: string) {
    return this.said.filter((s) => s.call === name);
  }
}

describe('the watch list’s answers (a fake server, a simulated cloud)', () => {
  async function watched(options: { heartbeatTimeoutMs?: number } = {}) {
    const sim = new SimulatedProvider(new MemorySimStore());
    const instanceId = `i-${randomUUID().slice(0, 8)}`;
    await sim.addInstance(instanceId, [stuck]);
    await sim.detachVolume(instanceId, { volumeId: stuck.volumeId });
    const completion = new FakeCompletion();
    const warnings: string[] = [];
    const watch = new DetachWatch(completion as unknown as AsyncCompletionClient, new ForcedVolumes(), {
      pollIntervalMs: 50,
      maxPollIntervalMs: 100,
      heartbeatEveryMs: 100,
      warn: (message) => warnings.push(message),
    });
    const backend = new Backend(sim);
    const start = () =>
      watch.watch({
        taskToken: new Uint8Array([1]),
        backend,
        target: { instanceId, volume: { volumeId: stuck.volumeId } },
        lostAfterMs: 60_000,
        attemptDeadlineMs: Date.now() + 3_600_000,
        heartbeatTimeoutMs: options.heartbeatTimeoutMs ?? 120_000,
        beat: { checks: 0, state: 'detaching', since: new Date().toISOString() },
        announce: true,
      });
    return { sim, instanceId, completion, watch, warnings, start };
  }

  test.each([
    ['paused', () => new ActivityPausedError('paused'), 'fail', 'ActivityPause'],
    ['reset', () => new ActivityResetError('reset'), 'fail', 'ActivityReset'],
    ['cancelled', () => new ActivityCancelledError('cancelled'), 'reportCancellation', undefined],
  ] as const)(
    'a wait the server says is %s gets the answer the SDK’s worker would give, and leaves the list',
    async (_what, error, call, type) => {
      const w = await watched();
      w.completion.heartbeatError = error;
      expect(w.start()).toBe(true);
      await eventually(async () => w.watch.size === 0, 'the list to let go');
      expect(w.completion.calls(call)).toHaveLength(1);
      if (type) expect(w.completion.calls('fail')[0]?.arg).toMatchObject({ type });
      expect(w.completion.calls('complete')).toHaveLength(0);
    },
  );

  test('a completion the server could not take is sent again: a detach is never reported only by a timeout', async () => {
    const w = await watched();
    w.completion.completeErrors = [new Error('14 UNAVAILABLE: connection reset')];
    w.start();
    await unstickSim(w.sim, w.instanceId);
    await eventually(async () => w.watch.size === 0, 'the list to answer');
    expect(w.completion.calls('complete').map((c) => c.arg)).toEqual([
      expect.objectContaining({ outcome: 'detached' }),
      expect.objectContaining({ outcome: 'detached' }),
    ]);
  });

  test('heartbeats that cannot reach the server for a whole heartbeat timeout: the list lets go, says so, and answers nothing', async () => {
    const w = await watched({ heartbeatTimeoutMs: 1_000 });
    w.completion.heartbeatError = () => new Error('14 UNAVAILABLE: no connection');
    w.start();
    await eventually(async () => w.watch.size === 0, 'the list to let the lapsed wait go');
    expect(w.warnings.join('\n')).toMatch(/no heartbeat of a wait reached Temporal/);
    expect(w.completion.calls('complete')).toHaveLength(0);
    expect(w.completion.calls('fail')).toHaveLength(0);
  });

  test('waits taken over in one burst beat at phases of their own, each within one interval of its start', async () => {
    const w = await watched();
    const everyMs = 3_000;
    const watch = new DetachWatch(w.completion as unknown as AsyncCompletionClient, new ForcedVolumes(), {
      pollIntervalMs: 1_000,
      maxPollIntervalMs: 1_000,
      heartbeatEveryMs: everyMs,
    });
    const registeredAt = Date.now();
    const tokens = Array.from({ length: 12 }, (_, i) => i + 1);
    for (const token of tokens) {
      watch.watch({
        taskToken: new Uint8Array([token]),
        backend: new Backend(w.sim),
        target: { instanceId: w.instanceId, volume: { volumeId: stuck.volumeId } },
        lostAfterMs: 60_000,
        attemptDeadlineMs: Date.now() + 3_600_000,
        heartbeatTimeoutMs: 120_000,
        beat: { checks: 0, state: 'detaching', since: new Date().toISOString() },
        announce: false, // no beat after the first check: only the schedule's
      });
    }
    const firstBeats = await eventually(async () => {
      const first = new Map<number, number>();
      for (const c of w.completion.calls('heartbeat')) {
        if (c.token !== undefined && c.at !== undefined && !first.has(c.token)) first.set(c.token, c.at - registeredAt);
      }
      return first.size === tokens.length ? [...first.values()] : undefined;
    }, 'every wait’s first heartbeat');
    await watch.release();
    // All twelve at the interval's end (the old schedule) would put them within a few ms of each other; drawn at
    // random over 3 s, twelve fall within half a second of each other once in tens of millions of runs.
    expect(Math.max(...firstBeats) - Math.min(...firstBeats)).toBeGreaterThan(500);
    // Within one interval, give or take a loaded machine's late timers: well inside the server's timeout (1.5 intervals
    // of a 2 min timeout's 80 s beats).
    expect(Math.max(...firstBeats)).toBeLessThan(everyMs * 1.4);
  });

  test('the list keeps nothing of the attempt that registered a wait: its async-local context is let go', async () => {
    // The SDK's activity context (Activity, logger, cancellation) rides in an async-local store; a promise the list
    // keeps for a stuck volume must not have been made in it. Modelled with a store of our own, held only weakly here.
    const w = await watched();
    const collected = runInAStoreOfItsOwn(() => expect(w.start()).toBe(true));
    await eventually(async () => w.completion.calls('heartbeat').length > 0, 'the list to check and beat');
    await collected('the registering attempt’s context to be collected');
    expect(w.watch.size).toBe(1);
    await w.watch.release();
  });

  /** A wait watched with a minute's pause (no second check within a test), over a cloud whose answers can be held. */
  async function watchedSlowly(options: { lostAfterMs?: number; attemptDeadlineMs?: number } = {}) {
    class HeldAnswers extends SimulatedProvider {
      hold: Promise<void> | undefined;
      batches = 0;
      override async getAttachmentStates(targets: readonly VolumeOfInstance[], options?: CallOptions) {
        const states = await super.getAttachmentStates(targets, options);
        this.batches++; // counted once read: a force after this is one the answer cannot have seen
        await this.hold; // read first: a held answer is as old as the read
        return states;
      }
    }
    const sim = new HeldAnswers(new MemorySimStore());
    const instanceId = `i-${randomUUID().slice(0, 8)}`;
    await sim.addInstance(instanceId, [stuck]);
    await sim.detachVolume(instanceId, { volumeId: stuck.volumeId });
    const completion = new FakeCompletion();
    /** Counts the listeners the list keeps: one per wait, for as long as it watches the wait. */
    class CountedForced extends ForcedVolumes {
      listening = 0;
      override listen(key: string, wake: () => void): void {
        this.listening++;
        super.listen(key, wake);
      }
      override unlisten(key: string, wake: () => void): void {
        this.listening--;
        super.unlisten(key, wake);
      }
    }
    const forced = new CountedForced();
    const watch = new DetachWatch(completion as unknown as AsyncCompletionClient, forced, {
      pollIntervalMs: 60_000,
      maxPollIntervalMs: 60_000,
      heartbeatEveryMs: 60_000,
    });
    const backend = new Backend(sim);
    const target = { instanceId, volume: { volumeId: stuck.volumeId } };
    const start = () =>
      watch.watch({
        taskToken: new Uint8Array([1]),
        backend,
        target,
        lostAfterMs: options.lostAfterMs ?? 3_600_000,
        attemptDeadlineMs: options.attemptDeadlineMs ?? Date.now() + 3_600_000,
        heartbeatTimeoutMs: 300_000,
        beat: { checks: 0, state: 'detaching', since: new Date().toISOString() },
        announce: false,
      });
    /** The worker's news of a force of the volume, as forceDetachVolume tells it. */
    const tell = () => forced.forced(ForcedVolumes.key(sim.name, target));
    /** Forces the volume in the cloud, then tells the news. */
    const force = async () => {
      await sim.forceDetachVolume(instanceId, { volumeId: stuck.volumeId });
      tell();
    };
    return { sim, completion, watch, start, force, tell, forced, target };
  }

  test('a force while the wait pauses: the list looks again at once, and answers detached', async () => {
    const w = await watchedSlowly();
    w.start();
    await eventually(async () => w.sim.batches === 1, 'the first check');
    await w.force();
    await eventually(async () => w.watch.size === 0, 'the list to answer (its pause is a minute)', 10_000);
    expect(w.completion.calls('complete').map((c) => c.arg)).toEqual([{ outcome: 'detached', checks: 2 }]);
  });

  test('a force while a check is out: its answer may predate the force, so the list looks again without a pause', async () => {
    const w = await watchedSlowly();
    let answer = () => {};
    w.sim.hold = new Promise<void>((resolve) => {
      answer = resolve;
    });
    w.start();
    await eventually(async () => w.sim.batches === 1, 'the first check to be out');
    await w.force(); // the check out read `detaching` before this
    w.sim.hold = undefined;
    answer();
    await eventually(async () => w.watch.size === 0, 'the list to answer (its pause is a minute)', 10_000);
    expect(w.completion.calls('complete').map((c) => c.arg)).toEqual([{ outcome: 'detached', checks: 2 }]);
  });

  /** Holds the next check's answer (read first, answered on `answer()`), as a slow cloud does. */
  function holdAnswers(w: Awaited<ReturnType<typeof watchedSlowly>>): () => void {
    let answer = () => {};
    w.sim.hold = new Promise<void>((resolve) => {
      answer = resolve;
    });
    return () => {
      w.sim.hold = undefined;
      answer();
    };
  }

  test('an answer that may predate a force decides nothing of "lost": the list reads again, and answers detached', async () => {
    // lostAfterMs 0: the first `attached` read would report the request lost, and the stop would send it again.
    const w = await watchedSlowly({ lostAfterMs: 0 });
    await w.sim.store.mutate((cloud) => {
      const volume = cloud.instances[w.target.instanceId]?.volumes[0];
      if (volume) volume.state = 'attached'; // the backend dropped the request
    });
    const answer = holdAnswers(w);
    w.start();
    await eventually(async () => w.sim.batches === 1, 'the first check to be out');
    await w.force(); // the check out read `attached` before this
    answer();
    await eventually(async () => w.watch.size === 0, 'the list to answer (its pause is a minute)', 10_000);
    expect(w.completion.calls('complete').map((c) => c.arg)).toEqual([{ outcome: 'detached', checks: 2 }]);
  });

  test('a re-check asked for before the attempt’s hand-back time reads at once, though a pause would pass it', async () => {
    // Hand-back in 22.5 to 30 s (drawn), a pause of a minute: a pause would hand the wait back, the re-check has the time.
    const w = await watchedSlowly({ attemptDeadlineMs: Date.now() + 90_000 });
    const answer = holdAnswers(w);
    w.start();
    await eventually(async () => w.sim.batches === 1, 'the first check to be out');
    await w.force();
    answer();
    await eventually(async () => w.watch.size === 0, 'the list to answer', 10_000);
    expect(w.completion.calls('complete').map((c) => c.arg)).toEqual([{ outcome: 'detached', checks: 2 }]);
    expect(w.completion.calls('fail')).toHaveLength(0);
  });

  test('a re-check asked for past the attempt’s hand-back time hands the wait back instead: the next attempt reads', async () => {
    // Its hand-back time is a second away (the soonest the list allows): the held check answers after it.
    const w = await watchedSlowly({ attemptDeadlineMs: Date.now() });
    const answer = holdAnswers(w);
    w.start();
    await eventually(async () => w.sim.batches === 1, 'the first check to be out');
    await w.force();
    await new Promise((resolve) => setTimeout(resolve, 1_200));
    answer();
    await eventually(async () => w.watch.size === 0, 'the list to hand the wait back', 10_000);
    expect(w.completion.calls('fail')[0]?.arg).toMatchObject({ type: 'StillDetaching', nextRetryDelay: 1_000 });
    expect(w.completion.calls('complete')).toHaveLength(0);
    expect(w.sim.batches).toBe(1);
  });

  test('a force’s news, told in the forcing activity’s context, leaves nothing of that context in the list', async () => {
    const w = await watchedSlowly();
    w.start();
    await eventually(async () => w.sim.batches === 1, 'the first check');
    // News while the volume still reads stuck (a force that did not take yet) and the wait pauses: the list checks,
    // then pauses again, and neither the check nor that pause may have been scheduled in the news's context.
    const collected = runInAStoreOfItsOwn(() => w.tell());
    await eventually(async () => w.sim.batches === 2, 'the check the news asked for');
    await collected('the forcing activity’s context to be collected');
    expect(w.watch.size).toBe(1);
    // The list listens for the wait's whole stay: a second force is heard too.
    w.tell();
    await eventually(async () => w.sim.batches === 3, 'the check the second news asked for');
    await w.watch.release();
    expect(w.forced.listening).toBe(0);
    // And news after that asks for nothing: a check would gather and reach the cloud within a few tens of ms.
    w.tell();
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(w.sim.batches).toBe(3);
  });

  /**
   * Runs `body` on fake timers (real immediates and I/O) with Math.random answering `randoms` in turn (then the last
   * of them), and puts both back after, whatever happened. `until(ms)` moves the clock to `ms` after the start.
   */
  async function onFakeTimers(
    randoms: number[],
    body: (until: (ms: number) => Promise<void>, t0: number) => Promise<void>,
  ) {
    const pinned = vi.spyOn(Math, 'random');
    try {
      vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] });
      let drawn = 0;
      pinned.mockImplementation(() => randoms[Math.min(drawn++, randoms.length - 1)] ?? 0);
      const t0 = Date.now();
      // In steps of a second, each followed by a turn of the real event loop: a check's batch and its answer are
      // promises and real immediates between the fake timers.
      const until = async (ms: number) => {
        while (Date.now() < t0 + ms) {
          await vi.advanceTimersByTimeAsync(Math.min(1_000, t0 + ms - Date.now()));
          await new Promise((resolve) => setImmediate(resolve));
        }
      };
      await body(until, t0);
    } finally {
      vi.useRealTimers();
      pinned.mockRestore();
    }
  }

  /** A wait of a 15 min heartbeat timeout and an hour's attempt, registered at `t0`. */
  function watchFor(watch: DetachWatch, backend: Backend, target: VolumeTarget, t0: number, token = 1) {
    watch.watch({
      taskToken: new Uint8Array([token]),
      backend,
      target,
      lostAfterMs: 3_600_000,
      attemptDeadlineMs: t0 + 3_600_000,
      heartbeatTimeoutMs: DEFAULT_WATCH_HEARTBEAT_TIMEOUT_MS,
      beat: { checks: 0, state: 'detaching', since: new Date(t0).toISOString() },
      announce: false,
    });
  }

  test('a 15 min timeout: beats 13 min apart, a missed beat tried again until just before the timeout, then let go', async () => {
    const w = await watchedSlowly();
    holdAnswers(w); // the first check never answers (nor times out: a day's call timeout): only the beats run
    const warnings: string[] = [];
    // The first draw is the hand-back moment (no check answers, so no hand-back), the second the beats' phase.
    await onFakeTimers([0.5, 0.999], async (until, t0) => {
      const watch = new DetachWatch(w.completion as unknown as AsyncCompletionClient, new ForcedVolumes(), {
        pollIntervalMs: 60_000,
        maxPollIntervalMs: 60_000,
        warn: (message) => warnings.push(message),
      });
      try {
        watchFor(watch, new Backend(w.sim, undefined, 86_400_000), w.target, t0);
        const beats = () => w.completion.calls('heartbeat').map((c) => (c.at ?? Number.NaN) - t0);
        // Two thirds (10 min) would have beaten twice by 21 min; 13 min apart, the first at 0.999 of 13 min.
        await until(1_300_000);
        expect(beats()).toEqual([779_220]);
        await until(1_560_000);
        expect(beats()).toEqual([779_220, 1_559_220]);
        // A short outage over the third beat (2,339 s): it and its first try fail, the second try gets through.
        w.completion.heartbeatError = () => new Error('14 UNAVAILABLE: connection reset');
        await until(2_346_000);
        w.completion.heartbeatError = undefined;
        await until(2_400_000);
        expect(beats().slice(2)).toEqual([2_339_220, 2_344_220, 2_354_220]);
        expect(watch.size).toBe(1);
        // Then the server cannot be reached at all: the fourth beat (3,119 s) and its tries fail, 20 s apart at most.
        w.completion.heartbeatError = () => new Error('14 UNAVAILABLE: no connection');
        const lastTryAt = 2_354_220 + DEFAULT_WATCH_HEARTBEAT_TIMEOUT_MS - 10_000; // from when that beat was sent
        await until(lastTryAt - 1_000);
        expect(watch.size).toBe(1);
        expect(beats().slice(5)).toEqual([
          3_119_220, 3_124_220, 3_134_220, 3_154_220, 3_174_220, 3_194_220, 3_214_220, 3_234_220,
        ]);
        expect(warnings).toEqual([]);
        // The last try, 10 s before the server's timeout would lapse: its failure lets go, and nothing beats after.
        await until(lastTryAt + 1_000);
        expect(beats().at(-1)).toBe(lastTryAt);
        expect(watch.size).toBe(0);
        expect(warnings.join('\n')).toMatch(/no heartbeat of a wait reached Temporal/);
        const beaten = beats().length;
        await until(lastTryAt + DEFAULT_WATCH_HEARTBEAT_TIMEOUT_MS);
        expect(beats()).toHaveLength(beaten);
        expect(w.completion.calls('complete')).toHaveLength(0);
        expect(w.completion.calls('fail')).toHaveLength(0);
      } finally {
        w.completion.heartbeatError = undefined;
        await watch.release();
      }
    });
  });

  test('attempts are handed back at moments drawn over their last quarter hour: a burst of waits is not handed back as one', async () => {
    const w = await watched();
    const target = { instanceId: w.instanceId, volume: { volumeId: stuck.volumeId } };
    // Draws in turn: the first wait's hand-back moment (0.999), its beats' phase, the second's (0), its phase.
    await onFakeTimers([0.999, 0.5, 0, 0.5], async (until, t0) => {
      const watch = new DetachWatch(w.completion as unknown as AsyncCompletionClient, new ForcedVolumes(), {
        pollIntervalMs: 60_000,
        maxPollIntervalMs: 60_000,
      });
      try {
        const backend = new Backend(w.sim);
        watchFor(watch, backend, target, t0, 1);
        watchFor(watch, backend, target, t0, 2);
        // Their last answers are due at 59 min. The first's moment: 0.999 of 14.75 min (a quarter of it) before, at
        // 44.26 min, so its check at about 44 min, whose pause would pass it, hands it back. The second's: 59 min, so
        // its check at about 58 min.
        await until(2_580_000);
        expect(watch.size).toBe(2);
        await until(2_700_000);
        expect(watch.size).toBe(1);
        await until(3_420_000);
        expect(watch.size).toBe(1);
        await until(3_540_000);
        expect(watch.size).toBe(0);
        const handedBack = w.completion.calls('fail').map((c) => c.arg);
        expect(handedBack).toEqual([
          expect.objectContaining({ type: 'StillDetaching', nextRetryDelay: 1_000 }),
          expect.objectContaining({ type: 'StillDetaching', nextRetryDelay: 1_000 }),
        ]);
        expect(w.completion.calls('complete')).toHaveLength(0);
      } finally {
        await watch.release();
      }
    });
  });

  test('release hands a wait back with its latest details, and a wait offered after it is refused', async () => {
    const w = await watched();
    w.start();
    await eventually(async () => w.completion.calls('heartbeat').length > 0, 'the first heartbeat');
    await w.watch.release();
    expect(w.watch.size).toBe(0);
    const failed = w.completion.calls('fail')[0]?.arg;
    expect(failed).toMatchObject({ type: 'StillDetaching', nextRetryDelay: 1_000 });
    expect(w.completion.said.at(-2)).toMatchObject({
      call: 'heartbeat',
      arg: expect.objectContaining({ state: 'detaching' }),
    });
    expect(w.start()).toBe(false);
  });
});

test('the workflow holds a worker’s heartbeat timeout to 10 s-30 min, and takes 5 min from a worker that says nothing', () => {
  const answer = (ms?: number) =>
    watchHeartbeatTimeoutMs({
      requests: 1,
      state: 'detaching',
      ...(ms === undefined ? {} : { watchHeartbeatTimeoutMs: ms }),
    });
  // What 0.2.5-0.2.7 recorded histories were made with: the worker's default moved (15 min), this must not.
  expect(answer()).toBe(UNSAID_WATCH_HEARTBEAT_TIMEOUT_MS);
  expect(UNSAID_WATCH_HEARTBEAT_TIMEOUT_MS).toBe(300_000);
  expect(answer(DEFAULT_WATCH_HEARTBEAT_TIMEOUT_MS)).toBe(900_000);
  expect(answer(45_000)).toBe(45_000);
  expect(answer(1)).toBe(10_000);
  expect(answer(24 * 3_600_000)).toBe(1_800_000);
  expect(answer(Number.NaN)).toBe(UNSAID_WATCH_HEARTBEAT_TIMEOUT_MS);
});

test('the list beats a third of a short heartbeat timeout early, and 2 min early for a long one: beats stay rare', () => {
  // Up to 6 min, as before 0.2.8: version 8's 2 min and 0.2.5-0.2.7's 5 min beat as their waits always have.
  expect(beatEveryMs(120_000)).toBe(80_000);
  expect(beatEveryMs(300_000)).toBe(200_000);
  expect(beatEveryMs(360_000)).toBe(240_000);
  // Past it, two thirds would beat every 10 min of 15: 1.3 times as often as 13 min, for a margin nothing needs.
  expect(beatEveryMs(DEFAULT_WATCH_HEARTBEAT_TIMEOUT_MS)).toBe(780_000);
  expect(beatEveryMs(1_800_000)).toBe(1_680_000);
  // The smallest timeouts: 10 s (the range's floor) beats a third early; a test's 1 s is held to the 1 s floor.
  expect(beatEveryMs(10_000)).toBe(6_667);
  expect(beatEveryMs(1_000)).toBe(1_000);
});

async function unstickSim(sim: SimulatedProvider, instanceId: string): Promise<void> {
  await sim.store.mutate((cloud) => {
    for (const v of cloud.instances[instanceId]?.volumes ?? []) v.behavior.hang = false;
  });
}

/**
 * Runs `fn` inside an async-local store of its own, held here only by a FinalizationRegistry (not a WeakRef: V8 keeps
 * a WeakRef's target alive until the job that made it ends, which a test cannot wait for). The function returned
 * collects garbage until the store is gone.
 */
function runInAStoreOfItsOwn(fn: () => void): (what: string) => Promise<boolean> {
  const store = new AsyncLocalStorage<{ attempt: Uint8Array }>();
  let collected = false;
  const collection = new FinalizationRegistry(() => {
    collected = true;
  });
  store.run({ attempt: new Uint8Array(1024) }, () => {
    collection.register(store.getStore() ?? {}, undefined);
    fn();
  });
  const gc = collectGarbage();
  return (what) =>
    eventually(
      async () => {
        gc();
        return collected;
      },
      what,
      10_000,
    );
}

/** V8's collector, callable without starting the test process with --expose-gc. */
function collectGarbage(): () => void {
  setFlagsFromString('--expose_gc');
  return runInNewContext('gc') as () => void;
}
