/**
 * StopflowClient: the typed way for services to start, abort, steer, watch
 * and audit stops. Everything is validated before anything is sent, so bad
 * input starts or changes nothing.
 */
import { randomUUID } from 'node:crypto';
import {
  type Client,
  WorkflowExecutionAlreadyStartedError,
  type WorkflowExecutionDescription,
  WorkflowFailedError,
  type WorkflowHandle,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
} from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { optionalTsToMs } from '@temporalio/common/lib/time';
import { DURATION_RULE, formatDuration, parseDuration } from '../common/duration';
import {
  ABORT_SIGNAL,
  DEFAULT_TASK_QUEUE,
  SET_MAX_STOP_DURATION_UPDATE,
  STATUS_QUERY,
  STOP_FAILED,
  StopCauseKey,
  StopForcedKey,
  StopPhaseKey,
  StopVolumesKey,
  VOLUME_HELD,
  WORKFLOW_TYPE,
  workflowIdFor,
} from '../common/names';
import {
  REFUSED_NOTHING_DETACHED,
  stopVolumesValue,
  type VolumeHolder,
  volumeHoldersQuery,
} from '../common/ownership-events';
import { ID_PATTERN, INSTANCE_ID_RULE, LEGACY_ID_PATTERN, parseStopRequest, type StopRequest } from '../common/request';
import type {
  AbortPayload,
  SetMaxStopDurationInput,
  SetMaxStopDurationResult,
  StopPhase,
  StopStatus,
  VolumeState,
  VolumeStatus,
} from '../common/status';
import { VOLUME_ACTIVITY_TYPES, type WaitHeartbeat } from '../common/stop-activities';
import { type AuditEntry, auditEntries, failureText, HistoryDecoder } from './history';
import { STOP_PHASES, stopsQuery } from './queries';

/**
 * The stopInstance workflow's signature, stated here rather than imported from
 * workflows/ so that the client (and its published package) needs neither the
 * workflow's code nor @temporalio/workflow. test/client-package.test.ts checks
 * that it matches `typeof stopInstance`.
 */
export type StopInstanceWorkflow = (request: StopRequest) => Promise<StopStatus>;

export interface StopflowClientOptions {
  client: Client;
  taskQueue?: string;
  /**
   * Refuse (VolumeHeldError) a stop naming a volume that a running stop of another instance on this task
   * queue holds. Off by default: it is right where a volume id names one volume on the backend (aws, gcp,
   * azure), not where instances reuse names (a simulated cloud). The `stopflow` CLI turns it on.
   */
  refuseHeldVolumes?: boolean;
}

/** Input that breaks a rule: the message names the field and the rule. Nothing was sent. */
export class InvalidInputError extends Error {
  override name = 'InvalidInputError';
}

/** No stop of this instance exists (or it is not visible in this namespace). */
export class StopNotFoundError extends Error {
  override name = 'StopNotFoundError';
}

/**
 * The request reached a stop that had already ended, so it changed nothing.
 * `executionStatus` is how its workflow closed (`COMPLETED`, `FAILED`,
 * `TERMINATED`, …) and `status` its final StopStatus when it has one.
 */
export class StopAlreadyEndedError extends Error {
  override name = 'StopAlreadyEndedError';
  constructor(
    message: string,
    readonly executionStatus: string,
    readonly status: StopStatus | undefined,
  ) {
    super(message);
  }

  /** True when the instance of that ended stop was stopped (the stop ended `stopped`). */
  get instanceStopped(): boolean {
    return this.status?.phase === 'stopped';
  }
}

/** The stop ended failed: `status` says which volumes and why. */
export class StopFailedError extends Error {
  override name = 'StopFailedError';
  constructor(
    message: string,
    readonly status: StopStatus | undefined,
  ) {
    super(message);
  }
}

/**
 * The stop was refused before anything started: a running stop of another instance holds one of its
 * volumes. `holders` names each held volume's stop.
 */
export class VolumeHeldError extends Error {
  override name = 'VolumeHeldError';
  constructor(
    message: string,
    readonly holders: VolumeHolder[],
  ) {
    super(message);
  }

  /** The first held volume (the message names them all). */
  get volumeId(): string | undefined {
    return this.holders[0]?.volumeId;
  }

  /** The workflow id of the stop that holds it, e.g. `stop-i-2`. */
  get holderWorkflowId(): string | undefined {
    return this.holders[0]?.workflowId;
  }

