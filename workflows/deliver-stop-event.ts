/**
 * deliverStopEvent: delivers one stop's completion event to the worker's endpoint (docs/contract.md
 * "Completion events"). One activity, retried with backoff (1 s doubling to 5 min) for up to 7 days,
 * so a receiver down for an hour still gets it; each try has 30 s. A receiver's 4xx (other than 408
 * and 429) is final (`EventRejected`): sending the same request again would get the same answer.
 * The activity may set its own next retry delay (a worker option, for tests); the policy here is
 * the bound.
 */
import { proxyActivities } from '@temporalio/workflow';
import {
  type DeliveryResult,
  EVENT_REJECTED,
  type OwnershipEventActivities,
  type StopEventData,
} from '../common/ownership-events';

export async function deliverStopEvent(event: StopEventData): Promise<DeliveryResult> {
  const { deliverCompletionEvent } = proxyActivities<OwnershipEventActivities>({
    startToCloseTimeout: '30s',
    scheduleToCloseTimeout: '7d',
    retry: {
      initialInterval: '1s',
      backoffCoefficient: 2,
      maximumInterval: '5m',
      nonRetryableErrorTypes: [EVENT_REJECTED],
    },
    summary: `deliver the ${event.outcome} event of ${event.workflowId}`,
  });
  return deliverCompletionEvent(event);
}
