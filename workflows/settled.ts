/** Activity outcomes as values, and a call that an escalation or a cancel interrupts. */
import { ActivityFailure, CancellationScope, condition, isCancellation } from '@temporalio/workflow';

export const INTERRUPTED = 'interrupted by escalation or cancel';
export type Settled<T> = { ok: true; value: T } | { ok: false; why: string; failure?: ActivityFailure };

/** An activity's outcome as a value: its value, or the innermost message of its failure (and the failure). */
export async function settled<T>(call: Promise<T>): Promise<Settled<T>> {
  try {
    return { ok: true, value: await call };
  } catch (err) {
    if (!(err instanceof ActivityFailure)) throw err;
    return { ok: false, why: failureMessage(err), failure: err };
  }
}

/**
 * Runs `call` until it ends or `stopWaiting()` holds (the stop escalated or was cancelled); then
 * cancels it and waits for the cancel to land (writes are never abandoned). `mayInterrupt`, asked only
 * then, can keep the call running to its end instead (a rule that came with a patch).
 */
export async function untilInterrupted<T>(
  stopWaiting: () => boolean,
  call: () => Promise<T>,
  mayInterrupt: () => boolean = () => true,
): Promise<Settled<T>> {
  const scope = new CancellationScope();
  const outcome = scope
    .run(() => settled(call()))
    .catch((err: unknown) => {
      if (isCancellation(err)) return { ok: false as const, why: INTERRUPTED };
      throw err;
    });
  const watcher = new CancellationScope();
  const stop = watcher.run(() => condition(stopWaiting)).catch(() => undefined);
  const first = await Promise.race([outcome, stop.then(() => undefined)]);
  watcher.cancel();
  if (first) return first;
  if (!mayInterrupt()) return outcome;
  scope.cancel();
  const last = await outcome;
  return last.ok ? last : { ok: false, why: INTERRUPTED };
}

/** The innermost message of an activity failure, e.g. "simulated volume vol-1 does not support force-detach". */
export function failureMessage(err: unknown): string {
  let current: unknown = err;
  while (current instanceof ActivityFailure && current.cause) current = current.cause;
  return current instanceof Error ? current.message : String(current);
}
