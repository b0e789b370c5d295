/**
 * The promise, checked on random schedules (fast-check): random instances
 * (0-8 volumes: healthy, slow, flaky, stuck, force unsupported, force failing),
 * random requests (volumes named, some named, or left to the listing), and
 * random interleavings of abort, setMaxStopDuration (shorter, longer, off),
 * workflow cancel, a volume attached mid-stop and a worker restart, all on the
 * real dev server. After each schedule an oracle checks the contract's
 * invariant (docs/contract.md "The invariant"):
 *
 * - the stop ended within its bound after the last abort;
 * - `stopped` => the backend had nothing attached when the instance stopped, and the instance is stopped;
 * - `StopFailed` => the instance was not stopped, and the status says which volume and why;
 * - forced volumes are exactly the ones the status reports force-detached, only after an
 *   escalation, and each forced once;
 * - the history holds the audit entries (a summary per force, the phase search attribute).
 *
 * STOPFLOW_MODEL_RUNS (default 200) and STOPFLOW_MODEL_SEED replay a run: the seed is
 * printed with every result, and a failing schedule is printed whole.
 */
import { randomUUID } from 'node:crypto';
import type { Client } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import fc from 'fast-check';
import { afterAll, beforeAll, expect, inject, test } from 'vitest';
import {
  MemorySimStore,
  type SeedVolume,
  type SimInstance,
  SimulatedProvider,
  type SimVolumeBehavior,
} from '../activities/providers/simulated';
import { StopFailedError, StopflowClient } from '../client/stopflow-client';
import { StopPhaseKey, workflowIdFor } from '../common/names';
import type { StopRequest } from '../common/request';
import type { StopStatus } from '../common/status';
import { createStopflowWorker, type StopflowWorker } from '../worker/worker';
import { connectClient, installQuietRuntime } from './helpers';

const RUNS = Number(process.env.STOPFLOW_MODEL_RUNS ?? 200);
const SEED = Number(process.env.STOPFLOW_MODEL_SEED ?? Date.now() % 2 ** 31);
/** Schedules run at once on one worker: the worker restarts hit every one of them. */
const CONCURRENCY = 25;
/** Time from the last abort to the stop's end, at most: force's 5 bounded attempts (1+2+4+8 s) and slack. */
const END_BOUND_MS = 60_000;

type VolumeKind = 'healthy' | 'slow' | 'flaky' | 'stuck' | 'stuck-no-force' | 'stuck-force-fails';
type Event =
  | { at: number; kind: 'abort' }
  | { at: number; kind: 'set-max-stop-duration'; value: string }
  | { at: number; kind: 'cancel' }
  | { at: number; kind: 'attach'; stuck: boolean };

interface Schedule {
  volumes: VolumeKind[];
  naming: 'all' | 'some' | 'listing';
  maxStopDuration: string;
  forceGrace: string;
  events: Event[];
}

const BEHAVIOR: Record<VolumeKind, Partial<SimVolumeBehavior>> = {
  healthy: {},
  slow: { detachDelayMs: 700 },
  flaky: { failFirst: 2 },
  stuck: { hang: true },
  'stuck-no-force': { hang: true, force: 'unsupported' },
  'stuck-force-fails': { hang: true, force: 'fails' },
};

const at = fc.integer({ min: 0, max: 3_000 });
const event: fc.Arbitrary<Event> = fc.oneof(
  at.map((t) => ({ at: t, kind: 'abort' as const })),
  fc
    .tuple(at, fc.constantFrom('1s', '2s', '1h', 'off'))
    .map(([t, value]) => ({ at: t, kind: 'set-max-stop-duration' as const, value })),
  at.map((t) => ({ at: t, kind: 'cancel' as const })),
  fc.tuple(at, fc.boolean()).map(([t, stuck]) => ({ at: t, kind: 'attach' as const, stuck })),
);
const schedule: fc.Arbitrary<Schedule> = fc.record({
  volumes: fc.array(
    fc.constantFrom<VolumeKind>('healthy', 'slow', 'flaky', 'stuck', 'stuck-no-force', 'stuck-force-fails'),
    {
      maxLength: 8,
    },
  ),
  naming: fc.constantFrom('all', 'some', 'listing'),
  maxStopDuration: fc.constantFrom('off', 'off', '2s', '4s'),
  forceGrace: fc.constantFrom('off', 'off', '1s'),
  events: fc.array(event, { maxLength: 3 }),
});

interface Outcome {
  schedule: Schedule;
  instanceId: string;
  phase: 'stopped' | 'failed';
  status: StopStatus | undefined;
  error?: string;
  cloud: SimInstance;
  endedAfterLastAbortMs: number;
  forceSummaries: number;
  phaseAttribute: string | undefined;
}

let sim: SimulatedProvider;
let stopflow: StopflowClient;
let worker: StopflowWorker;
let running: Promise<void>;
let connection: NativeConnection;
const taskQueue = `model-${randomUUID()}`;
let client: Client;
let restarts = 0;

