/**
 * What stopInstance asks of the worker beside its backend activities: who else holds its volumes
 * (volume ownership), whether completion events are configured, and the delivery of one event.
 * Shared by workflows/ (types only) and activities/ (the implementation).
 */
import { WORKFLOW_TYPE } from './names';
import type { StopStatus } from './status';

/** The failure type of a delivery the receiver refused for good (a 4xx other than 408 and 429). */
export const EVENT_REJECTED = 'EventRejected';

/** A running stop that holds a volume, as visibility last saw it. */
export interface VolumeHolder {
  volumeId: string;
  workflowId: string;
  runId: string;
  instanceId: string;
}

export interface FindVolumeHoldersInput {
  /** The asking stop: never a holder of its own volumes. */
  workflowId: string;
  /** When the asking stop started: only stops started before it count (ties: the smaller workflow id). */
  startedAt: string;
  volumeIds: string[];
}

/** How a stop ended, as its completion event says it (never the endpoint or the secret). */
export interface StopEventData {
  workflowId: string;
  runId: string;
  instanceId: string;
  outcome: 'stopped' | 'failed';
  /** When the stop ended (the workflow's clock): the event's `time`, the same on every retry. */
  endedAt: string;
  /** The failure type when it failed: `StopFailed` or `VolumeHeld`. */
  failureType?: string;
  status: StopStatus;
}

/** What a delivery attempt achieved; the activity throws (and is retried) when it did not deliver. */
export interface DeliveryResult {
  delivered: true;
  httpStatus: number;
  attempt: number;
}

/** The worker's answers a stop needs before its first detach, from one local activity (patch `ask-worker-once`). */
export interface WorkerAnswers {
  /**
   * Running stops of other instances that hold any of the stop's volumes (none when the worker does not
   * refuse); `null` when visibility could not answer: the stop goes on unchecked.
   */
  holders: VolumeHolder[] | null;
  /** Whether this worker delivers completion events: decides the stop's end, asked here instead of there. */
  completionEvents: boolean;
}

export interface OwnershipEventActivities {
  /** Local activity: who else holds these volumes, and whether completion events are configured, in one marker. */
  askWorker(input: FindVolumeHoldersInput): Promise<WorkerAnswers>;
  /** Local activity (stops started before `ask-worker-once`): running stops of other instances that hold any of these volumes. */
  findVolumeHolders(input: FindVolumeHoldersInput): Promise<VolumeHolder[]>;
  /** Local activity: does this worker deliver completion events? Recorded as a marker, so replay agrees. */
  completionEventsConfigured(): Promise<boolean>;
  /** One delivery of the event to the worker's endpoint, signed; retried by the deliverStopEvent workflow. */
  deliverCompletionEvent(event: StopEventData): Promise<DeliveryResult>;
}

/**
 * The child workflow's id: one per stop run, so a stop's event is delivered by exactly one workflow. The
 * `/` is a character no instance id has (common/request.ts), so it is never the id of a stop.
 */
export function stopEventWorkflowId(workflowId: string, runId: string): string {
  return `${workflowId}/event/${runId}`;
}

/**
 * Temporal refuses a search attribute value over 2 KB by default (`limit.searchAttributesSizeOfValue`), and
 * fails the workflow that upserts one: StopVolumes stays well below that.
 */
export const MAX_STOP_VOLUMES_BYTES = 1_536;

/**
 * StopVolumes for these volume ids: all of them while they fit, otherwise undefined. A stop whose volumes do
 * not fit (dozens of long ids) is not findable by them, and says so in its log; it still checks others.
 */
export function stopVolumesValue(volumeIds: readonly string[]): string[] | undefined {
  return JSON.stringify(volumeIds).length <= MAX_STOP_VOLUMES_BYTES ? [...volumeIds] : undefined;
}

/**
 * The visibility query for stops on this task queue whose StopVolumes hold any of these volumes (running
 * ones only, unless `running` is false). Ownership is per task queue: one deployment, one backend, where
 * a volume id names one volume. Values are quoted: they follow the id rule, but a query trusts nothing.
 */
export function volumeHoldersQuery(
  volumeIds: readonly string[],
  options: { taskQueue: string; running?: boolean },
): string {
  const clauses = [
    `WorkflowType = '${WORKFLOW_TYPE}'`,
    `TaskQueue = ${quote(options.taskQueue)}`,
    `StopVolumes IN (${volumeIds.map(quote).join(', ')})`,
  ];
  if (options.running !== false) clauses.push(`ExecutionStatus = 'Running'`);
  return clauses.join(' AND ');
}

function quote(value: string): string {
  return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

/** The words a stop refused with VolumeHeld says: clients use them to skip such a stop as a holder. */
export const REFUSED_NOTHING_DETACHED = 'was refused, nothing was detached';
