/**
 * Completion events, the worker's side (docs/contract.md "Completion events"): whether this worker has
 * an endpoint (asked by each stop as it ends, through a local activity), and one delivery attempt of a
 * stop's event, as a CloudEvents 1.0 structured JSON request signed with the worker's secret. The
 * endpoint and the secret come from the worker's configuration only, never from a request or from
 * history: a caller cannot point the worker at another host (no server-side request forgery).
 */
import { ApplicationFailure, Context } from '@temporalio/activity';
import { CloudEvent, HTTP } from 'cloudevents';
import { IDEMPOTENCY_HEADER, SIGNATURE_HEADER, signStopEvent, TIMESTAMP_HEADER } from '../common/event-signature';
import { type DeliveryResult, EVENT_REJECTED, type StopEventData } from '../common/ownership-events';

export interface CompletionEventsOptions {
  /** http(s) URL the events are POSTed to. */
  url: string;
  /** HMAC-SHA256 key; never logged, never in history. */
  secret: string;
  /**
   * The delay before the next try, doubling from `initialMs` up to `maxMs`. Unset: the deliverStopEvent
   * workflow's retry policy decides (1 s doubling to 5 min). Tests make it short.
   */
  retry?: { initialMs: number; maxMs: number };
  /** One request's time limit. Default 20 s (a try has 30 s). */
  requestTimeoutMs?: number;
}

const DEFAULT_REQUEST_TIMEOUT_MS = 20_000;

/** `dev.stopflow.stop.stopped` / `dev.stopflow.stop.failed`. */
export function stopEventType(outcome: StopEventData['outcome']): string {
  return `dev.stopflow.stop.${outcome}`;
}

/** The event's id, and so its idempotency key: one per stop run, the same on every retry. */
export function stopEventId(event: Pick<StopEventData, 'workflowId' | 'runId'>): string {
  return `${event.workflowId}/${event.runId}`;
}

/** The request a delivery sends: the CloudEvents structured body and every header, signature included. */
export function stopEventRequest(
  event: StopEventData,
  where: { namespace: string; taskQueue: string },
  secret: string,
  nowMs = Date.now(),
): { body: string; headers: Record<string, string> } {
  const cloudEvent = new CloudEvent<StopEventData>({
    specversion: '1.0',
    id: stopEventId(event),
    source: `stopflow/${where.namespace}/${where.taskQueue}`,
    type: stopEventType(event.outcome),
    subject: event.instanceId,
    time: event.endedAt,
    datacontenttype: 'application/json',
    data: event,
  });
  const message = HTTP.structured(cloudEvent);
  const body = String(message.body);
  const timestamp = Math.floor(nowMs / 1000);
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(message.headers)) headers[name.toLowerCase()] = String(value);
  headers[TIMESTAMP_HEADER] = String(timestamp);
  headers[SIGNATURE_HEADER] = signStopEvent(secret, timestamp, body);
  headers[IDEMPOTENCY_HEADER] = cloudEvent.id;
  return { body, headers };
}

/** Where the events go, without path, query or credentials: what logs and errors may say. */
function describeEndpoint(url: string): string {
  try {
    return new URL(url).origin;
  } catch {
    return '(invalid URL)';
  }
}

export function createCompletionEventActivities(events: CompletionEventsOptions | undefined) {
  return {
    async completionEventsConfigured(): Promise<boolean> {
      return events !== undefined;
    },

    async deliverCompletionEvent(event: StopEventData): Promise<DeliveryResult> {
      const context = Context.current();
      const { attempt, namespace, taskQueue } = context.info;
      if (!events) {
        // Retryable: another replica of this task queue, configured like the one that asked, can deliver it.
        throw ApplicationFailure.retryable(
          'completion events are not configured on this worker',
          'EventsNotConfigured',
        );
      }
      const endpoint = describeEndpoint(events.url);
      const { body, headers } = stopEventRequest(event, { namespace, taskQueue }, events.secret);
      // Retried by the workflow's policy, or sooner or later when the worker sets its own backoff.
      const retryLater = (message: string) =>
        ApplicationFailure.create({
          message,
          type: 'EventDeliveryFailed',
          ...(events.retry
            ? { nextRetryDelay: Math.min(events.retry.initialMs * 2 ** (attempt - 1), events.retry.maxMs) }
            : {}),
        });
      let response: Response;
      try {
        response = await fetch(events.url, {
          method: 'POST',
          body,
          headers,
          // A redirect would carry the signed event to a host nobody configured: it is an answer, not a hop.
          redirect: 'manual',
          signal: AbortSignal.any([
            context.cancellationSignal,
            AbortSignal.timeout(events.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS),
          ]),
        });
        await response.body?.cancel();
      } catch (err) {
        throw retryLater(`event ${stopEventId(event)} not delivered to ${endpoint}: ${(err as Error).message}`);
      }
      if (response.status >= 200 && response.status < 300) {
        context.log.info('completion event delivered', { id: stopEventId(event), endpoint, attempt });
        return { delivered: true, httpStatus: response.status, attempt };
      }
      const message = `event ${stopEventId(event)} refused by ${endpoint}: HTTP ${response.status}`;
      if (response.status >= 400 && response.status < 500 && response.status !== 408 && response.status !== 429) {
        context.log.warn('completion event rejected for good', {
          id: stopEventId(event),
          endpoint,
          status: response.status,
        });
        throw ApplicationFailure.create({ message, type: EVENT_REJECTED, nonRetryable: true });
      }
      throw retryLater(message);
    },
  };
}
