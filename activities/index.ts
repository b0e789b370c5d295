/**
 * The activities: every side effect of a stop. Each takes the provider name
 * from the request and reconciles the backend's actual attachment state
 * towards the workflow's desired one. Errors are mapped to ApplicationFailure
 * types so retry policies can tell transient from final.
 */
import { ApplicationFailure, CancelledFailure, Context } from '@temporalio/activity';
import { ApplicationFailureCategory } from '@temporalio/common';
import type { VolumeRef } from '../common/request';
import { type AttachmentState, ForceUnsupportedError, PermanentProviderError, type Provider } from './provider';

export interface ActivityDeps {
  providers: ReadonlyMap<string, Provider>;
  defaultProvider: string;
  /** How often the detach wait asks the backend; each check is a heartbeat, never a history event. */
  pollIntervalMs: number;
  /**
   * How long one attempt keeps polling before it gives its worker slot back
   * and asks to be retried later. Most detaches finish within this window; a
   * volume stuck for hours then costs a short check every `maxPollIntervalMs`,
   * not a slot. Retries add no history events. Default 60s.
   */
  holdMs?: number;
  /** Longest pause between checks of a volume stuck past the hold window. Default 60s. */
  maxPollIntervalMs?: number;
  /** Called on every provider call and error, for metrics. Must not throw. */
  observe?: (event: ProviderEvent) => void;
}

export type ProviderEvent =
  | { kind: 'call'; provider: string; operation: string }
  | { kind: 'error'; provider: string; operation: string; errorType: string };

export interface VolumeTarget {
  provider?: string | undefined;
  instanceId: string;
  volume: VolumeRef;
}

export interface DetachResult {
  /** Attempt number of the activity that succeeded (1 = first try). */
  attempts: number;
}

export interface WaitResult {
  checks: number;
  /** Times the backend had lost the request (volume back to `attached`) and it was sent again. */
  rerequests: number;
}

export interface WaitHeartbeat {
  checks: number;
  state: AttachmentState;
  since: string;
}

