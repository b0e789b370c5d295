/**
 * StopflowClient: the typed way for services to start, abort, steer and read
 * stops. Everything is validated before anything is sent, so bad input starts
 * or changes nothing.
 */
import { randomUUID } from 'node:crypto';
import {
  type Client,
  WorkflowExecutionAlreadyStartedError,
  WorkflowFailedError,
  type WorkflowHandle,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
} from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { DURATION_RULE, formatDuration, parseDuration } from '../common/duration';
import { DEFAULT_TASK_QUEUE, STOP_FAILED, StopForcedKey, StopPhaseKey, workflowIdFor } from '../common/names';
import { INSTANCE_ID_RULE, parseStopRequest, type StopRequest } from '../common/request';
import type { AbortPayload, SetMaxStopDurationResult, StopStatus } from '../common/status';
import { abortSignal, setMaxStopDurationUpdate, statusQuery } from '../workflows/definitions';
import type { stopInstance } from '../workflows/stop-instance';

export interface StopflowClientOptions {
  client: Client;
  taskQueue?: string;
}

/** Input that breaks a rule: the message names the field and the rule. Nothing was sent. */
export class InvalidInputError extends Error {
  override name = 'InvalidInputError';
}

/** No stop of this instance exists (or it is not visible in this namespace). */
export class StopNotFoundError extends Error {
  override name = 'StopNotFoundError';
}

/** The request reached a stop that had already ended, so it changed nothing. */
export class StopAlreadyEndedError extends Error {
  override name = 'StopAlreadyEndedError';
}

/** The stop ended failed: `status` says which volumes and why. */
export class StopFailedError extends Error {
  override name = 'StopFailedError';
  constructor(
    message: string,
    readonly status: StopStatus | undefined,
  ) {
    super(message);
  }
}

export interface StopHandle {
  instanceId: string;
  workflowId: string;
  runId: string;
  /** False when the call joined a stop of this instance that was already running. */
  started: boolean;
  handle: WorkflowHandle<typeof stopInstance>;
}

const ID_PATTERN = /^[A-Za-z0-9._:-]{1,255}$/;

function checkInstanceId(instanceId: unknown): string {
  if (typeof instanceId !== 'string' || !ID_PATTERN.test(instanceId)) {
    throw new InvalidInputError(`instanceId: ${INSTANCE_ID_RULE}`);
  }
  return instanceId;
}

export class StopflowClient {
  readonly client: Client;
  readonly taskQueue: string;

  constructor(options: StopflowClientOptions) {
    this.client = options.client;
    this.taskQueue = options.taskQueue ?? DEFAULT_TASK_QUEUE;
  }

  /** Starts a stop, or joins the one already running for this instance. */
  async stop(request: StopRequest): Promise<StopHandle> {
    let parsed: ReturnType<typeof parseStopRequest>;
    try {
      parsed = parseStopRequest(request);
    } catch (err) {
      throw new InvalidInputError((err as Error).message);
    }
    const workflowId = workflowIdFor(parsed.instanceId);
    const volumes = parsed.volumes ? `${parsed.volumes.length} volume(s)` : 'volumes from the provider';
    const summary = `stop ${parsed.instanceId}: ${volumes}, maxStopDuration ${formatDuration(parsed.maxStopDurationMs)}`;
    const details = [
      `instance: ${parsed.instanceId}`,
      `volumes: ${parsed.volumes?.map((v) => v.volumeId).join(', ') ?? '(listed from the provider)'}`,
      `maxStopDuration: ${formatDuration(parsed.maxStopDurationMs)}`,
      `forceGrace: ${formatDuration(parsed.forceGraceMs)}`,
      `requestedBy: ${parsed.requestedBy ?? '(not given)'}`,
      `reason: ${parsed.reason ?? '(not given)'}`,
      `provider: ${parsed.provider ?? '(worker default)'}`,
    ].join('\n');
    // A token in the memo tells whether this call started the run or joined a running one.
    const startToken = randomUUID();
    try {
      const handle = await this.client.workflow.start<typeof stopInstance>('stopInstance', {
        taskQueue: this.taskQueue,
        workflowId,
        args: [request],
        workflowIdConflictPolicy: 'USE_EXISTING',
        staticSummary: summary,
        staticDetails: details,
        memo: { startToken },
        typedSearchAttributes: [
          { key: StopPhaseKey, value: 'stopping' },
          { key: StopForcedKey, value: false },
        ],
      });
      const runId = handle.firstExecutionRunId;
      const description = await this.client.workflow.getHandle(workflowId, runId).describe();
      const started = description.memo?.startToken === startToken;
      return { instanceId: parsed.instanceId, workflowId, runId, started, handle };
    } catch (err) {
      if (err instanceof WorkflowExecutionAlreadyStartedError) {
        throw new InvalidInputError(`a stop of ${parsed.instanceId} could not be started: ${err.message}`);
      }
      throw err;
    }
  }

