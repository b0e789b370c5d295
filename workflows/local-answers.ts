/**
 * How a stop takes a local activity's failure (askWorker, findVolumeHolders, completionEventsConfigured):
 * as "the worker could not answer", never as the stop's own failure.
 *
 * A local activity that timed out reaches the workflow as an ActivityFailure, but one that threw (or that
 * the worker has not registered) reaches it as the bare ApplicationFailure it threw. Before the patch
 * `local-answer-failures` only the first was caught, so a throwing askWorker failed the whole stop with
 * that error, before any detach and outside the contract's failure types. The patch is asked only on that
 * path: a stop whose local activities answer carries no marker for it.
 */
import { ActivityFailure, ApplicationFailure, patched } from '@temporalio/workflow';

const LOCAL_ANSWER_FAILURES = 'local-answer-failures';

/** Whether `err` is the worker failing to answer (caught: the stop goes on), rather than a bug to rethrow. */
export function workerCouldNotAnswer(err: unknown): err is ActivityFailure | ApplicationFailure {
  if (err instanceof ActivityFailure) return true;
  return err instanceof ApplicationFailure && patched(LOCAL_ANSWER_FAILURES);
}