  get holderInstanceId(): string | undefined {
    return this.holders[0]?.instanceId;
  }
}

/**
 * waitUntilReleased: the stop that held the volume ended (or is ending) without detaching it, or, with
 * `timedOut`, the wait's timeout passed while the volume was still held.
 */
export class VolumeNotReleasedError extends Error {
  override name = 'VolumeNotReleasedError';
  constructor(
    message: string,
    readonly ownership: VolumeOwnership,
    readonly timedOut = false,
  ) {
    super(message);
  }
}

/** Which stop holds a volume, and the volume's state in it (StopflowClient.volume). */
export interface VolumeOwnership {
  volumeId: string;
  instanceId: string;
  workflowId: string;
  runId: string;
  /** The stop's workflow status: RUNNING, COMPLETED, FAILED, TERMINATED, … */
  executionStatus: string;
  running: boolean;
  /** The stop's phase (from its status; `stopping` while it runs). */
  phase: StopPhase;
  /** The volume's state in that stop; undefined when the stop does not know it yet (still listing). */
  state: VolumeState | undefined;
  /** True once the volume is `detached` or `force_detached`. */
  released: boolean;
  volume?: VolumeStatus;
  status: StopStatus;
}

export interface WaitUntilReleasedOptions {
  /** Give up after this long, in ms, a finite number > 0 (VolumeNotReleasedError with `timedOut`). Default: no limit. */
  timeoutMs?: number;
  /** How often to look, in ms, a finite number from 100 to 2147483647 (about 24.8 days). Default 1 s. */
  intervalMs?: number;
}

const MIN_RELEASE_INTERVAL_MS = 100;
/** setTimeout's limit: a longer delay fires at once (a busy loop). */
const MAX_RELEASE_INTERVAL_MS = 2 ** 31 - 1;
/** volume(): how many stops holding the volume it reads, at most, to pick the newest from. */
const MAX_VOLUME_CANDIDATES = 100;

const RELEASED_STATES: readonly VolumeState[] = ['detached', 'force_detached'];

export interface StopHandle {
  instanceId: string;
  workflowId: string;
  runId: string;
  /** False when the call joined a stop of this instance that was already running. */
  started: boolean;
  handle: WorkflowHandle<StopInstanceWorkflow>;
}

/** What an activity working for the stop is doing right now (from the server's pending-activity view). */
export interface PendingWork {
  activityId: string;
  activityType: string;
  state: 'scheduled' | 'started' | 'cancel_requested' | 'paused' | 'pause_requested' | 'unknown';
  /** 1 for the first try; a stuck detach counts one attempt per hold window. */
  attempt: number;
  /**
   * From the detach wait's heartbeat: backend checks it reported, the last state seen, since when it waits.
   * A wait reports from its first attempt; its later ones (the volume stuck past a hold window) keep quiet
   * unless they must, so past the first attempt `attempt` and `lastFailure` are the live part.
   */
  checks?: number;
  backendState?: string;
  /** When the wait was scheduled (after its detach request), so the time spent queued for a slot counts too. */
  waitingSince?: string;
  lastHeartbeatAt?: string;
  /** The last attempt's failure, e.g. "vol-2 still detaching since … (attempt 7: 3 checks)". */
  lastFailure?: string;
  /** When the next attempt starts, for an activity waiting out its retry delay. */
  nextAttemptAt?: string;
}

export interface VolumeProgress extends VolumeStatus {
  /** The detach or force-detach working on this volume, while one is pending. */
  work?: PendingWork;
}

/** A stop's StopStatus merged with the live view of its pending activities. */
export interface StopProgress {
  instanceId: string;
  workflowId: string;
  runId: string;
  /** The workflow's status: RUNNING, COMPLETED, FAILED, TERMINATED, CANCELLED, TIMED_OUT, … */
  executionStatus: string;
  running: boolean;
  status: StopStatus;
  volumes: VolumeProgress[];
  /** Pending activities not about one volume (listing the volumes, stopping the instance). */
  otherWork: PendingWork[];
}

export interface ListOptions {
  phase?: StopPhase;
  /** Only stops still `stopping`, still running, and started more than this long ago (a Duration). */
  stuckFor?: string | number;
  /** Only stops started on this task queue. Default: every task queue in the namespace. */
  taskQueue?: string;
  /** At most this many stops (1-1000). Default 100. */
  limit?: number;
  /** The clock `stuckFor` counts back from. Default: now. */
  now?: Date;
}

