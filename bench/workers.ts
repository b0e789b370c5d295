/** Workers the in-process scenarios run: stopflow's own and the baseline one, torn down even on error. */
import { Worker } from '@temporalio/worker';
import type { Provider } from '../activities/provider';
import { createStopflowWorker, type StopflowWorker, type StopflowWorkerOptions } from '../worker/worker';
import { createBaselineActivities, type Marks } from './baseline-activities';
import type { BenchContext } from './common';

export interface StopflowWorkerSettings {
  taskQueue: string;
  provider: Provider;
  pollIntervalMs?: number;
  holdMs?: number;
  maxPollIntervalMs?: number;
  tuning?: StopflowWorkerOptions['tuning'];
}

export function stopflowWorker(ctx: BenchContext, settings: StopflowWorkerSettings): Promise<StopflowWorker> {
  const options: StopflowWorkerOptions = {
    connection: ctx.connection,
    taskQueue: settings.taskQueue,
    providers: [settings.provider],
    workflowBundle: ctx.stopflowBundle,
  };
  if (settings.pollIntervalMs !== undefined) options.pollIntervalMs = settings.pollIntervalMs;
  if (settings.holdMs !== undefined) options.holdMs = settings.holdMs;
  if (settings.maxPollIntervalMs !== undefined) options.maxPollIntervalMs = settings.maxPollIntervalMs;
  if (settings.tuning) options.tuning = settings.tuning;
  return createStopflowWorker(options);
}

export function baselineWorker(
  ctx: BenchContext,
  taskQueue: string,
  provider: Provider,
  marks?: Marks,
): Promise<Worker> {
  return Worker.create({
    connection: ctx.connection,
    taskQueue,
    activities: createBaselineActivities(marks ? { provider, marks } : { provider }),
    workflowBundle: ctx.baselineBundle,
  });
}

/** Runs the workers while `fn` runs; shuts every one down afterwards, also when `fn` or a worker fails. */
export async function withWorkers<T>(workers: (Worker | StopflowWorker)[], fn: () => Promise<T>): Promise<T> {
  const failed: unknown[] = [];
  const running = workers.map((w) =>
    w.run().catch((err: unknown) => {
      failed.push(err);
    }),
  );
  // A worker that dies mid-scenario fails the scenario instead of hanging it.
  const died = Promise.all(running).then((): never => {
    throw failed[0] ?? new Error('bench: a worker stopped before its scenario ended');
  });
  died.catch(() => undefined); // also ends after a normal shutdown: not an unhandled rejection then
  try {
    return await Promise.race([fn(), died]);
  } finally {
    for (const w of workers) {
      if (w.getState() === 'RUNNING') w.shutdown();
    }
    await Promise.all(running);
  }
}
