/**
 * When activities heartbeat (activities/index.ts `heartbeating`): every heartbeat is a write on the
 * Temporal server, so an urgent attempt that ends within its first interval sends none; one that
 * takes longer beats every second, so a cancel still reaches it; a wait beats at once, because its
 * details are what the Temporal UI and `stopflow status` show while it polls, but its later attempts
 * (a volume stuck past a hold window) only when they must. Run in the SDK's own
 * activity test environment, which records each heartbeat the activity sends.
 */
import type { Info } from '@temporalio/activity';
import { MockActivityEnvironment } from '@temporalio/testing';
import { describe, expect, test } from 'vitest';
import { createActivities } from '../activities';
import { MemorySimStore, type SimFaults, SimulatedProvider } from '../activities/providers/simulated';

async function setUp(faults: SimFaults = {}, info: Partial<Info> = {}, holdMs = 400) {
  const sim = new SimulatedProvider(new MemorySimStore(), faults);
  await sim.addInstance('i-1', [
    { volumeId: 'vol-fast' },
    { volumeId: 'vol-stuck', behavior: { hang: true } },
    { volumeId: 'vol-lost' },
  ]);
  const activities = createActivities({
    providers: new Map([[sim.name, sim]]),
    defaultProvider: sim.name,
    pollIntervalMs: 100,
    holdMs,
  });
  const env = new MockActivityEnvironment({ heartbeatTimeoutMs: 10_000, ...info });
  const beats: unknown[] = [];
  // A copy: a wait heartbeats the same details object, updated as it polls.
  env.on('heartbeat', (details: unknown) => beats.push(structuredClone(details)));
  return { sim, activities, env, beats };
}

