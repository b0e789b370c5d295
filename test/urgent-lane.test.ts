/**
 * The urgent lane at incident scale (bench/scenarios/incident.ts, abort -> force): an urgent
 * state check and an urgent call must not wait behind the waits' routine checks, neither for a
 * routine batch in flight nor for a refill of a budget the routine checks keep spending. These
 * check order and token counts, on a hand-moved clock where the budget is involved, not timings.
 */
import { describe, expect, test, vi } from 'vitest';
import { Backend } from '../activities/backend';
import { CallBudgetLimiter, urgentReserve } from '../activities/call-budget';
import type { AttachmentState, CallOptions, ForceAnswer, Provider, VolumeOfInstance } from '../activities/provider';
import { type BudgetedCall, StateChecks, URGENT_RIDERS } from '../activities/state-checks';
import { ManualClock } from './support/manual-clock';

/** A batching provider whose batch calls the test answers by hand (or at once with `autoAnswer`). */
class FakeBatchProvider implements Provider {
  readonly name = 'fake';
  readonly supportsForce = true;
  readonly maxBatch = 200;
  readonly batches: { targets: string[]; answer: () => void }[] = [];
  constructor(private readonly autoAnswer = false) {}
  getAttachmentStates(targets: readonly VolumeOfInstance[], _options?: CallOptions): Promise<AttachmentState[]> {
    return new Promise((resolve) => {
      const answer = () => resolve(targets.map(() => 'attached' as const));
      this.batches.push({ targets: targets.map((t) => t.instanceId), answer });
      if (this.autoAnswer) answer();
    });
  }
  async getAttachmentState(): Promise<AttachmentState> {
    return 'attached';
  }
  async listAttachedVolumes() {
    return [];
  }
  async detachVolume() {}
  async forceDetachVolume(): Promise<ForceAnswer> {
    return 'sent';
  }
  async stopInstance() {}
}

/** What Backend.call does with the budget: a token in the call's lane, then the call. */
function budgetedCall(budget: CallBudgetLimiter): BudgetedCall {
  return async (_operation, fn, _shared, cost = 1, lane = 'routine') => {
    await budget.take(undefined, cost, lane);
    return fn({});
  };
}

const target = (instanceId: string): VolumeOfInstance => ({ instanceId, volume: { volumeId: `vol-${instanceId}` } });

/** Whether a promise has settled, without waiting for it. */
function tracked<T>(promise: Promise<T>): { promise: Promise<T>; settled: () => boolean } {
  let done = false;
  void promise.then(
    () => {
      done = true;
    },
    () => {
      done = true;
    },
  );
  return { promise, settled: () => done };
}

describe('call budget: the urgent reserve', () => {
  test('the reserve is a tenth of the burst, at least one, and never the whole bucket', () => {
    expect(urgentReserve({ callsPerSecond: 10, burst: 50 })).toBe(5);
    expect(urgentReserve({ callsPerSecond: 10, burst: 5 })).toBe(1);
    expect(urgentReserve({ callsPerSecond: 10, burst: 2 })).toBe(1);
    expect(urgentReserve({ callsPerSecond: 10, burst: 1 })).toBe(0);
  });

  test('under sustained routine demand, urgent calls (the read before a force, the force) take a token at once', async () => {
    const clock = new ManualClock();
    const budget = new CallBudgetLimiter({ callsPerSecond: 10, burst: 50 }, clock);
    let routine = 0;
    for (let i = 0; i < 1_000; i++) void budget.take(undefined, 1, 'routine').then(() => routine++);
    await clock.advance(5_000); // the burst is long spent: the routine checks take every token the rate gives
    expect(routine).toBeGreaterThan(80);
    let urgent = 0;
    void budget.take(undefined, 1, 'urgent').then(() => urgent++);
    void budget.take(undefined, 1, 'urgent').then(() => urgent++);
    await clock.advance(0); // no time passes
    expect(urgent).toBe(2);
  });

  test('with the reserve, calls per second still keep to the budget, and routine checks still get the rate', async () => {
    const clock = new ManualClock();
    const budget = new CallBudgetLimiter({ callsPerSecond: 10, burst: 50 }, clock);
    let routine = 0;
    let urgent = 0;
    for (let i = 0; i < 1_000; i++) void budget.take(undefined, 1, 'routine').then(() => routine++);
    // An urgent call every 200 ms besides (a steady stream of aborts), for 20 s.
    for (let t = 0; t < 20_000; t += 200) {
      void budget.take(undefined, 1, 'urgent').then(() => urgent++);
      await clock.advance(200);
    }
    expect(urgent).toBe(100);
    // At most the burst plus 20 s at 10/s, however the tokens were shared out.
    expect(routine + urgent).toBeLessThanOrEqual(50 + 200);
    // Routine checks get what the urgent calls leave: the rate is not lost to the reserve.
    expect(routine + urgent).toBeGreaterThanOrEqual(50 + 200 - urgentReserve({ callsPerSecond: 10, burst: 50 }) - 2);
  });
});

