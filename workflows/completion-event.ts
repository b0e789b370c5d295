/**
 * Completion events (patch `ownership-events`): when a stop ends, and the worker has an events
 * endpoint, one `deliverStopEvent` child workflow takes the event and delivers it, retried for days.
 * The stop waits only for the child to start (ParentClosePolicy ABANDON: it outlives the stop), so a
 * receiver that is down never delays the stop's result. Whether the worker is configured is asked
 * through a local activity, so the answer is recorded in history and every replica replays the same:
 * since `ask-worker-once` at the start, beside the volume holders; before it (or when that failed) here.
 * The event carries the final status only: the endpoint and the secret stay on the worker.
 */

import { WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import { log, ParentClosePolicy, proxyLocalActivities, startChild, workflowInfo } from '@temporalio/workflow';
import { DELIVER_STOP_EVENT_WORKFLOW_TYPE, workflowIdFor } from '../common/names';
import { type OwnershipEventActivities, type StopEventData, stopEventWorkflowId } from '../common/ownership-events';
import type { StopStatus } from '../common/status';
import { workerCouldNotAnswer } from './local-answers';

const local = proxyLocalActivities<OwnershipEventActivities>({
  startToCloseTimeout: '10s',
  retry: { initialInterval: '1s', maximumAttempts: 3 },
});

/**
 * Hands the stop's end to a deliverStopEvent child when the worker delivers events. `configured` is the
 * worker's answer when the stop already has it (askWorker, patch `ask-worker-once`); otherwise it is asked here.
 */
export async function announceEnd(
  status: StopStatus,
  failureType?: string,
  configured: boolean | null = null,
): Promise<void> {
  if (!(configured ?? (await askConfigured()))) return;
  const { workflowId, runId, taskQueue } = workflowInfo();
  const event: StopEventData = {
    workflowId,
    runId,
    instanceId: status.instanceId,
    outcome: status.phase === 'stopped' ? 'stopped' : 'failed',
    endedAt: new Date().toISOString(),
    status,
  };
  if (failureType !== undefined) event.failureType = failureType;
  try {
    await startChild(DELIVER_STOP_EVENT_WORKFLOW_TYPE, {
      // From the contract's stop id (`stop-<instanceId>`), the stop's usual workflow id, and the run: unique per
      // run, and the same on replay (a replay may run under another workflow id; the instance id and run stay).
      workflowId: stopEventWorkflowId(workflowIdFor(status.instanceId), runId),
      taskQueue,
      args: [event],
      parentClosePolicy: ParentClosePolicy.ABANDON,
      staticSummary: `deliver the completion event of ${workflowId} (${event.outcome})`,
    });
  } catch (err) {
    // Already started for this run (it cannot be, one per run): the event is on its way either way.
    if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
  }
}

async function askConfigured(): Promise<boolean> {
  try {
    return await local.completionEventsConfigured();
  } catch (err) {
    if (!workerCouldNotAnswer(err)) throw err;
    log.warn('could not tell whether completion events are configured; none is sent', { error: err.message });
    return false;
  }
}
