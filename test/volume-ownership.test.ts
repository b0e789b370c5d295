/**
 * Volume ownership (issue #17, item 2) on the real dev server and the simulated cloud: every stop is
 * findable by its volumes (StopVolumes), `volume()` / `waitUntilReleased()` / `stopflow volume` say which
 * stop holds a volume and when it is released, and a second stop naming a volume another instance's
 * running stop holds is refused, by the client before anything starts and by the workflow before it
 * detaches anything. The simulated cloud reuses volume names across instances, so refusal is turned on
 * here explicitly (on the worker's local activity and on the client), as the CLI and the worker binary do.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@temporalio/client';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import { askWorkerActivity, createVolumeHolderActivities } from '../activities/volume-holders';
import {
  InvalidInputError,
  StopflowClient,
  StopNotFoundError,
  VolumeHeldError,
  VolumeNotReleasedError,
} from '../client/stopflow-client';
import { StopVolumesKey, VOLUME_HELD, WORKFLOW_TYPE, workflowIdFor } from '../common/names';
import type { StopStatus } from '../common/status';
import { connectClient, eventually, type Harness, startHarness, workflowExists } from './helpers';
import { type Ran, readmeBlock, runShell, shellCommands } from './support/readme-examples';

let h: Harness;
let admin: Client;
/** Refuses held volumes, as the CLI does. */
let strict: StopflowClient;
const cleanup: string[] = [];

beforeAll(async () => {
  admin = await connectClient();
  h = await startHarness({ extraActivities: createVolumeHolderActivities(admin, { refuse: true }) });
  strict = new StopflowClient({ client: h.client, taskQueue: h.taskQueue, refuseHeldVolumes: true });
});
afterAll(async () => {
  for (const id of cleanup) {
    await h?.client.workflow
      .getHandle(workflowIdFor(id))
      .terminate('volume-ownership test cleanup')
      .catch(() => undefined);
  }
  await h?.close();
  await admin?.connection.close();
});

/** A volume id no other test uses (StopVolumes queries see the whole task queue). */
const vol = (name: string) => `${name}-${randomUUID().slice(0, 6)}`;

async function stopVolumesOf(instanceId: string): Promise<string[] | undefined> {
  const description = await h.client.workflow.getHandle(workflowIdFor(instanceId)).describe();
  return description.typedSearchAttributes.get(StopVolumesKey);
}

async function findByVolume(volumeId: string, status: 'Running' | 'Completed' | 'Failed'): Promise<string[]> {
  const query = `WorkflowType = '${WORKFLOW_TYPE}' AND TaskQueue = '${h.taskQueue}' AND StopVolumes = '${volumeId}' AND ExecutionStatus = '${status}'`;
  const ids: string[] = [];
  for await (const execution of h.client.workflow.list({ query })) ids.push(execution.workflowId);
  return ids;
}