describe('coalesced state checks: the urgent batch', () => {
  test('an urgent check does not wait for the routine batch whose backend call is outstanding', async () => {
    const provider = new FakeBatchProvider();
    const states = new StateChecks(provider, budgetedCall(new CallBudgetLimiter(undefined)));
    const routine = tracked(states.check(target('i-routine')));
    await vi.waitFor(() => expect(provider.batches).toHaveLength(1)); // the routine batch's call is out
    const urgent = states.check(target('i-urgent'), undefined, 'urgent');
    // The urgent check's own batch reaches the backend while the routine one is still unanswered.
    await vi.waitFor(() => expect(provider.batches).toHaveLength(2));
    expect(provider.batches[1]?.targets).toEqual(['i-urgent']);
    provider.batches[1]?.answer();
    await expect(urgent).resolves.toBe('attached');
    expect(routine.settled()).toBe(false);
    provider.batches[0]?.answer();
    await expect(routine.promise).resolves.toBe('attached');
  });

  test('an urgent check does not wait for the routine batch that waits for a budget token', async () => {
    const clock = new ManualClock();
    const budget = new CallBudgetLimiter({ callsPerSecond: 10, burst: 5 }, clock);
    const provider = new FakeBatchProvider(true);
    const states = new StateChecks(provider, budgetedCall(budget));
    // The waits' checks have spent all the routine tokens.
    for (let i = 0; i < 5 - budget.reserve; i++) await budget.take(undefined, 1, 'routine');
    const routine = tracked(states.check(target('i-routine')));
    await vi.waitFor(() => expect(budget.counts.calls).toBe(5)); // its batch is waiting for a token
    await clock.advance(0);
    expect(provider.batches).toHaveLength(0);
    // No time passes on the budget's clock: the urgent check is answered from the reserve.
    const urgent = tracked(states.check(target('i-urgent'), undefined, 'urgent'));
    await vi.waitFor(() => expect(urgent.settled()).toBe(true));
    await expect(urgent.promise).resolves.toBe('attached');
    expect(provider.batches.map((b) => b.targets)).toEqual([['i-urgent']]);
    expect(routine.settled()).toBe(false);
    await clock.advance(1_000);
    await expect(routine.promise).resolves.toBe('attached');
  });

  test('routine checks not yet in a batch ride in the urgent batch when that costs nothing more', async () => {
    const provider = new FakeBatchProvider(true);
    const states = new StateChecks(provider, budgetedCall(new CallBudgetLimiter(undefined)));
    const routine = states.check(target('i-routine'));
    const urgent = states.check(target('i-urgent'), undefined, 'urgent');
    await expect(Promise.all([urgent, routine])).resolves.toEqual(['attached', 'attached']);
    await new Promise((resolve) => setTimeout(resolve, 50)); // past the routine batch's gathering pause
    expect(provider.batches.map((b) => b.targets)).toEqual([['i-urgent', 'i-routine']]);
  });

  test('an urgent batch takes at most URGENT_RIDERS routine checks along; the rest go in a routine batch', async () => {
    const provider = new FakeBatchProvider(true);
    const states = new StateChecks(provider, budgetedCall(new CallBudgetLimiter(undefined)));
    const routine = Array.from({ length: 30 }, (_, i) => states.check(target(`i-${i}`)));
    const urgent = states.check(target('i-urgent'), undefined, 'urgent');
    await expect(Promise.all([urgent, ...routine])).resolves.toEqual(Array(31).fill('attached'));
    const [first, ...rest] = provider.batches.map((b) => b.targets);
    // The oldest routine checks ride; a force waiting on the urgent one gets an answer about 11 volumes, not 31.
    expect(first).toEqual(['i-urgent', ...Array.from({ length: URGENT_RIDERS }, (_, i) => `i-${i}`)]);
    expect(rest).toEqual([Array.from({ length: 30 - URGENT_RIDERS }, (_, i) => `i-${i + URGENT_RIDERS}`)]);
  });
});

