/**
 * Worker crash: a worker PROCESS is killed with SIGKILL while stops are in
 * every phase at once — detaching slowly, waiting on a stuck volume (with and
 * without a deadline), and force-detaching (a slow force in flight, and a force
 * that keeps failing transiently) — and more stops are requested while no
 * worker runs. A new worker process finishes every one with the right outcome,
 * and the simulated cloud shows that only the volumes that had to be forced
 * were forced, that no detach was started twice, and that no instance was
 * stopped twice or with a volume attached.
 *
 * The killed worker is test/support/robustness-worker.ts, because only it can
 * make a force-detach slow enough to be killed in the middle of it. The worker
 * that recovers is the production worker (`node bin/stopflow.mjs worker`,
 * configured by environment only) when worker/main.ts exists, else the test
 * one (STOPFLOW_ROBUSTNESS_WORKER=test forces that). Both share a JSON-file
 * simulated cloud with this test. An activity running at the kill is retried
 * only after its heartbeat timeout: 10 s for urgent work, and for a wait the
 * dead worker's watch list answered for, the watch heartbeat timeout these
 * workers are configured with (20 s; production's default is 15 min).
 */
import { mkdtempSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, inject, test } from 'vitest';
import { FileSimStore, type SeedVolume, SimulatedProvider } from '../../activities/providers/simulated';
import { StopFailedError } from '../../client/stopflow-client';
import { workflowIdFor } from '../../common/names';
import type { StopStatus } from '../../common/status';
import type { DevServer } from '../../devserver/server';
import { eventually } from '../helpers';
import {
  type Clients,
  connectClients,
  processAlive,
  productionWorkerAvailable,
  ROBUSTNESS_WATCH_HEARTBEAT_TIMEOUT_MS,
  report,
  size,
  sleep,
  spawnWorkerProcess,
  startOwnServer,
  uniqueId,
  uniqueTaskQueue,
  type WorkerProcess,
} from '../support/robustness-helpers';

type Scenario = 'slow' | 'stuckOff' | 'stuckDeadline' | 'forcingSlow' | 'forcingFlaky' | 'doneBefore' | 'queued';

interface Stop {
  scenario: Scenario;
  instanceId: string;
  volumes: SeedVolume[];
  maxStopDuration?: string;
  /** Volume ids that must end force_detached; every other volume must never be forced. */
  mustForce: string[];
  cause: 'graceful' | 'abort' | 'timeout';
}

const PER_SCENARIO = size(3, 2);
const DEADLINE_S = 25;
const FORCE_DELAY_MS = 20_000;

let server: DevServer;
let clients: Clients;
let sim: SimulatedProvider;
let simStatePath: string;
const taskQueue = uniqueTaskQueue('crash');
const workers: WorkerProcess[] = [];

beforeAll(async () => {
  server = await startOwnServer();
  clients = await connectClients(server.address, taskQueue);
  simStatePath = join(mkdtempSync(join(tmpdir(), 'stopflow-crash-')), 'cloud.json');
  sim = new SimulatedProvider(new FileSimStore(simStatePath));
});

afterAll(async () => {
  for (const w of workers) await w.stop();
  await clients?.close();
  await server?.stop();
});

function startWorker(kind: 'test' | 'production', forceDelayMs = 0): WorkerProcess {
  const w = spawnWorkerProcess({
    kind,
    address: server.address,
    taskQueue,
    simStatePath,
    bundlePath: inject('workflowBundlePath'),
    pollIntervalMs: 500,
    holdMs: 3_000,
    maxPollIntervalMs: 2_000,
    ...(forceDelayMs ? { forceDelayMs } : {}),
  });
  workers.push(w);
  return w;
}