export interface StopListing {
  instanceId: string;
  workflowId: string;
  runId: string;
  taskQueue: string;
  executionStatus: string;
  /** StopPhase; absent for a run that never recorded one. */
  phase?: string;
  cause?: string;
  forced: boolean;
  startTime: string;
  closeTime?: string;
  historyLength: number;
}

export interface StopHistory {
  instanceId: string;
  workflowId: string;
  runId: string;
  entries: AuditEntry[];
}

const STOP_ID_PREFIX = 'stop-';
const VOLUME_ACTIVITIES = new Set<string>(VOLUME_ACTIVITY_TYPES);
// temporal.api.enums.v1.PendingActivityState, by number (the proto package is not a direct dependency).
const PENDING_STATES: Record<number, PendingWork['state']> = {
  1: 'scheduled',
  2: 'started',
  3: 'cancel_requested',
  4: 'paused',
  5: 'pause_requested',
};

/** `stop-i-1` → `i-1`. */
function instanceIdOf(workflowId: string): string {
  return workflowId.startsWith(STOP_ID_PREFIX) ? workflowId.slice(STOP_ID_PREFIX.length) : workflowId;
}

/** A volume id as a request's volumes need it (ID_PATTERN): only such volumes make a stop findable by them. */
function checkVolumeId(volumeId: unknown): string {
  if (typeof volumeId !== 'string' || !ID_PATTERN.test(volumeId)) {
    throw new InvalidInputError(`volumeId: ${INSTANCE_ID_RULE}`);
  }
  return volumeId;
}

/** waitUntilReleased's options, checked before anything is asked. */
function checkReleaseOptions(options: unknown): { timeoutMs: number | undefined; intervalMs: number } {
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new InvalidInputError('options: must be an object { timeoutMs?, intervalMs? }');
  }
  const { timeoutMs, intervalMs } = options as Record<string, unknown>;
  if (timeoutMs !== undefined && (typeof timeoutMs !== 'number' || !Number.isFinite(timeoutMs) || timeoutMs <= 0)) {
    throw new InvalidInputError('timeoutMs: must be a finite number of milliseconds > 0');
  }
  if (
    intervalMs !== undefined &&
    (typeof intervalMs !== 'number' ||
      !Number.isFinite(intervalMs) ||
      intervalMs < MIN_RELEASE_INTERVAL_MS ||
      intervalMs > MAX_RELEASE_INTERVAL_MS)
  ) {
    throw new InvalidInputError(
      `intervalMs: must be a finite number of milliseconds from ${MIN_RELEASE_INTERVAL_MS} to ${MAX_RELEASE_INTERVAL_MS}`,
    );
  }
  return { timeoutMs, intervalMs: intervalMs ?? 1_000 };
}

/** An id a stop may have: new stops are checked by the request schema, stops started by older versions may differ. */
function checkInstanceId(instanceId: unknown): string {
  if (typeof instanceId !== 'string' || !LEGACY_ID_PATTERN.test(instanceId)) {
    throw new InvalidInputError(`instanceId: ${INSTANCE_ID_RULE}`);
  }
  return instanceId;
}

function isoOf(ts: Parameters<typeof optionalTsToMs>[0]): string | undefined {
  const ms = optionalTsToMs(ts);
  return ms === undefined || ms === 0 ? undefined : new Date(ms).toISOString();
}

export class StopflowClient {
  readonly client: Client;
  readonly taskQueue: string;
  readonly refuseHeldVolumes: boolean;
  /** runId -> (activityId -> volumeId), learned from the history once per new activity. */
  private readonly volumeOfActivity = new Map<string, Map<string, string>>();

  constructor(options: StopflowClientOptions) {
    this.client = options.client;
    this.taskQueue = options.taskQueue ?? DEFAULT_TASK_QUEUE;
    this.refuseHeldVolumes = options.refuseHeldVolumes ?? false;
  }

