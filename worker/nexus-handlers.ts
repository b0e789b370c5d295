/**
 * The handlers of the `stopflow` Nexus service (common/nexus-service.ts), run
 * by the worker on its main task queue. A Nexus endpoint that targets that
 * task queue lets workflows of other namespaces stop instances
 * (docs/contract.md "Nexus service"); without one, nothing ever calls them.
 *
 * Errors a caller must not retry are HandlerErrors of a non-retryable type
 * (BAD_REQUEST, NOT_FOUND): anything else thrown here counts as a handler
 * failure that Nexus retries until the operation's timeout, which is what a
 * passing outage (Temporal unreachable for a moment) needs.
 */
import { getClient, startWorkflow, WorkflowRunOperationHandler } from '@temporalio/nexus';
import * as nexus from 'nexus-rpc';
import {
  InvalidInputError,
  StopAlreadyEndedError,
  StopflowClient,
  type StopInstanceWorkflow,
  StopNotFoundError,
} from '../client/stopflow-client';
import { formatDuration } from '../common/duration';
import { StopForcedKey, StopPhaseKey, WORKFLOW_TYPE, workflowIdFor } from '../common/names';
import type { StopAbortInput, StopAbortResult, StopStatusInput } from '../common/nexus-service';
import { stopflowService } from '../common/nexus-service';
import { parseStopRequest, type StopRequest, StopRequestError } from '../common/request';
import type { AbortPayload, StopStatus } from '../common/status';

/** A caller's mistake: final, with the field and the rule in the message. */
function badRequest(message: string): nexus.HandlerError {
  return new nexus.HandlerError('BAD_REQUEST', message);
}

/** The client's errors as what a Nexus caller can act on; anything else stays retryable. */
function handlerErrorOf(err: unknown): unknown {
  if (err instanceof InvalidInputError) return badRequest(err.message);
  if (err instanceof StopNotFoundError) return new nexus.HandlerError('NOT_FOUND', err.message);
  return err;
}

/**
 * The input must be an object before any field is read: a TypeError would be retried as a handler failure.
 * Strict, as `stop` is: a field this worker does not know would otherwise be ignored while the caller relies on it.
 */
function objectInput(input: unknown, fields: readonly string[], optional: readonly string[]): Record<string, unknown> {
  const allowed = [...fields, ...optional];
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    throw badRequest(`input: must be an object { ${[...fields, ...optional.map((f) => `${f}?`)].join(', ')} }`);
  }
  const unknown = Object.keys(input).filter((key) => !allowed.includes(key));
  if (unknown.length > 0) {
    throw badRequest(
      `${unknown.join(', ')}: unknown field${unknown.length > 1 ? 's' : ''} (allowed: ${allowed.join(', ')})`,
    );
  }
  return input as Record<string, unknown>;
}

/**
 * `stop`: the stop's own workflow backs the operation. The id conflict policy
 * USE_EXISTING joins a stop of the same instance that is already running, and
 * the SDK attaches this operation's completion callback to that run, so every
 * caller gets the result of the one run. The request is checked here with the
 * strict schema (unknown fields refused, as by the client): a field this worker
 * does not know would otherwise be ignored while the caller relies on it. A
 * refused request starts nothing.
 */
const stop = new WorkflowRunOperationHandler<StopRequest, StopStatus>(async (ctx, request) => {
  let parsed: ReturnType<typeof parseStopRequest>;
  try {
    parsed = parseStopRequest(request);
  } catch (err) {
    if (err instanceof StopRequestError) throw badRequest(err.message);
    throw err;
  }
  const volumes = parsed.volumes ? `${parsed.volumes.length} volume(s)` : 'volumes from the provider';
  return startWorkflow<StopInstanceWorkflow>(ctx, WORKFLOW_TYPE, {
    workflowId: workflowIdFor(parsed.instanceId),
    // The task queue defaults to this worker's: the one the endpoint targets, where stops run.
    args: [request],
    workflowIdConflictPolicy: 'USE_EXISTING',
    staticSummary: `stop ${parsed.instanceId} (Nexus): ${volumes}, maxStopDuration ${formatDuration(parsed.maxStopDurationMs)}`,
    // As the client does: the stop is listed as stopping from its first moment, not from its first workflow task.
    typedSearchAttributes: [
      { key: StopPhaseKey, value: 'stopping' },
      { key: StopForcedKey, value: false },
    ],
  });
});

async function abort(_ctx: nexus.StartOperationContext, input: StopAbortInput): Promise<StopAbortResult> {
  const { instanceId, reason, requestedBy } = objectInput(input, ['instanceId'], ['reason', 'requestedBy']);
  // Typed as the signal's payload for the call; StopflowClient checks the values before it sends anything.
  const payload = {} as AbortPayload;
  if (reason !== undefined) payload.reason = reason as string;
  if (requestedBy !== undefined) payload.requestedBy = requestedBy as string;
  try {
    await new StopflowClient({ client: getClient() }).abort(instanceId as string, payload);
    return { signalled: true };
  } catch (err) {
    // An abort wants the stop to end; one that already ended is an answer, not a failure.
    if (err instanceof StopAlreadyEndedError)
      return err.status ? { signalled: false, final: err.status } : { signalled: false };
    throw handlerErrorOf(err);
  }
}

async function status(_ctx: nexus.StartOperationContext, input: StopStatusInput): Promise<StopStatus> {
  const { instanceId } = objectInput(input, ['instanceId'], []);
  try {
    return await new StopflowClient({ client: getClient() }).status(instanceId as string);
  } catch (err) {
    throw handlerErrorOf(err);
  }
}

/** The service handler the worker registers (`nexusServices`). */
export function stopflowNexusHandler(): nexus.ServiceHandler<typeof stopflowService.operations> {
  return nexus.serviceHandler(stopflowService, { stop, abort, status });
}
