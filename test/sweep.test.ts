/**
 * The sweep on the real dev server: stuck stops, leftover volumes that appear
 * after a stop, stops started only when configured, and the schedule applied
 * idempotently through the CLI. Visibility is eventually consistent, so
 * findings are polled for, never expected from the first sweep.
 *
 * The sweep looks at one task queue (the harness's), and its provider is a
 * simulated cloud of its own ("sweep-sim"), so stops of other test files on
 * the shared server are never seen.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { promisify } from 'node:util';
import { Client, ScheduleNotFoundError } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { afterAll, beforeAll, expect, inject, test } from 'vitest';
import { Backends, type ProviderEvent } from '../activities';
import { MemorySimStore, SimulatedProvider } from '../activities/providers/simulated';
import { createSweepActivities, type SweepActivities } from '../activities/sweep';
import type { SweepScheduleView } from '../client/cli/schedule-commands';
import type { SweepInput, SweepResult, sweep } from '../workflows/sweep';
import { eventually, type Harness, startHarness } from './helpers';

const run = promisify(execFile);
const PROVIDER = 'sweep-sim';

let h: Harness;
let client: Client;
const sim = new SimulatedProvider(new MemorySimStore(), {}, PROVIDER);
let activities: SweepActivities | undefined;
/** The call budgets the sweep shares (a worker's: worker/main.ts), and every provider call made through them. */
const providerEvents: ProviderEvent[] = [];
const sweepBackends = new Backends({
  providers: new Map([[PROVIDER, sim]]),
  defaultProvider: PROVIDER,
  pollIntervalMs: 1_000,
  observe: (event) => providerEvents.push(event),
});
const ready = (): SweepActivities => {
  if (!activities) throw new Error('sweep activities not created yet');
  return activities;
};

beforeAll(async () => {
  // The harness installs the test Runtime, so the sweep's connection is made after it; until then the
  // registered activities only delegate.
  h = await startHarness({
    extraProviders: [sim],
    extraActivities: {
      findStuckStops: (input: Parameters<SweepActivities['findStuckStops']>[0]) => ready().findStuckStops(input),
      findLeftoverVolumes: (input: Parameters<SweepActivities['findLeftoverVolumes']>[0]) =>
        ready().findLeftoverVolumes(input),
      startLeftoverStops: (input: Parameters<SweepActivities['startLeftoverStops']>[0]) =>
        ready().startLeftoverStops(input),
    } satisfies SweepActivities,
  });
  // As in the production worker: a Client over a NativeConnection.
  client = new Client({ connection: await NativeConnection.connect({ address: inject('temporalAddress') }) });
  activities = createSweepActivities({
    client,
    providers: [sim],
    defaultProvider: PROVIDER,
    namespace: 'default',
    backends: sweepBackends,
  });
});
afterAll(async () => {
  await h?.close();
  await client?.connection.close();
});

function runSweep(input: SweepInput): Promise<SweepResult> {
  return h.client.workflow.execute<typeof sweep>('sweep', {
    taskQueue: h.taskQueue,
    workflowId: `sweep-test-${randomUUID()}`,
    args: [input],
  });
}

/** Runs sweeps until `pick` finds something in one (visibility catches up within seconds). */
function sweepUntil<T>(input: SweepInput, pick: (result: SweepResult) => T | undefined, what: string): Promise<T> {
  return eventually(async () => pick(await runSweep(input)), what, 60_000);
}

async function stopAndWaitStopped(instanceId: string): Promise<string> {
  const stop = await h.stopflow.stop({ instanceId, provider: PROVIDER });
  expect((await h.stopflow.result(instanceId)).phase).toBe('stopped');
  // The sweep finds stopped instances through visibility: wait until it shows this one.
  await eventually(async () => {
    for await (const _ of h.client.workflow.list({
      query: `WorkflowId = 'stop-${instanceId}' AND StopPhase = 'stopped'`,
    }))
      return true;
    return false;
  }, `stop-${instanceId} visible as stopped`);
  return stop.runId;
}