  /** Starts a stop, or joins the one already running for this instance. */
  async stop(request: StopRequest): Promise<StopHandle> {
    let parsed: ReturnType<typeof parseStopRequest>;
    try {
      parsed = parseStopRequest(request);
    } catch (err) {
      throw new InvalidInputError((err as Error).message);
    }
    const workflowId = workflowIdFor(parsed.instanceId);
    if (parsed.volumes && this.refuseHeldVolumes) {
      await this.refuseIfHeld(
        workflowId,
        parsed.volumes.map((v) => v.volumeId),
      );
    }
    const volumes = parsed.volumes ? `${parsed.volumes.length} volume(s)` : 'volumes from the provider';
    const summary = `stop ${parsed.instanceId}: ${volumes}, maxStopDuration ${formatDuration(parsed.maxStopDurationMs)}`;
    const details = [
      `instance: ${parsed.instanceId}`,
      `volumes: ${parsed.volumes?.map((v) => v.volumeId).join(', ') ?? '(listed from the provider)'}`,
      `maxStopDuration: ${formatDuration(parsed.maxStopDurationMs)}`,
      `forceGrace: ${formatDuration(parsed.forceGraceMs)}`,
      `requestedBy: ${parsed.requestedBy ?? '(not given)'}`,
      `reason: ${parsed.reason ?? '(not given)'}`,
      `provider: ${parsed.provider ?? '(worker default)'}`,
    ].join('\n');
    // A token in the memo tells whether this call started the run or joined a running one.
    const startToken = randomUUID();
    // Findable by its volumes from the start, while the list fits one search attribute (Temporal refuses more).
    const stopVolumes = parsed.volumes ? stopVolumesValue(parsed.volumes.map((v) => v.volumeId)) : undefined;
    try {
      const handle = await this.client.workflow.start<StopInstanceWorkflow>(WORKFLOW_TYPE, {
        taskQueue: this.taskQueue,
        workflowId,
        args: [request],
        workflowIdConflictPolicy: 'USE_EXISTING',
        staticSummary: summary,
        staticDetails: details,
        memo: { startToken },
        typedSearchAttributes: [
          { key: StopPhaseKey, value: 'stopping' },
          { key: StopForcedKey, value: false },
          // Findable by its volumes from the start (the workflow adds the ones it lists or finds).
          ...(stopVolumes ? [{ key: StopVolumesKey, value: stopVolumes }] : []),
        ],
      });
      const runId = handle.firstExecutionRunId;
      const description = await this.client.workflow.getHandle(workflowId, runId).describe();
      const started = description.memo?.startToken === startToken;
      return { instanceId: parsed.instanceId, workflowId, runId, started, handle };
    } catch (err) {
      if (err instanceof WorkflowExecutionAlreadyStartedError) {
        throw new InvalidInputError(`a stop of ${parsed.instanceId} could not be started: ${err.message}`);
      }
      throw err;
    }
  }

  /**
   * Refuses, before anything starts, volumes that a running stop of another instance holds. Visibility
   * is eventually consistent: a stop started within about a second may not be seen yet (the workflow
   * asks again before it detaches anything). The same instance is never refused: its stop is joined.
   */
  private async refuseIfHeld(workflowId: string, volumeIds: string[]): Promise<void> {
    const holders: VolumeHolder[] = [];
    const query = volumeHoldersQuery(volumeIds, { taskQueue: this.taskQueue });
    try {
      await this.collectHolders(query, workflowId, volumeIds, holders);
    } catch (err) {
      // Visibility away or throttled (an incident starts many stops at once) must not keep a stop from
      // starting: the workflow asks again before it detaches anything.
      process.emitWarning(
        `could not ask who else holds ${volumeIds.join(', ')}: ${(err as Error).message}; starting the stop unchecked`,
        'StopflowVisibilityWarning',
      );
      return;
    }
    if (holders.length === 0) return;
    const which = holders
      .map((h) => `${h.volumeId} is held by the running stop ${h.workflowId} (instance ${h.instanceId})`)
      .join('; ');
    throw new VolumeHeldError(
      `the stop of ${instanceIdOf(workflowId)} was refused, nothing was started: ${which}. Wait for that stop (stopflow volume ${holders[0]?.volumeId} --wait) or abort it.`,
      holders,
    );
  }

  private async collectHolders(
    query: string,
    workflowId: string,
    volumeIds: string[],
    holders: VolumeHolder[],
  ): Promise<void> {
    for await (const execution of this.client.workflow.list({ query })) {
      if (execution.type !== WORKFLOW_TYPE || execution.workflowId === workflowId) continue;
      const held = new Set(execution.typedSearchAttributes.get(StopVolumesKey) ?? []);
      for (const volumeId of volumeIds) {
        if (!held.has(volumeId)) continue;
        holders.push({
          volumeId,
          workflowId: execution.workflowId,
          runId: execution.runId,
          instanceId: instanceIdOf(execution.workflowId),
        });
      }
    }
  }

