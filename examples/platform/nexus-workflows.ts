// The platform's workflows, in their own namespace, stopping instances through the `stopflow` Nexus endpoint.
import { ApplicationFailure, NexusOperationFailure } from '@temporalio/common';
import { createNexusServiceClient } from '@temporalio/workflow';
import type { StopStatus } from 'stopflow';
import { stopflowService } from 'stopflow/nexus';

const stopflow = () => createNexusServiceClient({ endpoint: 'stopflow', service: stopflowService });

export async function retireInstance(instanceId: string): Promise<{ stopped: boolean; status: StopStatus }> {
  try {
    // Starts the stop, or joins the one already running for this instance, and waits for its end.
    const status = await stopflow().executeOperation(
      'stop',
      { instanceId, maxStopDuration: '15m', reason: 'instance retired', requestedBy: 'platform' },
      // Other callers may share this stop: this workflow being cancelled must not cancel it for them.
      { cancellationType: 'ABANDON' },
    );
    return { stopped: true, status }; // every volume confirmed detached: release the host, end billing
  } catch (err) {
    // The stop ended and the instance is NOT stopped: StopFailed (a volume could not be detached) or VolumeHeld
    // (refused, nothing detached: another instance's running stop holds one of its volumes). Both hold the
    // final StopStatus.
    if (err instanceof NexusOperationFailure && err.cause instanceof ApplicationFailure) {
      const { type, details } = err.cause;
      if (type === 'StopFailed' || type === 'VolumeHeld') return { stopped: false, status: details?.[0] as StopStatus };
    }
    throw err; // e.g. a refused request: a HandlerError (BAD_REQUEST) naming the field and the rule
  }
}

export async function escalateStop(instanceId: string, reason: string): Promise<StopStatus> {
  // Forces what is left of a running stop; on a stop that already ended it changes nothing.
  const { final } = await stopflow().executeOperation('abort', { instanceId, reason, requestedBy: 'platform' });
  return final ?? (await stopflow().executeOperation('status', { instanceId }));
}