export function createActivities(deps: ActivityDeps) {
  const resolve = (name: string | undefined): Provider => {
    const chosen = name ?? deps.defaultProvider;
    const provider = deps.providers.get(chosen);
    if (!provider) {
      throw ApplicationFailure.nonRetryable(
        `provider "${chosen}" is not configured on this worker (configured: ${[...deps.providers.keys()].join(', ')})`,
        'UnknownProvider',
      );
    }
    return provider;
  };

  /** Runs one provider call, translating its errors into retryable or final failures. */
  const call = async <T>(provider: Provider, operation: string, fn: () => Promise<T>): Promise<T> => {
    deps.observe?.({ kind: 'call', provider: provider.name, operation });
    try {
      return await fn();
    } catch (err) {
      if (err instanceof CancelledFailure) throw err;
      const error = err instanceof Error ? err : new Error(String(err));
      deps.observe?.({ kind: 'error', provider: provider.name, operation, errorType: error.name });
      if (error instanceof ForceUnsupportedError || error instanceof PermanentProviderError) {
        throw ApplicationFailure.create({ message: error.message, type: error.name, nonRetryable: true, cause: error });
      }
      throw ApplicationFailure.create({ message: error.message, type: error.name, nonRetryable: false, cause: error });
    }
  };

  const holdMs = deps.holdMs ?? 60_000;

  /**
   * Runs `fn`, retrying its transient failures every poll interval until `releaseAt` (heartbeating
   * meanwhile, so cancellation still arrives); after that, or on a final error, it throws and the
   * activity's retry policy takes over. One flaky backend call then costs one poll interval instead of
   * the whole attempt plus a retry backoff that grows to a minute. `retries` counts the repeated calls.
   */
  const retryWithinHold = async <T>(
    releaseAt: number,
    fn: () => Promise<T>,
    heartbeat: () => void,
  ): Promise<{ value: T; retries: number }> => {
    const ctx = Context.current();
    for (let retries = 0; ; retries++) {
      try {
        return { value: await fn(), retries };
      } catch (err) {
        const transient = err instanceof ApplicationFailure && !err.nonRetryable;
        if (!transient || Date.now() + deps.pollIntervalMs > releaseAt) throw err;
        heartbeat();
        await ctx.sleep(deps.pollIntervalMs);
      }
    }
  };
  const maxPollIntervalMs = Math.max(deps.maxPollIntervalMs ?? 60_000, deps.pollIntervalMs);

  /**
   * Polls until `detached`, heartbeating each check so cancellation and worker
   * loss are noticed. Past the hold window it fails with `StillDetaching` and a
   * growing `nextRetryDelay`: the server waits, not the worker. The heartbeat
   * details carry the count of checks across those retries.
   */
  const pollUntilDetached = async (
    provider: Provider,
    target: VolumeTarget,
    onAttached: (() => Promise<void>) | undefined,
    releaseAt: number,
  ): Promise<WaitResult> => {
    const ctx = Context.current();
    const previous = ctx.info.heartbeatDetails as Partial<WaitHeartbeat> | undefined;
    const since = previous?.since ?? new Date().toISOString();
    let checks = previous?.checks ?? 0;
    let rerequests = 0;
    let last: AttachmentState = 'detaching';
    for (;;) {
      // A transient error on one check does not throw the attempt away: the next check comes a poll later.
      const { value: state } = await retryWithinHold(
        releaseAt,
        () => call(provider, 'getAttachmentState', () => provider.getAttachmentState(target.instanceId, target.volume)),
        () => ctx.heartbeat({ checks, state: last, since } satisfies WaitHeartbeat),
      );
      last = state;
      checks++;
      if (state === 'detached') return { checks, rerequests };
      if (state === 'attached' && onAttached) {
        // Actual state drifted from desired (the backend dropped the request): ask again.
        await onAttached();
        rerequests++;
      }
      ctx.heartbeat({ checks, state, since } satisfies WaitHeartbeat);
      if (Date.now() + deps.pollIntervalMs > releaseAt) {
        const releases = Math.max(0, ctx.info.attempt - 1);
        throw ApplicationFailure.create({
          type: 'StillDetaching',
          // Expected while a volume is stuck: logged at debug and not counted as an activity failure.
          category: ApplicationFailureCategory.BENIGN,
          message: `${target.volume.volumeId} still ${state} after ${checks} checks since ${since}`,
          nonRetryable: false,
          nextRetryDelay: Math.min(deps.pollIntervalMs * 2 ** releases, maxPollIntervalMs),
        });
      }
      await ctx.sleep(deps.pollIntervalMs);
    }
  };

  return {
    async listAttachedVolumes(input: { provider?: string | undefined; instanceId: string }): Promise<VolumeRef[]> {
      const provider = resolve(input.provider);
      const listed = await call(provider, 'listAttachedVolumes', () => provider.listAttachedVolumes(input.instanceId));
      // A backend may report a volume twice (several attachments, several mounts): detach each once.
      const unique = new Map(listed.map((v) => [v.volumeId, v]));
      return [...unique.values()];
    },

    /**
     * Requests the detach, then waits until the backend reports it detached.
     * One activity for both so a volume costs three history events however
     * long it hangs; the request is idempotent, so a retry simply asks again.
     */
    async detachVolume(target: VolumeTarget): Promise<DetachResult & WaitResult> {
      const provider = resolve(target.provider);
      const request = () =>
        call(provider, 'detachVolume', () => provider.detachVolume(target.instanceId, target.volume));
      const ctx = Context.current();
      // One hold window for the whole attempt: the request and the wait share it.
      const releaseAt = Date.now() + holdMs;
      const { retries } = await retryWithinHold(releaseAt, request, () => ctx.heartbeat(ctx.info.heartbeatDetails));
      const waited = await pollUntilDetached(provider, target, request, releaseAt);
      // Requests sent: one per activity attempt, plus the ones repeated inside this attempt.
      return { attempts: ctx.info.attempt + retries, ...waited };
    },

    async forceDetachVolume(target: VolumeTarget): Promise<DetachResult & WaitResult> {
      const provider = resolve(target.provider);
      if (!provider.supportsForce) {
        throw ApplicationFailure.nonRetryable(
          `provider "${provider.name}" cannot force-detach volumes`,
          'ForceUnsupported',
        );
      }
      const releaseAt = Date.now() + holdMs;
      await call(provider, 'forceDetachVolume', () => provider.forceDetachVolume(target.instanceId, target.volume));
      const waited = await pollUntilDetached(provider, target, undefined, releaseAt);
      return { attempts: Context.current().info.attempt, ...waited };
    },

    async stopInstance(input: {
      provider?: string | undefined;
      instanceId: string;
    }): Promise<{ instanceId: string; state: 'stopped' }> {
      const provider = resolve(input.provider);
      // Stopping can take minutes (AWS waits for `stopped`): heartbeat meanwhile so a lost worker is noticed.
      const ctx = Context.current();
      const beat = setInterval(() => ctx.heartbeat(), 5_000);
      try {
        await call(provider, 'stopInstance', () => provider.stopInstance(input.instanceId));
      } finally {
        clearInterval(beat);
      }
      // Returned so the history's completed event says what happened, not `null`.
      return { instanceId: input.instanceId, state: 'stopped' };
    },
  };
}

export type StopflowActivities = ReturnType<typeof createActivities>;