describe('activity heartbeats', () => {
  test('an urgent attempt that ends at once sends none', async () => {
    const { activities, env, beats } = await setUp();
    const target = { instanceId: 'i-1', volume: { volumeId: 'vol-fast' } };
    const requested = (await env.run(activities.requestDetach, target)) as Awaited<
      ReturnType<typeof activities.requestDetach>
    >;
    expect(requested.state).toBe('detached');
    await env.run(activities.readAttachmentState, target);
    await env.run(activities.listAttachedVolumes, { instanceId: 'i-1' });
    expect(beats).toHaveLength(0);
  });

  test('an urgent attempt on a slow backend beats while it waits (a cancel arrives in the answer to a heartbeat)', async () => {
    const { activities, env, beats } = await setUp({ latencyMs: [2_500, 2_500] });
    await env.run(activities.listAttachedVolumes, { instanceId: 'i-1' });
    expect(beats.length).toBeGreaterThanOrEqual(1);
  });

  test('a wait beats at once, with the details the UI shows, and again when it gives its slot back', async () => {
    const { activities, env, beats } = await setUp();
    const target = { instanceId: 'i-1', volume: { volumeId: 'vol-stuck' } };
    await env.run(activities.requestDetach, target);
    beats.length = 0;
    await expect(env.run(activities.awaitDetached, { ...target, rerequests: 0 })).rejects.toMatchObject({
      type: 'StillDetaching',
    });
    expect(beats[0]).toMatchObject({ checks: 0, state: 'detaching' });
    // The attempt's last word, so the next attempt counts on.
    expect(beats.at(-1)).toMatchObject({ state: 'detaching' });
    expect((beats.at(-1) as { checks: number }).checks).toBeGreaterThan(0);
  });

  // What the first attempt reported, as the server keeps it for the attempts after.
  const firstAttempt = { checks: 4, state: 'detaching', since: '2026-12-01T00:00:00.000Z' };

  test('a later attempt of a wait sends none: the server keeps what the first one reported', async () => {
    const { activities, env, beats } = await setUp({}, { attempt: 3, heartbeatDetails: firstAttempt });
    const target = { instanceId: 'i-1', volume: { volumeId: 'vol-stuck' } };
    await env.run(activities.requestDetach, target);
    beats.length = 0;
    const failed = env.run(activities.awaitDetached, { ...target, rerequests: 0 });
    await expect(failed).rejects.toMatchObject({ type: 'StillDetaching' });
    // Its failure says what it saw, with the first attempt's "since", and no stack (the server stores each).
    const failure = (await failed.catch((err: unknown) => err)) as Error;
    expect(failure.message).toMatch(
      /^vol-stuck still detaching since 2026-12-01T00:00:00\.000Z \(attempt 3: \d+ checks\)$/,
    );
    expect(failure.stack).not.toMatch(/\n\s+at /);
    expect(beats).toHaveLength(0);
  });

  test('a later attempt beats once it polls past two thirds of its heartbeat timeout', async () => {
    const { activities, env, beats } = await setUp(
      {},
      { attempt: 2, heartbeatDetails: firstAttempt, heartbeatTimeoutMs: 450 },
      1_000,
    );
    const target = { instanceId: 'i-1', volume: { volumeId: 'vol-stuck' } };
    await env.run(activities.requestDetach, target);
    beats.length = 0;
    await expect(env.run(activities.awaitDetached, { ...target, rerequests: 0 })).rejects.toMatchObject({
      type: 'StillDetaching',
    });
    expect(beats.length).toBeGreaterThanOrEqual(1);
    // Not at once: by its first beat (300 ms in) it had checked a few times more than the first attempt.
    expect(beats[0]).toMatchObject({ since: firstAttempt.since, state: 'detaching' });
    expect((beats[0] as { checks: number }).checks).toBeGreaterThan(firstAttempt.checks);
  });

  test('a later attempt that finds the request lost-looking says so, for the next attempt to time it', async () => {
    // vol-lost was never asked to detach: every check reads `attached`. Sent again twice already, it is
    // called lost only after 3 polls x 4, past this attempt's hold window.
    const { activities, env, beats } = await setUp({}, { attempt: 2, heartbeatDetails: firstAttempt });
    const target = { instanceId: 'i-1', volume: { volumeId: 'vol-lost' } };
    await expect(env.run(activities.awaitDetached, { ...target, rerequests: 2 })).rejects.toMatchObject({
      type: 'StillDetaching',
    });
    expect(beats).toHaveLength(1);
    expect(beats[0]).toMatchObject({ state: 'attached', since: firstAttempt.since });
    expect(typeof (beats[0] as { attachedSince?: unknown }).attachedSince).toBe('string');
  });

  test('a later attempt that ends on a backend error still passes on a lost-looking request', async () => {
    // The first check reads `attached` (vol-lost was never asked to detach); every check after it fails
    // transiently, to the end of the attempt. Counted in calls, not time, so a slow machine reads the same.
    let sim: SimulatedProvider | undefined;
    const faults: SimFaults = {
      get failCalls() {
        return new Set((sim?.calls.get('getAttachmentStates') ?? 0) >= 1 ? ['getAttachmentStates'] : []);
      },
    };
    const set = await setUp(faults, { attempt: 2, heartbeatDetails: firstAttempt }, 1_000);
    sim = set.sim;
    const target = { instanceId: 'i-1', volume: { volumeId: 'vol-lost' } };
    const ended = set.env.run(set.activities.awaitDetached, { ...target, rerequests: 4 });
    await expect(ended).rejects.toThrow(/injected fault/);
    expect(set.beats).toHaveLength(1);
    expect(typeof (set.beats[0] as { attachedSince?: unknown }).attachedSince).toBe('string');
  });
  test('a wait calls a request lost only on an answer: errors after one old `attached` read say nothing', async () => {
    // The previous attempt read `attached` an hour ago, long past the lost-after time (3 polls); every check of
    // this attempt fails. Lost would send the detach again, urgently, for a volume nobody has read since.
    const read = { ...firstAttempt, state: 'attached', attachedSince: new Date(Date.now() - 3_600_000).toISOString() };
    const { activities, env } = await setUp(
      { failCalls: new Set(['getAttachmentStates']) },
      { attempt: 2, heartbeatDetails: read },
    );
    const target = { instanceId: 'i-1', volume: { volumeId: 'vol-lost' } };
    await expect(env.run(activities.awaitDetached, { ...target, rerequests: 0 })).rejects.toThrow(/injected fault/);
  });
});
