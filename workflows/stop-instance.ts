/**
 * stopInstance: the contract's state machine (docs/contract.md, docs/architecture.md).
 * The instance is stopped only by the activity that first asks the backend what is
 * attached and finds nothing; until then the stop stays `stopping`.
 *
 *   stopping ─ every volume detached ─► stopInstanceIfDetached ─┬─ nothing listed ─► stopped
 *      │                                                        └─ found attached: that volume, same path
 *      ├─ deadline or `abort` ─► force what is left (after forceGrace)
 *      ├─ workflow cancel ─────► force nothing, stop nothing ─► failed (StopFailed)
 *      ├─ a volume failed, even by force ─────────────────────► failed (StopFailed)
 *      └─ a volume another instance's running stop holds ─────► failed (VolumeHeld), nothing detached
 *   and at the end, either way: the completion event handed to a deliverStopEvent child (if configured).
 *
 * Writes to the backend (request, force, stop) are never abandoned. Cancelled
 * graceful work never delays a force or the stop; it is awaited, bounded, only
 * before the stop ends. Waiting on a stuck volume happens inside one activity on
 * its own task queue, so history does not grow while it waits.
 */
import {
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  condition,
  isCancellation,
  patched,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import { DURATION_RULE, parseDuration } from '../common/duration';
import { STOP_FAILED, StopCauseKey, StopForcedKey, StopPhaseKey, VOLUME_HELD } from '../common/names';
import type { VolumeHolder } from '../common/ownership-events';
import { MAX_VOLUMES, type StopRequest, type VolumeRef } from '../common/request';
import type {
  AbortPayload,
  Escalation,
  EscalationCause,
  StopPhase,
  StopStatus,
  VolumeState,
  VolumeStatus,
} from '../common/status';
import { type StopInstanceOutcome, type VolumeTarget, waitsTaskQueue } from '../common/stop-activities';
import { activities, BOUNDED, force, stopping, UNLIMITED, urgent, wait } from './activity-options';
import { announceEnd } from './completion-event';
import { Deadline } from './deadline';
import { abortSignal, setMaxStopDurationUpdate, statusQuery } from './definitions';
import { legacyStopInstance } from './legacy/stop-instance-v2';
import { failureMessage, INTERRUPTED, type Settled, settled, untilInterrupted } from './settled';
import { countForce, describe, reportEnd, reportEscalation, say } from './stop-report';
import { allVolumesSettled, canMove, interrupted, iso, type StopState, snapshot } from './stop-state';
import { invalidUpdate, validate } from './validate';
import { heldMessage, otherHolders, publishVolumes, releaseVolumes, volumeHeld } from './volume-ownership';

/**
 * Patches (test/replay.test.ts replays the histories of every version):
 * RECONCILER — this file. Stops started before it run workflows/legacy/stop-instance-v2.ts.
 */
const RECONCILER = 'reconciler';
/**
 * OWNERSHIP_EVENTS — StopVolumes kept current, a volume another instance's running stop holds refused
 * (VolumeHeld), and a completion event handed to a deliverStopEvent child when the stop ends (if the worker
 * has an endpoint). One patch for both: every patch costs a marker and a search-attribute upsert in history.
 */
const OWNERSHIP_EVENTS = 'ownership-events';

/** Longest a stop waits, at its end, for cancelled graceful work to acknowledge (waits heartbeat every 20 s). */
const CANCELLED_WORK_BOUND = '30s';
/** Rounds of "the backend still lists something attached" before the stop gives up. */
const MAX_FINAL_CHECKS = 5;
export async function stopInstance(input: StopRequest): Promise<StopStatus> {
  if (!patched(RECONCILER)) return legacyStopInstance(input);
  const request = validate(input);
  const startedAtMs = workflowInfo().runStartTime.getTime();
  const state: StopState = {
    request,
    startedAtMs,
    deadline: new Deadline(startedAtMs, request.maxStopDurationMs),
    phase: 'stopping',
    escalation: null,
    cancelled: null,
    volumes: null,
    instanceStopped: false,
    forced: false,
    cancelledWork: [],
    interruption: null,
    // Decided once, at the start: a stop started before a patch keeps its rules to the end.
    features: ownershipEvents(patched(OWNERSHIP_EVENTS)),
  };
  setHandler(statusQuery, () => snapshot(state));
  setHandler(abortSignal, (payload?: AbortPayload) => escalate(state, 'abort', payload));
  setHandler(
    setMaxStopDurationUpdate,
    ({ maxStopDuration }) => {
      state.deadline.set(parseDuration(maxStopDuration) ?? null);
      describe(state);
      return { deadline: iso(state.deadline.atMs) };
    },
    { validator: (update) => refuseDeadlineChange(state, update?.maxStopDuration) },
  );
  // Cancel means "stop trying": nothing more is forced or stopped, and the stop fails (docs/contract.md).
  CancellationScope.current().cancelRequested.catch(() => {
    if (state.phase !== 'stopping' || state.cancelled) return;
    state.cancelled = { at: new Date().toISOString() };
    describe(state);
  });
  // The stop's own steps are never cancelled from outside: it decides what a cancel stops.
  return CancellationScope.nonCancellable(async () => {
    let status: StopStatus;
    try {
      status = await runToEnd(state);
    } catch (err) {
      const ended = err instanceof ApplicationFailure && (err.type === STOP_FAILED || err.type === VOLUME_HELD);
      if (ended && state.features.completionEvents) await announceEnd(snapshot(state), err.type ?? undefined);
      throw err;
    }
    if (state.features.completionEvents) await announceEnd(status);
    return status;
  });
}

function ownershipEvents(on: boolean): StopState['features'] {
  return { volumeOwnership: on, completionEvents: on };
}

async function runToEnd(state: StopState): Promise<StopStatus> {
  try {
    return await run(state);
  } finally {
    // Cancelled waits end within a poll once their volume is detached (at once on the worker that forced
    // it). One a cancel left stuck hears of it at its next heartbeat; past the bound it is left behind.
    if (state.cancelledWork.length > 0) {
      let settled = false;
      void Promise.allSettled(state.cancelledWork).then(() => {
        settled = true;
      });
      await condition(() => settled, CANCELLED_WORK_BOUND);
    }
  }
}

async function run(state: StopState): Promise<StopStatus> {
  const { instanceId, provider } = state.request;
  // StopflowClient sets these at start; a stop started elsewhere (temporal CLI, HTTP API) gets them here.
  if (workflowInfo().typedSearchAttributes.get(StopPhaseKey) !== 'stopping') {
    upsertSearchAttributes([
      { key: StopPhaseKey, value: 'stopping' },
      { key: StopForcedKey, value: false },
    ]);
  }
  describe(state);
  // The deadline runs from the start: listing is inside it too.
  void state.deadline
    .expired(() => state.phase !== 'stopping' || interrupted(state), say.deadline)
    .then((expired) => expired && escalate(state, 'timeout'));

  let volumes = state.request.volumes;
  if (!volumes) {
    const listed = await untilInterrupted(
      () => interrupted(state),
      () => activities(say.list(instanceId), urgent).listAttachedVolumes({ provider, instanceId }),
    );
    if (!listed.ok) fail(state, `could not list the volumes attached to ${instanceId}: ${listed.why}`);
    volumes = listed.value;
  }
  if (state.features.volumeOwnership) await claimVolumes(state, volumes);
  await detachAll(state, volumes);

  for (let check = 1; ; check++) {
    if (state.cancelled) fail(state, `cancelled at ${state.cancelled.at}: instance ${instanceId} was not stopped`);
    const failed = (state.volumes ?? []).filter((v) => v.state === 'failed');
    if (failed.length > 0) {
      const which = failed.map((v) => `${v.volumeId} (${v.lastError ?? 'failed'})`).join(', ');
      fail(state, `instance ${instanceId} was not stopped: ${which} could not be detached`);
    }
    const outcome = await stopIfNothingAttached(state);
    if (!outcome.ok) {
      fail(state, `every volume was detached but stopping ${instanceId} failed: ${outcome.why}`);
    }
    if (outcome.value.stopped) break;
    if (check === MAX_FINAL_CHECKS) {
      const ids = outcome.value.attached.map((v) => v.volumeId).join(', ');
      fail(
        state,
        `instance ${instanceId} was not stopped: the backend still lists ${ids} attached after ${check} rounds`,
      );
    }
    if (state.features.volumeOwnership) publishVolumes(outcome.value.attached.map((v) => v.volumeId));
    await detachAll(state, outcome.value.attached);
  }
  state.instanceStopped = true;
  end(state, 'stopped');
  return snapshot(state);
}

/**
 * The last step. Until an escalation or a cancel its retries are unlimited (an instance must not be
 * reported failed because its backend was briefly away); after one, five more tries. When those fail
 * too, the backend is asked whether the instance stopped anyway (a stop sent, its answer lost): if it
 * did, and still lists nothing attached, the stop ends `stopped`, never `StopFailed` with the instance down.
 */
async function stopIfNothingAttached(state: StopState): Promise<Settled<StopInstanceOutcome>> {
  const target = { provider: state.request.provider, instanceId: state.request.instanceId };
  const stopOnce = (retry: typeof UNLIMITED) =>
    activities(say.stop(target.instanceId), { ...stopping, retry }).stopInstanceIfDetached(target);
  let outcome = interrupted(state)
    ? await settled(stopOnce(BOUNDED))
    : await untilInterrupted(
        () => interrupted(state),
        () => stopOnce(UNLIMITED),
      );
  if (!outcome.ok && outcome.why === INTERRUPTED) outcome = await settled(stopOnce(BOUNDED));
  if (outcome.ok) return outcome;
  const bounded = { ...urgent, retry: BOUNDED };
  const read = await settled(activities(say.readStopped(target.instanceId), bounded).readInstanceStopped(target));
  if (!read.ok || read.value === 'unknown') {
    return { ok: false, why: `${outcome.why}; whether the instance stopped anyway is unknown` };
  }
  if (read.value === 'running') return outcome;
  const listed = await settled(activities(say.list(target.instanceId), bounded).listAttachedVolumes(target));
  if (listed.ok && listed.value.length === 0)
    return { ok: true, value: { stopped: true, instanceId: target.instanceId } };
  return {
    ok: false,
    why: `${outcome.why}; the instance reads stopped, but its volumes could not be confirmed detached`,
  };
}

/**
 * Publishes the stop's volumes (StopVolumes), then asks once, before any detach, whether a running stop
 * of another instance holds one: if so the stop is refused with VolumeHeld, having detached nothing.
 */
async function claimVolumes(state: StopState, refs: VolumeRef[]): Promise<void> {
  const ids = refs.map((v) => v.volumeId);
  publishVolumes(ids);
  const holders = await otherHolders(ids, state.startedAtMs);
  if (holders.length > 0) refuse(state, refs, holders);
}

function refuse(state: StopState, refs: VolumeRef[], holders: VolumeHolder[]): never {
  state.volumes = refs.map((ref) => ({ volumeId: ref.volumeId, state: 'attached', attempts: 0 }));
  state.error = heldMessage(state.request.instanceId, holders);
  releaseVolumes();
  end(state, 'failed');
  throw volumeHeld(state.error, snapshot(state), holders);
}

/** Adds the volumes (found attached again: back to `attached`) and detaches them all in parallel. */
async function detachAll(state: StopState, refs: VolumeRef[]): Promise<void> {
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
    return detachOne(state, volume, {
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
  const detached =
    interrupted(state) && state.request.forceGraceMs === null
      ? Promise.resolve('cancelled' as const) // escalated before this volume's detach was sent: force at once
      : graceful
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

/** Resolves once the stop is escalated or cancelled: one promise for all its volumes. */
function whenInterrupted(state: StopState): Promise<'interrupted'> {
  state.interruption ??= condition(() => interrupted(state)).then(() => 'interrupted' as const);
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
    const waited = await activities(say.wait(id), {
      ...wait,
      taskQueue: waitsTaskQueue(workflowInfo().taskQueue),
    }).awaitDetached({ ...target, rerequests });
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
  const forced = await settled(
    activities(say.force(state, escalation, volume.volumeId), force).forceDetachVolume(target),
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
    settle(state, volume, 'detached');
    return;
  }
  volume.lastError = forced.why;
  settle(state, volume, 'failed');
}

function escalate(state: StopState, cause: EscalationCause, payload?: AbortPayload): void {
  // Repeated aborts, an abort after the deadline or a cancel, or one after the end change nothing.
  if (interrupted(state) || state.phase !== 'stopping') return;
  const escalation: Escalation = { cause, at: new Date().toISOString() };
  if (payload?.reason !== undefined) escalation.reason = String(payload.reason).slice(0, 1024);
  if (payload?.requestedBy !== undefined) escalation.requestedBy = String(payload.requestedBy).slice(0, 255);
  state.escalation = escalation;
  upsertSearchAttributes([{ key: StopCauseKey, value: cause }]);
  reportEscalation(state, escalation);
}

function refuseDeadlineChange(state: StopState, maxStopDuration: unknown): void {
  if (parseDuration(maxStopDuration) === undefined) throw invalidUpdate(`maxStopDuration: ${DURATION_RULE}`);
  if (state.escalation) {
    const { cause, at } = state.escalation;
    throw invalidUpdate(`maxStopDuration: cannot be changed after escalation (${cause} at ${at})`);
  }
  if (state.cancelled)
    throw invalidUpdate(`maxStopDuration: cannot be changed: the stop was cancelled at ${state.cancelled.at}`);
  if (state.phase !== 'stopping' || allVolumesSettled(state)) {
    throw invalidUpdate('maxStopDuration: cannot be changed once every volume is detached');
  }
}

function move(state: StopState, volume: VolumeStatus, next: VolumeState): void {
  if (!canMove(volume.state, next))
    throw new Error(`bug: volume ${volume.volumeId} cannot go from ${volume.state} to ${next}`);
  volume.state = next;
  describe(state);
}

function settle(state: StopState, volume: VolumeStatus, next: 'detached' | 'force_detached' | 'failed'): void {
  if (next !== 'failed') volume.detachedAt = new Date().toISOString();
  move(state, volume, next);
}

function end(state: StopState, phase: StopPhase): void {
  state.phase = phase;
  // One upsert for the end: the phase, and the cause when no escalation has already set it.
  const cause = state.cancelled ? 'cancel' : 'graceful';
  upsertSearchAttributes(
    state.escalation
      ? [{ key: StopPhaseKey, value: phase }]
      : [
          { key: StopPhaseKey, value: phase },
          { key: StopCauseKey, value: cause },
        ],
  );
  reportEnd(state, phase);
}

function fail(state: StopState, message: string): never {
  state.error = message;
  end(state, 'failed');
  throw ApplicationFailure.create({ message, type: STOP_FAILED, nonRetryable: true, details: [snapshot(state)] });
}