describe('findable by its volumes', () => {
  test('StopVolumes while running and after the end; volume() while detaching and after; released on force_detached', async () => {
    const instanceId = h.instanceId('own');
    const ok = vol('vol-ok');
    const stuck = vol('vol-stuck');
    await h.sim.addInstance(instanceId, [{ volumeId: ok }, { volumeId: stuck, behavior: { hang: true } }]);
    await h.stopflow.stop({ instanceId, volumes: [{ volumeId: ok }, { volumeId: stuck }] });

    expect(await eventually(async () => (await findByVolume(stuck, 'Running')).length > 0, 'listed while running'));
    expect(await findByVolume(stuck, 'Running')).toEqual([workflowIdFor(instanceId)]);

    const detaching = await eventually(async () => {
      const o = await h.stopflow.volume(stuck);
      return o.state === 'detaching' ? o : undefined;
    }, `${stuck} detaching`);
    expect(detaching).toMatchObject({
      volumeId: stuck,
      instanceId,
      workflowId: workflowIdFor(instanceId),
      running: true,
      phase: 'stopping',
      released: false,
    });
    const released = await eventually(async () => {
      const o = await h.stopflow.volume(ok);
      return o.released ? o : undefined;
    }, `${ok} released`);
    expect(released).toMatchObject({ state: 'detached', running: true });

    // A timeout while it is still held says so.
    const timedOut = await h.stopflow
      .waitUntilReleased(stuck, { timeoutMs: 300, intervalMs: 100 })
      .catch((e: unknown) => e);
    expect(timedOut).toBeInstanceOf(VolumeNotReleasedError);
    expect(timedOut).toMatchObject({ timedOut: true, ownership: { state: 'detaching', running: true } });
    // Resolves when the abort's force lands, not before.
    let settled = false;
    const waiting = h.stopflow.waitUntilReleased(stuck, { intervalMs: 200 }).finally(() => {
      settled = true;
    });
    await new Promise((resolve) => setTimeout(resolve, 600));
    expect(settled).toBe(false);
    await h.stopflow.abort(instanceId, { reason: 'release it' });
    expect(await waiting).toMatchObject({ state: 'force_detached', released: true });
    await h.stopflow.result(instanceId);

    expect(await eventually(async () => (await findByVolume(stuck, 'Completed')).length > 0, 'listed after the end'));
    expect(await h.stopflow.volume(stuck)).toMatchObject({
      running: false,
      executionStatus: 'COMPLETED',
      phase: 'stopped',
      state: 'force_detached',
      released: true,
    });
    // Already released: returns at once.
    expect(await h.stopflow.waitUntilReleased(ok)).toMatchObject({ state: 'detached', running: false });
  });

  test('volumes the stop lists, and one found attached by the final check, join StopVolumes (one upsert each)', async () => {
    const instanceId = h.instanceId('own');
    const slow = vol('vol-slow');
    const late = vol('vol-late');
    await h.sim.addInstance(instanceId, [{ volumeId: slow, behavior: { detachDelayMs: 1_500 } }]);
    await h.stopflow.stop({ instanceId }); // no volumes: listed from the backend
    await eventually(async () => (await stopVolumesOf(instanceId))?.includes(slow), 'the listed volume published');
    await h.sim.attachVolume(instanceId, { volumeId: late });
    const final = await h.stopflow.result(instanceId);
    expect(final.volumes.map((v) => v.volumeId).sort()).toEqual([late, slow].sort());
    expect(await stopVolumesOf(instanceId)).toEqual([slow, late]);
    const history = await h.client.workflow.getHandle(workflowIdFor(instanceId)).fetchHistory();
    const upserts = (history.events ?? []).filter((e) =>
      Object.keys(e.upsertWorkflowSearchAttributesEventAttributes?.searchAttributes?.indexedFields ?? {}).includes(
        'StopVolumes',
      ),
    );
    expect(upserts).toHaveLength(2);
    expect((await h.stopflow.volume(late)).state).toBe('detached');
  });

  test('waitUntilReleased resolves on detached, and throws when the stop failed with the volume attached', async () => {
    const good = h.instanceId('own');
    const bad = h.instanceId('own');
    const slow = vol('vol-slow');
    const pinned = vol('vol-pinned');
    await h.sim.addInstance(good, [{ volumeId: slow, behavior: { detachDelayMs: 1_000 } }]);
    await h.sim.addInstance(bad, [{ volumeId: pinned, behavior: { hang: true, force: 'unsupported' } }]);
    await h.stopflow.stop({ instanceId: good, volumes: [{ volumeId: slow }] });
    await h.stopflow.stop({ instanceId: bad, volumes: [{ volumeId: pinned }], maxStopDuration: '2s' });
    await eventually(async () => (await findByVolume(pinned, 'Running')).length > 0, 'the failing stop visible');
    const [detached, failed] = await Promise.all([
      eventually(() => h.stopflow.waitUntilReleased(slow, { intervalMs: 200 }), `${slow} released`),
      h.stopflow.waitUntilReleased(pinned, { intervalMs: 200 }).catch((err: unknown) => err),
    ]);
    expect(detached).toMatchObject({ state: 'detached', released: true });
    expect(failed).toBeInstanceOf(VolumeNotReleasedError);
    expect((failed as Error).message).toMatch(new RegExp(`${pinned} was not released: the stop stop-${bad} .*failed`));
    expect((failed as VolumeNotReleasedError).ownership).toMatchObject({ state: 'failed', released: false });

    const none = vol('vol-nobody');
    await expect(h.stopflow.volume(none)).rejects.toThrow(StopNotFoundError);
    await expect(h.stopflow.waitUntilReleased(none)).rejects.toThrow(`no stop holds volume ${none}`);
  });
});

