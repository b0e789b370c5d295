/** What the stop refuses, as the typed, final failures its callers see (docs/contract.md "Failure types"). */
import { ApplicationFailure } from '@temporalio/workflow';
import { INVALID_STOP_REQUEST } from '../common/names';
import { type NormalizedStopRequest, parseStopRequestTolerant, StopRequestError } from '../common/request';

/** A rejected update: final, typed, and never written to history. */
export function invalidUpdate(message: string): ApplicationFailure {
  return ApplicationFailure.create({ message, type: 'InvalidUpdate', nonRetryable: true });
}

/** The request, checked by the contract's schema; a broken rule fails the stop with `InvalidStopRequest`. */
export function validate(input: unknown): NormalizedStopRequest {
  try {
    return parseStopRequestTolerant(input);
  } catch (err) {
    if (!(err instanceof StopRequestError)) throw err;
    throw ApplicationFailure.create({
      message: err.message,
      type: INVALID_STOP_REQUEST,
      nonRetryable: true,
      details: [err.issues],
    });
  }
}
