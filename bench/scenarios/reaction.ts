/**
 * 2. Reaction: how soon force-detach starts after an escalation.
 * - abort: from just before the client sends the `abort` signal to the moment
 *   the force-detach activity calls the backend (the instrumented provider's
 *   Date.now(), inside the activity). Samples run one at a time, each while
 *   the stop's graceful detach is polling a stuck volume.
 * - deadline: from runStartTime + maxStopDuration (the instant the deadline
 *   is due) to the same moment. Ten stops run side by side, started one
 *   after another, so deadlines are spread rather than simultaneous.
 * Baselines, interleaved with the stopflow samples: a minimal workflow that
 * waits for a signal (or sleeps) and then runs one activity, timed the same way.
 * Worker settings are the production defaults (poll 5 s, hold 60 s).
 */
import { randomUUID } from 'node:crypto';
import { MemorySimStore, SimulatedProvider } from '../../activities/providers/simulated';
import { ABORT_SIGNAL } from '../../common/names';
import { Marks } from '../baseline-activities';
import type { signalFloor, timerFloor } from '../baseline-workflows';
import { type BenchContext, mapLimit, median, percentile, round, startStop } from '../common';
import { InstrumentedProvider } from '../instrumented-provider';
import { onTunedServer } from '../tuned-server';
import { baselineWorker, stopflowWorker, withWorkers } from '../workers';

const DEADLINE_MS = 2_000;
const DEADLINE_LANES = 10;
/** Production default of the detach wait's poll (each poll is a heartbeat, which carries cancellation). */
const POLL_INTERVAL_MS = 5_000;

export interface LatencySummary {
  samples: number;
  p50: number;
  p99: number;
  max: number;
}

export interface LatencyFigure {
  perRound: LatencySummary[];
  /** Medians over rounds of each round's p50 and p99. */
  p50: number;
  p99: number;
  pooled: LatencySummary;
}

export interface ReactionResult {
  rounds: number;
  abort: { stopflow: LatencyFigure; floor: LatencyFigure };
  /** Abort to the stop's result: includes waiting for the cancelled graceful detach to acknowledge. */
  abortToEnd: LatencyFigure;
  deadline: { stopflow: LatencyFigure; floor: LatencyFigure; maxStopDurationMs: number; lanes: number };
  pollIntervalMs: number;
  /** Median of the signal RPC's own round trip (client send to server ack), for context. */
  signalRpcMs: number;
  target: { p99Ms: number };
}

export function summarize(values: number[]): LatencySummary {
  return {
    samples: values.length,
    p50: round(percentile(values, 50)),
    p99: round(percentile(values, 99)),
    max: round(Math.max(...values)),
  };
}

function figure(rounds: number[][]): LatencyFigure {
  const perRound = rounds.map(summarize);
  return {
    perRound,
    p50: round(median(perRound.map((s) => s.p50))),
    p99: round(median(perRound.map((s) => s.p99))),
    pooled: summarize(rounds.flat()),
  };
}

/**
 * Temporal's own signal → activity floor, one sample: `signalFloor` on a baseline worker
 * (bench/workers.ts baselineWorker with these marks) waits for `abort`, then runs one
 * activity; timed from just before the signal is sent to that activity's Date.now().
 */
export async function signalFloorOnce(ctx: BenchContext, floorQueue: string, marks: Marks): Promise<number> {
  return (await signalFloorTimed(ctx, floorQueue, (id) => marks.when(id))).ms;
}

/**
 * One floor sample, with what a history read needs to split it: the workflow id and when the signal was sent.
 * `markedAt` tells when the floor's worker ran `mark` for an id (its Marks, in this process or another).
 */
export async function signalFloorTimed(
  ctx: BenchContext,
  floorQueue: string,
  markedAt: (id: string) => Promise<number>,
): Promise<{ ms: number; workflowId: string; sentAt: number; markedAt: number }> {
  const id = `fa-${randomUUID().slice(0, 13)}`;
  const handle = await ctx.client.workflow.start<typeof signalFloor>('signalFloor', {
    taskQueue: floorQueue,
    workflowId: id,
    args: [id],
  });
  await markedAt(`${id}:ready`);
  const sentAt = Date.now();
  await handle.signal(ABORT_SIGNAL, { reason: 'bench' });
  const at = await markedAt(id);
  await handle.result();
  return { ms: at - sentAt, workflowId: id, sentAt, markedAt: at };
}

