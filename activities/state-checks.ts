/**
 * Coalesced state checks: every volume waiting on the same provider shares one
 * backend call per batch (one DescribeVolumes for up to 200 volume ids, one
 * mountinfo read for many devices). Checks that arrive while a batch waits for
 * its budget token join the next batch, so under load batches grow and calls
 * per second stay at the budget.
 */
import { ApplicationFailure } from '@temporalio/common';
import type { AttachmentState, CallOptions, Provider, VolumeOfInstance } from './provider';

interface PendingCheck {
  target: VolumeOfInstance;
  urgent: boolean;
  resolve(state: AttachmentState): void;
  reject(err: unknown): void;
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

export class StateChecks {
  private pending: PendingCheck[] = [];
  private flushing = false;
  readonly maxBatch: number;

  constructor(
    private readonly provider: Provider,
    private readonly call: BudgetedCall,
  ) {
    this.maxBatch = provider.getAttachmentStates ? Math.max(1, provider.maxBatch ?? 1) : 1;
  }

  /**
   * The backend's state of one volume, answered from the next batch. An `urgent` check (a stop
   * blocked on it: right after a request, before a force) goes to the front of the next batch and
   * does not wait for others to gather; a wait's routine check does.
   */
  check(
    target: VolumeOfInstance,
    signal?: AbortSignal,
    priority: 'urgent' | 'routine' = 'routine',
  ): Promise<AttachmentState> {
    if (this.maxBatch === 1) {
      return this.call('getAttachmentState', (options) =>
        this.provider.getAttachmentState(target.instanceId, target.volume, { ...options, signal }),
      );
    }
    return new Promise<AttachmentState>((resolve, reject) => {
      // A cancelled wait leaves the batch at once; the batch itself goes on for the others.
      const onAbort = () => {
        this.pending = this.pending.filter((p) => p !== entry);
        reject(signal?.reason);
      };
      const entry: PendingCheck = {
        target,
        urgent: priority === 'urgent',
        resolve: (state) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(state);
        },
        reject: (err) => {
          signal?.removeEventListener('abort', onAbort);
          reject(err);
        },
      };
      if (priority === 'urgent') {
        this.pending.unshift(entry);
        this.endGathering();
      } else {
        this.pending.push(entry);
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      if (!this.flushing) void this.flush(priority === 'urgent');
    });
  }

  /** Ends the current gathering pause early (an urgent check arrived). */
  private endGathering: () => void = () => undefined;

  private async flush(urgent: boolean): Promise<void> {
    this.flushing = true;
    try {
      if (!urgent) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, GATHER_MS);
          this.endGathering = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        this.endGathering = () => undefined;
      }
      while (this.pending.length > 0) {
        const batch = this.pending.splice(0, this.maxBatch);
        const getStates = this.provider.getAttachmentStates?.bind(this.provider);
        if (!getStates) throw new Error('unreachable: batching without getAttachmentStates');
        try {
          const states = await this.call(
            'getAttachmentStates',
            (options) =>
              getStates(
                batch.map((p) => p.target),
                options,
              ),
            true,
            this.provider.batchRequests?.(batch.map((p) => p.target)) ?? 1,
            batch.some((p) => p.urgent) ? 'urgent' : 'routine',
          );
          batch.forEach((p, i) => {
            const state = states[i];
            if (state === undefined) p.reject(new Error(`provider ${this.provider.name} answered too few states`));
            else p.resolve(state);
          });
        } catch (err) {
          // A final answer about the batch may be about one volume of it (a refused device): ask each
          // on its own so one request's problem never fails another's wait. Transient ones (throttling)
          // fail the batch: one call per volume is the opposite of what a throttled backend needs.
          if (!(err instanceof ApplicationFailure && err.nonRetryable)) {
            for (const p of batch) p.reject(err);
            continue;
          }
          for (const p of batch) {
            this.call(
              'getAttachmentState',
              (options) => this.provider.getAttachmentState(p.target.instanceId, p.target.volume, options),
              true,
            ).then(p.resolve, p.reject);
          }
        }
      }
    } finally {
      this.flushing = false;
    }
  }
}