async function startWorker(): Promise<void> {
  worker = await createStopflowWorker({
    connection,
    taskQueue,
    providers: [sim],
    pollIntervalMs: 200,
    holdMs: 2_000,
    maxPollIntervalMs: 1_000,
    workflowBundle: { codePath: inject('workflowBundlePath') },
    tuning: { shutdownGraceTime: '1s' },
  });
  running = worker.run();
}

/** A worker restart in the middle of everything: running activities are cancelled and retried by the next. */
async function restartWorker(): Promise<void> {
  restarts++;
  worker.shutdown();
  await running;
  await startWorker();
}

beforeAll(async () => {
  installQuietRuntime();
  client = await connectClient();
  sim = new SimulatedProvider(new MemorySimStore());
  stopflow = new StopflowClient({ client, taskQueue });
  connection = await NativeConnection.connect({ address: inject('temporalAddress') });
  await startWorker();
});
afterAll(async () => {
  worker?.shutdown();
  await running;
  await connection?.close();
  await client?.connection.close();
});

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function runSchedule(s: Schedule, index: number): Promise<Outcome> {
  const instanceId = `model-${index}-${randomUUID().slice(0, 6)}`;
  const seeds: SeedVolume[] = s.volumes.map((kind, i) => ({ volumeId: `vol-${i}-${kind}`, behavior: BEHAVIOR[kind] }));
  await sim.addInstance(instanceId, seeds);
  const request: StopRequest = { instanceId, maxStopDuration: s.maxStopDuration, forceGrace: s.forceGrace };
  const named = s.naming === 'all' ? seeds : s.naming === 'some' ? seeds.slice(0, Math.ceil(seeds.length / 2)) : [];
  if (s.naming !== 'listing' && named.length > 0) request.volumes = named.map((v) => ({ volumeId: v.volumeId }));
  const started = Date.now();
  await stopflow.stop(request);
  let ended = false;
  const result = stopflow.result(instanceId).then(
    (status) => ({ phase: 'stopped' as const, status }),
    (err: unknown) => {
      if (!(err instanceof StopFailedError)) throw err;
      return { phase: 'failed' as const, status: err.status, error: err.message };
    },
  );
  void result.finally(() => {
    ended = true;
  });
  const handle = client.workflow.getHandle(workflowIdFor(instanceId));
  // Every schedule ends with an abort, so every stop must end: the oracle times it from there.
  const events = [...s.events, { at: 3_500, kind: 'abort' as const }].sort((a, b) => a.at - b.at);
  let lastAbortAt = started;
  let attached = 0;
  for (const e of events) {
    await pause(Math.max(0, started + e.at - Date.now()));
    if (ended) break;
    const ignoreEnded = (err: unknown) => {
      if (!ended && !/already ended|already completed|not found/i.test(String(err))) throw err;
    };
    switch (e.kind) {
      case 'abort':
        lastAbortAt = Date.now();
        await stopflow.abort(instanceId, { reason: 'model', requestedBy: 'model-test' }).catch(ignoreEnded);
        break;
      case 'set-max-stop-duration':
        // Refused after escalation or once every volume is detached: both are the contract, not a failure.
        await stopflow.setMaxStopDuration(instanceId, e.value).catch(() => undefined);
        break;
      case 'cancel':
        await handle.cancel().catch(ignoreEnded);
        break;
      case 'attach':
        await sim.attachVolume(instanceId, {
          volumeId: `vol-late-${attached++}`,
          behavior: e.stuck ? { hang: true } : {},
        });
        break;
    }
  }
  const end = await Promise.race([result, pause(END_BOUND_MS).then(() => undefined)]);
  const cloud = (await sim.instance(instanceId)) as SimInstance;
  if (!end) {
    return {
      schedule: s,
      instanceId,
      phase: 'failed',
      status: undefined,
      error: 'did not end in time',
      cloud,
      endedAfterLastAbortMs: Number.POSITIVE_INFINITY,
      forceSummaries: 0,
      phaseAttribute: undefined,
    };
  }
  const endedAt = Date.now();
  const history = await handle.fetchHistory();
  const forceSummaries = (history.events ?? []).filter(
    (ev) =>
      ev.activityTaskScheduledEventAttributes?.activityType?.name === 'forceDetachVolume' &&
      ev.userMetadata?.summary?.data !== undefined,
  ).length;
  const description = await handle.describe();
  const outcome: Outcome = {
    schedule: s,
    instanceId,
    phase: end.phase,
    status: end.status,
    cloud,
    endedAfterLastAbortMs: endedAt - lastAbortAt,
    forceSummaries,
    phaseAttribute: description.typedSearchAttributes.get(StopPhaseKey),
  };
  if ('error' in end && end.error !== undefined) outcome.error = end.error;
  return outcome;
}