  /**
   * Which stop holds this volume (the newest by start time whose StopVolumes contains it, among the first
   * MAX_VOLUME_CANDIDATES visibility returns) and the volume's state in it: live while the stop runs, from
   * its result or failure once it ended. Throws StopNotFoundError when no stop holds it.
   */
  async volume(volumeId: string): Promise<VolumeOwnership> {
    checkVolumeId(volumeId);
    return this.volumeOwnership(volumeId);
  }

  private async volumeOwnership(volumeId: string): Promise<VolumeOwnership> {
    const candidates: { workflowId: string; runId: string; startTime: Date }[] = [];
    let read = 0;
    // Only Elasticsearch visibility takes ORDER BY: read a bounded number and sort here, newest start first.
    for await (const execution of this.client.workflow.list({
      query: volumeHoldersQuery([volumeId], { taskQueue: this.taskQueue, running: false }),
      pageSize: MAX_VOLUME_CANDIDATES,
    })) {
      read += 1;
      if (execution.type === WORKFLOW_TYPE) {
        candidates.push({ workflowId: execution.workflowId, runId: execution.runId, startTime: execution.startTime });
      }
      if (read >= MAX_VOLUME_CANDIDATES) break;
    }
    candidates.sort((a, b) => b.startTime.getTime() - a.startTime.getTime());
    for (const candidate of candidates) {
      const instanceId = instanceIdOf(candidate.workflowId);
      let description: WorkflowExecutionDescription;
      try {
        description = await this.handle(instanceId, candidate.runId).describe();
      } catch (err) {
        // Deleted (retention) since visibility listed it: look at the next one. Anything else (no
        // connection) is not an answer about the volume.
        if (err instanceof WorkflowNotFoundError) continue;
        throw err;
      }
      let status: StopStatus;
      try {
        status = await this.statusOf(instanceId, description);
      } catch {
        continue; // e.g. terminated with no worker to answer, or deleted meanwhile: it tells nothing about the volume
      }
      // A stop refused with VolumeHeld never held it (its StopVolumes is cleared, visibility may lag).
      if (status.error?.includes(REFUSED_NOTHING_DETACHED)) continue;
      const volume = status.volumes.find((v) => v.volumeId === volumeId);
      const ownership: VolumeOwnership = {
        volumeId,
        instanceId,
        workflowId: candidate.workflowId,
        runId: candidate.runId,
        executionStatus: description.status.name,
        running: description.status.name === 'RUNNING',
        phase: status.phase,
        state: volume?.state,
        released: volume !== undefined && RELEASED_STATES.includes(volume.state),
        status,
      };
      if (volume) ownership.volume = volume;
      return ownership;
    }
    throw new StopNotFoundError(`no stop holds volume ${volumeId}`);
  }

  /**
   * Waits until the stop holding this volume has it `detached` or `force_detached`, polling its status
   * (from here: the workflow's history does not grow). Throws VolumeNotReleasedError when that stop
   * failed with the volume attached (or it failed to detach), StopNotFoundError when no stop holds it.
   */
  async waitUntilReleased(volumeId: string, options: WaitUntilReleasedOptions = {}): Promise<VolumeOwnership> {
    checkVolumeId(volumeId);
    const { timeoutMs, intervalMs } = checkReleaseOptions(options);
    const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
    for (;;) {
      const ownership = await this.volumeOwnership(volumeId);
      if (ownership.released) return ownership;
      if (ownership.state === 'failed' || !ownership.running) {
        const why = ownership.volume?.lastError ?? ownership.status.error ?? `the stop ended ${ownership.phase}`;
        throw new VolumeNotReleasedError(
          `${volumeId} was not released: the stop ${ownership.workflowId} ${ownership.running ? 'is failing' : `ended ${ownership.phase}`} with it ${ownership.state ?? 'attached'} (${why})`,
          ownership,
        );
      }
      if (deadline !== undefined && Date.now() + intervalMs > deadline) {
        throw new VolumeNotReleasedError(
          `${volumeId} was not released within ${formatDuration(timeoutMs ?? 0)}: it is ${ownership.state ?? 'attached'} in the running stop ${ownership.workflowId}`,
          ownership,
          true,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, intervalMs));
    }
  }

  private handle(instanceId: string, runId?: string): WorkflowHandle<StopInstanceWorkflow> {
    return this.client.workflow.getHandle<StopInstanceWorkflow>(workflowIdFor(checkInstanceId(instanceId)), runId);
  }