describe('a volume another instance is stopping with is refused', () => {
  let holder: string;
  let held: string;
  beforeAll(async () => {
    holder = h.instanceId('holder');
    held = vol('vol-held');
    cleanup.push(holder);
    await h.sim.addInstance(holder, [{ volumeId: held, behavior: { hang: true } }]);
    await h.stopflow.stop({ instanceId: holder, volumes: [{ volumeId: held }] });
    await eventually(async () => (await findByVolume(held, 'Running')).length > 0, 'the holder visible');
  });

  test('by the client: VolumeHeldError naming the holding stop, nothing started; the same instance joins', async () => {
    const other = h.instanceId('second');
    await h.sim.addInstance(other, [{ volumeId: held }]);
    const err = await strict
      .stop({ instanceId: other, volumes: [{ volumeId: 'vol-free' }, { volumeId: held }] })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VolumeHeldError);
    expect(err).toMatchObject({ volumeId: held, holderWorkflowId: workflowIdFor(holder), holderInstanceId: holder });
    expect((err as Error).message).toContain(`${held} is held by the running stop stop-${holder}`);
    expect(await workflowExists(h.client, other)).toBe(false);

    const again = await strict.stop({ instanceId: holder, volumes: [{ volumeId: held }] });
    expect(again.started).toBe(false);
  });

  test('by the workflow, for a stop started with a plain Temporal client: VolumeHeld, nothing detached', async () => {
    const other = h.instanceId('second');
    await h.sim.addInstance(other, [{ volumeId: held }]);
    const handle = await h.client.workflow.start(WORKFLOW_TYPE, {
      taskQueue: h.taskQueue,
      workflowId: workflowIdFor(other),
      args: [{ instanceId: other, volumes: [{ volumeId: held }] }],
    });
    const err = await handle.result().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause;
    expect(cause).toBeInstanceOf(ApplicationFailure);
    expect((cause as ApplicationFailure).type).toBe(VOLUME_HELD);
    expect((cause as ApplicationFailure).nonRetryable).toBe(true);
    expect(cause?.message).toContain(`${held} is held by the running stop stop-${holder} (instance ${holder}`);
    const status = (cause as ApplicationFailure).details?.[0] as StopStatus;
    expect(status).toMatchObject({
      phase: 'failed',
      instanceStopped: false,
      volumes: [{ volumeId: held, state: 'attached', attempts: 0 }],
    });

    // Nothing was asked of the backend: the volume is attached as it was, and no detach was scheduled.
    const seen = await h.sim.instance(other);
    expect(seen?.volumes[0]).toMatchObject({ state: 'attached', detachCalls: 0, forceCalls: 0 });
    expect(seen?.state).toBe('running');
    const history = await handle.fetchHistory();
    expect((history.events ?? []).some((e) => e.activityTaskScheduledEventAttributes)).toBe(false);
    // It never held the volume: volume() still names the holder.
    expect((await stopVolumesOf(other)) ?? []).toEqual([]); // an empty list removes the attribute
    expect((await h.stopflow.volume(held)).instanceId).toBe(holder);
    // And the library client, which does not check, reports it as a failed stop.
    await expect(h.stopflow.status(other)).resolves.toMatchObject({ phase: 'failed' });
  });
});

function env(): NodeJS.ProcessEnv {
  const vars: NodeJS.ProcessEnv = {
    ...process.env,
    TEMPORAL_ADDRESS: inject('temporalAddress'),
    STOPFLOW_TASK_QUEUE: h.taskQueue,
  };
  delete vars.TEMPORAL_PROFILE;
  return vars;
}

