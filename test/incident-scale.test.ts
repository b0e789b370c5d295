/**
 * Incident scale (docs/worker.md "Isolation" and "Call budget"): the call
 * budget and its shared backoff, coalesced state checks, and through the
 * workflow on the dev server, a healthy stop and an abort that go through
 * while every wait slot is taken by stuck volumes. Speed is measured in
 * `npm run bench` (incident); these check behaviour.
 */
import { randomUUID } from 'node:crypto';
import { NativeConnection } from '@temporalio/worker';
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
import { StopflowClient } from '../client/stopflow-client';
import { createStopflowWorker, type StopflowWorker } from '../worker/worker';
import { connectClient, eventually, installQuietRuntime } from './helpers';
import { ManualClock } from './support/manual-clock';

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
    const budget = new CallBudgetLimiter({ callsPerSecond: 100, burst: 100 }, clock);
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
    const budget = new CallBudgetLimiter({ callsPerSecond: 100, burst: 100 }, clock);
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
  let worker: StopflowWorker;
  let running: Promise<void>;
  let connection: NativeConnection;
  let stopflow: StopflowClient;
  let closeClient: () => Promise<void>;

  beforeAll(async () => {
    installQuietRuntime();
    const client = await connectClient();
    closeClient = () => client.connection.close();
    stopflow = new StopflowClient({ client, taskQueue });
    connection = await NativeConnection.connect({ address: inject('temporalAddress') });
    worker = await createStopflowWorker({
      connection,
      taskQueue,
      providers: [sim, strict],
      pollIntervalMs: 1_000,
      // Waits hold their slot for a long time: two wait slots, both taken by stuck volumes, and fewer
      // urgent slots than there are stuck volumes (were waits to take urgent slots, none would be left).
      holdMs: 120_000,
      maxConcurrentWaits: 2,
      tuning: { maxConcurrentActivityTaskExecutions: 4 },
      workflowBundle: { codePath: inject('workflowBundlePath') },
    });
    running = worker.run();
  });
  afterAll(async () => {
    worker?.shutdown();
    await running;
    await connection?.close();
    await closeClient?.();
  });

  test('with every wait slot taken by stuck volumes, a healthy stop still stops and an abort still forces', async () => {
    const stuck = Array.from({ length: 6 }, (_, i) => `stuck-${i}-${randomUUID().slice(0, 6)}`);
    for (const id of stuck) {
      await sim.addInstance(id, [{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
      await stopflow.stop({ instanceId: id, volumes: [{ volumeId: 'vol-stuck' }] });
    }
    await eventually(async () => {
      const statuses = await Promise.all(stuck.map((id) => stopflow.status(id)));
      return statuses.every((s) => s.volumes[0]?.state === 'detaching');
    }, 'every stuck volume to be detaching');

    const healthy = `healthy-${randomUUID().slice(0, 6)}`;
    await sim.addInstance(healthy, [{ volumeId: 'vol-a' }, { volumeId: 'vol-b' }]);
    await stopflow.stop({ instanceId: healthy });
    expect((await stopflow.result(healthy)).phase).toBe('stopped');

    // The last stuck stop's wait has no slot at all; its abort must still reach the force.
    const last = stuck[stuck.length - 1] as string;
    await stopflow.abort(last, { reason: 'incident drill' });
    const result = await stopflow.result(last);
    expect(result.volumes[0]?.state).toBe('force_detached');
    for (const id of stuck.slice(0, -1)) await stopflow.abort(id);
    for (const id of stuck.slice(0, -1)) expect((await stopflow.result(id)).phase).toBe('stopped');
  });

  test('backend calls per second keep to the budget while many volumes are stuck', async () => {
    const ids = Array.from({ length: 30 }, (_, i) => `many-${i}-${randomUUID().slice(0, 6)}`);
    for (const id of ids) {
      await sim.addInstance(id, [{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
      await stopflow.stop({ instanceId: id, volumes: [{ volumeId: 'vol-stuck' }] });
    }
    const before = sim.totalCalls();
    const started = Date.now();
    await new Promise((resolve) => setTimeout(resolve, 5_000));
    const perSecond = (sim.totalCalls() - before) / ((Date.now() - started) / 1000);
    // The budget is 10/s with a burst of 10: over 5 s at most 10 + 10 * elapsed.
    expect(perSecond).toBeLessThanOrEqual(10 + 10 / 5 + 1);
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
