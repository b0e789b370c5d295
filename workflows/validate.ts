/** What the stop refuses, as the typed, final failures its callers see (docs/contract.md "Failure types"). */
import { ApplicationFailure } from '@temporalio/workflow';
import * as z from 'zod/mini';
import { INVALID_STOP_REQUEST } from '../common/names';
import { type NormalizedStopRequest, parseStopRequestTolerant, StopRequestError } from '../common/request';

// Every stop evaluates its own copy of zod and builds the request's schema to check one request. zod would compile
// a fast path for it (a `new Function` per object schema, and one first to learn whether it may), which costs more
// than it saves on a single parse; the client and the CLI, which keep their schema, still compile theirs.
z.config({ jitless: true });

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
