/**
 * Coalesced state checks: every volume waiting on the same provider shares one
 * backend call per batch (one DescribeVolumes for up to 200 volume ids, one
 * mountinfo read for many devices). Checks that arrive while a batch waits for
 * its budget token join the next batch, so under load batches grow and calls
 * per second stay at the budget.
 *
 * Urgent checks (a stop blocked on the answer: right after a request, before a
 * force) have batches of their own, flushed at once and alongside the waits'
 * routine batches: an urgent check never waits for a routine batch's budget
 * token or its backend call. At most one batch of each kind is in flight.
 */
import { ApplicationFailure } from '@temporalio/common';
import type { AttachmentState, CallOptions, Provider, VolumeOfInstance } from './provider';

interface PendingCheck {
  target: VolumeOfInstance;
  urgent: boolean;
  resolve(state: AttachmentState): void;
  reject(err: unknown): void;
  /** Asked when the check is taken into a batch: true leaves it out (its wait has ended). */
  withdrawn?: () => boolean;
}

/** A check left out of its batch because its caller said it was withdrawn: nobody is waiting for its answer. */
export class CheckWithdrawn extends Error {
  override readonly name = 'CheckWithdrawn';
}

/** Runs one provider call under the budget, with errors mapped; see Backend.call in activities/backend.ts. */
export type BudgetedCall = <T>(
  operation: string,
  fn: (options: CallOptions) => Promise<T>,
  /** The call serves a batch of many activities: it takes no single activity's cancellation. */
  shared?: boolean,
  /** Backend requests the call makes, in budget tokens. */
  cost?: number,
  /** Whether a stop is blocked on the call (an urgent check rides in the batch). */
  lane?: 'urgent' | 'routine',
) => Promise<T>;

/** How long the first check of a batch waits for others to join it. Short: a lone check should not feel it. */
const GATHER_MS = 20;
/**
 * Most routine checks one urgent batch takes along. They cost no more tokens, but an answer grows with them, and a
 * force waits for its urgent check: a DescribeVolumes of 200 volumes took 7 ms to answer and read, one of ten 1.7 ms,
 * one of one 1.4 ms (the median of 40 calls each, the tests' local EC2 server and the SDK in one process, 2 cores).
 */
export const URGENT_RIDERS = 10;

export class StateChecks {
  /** Routine checks (the waits' polls) not yet in a batch. */
  private pending: PendingCheck[] = [];
  /** Urgent checks not yet in a batch. */
  private urgentPending: PendingCheck[] = [];
  private flushing = false;
  private urgentFlushing = false;
  private sweeping = false;
  readonly maxBatch: number;

  constructor(
    private readonly provider: Provider,
    private readonly call: BudgetedCall,
    /** An error a batch answered for one volume, as the activities take it (Backend's translation). */
    private readonly translate: (operation: string, err: Error) => Error = (_operation, err) => err,
  ) {
    this.maxBatch = provider.getAttachmentStates ? Math.max(1, provider.maxBatch ?? 1) : 1;
  }

  /**
   * The backend's state of one volume, answered from the next batch. An `urgent` check (a stop
   * blocked on it: right after a request, before a force) goes into the next urgent batch, which
   * starts at once, without a gathering pause and without waiting for a routine batch in flight;
   * a wait's routine check waits for others to gather.
   *
   * `cancel` is an activity's signal (a cancelled check leaves its batch at once, rejected with the
   * signal's reason), or, for the watch list's thousands of checks, a question asked when the check is
   * taken into a batch: it costs no listener per check, and a withdrawn check is rejected then
   * (CheckWithdrawn), without a backend call.
   */
  check(
    target: VolumeOfInstance,
    cancel?: AbortSignal | (() => boolean),
    priority: 'urgent' | 'routine' = 'routine',
  ): Promise<AttachmentState> {
    const signal = typeof cancel === 'function' ? undefined : cancel;
    if (this.maxBatch === 1) {
      return this.call(
        'getAttachmentState',
        (options) => {
          // Asked once the budget gave the call its token: a check withdrawn while it waited is not made.
          if (typeof cancel === 'function' && cancel()) return Promise.reject(new CheckWithdrawn('check withdrawn'));
          // Without a signal of its own the call keeps the one it was given (a shared call's timeout).
          return this.provider.getAttachmentState(
            target.instanceId,
            target.volume,
            signal ? { ...options, signal } : options,
          );
        },
        false,
        1,
        priority,
      );
    }
    const urgent = priority === 'urgent';
    return new Promise<AttachmentState>((resolve, reject) => {
      const entry: PendingCheck = { target, urgent, resolve, reject };
      if (typeof cancel === 'function') entry.withdrawn = cancel;
      else if (signal) {
        // A cancelled wait leaves the batch at once; the batch itself goes on for the others.
        const onAbort = () => {
          this.pending = this.pending.filter((p) => p !== entry);
          this.urgentPending = this.urgentPending.filter((p) => p !== entry);
          reject(signal.reason);
        };
        entry.resolve = (state) => {
          signal.removeEventListener('abort', onAbort);
          resolve(state);
        };
        entry.reject = (err) => {
          signal.removeEventListener('abort', onAbort);
          reject(err);
        };
        signal.addEventListener('abort', onAbort, { once: true });
      }
      if (urgent) {
        this.urgentPending.push(entry);
        if (!this.urgentFlushing) void this.flushUrgent();
      } else {
        this.pending.push(entry);
        if (!this.flushing) void this.flushRoutine();
      }
    });
  }

