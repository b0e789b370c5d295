/**
 * Names that other services depend on (see docs/contract.md "Names"). Changing any of
 * these breaks callers that start, signal or query stops by name.
 */
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

export const DEFAULT_TASK_QUEUE = 'stopflow';
export const WORKFLOW_TYPE = 'stopInstance';
export const ABORT_SIGNAL = 'abort';
export const SET_MAX_STOP_DURATION_UPDATE = 'setMaxStopDuration';
export const STATUS_QUERY = 'status';
/** Type of the ApplicationFailure a stop ends with when a volume could not be detached. */
export const STOP_FAILED = 'StopFailed';
/** Type of the ApplicationFailure raised when a request reaches the workflow invalid. */
export const INVALID_STOP_REQUEST = 'InvalidStopRequest';
/** Type of the ApplicationFailure a stop ends with when another instance's running stop holds one of its volumes. */
export const VOLUME_HELD = 'VolumeHeld';
/** The child workflow that delivers a stop's completion event, when the worker has an events endpoint. */
export const DELIVER_STOP_EVENT_WORKFLOW_TYPE = 'deliverStopEvent';

export function workflowIdFor(instanceId: string): string {
  return `stop-${instanceId}`;
}

export const StopPhaseKey = defineSearchAttributeKey('StopPhase', SearchAttributeType.KEYWORD);
export const StopCauseKey = defineSearchAttributeKey('StopCause', SearchAttributeType.KEYWORD);
export const StopForcedKey = defineSearchAttributeKey('StopForced', SearchAttributeType.BOOL);
/** The volume ids a stop holds (requested, listed, or found attached by the final check). */
export const StopVolumesKey = defineSearchAttributeKey('StopVolumes', SearchAttributeType.KEYWORD_LIST);

/**
 * What `temporal operator search-attribute create` needs, for the dev server and start-up checks. StopVolumes
 * (workflow version 4) comes first: a namespace set up before it lacks only that one, and messages that list
 * the rest keep their wording.
 */
export const SEARCH_ATTRIBUTES = [
  { name: 'StopVolumes', type: 'KeywordList' },
  { name: 'StopPhase', type: 'Keyword' },
  { name: 'StopCause', type: 'Keyword' },
  { name: 'StopForced', type: 'Bool' },
] as const;