test('a stop still stopping after stuckAfter is reported stuck, and not before', async () => {
  const instanceId = h.instanceId('stuck');
  await sim.addInstance(instanceId, [{ volumeId: 'vol-hangs', behavior: { hang: true } }]);
  await h.stopflow.stop({ instanceId, provider: PROVIDER });

  const found = await sweepUntil(
    { stuckAfter: 1, lookback: 'off' },
    (r) => r.stuck.find((s) => s.instanceId === instanceId),
    `${instanceId} reported stuck`,
  );
  expect(found).toMatchObject({ workflowId: `stop-${instanceId}`, forced: false });
  expect(found.stoppingForMs).toBeGreaterThanOrEqual(1_000);

  // Now that visibility shows it, a longer threshold must leave it out.
  const patient = await runSweep({ stuckAfter: '1h', lookback: 'off' });
  expect(patient.stuck.map((s) => s.instanceId)).not.toContain(instanceId);
  expect(patient.stuckAfter).toBe('1h');

  await h.stopflow.abort(instanceId, { reason: 'sweep test cleanup', requestedBy: 'test' });
  expect((await h.stopflow.result(instanceId)).phase).toBe('stopped');
});

test("the sweep's look-ups go through the worker's call budget: a throttling pause holds them too", async () => {
  const instanceId = h.instanceId('budget');
  await sim.addInstance(instanceId, [{ volumeId: 'vol-a' }]);
  await stopAndWaitStopped(instanceId);
  providerEvents.length = 0;
  // The backend throttled one of the worker's calls: every call of the provider waits 2 s, the sweep's too.
  sweepBackends.resolve(PROVIDER).budget.throttled(2_000);
  const started = Date.now();
  const result = await runSweep({ stuckAfter: 'off' });
  expect(result.checkErrors).toEqual([]);
  expect(result.checkedInstances).toBeGreaterThanOrEqual(1);
  expect(Date.now() - started).toBeGreaterThanOrEqual(1_900);
  expect(providerEvents).toContainEqual({ kind: 'call', provider: PROVIDER, operation: 'listAttachedVolumes' });
});

test('a volume attached after the stop ended stopped is found by the next sweep, and only reported', async () => {
  const instanceId = h.instanceId('left');
  await sim.addInstance(instanceId, [{ volumeId: 'vol-a' }]);
  const runId = await stopAndWaitStopped(instanceId);

  const clean = await runSweep({ stuckAfter: 'off' });
  expect(clean.leftovers.map((l) => l.instanceId)).not.toContain(instanceId);
  expect(clean.checkErrors).toEqual([]);
  expect(clean.checkedInstances).toBeGreaterThanOrEqual(1);

  await sim.attachVolume(instanceId, { volumeId: 'vol-late' });
  const next = await runSweep({ stuckAfter: 'off' });
  expect(next.leftovers.find((l) => l.instanceId === instanceId)).toEqual({
    instanceId,
    workflowId: `stop-${instanceId}`,
    runId,
    stoppedAt: expect.any(String),
    provider: PROVIDER,
    providerFrom: 'stop',
    volumes: [{ volumeId: 'vol-late' }],
  });
  // Report only (the default): no stop was started and the volume is still attached.
  expect(next.startedStops).toEqual([]);
  expect((await h.client.workflow.getHandle(`stop-${instanceId}`).describe()).runId).toBe(runId);
  const cloud = await sim.instance(instanceId);
  expect(cloud?.volumes.find((v) => v.volumeId === 'vol-late')?.state).toBe('attached');
});