/** The contract's invariant, for one schedule. Returns what it broke, or nothing. */
function violations(o: Outcome): string[] {
  const broken: string[] = [];
  const { cloud, status } = o;
  if (!Number.isFinite(o.endedAfterLastAbortMs)) return [`did not end within ${END_BOUND_MS} ms of the last abort`];
  if (!status) return ['ended without a StopStatus'];
  if (o.phase !== status.phase) broken.push(`result ${o.phase} but status.phase ${status.phase}`);
  if (o.phaseAttribute !== status.phase) broken.push(`StopPhase is ${o.phaseAttribute}, phase ${status.phase}`);
  if (o.phase === 'stopped') {
    if (cloud.state !== 'stopped') broken.push('reported stopped but the instance runs');
    if (cloud.leakedAtStop.length > 0) broken.push(`stopped with ${cloud.leakedAtStop.join(', ')} attached`);
    if (!status.instanceStopped) broken.push('phase stopped but instanceStopped false');
  } else {
    if (cloud.state !== 'running' || cloud.stopCalls > 0) broken.push('StopFailed but the instance was stopped');
    if (status.instanceStopped) broken.push('StopFailed with instanceStopped true');
    const explained = status.error !== undefined || status.volumes.some((v) => v.state === 'failed' && v.lastError);
    if (!explained) broken.push('StopFailed without saying which volume and why');
  }
  for (const v of cloud.volumes) {
    const reported = status.volumes.find((r) => r.volumeId === v.volumeId);
    if (v.forced && reported?.state !== 'force_detached' && reported?.state !== 'detached') {
      broken.push(`${v.volumeId} was forced but reported ${reported?.state ?? 'nowhere'}`);
    }
    if (v.forced && status.escalation === null) broken.push(`${v.volumeId} was forced without an escalation`);
    if (v.behavior.force === 'ok' && v.behavior.failFirst === 0 && v.forceCalls > 1)
      broken.push(`${v.volumeId} was forced ${v.forceCalls} times`);
  }
  const cancelled = /cancelled/.test(status.error ?? '');
  for (const r of status.volumes) {
    const v = cloud.volumes.find((c) => c.volumeId === r.volumeId);
    // force_detached says a force went out and the volume is detached, not that the force is what detached it
    // (docs/contract.md): a force that reached a volume which had just detached, or whose answer was lost, counts.
    // What must never be: force_detached with no force sent at all.
    if (r.state === 'force_detached' && !v?.forceCalls)
      broken.push(`${r.volumeId} reported force_detached, no force ever sent`);
    // Needed force, could have it, and the stop escalated (and was not cancelled first): forced.
    const needsForce = v?.behavior.hang === true && v.behavior.force === 'ok';
    if (needsForce && status.escalation && !cancelled && !v?.forced)
      broken.push(`${r.volumeId} needed force and got none`);
  }
  const forcedReported = status.volumes.filter((v) => v.state === 'force_detached').length;
  if (o.forceSummaries < forcedReported) {
    broken.push(`${forcedReported} volumes force-detached but ${o.forceSummaries} force summaries in history`);
  }
  return broken;
}

test(`the invariant holds on ${RUNS} random schedules (seed ${SEED})`, { timeout: 3_600_000 }, async () => {
  const schedules = fc.sample(schedule, { seed: SEED, numRuns: RUNS });
  const outcomes: Outcome[] = [];
  for (let i = 0; i < schedules.length; i += CONCURRENCY) {
    const batch = schedules.slice(i, i + CONCURRENCY);
    // One worker restart in about every other batch, at a random moment of it.
    const restartAt = (SEED + i) % 2 === 0 ? 500 + ((SEED + i) % 2_500) : undefined;
    const restart = restartAt === undefined ? Promise.resolve() : pause(restartAt).then(restartWorker);
    outcomes.push(...(await Promise.all(batch.map((s, j) => runSchedule(s, i + j)))));
    await restart;
  }
  const failures = outcomes.map((o, index) => ({ index, o, broken: violations(o) })).filter((f) => f.broken.length > 0);
  const stopped = outcomes.filter((o) => o.phase === 'stopped').length;
  const forced = outcomes.reduce((n, o) => n + o.cloud.volumes.filter((v) => v.forced).length, 0);
  console.log(
    `[model] ${outcomes.length} schedules ran (seed ${SEED}, ${restarts} worker restarts): ${stopped} stopped, ${outcomes.length - stopped} StopFailed, ${forced} volumes forced; ${failures.length} violations`,
  );
  for (const f of failures.slice(0, 5)) {
    console.log(
      `[model] schedule ${f.index} (replay: STOPFLOW_MODEL_SEED=${SEED} STOPFLOW_MODEL_RUNS=${RUNS}): ${f.broken.join('; ')}\n${JSON.stringify(f.o.schedule)}\n${JSON.stringify(f.o.status)}`,
    );
  }
  expect(failures.map((f) => `${f.index}: ${f.broken.join('; ')}`)).toEqual([]);
});
