/**
 * A provider's call budget on this worker: a token bucket shared by every stop,
 * plus one shared backoff when the backend says it is throttling us. With a
 * thousand volumes stuck at once, calls per second to the backend are set by
 * the budget, not by how many volumes wait (issue: incident scale).
 *
 * Hand-written rather than a rate-limit package: it is a few lines, it must
 * take the activity's AbortSignal, and the throttling backoff must be shared
 * with the bucket (a throttled backend slows every caller, not only the one
 * that was told).
 */
import type { CallBudget } from './provider';

export interface BudgetClock {
  now(): number;
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

const realClock: BudgetClock = {
  now: () => Date.now(),
  sleep: (ms, signal) =>
    new Promise<void>((resolve, reject) => {
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      const timer = setTimeout(done, ms);
      function done() {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      }
      function onAbort() {
        clearTimeout(timer);
        reject(signal?.reason);
      }
      signal?.addEventListener('abort', onAbort, { once: true });
    }),
};

/** First and longest pause after the backend throttled us, when it gave no Retry-After. */
const BACKOFF_MIN_MS = 1_000;
const BACKOFF_MAX_MS = 60_000;
/** At most this share of a Retry-After is added to it, at random (up to the longest backoff). */
const RETRY_AFTER_JITTER = 0.2;

/**
 * A backend's Retry-After as the worker honours it: at most the longest backoff. A long hint, or an HTTP date
 * read against a skewed clock, would otherwise pause every call of the provider (forces, whose five attempts
 * have minutes, included) for as long as it says. Undefined for no usable hint (none, unreadable, or zero).
 */
export function honouredRetryAfterMs(retryAfterMs: number | undefined): number | undefined {
  // Zero (a date already past, a clock ahead) is no hint either: a pause of nothing would not back off.
  if (retryAfterMs === undefined || !Number.isFinite(retryAfterMs) || retryAfterMs <= 0) return undefined;
  return Math.min(BACKOFF_MAX_MS, retryAfterMs);
}

/**
 * Tokens routine calls leave in the bucket for urgent ones: a tenth of the burst, at least one, and
 * never the whole burst (a bucket of one keeps none back). With the waits' checks spending the whole
 * budget, the bucket otherwise sits near empty and each urgent call (the read before a force, then the
 * force) waits a refill interval (100 ms at 10/s) for its token. The reserve is taken from the same
 * bucket, so calls per second still keep to the budget: it only decides who may spend the last tokens.
 * After a throttling pause (the bucket starts empty) routine calls therefore resume reserve/rate later
 * than urgent ones (0.5 s at the aws default of 10/s, burst 50); the pause itself is unchanged.
 */
export function urgentReserve(budget: CallBudget): number {
  if (budget.burst < 2) return 0;
  return Math.min(budget.burst - 1, Math.max(1, Math.ceil(budget.burst / 10)));
}

/** `urgent`: a stop is blocked on the call (request, force, stop, a state read before force); `routine`: a wait's check. */
export type BudgetLane = 'urgent' | 'routine';

export class CallBudgetLimiter {
  private tokens: number;
  private refilledAt: number;
  /** Calls wait until this time after a throttling answer. */
  private pausedUntil = 0;
  private backoffMs = 0;
  /** The current pause's jitter draw, from 0 to 1 (see throttled). */
  private pauseSpread = 0;
  /** Routine callers queue in order; urgent ones in a lane of their own that routine ones give way to. */
  private queue: Promise<void> = Promise.resolve();
  private urgentQueue: Promise<void> = Promise.resolve();
  private urgentWaiting = 0;
  private readonly stats = { calls: 0, throttled: 0 };
  /** Tokens routine calls never take (urgentReserve). */
  readonly reserve: number;

  constructor(
    readonly budget: CallBudget | undefined,
    private readonly clock: BudgetClock = realClock,
    /** Where a pause's jitter comes from (tests pin it). */
    private readonly random: () => number = Math.random,
  ) {
    this.tokens = budget?.burst ?? 0;
    this.reserve = budget ? urgentReserve(budget) : 0;
    this.refilledAt = clock.now();
  }

  /** Calls taken and throttling answers seen, for metrics and tests. */
  get counts(): { calls: number; throttled: number } {
    return { ...this.stats };
  }

