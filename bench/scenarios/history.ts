/**
 * 3. History cost: events per stop against how long one of its four volumes
 * stays stuck, for stopflow and for a naive workflow that polls with an
 * activity and sleep() in a loop. Each stop ends by its deadline (stopflow:
 * maxStopDuration = the stuck time; naive: after the number of polls that
 * time allows), then force-detaches the stuck volume and stops the instance.
 *
 * Production timings: poll 5 s, hold window 60 s, longest retry pause 60 s.
 * - "real": 1 minute stuck, run for real with the production timings.
 * - "compressed": every timing divided by 60 (poll 83 ms, hold 1 s, pause
 *   1 s; stuck 1 s / 10 s / 60 s standing for 1 min / 10 min / 1 h). stopflow
 *   makes the same number of detach attempts as in production; the naive loop
 *   makes exactly the production number of polls (12 / 120 / 720). Event
 *   counts depend on those numbers, not on wall time.
 */
import { randomUUID } from 'node:crypto';
import { MemorySimStore, SimulatedProvider } from '../../activities/providers/simulated';
import type { NaiveStopInput, naivePollingStop } from '../baseline-workflows';
import { type BenchContext, historyLength, median, startStop } from '../common';
import { InstrumentedProvider } from '../instrumented-provider';
import { baselineWorker, stopflowWorker, withWorkers } from '../workers';

export const PRODUCTION = { pollIntervalMs: 5_000, holdMs: 60_000, maxPollIntervalMs: 60_000 };
export const SCALE = 60;
const COMPRESSED = {
  pollIntervalMs: Math.round(PRODUCTION.pollIntervalMs / SCALE),
  holdMs: PRODUCTION.holdMs / SCALE,
  maxPollIntervalMs: PRODUCTION.maxPollIntervalMs / SCALE,
};
const VOLUMES = 4;

export interface HistoryCase {
  /** The production stuck time this row stands for. */
  label: string;
  stuckMs: number;
  how: 'real' | 'compressed';
  /** Wall time the volume was actually stuck in this run. */
  ranForMs: number;
  stopflowEvents: number;
  /** Checks of the stuck volume, heartbeats only: none is a history event. */
  stopflowPolls: number;
  /** Attempts of the graceful detach (each re-sends the idempotent request). */
  stopflowAttempts: number;
  /** Null when not run (--quick skips the naive 1 h loop; see naiveDerived). */
  naiveEvents: number | null;
  naivePolls: number;
  /** Wall time the naive loop took to make its polls. */
  naiveRanForMs: number | null;
  /** True when naiveEvents is computed from the fit over the measured rows rather than measured. */
  naiveDerived: boolean;
}

export interface HistoryResult {
  volumesPerStop: number;
  rounds: number;
  production: typeof PRODUCTION;
  compressed: typeof COMPRESSED & { scale: number };
  cases: HistoryCase[];
  /** Naive events = fixed + perPoll x polls, fitted over the measured naive rows. */
  naiveFit: { fixed: number; perPoll: number };
  target: { maxEvents: number };
}

interface Variant {
  label: string;
  stuckMs: number;
  how: 'real' | 'compressed';
}

