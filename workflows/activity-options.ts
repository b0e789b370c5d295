/**
 * How the stop's activities are called: timeouts, retries, cancellation, priority, queue. Each
 * choice is a promise of the contract (docs/contract.md), so each says why.
 */
import { ActivityCancellationType, type ActivityOptions, proxyActivities } from '@temporalio/workflow';
import type { StopActivities } from '../common/stop-activities';

const NON_RETRYABLE = ['PermanentProviderError', 'UnknownProvider', 'ForceUnsupported'];
// Until escalation, transient errors are retried without limit: an instance must never be reported
// stopped, or failed, because its backend was briefly unreachable. After it, a bounded number.
export const UNLIMITED = {
  initialInterval: '1s',
  backoffCoefficient: 2,
  maximumInterval: '1m',
  nonRetryableErrorTypes: NON_RETRYABLE,
};
export const BOUNDED = { ...UNLIMITED, maximumInterval: '30s', maximumAttempts: 5 };
// Heartbeats come every second, so a lost worker is noticed in 10 s.
export const urgent: ActivityOptions = {
  startToCloseTimeout: '2m',
  heartbeatTimeout: '10s',
  retry: UNLIMITED,
  cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
};
export const stopping: ActivityOptions = { ...urgent, startToCloseTimeout: '15m' };
// Where the server has task priority on, a force (what an abort asks for) goes ahead of everything else queued.
export const force: ActivityOptions = {
  ...urgent,
  startToCloseTimeout: '5m',
  retry: BOUNDED,
  priority: { priorityKey: 1 },
};
// Past its hold window a wait asks to be retried later (StillDetaching). It heartbeats rarely (its worker
// throttles to 20 s): thousands of stuck volumes must not flood the server. A lost worker's waits move to
// another within 30 s.
export const wait: ActivityOptions = { ...urgent, startToCloseTimeout: '10m', heartbeatTimeout: '30s' };
/**
 * A wait as version 8 schedules it (`watched-waits`): its worker's watch list answers for it by task token
 * (activities/detach-watch.ts) and heartbeats it every 80 s (two thirds of 2 min; version 9: watchedWaitTimed). The
 * heartbeat timeout is how soon a lost worker's waits move to another; an attempt lasts up to an hour (the list hands
 * it back a minute to a quarter of an hour before). A cancel (an escalation, the stop's cancel) settles it at once (TRY_CANCEL): the
 * list hears of it at its next heartbeat, up to 80 s later, and the stop's end must not wait that long for a
 * read-only wait (it waited up to 30 s before).
 */
export const watchedWait: ActivityOptions = {
  startToCloseTimeout: '1h',
  heartbeatTimeout: '2m',
  retry: UNLIMITED,
  cancellationType: ActivityCancellationType.TRY_CANCEL,
};

/**
 * A watched wait as version 9 schedules it (`worker-timed-watch`): with the heartbeat timeout the requesting worker's
 * operator chose (15 min by default since 0.2.8, common/stop-activities.ts): its list beats a little before it.
 */
export function watchedWaitTimed(heartbeatTimeoutMs: number): ActivityOptions {
  return { ...watchedWait, heartbeatTimeout: heartbeatTimeoutMs };
}

/** Activities carry a per-call summary, so the Temporal UI reads as an audit log. */
export function activities(summary: string, options: ActivityOptions): StopActivities {
  return proxyActivities<StopActivities>({ ...options, summary });
}