  /**
   * Escalates a running stop to force-detach. Repeated aborts are harmless.
   * Throws StopAlreadyEndedError (with the ended stop's final status) when there is nothing left to abort.
   */
  async abort(instanceId: string, payload: AbortPayload = {}): Promise<void> {
    if (payload.reason !== undefined && (typeof payload.reason !== 'string' || payload.reason.length > 1024)) {
      throw new InvalidInputError('reason: must be a string of at most 1024 characters');
    }
    if (
      payload.requestedBy !== undefined &&
      (typeof payload.requestedBy !== 'string' || payload.requestedBy.length > 255)
    ) {
      throw new InvalidInputError('requestedBy: must be a string of at most 255 characters');
    }
    const handle = this.handle(instanceId);
    await this.requireRunning(instanceId, handle, 'abort');
    try {
      // By name with the argument types spelled out: the client's own API, no
      // defineSignal (and so no @temporalio/workflow) needed. Same below.
      await handle.signal<[AbortPayload?]>(ABORT_SIGNAL, payload);
    } catch (err) {
      // It ended between the check and the signal: say so, as if it had ended before.
      if (err instanceof WorkflowNotFoundError) await this.requireRunning(instanceId, handle, 'abort');
      throw this.translate(instanceId, err, 'abort');
    }
  }

  /** Moves the deadline of a running stop; measured from the stop's start. */
  async setMaxStopDuration(instanceId: string, maxStopDuration: string | number): Promise<SetMaxStopDurationResult> {
    if (parseDuration(maxStopDuration) === undefined) throw new InvalidInputError(`maxStopDuration: ${DURATION_RULE}`);
    const handle = this.handle(instanceId);
    await this.requireRunning(instanceId, handle, 'change maxStopDuration of');
    try {
      return await handle.executeUpdate<SetMaxStopDurationResult, [SetMaxStopDurationInput]>(
        SET_MAX_STOP_DURATION_UPDATE,
        { args: [{ maxStopDuration }] },
      );
    } catch (err) {
      if (err instanceof WorkflowUpdateFailedError) {
        const cause = err.cause instanceof Error ? err.cause.message : err.message;
        throw new InvalidInputError(cause);
      }
      if (err instanceof WorkflowNotFoundError)
        await this.requireRunning(instanceId, handle, 'change maxStopDuration of');
      throw this.translate(instanceId, err, 'change maxStopDuration of');
    }
  }

  /**
   * The status of the latest stop of this instance: live from the workflow
   * while it runs, and from its recorded result once it ended (so reading an
   * ended stop needs no worker).
   */
  async status(instanceId: string): Promise<StopStatus> {
    const description = await this.describe(instanceId, 'read the status of');
    return this.statusOf(instanceId, description);
  }

  /** Waits for the stop to end: the final status, or StopFailedError with it. */
  async result(instanceId: string): Promise<StopStatus> {
    try {
      return await this.handle(instanceId).result();
    } catch (err) {
      if (
        err instanceof WorkflowFailedError &&
        err.cause instanceof ApplicationFailure &&
        (err.cause.type === STOP_FAILED || err.cause.type === VOLUME_HELD)
      ) {
        throw new StopFailedError(err.cause.message, err.cause.details?.[0] as StopStatus | undefined);
      }
      if (err instanceof WorkflowFailedError) {
        const cause = err.cause instanceof Error ? err.cause.message : err.message;
        throw new StopFailedError(cause, undefined);
      }
      throw this.translate(instanceId, err, 'wait for');
    }
  }