function plan(scenario: Scenario): Stop {
  const instanceId = uniqueId(`crash-${scenario}`);
  switch (scenario) {
    case 'slow':
      // Still detaching at the kill and, for some, when the new worker takes the wait over.
      return {
        scenario,
        instanceId,
        volumes: [
          { volumeId: 'vol-a', behavior: { detachDelayMs: 30_000 } },
          { volumeId: 'vol-b', behavior: { detachDelayMs: 40_000 } },
        ],
        mustForce: [],
        cause: 'graceful',
      };
    case 'stuckOff':
      // No deadline: across the crash nothing may force it; only the abort sent afterwards does.
      return {
        scenario,
        instanceId,
        volumes: [{ volumeId: 'vol-ok' }, { volumeId: 'vol-stuck', behavior: { hang: true } }],
        mustForce: ['vol-stuck'],
        cause: 'abort',
      };
    case 'stuckDeadline':
      // The deadline passes while no worker runs.
      return {
        scenario,
        instanceId,
        volumes: [{ volumeId: 'vol-ok' }, { volumeId: 'vol-stuck', behavior: { hang: true } }],
        maxStopDuration: `${DEADLINE_S}s`,
        mustForce: ['vol-stuck'],
        cause: 'timeout',
      };
    case 'forcingSlow':
      // Aborted; the force is in flight (slow) when the worker dies.
      return {
        scenario,
        instanceId,
        volumes: [{ volumeId: 'slow-force-1', behavior: { hang: true } }],
        mustForce: ['slow-force-1'],
        cause: 'abort',
      };
    case 'forcingFlaky':
      // Aborted; the force keeps failing transiently until after the crash, then the host lets go.
      return {
        scenario,
        instanceId,
        volumes: [{ volumeId: 'vol-held', behavior: { hang: true, force: 'fails' } }],
        mustForce: ['vol-held'],
        cause: 'abort',
      };
    case 'doneBefore':
      return { scenario, instanceId, volumes: [{ volumeId: 'vol-a' }], mustForce: [], cause: 'graceful' };
    case 'queued':
      // Requested while no worker runs at all.
      return {
        scenario,
        instanceId,
        volumes: [{ volumeId: 'vol-a' }, { volumeId: 'vol-b', behavior: { detachDelayMs: 2_000 } }],
        mustForce: [],
        cause: 'graceful',
      };
  }
}

async function begin(stop: Stop): Promise<void> {
  await sim.addInstance(stop.instanceId, stop.volumes);
  await clients.stopflow.stop({
    instanceId: stop.instanceId,
    volumes: stop.volumes.map((v) => ({ volumeId: v.volumeId })),
    ...(stop.maxStopDuration ? { maxStopDuration: stop.maxStopDuration } : {}),
    requestedBy: 'robustness/worker-crash',
  });
}

function stateOf(status: StopStatus, volumeId: string): string | undefined {
  return status.volumes.find((v) => v.volumeId === volumeId)?.state;
}

/** Whether the stop is in the phase this scenario must be killed in. */
async function inPhase(stop: Stop): Promise<boolean> {
  const status = await clients.stopflow.status(stop.instanceId);
  const cloud = await sim.instance(stop.instanceId);
  const volume = (id: string) => cloud?.volumes.find((v) => v.volumeId === id);
  const forceCalls = (id: string) => volume(id)?.forceCalls ?? 0;
  // The backend itself is detaching (the request reached it), not just the workflow's record.
  const backendDetaching = (id: string) => volume(id)?.state === 'detaching' && volume(id)?.detachStarts === 1;
  switch (stop.scenario) {
    case 'slow':
      return (
        stateOf(status, 'vol-a') === 'detaching' &&
        stateOf(status, 'vol-b') === 'detaching' &&
        backendDetaching('vol-a') &&
        backendDetaching('vol-b')
      );
    case 'stuckOff':
    case 'stuckDeadline':
      return (
        stateOf(status, 'vol-ok') === 'detached' &&
        stateOf(status, 'vol-stuck') === 'detaching' &&
        backendDetaching('vol-stuck')
      );
    case 'forcingSlow':
      return stateOf(status, 'slow-force-1') === 'force_detaching' && forceCalls('slow-force-1') === 0;
    case 'forcingFlaky':
      // The force activity's own attempt number: at least one force has failed and another is due.
      return stateOf(status, 'vol-held') === 'force_detaching' && (await forceAttempt(stop.instanceId)) >= 2;
    case 'doneBefore':
      return status.phase === 'stopped';
    case 'queued':
      return true;
  }
}