test('with startStopsForLeftovers the sweep starts a stop that detaches the leftover', async () => {
  const instanceId = h.instanceId('fix');
  await sim.addInstance(instanceId, [{ volumeId: 'vol-a' }]);
  const firstRunId = await stopAndWaitStopped(instanceId);
  await sim.attachVolume(instanceId, { volumeId: 'vol-late' });

  const result = await runSweep({ stuckAfter: 'off', startStopsForLeftovers: true });
  const started = result.startedStops.find((s) => s.instanceId === instanceId);
  expect(started).toMatchObject({ workflowId: `stop-${instanceId}`, started: true });
  expect(started && 'runId' in started && started.runId).not.toBe(firstRunId);

  const final = await h.stopflow.result(instanceId);
  expect(final.phase).toBe('stopped');
  expect(final.volumes).toEqual([expect.objectContaining({ volumeId: 'vol-late', state: 'detached' })]);
  expect((await sim.instance(instanceId))?.volumes.every((v) => v.state === 'detached')).toBe(true);

  // The instance is clean now: the next sweep neither reports it nor starts another stop.
  const after = await runSweep({ stuckAfter: 'off', startStopsForLeftovers: true });
  expect(after.leftovers.map((l) => l.instanceId)).not.toContain(instanceId);
  expect(after.startedStops.map((s) => s.instanceId)).not.toContain(instanceId);
});

test('invalid sweep input fails the sweep with InvalidSweepInput', async () => {
  await expect(runSweep({ stuckAfter: 'soon' })).rejects.toMatchObject({
    cause: { type: 'InvalidSweepInput', message: expect.stringContaining('stuckAfter') },
  });
});

async function cli(
  args: string[],
  address = inject('temporalAddress'),
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run('node', ['bin/stopflow.mjs', ...args], {
      env: { ...process.env, TEMPORAL_ADDRESS: address, TEMPORAL_NAMESPACE: 'default' },
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

test('schedule apply creates, then updates the same schedule; show reads it back; delete removes it', async () => {
  const scheduleId = `sweep-test-${randomUUID().slice(0, 8)}`;
  const base = ['--schedule-id', scheduleId, '--task-queue', h.taskQueue];

  const bad = await cli(['schedule', 'apply', '--every', '10s', ...base]);
  expect(bad.code).toBe(2);
  expect(bad.stderr).toContain('every');
  const unreachable = await cli(['schedule', 'show', '--schedule-id', scheduleId], '127.0.0.1:1');
  expect(unreachable.code).toBe(3);
  expect(unreachable.stderr).toContain('cannot reach Temporal');

  // Long intervals, so the schedule itself does not fire during the test.
  const created = await cli(['schedule', 'apply', '--every', '6h', '--stuck-after', '20m', ...base]);
  expect(created.stderr).toBe('');
  expect(created.code).toBe(0);
  expect(created.stdout).toContain(`created schedule ${scheduleId}: sweep every 6h`);

  const updated = await cli(['schedule', 'apply', '--every', '12h', '--start-stops-for-leftovers', ...base]);
  expect(updated.code).toBe(0);
  expect(updated.stdout).toContain(`updated schedule ${scheduleId}: sweep every 12h`);

  const shown = await cli(['schedule', 'show', '--json', '--schedule-id', scheduleId]);
  expect(shown.code).toBe(0);
  const view = JSON.parse(shown.stdout) as SweepScheduleView;
  expect(view).toMatchObject({
    scheduleId,
    every: '12h',
    taskQueue: h.taskQueue,
    workflowType: 'sweep',
    paused: false,
  });
  // apply is declarative: the second one's flags replace the first one's (stuckAfter back to its default).
  expect(view.input).toEqual({ stuckAfter: '15m', lookback: '1h', startStopsForLeftovers: true, maxInstances: 200 });

  // The schedule's action really runs the sweep on the harness's worker.
  const handle = client.schedule.getHandle(scheduleId);
  await handle.trigger();
  const action = await eventually(
    async () => (await handle.describe()).info.recentActions[0],
    'the triggered sweep to start',
  );
  const result = (await client.workflow.getHandle(action.action.workflow.workflowId).result()) as SweepResult;
  expect(result).toMatchObject({ taskQueue: h.taskQueue, stuckAfter: '15m', lookback: '1h' });

  const deleted = await cli(['schedule', 'delete', '--schedule-id', scheduleId]);
  expect(deleted.code).toBe(0);
  await expect(handle.describe()).rejects.toBeInstanceOf(ScheduleNotFoundError);
});
