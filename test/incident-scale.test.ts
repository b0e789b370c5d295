/**
 * Incident scale (docs/worker.md "Isolation" and "Call budget"): the call
 * budget and its shared backoff, coalesced state checks, and through the
 * workflow on the dev server, a healthy stop and an abort that go through
 * while every wait slot is held and another wait is queued for one. Speed is
 * measured in `npm run bench` (incident); these check behaviour.
 */
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { type ActivityInterceptorsFactory, NativeConnection, Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import { Backend } from '../activities/backend';
import { CallBudgetLimiter } from '../activities/call-budget';
import {
  type AttachmentState,
  type CallOptions,
  ThrottledProviderError,
  TransientProviderError,
  type VolumeOfInstance,
} from '../activities/provider';
import { MemorySimStore, SimulatedProvider } from '../activities/providers/simulated';
import { CheckWithdrawn } from '../activities/state-checks';
import { StopFailedError, StopflowClient } from '../client/stopflow-client';
import { workflowIdFor } from '../common/names';
import { forcesTaskQueue, waitsTaskQueue } from '../common/stop-activities';
import { startDevServer } from '../devserver/server';
import { createStopflowWorker, type StopflowWorker } from '../worker/worker';
import { connectClient, eventually, installQuietRuntime } from './helpers';
import { ManualClock } from './support/manual-clock';
import type { holdWaitSlot } from './support/wait-slot-holder';

/** When the budget lets the next call go, on a manual clock advanced 50 ms at a time (-1: not within 10 s). */
async function nextCallAt(budget: CallBudgetLimiter, clock: ManualClock): Promise<number> {
  let at = -1;
  void budget.take().then(() => {
    at = clock.now();
  });
  for (let t = 0; at < 0 && t < 10_000; t += 50) await clock.advance(50);
  return at;
}

describe('call budget', () => {
  test('calls per second keep to the budget however many callers wait', async () => {
    const clock = new ManualClock();
    const budget = new CallBudgetLimiter({ callsPerSecond: 10, burst: 5 }, clock);
    let done = 0;
    for (let i = 0; i < 100; i++) void budget.take().then(() => done++);
    await clock.advance(0);
    expect(done).toBe(4); // the burst, less the token routine calls leave to urgent ones (urgentReserve)
    await clock.advance(1_000);
    expect(done).toBe(14); // plus one second at 10/s
    await clock.advance(2_000);
    expect(done).toBe(34);
    // The reserved token is an urgent call's at once; with it, calls keep to the burst plus the rate.
    let urgent = false;
    void budget.take(undefined, 1, 'urgent').then(() => {
      urgent = true;
    });
    await clock.advance(0);
    expect(urgent).toBe(true);
  });

  test('a throttling answer pauses every caller, for the Retry-After when the backend gave one', async () => {
    const clock = new ManualClock();
    const budget = new CallBudgetLimiter({ callsPerSecond: 100, burst: 100 }, clock, () => 0);
    budget.throttled(5_000);
    let done = 0;
    for (let i = 0; i < 10; i++) void budget.take().then(() => done++);
    await clock.advance(4_900);
    expect(done).toBe(0);
    // The bucket starts empty when the pause ends: routine calls go once it holds one token more than
    // the urgent reserve (10 at 100/s: 110 ms).
    await clock.advance(300);
    expect(done).toBeGreaterThan(0);
    expect(budget.counts.throttled).toBe(1);
  });

  test('a Retry-After longer than a minute, or unreadable, pauses callers a minute at most', async () => {
    const clock = new ManualClock();
    // The most jitter there is: the cap holds with it.
    const budget = new CallBudgetLimiter({ callsPerSecond: 100, burst: 100 }, clock, () => 0.999);
    budget.throttled(3_600_000);
    let done = 0;
    void budget.take().then(() => done++);
    await clock.advance(61_000);
    expect(done).toBe(1);
    budget.throttled(Number.NaN);
    void budget.take().then(() => done++);
    // No usable hint: the jittered backoff, whose first step is under two seconds.
    await clock.advance(2_500);
    expect(done).toBe(2);
    // Zero (a date already past) is no hint either: the backoff, not no pause at all.
    budget.throttled(0);
    void budget.take().then(() => done++);
    await clock.advance(100);
    expect(done).toBe(2);
    await clock.advance(5_000);
    expect(done).toBe(3);
  });

  test('a pause is jittered: a backoff step lasts half of it to all of it, a Retry-After up to a fifth more', async () => {
    /** When a call taken just after one throttling answer goes, with the jitter's draw pinned to `draw`. */
    async function resumesAfter(draw: number, retryAfterMs?: number): Promise<number> {
      const clock = new ManualClock();
      const budget = new CallBudgetLimiter(undefined, clock, () => draw);
      budget.throttled(retryAfterMs);
      return nextCallAt(budget, clock);
    }
    // The first step is 1 s: from 0.5 s to 1 s.
    expect(await resumesAfter(0)).toBe(500);
    expect(await resumesAfter(0.5)).toBe(750);
    expect(await resumesAfter(1)).toBe(1_000);
    // A Retry-After is never cut short.
    expect(await resumesAfter(0, 3_000)).toBe(3_000);
    expect(await resumesAfter(0.5, 3_000)).toBe(3_300);
    expect(await resumesAfter(1, 3_000)).toBe(3_600);
  });

  test('one draw per pause: the throttled answers that arrive during it do not push it to the top of its range', async () => {
    // The first answer draws the least jitter there is; the hundred calls it was in flight with, the most.
    const draws = [0, ...Array<number>(100).fill(1)];
    const resumes = async (retryAfterMs?: number): Promise<number> => {
      const clock = new ManualClock();
      const budget = new CallBudgetLimiter(undefined, clock, () => draws.shift() ?? 1);
      budget.throttled(retryAfterMs);
      for (let i = 0; i < 100; i++) budget.throttled(retryAfterMs);
      const at = await nextCallAt(budget, clock);
      draws.splice(0, draws.length, 0, ...Array<number>(100).fill(1));
      return at;
    };
    expect(await resumes(3_000)).toBe(3_000);
    expect(await resumes()).toBe(500);
    // Answers that trickle in during the pause, or ask for longer, extend it with the pause's own draw: each worker's
    // pause still ends at its own moment, not a bare Retry-After after its last answer.
    const trickled = async (later: number): Promise<number> => {
      const clock = new ManualClock();
      draws.splice(0, draws.length, 1, 0, 0);
      const budget = new CallBudgetLimiter(undefined, clock, () => draws.shift() ?? 0);
      budget.throttled(1_000);
      await clock.advance(200);
      budget.throttled(later);
      return nextCallAt(budget, clock);
    };
    // The pause's draw is the most there is (1 s and a fifth); an answer 200 ms in extends it by as much.
    expect(await trickled(1_000)).toBe(200 + 1_200);
    expect(await trickled(5_000)).toBe(200 + 6_000);
  });

  test("a call's further requests (a stop's polls) each take a token of the budget", async () => {
    class PollingStop extends SimulatedProvider {
      override async stopInstance(instanceId: string, options?: CallOptions): Promise<void> {
        for (let poll = 0; poll < 3; poll++) await options?.nextRequest?.();
        return super.stopInstance(instanceId, options);
      }
    }
    const sim = new PollingStop(new MemorySimStore(), {}, 'polling-stop');
    await sim.addInstance('i-poll', []);
    const backend = new Backend(sim);
    await backend.call('stopInstance', (o) => sim.stopInstance('i-poll', o), null);
    expect(backend.budget.counts.calls).toBe(4);
  });

  test('a throttled call is retried by Temporal after the Retry-After it honours, never longer than a minute', async () => {
    const backend = new Backend(new SimulatedProvider(new MemorySimStore(), {}, 'retry-after'));
    const throttled = (ms: number) =>
      backend.call('describe', async () => {
        throw new ThrottledProviderError('RequestLimitExceeded', ms);
      });
    await expect(throttled(3_000)).rejects.toMatchObject({ nextRetryDelay: 3_000 });
    await expect(throttled(86_400_000)).rejects.toMatchObject({ nextRetryDelay: 60_000 });
  });

  test('without a Retry-After the backoff grows with each throttling pause, not with each answer in one', async () => {
    const clock = new ManualClock();
    const budget = new CallBudgetLimiter(undefined, clock);
    // Three calls in flight answered "throttled" together: one step (1 s, jittered down to at least 0.5 s).
    budget.throttled();
    budget.throttled();
    budget.throttled();
    let first = false;
    void budget.take().then(() => {
      first = true;
    });
    await clock.advance(1_000);
    expect(first).toBe(true);
    // Throttled again after the pause: 2 s, then 4 s.
    budget.throttled();
    await clock.advance(2_100);
    budget.throttled();
    let third = false;
    void budget.take().then(() => {
      third = true;
    });
    await clock.advance(1_900);
    expect(third).toBe(false);
    await clock.advance(2_200);
    expect(third).toBe(true);
  });

  test('when a throttling pause ends, calls resume at the rate, without a burst', async () => {
    const clock = new ManualClock();
    const budget = new CallBudgetLimiter({ callsPerSecond: 10, burst: 50 }, clock);
    budget.throttled(5_000);
    let done = 0;
    for (let i = 0; i < 100; i++) void budget.take().then(() => done++);
    await clock.advance(5_000);
    expect(done).toBeLessThanOrEqual(1);
    await clock.advance(1_000);
    expect(done).toBeLessThanOrEqual(11);
  });

  test('an urgent call (a force, a request) goes ahead of every routine check already waiting', async () => {
    const clock = new ManualClock();
    const budget = new CallBudgetLimiter({ callsPerSecond: 10, burst: 1 }, clock);
    await budget.take();
    const order: string[] = [];
    for (let i = 0; i < 20; i++) void budget.take(undefined, 1, 'routine').then(() => order.push(`routine-${i}`));
    await clock.advance(250);
    void budget.take(undefined, 1, 'urgent').then(() => order.push('urgent'));
    await clock.advance(1_000);
    // Two routine checks got their tokens before the urgent call came; the urgent one takes the next.
    expect(order.indexOf('urgent')).toBeLessThanOrEqual(3);
    expect(order.length).toBeGreaterThan(5);
  });

  test('a caller that is cancelled while it waits gives up without blocking the others', async () => {
    const clock = new ManualClock();
    const budget = new CallBudgetLimiter({ callsPerSecond: 1, burst: 1 }, clock);
    await budget.take();
    const controller = new AbortController();
    const cancelled = budget.take(controller.signal);
    let next = false;
    void budget.take().then(() => {
      next = true;
    });
    controller.abort(new Error('activity cancelled'));
    await expect(cancelled).rejects.toThrow('activity cancelled');
    await clock.advance(1_100);
    expect(next).toBe(true);
  });
});

describe('coalesced state checks', () => {
  test('checks of many volumes at once are one backend call per batch, with the same answers', async () => {
    const sim = new SimulatedProvider(new MemorySimStore(), {}, { maxBatch: 20 });
    const volumes = Array.from({ length: 50 }, (_, i) => ({ volumeId: `vol-${i}` }));
    await sim.addInstance('i-batch', volumes);
    for (const v of volumes.slice(0, 25)) await sim.detachVolume('i-batch', v);
    const backend = new Backend(sim);
    const states = await Promise.all(volumes.map((volume) => backend.states.check({ instanceId: 'i-batch', volume })));
    expect(sim.calls.get('getAttachmentStates')).toBe(3); // 50 checks in batches of 20
    expect(sim.calls.get('getAttachmentState')).toBeUndefined();
    const oneByOne = await Promise.all(volumes.map((v) => sim.getAttachmentState('i-batch', v)));
    expect(states).toEqual(oneByOne);
  });

  test('a check withdrawn before its batch is taken leaves no volume in the backend call, and is settled', async () => {
    const sim = new SimulatedProvider(new MemorySimStore(), {}, { maxBatch: 20 });
    const volumes = [{ volumeId: 'vol-kept' }, { volumeId: 'vol-withdrawn' }];
    await sim.addInstance('i-withdraw', volumes);
    const asked: string[][] = [];
    const batch = sim.getAttachmentStates.bind(sim);
    sim.getAttachmentStates = (targets, options) => {
      asked.push(targets.map((t) => t.volume.volumeId));
      return batch(targets, options);
    };
    const backend = new Backend(sim);
    let ended = false;
    const kept = backend.states.check({ instanceId: 'i-withdraw', volume: { volumeId: 'vol-kept' } });
    const withdrawn = backend.states.check(
      { instanceId: 'i-withdraw', volume: { volumeId: 'vol-withdrawn' } },
      () => ended,
    );
    ended = true; // the wait ended while its check gathered with others
    await expect(kept).resolves.toBe('attached');
    await expect(withdrawn).rejects.toBeInstanceOf(CheckWithdrawn);
    expect(asked).toEqual([['vol-kept']]);
    // All withdrawn: no backend call at all.
    const alone = backend.states.check({ instanceId: 'i-withdraw', volume: { volumeId: 'vol-kept' } }, () => true);
    await expect(alone).rejects.toBeInstanceOf(CheckWithdrawn);
    expect(asked).toHaveLength(1);
  });

  test('a wait that ends while its check queues behind a batch still out lets go of the check at once', async () => {
    // The first batch's answer is held: the next check waits behind it, as behind a throttled budget.
    let answer = () => {};
    const held = new Promise<void>((resolve) => {
      answer = resolve;
    });
    class FirstBatchHeld extends SimulatedProvider {
      batches = 0;
      override async getAttachmentStates(targets: readonly VolumeOfInstance[], options?: CallOptions) {
        if (++this.batches === 1) await held;
        return super.getAttachmentStates(targets, options);
      }
    }
    const sim = new FirstBatchHeld(new MemorySimStore(), {}, { maxBatch: 20 });
    await sim.addInstance('i-sweep', [{ volumeId: 'vol-1' }, { volumeId: 'vol-2' }]);
    const backend = new Backend(sim);
    const first = backend.states.check({ instanceId: 'i-sweep', volume: { volumeId: 'vol-1' } });
    await eventually(async () => sim.batches === 1, 'the first batch to be out');
    let ended = false;
    const queued = backend.states.check({ instanceId: 'i-sweep', volume: { volumeId: 'vol-2' } }, () => ended);
    ended = true;
    backend.states.sweepWithdrawn();
    await expect(queued).rejects.toBeInstanceOf(CheckWithdrawn); // while the first batch is still out
    expect(sim.batches).toBe(1);
    answer();
    await expect(first).resolves.toBe('attached');
  });

  test('one volume per call: a check withdrawn while it waited for its token is not made, and a call keeps its timeout', async () => {
    const sim = new SimulatedProvider(new MemorySimStore(), {}, { maxBatch: 1 });
    await sim.addInstance('i-one', [{ volumeId: 'vol-1' }]);
    const signals: Array<AbortSignal | undefined> = [];
    const one = sim.getAttachmentState.bind(sim);
    sim.getAttachmentState = (instanceId, volume, options) => {
      signals.push(options?.signal);
      return one(instanceId, volume, options);
    };
    const backend = new Backend(sim);
    expect(backend.states.maxBatch).toBe(1);
    const target = { instanceId: 'i-one', volume: { volumeId: 'vol-1' } };
    // Outside an activity (the watch list's checks): the call is shared, and its timeout's signal reaches the provider.
    await expect(backend.states.check(target, () => false)).resolves.toBe('attached');
    expect(signals).toHaveLength(1);
    expect(signals[0]).toBeInstanceOf(AbortSignal);
    let ended = false;
    const withdrawn = backend.states.check(target, () => ended);
    ended = true; // the wait ended while its check waited for a budget token
    // Not a provider error: the Backend passes it on as it is, and reports no error of the provider.
    await expect(withdrawn).rejects.toBeInstanceOf(CheckWithdrawn);
    expect(signals).toHaveLength(1);
  });

  test('a batch call that never answers is given up at its timeout, and the checks after it are answered', async () => {
    // The first batch call never settles and does not listen to its signal: a provider bug, or a hung host.
    class FirstBatchHangs extends SimulatedProvider {
      batches = 0;
      override getAttachmentStates(targets: readonly VolumeOfInstance[], options?: CallOptions) {
        this.batches++;
        return this.batches === 1
          ? new Promise<AttachmentState[]>(() => {})
          : super.getAttachmentStates(targets, options);
      }
    }
    const sim = new FirstBatchHangs(new MemorySimStore());
    await sim.addInstance('i-hang', [{ volumeId: 'vol-1' }]);
    const backend = new Backend(sim, undefined, 300);
    const target = { instanceId: 'i-hang', volume: { volumeId: 'vol-1' } };
    await expect(backend.states.check(target)).rejects.toMatchObject({
      message: expect.stringMatching(/no answer after 300 ms/),
    });
    await expect(backend.states.check(target, undefined, 'urgent')).resolves.toBe('attached');
    await expect(backend.states.check(target)).resolves.toBe('attached');
  });

  test('a batch answers each volume whose instance it read, and fails only the checks of the one it could not', async () => {
    // A backend read instance by instance (a VM read each): one instance is away, its volume answers the error.
    class OneInstanceAway extends SimulatedProvider {
      override async getAttachmentStates(targets: readonly VolumeOfInstance[], options?: CallOptions) {
        const states: Array<AttachmentState | Error> = await super.getAttachmentStates(targets, options);
        return targets.map((t, i) =>
          t.instanceId === 'i-away'
            ? new TransientProviderError('i-away: zone unavailable')
            : (states[i] ?? 'attached'),
        );
      }
    }
    const sim = new OneInstanceAway(new MemorySimStore(), {}, { name: 'one-away', maxBatch: 10 });
    await sim.addInstance('i-away', [{ volumeId: 'vol-away' }]);
    await sim.addInstance('i-here', [{ volumeId: 'vol-here' }, { volumeId: 'vol-gone' }]);
    await sim.detachVolume('i-here', { volumeId: 'vol-gone' });
    const backend = new Backend(sim);
    const [away, here, gone] = await Promise.allSettled([
      backend.states.check({ instanceId: 'i-away', volume: { volumeId: 'vol-away' } }),
      backend.states.check({ instanceId: 'i-here', volume: { volumeId: 'vol-here' } }),
      backend.states.check({ instanceId: 'i-here', volume: { volumeId: 'vol-gone' } }),
    ]);
    expect(here).toEqual({ status: 'fulfilled', value: 'attached' });
    expect(gone).toEqual({ status: 'fulfilled', value: 'detached' });
    // The one volume's error, as the activities take it: transient, so its wait polls again.
    expect(away).toMatchObject({ status: 'rejected', reason: { type: 'TransientProviderError', nonRetryable: false } });
    expect(sim.calls.get('getAttachmentStates')).toBe(1);
  });

  test('a batch that one volume makes fail is answered volume by volume', async () => {
    const sim = new SimulatedProvider(new MemorySimStore());
    await sim.addInstance('i-ok', [{ volumeId: 'vol-ok' }]);
    const backend = new Backend(sim);
    const [ok, missing] = await Promise.allSettled([
      backend.states.check({ instanceId: 'i-ok', volume: { volumeId: 'vol-ok' } }),
      backend.states.check({ instanceId: 'i-unknown', volume: { volumeId: 'vol-x' } }),
    ]);
    expect(ok).toEqual({ status: 'fulfilled', value: 'attached' });
    expect(missing.status).toBe('rejected');
  });
});

describe('through the workflow', () => {
  const taskQueue = `incident-${randomUUID()}`;
  const holderQueue = `${taskQueue}-holders`;
  // The backend allows 20 calls a second; the worker must keep to 10.
  const sim = new SimulatedProvider(
    new MemorySimStore(),
    { rateLimitPerSecond: 20 },
    { name: 'simulated', budget: { callsPerSecond: 10, burst: 10 }, maxBatch: 100 },
  );
  // A backend that allows 4 calls a second, with a worker budget far above it: throttling must slow the worker.
  const strict = new SimulatedProvider(
    new MemorySimStore(),
    { rateLimitPerSecond: 4 },
    { name: 'strict', budget: { callsPerSecond: 50, burst: 50 } },
  );
  // A backend that takes any number of calls, and checks one volume per call: only the budget holds the worker to it.
  const unbatched = new SimulatedProvider(
    new MemorySimStore(),
    {},
    { name: 'unbatched', budget: { callsPerSecond: 10, burst: 10 }, maxBatch: 1 },
  );
  // Instance stops that never return: each holds an urgent slot until the test ends it.
  const slowStop = new SimulatedProvider(new MemorySimStore(), { hangCalls: new Set(['stopInstance']) }, 'slow-stop');
  const WAIT_SLOTS = 2;
  const URGENT_SLOTS = 4;
  let worker: StopflowWorker;
  let holders: Worker;
  let running: Promise<unknown>;
  let connection: NativeConnection;
  let client: Client;
  let stopflow: StopflowClient;

  beforeAll(async () => {
    installQuietRuntime();
    client = await connectClient();
    stopflow = new StopflowClient({ client, taskQueue });
    connection = await NativeConnection.connect({ address: inject('temporalAddress') });
    worker = await createStopflowWorker({
      connection,
      taskQueue,
      providers: [sim, strict, slowStop, unbatched],
      pollIntervalMs: 1_000,
      // A wait that polls in place (the holders' below) keeps its slot for ten minutes, far past this file.
      holdMs: 600_000,
      maxConcurrentWaits: WAIT_SLOTS,
      tuning: { maxConcurrentActivityTaskExecutions: URGENT_SLOTS },
      workflowBundle: { codePath: inject('workflowBundlePath') },
    });
    holders = await Worker.create({
      connection,
      taskQueue: holderQueue,
      workflowsPath: join(__dirname, 'support/wait-slot-holder.ts'),
    });
    running = Promise.all([worker.run(), holders.run()]);
  });
  afterAll(async () => {
    worker?.shutdown();
    if (holders?.getState() === 'RUNNING') holders.shutdown();
    await running;
    await connection?.close();
    await client?.connection.close();
  });

  /**
   * The promise, or a failure naming what did not end after 90 s: urgent work stuck behind held waits would wait out
   * their ten minutes, and behind held forces for ever. Generous for a loaded machine; the point is minutes, not
   * milliseconds.
   */
  async function within<T>(promise: Promise<T>, what: string): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`${what} did not end within 90 s, its slots held by other stops' work`)),
        90_000,
      );
    });
    try {
      return await Promise.race([promise, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The state of each of these workflows' pending activity (at most one each here), and its type. */
  async function pending(handles: readonly WorkflowHandle[]) {
    const described = await Promise.all(handles.map((h) => h.describe()));
    return described.map((d) => {
      const activity = d.raw.pendingActivities?.[0];
      return { type: activity?.activityType?.name ?? undefined, state: activity?.state ?? undefined };
    });
  }
  async function pendingStates(handles: readonly WorkflowHandle[]) {
    return (await pending(handles)).map((p) => p.state);
  }
  const { PENDING_ACTIVITY_STATE_STARTED: STARTED, PENDING_ACTIVITY_STATE_SCHEDULED: SCHEDULED } =
    temporal.api.enums.v1.PendingActivityState;
  test(
    'with every wait slot held and a wait queued, a healthy stop still stops and an abort forces at once',
    {
      timeout: 240_000,
    },
    async () => {
      // Stuck stops of this version: each wait hands its volume to the watch list and leaves its slot.
      const stuck = Array.from({ length: WAIT_SLOTS + 2 }, (_, i) => `stuck-${i}-${randomUUID().slice(0, 6)}`);
      for (const id of stuck) {
        await sim.addInstance(id, [{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
        await stopflow.stop({ instanceId: id, volumes: [{ volumeId: 'vol-stuck' }] });
      }
      const stops = stuck.map((id) => client.workflow.getHandle(workflowIdFor(id)));
      await eventually(
        async () => (await pendingStates(stops)).every((state) => state === STARTED),
        "every stuck stop's wait to have started (and left its slot for the watch list)",
      );

      // Waits that poll in place, one per wait slot and one more: the slots are all held, and a wait is queued.
      const held: WorkflowHandle<typeof holdWaitSlot>[] = [];
      try {
        for (let i = 0; i <= WAIT_SLOTS; i++) {
          const args: Parameters<typeof holdWaitSlot> = [
            waitsTaskQueue(taskQueue),
            'simulated',
            stuck[i] as string,
            'vol-stuck',
          ];
          held.push(
            await client.workflow.start<typeof holdWaitSlot>('holdWaitSlot', {
              taskQueue: holderQueue,
              workflowId: `holder-${i}-${randomUUID().slice(0, 6)}`,
              args,
            }),
          );
        }
        await eventually(async () => {
          const states = await pendingStates(held);
          return states.filter((s) => s === STARTED).length === WAIT_SLOTS && states.includes(SCHEDULED);
        }, `${WAIT_SLOTS} waits holding every wait slot, and one more queued`);

        // Urgent work does not queue behind them: were it on the waits' slots, it would wait ten minutes.
        const healthy = `healthy-${randomUUID().slice(0, 6)}`;
        await sim.addInstance(healthy, [{ volumeId: 'vol-a' }, { volumeId: 'vol-b' }]);
        await stopflow.stop({ instanceId: healthy });
        expect((await within(stopflow.result(healthy), 'the healthy stop')).phase).toBe('stopped');

        const last = stuck[stuck.length - 1] as string;
        await stopflow.abort(last, { reason: 'incident drill' });
        const result = await within(stopflow.result(last), 'the aborted stop');
        expect(result.volumes[0]?.state).toBe('force_detached');
        expect((await pendingStates(held)).filter((s) => s === STARTED)).toHaveLength(WAIT_SLOTS);

        // Where the server has task priority on, the force goes ahead of other queued work: it asks for it.
        const history = await client.workflow.getHandle(workflowIdFor(last)).fetchHistory();
        const forces = (history.events ?? []).filter(
          (e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'forceDetachVolume',
        );
        expect(forces.length).toBeGreaterThan(0);
        for (const e of forces) expect(e.activityTaskScheduledEventAttributes?.priority?.priorityKey).toBe(1);

        // The other stops end too, and each held wait hears its volume detached.
        for (const id of stuck.slice(0, -1)) await stopflow.abort(id);
        for (const id of stuck.slice(0, -1)) expect((await stopflow.result(id)).phase).toBe('stopped');
        for (const h of held) expect(await h.result()).toMatchObject({ outcome: 'detached' });
      } finally {
        await Promise.allSettled(held.map((h) => h.terminate('test over')));
      }
    },
  );

  test(
    'with every urgent slot held by instance stops that do not return, an abort forces at once',
    {
      timeout: 240_000,
    },
    async () => {
      const stuck = `stuck-urgent-${randomUUID().slice(0, 6)}`;
      await sim.addInstance(stuck, [{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
      await stopflow.stop({ instanceId: stuck, volumes: [{ volumeId: 'vol-stuck' }] });
      await eventually(
        async () => (await stopflow.status(stuck)).volumes[0]?.state === 'detaching',
        'the stuck volume to be detaching',
      );
      const slow = Array.from({ length: URGENT_SLOTS }, (_, i) => `slow-${i}-${randomUUID().slice(0, 6)}`);
      const slowStops = slow.map((id) => client.workflow.getHandle(workflowIdFor(id)));
      try {
        for (const id of slow) {
          await slowStop.addInstance(id, [{ volumeId: 'vol-a' }]);
          await stopflow.stop({ instanceId: id, provider: 'slow-stop' });
        }
        await eventually(
          async () =>
            (await pending(slowStops)).every((p) => p.type === 'stopInstanceIfDetached' && p.state === STARTED),
          'every urgent slot held by an instance stop',
        );

        await stopflow.abort(stuck, { reason: 'incident drill' });
        await eventually(
          async () => (await stopflow.status(stuck)).volumes[0]?.state === 'force_detached',
          'the stuck volume to be force-detached while every urgent slot is held',
          90_000,
        );
        // Its own instance stop is urgent work: it queues until an urgent slot frees.
        // (Its cancelled wait may still be listed beside it: the watch list settles it at its next beat.)
        await eventually(async () => {
          const described = await client.workflow.getHandle(workflowIdFor(stuck)).describe();
          const stopping = described.raw.pendingActivities?.find(
            (a) => a.activityType?.name === 'stopInstanceIfDetached',
          );
          return stopping?.state === SCHEDULED;
        }, 'its instance stop to be queued for an urgent slot');
        const history = await client.workflow.getHandle(workflowIdFor(stuck)).fetchHistory();
        const forces = (history.events ?? []).filter(
          (e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'forceDetachVolume',
        );
        expect(forces.map((e) => e.activityTaskScheduledEventAttributes?.taskQueue?.name)).toEqual([
          forcesTaskQueue(taskQueue),
        ]);
      } finally {
        await Promise.allSettled(slowStops.map((h) => h.terminate('test over')));
      }
      expect((await stopflow.result(stuck)).phase).toBe('stopped');
    },
  );

  describe('with few force slots', () => {
    // A worker of its own, with two force slots, so the other tests' aborts keep the outer worker's hundred.
    const FORCE_SLOTS = 2;
    const laneQueue = `incident-forces-${randomUUID()}`;
    // A cloud whose forces work, and one whose forces never return (until cancelled): each holds a force slot.
    const laneSim = new SimulatedProvider(new MemorySimStore(), {}, 'lane-sim');
    const hangForce = new SimulatedProvider(
      new MemorySimStore(),
      { hangCalls: new Set(['forceDetachVolume']) },
      'hang-force',
    );
    let lane: StopflowWorker;
    let laneRunning: Promise<void>;
    let laneStopflow: StopflowClient;
    // Forces running at once, and the most seen. A force waits (30 s at most) until as many run as there are force
    // slots, so a mass abort must fill them, whatever the machine's pace; more than that means the lane let more in.
    const forcesRunning = { now: 0, most: 0 };
    const forcesSeen: ActivityInterceptorsFactory = (ctx) => ({
      inbound: {
        async execute(input, next) {
          if (ctx.info.activityType !== 'forceDetachVolume') return next(input);
          forcesRunning.now++;
          forcesRunning.most = Math.max(forcesRunning.most, forcesRunning.now);
          try {
            const deadline = Date.now() + 30_000;
            while (forcesRunning.most < FORCE_SLOTS && Date.now() < deadline) await sleep(50);
            return await next(input);
          } finally {
            forcesRunning.now--;
          }
        },
      },
    });

    beforeAll(async () => {
      laneStopflow = new StopflowClient({ client, taskQueue: laneQueue });
      lane = await createStopflowWorker({
        connection,
        taskQueue: laneQueue,
        providers: [laneSim, hangForce],
        pollIntervalMs: 1_000,
        maxConcurrentForces: FORCE_SLOTS,
        // As few urgent slots as force slots: were forces run on the stop's own queue, the hung ones would take
        // every urgent slot and no healthy stop could list, detach or stop.
        tuning: { maxConcurrentActivityTaskExecutions: FORCE_SLOTS, interceptors: { activity: [forcesSeen] } },
        workflowBundle: { codePath: inject('workflowBundlePath') },
      });
      laneRunning = lane.run();
    });
    afterAll(async () => {
      lane?.shutdown();
      await laneRunning;
    });

    /** The state of this workflow's pending force, if it has one (a cancelled wait may be listed beside it). */
    async function forceState(handle: WorkflowHandle) {
      const described = await handle.describe();
      return described.raw.pendingActivities?.find((a) => a.activityType?.name === 'forceDetachVolume')?.state;
    }
    /** Starts a stop of a new instance with one volume stuck in `detaching`, and waits until it is. */
    async function stuckStop(provider: SimulatedProvider, prefix: string): Promise<string> {
      const id = `${prefix}-${randomUUID().slice(0, 6)}`;
      await provider.addInstance(id, [{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
      await laneStopflow.stop({ instanceId: id, provider: provider.name, volumes: [{ volumeId: 'vol-stuck' }] });
      await eventually(
        async () => (await laneStopflow.status(id)).volumes[0]?.state === 'detaching',
        `${id}'s volume to be detaching`,
      );
      return id;
    }

    test(
      'with every force slot held by forces that do not return, a healthy stop stops; a cancel keeps the force it queued, a terminate drops it',
      {
        timeout: 240_000,
      },
      async () => {
        const holding: string[] = [];
        for (let i = 0; i < FORCE_SLOTS; i++) holding.push(await stuckStop(hangForce, `force-held-${i}`));
        const toCancel = await stuckStop(laneSim, 'force-queued-cancel');
        const toTerminate = await stuckStop(laneSim, 'force-queued-terminate');
        const holdingStops = holding.map((id) => client.workflow.getHandle(workflowIdFor(id)));
        const cancelled = client.workflow.getHandle(workflowIdFor(toCancel));
        const terminated = client.workflow.getHandle(workflowIdFor(toTerminate));
        try {
          for (const id of holding) await laneStopflow.abort(id, { reason: 'incident drill' });
          await eventually(
            async () =>
              (await Promise.all(holdingStops.map(forceState))).every((state) => state === STARTED) &&
              lane.forces.getStatus().numInFlightActivities === FORCE_SLOTS,
            'every force slot held by a force that does not return',
          );
          await laneStopflow.abort(toCancel);
          await laneStopflow.abort(toTerminate);
          await eventually(
            async () => (await forceState(cancelled)) === SCHEDULED && (await forceState(terminated)) === SCHEDULED,
            'two more forces queued for a force slot',
          );

          // Forces have their own slots: a full force lane holds up no other stop's urgent work.
          const healthy = `healthy-${randomUUID().slice(0, 6)}`;
          await laneSim.addInstance(healthy, [{ volumeId: 'vol-a' }, { volumeId: 'vol-b' }]);
          await laneStopflow.stop({ instanceId: healthy, provider: 'lane-sim' });
          expect((await within(laneStopflow.result(healthy), 'the healthy stop')).phase).toBe('stopped');

          // A cancel forces nothing more, but a force already asked for is not abandoned (docs/contract.md), even
          // one still queued: the stop goes on waiting for it.
          await cancelled.cancel();
          await eventually(async () => {
            const events = (await cancelled.fetchHistory()).events ?? [];
            const requested = events.findIndex((e) => e.workflowExecutionCancelRequestedEventAttributes);
            return requested >= 0 && events.slice(requested).some((e) => e.workflowTaskCompletedEventAttributes);
          }, 'the cancel to be recorded and a workflow task to have run on it');
          expect((await cancelled.describe()).status.name).toBe('RUNNING');
          expect(await forceState(cancelled)).toBe(SCHEDULED);
          // A terminate is Temporal's hard stop: its queued force goes with it, and the instance stays as it was.
          await terminated.terminate('incident drill');
          expect((await terminated.describe()).status.name).toBe('TERMINATED');
        } finally {
          await Promise.allSettled(holdingStops.map((h) => h.terminate('test over')));
        }
        // Their stops gone, the hung forces hear of it at their next heartbeat and give their slots back; the
        // cancelled stop's force then runs, and the stop ends cancelled, its instance not stopped.
        const failure = await within(
          laneStopflow.result(toCancel).then(
            () => undefined,
            (err: unknown) => err,
          ),
          'the cancelled stop',
        );
        expect(failure).toBeInstanceOf(StopFailedError);
        const status = (failure as StopFailedError).status;
        expect(status?.phase).toBe('failed');
        expect(status?.instanceStopped).toBe(false);
        expect(status?.error).toMatch(/cancelled/);
        expect(status?.volumes[0]?.state).toBe('force_detached');
        expect((await laneSim.instance(toCancel))?.state).toBe('running');
        // The terminated stop's force never ran: its volume is still stuck, its instance running.
        const left = await laneSim.instance(toTerminate);
        expect(left?.state).toBe('running');
        expect(left?.volumes[0]).toMatchObject({ state: 'detaching', forceCalls: 0, forced: false });
        await eventually(
          async () => lane.forces.getStatus().numInFlightActivities === 0,
          'the force slots to be given back',
          90_000,
        );
      },
    );

    test(
      'an abort of more stuck stops than there are force slots forces them all, and healthy stops go on meanwhile',
      {
        timeout: 240_000,
      },
      async () => {
        const stuck: string[] = [];
        for (let i = 0; i < 3 * FORCE_SLOTS; i++) stuck.push(await stuckStop(laneSim, `mass-abort-${i}`));
        forcesRunning.most = 0;
        const healthy = Array.from({ length: 2 }, (_, i) => `mass-healthy-${i}-${randomUUID().slice(0, 6)}`);
        for (const id of healthy) await laneSim.addInstance(id, [{ volumeId: 'vol-a' }, { volumeId: 'vol-b' }]);
        await Promise.all([
          ...stuck.map((id) => laneStopflow.abort(id, { reason: 'incident drill' })),
          ...healthy.map((instanceId) => laneStopflow.stop({ instanceId, provider: 'lane-sim' })),
        ]);
        const [stuckResults, healthyResults] = await Promise.all([
          within(Promise.all(stuck.map((id) => laneStopflow.result(id))), 'the aborted stops'),
          within(Promise.all(healthy.map((id) => laneStopflow.result(id))), 'the healthy stops'),
        ]);
        for (const r of healthyResults) expect(r.phase).toBe('stopped');
        // The forces filled the lane and never ran past it: the rest queued for a slot.
        expect(forcesRunning.most).toBe(FORCE_SLOTS);
        for (const r of stuckResults) {
          expect(r.phase).toBe('stopped');
          expect(r.volumes[0]?.state).toBe('force_detached');
        }
        for (const id of [...stuck, ...healthy]) {
          const instance = await laneSim.instance(id);
          expect(instance?.state).toBe('stopped');
          expect(instance?.leakedAtStop).toEqual([]);
        }
      },
    );
  });

  test('backend calls per second keep to the budget while many volumes are stuck', async () => {
    // Started all at once, on a backend that throttles nothing and a provider that checks one volume per call:
    // without the budget, sixty detach requests, their checks and the watch list's checks reach it in a few seconds
    // (300 calls in this test's window, measured with the budget removed).
    const ids = Array.from({ length: 60 }, (_, i) => `many-${i}-${randomUUID().slice(0, 6)}`);
    for (const id of ids) await unbatched.addInstance(id, [{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
    const before = unbatched.totalCalls();
    const started = Date.now();
    await Promise.all(
      ids.map((instanceId) =>
        stopflow.stop({ instanceId, provider: 'unbatched', volumes: [{ volumeId: 'vol-stuck' }] }),
      ),
    );
    await new Promise((resolve) => setTimeout(resolve, 6_000));
    const calls = unbatched.totalCalls() - before;
    const seconds = (Date.now() - started) / 1000;
    // The budget is 10/s with a burst of 10: at most 10 + 10 per second elapsed (one more for rounding).
    expect(calls).toBeLessThanOrEqual(10 + 10 * seconds + 1);
    expect(calls).toBeGreaterThan(0);
    for (const id of ids) await stopflow.abort(id);
    for (const id of ids) expect((await stopflow.result(id)).phase).toBe('stopped');
  });

  test('a throttling backend slows every call of its provider, and the stops still end', async () => {
    const ids = Array.from({ length: 4 }, (_, i) => `strict-${i}-${randomUUID().slice(0, 6)}`);
    for (const id of ids) await strict.addInstance(id, [{ volumeId: 'vol-a' }, { volumeId: 'vol-b' }]);
    await Promise.all(ids.map((instanceId) => stopflow.stop({ instanceId, provider: 'strict' })));
    for (const id of ids) expect((await stopflow.result(id)).phase).toBe('stopped');
    expect(strict.throttledCalls).toBeGreaterThan(0);
    // Backing off, the worker makes far fewer calls than it would by retrying every throttled call at once.
    expect(strict.throttledCalls).toBeLessThan(strict.totalCalls() / 2);
  });
});

describe('on a server with default settings (no task priority)', () => {
  test(
    'a force still asks for priority, and a healthy stop and an abort go through as on the tuned server',
    {
      timeout: 240_000,
    },
    async () => {
      installQuietRuntime();
      // The server the tests share has the new matcher on (devserver/server.ts RECOMMENDED_DYNAMIC_CONFIG); this one
      // has the defaults, as a cluster nobody tuned would.
      const server = await startDevServer({
        dynamicConfig: { 'matching.useNewMatcher': false },
        allowSdkDownload: process.env.CI !== 'true',
      });
      const taskQueue = `default-settings-${randomUUID()}`;
      const sim = new SimulatedProvider(new MemorySimStore());
      let worker: StopflowWorker | undefined;
      let running: Promise<void> | undefined;
      try {
        worker = await createStopflowWorker({
          connection: server.env.nativeConnection,
          taskQueue,
          providers: [sim],
          pollIntervalMs: 1_000,
          workflowBundle: { codePath: inject('workflowBundlePath') },
        });
        running = worker.run();
        const stopflow = new StopflowClient({ client: server.env.client, taskQueue });
        const stuck = `stuck-${randomUUID().slice(0, 6)}`;
        await sim.addInstance(stuck, [{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
        await stopflow.stop({ instanceId: stuck });
        await eventually(
          async () => (await stopflow.status(stuck)).volumes[0]?.state === 'detaching',
          'the stuck volume to be detaching',
        );
        const healthy = `healthy-${randomUUID().slice(0, 6)}`;
        await sim.addInstance(healthy, [{ volumeId: 'vol-a' }, { volumeId: 'vol-b' }]);
        await stopflow.stop({ instanceId: healthy });
        expect((await stopflow.result(healthy)).phase).toBe('stopped');

        await stopflow.abort(stuck, { reason: 'incident drill' });
        expect((await stopflow.result(stuck)).volumes[0]?.state).toBe('force_detached');
        const history = await server.env.client.workflow.getHandle(workflowIdFor(stuck)).fetchHistory();
        const force = (history.events ?? []).find(
          (e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'forceDetachVolume',
        );
        expect(force?.activityTaskScheduledEventAttributes?.priority?.priorityKey).toBe(1);
      } finally {
        worker?.shutdown();
        await running;
        await server.stop();
      }
    },
  );
});

describe('a worker that cannot be created', () => {
  test.each([
    // The forces Worker, after the waits one: a slot pool of none leaves it no poller, which the SDK refuses.
    ['its forces lane', { maxConcurrentForces: 0 }, /poller behavior must be at least 1/],
    // The main Worker, created last: a workflow bundle that is not there.
    ['its main Worker', { workflowBundle: { codePath: '/nonexistent/workflow-bundle.js' } }, /ENOENT|no such file/],
  ] as const)('fails at %s, and the Workers created before it let the connection go', async (_, failing, error) => {
    installQuietRuntime();
    const connection = await NativeConnection.connect({ address: inject('temporalAddress') });
    let closed = false;
    try {
      await expect(
        createStopflowWorker({
          connection,
          taskQueue: `unmade-${randomUUID()}`,
          providers: [new SimulatedProvider(new MemorySimStore())],
          workflowBundle: { codePath: inject('workflowBundlePath') },
          ...failing,
        }),
      ).rejects.toThrow(error);
      // Refused while a Worker still holds it ("Cannot close connection while Workers hold a reference to it").
      await connection.close();
      closed = true;
    } finally {
      if (!closed) await connection.close().catch(() => undefined);
    }
    expect(closed).toBe(true);
  });
});
