/**
 * The benchmark's reading of a history's event times (bench/history-spans.ts): which workflow task led a
 * signal to its activity, and how a run's time splits. Synthetic histories, in the order and with the times
 * the server writes them: an ActivityTaskStarted is written when its activity closes, with its last
 * attempt's start time; a signal that came while a workflow task ran is written after that task.
 */
import { describe, expect, it } from 'vitest';
import { runSplit, signalPath, type TimedEvent } from '../bench/history-spans';

/** Builds a history: each event gets the next id. */
function history(): { add(type: string, at: number, extra?: Partial<TimedEvent>): TimedEvent; events: TimedEvent[] } {
  const events: TimedEvent[] = [];
  return {
    events,
    add(type, at, extra = {}) {
      const event = { id: events.length + 1, type, at, ...extra };
      events.push(event);
      return event;
    },
  };
}

/** A workflow task scheduled, started and completed; returns its completion. */
function task(h: ReturnType<typeof history>, scheduledAt: number, startedAt: number, completedAt: number): TimedEvent {
  const scheduled = h.add('WorkflowTaskScheduled', scheduledAt);
  const started = h.add('WorkflowTaskStarted', startedAt, { scheduledEventId: scheduled.id });
  return h.add('WorkflowTaskCompleted', completedAt, { scheduledEventId: scheduled.id, startedEventId: started.id });
}

describe('signalPath', () => {
  it('follows a signal through the workflow task it schedules to the activity that task schedules', () => {
    const h = history();
    h.add('WorkflowExecutionStarted', 0);
    h.add('WorkflowExecutionSignaled', 103, { signalName: 'abort' });
    const done = task(h, 103, 106, 118);
    const force = h.add('ActivityTaskScheduled', 118, {
      activityType: 'forceDetachVolume',
      workflowTaskCompletedEventId: done.id,
    });
    h.add('ActivityTaskStarted', 121, { scheduledEventId: force.id, attempt: 1 });
    expect(signalPath(h.events, 100, 'abort', 'forceDetachVolume')).toEqual({
      toServer: 3,
      toWorkflowTask: 3,
      workflowTask: 12,
      toActivity: 3,
    });
  });

  it('counts from the signal when the workflow had to wait for another activity first', () => {
    const h = history();
    const first = task(h, 0, 1, 5);
    const ready = h.add('ActivityTaskScheduled', 5, { activityType: 'mark', workflowTaskCompletedEventId: first.id });
    h.add('WorkflowExecutionSignaled', 101, { signalName: 'abort' }); // during the `ready` activity
    task(h, 101, 103, 108); // sees the signal; nothing to schedule yet
    h.add('ActivityTaskStarted', 6, { scheduledEventId: ready.id, attempt: 1 });
    h.add('ActivityTaskCompleted', 112, { scheduledEventId: ready.id });
    const next = task(h, 112, 114, 120);
    const mark = h.add('ActivityTaskScheduled', 120, { activityType: 'mark', workflowTaskCompletedEventId: next.id });
    h.add('ActivityTaskStarted', 123, { scheduledEventId: mark.id, attempt: 1 });
    // Not the first task after the signal (108) but the one that scheduled `mark`: the parts add up.
    expect(signalPath(h.events, 100, 'abort', 'mark')).toEqual({
      toServer: 1,
      toWorkflowTask: 13,
      workflowTask: 6,
      toActivity: 3,
    });
  });

  it('leaves out an activity whose first attempt did not start it, and a signal of another name', () => {
    const h = history();
    h.add('WorkflowExecutionSignaled', 101, { signalName: 'abort' });
    const done = task(h, 101, 102, 110);
    const force = h.add('ActivityTaskScheduled', 110, {
      activityType: 'forceDetachVolume',
      workflowTaskCompletedEventId: done.id,
    });
    // Written at close: the start time of attempt 2, after the first attempt and its backoff.
    h.add('ActivityTaskStarted', 1_200, { scheduledEventId: force.id, attempt: 2 });
    expect(signalPath(h.events, 100, 'abort', 'forceDetachVolume')).toBeNull();
    expect(signalPath(h.events, 100, 'setMaxStopDuration', 'forceDetachVolume')).toBeNull();
  });

  it('is null when no activity of that type followed', () => {
    const h = history();
    h.add('WorkflowExecutionSignaled', 1, { signalName: 'abort' });
    const done = task(h, 1, 2, 3);
    h.add('ActivityTaskScheduled', 3, { activityType: 'somethingElse', workflowTaskCompletedEventId: done.id });
    expect(signalPath(h.events, 0, 'abort', 'mark')).toBeNull();
  });
});

describe('runSplit', () => {
  it('sums workflow tasks waiting and running, and first attempts waiting', () => {
    const h = history();
    task(h, 0, 5, 15);
    const a = h.add('ActivityTaskScheduled', 15);
    const b = h.add('ActivityTaskScheduled', 15);
    const c = h.add('ActivityTaskScheduled', 15);
    h.add('ActivityTaskStarted', 18, { scheduledEventId: a.id, attempt: 1 });
    h.add('ActivityTaskStarted', 22, { scheduledEventId: b.id, attempt: 1 });
    h.add('ActivityTaskStarted', 1_015, { scheduledEventId: c.id, attempt: 3 }); // its retries are not waiting
    task(h, 1_030, 1_034, 1_044);
    h.add('WorkflowExecutionCompleted', 1_044);
    expect(runSplit(h.events)).toEqual({
      total: 1_044,
      workflowTasksQueued: 9,
      workflowTasksRan: 20,
      activitiesQueued: 10,
      workflowTasks: 2,
    });
  });
});
