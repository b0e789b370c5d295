/**
 * Where a workflow's time went, read from the server's own event times. The
 * incident benchmark uses it to split a slow abort, or a slow healthy stop,
 * into the server's matching (a task waiting for a poller) and a worker's
 * own work, which client-side timing alone cannot tell apart.
 */
import type { Client } from '@temporalio/client';
import { historyToJSON } from '@temporalio/common/lib/proto-utils';

export interface TimedEvent {
  id: number;
  /** "WorkflowTaskStarted", … */
  type: string;
  at: number;
  /** Activity type of an ActivityTaskScheduled. */
  activityType?: string;
  /** Signal name of a WorkflowExecutionSignaled. */
  signalName?: string;
  /** What an ActivityTaskStarted/Completed or WorkflowTaskStarted/Completed refers to. */
  scheduledEventId?: number;
  /** WorkflowTaskCompleted: its WorkflowTaskStarted. */
  startedEventId?: number;
  /** ActivityTaskScheduled: the WorkflowTaskCompleted whose commands scheduled it. */
  workflowTaskCompletedEventId?: number;
  /**
   * ActivityTaskStarted: the attempt. The server writes this event when the activity closes, with the start
   * time of its last attempt: for an attempt above 1, scheduled → started also spans the earlier attempts.
   */
  attempt?: number;
}

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null;

/** "EVENT_TYPE_WORKFLOW_TASK_STARTED" → "WorkflowTaskStarted". */
const typeName = (raw: string) =>
  raw
    .replace(/^EVENT_TYPE_/, '')
    .toLowerCase()
    .split('_')
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1))
    .join('');

export async function timeline(client: Client, workflowId: string): Promise<TimedEvent[]> {
  const history = await client.workflow.getHandle(workflowId).fetchHistory();
  const parsed: unknown = JSON.parse(historyToJSON(history));
  const events = isObject(parsed) && Array.isArray(parsed.events) ? parsed.events : [];
  return events.filter(isObject).map((event) => {
    const key = Object.keys(event).find((k) => k.endsWith('EventAttributes'));
    const attrs = key && isObject(event[key]) ? (event[key] as Json) : {};
    const timed: TimedEvent = {
      id: Number(event.eventId),
      type: typeName(String(event.eventType)),
      at: Date.parse(String(event.eventTime)),
    };
    if (isObject(attrs.activityType) && typeof attrs.activityType.name === 'string')
      timed.activityType = attrs.activityType.name;
    if (typeof attrs.signalName === 'string') timed.signalName = attrs.signalName;
    if (attrs.scheduledEventId !== undefined) timed.scheduledEventId = Number(attrs.scheduledEventId);
    if (attrs.startedEventId !== undefined) timed.startedEventId = Number(attrs.startedEventId);
    if (attrs.workflowTaskCompletedEventId !== undefined)
      timed.workflowTaskCompletedEventId = Number(attrs.workflowTaskCompletedEventId);
    if (attrs.attempt !== undefined) timed.attempt = Number(attrs.attempt);
    return timed;
  });
}

/**
 * A signal's path to the activity it leads to, in ms: the signal reaching the server (from `sentAt`); then
 * until the workflow task that scheduled the activity started (the first task after the signal, or a later
 * one if the workflow had to wait for something else first); that task's run (until its completion reached
 * the server); and the activity task reaching a worker. The parts add up to signal sent → activity started.
 * Null if the history has no such path, or the activity's first attempt did not start it.
 */
export interface SignalPath {
  toServer: number;
  toWorkflowTask: number;
  workflowTask: number;
  toActivity: number;
}

export function signalPath(
  events: TimedEvent[],
  sentAt: number,
  signalName: string,
  activityType: string,
): SignalPath | null {
  const byId = new Map(events.map((e) => [e.id, e]));
  const signal = events.find((e) => e.type === 'WorkflowExecutionSignaled' && e.signalName === signalName);
  if (!signal) return null;
  const activity = events.find(
    (e) => e.type === 'ActivityTaskScheduled' && e.id > signal.id && e.activityType === activityType,
  );
  const completed =
    activity?.workflowTaskCompletedEventId === undefined ? undefined : byId.get(activity.workflowTaskCompletedEventId);
  const started = completed?.startedEventId === undefined ? undefined : byId.get(completed.startedEventId);
  const activityStarted =
    activity && events.find((e) => e.type === 'ActivityTaskStarted' && e.scheduledEventId === activity.id);
  if (!completed || !started || !activityStarted || (activityStarted.attempt ?? 1) > 1) return null;
  return {
    toServer: signal.at - sentAt,
    toWorkflowTask: started.at - signal.at,
    workflowTask: completed.at - started.at,
    toActivity: activityStarted.at - completed.at,
  };
}

/**
 * A whole run's time by kind: workflow tasks waiting for a worker, workflow tasks running, and the rest
 * (activities, their matching and timers), from the first event to the last.
 */
export interface RunSplit {
  total: number;
  workflowTasksQueued: number;
  workflowTasksRan: number;
  /** Activities (first attempts) waiting for a worker, summed (parallel ones overlap). */
  activitiesQueued: number;
  workflowTasks: number;
}

export function runSplit(events: TimedEvent[]): RunSplit {
  const byId = new Map(events.map((e) => [e.id, e]));
  const since = (e: TimedEvent, fromId: number | undefined) => {
    const from = fromId === undefined ? undefined : byId.get(fromId);
    return from ? e.at - from.at : 0;
  };
  const split: RunSplit = {
    total: (events.at(-1)?.at ?? 0) - (events[0]?.at ?? 0),
    workflowTasksQueued: 0,
    workflowTasksRan: 0,
    activitiesQueued: 0,
    workflowTasks: 0,
  };
  for (const e of events) {
    if (e.type === 'WorkflowTaskStarted') {
      split.workflowTasksQueued += since(e, e.scheduledEventId);
      split.workflowTasks++;
    } else if (e.type === 'WorkflowTaskCompleted') {
      split.workflowTasksRan += since(e, e.startedEventId);
    } else if (e.type === 'ActivityTaskStarted' && (e.attempt ?? 1) === 1) {
      // A later attempt's start time would count the earlier attempts and their backoff as waiting.
      split.activitiesQueued += since(e, e.scheduledEventId);
    }
  }
  return split;
}
