/**
 * A force attempt's moment, recorded by the Temporal server before the force leaves (docs/architecture.md,
 * "Retries"). The attempt's own heartbeat says it too, but the SDK holds heartbeats up to its throttle interval
 * (a second on this worker), and a worker killed in that second would leave the next attempt no word of a force
 * that went out: an audit that could then call a forced volume `detached`. So the attempt also sends the heartbeat
 * straight to the server by its task token and waits for the answer, one round trip, before the request leaves.
 */
import { ApplicationFailure, CancelledFailure, type Context } from '@temporalio/activity';
import { sdkFailureOn, serverSays } from './detach-watch';

/** Sends one heartbeat of a running attempt to the server by task token; resolves once the server recorded it. */
export type ConfirmHeartbeat = (taskToken: Uint8Array, details: unknown) => Promise<void>;

/** Tries within the attempt when the server does not answer (0.2 s, then 0.4 s apart), each bounded. */
const TRIES = 3;
const PAUSE_MS = 200;
/** Longest one try may take: past it the force waits no longer (a force is urgent) and the attempt fails. */
export const CONFIRM_TIMEOUT_MS = 3_000;
/** How long a cancel the server told us of may take to reach the SDK (its next heartbeat) before we stop waiting. */
const CANCEL_HEARD_WITHIN_MS = 3_000;

/**
 * Has the server record `said` for the running attempt, or throws: then no force may leave. Without `confirm` (the
 * SDK's mock activity environment has no server) the SDK's heartbeat alone carries the moment.
 */
export async function recordForceMoment(ctx: Context, said: unknown, confirm: ConfirmHeartbeat | undefined) {
  if (!confirm) return;
  for (let tries = 1; ; tries++) {
    try {
      // A cancel ends the wait at once (the connection cannot abort a request it sent).
      await withTimeout(Promise.race([confirm(ctx.info.taskToken, said), ctx.cancelled]), CONFIRM_TIMEOUT_MS);
      break;
    } catch (err) {
      // News from the server of the attempt (cancelled, gone, paused, reset): asking again would hear the same.
      if (err instanceof CancelledFailure || serverSays(err) !== undefined || tries >= TRIES) throw err;
      await ctx.sleep(PAUSE_MS * 2 ** (tries - 1));
    }
  }
  // The attempt was cancelled while the server was asked (its worker shutting down, say): no force leaves now.
  if (ctx.cancellationSignal.aborted) throw ctx.cancellationSignal.reason;
}

/**
 * What the attempt ends with when its moment was not recorded (no force was sent). A cancel the SDK has heard stays a
 * cancel. News the server gave our heartbeat first ends the attempt as the SDK would have ended it on hearing it:
 * paused and reset as the SDK's failures of those names; a cancel as the SDK's cancel, once the SDK has heard of it
 * too (at its next heartbeat, within a second here; after 3 s we stop waiting). Anything else is a retryable
 * `ForceNotRecorded`: no answer in three tries, the server saying the attempt is no longer current, a cancel the SDK
 * did not hear in time, any other error of the call.
 */
export async function forceNotRecorded(ctx: Context, err: unknown): Promise<Error> {
  if (err instanceof CancelledFailure) return err;
  // Cancelled while a try failed (the worker shutting down in a Temporal outage, say): the cancel is what ends it.
  const { reason } = ctx.cancellationSignal;
  if (ctx.cancellationSignal.aborted && reason instanceof CancelledFailure) return reason;
  const said = serverSays(err);
  if (said === 'paused' || said === 'reset') return sdkFailureOn(said);
  if (said === 'cancelled') {
    const heard = await Promise.race([
      ctx.cancelled.then(
        () => undefined,
        (cancel: unknown) => cancel,
      ),
      new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), CANCEL_HEARD_WITHIN_MS).unref()),
    ]);
    if (heard instanceof CancelledFailure) return heard;
  }
  const message = err instanceof Error ? err.message : String(err);
  return ApplicationFailure.create({
    message: `the Temporal server did not record that a force was about to leave (${message}), so none was sent`,
    type: 'ForceNotRecorded',
    nonRetryable: false,
  });
}

async function withTimeout<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  // An answer after the timeout is dropped, a late failure too (not an unhandled rejection).
  work.catch(() => undefined);
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([work, late]);
  } finally {
    clearTimeout(timer);
  }
}