describe('coalesced state checks: a batch costs at most a full bucket', () => {
  test('a provider that pays per instance gets batches of at most the burst; every check is answered once', async () => {
    const budget = { callsPerSecond: 1_000, burst: 10 };
    const provider = Object.assign(new FakeBatchProvider(true), {
      budget,
      // One request per instance in the batch (as gcp and azure count them).
      batchRequests: (targets: readonly VolumeOfInstance[]) => new Set(targets.map((t) => t.instanceId)).size,
    });
    const checks = new StateChecks(provider, budgetedCall(new CallBudgetLimiter(budget)));
    const states = await Promise.all(Array.from({ length: 35 }, (_, i) => checks.check(target(`i-${i}`))));
    expect(states).toHaveLength(35);
    expect(provider.batches.every((b) => b.targets.length <= budget.burst)).toBe(true);
    expect(provider.batches.flatMap((b) => b.targets).sort()).toEqual(
      Array.from({ length: 35 }, (_, i) => `i-${i}`).sort(),
    );
  });

  test('a provider whose request count throws is charged one request per check, and its checks still settle', async () => {
    const budget = { callsPerSecond: 1_000, burst: 10 };
    const provider = Object.assign(new FakeBatchProvider(true), {
      budget,
      batchRequests: (): number => {
        throw new Error('cannot count');
      },
    });
    const checks = new StateChecks(provider, budgetedCall(new CallBudgetLimiter(budget)));
    const states = await Promise.all([
      checks.check(target('i-u'), undefined, 'urgent'),
      ...Array.from({ length: 12 }, (_, i) => checks.check(target(`i-${i}`))),
    ]);
    expect(states).toHaveLength(13);
    expect(provider.batches.every((b) => b.targets.length <= budget.burst)).toBe(true);
  });
});

describe('Backend: the state checks reach the budget with their lane and cost', () => {
  test('an urgent check takes its token in the urgent lane; a routine batch pays what its requests cost', async () => {
    const provider = new FakeBatchProvider(true);
    // Two requests per batch of three volumes (a provider that splits a batch by region, say).
    const batched: Provider = Object.assign(provider, { batchRequests: () => 2 });
    const backend = new Backend(batched);
    const take = vi.spyOn(backend.budget, 'take');
    await backend.states.check(target('i-urgent'), undefined, 'urgent');
    expect(take.mock.calls.at(-1)?.slice(1)).toEqual([expect.any(Number), 'urgent']);
    await Promise.all(['i-1', 'i-2', 'i-3'].map((id) => backend.states.check(target(id))));
    expect(take.mock.calls.at(-1)?.slice(1)).toEqual([2, 'routine']);
  });
});
