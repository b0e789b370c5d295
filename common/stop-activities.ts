/**
 * What the stopInstance workflow asks of its activities, and what they answer: the
 * one interface both sides compile against (activities/index.ts implements it;
 * workflows/ imports its types and the few pure helpers below, such as
 * waitsTaskQueue). Names here are activity types in history.
 */
import type { VolumeRef } from './request';

/** Which provider, which instance: every activity starts from this. */
export interface InstanceTarget {
  provider?: string | undefined;
  instanceId: string;
}

export interface VolumeTarget extends InstanceTarget {
  volume: VolumeRef;
}

export type BackendState = 'attached' | 'detaching' | 'detached';

/** The wait's heartbeat details: what `stopflow status` shows beside a waiting volume. */
export interface WaitHeartbeat {
  checks: number;
  state: BackendState;
  since: string;
  /** Since when every check read `attached` (kept across attempts): how long the request has looked lost. */
  attachedSince?: string;
  /**
   * A force-detach's details: when its attempt sent the force. A later attempt that finds the volume detached reports
   * it forced (that force may be what detached it), where an attempt cut short would otherwise leave it `detached`.
   */
  forceSentAt?: string;
}

/**
 * When a force went out for the volume, as a failed force-detach carries it (its failure's first detail, or the last
 * heartbeat details of an attempt that timed out: a WaitHeartbeat either way); undefined when it says none did.
 */
export function forceSentAt(details: unknown): string | undefined {
  if (typeof details !== 'object' || details === null || !('forceSentAt' in details)) return undefined;
  return typeof details.forceSentAt === 'string' ? details.forceSentAt : undefined;
}

/** What a wait is asked: the volume, and how many times its request was already found lost and sent again. */
export interface WaitTarget extends VolumeTarget {
  rerequests?: number;
  /**
   * Workflow version 8 (`watched-waits`): the worker's watch list answers for this wait by its task token
   * (activities/detach-watch.ts) instead of an attempt polling in place; scheduled with a longer heartbeat timeout.
   */
  watched?: boolean;
}

export interface RequestResult {
  /** Requests sent, retries inside the attempt included. */
  requests: number;
  /**
   * The backend's answer right after the request: a backend that detaches at once needs no
   * wait, and so never queues on the waits task queue behind stuck volumes.
   */
  state: BackendState;
  /**
   * Workflow version 9 (`worker-timed-watch`): the heartbeat timeout, ms, the worker's operator chose for watched
   * waits (STOPFLOW_WATCH_HEARTBEAT_TIMEOUT): the workflow schedules this volume's wait with it. It is the one
   * setting that trades a lost worker's recovery time against the server's work per stuck volume, and only the
   * operator knows which matters more. Absent from older workers: UNSAID_WATCH_HEARTBEAT_TIMEOUT_MS.
   */
  watchHeartbeatTimeoutMs?: number;
}

/**
 * The heartbeat timeout a worker gives watched waits unless its operator chose one (STOPFLOW_WATCH_HEARTBEAT_TIMEOUT;
 * 15 min since 0.2.8, was 5 min). Its watch list beats each wait 2 min before it (every 13 min): one write on the
 * server per stuck volume per 13 min, which is what a few thousand stuck volumes cost the server while they wait
 * (BENCHMARKS.md, incident scale). A worker killed without a shutdown leaves its waits this long.
 */
export const DEFAULT_WATCH_HEARTBEAT_TIMEOUT_MS = 900_000;
/**
 * What the workflow schedules a watched wait with when the worker that sent its detach request does not say (a worker
 * older than 0.2.5): that release's default. It is workflow logic, so it stays what recorded histories were made with.
 */
export const UNSAID_WATCH_HEARTBEAT_TIMEOUT_MS = 300_000;
/**
 * What a watched wait's heartbeat timeout may be: at least 10 s (the list beats a third of it early), at most 30 min
 * (an attempt lasts an hour and is handed back a minute or two before it ends, after a last beat).
 */
export const WATCH_HEARTBEAT_TIMEOUT_RANGE_MS = [10_000, 1_800_000] as const;

/** A worker's answer, held to the range (a workflow takes nothing out of range from a misconfigured worker). */
export function watchHeartbeatTimeoutMs(requested: RequestResult): number {
  const [min, max] = WATCH_HEARTBEAT_TIMEOUT_RANGE_MS;
  const ms = requested.watchHeartbeatTimeoutMs;
  if (ms === undefined || !Number.isFinite(ms)) return UNSAID_WATCH_HEARTBEAT_TIMEOUT_MS;
  return Math.min(max, Math.max(min, Math.round(ms)));
}

/**
 * How a wait ended: `detached`, or `lost` when the backend reads `attached` again
 * for several checks in a row (it dropped the request, or someone attached the
 * volume again): the workflow then requests the detach again.
 */
export interface WaitResult {
  outcome: 'detached' | 'lost';
  checks: number;
}

export interface ForceResult {
  /** False when nothing was forced: the backend read `detached` first, or refused the force as not attached. */
  forced: boolean;
  /** Attempt number of the activity that succeeded (1 = first try). */
  attempts: number;
  checks: number;
}

/** stopInstanceIfDetached: stopped, or refused because these volumes are attached. */
export type StopInstanceOutcome =
  | { stopped: true; instanceId: string }
  | { stopped: false; instanceId: string; attached: VolumeRef[] };

/** The activities of the current stopInstance workflow. */
export interface StopActivities {
  listAttachedVolumes(input: InstanceTarget): Promise<VolumeRef[]>;
  /** Sends the graceful detach (idempotent). Changes the backend. */
  requestDetach(target: VolumeTarget): Promise<RequestResult>;
  /**
   * Read-only: polls until detached (on the waits task queue, so stuck volumes never take urgent slots).
   * `lost` only after the volume read `attached` for a while that doubles with each re-request, so a
   * volume that keeps coming back costs a few events an hour, not a few a minute.
   */
  awaitDetached(target: WaitTarget): Promise<WaitResult>;
  /** Forces the detach and confirms it. Changes the backend; may lose unflushed writes. */
  forceDetachVolume(target: VolumeTarget): Promise<ForceResult>;
  /** One state check: did a volume whose force failed detach anyway? */
  readAttachmentState(target: VolumeTarget): Promise<BackendState>;
  /** Lists what is attached right before stopping; stops the instance only when nothing is. */
  stopInstanceIfDetached(input: InstanceTarget): Promise<StopInstanceOutcome>;
  /** Read-only: is the instance stopped? `unknown` when the provider cannot say. */
  readInstanceStopped(input: InstanceTarget): Promise<'stopped' | 'running' | 'unknown'>;
}

/** Activity type names, for clients that read pending activities and history. */
export const VOLUME_ACTIVITY_TYPES = ['requestDetach', 'awaitDetached', 'forceDetachVolume', 'detachVolume'] as const;

/** The waits task queue beside a stop's own: read-only waits on stuck volumes run there, on their own slots. */
export function waitsTaskQueue(taskQueue: string): string {
  return `${taskQueue}-waits`;
}

/**
 * The forces task queue beside a stop's own (workflow version 12): force-detaches run there, on slots of their own.
 * An abort's force then never waits for an urgent slot (an instance stop on a cloud keeps one until the instance
 * reads stopped), and the forces of a mass abort never take the urgent slots healthy stops need.
 */
export function forcesTaskQueue(taskQueue: string): string {
  return `${taskQueue}-forces`;
}
