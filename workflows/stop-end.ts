/**
 * How a stop ends: its phase, the one search-attribute upsert for the end, the report, and for a
 * failure the typed `StopFailed` its callers see (docs/contract.md "Failure types").
 */
import { ApplicationFailure, upsertSearchAttributes } from '@temporalio/workflow';
import { STOP_FAILED, StopCauseKey, StopPhaseKey } from '../common/names';
import type { StopPhase } from '../common/status';
import { reportEnd } from './stop-report';
import { type StopState, snapshot } from './stop-state';

export function end(state: StopState, phase: StopPhase): void {
  state.phase = phase;
  // One upsert for the end: the phase, and the cause when no escalation has already set it.
  const cause = state.cancelled ? 'cancel' : 'graceful';
  upsertSearchAttributes(
    state.escalation
      ? [{ key: StopPhaseKey, value: phase }]
      : [
          { key: StopPhaseKey, value: phase },
          { key: StopCauseKey, value: cause },
        ],
  );
  reportEnd(state, phase);
}

export function fail(state: StopState, message: string): never {
  state.error = message;
  end(state, 'failed');
  throw ApplicationFailure.create({ message, type: STOP_FAILED, nonRetryable: true, details: [snapshot(state)] });
}
