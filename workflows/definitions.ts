/** Message definitions shared by the workflow and its clients. */
import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import { ABORT_SIGNAL, SET_MAX_STOP_DURATION_UPDATE, STATUS_QUERY } from '../common/names';
import type { AbortPayload, SetMaxStopDurationInput, SetMaxStopDurationResult, StopStatus } from '../common/status';

export const abortSignal = defineSignal<[AbortPayload?]>(ABORT_SIGNAL);
export const setMaxStopDurationUpdate = defineUpdate<SetMaxStopDurationResult, [SetMaxStopDurationInput]>(
  SET_MAX_STOP_DURATION_UPDATE,
);
export const statusQuery = defineQuery<StopStatus>(STATUS_QUERY);
