/**
 * Baseline workflows the benchmark measures stopflow against, in the same run.
 * Bundled on their own (bench/run.ts), never part of workflows/index.ts.
 */
import { condition, defineSignal, proxyActivities, setHandler, sleep } from '@temporalio/workflow';
import type { BaselineActivities } from './baseline-activities';

const acts = proxyActivities<BaselineActivities>({
  startToCloseTimeout: '1m',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1m' },
});

/**
 * Temporal's floor for a stop's shape: one no-op activity where stopflow lists
 * the volumes, one per volume in parallel, one where it stops the instance.
 */
export async function minimalStop(instanceId: string, volumes: number): Promise<void> {
  await acts.noop(instanceId);
  await Promise.all(Array.from({ length: volumes }, () => acts.noop(instanceId)));
  await acts.noop(instanceId);
}

export interface NaiveStopInput {
  instanceId: string;
  volumeIds: string[];
  /** Pause between checks of a volume that is not yet detached. */
  pollIntervalMs: number;
  /** Checks of one volume before it is force-detached: the naive deadline, counted in polls. */
  maxPolls: number;
}

/**
 * The obvious way to write a stop: request each detach, then poll its state
 * with an activity and `sleep()` between polls, every poll in the history.
 */
export async function naivePollingStop(input: NaiveStopInput): Promise<{ polls: number[] }> {
  const { instanceId } = input;
  const polls = await Promise.all(
    input.volumeIds.map(async (volumeId) => {
      await acts.requestDetach({ instanceId, volumeId });
      for (let n = 1; ; n++) {
        if ((await acts.attachmentState({ instanceId, volumeId })) === 'detached') return n;
        if (n >= input.maxPolls) {
          await acts.forceDetach({ instanceId, volumeId });
          return n;
        }
        await sleep(input.pollIntervalMs);
      }
    }),
  );
  await acts.stopInstance(instanceId);
  return { polls };
}

/**
 * Temporal's floor for a stop waiting on a stuck volume: `volumes - 1` no-op
 * activities, and one that keeps failing with a server-side retry delay.
 */
export async function waitingFloor(id: string, volumes: number): Promise<void> {
  await Promise.all([...Array.from({ length: volumes - 1 }, () => acts.noop(id)), acts.hang(id)]);
}

const abortSignal = defineSignal<[unknown?]>('abort');

/**
 * Temporal's floor for reacting to a signal: marks `<id>:ready`, waits for
 * `abort`, then runs the `mark` activity for `<id>` at once.
 */
export async function signalFloor(id: string): Promise<void> {
  let aborted = false;
  setHandler(abortSignal, () => {
    aborted = true;
  });
  await acts.mark(`${id}:ready`);
  await condition(() => aborted);
  await acts.mark(id);
}

/** Temporal's floor for reacting to a timer: sleeps `ms`, then runs the `mark` activity for `id`. */
export async function timerFloor(id: string, ms: number): Promise<void> {
  await sleep(ms);
  await acts.mark(id);
}