test('a worker process killed with SIGKILL mid-stop: a new worker process finishes every stop, forcing only what must be forced', async () => {
  const t0 = Date.now();
  const first = startWorker('test', FORCE_DELAY_MS);
  await first.ready;

  const before: Scenario[] = ['slow', 'stuckOff', 'stuckDeadline', 'forcingSlow', 'forcingFlaky', 'doneBefore'];
  const stops = before.flatMap((scenario) => Array.from({ length: PER_SCENARIO }, () => plan(scenario)));
  await Promise.all(stops.map(begin));
  const startedAt = Date.now();
  // Escalate the force scenarios once their graceful wait is running: the slow force first; the
  // flaky one last, just before the kill, so it cannot use up its 5 force attempts beforehand.
  const escalateWhenDetaching = async (scenario: Scenario) => {
    for (const stop of stops.filter((s) => s.scenario === scenario)) {
      const volumeId = stop.volumes[0]?.volumeId ?? '';
      await eventually(
        async () => stateOf(await clients.stopflow.status(stop.instanceId), volumeId) === 'detaching',
        `${stop.instanceId} detaching`,
      );
      await clients.stopflow.abort(stop.instanceId, { reason: 'crash test', requestedBy: 'robustness' });
    }
  };
  await escalateWhenDetaching('forcingSlow');
  const others = stops.filter((s) => s.scenario !== 'forcingFlaky');
  await allInPhase(others);
  await escalateWhenDetaching('forcingFlaky');
  await allInPhase(stops);
  const states = await Promise.all(stops.map((s) => clients.stopflow.status(s.instanceId)));

  const killed = await first.kill('SIGKILL');
  const killedAt = Date.now();
  expect(killed.signal).toBe('SIGKILL');
  expect(processAlive(first.pid)).toBe(false);
  report(
    'crash',
    `killed worker pid ${first.pid} with SIGKILL ${((killedAt - startedAt) / 1000).toFixed(1)}s after ${stops.length} stops began; phases at the kill: ${summarizePhases(stops, states)}`,
  );

  // While no worker runs: more stops are requested, and the deadline of `stuckDeadline` passes.
  const queued = Array.from({ length: PER_SCENARIO }, () => plan('queued'));
  await Promise.all(queued.map(begin));
  stops.push(...queued);
  // The host finally lets go of the volumes whose force kept failing.
  await sim.store.mutate((cloud) => {
    for (const stop of stops.filter((s) => s.scenario === 'forcingFlaky')) {
      for (const v of cloud.instances[stop.instanceId]?.volumes ?? []) v.behavior.force = 'ok';
    }
  });
  await sleep(Math.max(2_000, startedAt + (DEADLINE_S + 2) * 1000 - Date.now()));
  for (const stop of stops) {
    const cloud = await sim.instance(stop.instanceId);
    expect(cloud?.state, `${stop.instanceId} must not be stopped by a dead worker`).toBe(
      stop.scenario === 'doneBefore' ? 'stopped' : 'running',
    );
  }

  const second = startWorker(productionWorkerAvailable() ? 'production' : 'test');
  await second.ready;
  const outageMs = Date.now() - killedAt;
  const secondIdentity = `${second.pid}@${hostname()}`; // the SDK's default identity, which both workers keep

  // The stop with no deadline: the new worker takes its wait over and forces nothing until told to.
  const stuckOff = stops.filter((s) => s.scenario === 'stuckOff');
  for (const stop of stuckOff) {
    await eventually(
      async () => {
        const d = await clients.client.workflow.getHandle(workflowIdFor(stop.instanceId)).describe();
        const waiting = d.raw.pendingActivities?.find((a) => a.activityType?.name === 'awaitDetached');
        return waiting?.lastWorkerIdentity === secondIdentity;
      },
      `the new worker to take over the wait of ${stop.instanceId}`,
      ROBUSTNESS_WATCH_HEARTBEAT_TIMEOUT_MS + 90_000,
    );
    const status = await clients.stopflow.status(stop.instanceId);
    expect(status.phase).toBe('stopping');
    expect(status.escalation).toBeNull();
    expect(stateOf(status, 'vol-stuck')).toBe('detaching');
    const cloud = await sim.instance(stop.instanceId);
    expect(cloud?.state).toBe('running');
    expect(cloud?.volumes.every((v) => v.forceCalls === 0)).toBe(true);
  }
  const takenOverAt = Date.now();

  // A second crash, of the worker that took over (the production worker when there is one), while it holds
  // the stuck waits and the slowest detaches; a third worker of the same kind finishes, and the abort below
  // reaches stops whose wait is held by a dead worker.
  const secondKilled = await second.kill('SIGKILL');
  expect(secondKilled.signal).toBe('SIGKILL');
  const secondKilledAt = Date.now();
  const stillRunning = (await Promise.all(stops.map(async (s) => (await sim.instance(s.instanceId))?.state))).filter(
    (state) => state === 'running',
  ).length;
  const third = startWorker(second.kind);
  await third.ready;
  for (const stop of stuckOff) await clients.stopflow.abort(stop.instanceId, { reason: 'after the crash' });

  const outcomes = await Promise.all(
    stops.map(async (stop) => {
      const result = await clients.stopflow.result(stop.instanceId).catch((err: unknown) => err);
      return { stop, result };
    }),
  );
  const doneAt = Date.now();

  for (const { stop, result } of outcomes) {
    const label = `${stop.scenario} ${stop.instanceId}`;
    if (result instanceof StopFailedError) throw new Error(`${label} failed: ${result.message}`);
    if (result instanceof Error) throw result;
    const status = result as StopStatus;
    expect(status.phase, label).toBe('stopped');
    expect(status.instanceStopped, label).toBe(true);
    expect(status.escalation?.cause ?? 'graceful', label).toBe(stop.cause);
    for (const v of status.volumes) {
      expect(v.state, `${label} ${v.volumeId}`).toBe(
        stop.mustForce.includes(v.volumeId) ? 'force_detached' : 'detached',
      );
    }
    const cloud = await sim.instance(stop.instanceId);
    expect(cloud?.state, label).toBe('stopped');
    expect(cloud?.stopCalls, `${label}: stopped exactly once`).toBe(1);
    expect(cloud?.leakedAtStop, label).toEqual([]);
    for (const v of cloud?.volumes ?? []) {
      const mustForce = stop.mustForce.includes(v.volumeId);
      expect(v.state, `${label} ${v.volumeId}`).toBe('detached');
      expect(v.forced, `${label} ${v.volumeId} forced`).toBe(mustForce);
      if (!mustForce) expect(v.forceCalls, `${label} ${v.volumeId} forceCalls`).toBe(0);
      // Never started twice; a forced volume may have been forced before its detach request ever reached the
      // backend (e.g. the deadline passed while no worker ran), so it may show no graceful start at all.
      if (mustForce) expect(v.detachStarts, `${label} ${v.volumeId} detachStarts`).toBeLessThanOrEqual(1);
      else expect(v.detachStarts, `${label} ${v.volumeId} detachStarts`).toBe(1);
    }
  }

  const cloud = await sim.store.read();
  const mine = stops.map((s) => cloud.instances[s.instanceId]);
  const forcedVolumes = mine.flatMap((i) => i?.volumes.filter((v) => v.forced) ?? []);
  const slowForce = stops
    .filter((s) => s.scenario === 'forcingSlow')
    .map((s) => cloud.instances[s.instanceId]?.volumes[0]?.forceCalls ?? 0);
  // The attempt of the force that succeeded: the earlier ones failed before and after the crash.
  const flakyForce = outcomes
    .filter(({ stop }) => stop.scenario === 'forcingFlaky')
    .map(({ result }) => (result as StopStatus).volumes[0]?.attempts ?? 0);
  for (const attempts of flakyForce) {
    expect(attempts).toBeGreaterThanOrEqual(2); // it did fail before the crash ...
    expect(attempts).toBeLessThanOrEqual(5); // ... and force stayed bounded across the workers
  }
  const flakyForceCalls = stops
    .filter((s) => s.scenario === 'forcingFlaky')
    .map((s) => cloud.instances[s.instanceId]?.volumes[0]?.forceCalls ?? 0);
  for (const calls of flakyForceCalls) {
    expect(calls).toBeGreaterThanOrEqual(2);
    expect(calls).toBeLessThanOrEqual(5); // the backend agrees: at most 5 force requests in all
  }
  report(
    'crash',
    `${stops.length} stops (${PER_SCENARIO} per scenario), ${mine.reduce((n, i) => n + (i?.volumes.length ?? 0), 0)} volumes: ` +
      `all stopped with the right cause; forced ${forcedVolumes.length} volumes, exactly the ${stops.reduce((n, s) => n + s.mustForce.length, 0)} that had to be; ` +
      `force calls per slow-force volume [${slowForce.join(', ')}], force attempts (backend force calls) per flaky-force volume [${flakyForce.map((a, i) => `${a} (${flakyForceCalls[i]})`).join(', ')}]`,
  );
  report(
    'crash',
    `no worker for ${(outageMs / 1000).toFixed(1)}s; new ${second.kind} worker (pid ${second.pid}) took over the stuck waits ${((takenOverAt - killedAt) / 1000).toFixed(1)}s after the kill ` +
      `(a watched wait's heartbeat timeout: ${ROBUSTNESS_WATCH_HEARTBEAT_TIMEOUT_MS / 1000} s), then was SIGKILLed too with ${stillRunning} stops unfinished; a third ${third.kind} worker (pid ${third.pid}) finished them ` +
      `${((doneAt - secondKilledAt) / 1000).toFixed(1)}s after that second kill; ` +
      `every stop done ${((doneAt - killedAt) / 1000).toFixed(1)}s after the first kill; part took ${((doneAt - t0) / 1000).toFixed(1)}s`,
  );
}, 420_000);

