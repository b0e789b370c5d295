/**
 * The benchmark's reading of a history's event times (bench/history-spans.ts): which workflow task saw a
 * signal, and how a run's time splits. Synthetic histories: the cases are about event order.
 */
import { describe, expect, it } from 'vitest';
import { runSplit, signalPath, type TimedEvent } from '../bench/history-spans';

let nextId = 1;
const at = (type: string, ms: number, extra: Partial<TimedEvent> = {}): TimedEvent => ({
  id: nextId++,
  type,
  at: ms,
  ...extra,
});

function history(build: () => TimedEvent[]): TimedEvent[] {
  nextId = 1;
  return build();
}

describe('signalPath', () => {
  it('follows a signal that schedules its own workflow task to the activity it starts', () => {
    const events = history(() => {
      const e = [at('WorkflowExecutionStarted', 0), at('WorkflowExecutionSignaled', 103)];
      const scheduled = at('WorkflowTaskScheduled', 103);
      const started = at('WorkflowTaskStarted', 106, { scheduledEventId: scheduled.id });
      const completed = at('WorkflowTaskCompleted', 118, { scheduledEventId: scheduled.id });
      const activity = at('ActivityTaskScheduled', 118, { activityType: 'forceDetachVolume' });
      return [
        ...e,
        scheduled,
        started,
        completed,
        activity,
        at('ActivityTaskStarted', 121, { scheduledEventId: activity.id }),
      ];
    });
    expect(signalPath(events, 100, 'forceDetachVolume')).toEqual({
      toServer: 3,
      toWorkflowTask: 3,
      workflowTask: 12,
      toActivity: 3,
    });
  });

  it('counts from the signal when it joins a task already scheduled, not yet started', () => {
    const events = history(() => {
      const scheduled = at('WorkflowTaskScheduled', 95); // by an activity's completion, just before
      const signal = at('WorkflowExecutionSignaled', 101);
      const started = at('WorkflowTaskStarted', 110, { scheduledEventId: scheduled.id });
      const completed = at('WorkflowTaskCompleted', 120);
      const activity = at('ActivityTaskScheduled', 120, { activityType: 'mark' });
      return [
        scheduled,
        signal,
        started,
        completed,
        activity,
        at('ActivityTaskStarted', 125, { scheduledEventId: activity.id }),
      ];
    });
    expect(signalPath(events, 100, 'mark')).toEqual({
      toServer: 1,
      toWorkflowTask: 9,
      workflowTask: 10,
      toActivity: 5,
    });
  });

  it('waits out a task that was running when the signal came, and takes the next', () => {
    const events = history(() => {
      const first = at('WorkflowTaskScheduled', 90);
      const firstStarted = at('WorkflowTaskStarted', 92, { scheduledEventId: first.id });
      // Recorded after the running task's completion, as the server buffers it.
      const done = at('WorkflowTaskCompleted', 130, { scheduledEventId: first.id });
      const signal = at('WorkflowExecutionSignaled', 102);
      const next = at('WorkflowTaskScheduled', 130);
      const started = at('WorkflowTaskStarted', 133, { scheduledEventId: next.id });
      const completed = at('WorkflowTaskCompleted', 140);
      const activity = at('ActivityTaskScheduled', 140, { activityType: 'mark' });
      const activityStarted = at('ActivityTaskStarted', 142, { scheduledEventId: activity.id });
      return [first, firstStarted, done, signal, next, started, completed, activity, activityStarted];
    });
    expect(signalPath(events, 100, 'mark')).toEqual({
      toServer: 2,
      toWorkflowTask: 31,
      workflowTask: 7,
      toActivity: 2,
    });
  });

  it('is null when no activity of that type followed', () => {
    const events = history(() => [
      at('WorkflowExecutionSignaled', 1),
      at('WorkflowTaskScheduled', 1),
      at('WorkflowTaskStarted', 2),
      at('WorkflowTaskCompleted', 3),
      at('ActivityTaskScheduled', 3, { activityType: 'somethingElse' }),
    ]);
    expect(signalPath(events, 0, 'mark')).toBeNull();
  });
});

describe('runSplit', () => {
  it('sums workflow tasks waiting and running, and activities waiting', () => {
    const events = history(() => {
      const s1 = at('WorkflowTaskScheduled', 0);
      const e1 = [s1, at('WorkflowTaskStarted', 5, { scheduledEventId: s1.id }), at('WorkflowTaskCompleted', 15)];
      const a = at('ActivityTaskScheduled', 15);
      const b = at('ActivityTaskScheduled', 15);
      const e2 = [
        a,
        b,
        at('ActivityTaskStarted', 18, { scheduledEventId: a.id }),
        at('ActivityTaskStarted', 22, { scheduledEventId: b.id }),
      ];
      const s2 = at('WorkflowTaskScheduled', 30);
      const e3 = [s2, at('WorkflowTaskStarted', 34, { scheduledEventId: s2.id }), at('WorkflowTaskCompleted', 44)];
      return [...e1, ...e2, ...e3, at('WorkflowExecutionCompleted', 44)];
    });
    expect(runSplit(events)).toEqual({
      total: 44,
      workflowTasksQueued: 9,
      workflowTasksRan: 20,
      activitiesQueued: 10,
      workflowTasks: 2,
    });
  });
});
