/**
 * How a stop takes a local activity's failure (askWorker, findVolumeHolders, completionEventsConfigured):
 * as "the worker could not answer", never as the stop's own failure.
 *
 * The SDK hands a local activity's failure to the workflow in three shapes. Live, a timeout comes as an
 * ActivityFailure around a TimeoutFailure; replayed, the marker gives back the TimeoutFailure alone. One that
 * threw (or that the worker has not registered) comes as the bare ApplicationFailure it threw, live and in
 * replay. Timeouts were always taken as "could not answer" live, so both of their shapes are, with no patch:
 * until this was known, a stop whose askWorker had timed out failed its workflow task on replay (after an
 * eviction from the cache, say), and its history had not changed. The thrown kind failed the whole stop, before
 * any detach and outside the contract's failure types; the patch `local-answer-failures` changes that, and is
 * asked only on that path, so a stop whose local activities answer carries no marker of it. An activity that
 * throws some other TemporalFailure of its own (a ServerFailure, say) still fails the stop: none of stopflow's do.
 */
import { ActivityFailure, ApplicationFailure, patched, TimeoutFailure } from '@temporalio/workflow';

const LOCAL_ANSWER_FAILURES = 'local-answer-failures';

/** Whether `err` is the worker failing to answer (caught: the stop goes on), rather than a bug to rethrow. */
export function workerCouldNotAnswer(err: unknown): err is ActivityFailure | TimeoutFailure | ApplicationFailure {
  if (err instanceof ActivityFailure || err instanceof TimeoutFailure) return true;
  return err instanceof ApplicationFailure && patched(LOCAL_ANSWER_FAILURES);
}