  /**
   * The status merged with what the server knows about the stop's pending
   * activities: per volume the attempt, the wait's heartbeat (checks, backend
   * state, since when) and the last failure, so a person sees "vol-2 still
   * detaching since 10:02:11Z (attempt 7)".
   */
  async progress(instanceId: string): Promise<StopProgress> {
    const description = await this.describe(instanceId, 'read the progress of');
    const status = await this.statusOf(instanceId, description);
    const running = description.status.name === 'RUNNING';
    const pending = running ? (description.raw.pendingActivities ?? []) : [];
    const decoder = new HistoryDecoder(this.client.options.loadedDataConverter);
    const work: PendingWork[] = [];
    for (const activity of pending) {
      const item: PendingWork = {
        activityId: activity.activityId ?? '',
        activityType: activity.activityType?.name ?? 'activity',
        state: PENDING_STATES[activity.state ?? 0] ?? 'unknown',
        attempt: activity.attempt ?? 1,
      };
      const beat = (await decoder.first(activity.heartbeatDetails)) as Partial<WaitHeartbeat> | undefined;
      if (beat && typeof beat === 'object') {
        if (typeof beat.checks === 'number') item.checks = beat.checks;
        if (typeof beat.state === 'string') item.backendState = beat.state;
        if (typeof beat.since === 'string') item.waitingSince = beat.since;
      }
      const lastHeartbeatAt = isoOf(activity.lastHeartbeatTime);
      if (lastHeartbeatAt) item.lastHeartbeatAt = lastHeartbeatAt;
      if (activity.lastFailure) item.lastFailure = failureText(activity.lastFailure);
      const nextAttemptAt = isoOf(activity.nextAttemptScheduleTime);
      if (nextAttemptAt) item.nextAttemptAt = nextAttemptAt;
      work.push(item);
    }
    const volumeWork = work.filter((w) => VOLUME_ACTIVITIES.has(w.activityType));
    const byVolume = await this.volumesOfActivities(
      description,
      volumeWork.map((w) => w.activityId),
    );
    const volumes: VolumeProgress[] = status.volumes.map((volume) => {
      // A cancelled graceful wait may linger beside the force-detach: show the force.
      const candidates = volumeWork.filter((w) => byVolume.get(w.activityId) === volume.volumeId);
      const chosen = candidates.find((w) => w.activityType === 'forceDetachVolume') ?? candidates[0];
      return chosen ? { ...volume, work: chosen } : { ...volume };
    });
    return {
      instanceId,
      workflowId: description.workflowId,
      runId: description.runId,
      executionStatus: description.status.name,
      running,
      status,
      volumes,
      otherWork: work.filter((w) => !VOLUME_ACTIVITIES.has(w.activityType)),
    };
  }