export async function history(ctx: BenchContext): Promise<HistoryResult> {
  const rounds = ctx.quick ? 1 : 2;
  const sim = new SimulatedProvider(new MemorySimStore());
  const provider = new InstrumentedProvider(sim);
  const queues = {
    production: ctx.queue('history-production'),
    compressed: ctx.queue('history-compressed'),
    naive: ctx.queue('history-naive'),
  };
  const workers = [
    await stopflowWorker(ctx, { taskQueue: queues.production, provider, ...PRODUCTION }),
    await stopflowWorker(ctx, { taskQueue: queues.compressed, provider, ...COMPRESSED }),
    await baselineWorker(ctx, queues.naive, provider),
  ];
  const variants: Variant[] = [
    { label: '1 min', stuckMs: 60_000, how: 'real' },
    { label: '1 min', stuckMs: 60_000, how: 'compressed' },
    { label: '10 min', stuckMs: 600_000, how: 'compressed' },
    { label: '1 h', stuckMs: 3_600_000, how: 'compressed' },
  ];
  const seed = async (prefix: string): Promise<string> => {
    const instanceId = `${prefix}-${randomUUID().slice(0, 13)}`;
    await sim.addInstance(instanceId, [
      { volumeId: 'vol-stuck', behavior: { hang: true } },
      ...Array.from({ length: VOLUMES - 1 }, (_, i) => ({ volumeId: `vol-${i}` })),
    ]);
    return instanceId;
  };
  const volumeRefs = ['vol-stuck', ...Array.from({ length: VOLUMES - 1 }, (_, i) => `vol-${i}`)];

  const runStopflow = async (v: Variant) => {
    const instanceId = await seed('hs');
    const scale = v.how === 'real' ? 1 : SCALE;
    const stuckMs = v.stuckMs / scale;
    const handle = await startStop(ctx.client, v.how === 'real' ? queues.production : queues.compressed, {
      instanceId,
      volumes: volumeRefs.map((volumeId) => ({ volumeId })),
      maxStopDuration: stuckMs / 1000,
    });
    const status = await handle.result();
    if (status.phase !== 'stopped') throw new Error(`history: stopflow ${instanceId} ended ${status.phase}`);
    const cloud = await sim.instance(instanceId);
    return {
      events: await historyLength(ctx.client, handle.workflowId),
      polls: provider.calls('getAttachmentState', instanceId, 'vol-stuck'),
      attempts: cloud?.volumes.find((vol) => vol.volumeId === 'vol-stuck')?.detachCalls ?? 0,
      ranForMs: stuckMs,
    };
  };

  const runNaive = async (
    v: Variant,
    round: number,
  ): Promise<{ events: number | null; polls: number; ranForMs: number | null }> => {
    const maxPolls = v.stuckMs / PRODUCTION.pollIntervalMs;
    // The 1 h loop takes many minutes on a loaded 2-core machine (each poll is three task hand-offs, and its
    // count is exact, not a timing): a full run measures it in the first round only, --quick not at all and
    // derives it from the fit over the shorter rows.
    if ((ctx.quick || round > 0) && maxPolls > 200) return { events: null, polls: maxPolls, ranForMs: null };
    const instanceId = await seed('hn');
    const pollIntervalMs = v.how === 'real' ? PRODUCTION.pollIntervalMs : COMPRESSED.pollIntervalMs;
    const input: NaiveStopInput = {
      instanceId,
      volumeIds: volumeRefs,
      pollIntervalMs,
      maxPolls,
    };
    const started = Date.now();
    const handle = await ctx.client.workflow.start<typeof naivePollingStop>('naivePollingStop', {
      taskQueue: queues.naive,
      workflowId: `naive-${instanceId}`,
      args: [input],
    });
    const result = await handle.result();
    return {
      events: await historyLength(ctx.client, handle.workflowId),
      polls: result.polls[0] ?? 0,
      ranForMs: Date.now() - started,
    };
  };

  return withWorkers(workers, async () => {
    const perRound: HistoryCase[][] = [];
    for (let r = 0; r < rounds; r++) {
      // Every case at once: the round lasts as long as the slowest (the naive 1 h loop or the real minute).
      const rows = await Promise.all(
        variants.map(async (v): Promise<HistoryCase> => {
          const [s, n] = await Promise.all([runStopflow(v), runNaive(v, r)]);
          return {
            label: v.label,
            stuckMs: v.stuckMs,
            how: v.how,
            ranForMs: s.ranForMs,
            stopflowEvents: s.events,
            stopflowPolls: s.polls,
            stopflowAttempts: s.attempts,
            naiveEvents: n.events,
            naivePolls: n.polls,
            naiveRanForMs: n.ranForMs,
            naiveDerived: false,
          };
        }),
      );
      for (const row of rows) {
        ctx.log(
          `  round ${r + 1}/${rounds} ${row.label} (${row.how}): stopflow ${row.stopflowEvents} events (${row.stopflowPolls} polls, ${row.stopflowAttempts} attempts); naive ${row.naiveEvents ?? 'not run'} events (${row.naivePolls} polls)`,
        );
      }
      perRound.push(rows);
    }
    const cases = variants.map((_, i): HistoryCase => {
      const rows = perRound.map((rowsOfRound) => rowsOfRound[i] as HistoryCase);
      const first = rows[0] as HistoryCase;
      const naive = rows.map((c) => c.naiveEvents).filter((e): e is number => e !== null);
      return {
        ...first,
        stopflowEvents: median(rows.map((c) => c.stopflowEvents)),
        stopflowPolls: median(rows.map((c) => c.stopflowPolls)),
        stopflowAttempts: median(rows.map((c) => c.stopflowAttempts)),
        naiveEvents: naive.length > 0 ? median(naive) : null,
        naivePolls: median(rows.map((c) => c.naivePolls)),
      };
    });
    const fit = fitLine(
      cases.flatMap((c) => (c.naiveEvents === null ? [] : [[c.naivePolls, c.naiveEvents] as [number, number]])),
    );
    for (const c of cases) {
      if (c.naiveEvents === null) {
        c.naiveEvents = Math.round(fit.fixed + fit.perPoll * c.naivePolls);
        c.naiveDerived = true;
      }
    }
    return {
      volumesPerStop: VOLUMES,
      rounds,
      production: PRODUCTION,
      compressed: { ...COMPRESSED, scale: SCALE },
      cases,
      naiveFit: { fixed: Math.round(fit.fixed * 10) / 10, perPoll: Math.round(fit.perPoll * 100) / 100 },
      target: { maxEvents: 10 + 10 * VOLUMES },
    };
  });
}

/** Least-squares line through (polls, events) points. */
function fitLine(points: Array<[number, number]>): { fixed: number; perPoll: number } {
  const n = points.length;
  if (n < 2) return { fixed: Number.NaN, perPoll: Number.NaN };
  const mx = points.reduce((a, [x]) => a + x, 0) / n;
  const my = points.reduce((a, [, y]) => a + y, 0) / n;
  const sxx = points.reduce((a, [x]) => a + (x - mx) ** 2, 0);
  const sxy = points.reduce((a, [x, y]) => a + (x - mx) * (y - my), 0);
  const perPoll = sxx === 0 ? Number.NaN : sxy / sxx;
  return { fixed: my - perPoll * mx, perPoll };
}