function stopflowCli(args: string[], env: NodeJS.ProcessEnv): Promise<Ran> {
  return new Promise((resolve) => {
    execFile('node', ['bin/stopflow.mjs', ...args], { env }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

test('the README volume examples run as written (TypeScript, then the CLI)', async () => {
  const holder = h.instanceId('readme-vol');
  const other = h.instanceId('readme-vol');
  const volumeId = vol('vol-2');
  await h.sim.addInstance(holder, [{ volumeId, behavior: { hang: true } }]);
  await h.sim.addInstance(other, [{ volumeId }]);
  await h.stopflow.stop({ instanceId: holder, volumes: [{ volumeId }] });
  // The example reads a stop that is visible and detaching (visibility lags the start a little).
  await eventually(async () => (await h.stopflow.volume(volumeId)).state === 'detaching', 'the holder detaching');

  // Written beside the repository's code so `stopflow` resolves to it (.stopflow/ is git-ignored).
  const dir = join(process.cwd(), '.stopflow', `readme-${holder}`);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'volume-example.ts');
  writeFileSync(
    file,
    readmeBlock('volume-typescript')
      .replaceAll("'i-1'", `'${holder}'`)
      .replaceAll("'i-2'", `'${other}'`)
      .replaceAll("'vol-2'", `'${volumeId}'`),
  );
  try {
    const ran = await runShell(`node_modules/.bin/tsx ${file}`, env());
    expect(ran.stderr).toBe('');
    expect(ran.code).toBe(0);
    expect(ran.stdout).toContain(`refused: ${volumeId} is held by stop-${holder}`);
    expect(ran.stdout).toContain(`${volumeId} is detaching in stop-${holder} (stopping)`);
    expect(ran.stdout).toContain(`${volumeId} released: force_detached`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  expect(await workflowExists(h.client, other)).toBe(false);

  // The CLI example, on a new holder of another stuck volume.
  const cliHolder = h.instanceId('readme-vol-cli');
  const cliVolume = vol('vol-2');
  await h.sim.addInstance(cliHolder, [{ volumeId: cliVolume, behavior: { hang: true } }]);
  await h.stopflow.stop({ instanceId: cliHolder, volumes: [{ volumeId: cliVolume }] });
  await eventually(async () => (await h.stopflow.volume(cliVolume)).state === 'detaching', 'the holder detaching');
  const block = shellCommands(readmeBlock('volume-cli'));
  expect(block.exports).toEqual({ TEMPORAL_ADDRESS: 'localhost:7233' });
  const [show, wait] = block.commands.map((c) =>
    c.replaceAll(/\bvol-2\b/g, cliVolume).replace(/^stopflow /, 'node bin/stopflow.mjs '),
  );
  expect(block.commands).toHaveLength(2);
  const shown = await runShell(show as string, env());
  expect(shown.code, shown.stderr).toBe(0);
  expect(shown.stdout.trim()).toMatch(
    new RegExp(
      `^${cliVolume}: detaching in the stop of ${cliHolder} \\(workflow stop-${cliHolder}, run [^)]+\\), which is stopping$`,
    ),
  );
  const waiting = runShell(wait as string, env());
  await h.stopflow.abort(cliHolder);
  const waited = await waiting;
  expect(waited.code, waited.stderr).toBe(0);
  expect(JSON.parse(waited.stdout)).toMatchObject({
    volumeId: cliVolume,
    instanceId: cliHolder,
    state: 'force_detached',
    released: true,
    running: false,
  });
});

test('stopflow volume: exit 1 when the stop failed with it, 3 when nobody holds it, 2 for a bad id', async () => {
  const instanceId = h.instanceId('own-cli');
  const pinned = vol('vol-pinned');
  await h.sim.addInstance(instanceId, [{ volumeId: pinned, behavior: { hang: true, force: 'unsupported' } }]);
  await h.stopflow.stop({ instanceId, volumes: [{ volumeId: pinned }], maxStopDuration: '2s' });
  await eventually(async () => (await findByVolume(pinned, 'Running')).length > 0, 'the stop visible');
  const failed = await stopflowCli(['volume', pinned, '--wait', '--interval', '200ms'], env());
  expect(failed.code).toBe(1);
  expect(failed.stderr).toMatch(new RegExp(`${pinned} was not released: the stop stop-${instanceId} .*failed`));

  const nobody = await stopflowCli(['volume', vol('vol-nobody')], env());
  expect(nobody.code).toBe(3);
  expect(nobody.stderr).toMatch(/no stop holds volume vol-nobody-/);
  const bad = await stopflowCli(['volume', '-x'], env());
  expect(bad.code).toBe(2);
});

test('volumes whose ids outgrow one search attribute: the stop is not findable by them, and still stops', async () => {
  // 60 ids of 45 characters: about 2.9 KB as a list, over the 2 KB Temporal takes for one search attribute value
  // (the server would refuse the start, or fail the stop on its upsert).
  const instanceId = h.instanceId('own-many');
  const volumes = Array.from({ length: 60 }, (_, i) => ({
    volumeId: `${vol('vol-with-a-long-descriptive-name')}-${i}`,
  }));
  expect(JSON.stringify(volumes.map((v) => v.volumeId)).length).toBeGreaterThan(2_048);
  await h.sim.addInstance(instanceId, volumes);
  const started = await strict.stop({ instanceId, volumes });
  expect(started.started).toBe(true);
  expect((await h.stopflow.result(instanceId)).phase).toBe('stopped');
  expect(await stopVolumesOf(instanceId)).toBeUndefined();
  // Under the limit, the same stop is findable by every volume.
  const fewer = h.instanceId('own-few');
  const few = volumes.slice(0, 10).map((v) => ({ volumeId: `${v.volumeId}-f` }));
  await h.sim.addInstance(fewer, few);
  await strict.stop({ instanceId: fewer, volumes: few });
  expect((await h.stopflow.result(fewer)).phase).toBe('stopped');
  expect(await stopVolumesOf(fewer)).toEqual(few.map((v) => v.volumeId));
});

test('visibility that cannot answer does not keep a stop from starting: the client warns and starts it', async () => {
  const instanceId = h.instanceId('own-blind');
  const volumeId = vol('vol-blind');
  await h.sim.addInstance(instanceId, [{ volumeId }]);
  // A client whose list calls fail, as when visibility is throttled in an incident.
  const blind: Client = Object.create(h.client, {
    workflow: {
      value: Object.create(h.client.workflow, {
        list: {
          value: () => {
            throw new Error('visibility throttled (test)');
          },
        },
      }),
    },
  });
  const warned = new Promise<Error>((resolve) => process.once('warning', resolve));
  const started = await new StopflowClient({ client: blind, taskQueue: h.taskQueue, refuseHeldVolumes: true }).stop({
    instanceId,
    volumes: [{ volumeId }],
  });
  expect(started.started).toBe(true);
  const warning = await warned;
  expect(warning.name).toBe('StopflowVisibilityWarning');
  expect(warning.message).toContain(`could not ask who else holds ${volumeId}: visibility throttled (test)`);
  expect((await h.stopflow.result(instanceId)).phase).toBe('stopped');
});

/** h.client, with its workflow calls replaced: `list` and `getHandle` as given (the rest as the real client's). */
function clientWith(workflow: { list?: Client['workflow']['list']; getHandle?: Client['workflow']['getHandle'] }) {
  const overrides: PropertyDescriptorMap = {};
  if (workflow.list) overrides.list = { value: workflow.list };
  if (workflow.getHandle) overrides.getHandle = { value: workflow.getHandle };
  const client: Client = Object.create(h.client, { workflow: { value: Object.create(h.client.workflow, overrides) } });
  return client;
}

/** The InvalidInputError the call was refused with: its message. */
async function refusal(call: Promise<unknown>): Promise<string> {
  const err = await call.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(InvalidInputError);
  return (err as Error).message;
}

test('volume() and waitUntilReleased() refuse a bad volume id and bad options, naming the field, before asking anything', async () => {
  const asked: string[] = [];
  const watched = new StopflowClient({
    client: clientWith({
      list: () => {
        asked.push('list');
        throw new Error('asked visibility');
      },
      getHandle: () => {
        asked.push('getHandle');
        throw new Error('asked for a handle');
      },
    }),
    taskQueue: h.taskQueue,
  });
  const volumeId = vol('vol-opts');
  const idRule = 'volumeId: must be 1-255 characters of [A-Za-z0-9._:-], starting with a letter or digit';
  for (const bad of ['-x', '', 'vol 1', 'v'.repeat(256), 'vol/1']) {
    expect(await refusal(watched.volume(bad))).toBe(idRule);
    expect(await refusal(watched.waitUntilReleased(bad, { intervalMs: 200 }))).toBe(idRule);
  }
  for (const intervalMs of [0, Number.NaN, 99, -1_000, Number.POSITIVE_INFINITY, 2 ** 31, '1s' as unknown as number]) {
    expect(await refusal(watched.waitUntilReleased(volumeId, { intervalMs }))).toBe(
      'intervalMs: must be a finite number of milliseconds from 100 to 2147483647',
    );
  }
  for (const timeoutMs of [0, Number.NaN, -1, Number.POSITIVE_INFINITY, '5s' as unknown as number]) {
    expect(await refusal(watched.waitUntilReleased(volumeId, { timeoutMs }))).toBe(
      'timeoutMs: must be a finite number of milliseconds > 0',
    );
  }
  const notAnObject = null as unknown as { timeoutMs?: number };
  expect(await refusal(watched.waitUntilReleased(volumeId, notAnObject))).toBe(
    'options: must be an object { timeoutMs?, intervalMs? }',
  );
  expect(asked).toEqual([]);

  // The watch sees a call that passes the checks: the edge values are accepted and visibility is asked.
  await expect(watched.waitUntilReleased(volumeId, { intervalMs: 100, timeoutMs: 1 })).rejects.toThrow(
    'asked visibility',
  );
  expect(asked).toEqual(['list']);
});

test('volume(): a listed stop that no longer exists (deleted by retention) is skipped for the next newest', async () => {
  const instanceId = h.instanceId('own-gone');
  const volumeId = vol('vol-gone');
  await h.sim.addInstance(instanceId, [{ volumeId }]);
  await h.stopflow.stop({ instanceId, volumes: [{ volumeId }] });
  expect((await h.stopflow.result(instanceId)).phase).toBe('stopped');
  await eventually(async () => (await findByVolume(volumeId, 'Completed')).length > 0, 'the stop listed');
  // Visibility still lists a newer stop holding it whose run is gone, as it may for a while after retention.
  const gone = `stop-${h.instanceId('own-deleted')}`;
  const listing: Client['workflow']['list'] = (options) => {
    const real = h.client.workflow.list(options);
    return Object.assign(Object.create(real), {
      async *[Symbol.asyncIterator]() {
        for await (const execution of real) {
          yield { ...execution, workflowId: gone, startTime: new Date(execution.startTime.getTime() + 60_000) };
          yield execution;
        }
      },
    });
  };
  const ownership = await new StopflowClient({ client: clientWith({ list: listing }), taskQueue: h.taskQueue }).volume(
    volumeId,
  );
  expect(ownership).toMatchObject({
    volumeId,
    instanceId,
    workflowId: workflowIdFor(instanceId),
    state: 'detached',
    released: true,
  });
});

describe('askWorker, the one question a stop asks its worker', () => {
  test('a stop with no volume holds nothing: no question goes to visibility (which refuses an empty IN ())', async () => {
    const env = new MockActivityEnvironment({ taskQueue: h.taskQueue });
    const { findVolumeHolders } = createVolumeHolderActivities(admin, { refuse: true });
    const input = { workflowId: 'stop-none', startedAt: new Date().toISOString(), volumeIds: [] };
    await expect(env.run(findVolumeHolders, input)).resolves.toEqual([]);
  });

  test('visibility failing loses the holders only: the stop still learns whether completion events go out', async () => {
    const env = new MockActivityEnvironment();
    const { askWorker } = askWorkerActivity({
      findVolumeHolders: () => Promise.reject(new Error('ResourceExhausted: visibility throttled')),
      completionEventsConfigured: () => Promise.resolve(true),
    });
    const input = { workflowId: 'stop-a', startedAt: new Date().toISOString(), volumeIds: ['vol-a'] };
    await expect(env.run(askWorker, input)).resolves.toEqual({ holders: null, completionEvents: true });
  });
});