  /**
   * Stops found by a visibility query on the search attributes, newest first;
   * with `stuckFor`, the stops still `stopping` that started longer ago than that.
   */
  async list(options: ListOptions = {}): Promise<StopListing[]> {
    if (options.phase !== undefined && !STOP_PHASES.includes(options.phase)) {
      throw new InvalidInputError(`phase: must be one of ${STOP_PHASES.join(', ')}`);
    }
    let stuckForMs: number | undefined;
    if (options.stuckFor !== undefined) {
      const ms = parseDuration(options.stuckFor);
      if (ms === undefined || ms === null) {
        throw new InvalidInputError(`stuckFor: ${DURATION_RULE.replace('"off", ', '')}`);
      }
      if (options.phase !== undefined && options.phase !== 'stopping') {
        throw new InvalidInputError(
          `stuckFor: lists stops still stopping; it cannot be combined with phase ${options.phase}`,
        );
      }
      stuckForMs = ms;
    }
    const limit = options.limit ?? 100;
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) {
      throw new InvalidInputError('limit: must be a whole number from 1 to 1000');
    }
    const query = stopsQuery({
      ...(stuckForMs !== undefined ? { phase: 'stopping' as const, stuckForMs } : {}),
      ...(options.phase !== undefined ? { phase: options.phase } : {}),
      ...(options.taskQueue !== undefined ? { taskQueue: options.taskQueue } : {}),
      ...(options.now !== undefined ? { now: options.now } : {}),
    });
    const stops: StopListing[] = [];
    for await (const execution of this.client.workflow.list({ query, pageSize: Math.min(limit, 1000) })) {
      if (execution.type !== WORKFLOW_TYPE || !execution.workflowId.startsWith(STOP_ID_PREFIX)) continue;
      const listing: StopListing = {
        instanceId: execution.workflowId.slice(STOP_ID_PREFIX.length),
        workflowId: execution.workflowId,
        runId: execution.runId,
        taskQueue: execution.taskQueue,
        executionStatus: execution.status.name,
        forced: execution.typedSearchAttributes.get(StopForcedKey) === true,
        startTime: execution.startTime.toISOString(),
        historyLength: execution.historyLength,
      };
      const phase = execution.typedSearchAttributes.get(StopPhaseKey);
      if (phase !== undefined) listing.phase = phase;
      const cause = execution.typedSearchAttributes.get(StopCauseKey);
      if (cause !== undefined) listing.cause = cause;
      if (execution.closeTime) listing.closeTime = execution.closeTime.toISOString();
      stops.push(listing);
      if (stops.length >= limit) break;
    }
    return stops;
  }

  /** The audit log of the latest stop of this instance (or of one run), oldest entry first. */
  async history(instanceId: string, options: { runId?: string } = {}): Promise<StopHistory> {
    const handle = this.handle(instanceId, options.runId);
    try {
      // Pin the run: a new stop started while reading must not mix two runs' pages.
      const runId = options.runId ?? (await handle.describe()).runId;
      const history = await this.client.workflow.getHandle(handle.workflowId, runId).fetchHistory();
      const entries = await auditEntries(history, this.client.options.loadedDataConverter);
      return { instanceId, workflowId: handle.workflowId, runId, entries };
    } catch (err) {
      throw this.translate(instanceId, err, 'read the history of');
    }
  }

  private async describe(instanceId: string, verb: string): Promise<WorkflowExecutionDescription> {
    try {
      return await this.handle(instanceId).describe();
    } catch (err) {
      throw this.translate(instanceId, err, verb);
    }
  }

  /** The StopStatus of the described run: its result once ended, the `status` query while running. */
  private async statusOf(instanceId: string, description: WorkflowExecutionDescription): Promise<StopStatus> {
    const handle = this.handle(instanceId, description.runId);
    if (description.status.name === 'COMPLETED' || description.status.name === 'FAILED') {
      try {
        return await handle.result();
      } catch (err) {
        if (err instanceof WorkflowFailedError && err.cause instanceof ApplicationFailure) {
          const details = err.cause.details?.[0];
          const ownOutcome = err.cause.type === STOP_FAILED || err.cause.type === VOLUME_HELD;
          if (ownOutcome && details && typeof details === 'object') return details as StopStatus;
        }
        // Not a stop's own outcome (e.g. an invalid request): ask the workflow below.
      }
    }
    try {
      return await handle.query<StopStatus>(STATUS_QUERY);
    } catch (err) {
      throw this.translate(instanceId, err, 'read the status of');
    }
  }

  /** Maps pending volume activities to their volumeIds, reading the run's history only for unseen activities. */
  private async volumesOfActivities(
    description: WorkflowExecutionDescription,
    activityIds: string[],
  ): Promise<Map<string, string>> {
    let known = this.volumeOfActivity.get(description.runId);
    if (!known) {
      if (this.volumeOfActivity.size > 1000) this.volumeOfActivity.clear();
      known = new Map();
      this.volumeOfActivity.set(description.runId, known);
    }
    if (activityIds.every((id) => known.has(id))) return known;
    const history = await this.client.workflow.getHandle(description.workflowId, description.runId).fetchHistory();
    const decoder = new HistoryDecoder(this.client.options.loadedDataConverter);
    for (const event of history.events ?? []) {
      const scheduled = event.activityTaskScheduledEventAttributes;
      if (!scheduled?.activityId || !VOLUME_ACTIVITIES.has(scheduled.activityType?.name ?? '')) continue;
      if (known.has(scheduled.activityId)) continue;
      const input = (await decoder.first(scheduled.input)) as { volume?: { volumeId?: unknown } } | undefined;
      const volumeId = input?.volume?.volumeId;
      if (typeof volumeId === 'string') known.set(scheduled.activityId, volumeId);
    }
    return known;
  }

  private async requireRunning(instanceId: string, handle: WorkflowHandle, verb: string): Promise<void> {
    let description: WorkflowExecutionDescription;
    try {
      description = await handle.describe();
    } catch (err) {
      throw this.translate(instanceId, err, verb);
    }
    if (description.status.name === 'RUNNING') return;
    const ended = description.status.name.toLowerCase();
    const at = description.closeTime?.toISOString() ?? 'an unknown time';
    let status: StopStatus | undefined;
    try {
      status = await this.statusOf(instanceId, description);
    } catch {
      status = undefined; // e.g. a terminated stop and no worker to answer the query: the workflow status says enough
    }
    const outcome = status
      ? status.phase === 'stopped'
        ? '; the instance was stopped'
        : `; phase ${status.phase}, the instance was NOT stopped`
      : '';
    throw new StopAlreadyEndedError(
      `cannot ${verb} the stop of ${instanceId}: it already ended ${ended} at ${at}${outcome}. Nothing was changed; start a new stop to act again.`,
      description.status.name,
      status,
    );
  }

  private translate(instanceId: string, err: unknown, verb: string): Error {
    if (err instanceof WorkflowNotFoundError) {
      return new StopNotFoundError(`cannot ${verb} the stop of ${instanceId}: no stop of ${instanceId} was found`);
    }
    return err instanceof Error ? err : new Error(String(err));
  }
}