  /**
   * Lets go of withdrawn checks before their batch is taken (which a throttled budget may put off for a minute):
   * a check keeps its caller's wait alive. Once a tick however many waits end in it, so a mass end costs one pass.
   */
  sweepWithdrawn(): void {
    if (this.sweeping || this.maxBatch === 1) return;
    this.sweeping = true;
    setImmediate(() => {
      this.sweeping = false;
      dropWithdrawn(this.pending);
      dropWithdrawn(this.urgentPending);
    });
  }

  /** The waits' checks: a short pause for others to gather, then batches until none is left. */
  private async flushRoutine(): Promise<void> {
    this.flushing = true;
    try {
      await new Promise<void>((resolve) => setTimeout(resolve, GATHER_MS));
      while (this.pending.length > 0) {
        await this.runBatch(this.takeBatch(this.pending), 'routine');
      }
    } finally {
      this.flushing = false;
    }
  }

  /**
   * Urgent checks, at once. Up to URGENT_RIDERS routine checks not yet in a batch ride along when that
   * costs no more backend requests (one DescribeVolumes answers 1 volume or 200 for the same token).
   */
  private async flushUrgent(): Promise<void> {
    this.urgentFlushing = true;
    try {
      while (this.urgentPending.length > 0) {
        const batch = this.takeBatch(this.urgentPending);
        const room = Math.min(URGENT_RIDERS, this.maxBatch - batch.length);
        if (room > 0) dropWithdrawn(this.pending);
        if (room > 0 && this.pending.length > 0) {
          const riders = this.pending.slice(0, room);
          if (this.cost([...batch, ...riders]) <= this.cost(batch)) {
            this.pending.splice(0, riders.length);
            batch.push(...riders);
          }
        }
        await this.runBatch(batch, 'urgent');
      }
    } finally {
      this.urgentFlushing = false;
    }
  }

  /**
   * The next batch from the front of `from`: at most maxBatch checks, and no more than one full bucket of
   * the budget costs (a provider that needs a request per instance would otherwise pay 200 requests for
   * the burst's tokens). The checks left over stay at the front, in order.
   */
  private takeBatch(from: PendingCheck[]): PendingCheck[] {
    dropWithdrawn(from);
    const batch = from.splice(0, this.maxBatch);
    const burst = this.provider.budget?.burst;
    if (burst === undefined) return batch;
    while (batch.length > 1 && this.cost(batch) > burst) from.unshift(...batch.splice(Math.ceil(batch.length / 2)));
    return batch;
  }

  /** Backend requests a batch costs, as the provider counts them; one per check if it cannot say. */
  private cost(batch: readonly PendingCheck[]): number {
    try {
      return this.provider.batchRequests?.(batch.map((p) => p.target)) ?? 1;
    } catch {
      return batch.length;
    }
  }

  /** One batch call, its answers handed out; never throws (every check of the batch is settled). */
  private async runBatch(batch: PendingCheck[], lane: 'urgent' | 'routine'): Promise<void> {
    if (batch.length === 0) return; // every check of it was withdrawn
    try {
      const getStates = this.provider.getAttachmentStates?.bind(this.provider);
      if (!getStates) throw new Error('unreachable: batching without getAttachmentStates');
      const states = await this.call(
        'getAttachmentStates',
        (options) =>
          getStates(
            batch.map((p) => p.target),
            options,
          ),
        true,
        this.cost(batch),
        lane,
      );
      batch.forEach((p, i) => {
        const state = states[i];
        if (state === undefined) p.reject(new Error(`provider ${this.provider.name} answered too few states`));
        else if (state instanceof Error) p.reject(this.translate('getAttachmentStates', state));
        else p.resolve(state);
      });
    } catch (err) {
      // A final answer about the batch may be about one volume of it (a refused device): ask each
      // on its own so one request's problem never fails another's wait. Transient ones (throttling)
      // fail the batch: one call per volume is the opposite of what a throttled backend needs.
      if (!(err instanceof ApplicationFailure && err.nonRetryable)) {
        for (const p of batch) p.reject(err);
        return;
      }
      for (const p of batch) {
        this.call(
          'getAttachmentState',
          (options) => this.provider.getAttachmentState(p.target.instanceId, p.target.volume, options),
          true,
          1,
          p.urgent ? 'urgent' : 'routine',
        ).then(p.resolve, p.reject);
      }
    }
  }
}

/** Takes the withdrawn checks out of `from`, in place and in order, and settles them. */
function dropWithdrawn(from: PendingCheck[]): void {
  let kept = 0;
  for (const p of from) {
    if (p.withdrawn?.()) p.reject(new CheckWithdrawn('check withdrawn'));
    else from[kept++] = p;
  }
  from.length = kept;
}
