// The platform's instance-lifecycle workflow, in stopflow's namespace, running the stop as its child.
import { ChildWorkflowCancellationType, executeChild, ParentClosePolicy } from '@temporalio/workflow';
import type { StopInstanceWorkflow, StopStatus } from 'stopflow';

export async function decommissionHost(instanceId: string): Promise<StopStatus> {
  // … drain the host, snapshot what must be kept …
  const status = await executeChild<StopInstanceWorkflow>('stopInstance', {
    workflowId: `stop-${instanceId}`,
    taskQueue: 'stopflow',
    args: [{ instanceId, maxStopDuration: '15m', reason: 'host decommissioned', requestedBy: 'platform' }],
    // A stop must never be left half done because this workflow ended, failed, was terminated or was
    // cancelled: the stop runs on to its own end (its maxStopDuration bounds it). TERMINATE, the default,
    // would cut it off mid-detach, and a cancel makes it stop trying with the instance not stopped.
    parentClosePolicy: ParentClosePolicy.ABANDON,
    cancellationType: ChildWorkflowCancellationType.ABANDON,
  });
  // Here every volume is confirmed detached and the instance stopped; a stop that failed threw a
  // ChildWorkflowFailure whose cause is the StopFailed ApplicationFailure (details: the final StopStatus).
  return status;
}
