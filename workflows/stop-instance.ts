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
 *
 * Beside it: one volume's path (volume-path.ts), the last step (stop-if-detached.ts), how a stop
 * ends (stop-end.ts), its words and metrics (stop-report.ts), its state (stop-state.ts), the patches
 * it asks at its start and the rules they give it (stop-patches.ts).
 */
import {
  ApplicationFailure,
  CancellationScope,
  condition,
  patched,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import { DURATION_RULE, parseDuration } from '../common/duration';
import { STOP_FAILED, StopCauseKey, StopForcedKey, StopPhaseKey, VOLUME_HELD } from '../common/names';
import type { VolumeHolder } from '../common/ownership-events';
import type { StopRequest, VolumeRef } from '../common/request';
import type { AbortPayload, Escalation, EscalationCause, StopStatus } from '../common/status';
import { activities, urgent } from './activity-options';
import { announceEnd } from './completion-event';
import { Deadline } from './deadline';
import { abortSignal, setMaxStopDurationUpdate, statusQuery } from './definitions';
import { legacyStopInstance } from './legacy/stop-instance-v2';
import { untilInterrupted } from './settled';
import { end, fail } from './stop-end';
import { stopIfNothingAttached } from './stop-if-detached';
import { rulesOf, STOP_PATCHES } from './stop-patches';
import { describe, reportEscalation, say } from './stop-report';
import { allVolumesSettled, interrupted, iso, type StopState, snapshot } from './stop-state';
import { invalidUpdate, validate } from './validate';
import { askWorker, heldMessage, otherHolders, publishVolumes, releaseVolumes, volumeHeld } from './volume-ownership';
import { detachAll } from './volume-path';

/**
 * Longest a stop waits, at its end, for cancelled graceful work to acknowledge: waits scheduled before version 8
 * (`watched-waits`), which hear of a cancel within their hold window. A watched wait is cancelled with TRY_CANCEL and
 * settles at once: its worker's list hears of the cancel at its next heartbeat, after the stop if need be.
 */
const CANCELLED_WORK_BOUND = '30s';
/** Rounds of "the backend still lists something attached" before the stop gives up. */
const MAX_FINAL_CHECKS = 5;
export async function stopInstance(input: StopRequest): Promise<StopStatus> {
  const oneMarker = patched(STOP_PATCHES.oneMarker);
  if (!oneMarker && !patched(STOP_PATCHES.reconciler)) return legacyStopInstance(input);
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
    features: rulesOf(oneMarker),
    completionEventsConfigured: null,
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
      if (ended && state.features.completionEvents)
        await announceEnd(snapshot(state), err.type ?? undefined, state.completionEventsConfigured);
      throw err;
    }
    if (state.features.completionEvents) await announceEnd(status, undefined, state.completionEventsConfigured);
    return status;
  });
}

async function runToEnd(state: StopState): Promise<StopStatus> {
  try {
    return await run(state);
  } finally {
    // Cancelled waits polling in place end within a poll once their volume is detached (at once on the worker
    // that forced it). One a cancel left stuck hears of it at its next heartbeat or its attempt's end (its hold
    // window); past the bound it is left behind. Watched waits settled when cancelled (TRY_CANCEL).
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
      if ('cancelled' in outcome) fail(state, outcome.why);
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
 * Publishes the stop's volumes (StopVolumes), then asks once, before any detach, whether a running stop
 * of another instance holds one: if so the stop is refused with VolumeHeld, having detached nothing.
 */
async function claimVolumes(state: StopState, refs: VolumeRef[]): Promise<void> {
  const ids = refs.map((v) => v.volumeId);
  publishVolumes(ids);
  let holders: VolumeHolder[];
  if (state.features.askWorkerOnce) {
    const answers = await askWorker(ids, state.startedAtMs);
    state.completionEventsConfigured = answers?.completionEvents ?? null;
    holders = answers?.holders ?? [];
  } else {
    holders = await otherHolders(ids, state.startedAtMs);
  }
  if (holders.length > 0) refuse(state, refs, holders);
}

function refuse(state: StopState, refs: VolumeRef[], holders: VolumeHolder[]): never {
  state.volumes = refs.map((ref) => ({ volumeId: ref.volumeId, state: 'attached', attempts: 0 }));
  state.error = heldMessage(state.request.instanceId, holders);
  releaseVolumes();
  end(state, 'failed');
  throw volumeHeld(state.error, snapshot(state), holders);
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