/** The attempt number of the stop's pending force-detach activity (0 when none is pending). */
async function forceAttempt(instanceId: string): Promise<number> {
  const d = await clients.client.workflow.getHandle(workflowIdFor(instanceId)).describe();
  return d.raw.pendingActivities?.find((a) => a.activityType?.name === 'forceDetachVolume')?.attempt ?? 0;
}

/** Waits until every stop is in the phase its scenario is killed in; says which are not on timeout. */
async function allInPhase(stops: Stop[]): Promise<void> {
  let waiting: Stop[] = stops;
  try {
    await eventually(async () => {
      const ready = await Promise.all(stops.map(inPhase));
      waiting = stops.filter((_, i) => !ready[i]);
      return waiting.length === 0;
    }, 'every stop in its phase');
  } catch (err) {
    const detail = await Promise.all(
      waiting.map(
        async (s) =>
          `${s.scenario} ${s.instanceId}: ${JSON.stringify(await clients.stopflow.status(s.instanceId))} cloud ${JSON.stringify(await sim.instance(s.instanceId))}`,
      ),
    );
    throw new Error(`${(err as Error).message}; not yet in phase:\n${detail.join('\n')}`);
  }
}

function summarizePhases(stops: Stop[], states: StopStatus[]): string {
  const byScenario = new Map<string, Set<string>>();
  stops.forEach((stop, i) => {
    const status = states[i];
    const set = byScenario.get(stop.scenario) ?? new Set<string>();
    set.add(`${status?.phase}: ${status?.volumes.map((v) => `${v.volumeId}=${v.state}`).join(' ')}`);
    byScenario.set(stop.scenario, set);
  });
  return [...byScenario].map(([scenario, set]) => `${scenario} [${[...set].join(' | ')}]`).join('; ');
}
