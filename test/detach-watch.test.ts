/**
 * The watch list (activities/detach-watch.ts), through the workflow on the dev server: a stuck volume's wait
 * (workflow version 8) holds no slot of the waits queue, is completed by task token when its volume detaches,
 * heartbeats what `stopflow status` shows, hears of a cancel at its next heartbeat, and goes back to the server
 * when its worker shuts down, for another worker to take at once.
 */
import { afterEach, expect, test } from 'vitest';
import type { SeedVolume } from '../activities/providers/simulated';
import { workflowIdFor } from '../common/names';
import { eventually, type Harness, type HarnessOptions, startHarness } from './helpers';

const harnesses: Harness[] = [];
afterEach(async () => {
  await Promise.all(harnesses.splice(0).map((h) => h.close()));
});

async function harness(options: HarnessOptions = {}): Promise<Harness> {
  const h = await startHarness({ watchHeartbeatMs: 500, ...options });
  harnesses.push(h);
  return h;
}

const stuck: SeedVolume = { volumeId: 'vol-stuck', behavior: { hang: true } };

async function stuckStop(h: Harness): Promise<string> {
  const instanceId = h.instanceId('watched');
  await h.sim.addInstance(instanceId, [stuck]);
  await h.stopflow.stop({ instanceId, volumes: [{ volumeId: stuck.volumeId }] });
  return instanceId;
}

/** Lets a hung volume finish its detach, as a backend that recovers does. */
async function unstick(h: Harness, instanceId: string): Promise<void> {
  await h.sim.store.mutate((cloud) => {
    for (const v of cloud.instances[instanceId]?.volumes ?? []) v.behavior.hang = false;
  });
}

test('stuck volumes hold no wait slot: with one slot, three waits are watched at once, and each ends when its volume detaches', async () => {
  const h = await harness({ maxConcurrentWaits: 1 });
  const ids = [await stuckStop(h), await stuckStop(h), await stuckStop(h)];
  await eventually(async () => h.worker.watch.size === 3, 'three waits in the watch list');
  for (const id of ids) {
    const work = (await h.stopflow.progress(id)).volumes[0]?.work;
    expect(work).toMatchObject({ activityType: 'awaitDetached', state: 'started', attempt: 1 });
  }
  const [first, ...others] = ids as [string, string, string];
  await unstick(h, first);
  const status = await h.stopflow.result(first);
  expect(status.phase).toBe('stopped');
  expect(status.volumes[0]?.state).toBe('detached');
  expect((await h.sim.instance(first))?.volumes[0]?.forceCalls).toBe(0);
  // Completed by its task token: one scheduled wait, one completion, no retries in between in history.
  const events = (await h.client.workflow.getHandle(workflowIdFor(first)).fetchHistory()).events ?? [];
  const waits = events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'awaitDetached');
  expect(waits).toHaveLength(1);
  expect(events.some((e) => e.activityTaskCompletedEventAttributes)).toBe(true);
  for (const id of others) expect((await h.stopflow.status(id)).phase).toBe('stopping');
  await eventually(async () => h.worker.watch.size === 2, 'the detached volume to leave the watch list');

  // An abort forces the others at once; their waits leave the list (the force's news, or their next heartbeat).
  for (const id of others) await h.stopflow.abort(id, { reason: 'test' });
  for (const id of others) {
    const ended = await h.stopflow.result(id);
    expect(ended.phase).toBe('stopped');
    expect(ended.volumes[0]?.state).toBe('force_detached');
  }
  await eventually(async () => h.worker.watch.size === 0, 'the forced volumes to leave the watch list');
});

test('the list heartbeats each wait: `stopflow status` shows its checks, and a lost worker would be noticed', async () => {
  const h = await harness();
  const instanceId = await stuckStop(h);
  const work = await eventually(async () => {
    const w = (await h.stopflow.progress(instanceId)).volumes[0]?.work;
    return w?.checks !== undefined && w.checks >= 2 ? w : undefined;
  }, 'a heartbeat with checks counted');
  expect(work).toMatchObject({ activityType: 'awaitDetached', backendState: 'detaching', attempt: 1 });
  expect(work.waitingSince).toBeDefined();
  expect(work.lastHeartbeatAt).toBeDefined();
});

test('a cancel of the stop reaches its watched wait at the next heartbeat: the stop ends, nothing is forced, the list lets go', async () => {
  const h = await harness();
  const instanceId = await stuckStop(h);
  await eventually(async () => h.worker.watch.size === 1, 'the wait in the watch list');
  await h.client.workflow.getHandle(workflowIdFor(instanceId)).cancel();
  await expect(h.stopflow.result(instanceId)).rejects.toThrow(/cancelled/);
  await eventually(async () => h.worker.watch.size === 0, 'the list to hear of the cancel');
  const cloud = await h.sim.instance(instanceId);
  expect(cloud?.state).toBe('running');
  expect(cloud?.volumes[0]?.forceCalls).toBe(0);
});

test('a worker that shuts down hands its watched waits back: another worker takes them before any timeout', async () => {
  const first = await harness();
  const instanceId = await stuckStop(first);
  await eventually(async () => first.worker.watch.size === 1, 'the wait in the first worker’s list');
  await first.close();
  harnesses.splice(harnesses.indexOf(first), 1);
  const second = await harness({ taskQueue: first.taskQueue, sim: first.sim });
  // Within the 2 min heartbeat timeout a dead worker's wait would need: handed back, retried within a second.
  await eventually(async () => second.worker.watch.size === 1, 'the second worker to watch the wait', 60_000);
  const progress = await second.stopflow.progress(instanceId);
  expect(progress.volumes[0]?.work?.attempt).toBeGreaterThanOrEqual(2);
  expect(progress.volumes[0]?.work?.lastFailure).toMatch(/StillDetaching|still detaching/);
  await unstick(second, instanceId);
  const status = await second.stopflow.result(instanceId);
  expect(status.phase).toBe('stopped');
  expect(status.volumes[0]?.state).toBe('detached');
});
