/**
 * Activities of the baseline workflows (bench/baseline-workflows.ts): a no-op
 * for Temporal's floor, a marker that records when it ran, and single-call
 * wrappers around a provider for the naive polling stop. Registered on the
 * baseline worker only.
 */
import { ApplicationFailure, Context } from '@temporalio/activity';
import type { Provider } from '../activities/provider';

/** When each `mark` activity ran (Date.now() inside the activity), with waiters. */
export class Marks {
  private readonly at = new Map<string, number>();
  private readonly waiters = new Map<string, Array<(at: number) => void>>();

  record(id: string): void {
    if (this.at.has(id)) return;
    const now = Date.now();
    this.at.set(id, now);
    for (const wake of this.waiters.get(id) ?? []) wake(now);
    this.waiters.delete(id);
  }

  when(id: string): Promise<number> {
    const at = this.at.get(id);
    if (at !== undefined) return Promise.resolve(at);
    return new Promise((resolve) => this.waiters.set(id, [...(this.waiters.get(id) ?? []), resolve]));
  }
}

export interface BaselineActivityOptions {
  provider: Provider;
  marks?: Marks;
  /** Called with the activity's name on every call (progress counters of the memory benchmark). */
  observe?: (activity: 'noop' | 'hang') => void;
  /** `hang` asks the server to wait this long before its 2nd attempt, doubling up to hangMaxRetryDelayMs. */
  hangRetryDelayMs?: number;
  hangMaxRetryDelayMs?: number;
}

export function createBaselineActivities(options: BaselineActivityOptions) {
  const { provider, observe } = options;
  const marks = options.marks ?? new Marks();
  const hangRetryDelayMs = options.hangRetryDelayMs ?? 5_000;
  const hangMaxRetryDelayMs = options.hangMaxRetryDelayMs ?? 60_000;
  return {
    /** Does nothing: what one activity costs Temporal and the SDK, with no work in it. */
    async noop(_instanceId: string): Promise<void> {
      observe?.('noop');
    },
    /**
     * Never succeeds: each attempt fails at once and asks the server to wait
     * before the next, like stopflow's detach wait on a stuck volume past its
     * hold window, minus the backend call.
     */
    async hang(id: string): Promise<void> {
      observe?.('hang');
      throw ApplicationFailure.create({
        type: 'StillWaiting',
        message: `${id} is waiting`,
        nonRetryable: false,
        nextRetryDelay: Math.min(hangRetryDelayMs * 2 ** (Context.current().info.attempt - 1), hangMaxRetryDelayMs),
      });
    },
    async mark(id: string): Promise<void> {
      marks.record(id);
    },
    async requestDetach(input: { instanceId: string; volumeId: string }): Promise<void> {
      await provider.detachVolume(input.instanceId, { volumeId: input.volumeId });
    },
    async attachmentState(input: { instanceId: string; volumeId: string }): Promise<string> {
      return provider.getAttachmentState(input.instanceId, { volumeId: input.volumeId });
    },
    async forceDetach(input: { instanceId: string; volumeId: string }): Promise<void> {
      await provider.forceDetachVolume(input.instanceId, { volumeId: input.volumeId });
    },
    async stopInstance(instanceId: string): Promise<void> {
      await provider.stopInstance(instanceId);
    },
  };
}

export type BaselineActivities = ReturnType<typeof createBaselineActivities>;
