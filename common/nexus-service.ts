/**
 * The `stopflow` Nexus service (docs/contract.md "Nexus service"): what a
 * workflow in another namespace calls through a Nexus endpoint, and what the
 * worker's handlers (worker/nexus-handlers.ts) implement.
 *
 * Both sides import this file, so it imports only `nexus-rpc` and types: a
 * caller's workflow bundle gets the definition and nothing of the worker or of
 * the Temporal client. Nexus is Public Preview in the TypeScript SDK.
 */
import * as nexus from 'nexus-rpc';
import type { StopRequest } from './request';
import type { AbortPayload, StopStatus } from './status';

/** The service name callers address; with the endpoint's name it is all a caller needs. */
export const NEXUS_SERVICE = 'stopflow';

export interface StopAbortInput extends AbortPayload {
  instanceId: string;
}

export interface StopAbortResult {
  /** True when the abort signal reached a running stop; false when the stop had already ended (nothing changed). */
  signalled: boolean;
  /** How the stop ended, when it had already ended. */
  final?: StopStatus;
}

export interface StopStatusInput {
  instanceId: string;
}

export const stopflowService = nexus.service(NEXUS_SERVICE, {
  /**
   * Asynchronous: starts the stop of `request.instanceId` (workflow `stop-<instanceId>`), or joins the one
   * already running, and completes with its final StopStatus. A stop that ends with the instance not stopped
   * fails the operation (a NexusOperationFailure caused by the workflow's non-retryable ApplicationFailure),
   * of one of two types, both with the final StopStatus in `details[0]`:
   * - `StopFailed`: volumes could not be detached (or the stop was cancelled);
   * - `VolumeHeld`: refused because a running stop of another instance on the same task queue holds one of
   *   its volumes; nothing was detached (its volumes `attached`), and `details[1]` lists the holders
   *   `[{ volumeId, workflowId, runId, instanceId }]` (docs/contract.md "Volume ownership").
   */
  stop: nexus.operation<StopRequest, StopStatus>(),
  /** Synchronous: escalates the running stop of the instance to force-detach (the `abort` signal). */
  abort: nexus.operation<StopAbortInput, StopAbortResult>(),
  /** Synchronous: the StopStatus of the instance's latest stop, live while it runs, final once it ended. */
  status: nexus.operation<StopStatusInput, StopStatus>(),
});

export type StopflowService = typeof stopflowService;