export async function reaction(ctx: BenchContext, options: { rounds?: number } = {}): Promise<ReactionResult> {
  const rounds = options.rounds ?? (ctx.quick ? 1 : 3);
  const abortSamples = ctx.quick ? 20 : 100;
  const deadlineSamples = ctx.quick ? 20 : 60;
  const sim = new SimulatedProvider(new MemorySimStore());
  const provider = new InstrumentedProvider(sim);
  const marks = new Marks();
  const taskQueue = ctx.queue('reaction');
  const floorQueue = ctx.queue('reaction-floor');
  const workers = [
    await stopflowWorker(ctx, { taskQueue, provider, pollIntervalMs: POLL_INTERVAL_MS }),
    await baselineWorker(ctx, floorQueue, sim, marks),
  ];
  const stuck = [{ volumeId: 'vol-stuck', behavior: { hang: true } }];
  const signalRpc: number[] = [];

  /**
   * Resolves once force-detach has started, with the reaction time; `ended` is the time from the
   * abort to the stop's result (it also waits for the cancelled graceful detach to acknowledge,
   * which happens at that activity's next heartbeat, i.e. its next poll).
   */
  const abortOnce = async (): Promise<{ ms: number; ended: Promise<number> }> => {
    const instanceId = `ra-${randomUUID().slice(0, 13)}`;
    await sim.addInstance(instanceId, stuck);
    const handle = await startStop(ctx.client, taskQueue, { instanceId, volumes: [{ volumeId: 'vol-stuck' }] });
    await provider.firstCall('detachVolume', instanceId, 'vol-stuck');
    const forced = provider.firstCall('forceDetachVolume', instanceId, 'vol-stuck');
    const sentAt = Date.now();
    await handle.signal(ABORT_SIGNAL, { reason: 'bench', requestedBy: 'bench' });
    signalRpc.push(Date.now() - sentAt);
    const forcedAt = await forced;
    const ended = handle.result().then((status) => {
      if (status.escalation?.cause !== 'abort') throw new Error(`reaction: ${instanceId} did not escalate by abort`);
      return Date.now() - sentAt;
    });
    ended.catch(() => undefined); // awaited with the round
    return { ms: forcedAt - sentAt, ended };
  };

  const abortFloorOnce = () => signalFloorOnce(ctx, floorQueue, marks);

  const deadlineOnce = async (): Promise<number> => {
    const instanceId = `rd-${randomUUID().slice(0, 13)}`;
    await sim.addInstance(instanceId, stuck);
    const handle = await startStop(ctx.client, taskQueue, {
      instanceId,
      volumes: [{ volumeId: 'vol-stuck' }],
      maxStopDuration: DEADLINE_MS / 1000,
    });
    const forced = provider.firstCall('forceDetachVolume', instanceId, 'vol-stuck');
    const status = await handle.result();
    if (status.escalation?.cause !== 'timeout') throw new Error(`reaction: ${instanceId} did not escalate by timeout`);
    return (await forced) - (Date.parse(status.startedAt) + DEADLINE_MS);
  };

  const deadlineFloorOnce = async (): Promise<number> => {
    const id = `fd-${randomUUID().slice(0, 13)}`;
    const handle = await ctx.client.workflow.start<typeof timerFloor>('timerFloor', {
      taskQueue: floorQueue,
      workflowId: id,
      args: [id, DEADLINE_MS],
    });
    const at = await marks.when(id);
    await handle.result();
    const started = (await handle.describe()).startTime.getTime();
    return at - (started + DEADLINE_MS);
  };

  return withWorkers(workers, async () => {
    await (await abortOnce()).ended; // warm-up
    await abortFloorOnce();
    const abortRounds: number[][] = [];
    const abortFloorRounds: number[][] = [];
    const abortEndRounds: number[][] = [];
    const deadlineRounds: number[][] = [];
    const deadlineFloorRounds: number[][] = [];
    for (let r = 0; r < rounds; r++) {
      const a: number[] = [];
      const af: number[] = [];
      const ends: Promise<number>[] = [];
      for (let i = 0; i < abortSamples; i++) {
        const sample = await abortOnce();
        a.push(sample.ms);
        ends.push(sample.ended);
        af.push(await abortFloorOnce());
      }
      abortEndRounds.push(await Promise.all(ends));
      // Stopflow and floor samples interleaved in the same lanes, so both see the same load.
      const kinds = Array.from({ length: deadlineSamples * 2 }, (_, i) => i % 2 === 0);
      const mixed = await mapLimit(kinds, DEADLINE_LANES, async (isStopflow) => ({
        isStopflow,
        ms: isStopflow ? await deadlineOnce() : await deadlineFloorOnce(),
      }));
      const d = mixed.filter((m) => m.isStopflow).map((m) => m.ms);
      const df = mixed.filter((m) => !m.isStopflow).map((m) => m.ms);
      abortRounds.push(a);
      abortFloorRounds.push(af);
      deadlineRounds.push(d);
      deadlineFloorRounds.push(df);
      ctx.log(
        `  round ${r + 1}/${rounds}: abort->force p50 ${round(percentile(a, 50))} / p99 ${round(percentile(a, 99))} ms (floor ${round(percentile(af, 50))} / ${round(percentile(af, 99))}); deadline->force p50 ${round(percentile(d, 50))} / p99 ${round(percentile(d, 99))} ms (floor ${round(percentile(df, 50))} / ${round(percentile(df, 99))})`,
      );
    }
    return {
      rounds,
      abort: { stopflow: figure(abortRounds), floor: figure(abortFloorRounds) },
      abortToEnd: figure(abortEndRounds),
      pollIntervalMs: POLL_INTERVAL_MS,
      deadline: {
        stopflow: figure(deadlineRounds),
        floor: figure(deadlineFloorRounds),
        maxStopDurationMs: DEADLINE_MS,
        lanes: DEADLINE_LANES,
      },
      signalRpcMs: round(median(signalRpc)),
      target: { p99Ms: 100 },
    };
  });
}

/**
 * The same measurement, one round, on a second dev server whose history queue
 * readers may poll 1,000 times a second instead of 20 (bench/tuned-server.ts).
 */
export function reactionTuned(
  ctx: BenchContext,
): Promise<ReactionResult & { dynamicConfig: Record<string, number | boolean> }> {
  return onTunedServer(ctx, (tuned) => reaction(tuned, { rounds: 1 }));
}
