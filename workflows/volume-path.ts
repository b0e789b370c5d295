/**
 * One volume's path (docs/contract.md "States"): request the detach, wait for it on the waits' task
 * queue, and once the stop is interrupted (after this volume's forceGrace) force it, or on a cancel
 * give it up. Every volume of a stop runs this in parallel; the stop (stop-instance.ts) decides what
 * happens once all of them have settled.
 */
import {
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  condition,
  isCancellation,
  patched,
  TimeoutFailure,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import { StopForcedKey } from '../common/names';
import { MAX_VOLUMES, type VolumeRef } from '../common/request';
import type { Escalation, VolumeState, VolumeStatus } from '../common/status';
import {
  forceSentAt,
  forcesTaskQueue,
  type VolumeTarget,
  waitsTaskQueue,
  watchHeartbeatTimeoutMs,
} from '../common/stop-activities';
import { activities, BOUNDED, force, urgent, wait, watchedWait, watchedWaitTimed } from './activity-options';
import { failureMessage, settled } from './settled';
import { fail } from './stop-end';
import { countForce, describe, say } from './stop-report';
import { canMove, interrupted, type StopState } from './stop-state';

/** Workflow version 8: waits scheduled for the worker's watch list (workflows/activity-options.ts watchedWait). */
const WATCHED_WAITS = 'watched-waits';
/** Workflow version 9: a watched wait's heartbeat timeout is the requesting worker's setting (watchedWaitTimed). */
const WORKER_TIMED_WATCH = 'worker-timed-watch';
/** Workflow version 10: a volume found detached after its force attempts failed, when a force went out, was forced. */
const FORCE_SENT_AUDITED = 'force-sent-audited';
/** Workflow version 12: forces run on the forces task queue, on slots of their own (common/stop-activities.ts). */
const FORCE_LANE = 'force-lane';

/** Adds the volumes (found attached again: back to `attached`) and detaches them all in parallel. */
export async function detachAll(state: StopState, refs: VolumeRef[]): Promise<void> {
  // A cancel forces nothing more, and a volume found attached after it is not detached either.
  if (state.cancelled)
    fail(state, `cancelled at ${state.cancelled.at}: instance ${state.request.instanceId} was not stopped`);
  const known = new Map((state.volumes ?? []).map((v) => [v.volumeId, v]));
  const total = new Set([...known.keys(), ...refs.map((v) => v.volumeId)]).size;
  if (total > MAX_VOLUMES) {
    fail(
      state,
      `instance ${state.request.instanceId} has ${total} volumes to detach; one stop handles at most ${MAX_VOLUMES}`,
    );
  }
  const work = refs.map((ref) => {
    let volume = known.get(ref.volumeId);
    if (!volume) {
      volume = { volumeId: ref.volumeId, state: 'attached', attempts: 0 };
      state.volumes = [...(state.volumes ?? []), volume];
    } else {
      move(state, volume, 'attached');
      delete volume.detachedAt;
    }
    const path = state.features.sharedInterruption ? detachOne : detachOneOwnWaits;
    return path(state, volume, {
      provider: state.request.provider,
      instanceId: state.request.instanceId,
      volume: ref,
    });
  });
  describe(state);
  await Promise.all(work);
}

/** One volume: graceful until interrupted (and its forceGrace passed), then force; a cancel forces nothing. */
async function detachOne(state: StopState, volume: VolumeStatus, target: VolumeTarget): Promise<void> {
  const firstRequestMs = Date.now();
  const id = volume.volumeId;
  const graceful = new CancellationScope();
  const detached = startGraceful(state, volume, target, graceful);
  // Every volume of the stop waits on the one interruption promise: a promise per volume per wait would
  // cost a 256-volume stop thousands of them on every replay (the SDK records a stack for each).
  let first = await Promise.race([detached, whenInterrupted(state)]);
  const graceLeft = state.request.forceGraceMs === null ? 0 : firstRequestMs + state.request.forceGraceMs - Date.now();
  if (first === 'interrupted' && state.escalation && !state.cancelled && graceLeft > 0) {
    // forceGrace: the graceful detach goes on until it passes; a cancel ends it at once.
    const grace = new CancellationScope();
    const over = grace
      .run(() =>
        condition(() => state.cancelled !== null, graceLeft, {
          summary: say.forceGrace(state.request.forceGraceMs, id),
        }),
      )
      .then(() => 'interrupted' as const);
    first = await Promise.race([detached, over]);
    if (first !== 'interrupted') grace.cancel();
  }
  if (first === 'detached' || first === 'error') {
    settle(state, volume, first === 'detached' ? 'detached' : 'failed');
    return;
  }
  graceful.cancel();
  const escalation = state.escalation;
  state.cancelledWork.push(detached);
  if (!escalation || state.cancelled) {
    volume.lastError = `stop cancelled at ${state.cancelled?.at} before ${id} was detached`;
    settle(state, volume, 'failed');
    return;
  }
  await forceDetach(state, volume, target, escalation);
}

/**
 * detachOne as stops started before `ownership-events` run it, kept as it was: a scope and a condition of
 * its own per volume. Its commands come in another order than detachOne's when an abort finds a deadline
 * timer armed and forceGrace left (the deadline's timer was cancelled after the volumes' grace timers
 * started), so a stop in flight must finish on the code that started it.
 */
async function detachOneOwnWaits(state: StopState, volume: VolumeStatus, target: VolumeTarget): Promise<void> {
  const firstRequestMs = Date.now();
  const id = volume.volumeId;
  const graceful = new CancellationScope();
  const detached = startGraceful(state, volume, target, graceful);
  const timer = new CancellationScope();
  const due = timer
    .run(async () => {
      await condition(() => interrupted(state));
      const graceLeft =
        state.request.forceGraceMs === null ? 0 : firstRequestMs + state.request.forceGraceMs - Date.now();
      if (state.escalation && graceLeft > 0) {
        await condition(() => state.cancelled !== null, graceLeft, {
          summary: say.forceGrace(state.request.forceGraceMs, id),
        });
      }
      return state.cancelled ? ('cancel' as const) : ('force' as const);
    })
    .catch(() => 'settled' as const);

  const first = await Promise.race([detached, due]);
  if (first === 'detached' || first === 'error') {
    timer.cancel();
    settle(state, volume, first === 'detached' ? 'detached' : 'failed');
    return;
  }
  graceful.cancel();
  const escalation = state.escalation;
  state.cancelledWork.push(detached);
  if (first === 'cancel' || !escalation || state.cancelled) {
    volume.lastError = `stop cancelled at ${state.cancelled?.at} before ${id} was detached`;
    settle(state, volume, 'failed');
    return;
  }
  await forceDetach(state, volume, target, escalation);
}

/**
 * The graceful path of one volume inside `graceful`, as an outcome: detached, cancelled (by the stop's
 * interruption), or error (a final backend answer). Both versions of detachOne start it the same way.
 */
function startGraceful(
  state: StopState,
  volume: VolumeStatus,
  target: VolumeTarget,
  graceful: CancellationScope,
): Promise<'detached' | 'cancelled' | 'error'> {
  if (interrupted(state) && state.request.forceGraceMs === null) {
    return Promise.resolve('cancelled' as const); // escalated before this volume's detach was sent: force at once
  }
  return graceful
    .run(() => detachGracefully(state, volume, target))
    .then(
      () => 'detached' as const,
      (err: unknown) => {
        if (isCancellation(err) || graceful.consideredCancelled) return 'cancelled' as const;
        if (!(err instanceof ActivityFailure)) throw err; // a bug, not a backend answer: fail the task
        volume.lastError = failureMessage(err); // final (unknown instance, refused device): force would not help
        return 'error' as const;
      },
    );
}

/** Resolves once the stop is escalated or cancelled: one promise for all its volumes. */
function whenInterrupted(state: StopState): Promise<'interrupted'> {
  // Outside any cancellable scope: it is shared, and a scope's cancel must not reach the other volumes.
  state.interruption ??= CancellationScope.nonCancellable(() => condition(() => interrupted(state))).then(
    () => 'interrupted' as const,
  );
  return state.interruption;
}

/** Request, then wait; again whenever the wait finds the request lost (the volume `attached` again). */
async function detachGracefully(state: StopState, volume: VolumeStatus, target: VolumeTarget): Promise<void> {
  const id = volume.volumeId;
  for (let rerequests = 0; ; rerequests++) {
    move(state, volume, 'detaching');
    const requested = await activities(say.request(id), urgent).requestDetach(target);
    volume.attempts += requested.requests;
    if (requested.state === 'detached') return;
    // WATCHED_WAITS: the wait holds no slot and its attempt does not end every hold window; its worker's watch list
    // answers for it (and heartbeats it a little before its heartbeat timeout).
    const watched = patched(WATCHED_WAITS);
    // WORKER_TIMED_WATCH: the operator's trade of a lost worker's recovery time against the server's work per stuck
    // volume (a heartbeat a little before each lapses), as the worker that sent the request reported it.
    const options = !watched
      ? wait
      : patched(WORKER_TIMED_WATCH)
        ? watchedWaitTimed(watchHeartbeatTimeoutMs(requested))
        : watchedWait;
    const waited = await activities(say.wait(id), {
      ...options,
      taskQueue: waitsTaskQueue(workflowInfo().taskQueue),
    }).awaitDetached(watched ? { ...target, rerequests, watched } : { ...target, rerequests });
    if (waited.outcome === 'detached') return;
    // Lost, but the race is decided already (escalation or cancel): the volume is no longer this path's.
    if (CancellationScope.current().consideredCancelled) return;
    move(state, volume, 'attached');
  }
}

async function forceDetach(
  state: StopState,
  volume: VolumeStatus,
  target: VolumeTarget,
  escalation: Escalation,
): Promise<void> {
  countForce(escalation.cause);
  if (!state.forced) {
    state.forced = true;
    upsertSearchAttributes([{ key: StopForcedKey, value: true }]);
  }
  move(state, volume, 'force_detaching');
  const lane = patched(FORCE_LANE) ? { ...force, taskQueue: forcesTaskQueue(workflowInfo().taskQueue) } : force;
  const forced = await settled(
    activities(say.force(state, escalation, volume.volumeId), lane).forceDetachVolume(target),
  );
  if (forced.ok) {
    volume.attempts += forced.value.attempts;
    settle(state, volume, forced.value.forced ? 'force_detached' : 'detached');
    return;
  }
  // A volume that detached is detached, whichever path got there (a graceful detach finishing as force is refused).
  const confirmed = await settled(
    activities(say.confirm(volume.volumeId), { ...urgent, retry: BOUNDED }).readAttachmentState(target),
  );
  if (confirmed.ok && confirmed.value === 'detached') {
    // FORCE_SENT_AUDITED: the audit must not hide a force. The last attempt's failure says whether a force went out
    // (this attempt's or an earlier one's); one that did may be what detached the volume, however late it took.
    const forcedLate = forceWentOut(forced.failure) && patched(FORCE_SENT_AUDITED);
    settle(state, volume, forcedLate ? 'force_detached' : 'detached');
    return;
  }
  volume.lastError = forced.why;
  settle(state, volume, 'failed');
}

/**
 * Whether a failed force-detach says a force went out (activities/index.ts sayingForceSent): in its last attempt's
 * failure details, or, for an attempt that timed out (its worker lost), in the heartbeat details it last sent.
 */
export function forceWentOut(failure: ActivityFailure | undefined): boolean {
  const cause = failure?.cause;
  if (cause instanceof ApplicationFailure) return forceSentAt(cause.details?.[0]) !== undefined;
  if (cause instanceof TimeoutFailure) return forceSentAt(cause.lastHeartbeatDetails) !== undefined;
  return false;
}

/** A volume's next state, checked against the contract's table (stop-state.ts); a bad move is a bug. */
export function move(state: StopState, volume: VolumeStatus, next: VolumeState): void {
  if (!canMove(volume.state, next))
    throw new Error(`bug: volume ${volume.volumeId} cannot go from ${volume.state} to ${next}`);
  volume.state = next;
  describe(state);
}

/** A volume's last state on this path; a detach records when. */
export function settle(state: StopState, volume: VolumeStatus, next: 'detached' | 'force_detached' | 'failed'): void {
  if (next !== 'failed') volume.detachedAt = new Date().toISOString();
  move(state, volume, next);
}
