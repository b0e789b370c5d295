import type { VolumeRef } from '../common/request';

/**
 * One interface for every backend (docs/contract.md "Providers"). Adapters report the
 * backend's actual state; the workflow owns the desired state and the
 * activities reconcile one towards the other.
 *
 * The rules every adapter keeps, checked by test/conformance/provider-conformance.ts:
 * - never report `detached` before the backend confirms that nothing holds the volume;
 * - every write is idempotent: asking twice is the same as asking once;
 * - every call honours `options.signal` (the activity's cancellation) and has a
 *   timeout of its own, so no call outlives the activity that made it;
 * - errors are typed: TransientProviderError (retried), ThrottledProviderError
 *   (retried after the backend's hint, and slows every call of this provider),
 *   PermanentProviderError and ForceUnsupportedError (final).
 */
export type AttachmentState = 'attached' | 'detaching' | 'detached';

/** What a force's request got from the backend (Provider.forceDetachVolume). */
export type ForceAnswer = 'sent' | 'not-attached';

/** Passed to every call: the activity's cancellation, to hand to SDKs and child processes. */
export interface CallOptions {
  signal?: AbortSignal | undefined;
  /**
   * The same for every retry of one activity of one stop, and different for every other:
   * a backend request id (GCP `requestId`), or the key under which an adapter remembers
   * that it already did a one-shot step (the linux stop command, across a reboot).
   */
  idempotencyKey?: string | undefined;
  /**
   * Waits for a token of the provider's call budget. A call that sends more requests than its first (the polls of
   * a stop that waits for `stopped`) awaits this before each of them, so a long call keeps to the budget too.
   * Absent outside an activity's budgeted call.
   */
  nextRequest?: (() => Promise<void>) | undefined;
}

/** One volume of one instance: what a state check is about. */
export interface VolumeOfInstance {
  instanceId: string;
  volume: VolumeRef;
}

/** How many calls per second a provider may make to its backend (token bucket: rate and burst). */
export interface CallBudget {
  callsPerSecond: number;
  burst: number;
}

export interface Provider {
  /** The name requests use to choose this provider ("simulated", "linux", "aws"). */
  readonly name: string;
  /** Whether the backend has a forced detach at all; a volume may still refuse it (ForceUnsupportedError). */
  readonly supportsForce: boolean;
  /**
   * Whether the backend itself refuses a force of a volume not attached to the instance, and forceDetachVolume
   * then answers `not-attached` (`sent` when an earlier try of the same call may have been applied: the answer may
   * be that try's own effect). The force-detach activity then sends a first force without reading the volume
   * before it (the read keeps a force off a volume the graceful detach already freed; here the backend does): one
   * call and one budget token fewer between an abort and its force. Omitted: false, the volume is read first.
   */
  readonly forceRefusesDetached?: boolean;
  /**
   * The call budget this backend allows, shared by every stop on this worker. Omitted: no
   * limit (a local backend such as the host's own devices).
   */
  readonly budget?: CallBudget;
  /** Most volumes `getAttachmentStates` takes in one call. Default 1 (no coalescing). */
  readonly maxBatch?: number;
  /**
   * How many backend requests one `getAttachmentStates` call makes, for the call budget (one
   * VM read per instance, say). Omitted: one, whatever the batch (one DescribeVolumes).
   */
  batchRequests?(targets: readonly VolumeOfInstance[]): number;

  /** The volumes attached to the instance now, boot/root volume excluded. */
  listAttachedVolumes(instanceId: string, options?: CallOptions): Promise<VolumeRef[]>;
  /** Requests a normal detach. Idempotent: a volume already detaching or detached is success. */
  detachVolume(instanceId: string, volume: VolumeRef, options?: CallOptions): Promise<void>;
  /** The backend's current answer for one volume; `detached` only when the backend confirms it. */
  getAttachmentState(instanceId: string, volume: VolumeRef, options?: CallOptions): Promise<AttachmentState>;
  /**
   * The same for many volumes in one backend call (one DescribeVolumes, one mountinfo read), in
   * the order given. Optional: without it each volume is checked on its own. A batch that reads
   * instance by instance (one VM read each) puts the error of an instance it could not read in the
   * place of that instance's volumes and answers the rest: one instance (a zone away) must not leave
   * every volume of the batch unanswered. An error thrown is the whole batch's.
   */
  getAttachmentStates?(
    targets: readonly VolumeOfInstance[],
    options?: CallOptions,
  ): Promise<Array<AttachmentState | Error>>;
  /**
   * Forces the detach; may lose unflushed writes. Idempotent like detachVolume. `not-attached`: the backend
   * refused the force because the volume is not attached to the instance (nothing was forced); `sent`: anything
   * else that did not throw.
   */
  forceDetachVolume(instanceId: string, volume: VolumeRef, options?: CallOptions): Promise<ForceAnswer>;
  /** Stops the instance and returns once the backend reports it stopped. Idempotent. */
  stopInstance(instanceId: string, options?: CallOptions): Promise<void>;
  /**
   * Whether the backend says the instance is stopped (or gone), read-only. Asked when an
   * escalated stop's last stop attempts failed, so that a stop whose instance did stop is not
   * reported failed. Optional: without it the stop says the instance's state is unknown.
   */
  isInstanceStopped?(instanceId: string, options?: CallOptions): Promise<boolean>;
  /** Start-up check: throws with a clear message when the backend cannot be used from this worker. */
  checkUsable?(): Promise<void>;
}

/** A failure worth retrying: timeouts, 5xx, a busy device. */
export class TransientProviderError extends Error {
  override name = 'TransientProviderError';
  constructor(
    message: string,
    /**
     * The backend answered and did nothing (a device still held, a volume in the wrong state), as opposed to a
     * timeout or a 5xx after which the request may have been applied. A force refused so is not counted as sent.
     */
    readonly refused = false,
  ) {
    super(message);
  }
}

/** Whether a provider error says the request was refused, with nothing done (throttled, refused, permanent). */
export function refusedRequest(err: unknown): boolean {
  return (
    (err instanceof TransientProviderError && (err.refused || err instanceof ThrottledProviderError)) ||
    err instanceof ForceUnsupportedError ||
    err instanceof PermanentProviderError
  );
}

/**
 * The backend said "too many requests". Retried like a transient error, and every call of
 * the same provider on this worker waits out the backoff (the server's hint when it gave one).
 */
export class ThrottledProviderError extends TransientProviderError {
  override name = 'ThrottledProviderError';
  constructor(
    message: string,
    /** The backend's Retry-After, when it said one. */
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

/** The backend cannot force-detach this volume; retrying will not change that. */
export class ForceUnsupportedError extends Error {
  override name = 'ForceUnsupported';
}

/** A failure no retry will fix (unknown instance, permission denied, bad configuration). */
export class PermanentProviderError extends Error {
  override name = 'PermanentProviderError';
}
