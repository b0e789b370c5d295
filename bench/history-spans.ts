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
  /** What an ActivityTaskStarted/Completed or WorkflowTaskStarted/Completed refers to. */
  scheduledEventId?: number;
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
    if (attrs.scheduledEventId !== undefined) timed.scheduledEventId = Number(attrs.scheduledEventId);
    return timed;
  });
}

/**
 * A signal's path to the activity it starts, in ms: the signal reaching the server (from `sentAt`), the
 * workflow task that sees it reaching a worker (after any task already running ends), that task's run
 * (until its completion reaches the server), and the activity reaching a worker. Null if there is no such path.
 */
export interface SignalPath {
  toServer: number;
  toWorkflowTask: number;
  workflowTask: number;
  toActivity: number;
}

export function signalPath(events: TimedEvent[], sentAt: number, activityType: string): SignalPath | null {
  const signal = events.find((e) => e.type === 'WorkflowExecutionSignaled');
  if (!signal) return null;
  // The task that saw the signal is the first to start after it: one scheduled before it (by an activity's
  // completion, say) and not yet started takes it along; one already running leaves it to the next.
  const started = events.find((e) => e.type === 'WorkflowTaskStarted' && e.id > signal.id);
  const completed = started && events.find((e) => e.type === 'WorkflowTaskCompleted' && e.id > started.id);
  const activity =
    completed &&
    events.find((e) => e.type === 'ActivityTaskScheduled' && e.id > completed.id && e.activityType === activityType);
  const activityStarted =
    activity && events.find((e) => e.type === 'ActivityTaskStarted' && e.scheduledEventId === activity.id);
  if (!started || !completed || !activityStarted) return null;
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
  /** Activities waiting for a worker, summed (parallel ones overlap). */
  activitiesQueued: number;
  workflowTasks: number;
}

export function runSplit(events: TimedEvent[]): RunSplit {
  const byId = new Map(events.map((e) => [e.id, e]));
  const since = (e: TimedEvent) => {
    const from = e.scheduledEventId === undefined ? undefined : byId.get(e.scheduledEventId);
    return from ? e.at - from.at : 0;
  };
  const split: RunSplit = {
    total: (events.at(-1)?.at ?? 0) - (events[0]?.at ?? 0),
    workflowTasksQueued: 0,
    workflowTasksRan: 0,
    activitiesQueued: 0,
    workflowTasks: 0,
  };
  let lastStarted: TimedEvent | undefined;
  for (const e of events) {
    if (e.type === 'WorkflowTaskStarted') {
      split.workflowTasksQueued += since(e);
      split.workflowTasks++;
      lastStarted = e;
    } else if (e.type === 'WorkflowTaskCompleted' && lastStarted) {
      split.workflowTasksRan += e.at - lastStarted.at;
    } else if (e.type === 'ActivityTaskStarted') {
      split.activitiesQueued += since(e);
    }
  }
  return split;
}
