import { afterAll, beforeAll, expect, test } from 'vitest';
import { type Harness, startHarness } from './helpers';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h?.close();
});

test('a stop of one healthy volume runs on the real dev server and ends stopped', async () => {
  const instanceId = h.instanceId();
  await h.sim.addInstance(instanceId, [{ volumeId: 'vol-a' }]);
  const stop = await h.stopflow.stop({ instanceId, volumes: [{ volumeId: 'vol-a' }] });
  expect(stop.started).toBe(true);
  const result = await h.stopflow.result(instanceId);
  expect(result.phase).toBe('stopped');
  expect(result.instanceStopped).toBe(true);
  expect(result.volumes).toEqual([expect.objectContaining({ volumeId: 'vol-a', state: 'detached' })]);
  const cloud = await h.sim.instance(instanceId);
  expect(cloud?.state).toBe('stopped');
  expect(cloud?.leakedAtStop).toEqual([]);
});
