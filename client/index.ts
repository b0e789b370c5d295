/**
 * The `stopflow` package: what another service imports to start, abort, steer,
 * watch and audit stops, and the contract's names and types it shares with the
 * worker. Everything exported here is part of the versioned contract:
 * test/client-package.test.ts fails when this list changes without a
 * CHANGELOG.md entry. The JSON Schema is the subpath
 * `stopflow/stop-request.schema.json`.
 *
 * Nothing here may reach workflows/, activities/ or worker/ (the package build,
 * scripts/build-package.ts, refuses to): a caller installs the client, not the
 * worker's runtime.
 */
export {
  DURATION_RULE,
  type DurationInput,
  formatDuration,
  MAX_DURATION_MS,
  parseDuration,
} from '../common/duration';
export {
  IDEMPOTENCY_HEADER,
  SIGNATURE_HEADER,
  SIGNATURE_TOLERANCE_SECONDS,
  type StopEventSignatureInput,
  signStopEvent,
  TIMESTAMP_HEADER,
  verifyStopEventSignature,
} from '../common/event-signature';
export {
  ABORT_SIGNAL,
  DEFAULT_TASK_QUEUE,
  DELIVER_STOP_EVENT_WORKFLOW_TYPE,
  INVALID_STOP_REQUEST,
  SEARCH_ATTRIBUTES,
  SET_MAX_STOP_DURATION_UPDATE,
  STATUS_QUERY,
  STOP_FAILED,
  StopCauseKey,
  StopForcedKey,
  StopPhaseKey,
  StopVolumesKey,
  VOLUME_HELD,
  WORKFLOW_TYPE,
  workflowIdFor,
} from '../common/names';
export type { StopEventData, VolumeHolder } from '../common/ownership-events';
export {
  ID_PATTERN,
  INSTANCE_ID_RULE,
  MAX_VOLUMES,
  type NormalizedStopRequest,
  parseStopRequest,
  type StopRequest,
  StopRequestError,
  type VolumeRef,
} from '../common/request';
export {
  type AbortPayload,
  type Escalation,
  type EscalationCause,
  FINAL_VOLUME_STATES,
  type SetMaxStopDurationInput,
  type SetMaxStopDurationResult,
  type StopCause,
  type StopPhase,
  type StopStatus,
  type VolumeState,
  type VolumeStatus,
} from '../common/status';
export {
  ConnectionFailedError,
  connectTemporalClient,
  loadTemporalTarget,
  type TemporalTarget,
} from './connect';
export type { AuditEntry, AuditKind } from './history';
export { STOP_PHASES } from './queries';
export {
  InvalidInputError,
  type ListOptions,
  type PendingWork,
  StopAlreadyEndedError,
  StopFailedError,
  StopflowClient,
  type StopflowClientOptions,
  type StopHandle,
  type StopHistory,
  type StopInstanceWorkflow,
  type StopListing,
  StopNotFoundError,
  type StopProgress,
  VolumeHeldError,
  VolumeNotReleasedError,
  type VolumeOwnership,
  type VolumeProgress,
  type WaitUntilReleasedOptions,
} from './stopflow-client';
