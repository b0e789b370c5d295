/**
 * `stopflow sim`: a person seeds the simulated cloud from the CLI, a worker
 * shares its state file, and a stop of that instance is visible from both.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { FileSimStore, SimulatedProvider } from '../activities/providers/simulated';
import { parseDuration } from '../common/duration';
import { type Harness, startHarness } from './helpers';

const run = promisify(execFile);
const statePath = join(mkdtempSync(join(tmpdir(), 'stopflow-sim-')), 'cloud.json');

async function sim(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run('node', ['bin/stopflow.mjs', 'sim', ...args], {
      env: { ...process.env, STOPFLOW_SIM_STATE: statePath },
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

let h: Harness;
const fileCloud = new SimulatedProvider(new FileSimStore(statePath));
beforeAll(async () => {
  h = await startHarness({ extraProviders: [new SimulatedProvider(new FileSimStore(statePath), {}, 'shared-sim')] });
});
afterAll(async () => {
  await h?.close();
});

describe('stopflow sim', () => {
  test('add-instance seeds volumes with behaviours, and a stop through a worker sharing the file stops it', async () => {
    const instanceId = h.instanceId('sim');
    const added = await sim('add-instance', instanceId, '--volume', 'vol-a@/dev/xvdf', '--volume', 'vol-b:stuck');
    expect(added.code).toBe(0);
    expect(added.stdout).toContain(`${instanceId}: running`);
    expect(added.stdout).toMatch(/vol-b: attached \[stuck\]/);

    await h.stopflow.stop({ instanceId, provider: 'shared-sim', maxStopDuration: '1s' });
    const result = await h.stopflow.result(instanceId);
    expect(result.volumes.map((v) => [v.volumeId, v.state])).toEqual([
      ['vol-a', 'detached'],
      ['vol-b', 'force_detached'],
    ]);

    const shown = await sim('show', instanceId);
    expect(shown.stdout).toContain(`${instanceId}: stopped`);
    expect(shown.stdout).toMatch(/vol-b: detached \(forced\)/);
    const json = JSON.parse((await sim('show', instanceId, '--json')).stdout) as { state: string };
    expect(json.state).toBe('stopped');
  });

  test('attach adds a leftover volume to a stopped instance', async () => {
    const instanceId = h.instanceId('sim');
    await sim('add-instance', instanceId);
    const attached = await sim('attach', instanceId, 'vol-late');
    expect(attached.code).toBe(0);
    expect(await fileCloud.listAttachedVolumes(instanceId)).toEqual([{ volumeId: 'vol-late' }]);
  });

  test.each([
    [['add-instance', 'i-1', '--volume', 'vol-a:bogus'], /unknown option "bogus"/],
    [['add-instance', 'i-1', '--volume', 'vol-a:slow=fast'], /slow= needs a duration/],
    [['add-instance', 'i-1', '--volume', 'vol-a:flaky=0'], /flaky= needs a whole number/],
    [['add-instance', 'bad id!'], /instanceId: must be 1-255 characters/],
  ])('bad input %j exits 2 with the rule', async (args, message) => {
    const result = await sim(...args);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(message);
  });

  test('an unknown instance exits 3', async () => {
    expect((await sim('show', 'i-does-not-exist')).code).toBe(3);
    expect((await sim('attach', 'i-does-not-exist', 'vol-a')).code).toBe(3);
  });
});

describe('FileSimStore', () => {
  test('concurrent writers from two processes and many promises lose no update', async () => {
    const instanceId = 'i-concurrent';
    await fileCloud.addInstance(instanceId, []);
    const inProcess = Array.from({ length: 20 }, (_, i) =>
      fileCloud.attachVolume(instanceId, { volumeId: `vol-p${i}` }),
    );
    const otherProcess = Array.from({ length: 5 }, (_, i) => sim('attach', instanceId, `vol-c${i}`));
    await Promise.all([...inProcess, ...otherProcess]);
    const volumes = await fileCloud.listAttachedVolumes(instanceId);
    expect(volumes).toHaveLength(25);
  });

  test('volume specs parse every behaviour', async () => {
    const { parseVolumeSpec } = await import('../activities/providers/simulated');
    expect(parseVolumeSpec('vol-x@/dev/xvdx:slow=5s,flaky=3,force-fails', parseDuration)).toEqual({
      volumeId: 'vol-x',
      device: '/dev/xvdx',
      behavior: { detachDelayMs: 5_000, failFirst: 3, force: 'fails' },
    });
    expect(parseVolumeSpec('vol-y:stuck,no-force', parseDuration).behavior).toEqual({
      hang: true,
      force: 'unsupported',
    });
  });
});