  private handle(instanceId: string): WorkflowHandle<typeof stopInstance> {
    return this.client.workflow.getHandle<typeof stopInstance>(workflowIdFor(checkInstanceId(instanceId)));
  }

  /** Escalates a running stop to force-detach. Repeated aborts are harmless. */
  async abort(instanceId: string, payload: AbortPayload = {}): Promise<void> {
    if (payload.reason !== undefined && (typeof payload.reason !== 'string' || payload.reason.length > 1024)) {
      throw new InvalidInputError('reason: must be a string of at most 1024 characters');
    }
    if (
      payload.requestedBy !== undefined &&
      (typeof payload.requestedBy !== 'string' || payload.requestedBy.length > 255)
    ) {
      throw new InvalidInputError('requestedBy: must be a string of at most 255 characters');
    }
    const handle = this.handle(instanceId);
    await this.requireRunning(instanceId, handle, 'abort');
    try {
      await handle.signal(abortSignal, payload);
    } catch (err) {
      throw this.translate(instanceId, err, 'abort');
    }
  }

  /** Moves the deadline of a running stop; measured from the stop's start. */
  async setMaxStopDuration(instanceId: string, maxStopDuration: string | number): Promise<SetMaxStopDurationResult> {
    if (parseDuration(maxStopDuration) === undefined) throw new InvalidInputError(`maxStopDuration: ${DURATION_RULE}`);
    const handle = this.handle(instanceId);
    await this.requireRunning(instanceId, handle, 'change maxStopDuration of');
    try {
      return await handle.executeUpdate(setMaxStopDurationUpdate, { args: [{ maxStopDuration }] });
    } catch (err) {
      if (err instanceof WorkflowUpdateFailedError) {
        const cause = err.cause instanceof Error ? err.cause.message : err.message;
        throw new InvalidInputError(cause);
      }
      throw this.translate(instanceId, err, 'change maxStopDuration of');
    }
  }

  /** The live status of the latest stop of this instance (also after it ended). */
  async status(instanceId: string): Promise<StopStatus> {
    try {
      return await this.handle(instanceId).query(statusQuery);
    } catch (err) {
      throw this.translate(instanceId, err, 'read the status of');
    }
  }

  /** Waits for the stop to end: the final status, or StopFailedError with it. */
  async result(instanceId: string): Promise<StopStatus> {
    try {
      return await this.handle(instanceId).result();
    } catch (err) {
      if (
        err instanceof WorkflowFailedError &&
        err.cause instanceof ApplicationFailure &&
        err.cause.type === STOP_FAILED
      ) {
        throw new StopFailedError(err.cause.message, err.cause.details?.[0] as StopStatus | undefined);
      }
      if (err instanceof WorkflowFailedError) {
        const cause = err.cause instanceof Error ? err.cause.message : err.message;
        throw new StopFailedError(cause, undefined);
      }
      throw this.translate(instanceId, err, 'wait for');
    }
  }

  private async requireRunning(instanceId: string, handle: WorkflowHandle, verb: string): Promise<void> {
    let description: Awaited<ReturnType<WorkflowHandle['describe']>>;
    try {
      description = await handle.describe();
    } catch (err) {
      throw this.translate(instanceId, err, verb);
    }
    if (description.status.name !== 'RUNNING') {
      throw new StopAlreadyEndedError(
        `cannot ${verb} the stop of ${instanceId}: it already ended ${description.status.name.toLowerCase()} at ${description.closeTime?.toISOString() ?? 'an unknown time'}`,
      );
    }
  }

  private translate(instanceId: string, err: unknown, verb: string): Error {
    if (err instanceof WorkflowNotFoundError) {
      return new StopNotFoundError(`cannot ${verb} the stop of ${instanceId}: no stop of ${instanceId} was found`);
    }
    return err instanceof Error ? err : new Error(String(err));
  }
}