  /**
   * Waits for `cost` tokens (one per backend request the call makes) and out any throttling backoff;
   * rejects as soon as `signal` aborts, even while others are ahead in the queue.
   */
  async take(signal?: AbortSignal, cost = 1, lane: BudgetLane = 'routine'): Promise<void> {
    this.stats.calls += cost;
    if (!this.budget && this.pausedUntil <= this.clock.now()) return;
    const queue = lane === 'urgent' ? this.urgentQueue : this.queue;
    if (lane === 'urgent') this.urgentWaiting++;
    const turn = queue
      .then(() => this.waitForTokens(cost, lane, signal))
      .finally(() => {
        if (lane === 'urgent') this.urgentWaiting--;
      });
    // A caller that gave up must not block the ones behind it (its turn then takes nothing: it is aborted).
    if (lane === 'urgent') this.urgentQueue = turn.catch(() => undefined);
    else this.queue = turn.catch(() => undefined);
    if (!signal) return turn;
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => reject(signal.reason);
      if (signal.aborted) onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      turn.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    });
  }

  /**
   * Waits out a throttling pause that began after the caller took its token (a step of its own ran in between, see
   * Backend.call), so its request does not leave in the middle of everyone's pause. Takes no token.
   */
  async pauseOver(signal?: AbortSignal): Promise<void> {
    for (let now = this.clock.now(); this.pausedUntil > now; now = this.clock.now()) {
      await this.clock.sleep(this.pausedUntil - now, signal);
    }
  }

  /** The backend throttled a call: everyone pauses, longer each time, with jitter; a Retry-After (a minute at most) wins. */
  throttled(retryAfterMs?: number): void {
    this.stats.throttled++;
    const now = this.clock.now();
    // Calls already in flight when the pause began are answered "throttled" too: one backoff step for all of them.
    if (now >= this.pausedUntil) {
      this.backoffMs = Math.min(BACKOFF_MAX_MS, Math.max(BACKOFF_MIN_MS, this.backoffMs * 2));
      this.pauseSpread = this.random();
    }
    // Jittered, so the workers a backend throttled at once do not all come back in step: a Retry-After is kept
    // (never sooner) plus up to a fifth more, and a backoff step lasts between half of it and all of it. One draw
    // per pause, kept for the answers that arrive during it: were each to draw, a hundred throttled calls in flight
    // would push every pause to the top of its range, and were they to add none, every worker's pause would end
    // exactly a Retry-After after its last answer, in step again.
    const hinted = honouredRetryAfterMs(retryAfterMs);
    const spread = this.pauseSpread;
    const pause =
      hinted !== undefined
        ? Math.min(BACKOFF_MAX_MS, Math.round(hinted * (1 + RETRY_AFTER_JITTER * spread)))
        : Math.round(this.backoffMs / 2 + spread * (this.backoffMs / 2));
    this.pausedUntil = Math.max(this.pausedUntil, now + pause);
    // No burst when the pause ends: the bucket starts empty then and refills at its rate.
    this.tokens = 0;
    this.refilledAt = this.pausedUntil;
  }

  /** A call went through: the backoff starts small again next time. */
  succeeded(): void {
    if (this.pausedUntil <= this.clock.now()) this.backoffMs = 0;
  }

  private async waitForTokens(cost: number, lane: BudgetLane, signal?: AbortSignal): Promise<void> {
    for (;;) {
      signal?.throwIfAborted();
      const now = this.clock.now();
      if (this.pausedUntil > now) {
        await this.clock.sleep(this.pausedUntil - now, signal);
        continue;
      }
      if (!this.budget) return;
      this.refill(now);
      // Routine calls (the waits' batched checks) leave tokens to urgent ones (a force, a detach request)
      // while any wait: with the budget mostly spent on waits, an abort's force would otherwise queue behind them.
      if (lane === 'routine' && this.urgentWaiting > 0) {
        await this.clock.sleep(Math.ceil(1000 / this.budget.callsPerSecond), signal);
        continue;
      }
      // A call costing more than the burst waits for a full bucket and takes it (it cannot be split).
      const need = Math.min(cost, this.budget.burst);
      // Routine calls also leave the reserve in the bucket for urgent ones (a call too big for that takes a full bucket).
      const atLeast = lane === 'routine' ? Math.min(this.budget.burst, need + this.reserve) : need;
      if (this.tokens >= atLeast) {
        this.tokens -= need;
        return;
      }
      const waitMs = Math.ceil(((atLeast - this.tokens) / this.budget.callsPerSecond) * 1000);
      await this.clock.sleep(waitMs, signal);
    }
  }

  private refill(now: number): void {
    if (!this.budget) return;
    const elapsed = Math.max(0, now - this.refilledAt);
    this.refilledAt = Math.max(this.refilledAt, now);
    this.tokens = Math.min(this.budget.burst, this.tokens + (elapsed / 1000) * this.budget.callsPerSecond);
  }
}
