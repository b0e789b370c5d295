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
import { type CpuReading, cpuReader } from '../process-cpu';
import { baselineWorker, stopflowWorker, withWorkers } from '../workers';

export const VOLUMES_PER_STOP = 4;
const START_CONCURRENCY = 50;

export interface ThroughputResult {
  stopsPerRound: number;
  /** Workflows in flight at once (absent from older runs, which also ran 50). */
  inFlight?: number;
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
  /**
   * CPU per workflow, ms, median over rounds: the benchmark's process (both workers, the client) and the dev
   * server's, each side measured over its own batches. Absent where /proc cannot be read, and from older runs.
   */
  cpuMsPerStop?: { stopflow: CpuPerStop; baseline: CpuPerStop };
  /** The same, round by round (absent from older runs): the server's share moves from round to round. */
  cpuMsPerStopByRound?: { stopflow: CpuPerStop[]; baseline: CpuPerStop[] };
  target: number;
}

export interface CpuPerStop {
  /** The benchmark's process: both workers and the client that starts the workflows. */
  benchProcess: number;
  server: number | null;
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
  const readCpu = cpuReader(ctx.address);
  const cpu = { stopflow: [] as CpuPerStop[], baseline: [] as CpuPerStop[] };
  /** Times one batch: its rate, and (counted rounds only) what each of its workflows cost both processes. */
  const timed = async (n: number, side: 'stopflow' | 'baseline' | null, batch: () => Promise<void>) => {
    const before = readCpu?.();
    const t0 = performance.now();
    await batch();
    const elapsed = performance.now() - t0;
    const after = readCpu?.();
    if (side && before && after) cpu[side].push(perStop(before, after, n));
    return (n / elapsed) * 1000;
  };

  const stopflowBatch = async (n: number, counted = true): Promise<number> => {
    const ids = Array.from({ length: n }, () => `tp-${randomUUID().slice(0, 13)}`);
    for (const id of ids) await sim.addInstance(id, volumes);
    const rate = await timed(n, counted ? 'stopflow' : null, async () => {
      const results = await mapLimit(ids, START_CONCURRENCY, async (instanceId) => {
        // No volumes in the request: the stop lists them, so it runs list + 4 detaches + stop, six activities.
        const handle = await startStop(ctx.client, stopflowQueue, { instanceId });
        return handle.result();
      });
      const bad = results.filter((r) => r.phase !== 'stopped');
      if (bad.length > 0) throw new Error(`throughput: ${bad.length} stops did not end stopped`);
    });
    lastStopflowId = `stop-${ids[ids.length - 1]}`;
    return rate;
  };

  const baselineBatch = async (n: number, counted = true): Promise<number> => {
    const ids = Array.from({ length: n }, () => `tb-${randomUUID().slice(0, 13)}`);
    const rate = await timed(n, counted ? 'baseline' : null, async () => {
      await mapLimit(ids, START_CONCURRENCY, async (id) => {
        const handle = await ctx.client.workflow.start<typeof minimalStop>('minimalStop', {
          taskQueue: baselineQueue,
          workflowId: id,
          args: [id, VOLUMES_PER_STOP],
        });
        return handle.result();
      });
    });
    lastBaselineId = ids[ids.length - 1] as string;
    return rate;
  };

  return withWorkers(workers, async () => {
    // Warm-up: worker caches, sticky queues, JIT. Not counted.
    await baselineBatch(10, false);
    await stopflowBatch(10, false);
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
      const costs = (c: CpuPerStop | undefined) =>
        c
          ? ` (bench process ${round(c.benchProcess, 1)} + server ${c.server === null ? '?' : round(c.server, 1)} ms CPU each)`
          : '';
      ctx.log(
        `  round ${r + 1}/${rounds}: stopflow ${round(s)} stops/s${costs(cpu.stopflow.at(-1))}, minimal ${round(b)} workflows/s${costs(cpu.baseline.at(-1))}, ratio ${round(s / b, 2)}`,
      );
    }
    return {
      stopsPerRound: stops,
      inFlight: START_CONCURRENCY,
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
      ...(cpu.stopflow.length > 0 && cpu.baseline.length > 0
        ? {
            cpuMsPerStop: { stopflow: medianCost(cpu.stopflow), baseline: medianCost(cpu.baseline) },
            cpuMsPerStopByRound: { stopflow: cpu.stopflow.map(rounded), baseline: cpu.baseline.map(rounded) },
          }
        : {}),
      target: 0.8,
    };
  });
}

function perStop(before: CpuReading, after: CpuReading, n: number): CpuPerStop {
  return {
    benchProcess: (after.benchMs - before.benchMs) / n,
    server: before.serverMs === null || after.serverMs === null ? null : (after.serverMs - before.serverMs) / n,
  };
}

function rounded(c: CpuPerStop): CpuPerStop {
  return { benchProcess: round(c.benchProcess, 1), server: c.server === null ? null : round(c.server, 1) };
}

function medianCost(costs: CpuPerStop[]): CpuPerStop {
  const servers = costs.flatMap((c) => (c.server === null ? [] : [c.server]));
  return {
    benchProcess: round(median(costs.map((c) => c.benchProcess)), 1),
    server: servers.length === costs.length ? round(median(servers), 1) : null,
  };
}
