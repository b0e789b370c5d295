/**
 * FROZEN: the stopInstance workflow as it ran before the `reconciler` patch
 * (workflows/stop-instance.ts). Stops started by that code replay through this
 * file until they end; it changes only if a fix must reach them too, and then
 * behind its own patch. Do not reshape it.
 *
 * stopInstance: the instance stays `stopping` until the backend confirms every
 * volume detached; only then is it stopped (docs/contract.md).
 *
 *   stopping ──all volumes detached──► stopInstance ──► stopped
 *      │
 *      ├─ deadline (maxStopDuration) or `abort` ─► force-detach what is left
 *      │                                            (each after its forceGrace)
 *      └─ any volume failed, even by force ───────► failed (StopFailed)
 *
 * Desired state is "every volume detached"; each volume's actual state comes
 * from the backend through activities. Waiting on a stuck volume happens
 * inside one heartbeating activity, so history does not grow while it waits.
 */
import {
  ActivityCancellationType,
  ActivityFailure,
  type ActivityOptions,
  ApplicationFailure,
  CancellationScope,
  condition,
  isCancellation,
  log,
  metricMeter,
  patched,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  sleep,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { StopflowActivities, VolumeTarget } from '../../activities';
import { DURATION_RULE, formatDuration, parseDuration } from '../../common/duration';
import { INVALID_STOP_REQUEST, STOP_FAILED, StopCauseKey, StopForcedKey, StopPhaseKey } from '../../common/names';
import {
  type NormalizedStopRequest,
  parseStopRequestTolerant,
  type StopRequest,
  StopRequestError,
  type VolumeRef,
} from '../../common/request';
import {
  type AbortPayload,
  type Escalation,
  type EscalationCause,
  FINAL_VOLUME_STATES,
  type StopPhase,
  type StopStatus,
  type VolumeStatus,
} from '../../common/status';
import { abortSignal, setMaxStopDurationUpdate, statusQuery } from '../definitions';

// Transient backend errors are retried without limit while the stop is graceful:
// an instance must never be reported stopped just because the backend was flaky.
const unlimitedRetry = { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1m' };
const NON_RETRYABLE = ['PermanentProviderError', 'UnknownProvider', 'ForceUnsupported'];

const requestOptions: ActivityOptions = {
  startToCloseTimeout: '1m',
  retry: { ...unlimitedRetry, nonRetryableErrorTypes: NON_RETRYABLE },
};
// Stopping may wait minutes for the backend to report `stopped`; the activity heartbeats meanwhile.
const stopOptions: ActivityOptions = { ...requestOptions, startToCloseTimeout: '15m', heartbeatTimeout: '30s' };
// The graceful detach is one activity that requests, polls and heartbeats, and
// past its hold window asks to be retried later (StillDetaching): a stuck volume
// costs three history events however long it hangs, since retries add none.
const detachOptions: ActivityOptions = {
  startToCloseTimeout: '10m',
  heartbeatTimeout: '30s',
  retry: { ...unlimitedRetry, nonRetryableErrorTypes: NON_RETRYABLE },
  cancellationType: ActivityCancellationType.TRY_CANCEL,
};
// Force is the last resort and may lose data: a bounded number of tries (each forces,
// then waits out one hold window for `detached`), then the volume is `failed`.
const forceOptions: ActivityOptions = {
  startToCloseTimeout: '5m',
  heartbeatTimeout: '30s',
  retry: {
    initialInterval: '1s',
    backoffCoefficient: 2,
    maximumInterval: '30s',
    maximumAttempts: 5,
    nonRetryableErrorTypes: NON_RETRYABLE,
  },
};

// Emitted through the SDK's metric meter, which skips replays, so counts are exact
// and nothing here touches history. The worker exports them on its Prometheus endpoint.
const stopsEnded = metricMeter.createCounter('stopflow_stops_ended', 'stops', 'Stops that ended, by phase and cause');
const stopDuration = metricMeter.createHistogram(
  'stopflow_stop_duration',
  'float',
  's',
  'Seconds from the start of a stop to its end, by phase',
);
const forceDetaches = metricMeter.createCounter(
  'stopflow_force_detaches',
  'volumes',
  'Force-detaches started, by cause (abort or timeout)',
);

/**
 * Patches (see test/replay.test.ts for the histories they keep working):
 * AWAIT_CANCELLED_DETACH — on escalation, wait for the cancelled graceful detach
 * to acknowledge instead of abandoning it, so it cannot outlive the stop.
 */
const AWAIT_CANCELLED_DETACH = 'await-cancelled-detach';

/** Activities carry a per-call summary, so the Temporal UI reads as an audit log. */
function activities(summary: string, options: ActivityOptions): StopflowActivities {
  return proxyActivities<StopflowActivities>({ ...options, summary });
}

interface StopState {
  request: NormalizedStopRequest;
  startedAtMs: number;
  /** The request's maxStopDuration, as changed by the setMaxStopDuration update. */
  maxStopDurationMs: number | null;
  deadlineMs: number | null;
  /** Bumped whenever the deadline changes, to wake the deadline timer. */
  deadlineVersion: number;
  phase: StopPhase;
  escalation: Escalation | null;
  volumes: VolumeStatus[] | null;
  instanceStopped: boolean;
  forced: boolean;
  error?: string;
}

export async function legacyStopInstance(input: StopRequest): Promise<StopStatus> {
  const request = validate(input);
  const startedAtMs = workflowInfo().runStartTime.getTime();
  const state: StopState = {
    request,
    startedAtMs,
    maxStopDurationMs: request.maxStopDurationMs,
    deadlineMs: request.maxStopDurationMs === null ? null : startedAtMs + request.maxStopDurationMs,
    deadlineVersion: 0,
    phase: 'stopping',
    escalation: null,
    volumes: null,
    instanceStopped: false,
    forced: false,
  };
  const { instanceId } = request;
  const provider = request.provider;

  setHandler(statusQuery, () => snapshot(state));
  setHandler(abortSignal, (payload?: AbortPayload) => escalate(state, 'abort', payload));
  setHandler(
    setMaxStopDurationUpdate,
    ({ maxStopDuration }) => {
      const ms = parseDuration(maxStopDuration) ?? null;
      state.maxStopDurationMs = ms;
      state.deadlineMs = ms === null ? null : state.startedAtMs + ms;
      state.deadlineVersion++;
      describe(state);
      return { deadline: iso(state.deadlineMs) };
    },
    {
      validator: (update) => {
        if (parseDuration(update?.maxStopDuration) === undefined) {
          throw invalidUpdate(`maxStopDuration: ${DURATION_RULE}`);
        }
        if (state.escalation) {
          throw invalidUpdate(
            `maxStopDuration: cannot be changed after escalation (${state.escalation.cause} at ${state.escalation.at})`,
          );
        }
        if (state.phase !== 'stopping' || allVolumesSettled(state)) {
          throw invalidUpdate('maxStopDuration: cannot be changed once every volume is detached');
        }
      },
    },
  );

  // StopflowClient sets these at start; a stop started elsewhere (temporal CLI, HTTP API) gets them here.
  if (workflowInfo().typedSearchAttributes.get(StopPhaseKey) !== 'stopping') {
    upsertSearchAttributes([
      { key: StopPhaseKey, value: 'stopping' },
      { key: StopForcedKey, value: false },
    ]);
  }
  describe(state);

  // Step 2: desired state — the volumes to detach.
  let volumes: VolumeRef[];
  try {
    volumes =
      request.volumes ??
      (await activities(`list volumes attached to ${instanceId}`, requestOptions).listAttachedVolumes({
        provider,
        instanceId,
      }));
  } catch (err) {
    if (!(err instanceof ActivityFailure)) throw err;
    return fail(state, `could not list the volumes attached to ${instanceId}: ${failureMessage(err)}`);
  }
  state.volumes = volumes.map((v) => ({ volumeId: v.volumeId, state: 'attached', attempts: 0 }));
  describe(state);

  // Steps 3-5: every volume in parallel, racing the deadline and `abort`.
  const deadline = enforceDeadline(state);
  await Promise.all(volumes.map((volume, i) => detachOneVolume(state, { provider, instanceId, volume }, i)));
  await deadline;

  const failed = (state.volumes ?? []).filter((v) => v.state === 'failed');
  if (failed.length > 0) {
    return fail(
      state,
      `instance ${instanceId} was not stopped: ${failed.map((v) => `${v.volumeId} (${v.lastError ?? 'failed'})`).join(', ')} could not be detached`,
    );
  }

  // Step 6: only now is it safe to stop the instance.
  try {
    await activities(`stop instance ${instanceId}: every volume detached`, stopOptions).stopInstance({
      provider,
      instanceId,
    });
  } catch (err) {
    if (!(err instanceof ActivityFailure)) throw err;
    return fail(state, `every volume was detached but stopping ${instanceId} failed: ${failureMessage(err)}`);
  }
  state.instanceStopped = true;
  setPhase(state, 'stopped');
  return snapshot(state);
}

/** A rejected update: final, typed, and never written to history. */
function invalidUpdate(message: string): ApplicationFailure {
  return ApplicationFailure.create({ message, type: 'InvalidUpdate', nonRetryable: true });
}

function validate(input: unknown): NormalizedStopRequest {
  try {
    return parseStopRequestTolerant(input, { legacyRules: true });
  } catch (err) {
    if (err instanceof StopRequestError) {
      throw ApplicationFailure.create({
        message: err.message,
        type: INVALID_STOP_REQUEST,
        nonRetryable: true,
        details: [err.issues],
      });
    }
    throw err;
  }
}

/** Detaches gracefully until escalation (and this volume's forceGrace) says force, whichever comes first. */
async function detachOneVolume(state: StopState, target: VolumeTarget, index: number): Promise<void> {
  const volume = (state.volumes as VolumeStatus[])[index] as VolumeStatus;
  const id = target.volume.volumeId;
  const firstRequestMs = Date.now();
  const { forceGraceMs } = state.request;

  // Escalated before this volume's detach was ever sent and no grace to honour: go straight to force.
  if (state.escalation && forceGraceMs === null) return forceDetach(state, target, volume);
  setVolumeState(state, volume, 'detaching');

  const awaitCancelledWait = patched(AWAIT_CANCELLED_DETACH);
  const gracefulOptions: ActivityOptions = awaitCancelledWait
    ? { ...detachOptions, cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED }
    : detachOptions;
  const graceful = new CancellationScope();
  const detached = graceful
    .run(async () => {
      const detached = await activities(
        `detach ${id}: request, then wait until detached`,
        gracefulOptions,
      ).detachVolume(target);
      volume.attempts += detached.attempts + detached.rerequests;
      return 'detached' as const;
    })
    .catch((err: unknown) => {
      // Once we cancelled the wait, however it ended (cancelled, or a last StillDetaching) is not the volume's error.
      if (isCancellation(err) || graceful.consideredCancelled) return 'cancelled' as const;
      if (!(err instanceof ActivityFailure)) throw err; // a bug, not a backend answer: fail the task, not the volume
      // A final error (unknown instance, bad provider) will not be fixed by force either.
      volume.lastError = failureMessage(err);
      return 'error' as const;
    });

  const forceTimer = new CancellationScope();
  const forceDue = forceTimer
    .run(async () => {
      await condition(() => state.escalation !== null);
      const wait = forceGraceMs === null ? 0 : firstRequestMs + forceGraceMs - Date.now();
      if (wait > 0) await sleep(wait, { summary: `forceGrace ${formatDuration(forceGraceMs)} for ${id}` });
      return 'force' as const;
    })
    .catch(() => 'cancelled' as const);

  const first = await Promise.race([detached, forceDue]);
  if (first === 'detached' || first === 'error') {
    forceTimer.cancel();
    if (first === 'detached') {
      volume.detachedAt = new Date().toISOString();
      setVolumeState(state, volume, 'detached');
    } else {
      setVolumeState(state, volume, 'failed');
    }
    return;
  }
  graceful.cancel();
  if (awaitCancelledWait) {
    // Force at once; the cancelled wait finishes alongside, so no activity of this stop outlives it.
    await Promise.all([forceDetach(state, target, volume), detached]);
    return;
  }
  // Histories from before the patch: the wait was abandoned (TRY_CANCEL) and its outcome known at once.
  if ((await detached) === 'detached') {
    volume.detachedAt = new Date().toISOString();
    setVolumeState(state, volume, 'detached');
    return;
  }
  await forceDetach(state, target, volume);
}

async function forceDetach(state: StopState, target: VolumeTarget, volume: VolumeStatus): Promise<void> {
  const escalation = state.escalation as Escalation;
  const why =
    escalation.cause === 'abort'
      ? `abort${escalation.requestedBy ? ` by ${escalation.requestedBy}` : ''}`
      : `maxStopDuration ${formatDuration(state.maxStopDurationMs)} expired (deadline ${iso(state.deadlineMs)})`;
  forceDetaches.add(1, { cause: escalation.cause });
  if (!state.forced) {
    state.forced = true;
    upsertSearchAttributes([{ key: StopForcedKey, value: true }]);
  }
  setVolumeState(state, volume, 'force_detaching');
  try {
    const forced = await activities(`${why}: force-detaching ${volume.volumeId}`, forceOptions).forceDetachVolume(
      target,
    );
    volume.attempts += forced.attempts;
    volume.detachedAt = new Date().toISOString();
    setVolumeState(state, volume, 'force_detached');
  } catch (err) {
    if (!(err instanceof ActivityFailure)) throw err;
    volume.lastError = failureMessage(err);
    setVolumeState(state, volume, 'failed');
  }
}

/** The maxStopDuration timer; re-armed when the update moves the deadline, cancelled when the stop settles. */
async function enforceDeadline(state: StopState): Promise<void> {
  for (;;) {
    if (state.escalation || allVolumesSettled(state)) return;
    const version = state.deadlineVersion;
    const changed = () => state.escalation !== null || allVolumesSettled(state) || state.deadlineVersion !== version;
    if (state.deadlineMs === null) {
      await condition(changed);
      continue;
    }
    const remaining = state.deadlineMs - Date.now();
    const woken =
      remaining > 0 &&
      (await condition(changed, remaining, {
        summary: `maxStopDuration deadline ${iso(state.deadlineMs)}`,
      }));
    if (!woken) {
      escalate(state, 'timeout');
      return;
    }
  }
}

function escalate(state: StopState, cause: EscalationCause, payload?: AbortPayload): void {
  // Repeated aborts, an abort after the deadline, or one after every volume is detached change nothing.
  if (state.escalation || state.phase !== 'stopping' || allVolumesSettled(state)) return;
  const escalation: Escalation = { cause, at: new Date().toISOString() };
  if (payload?.reason !== undefined) escalation.reason = String(payload.reason).slice(0, 1024);
  if (payload?.requestedBy !== undefined) escalation.requestedBy = String(payload.requestedBy).slice(0, 255);
  state.escalation = escalation;
  log.info(`stop escalated by ${cause}: force-detaching volumes not yet detached`, { ...escalation });
  upsertSearchAttributes([{ key: StopCauseKey, value: cause }]);
  describe(state);
}

function fail(state: StopState, message: string): never {
  state.error = message;
  setPhase(state, 'failed');
  throw ApplicationFailure.create({ message, type: STOP_FAILED, nonRetryable: true, details: [snapshot(state)] });
}

function setPhase(state: StopState, phase: StopPhase): void {
  state.phase = phase;
  const cause = state.escalation?.cause ?? 'graceful';
  // One upsert for the end: the phase, and the cause when no escalation has already set it.
  upsertSearchAttributes(
    state.escalation
      ? [{ key: StopPhaseKey, value: phase }]
      : [
          { key: StopPhaseKey, value: phase },
          { key: StopCauseKey, value: cause },
        ],
  );
  stopsEnded.add(1, { phase, cause });
  log.info(`stop ended ${phase}`, { phase, cause, error: state.error, instanceStopped: state.instanceStopped });
  stopDuration.record((Date.now() - state.startedAtMs) / 1000, { phase });
  describe(state);
}

function setVolumeState(state: StopState, volume: VolumeStatus, next: VolumeStatus['state']): void {
  volume.state = next;
  describe(state);
}

function allVolumesSettled(state: StopState): boolean {
  if (state.volumes === null) return false; // not yet known: nothing is settled
  return state.volumes.every((v) => FINAL_VOLUME_STATES.includes(v.state));
}

function snapshot(state: StopState): StopStatus {
  const status: StopStatus = {
    instanceId: state.request.instanceId,
    phase: state.phase,
    startedAt: new Date(state.startedAtMs).toISOString(),
    deadline: iso(state.deadlineMs),
    escalation: state.escalation ? { ...state.escalation } : null,
    volumes: (state.volumes ?? []).map((v) => ({ ...v })),
    instanceStopped: state.instanceStopped,
  };
  if (state.error !== undefined) status.error = state.error;
  return status;
}

/**
 * The workflow's "current details" in the UI: the live per-volume picture, in
 * words. The UI renders Markdown in a short frame, so the tally comes first and
 * blocks are separated by blank lines.
 */
function describe(state: StopState): void {
  const { request } = state;
  const volumes = state.volumes ?? [];
  const tally = new Map<string, number>();
  for (const v of volumes) tally.set(v.state, (tally.get(v.state) ?? 0) + 1);
  const counts = [...tally].map(([s, n]) => `${n} ${s}`).join(', ');
  const outcome =
    state.phase === 'stopped' ? 'instance stopped; ' : state.phase === 'failed' ? 'instance NOT stopped; ' : '';
  const headline =
    state.volumes === null
      ? `**${request.instanceId}: ${state.phase}** — listing attached volumes…`
      : `**${request.instanceId}: ${state.phase}** — ${outcome}${volumes.length} volume(s)${counts ? `: ${counts}` : ''}`;
  const blocks = [headline];
  if (volumes.length > 0) {
    blocks.push(
      volumes
        .map((v) => `- ${v.volumeId}: ${v.state} (${v.attempts} request(s))${v.lastError ? ` — ${v.lastError}` : ''}`)
        .join('\n'),
    );
  }
  const facts: string[] = [];
  if (state.escalation) {
    const e = state.escalation;
    facts.push(
      `escalated by ${e.cause} at ${e.at}${e.requestedBy ? ` from ${e.requestedBy}` : ''}${e.reason ? `: ${e.reason}` : ''}`,
    );
  }
  facts.push(
    `maxStopDuration ${formatDuration(state.maxStopDurationMs)}, deadline ${iso(state.deadlineMs) ?? 'none'}, forceGrace ${formatDuration(request.forceGraceMs)}`,
  );
  if (request.requestedBy || request.reason) {
    facts.push(`requested by ${request.requestedBy ?? 'unknown'}${request.reason ? `: ${request.reason}` : ''}`);
  }
  if (state.error) facts.push(`error: ${state.error}`);
  // Two trailing spaces make a Markdown line break.
  blocks.push(facts.join('  \n'));
  setCurrentDetails(blocks.join('\n\n'));
}

function iso(ms: number | null): string | null {
  return ms === null ? null : new Date(ms).toISOString();
}

/** The innermost message of an activity failure, e.g. "simulated volume vol-1 does not support force-detach". */
function failureMessage(err: unknown): string {
  let current: unknown = err;
  while (current instanceof ActivityFailure && current.cause) current = current.cause;
  return current instanceof Error ? current.message : String(current);
}
