/**
 * StopflowClient against a real worker on the dev server: every verb, the
 * live progress view, the visibility listing, the audit log, and the errors a
 * caller must be able to tell apart.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import { stopsQuery } from '../client/queries';
import {
  InvalidInputError,
  StopAlreadyEndedError,
  StopFailedError,
  StopNotFoundError,
} from '../client/stopflow-client';
import { eventually, type Harness, startHarness, workflowExists } from './helpers';
import { readmeBlock, runShell } from './support/readme-examples';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h?.close();
});

describe('stopsQuery', () => {
  test('builds the visibility query for a phase, for stuck stops, and for one task queue', () => {
    expect(stopsQuery()).toBe(`WorkflowType = 'stopInstance'`);
    expect(stopsQuery({ phase: 'failed' })).toBe(`WorkflowType = 'stopInstance' AND StopPhase = 'failed'`);
    expect(
      stopsQuery({
        phase: 'stopping',
        stuckForMs: 15 * 60_000,
        now: new Date('2026-01-01T12:00:00Z'),
        taskQueue: "q'1",
      }),
    ).toBe(
      `WorkflowType = 'stopInstance' AND StopPhase = 'stopping' AND ExecutionStatus = 'Running' AND StartTime < '2026-01-01T11:45:00.000Z' AND TaskQueue = 'q\\'1'`,
    );
    expect(() => stopsQuery({ phase: 'nope' as 'failed' })).toThrow(/phase: must be one of/);
  });
});

describe('StopflowClient', () => {
  test('stop, join, progress, setMaxStopDuration, list --stuck, abort, result, status, history', async () => {
    const instanceId = h.instanceId('cl');
    await h.sim.addInstance(instanceId, [{ volumeId: 'vol-1' }, { volumeId: 'vol-2', behavior: { hang: true } }]);
    const request = {
      instanceId,
      volumes: [{ volumeId: 'vol-1' }, { volumeId: 'vol-2', device: '/dev/xvdg' }],
      maxStopDuration: '1h',
      reason: 'client test',
      requestedBy: 'tester',
    };
    const first = await h.stopflow.stop(request);
    expect(first).toMatchObject({ instanceId, workflowId: `stop-${instanceId}`, started: true });
    const second = await h.stopflow.stop(request);
    expect(second).toMatchObject({ started: false, runId: first.runId });

    // Live progress: the stuck volume's wait shows its checks and attempt.
    const progress = await eventually(async () => {
      const p = await h.stopflow.progress(instanceId);
      const stuck = p.volumes.find((v) => v.volumeId === 'vol-2');
      return (stuck?.work?.checks ?? 0) >= 2 && p.volumes[0]?.state === 'detached' ? p : undefined;
    }, 'vol-2 detaching with several checks');
    expect(progress.running).toBe(true);
    expect(progress.executionStatus).toBe('RUNNING');
    expect(progress.volumes[1]?.work).toMatchObject({ activityType: 'awaitDetached', backendState: 'detaching' });
    expect(progress.volumes[1]?.work?.waitingSince).toMatch(/^\d{4}-/);

    const { deadline } = await h.stopflow.setMaxStopDuration(instanceId, '2h');
    expect(Date.parse(deadline ?? '') - Date.parse(progress.status.startedAt)).toBe(2 * 3_600_000);

    // Visibility: the stuck stop is listed as stuck for 1s, not for 1h.
    const stuck = await eventually(async () => {
      const stops = await h.stopflow.list({ stuckFor: '1s', taskQueue: h.taskQueue });
      return stops.find((s) => s.instanceId === instanceId);
    }, 'the stop listed as stuck');
    expect(stuck).toMatchObject({ phase: 'stopping', executionStatus: 'RUNNING', forced: false, runId: first.runId });
    const notYet = await h.stopflow.list({ stuckFor: '1h', taskQueue: h.taskQueue });
    expect(notYet.map((s) => s.instanceId)).not.toContain(instanceId);

    await h.stopflow.abort(instanceId, { reason: 'maintenance window over', requestedBy: 'tester' });
    const result = await h.stopflow.result(instanceId);
    expect(result.phase).toBe('stopped');
    expect(result.volumes.map((v) => v.state)).toEqual(['detached', 'force_detached']);
    expect(await h.stopflow.status(instanceId)).toEqual(result);
    const ended = await h.stopflow.progress(instanceId);
    expect(ended).toMatchObject({ running: false, executionStatus: 'COMPLETED', otherWork: [] });

    const listed = await eventually(async () => {
      const stops = await h.stopflow.list({ phase: 'stopped', taskQueue: h.taskQueue });
      return stops.find((s) => s.instanceId === instanceId);
    }, 'the stop listed as stopped');
    expect(listed).toMatchObject({ cause: 'abort', forced: true, executionStatus: 'COMPLETED' });

    const { entries, runId } = await h.stopflow.history(instanceId);
    expect(runId).toBe(first.runId);
    const texts = entries.map((e) => e.text);
    const expectations = [
      /^stop started from .* by tester \(reason: client test\): stop cl-.*: 2 volume\(s\), maxStopDuration 1h$/,
      /^timer started: maxStopDuration deadline .* \(fires in 1h\)$/,
      /^scheduled requestDetach: detach vol-2: request$/,
      /^scheduled awaitDetached: wait until vol-2 is detached$/,
      /^completed requestDetach: detach vol-1/,
      /^update setMaxStopDuration accepted from .*: \{"maxStopDuration":"2h"\}$/,
      /^update setMaxStopDuration completed: \{"deadline":".*"\}$/,
      /^timer cancelled: maxStopDuration deadline/,
      /^signal abort from .*: \{"reason":"maintenance window over","requestedBy":"tester"\}$/,
      /^recorded StopCause="abort"$|^recorded StopCause=abort$/,
      /^scheduled forceDetachVolume: abort by tester: force-detaching vol-2$/,
      /^cancel requested for awaitDetached: wait until vol-2 is detached/,
      /^completed stopInstanceIfDetached: stop instance/,
      /^stop ended: phase stopped, instance stopped; vol-1 detached, vol-2 force_detached$/,
    ];
    for (const expected of expectations)
      expect(
        texts.some((t) => expected.test(t)),
        String(expected),
      ).toBe(true);
    // Time-ordered, each with an ISO time and the event it came from; no workflow-task noise.
    expect(entries.map((e) => e.eventId)).toEqual([...entries.map((e) => e.eventId)].sort((a, b) => a - b));
    expect(entries.every((e) => /^\d{4}-\d\d-\d\dT/.test(e.time))).toBe(true);
    expect(entries.some((e) => e.event.startsWith('WorkflowTask'))).toBe(false);
    expect(entries.find((e) => e.event === 'WorkflowExecutionSignaled')?.data).toEqual({
      reason: 'maintenance window over',
      requestedBy: 'tester',
    });

    // An abort or a new deadline after the end says so, with how the stop ended.
    const late = await h.stopflow.abort(instanceId, { reason: 'too late' }).catch((err: unknown) => err);
    expect(late).toBeInstanceOf(StopAlreadyEndedError);
    expect(late).toMatchObject({ executionStatus: 'COMPLETED', instanceStopped: true });
    expect((late as Error).message).toMatch(
      /cannot abort the stop of .*: it already ended completed at .*; the instance was stopped\. Nothing was changed/,
    );
    await expect(h.stopflow.setMaxStopDuration(instanceId, '5m')).rejects.toThrow(StopAlreadyEndedError);
  });

  test('a stop that fails: result throws StopFailedError with the status; a late abort says the instance was NOT stopped', async () => {
    const instanceId = h.instanceId('cl');
    await h.sim.addInstance(instanceId, [{ volumeId: 'vol-1', behavior: { hang: true, force: 'unsupported' } }]);
    await h.stopflow.stop({ instanceId, volumes: [{ volumeId: 'vol-1' }], maxStopDuration: '1s' });
    const failed = await h.stopflow.result(instanceId).catch((err: unknown) => err);
    expect(failed).toBeInstanceOf(StopFailedError);
    expect((failed as StopFailedError).status).toMatchObject({ phase: 'failed', instanceStopped: false });
    expect(await h.stopflow.status(instanceId)).toEqual((failed as StopFailedError).status);

    const late = await h.stopflow.abort(instanceId).catch((err: unknown) => err);
    expect(late).toBeInstanceOf(StopAlreadyEndedError);
    expect(late).toMatchObject({ executionStatus: 'FAILED', instanceStopped: false });
    expect((late as Error).message).toMatch(
      /it already ended failed at .*; phase failed, the instance was NOT stopped/,
    );

    const { entries } = await h.stopflow.history(instanceId);
    expect(entries.at(-1)?.text).toMatch(/^stop FAILED \(StopFailed\): instance .* was not stopped: vol-1/);
    expect(entries.at(-1)?.data).toMatchObject({ phase: 'failed' });
    expect(entries.some((e) => /^timer fired: maxStopDuration deadline/.test(e.text))).toBe(true);
  });

  test('an unknown instance is StopNotFoundError for every verb', async () => {
    const unknown = h.instanceId('nope');
    const calls: Array<[string, () => Promise<unknown>]> = [
      ['abort', () => h.stopflow.abort(unknown)],
      ['setMaxStopDuration', () => h.stopflow.setMaxStopDuration(unknown, '5m')],
      ['status', () => h.stopflow.status(unknown)],
      ['progress', () => h.stopflow.progress(unknown)],
      ['result', () => h.stopflow.result(unknown)],
      ['history', () => h.stopflow.history(unknown)],
    ];
    for (const [verb, call] of calls) {
      const err = await call().catch((e: unknown) => e);
      expect(err, verb).toBeInstanceOf(StopNotFoundError);
      expect((err as Error).message, verb).toMatch(new RegExp(`no stop of ${unknown} was found`));
    }
    expect(await workflowExists(h.client, unknown)).toBe(false);
  });

  test('bad input is InvalidInputError naming the field, and starts nothing', async () => {
    const instanceId = h.instanceId('bad');
    const cases: Array<[() => Promise<unknown>, RegExp]> = [
      [() => h.stopflow.stop({ instanceId, maxStopDuration: '5 parsecs' }), /maxStopDuration: must be "off"/],
      [() => h.stopflow.stop({ instanceId, volumes: [{ volumeId: 'a' }, { volumeId: 'a' }] }), /must not repeat/],
      [() => h.stopflow.stop({ instanceId, colour: 'red' } as never), /colour: unknown field/],
      [() => h.stopflow.abort('not valid!'), /instanceId: must be 1-255 characters/],
      [() => h.stopflow.setMaxStopDuration(instanceId, 'soon'), /maxStopDuration: must be "off"/],
      [() => h.stopflow.list({ stuckFor: 'a while' }), /stuckFor: must be a positive number/],
      [() => h.stopflow.list({ phase: 'stuck' as never }), /phase: must be one of stopping, stopped, failed/],
      [() => h.stopflow.list({ phase: 'stopped', stuckFor: '5m' }), /cannot be combined with phase stopped/],
      [() => h.stopflow.list({ limit: 0 }), /limit: must be a whole number/],
    ];
    for (const [call, message] of cases) {
      const err = await call().catch((e: unknown) => e);
      expect(err, String(message)).toBeInstanceOf(InvalidInputError);
      expect((err as Error).message).toMatch(message);
    }
    expect(await workflowExists(h.client, instanceId)).toBe(false);
  });
});

test('the README TypeScript example runs as written', async () => {
  const instanceId = h.instanceId('readme-ts');
  await h.sim.addInstance(instanceId, [{ volumeId: 'vol-1' }, { volumeId: 'vol-2', behavior: { hang: true } }]);
  // Written beside the repository's code so its `./client/...` imports resolve (.stopflow/ is git-ignored).
  const dir = join(process.cwd(), '.stopflow', `readme-${instanceId}`);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'example.ts');
  const code = readmeBlock('typescript')
    .replaceAll("'./client/", "'../../client/")
    .replaceAll("'i-1'", `'${instanceId}'`);
  writeFileSync(file, code);
  try {
    const ran = await runShell(`node_modules/.bin/tsx ${file}`, {
      ...process.env,
      TEMPORAL_ADDRESS: inject('temporalAddress'),
      STOPFLOW_TASK_QUEUE: h.taskQueue,
    });
    expect(ran.stderr).toBe('');
    expect(ran.code).toBe(0);
    expect(ran.stdout).toContain(`started stop-${instanceId}`);
    expect(ran.stdout).toContain('phase stopped vol-1=detached vol-2=force_detached');
    expect(ran.stdout).toContain('already ended, instance stopped: true');
    expect(ran.stdout).toMatch(/stuck stops: \d+/);
    expect(ran.stdout).toMatch(/signal abort from .*maintenance window over/);
    expect(ran.stdout).toMatch(/update setMaxStopDuration completed/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
