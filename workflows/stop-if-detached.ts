/**
 * The stop's last step: stop the instance, through the activity that first asks the backend what is
 * attached and finds nothing (stopInstanceIfDetached). The only place an instance is stopped.
 */
import { patched } from '@temporalio/workflow';
import type { StopInstanceOutcome } from '../common/stop-activities';
import { activities, BOUNDED, stopping, UNLIMITED, urgent } from './activity-options';
import { INTERRUPTED, type Settled, settled, untilInterrupted } from './settled';
import { say } from './stop-report';
import { interrupted, type StopState } from './stop-state';

/**
 * CANCEL_STOPS_NOTHING — a cancel that interrupts the last step's retries ends it, before or after an
 * escalation: no stop call is sent after a cancel (docs/contract.md: the instance is not stopped), and a
 * stop call under way finishes (the activity does not abort it). Before it, the step was tried five more
 * times after a cancel, as after an escalation, and could stop the instance of a cancelled stop. Asked only
 * when a cancel meets the last step.
 */
const CANCEL_STOPS_NOTHING = 'cancel-stops-nothing';
/** The last step's outcome; `cancelled` when a cancel ended it (its `why` is then the stop's whole failure). */
export type LastStep = Settled<StopInstanceOutcome> | { ok: false; why: string; cancelled: true };

/**
 * The last step. Until an escalation or a cancel its retries are unlimited (an instance must not be
 * reported failed because its backend was briefly away); after an escalation, five more tries; after a
 * cancel, none. When the step did not succeed, the backend is asked whether the instance stopped anyway
 * (a stop sent, its answer lost): if it did, and still lists nothing attached, the stop ends `stopped`,
 * never `StopFailed` with the instance down.
 */
export async function stopIfNothingAttached(state: StopState): Promise<LastStep> {
  const target = { provider: state.request.provider, instanceId: state.request.instanceId };
  const stopOnce = (retry: typeof UNLIMITED) =>
    activities(say.stop(target.instanceId), { ...stopping, retry }).stopInstanceIfDetached(target);
  const cancelStopsNothing = () => patched(CANCEL_STOPS_NOTHING);
  // After an escalation: five tries, which a cancel ends (its stop call under way still finishes).
  const fiveTries = () =>
    untilInterrupted(
      () => state.cancelled !== null,
      () => stopOnce(BOUNDED),
      cancelStopsNothing,
    );
  let outcome = interrupted(state)
    ? await fiveTries()
    : await untilInterrupted(
        () => interrupted(state),
        () => stopOnce(UNLIMITED),
      );
  if (!outcome.ok && outcome.why === INTERRUPTED && !(state.cancelled && cancelStopsNothing())) {
    outcome = await fiveTries();
  }
  if (outcome.ok) return outcome;
  const anyway = await stoppedAnyway(state, target);
  if (anyway === 'stopped') return { ok: true, value: { stopped: true, instanceId: target.instanceId } };
  const unknown = 'whether the instance stopped anyway is unknown';
  const unconfirmed = 'the instance reads stopped, but its volumes could not be confirmed detached';
  if (outcome.why === INTERRUPTED && state.cancelled) {
    const notStopped = `instance ${target.instanceId} was not stopped`;
    const what = { running: notStopped, unknown: `${notStopped} (${unknown})`, unconfirmed }[anyway];
    return { ok: false, why: `cancelled at ${state.cancelled.at}: ${what}`, cancelled: true };
  }
  return {
    ok: false,
    why: { running: outcome.why, unknown: `${outcome.why}; ${unknown}`, unconfirmed: `${outcome.why}; ${unconfirmed}` }[
      anyway
    ],
  };
}

/**
 * After a last step that did not succeed: whether the instance stopped anyway (a stop call whose answer was
 * lost), and whether the backend then lists nothing attached to it.
 */
async function stoppedAnyway(
  state: StopState,
  target: { provider: string | undefined; instanceId: string },
): Promise<'running' | 'unknown' | 'stopped' | 'unconfirmed'> {
  const bounded = { ...urgent, retry: BOUNDED };
  const read = await settled(activities(say.readStopped(target.instanceId), bounded).readInstanceStopped(target));
  if (!read.ok || read.value === 'unknown') return 'unknown';
  if (read.value === 'running') return 'running';
  // Whatever the listing says next, the status tells the truth about the instance.
  state.instanceStopped = true;
  const listed = await settled(activities(say.list(target.instanceId), bounded).listAttachedVolumes(target));
  return listed.ok && listed.value.length === 0 ? 'stopped' : 'unconfirmed';
}
