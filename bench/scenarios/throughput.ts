/**
 * 1. Throughput: stops per second, 4 volumes each on the simulated cloud with
 * no latency, against the minimal workflow running the same six no-op
 * activities (list, one per volume, stop). Rounds alternate which side goes
 * first; the ratio is taken per round (both sides under the same load) and
 * its median reported.
 */
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { MemorySimStore, SimulatedProvider } from '../../activities/providers/simulated';
import type { minimalStop } from '../baseline-workflows';
import { type BenchContext, historyLength, mapLimit, median, round, startStop } from '../common';
import { baselineWorker, stopflowWorker, withWorkers } from '../workers';

export const VOLUMES_PER_STOP = 4;
const START_CONCURRENCY = 50;

export interface ThroughputResult {
  stopsPerRound: number;
  volumesPerStop: number;
  rounds: number;
  stopflowStopsPerSec: number[];
  baselineStopsPerSec: number[];
  stopflowMedian: number;
  baselineMedian: number;
  /** Median over rounds of stopflow / baseline in that round. */
  ratio: number;
  ratios: number[];
  eventsPerStop: { stopflow: number; baseline: number };
  target: number;
}

export async function throughput(ctx: BenchContext): Promise<ThroughputResult> {
  const stops = ctx.quick ? 60 : 300;
  const rounds = ctx.quick ? 3 : 5;
  const sim = new SimulatedProvider(new MemorySimStore());
  const stopflowQueue = ctx.queue('throughput-stopflow');
  const baselineQueue = ctx.queue('throughput-baseline');
  const workers = [
    await stopflowWorker(ctx, { taskQueue: stopflowQueue, provider: sim }),
    await baselineWorker(ctx, baselineQueue, sim),
  ];
  const volumes = Array.from({ length: VOLUMES_PER_STOP }, (_, i) => ({ volumeId: `vol-${i}` }));
  let lastStopflowId = '';
  let lastBaselineId = '';

  const stopflowBatch = async (n: number): Promise<number> => {
    const ids = Array.from({ length: n }, () => `tp-${randomUUID().slice(0, 13)}`);
    for (const id of ids) await sim.addInstance(id, volumes);
    const t0 = performance.now();
    const results = await mapLimit(ids, START_CONCURRENCY, async (instanceId) => {
      // No volumes in the request: the stop lists them, so it runs list + 4 detaches + stop, six activities.
      const handle = await startStop(ctx.client, stopflowQueue, { instanceId });
      return handle.result();
    });
    const elapsed = performance.now() - t0;
    const bad = results.filter((r) => r.phase !== 'stopped');
    if (bad.length > 0) throw new Error(`throughput: ${bad.length} stops did not end stopped`);
    lastStopflowId = `stop-${ids[ids.length - 1]}`;
    return (n / elapsed) * 1000;
  };

  const baselineBatch = async (n: number): Promise<number> => {
    const ids = Array.from({ length: n }, () => `tb-${randomUUID().slice(0, 13)}`);
    const t0 = performance.now();
    await mapLimit(ids, START_CONCURRENCY, async (id) => {
      const handle = await ctx.client.workflow.start<typeof minimalStop>('minimalStop', {
        taskQueue: baselineQueue,
        workflowId: id,
        args: [id, VOLUMES_PER_STOP],
      });
      return handle.result();
    });
    const elapsed = performance.now() - t0;
    lastBaselineId = ids[ids.length - 1] as string;
    return (n / elapsed) * 1000;
  };

  return withWorkers(workers, async () => {
    // Warm-up: worker caches, sticky queues, JIT. Not counted.
    await baselineBatch(10);
    await stopflowBatch(10);
    const stopflowRates: number[] = [];
    const baselineRates: number[] = [];
    const ratios: number[] = [];
    for (let r = 0; r < rounds; r++) {
      let s: number;
      let b: number;
      if (r % 2 === 0) {
        b = await baselineBatch(stops);
        s = await stopflowBatch(stops);
      } else {
        s = await stopflowBatch(stops);
        b = await baselineBatch(stops);
      }
      stopflowRates.push(s);
      baselineRates.push(b);
      ratios.push(s / b);
      ctx.log(
        `  round ${r + 1}/${rounds}: stopflow ${round(s)} stops/s, minimal ${round(b)} workflows/s, ratio ${round(s / b, 2)}`,
      );
    }
    return {
      stopsPerRound: stops,
      volumesPerStop: VOLUMES_PER_STOP,
      rounds,
      stopflowStopsPerSec: stopflowRates.map((v) => round(v, 2)),
      baselineStopsPerSec: baselineRates.map((v) => round(v, 2)),
      stopflowMedian: round(median(stopflowRates), 2),
      baselineMedian: round(median(baselineRates), 2),
      ratio: round(median(ratios), 3),
      ratios: ratios.map((v) => round(v, 3)),
      eventsPerStop: {
        stopflow: await historyLength(ctx.client, lastStopflowId),
        baseline: await historyLength(ctx.client, lastBaselineId),
      },
      target: 0.8,
    };
  });
}
