/**
 * The stopInstance workflow end to end on the real dev server, with a real
 * worker and the simulated cloud (a test double of a backend, not of Temporal).
 */
import { WorkflowFailedError } from '@temporalio/client';
import { type ApplicationFailure, defaultPayloadConverter } from '@temporalio/common';
import { optionalTsToMs } from '@temporalio/common/lib/time';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { SeedVolume } from '../activities/providers/simulated';
import { InvalidInputError, StopFailedError } from '../client/stopflow-client';
import { INVALID_STOP_REQUEST, StopCauseKey, StopForcedKey, StopPhaseKey, workflowIdFor } from '../common/names';
import type { StopStatus } from '../common/status';
import { eventually, type Harness, startHarness } from './helpers';

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ pollIntervalMs: 200 });
});
afterAll(async () => {
  await h?.close();
});

async function seeded(volumes: SeedVolume[], prefix = 'i'): Promise<string> {
  const instanceId = h.instanceId(prefix);
  await h.sim.addInstance(instanceId, volumes);
  return instanceId;
}

const refs = (...ids: string[]) => ids.map((volumeId) => ({ volumeId }));

async function searchAttributes(instanceId: string) {
  const description = await h.client.workflow.getHandle(workflowIdFor(instanceId)).describe();
  return {
    phase: description.typedSearchAttributes.get(StopPhaseKey),
    cause: description.typedSearchAttributes.get(StopCauseKey),
    forced: description.typedSearchAttributes.get(StopForcedKey),
  };
}

/** Waits until the query shows the volume in the given state. */
function volumeReaches(instanceId: string, volumeId: string, state: string): Promise<StopStatus> {
  return eventually(async () => {
    const status = await h.stopflow.status(instanceId);
    return status.volumes.find((v) => v.volumeId === volumeId)?.state === state ? status : undefined;
  }, `${volumeId} to be ${state}`);
}

/**
 * A history's size split in two: workflow-task events, whose number depends on how the server batched
 * signals and completions (it varies with load), and every other event, which the workflow's logic decides.
 */
async function historyShape(instanceId: string): Promise<{ total: number; tasks: number; decided: number }> {
  const history = await h.client.workflow.getHandle(workflowIdFor(instanceId)).fetchHistory();
  const events = history.events ?? [];
  const tasks = events.filter((e) => {
    const type = Number(e.eventType ?? 0);
    // EVENT_TYPE_WORKFLOW_TASK_SCHEDULED (5) through _FAILED (9)
    return type >= 5 && type <= 9;
  }).length;
  return { total: events.length, tasks, decided: events.length - tasks };
}

describe('graceful stops', () => {
  test('every volume detaches, then the instance is stopped', async () => {
    const instanceId = await seeded([
      { volumeId: 'vol-a' },
      { volumeId: 'vol-b', behavior: { detachDelayMs: 1_000 } },
      { volumeId: 'vol-c', device: '/dev/xvdc' },
    ]);
    await h.stopflow.stop({
      instanceId,
      volumes: [...refs('vol-a', 'vol-b'), { volumeId: 'vol-c', device: '/dev/xvdc' }],
    });
    const result = await h.stopflow.result(instanceId);
    expect(result.phase).toBe('stopped');
    expect(result.instanceStopped).toBe(true);
    expect(result.escalation).toBeNull();
    expect(result.volumes.map((v) => [v.volumeId, v.state])).toEqual([
      ['vol-a', 'detached'],
      ['vol-b', 'detached'],
      ['vol-c', 'detached'],
    ]);
    for (const v of result.volumes) expect(v.detachedAt).toBeDefined();
    const cloud = await h.sim.instance(instanceId);
    expect(cloud?.state).toBe('stopped');
    expect(cloud?.leakedAtStop).toEqual([]);
    expect(cloud?.volumes.every((v) => v.detachStarts === 1 && v.forceCalls === 0)).toBe(true);
    expect(await searchAttributes(instanceId)).toEqual({ phase: 'stopped', cause: 'graceful', forced: false });
  });

  test('transient backend errors are retried until the detach succeeds', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-flaky', behavior: { failFirst: 2 } }]);
    await h.stopflow.stop({ instanceId, volumes: refs('vol-flaky') });
    const result = await h.stopflow.result(instanceId);
    expect(result.phase).toBe('stopped');
    const [volume] = result.volumes;
    expect(volume?.state).toBe('detached');
    expect(volume?.attempts).toBe(3); // two transient failures, then success
    const cloud = await h.sim.instance(instanceId);
    expect(cloud?.volumes[0]?.detachCalls).toBe(3);
    expect(cloud?.volumes[0]?.detachStarts).toBe(1);
  });

  test('an instance with no volumes stops at once', async () => {
    const instanceId = await seeded([]);
    await h.stopflow.stop({ instanceId });
    const result = await h.stopflow.result(instanceId);
    expect(result).toMatchObject({ phase: 'stopped', instanceStopped: true, volumes: [] });
  });

  test('volumes are discovered from the provider when the request omits them', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-x', device: '/dev/xvdx' }, { volumeId: 'vol-y' }]);
    await h.stopflow.stop({ instanceId });
    const result = await h.stopflow.result(instanceId);
    expect(result.volumes.map((v) => v.volumeId).sort()).toEqual(['vol-x', 'vol-y']);
    expect(result.volumes.every((v) => v.state === 'detached')).toBe(true);
  });
});

describe('escalation', () => {
  test('a stuck volume with maxStopDuration "off" stays stopping until abort, then is force-detached', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-ok' }, { volumeId: 'vol-stuck', behavior: { hang: true } }]);
    await h.stopflow.stop({ instanceId, volumes: refs('vol-ok', 'vol-stuck') });
    const waiting = await volumeReaches(instanceId, 'vol-stuck', 'detaching');
    expect(waiting.phase).toBe('stopping');
    expect(waiting.deadline).toBeNull();
    await volumeReaches(instanceId, 'vol-ok', 'detached');
    // Still stopping: the instance must not be stopped while a volume hangs.
    expect((await h.sim.instance(instanceId))?.state).toBe('running');
    expect((await h.stopflow.status(instanceId)).phase).toBe('stopping');

    await h.stopflow.abort(instanceId, { reason: 'host is being drained', requestedBy: 'ops@example.com' });
    const result = await h.stopflow.result(instanceId);
    expect(result.phase).toBe('stopped');
    expect(result.escalation).toMatchObject({
      cause: 'abort',
      reason: 'host is being drained',
      requestedBy: 'ops@example.com',
    });
    expect(result.volumes.find((v) => v.volumeId === 'vol-ok')?.state).toBe('detached');
    expect(result.volumes.find((v) => v.volumeId === 'vol-stuck')?.state).toBe('force_detached');
    const cloud = await h.sim.instance(instanceId);
    expect(cloud?.volumes.find((v) => v.volumeId === 'vol-ok')?.forceCalls).toBe(0);
    expect(cloud?.leakedAtStop).toEqual([]);
    expect(await searchAttributes(instanceId)).toEqual({ phase: 'stopped', cause: 'abort', forced: true });
  });

  test('a stuck volume is force-detached when a short maxStopDuration expires', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
    await h.stopflow.stop({ instanceId, volumes: refs('vol-stuck'), maxStopDuration: '2s' });
    const result = await h.stopflow.result(instanceId);
    expect(result.phase).toBe('stopped');
    expect(result.escalation?.cause).toBe('timeout');
    expect(result.deadline).not.toBeNull();
    expect(result.volumes[0]?.state).toBe('force_detached');
    expect(await searchAttributes(instanceId)).toEqual({ phase: 'stopped', cause: 'timeout', forced: true });
  });

  test('abort before any detach finishes forces every volume', async () => {
    const slow = { detachDelayMs: 600_000 };
    const instanceId = await seeded([
      { volumeId: 'vol-1', behavior: slow },
      { volumeId: 'vol-2', behavior: slow },
    ]);
    await h.stopflow.stop({ instanceId, volumes: refs('vol-1', 'vol-2') });
    await h.stopflow.abort(instanceId, { reason: 'now' });
    const result = await h.stopflow.result(instanceId);
    expect(result.phase).toBe('stopped');
    expect(result.volumes.map((v) => v.state)).toEqual(['force_detached', 'force_detached']);
  });

  test('a second abort changes nothing', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
    await h.stopflow.stop({ instanceId, volumes: refs('vol-stuck') });
    await volumeReaches(instanceId, 'vol-stuck', 'detaching');
    await h.stopflow.abort(instanceId, { reason: 'first', requestedBy: 'alice' });
    try {
      await h.stopflow.abort(instanceId, { reason: 'second', requestedBy: 'bob' });
    } catch (err) {
      // The stop may already have ended; then the client says so instead of signalling.
      expect((err as Error).name).toBe('StopAlreadyEndedError');
    }
    const result = await h.stopflow.result(instanceId);
    expect(result.escalation).toMatchObject({ cause: 'abort', reason: 'first', requestedBy: 'alice' });
    const cloud = await h.sim.instance(instanceId);
    expect(cloud?.volumes[0]?.forceCalls).toBe(1);
  });

  test('forceGrace delays force after the first detach request, and a volume that detaches meanwhile needs no force', async () => {
    const instanceId = await seeded([
      { volumeId: 'vol-late', behavior: { detachDelayMs: 1_500 } },
      { volumeId: 'vol-stuck', behavior: { hang: true } },
    ]);
    await h.stopflow.stop({ instanceId, volumes: refs('vol-late', 'vol-stuck'), forceGrace: '4s' });
    await h.stopflow.abort(instanceId);
    const result = await h.stopflow.result(instanceId);
    expect(result.volumes.find((v) => v.volumeId === 'vol-late')?.state).toBe('detached');
    expect(result.volumes.find((v) => v.volumeId === 'vol-stuck')?.state).toBe('force_detached');
    const cloud = await h.sim.instance(instanceId);
    expect(cloud?.volumes.find((v) => v.volumeId === 'vol-late')?.forceCalls).toBe(0);
    // Force waited for the grace: it started no earlier than 4s after the stop began.
    const history = await h.client.workflow.getHandle(workflowIdFor(instanceId)).fetchHistory();
    const forceScheduled = history.events?.find(
      (e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'forceDetachVolume',
    );
    const started = Date.parse(result.startedAt);
    const forceAt =
      Number(forceScheduled?.eventTime?.seconds ?? 0) * 1000 +
      Math.floor((forceScheduled?.eventTime?.nanos ?? 0) / 1e6);
    expect(forceAt - started).toBeGreaterThanOrEqual(3_900);
  });
});

describe('setMaxStopDuration', () => {
  test('shortening a running stop moves the deadline and escalates when it passes', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
    await h.stopflow.stop({ instanceId, volumes: refs('vol-stuck'), maxStopDuration: '1h' });
    await volumeReaches(instanceId, 'vol-stuck', 'detaching');
    const { deadline } = await h.stopflow.setMaxStopDuration(instanceId, '3s');
    const status = await h.stopflow.status(instanceId);
    expect(deadline).toBe(new Date(Date.parse(status.startedAt) + 3_000).toISOString());
    const result = await h.stopflow.result(instanceId);
    expect(result.escalation?.cause).toBe('timeout');
    expect(result.volumes[0]?.state).toBe('force_detached');
  });

  test('extending a running stop keeps it graceful past the original deadline; rejected after escalation', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
    await h.stopflow.stop({ instanceId, volumes: refs('vol-stuck'), maxStopDuration: '4s' });
    const { deadline } = await h.stopflow.setMaxStopDuration(instanceId, '1h');
    const startedAt = Date.parse((await h.stopflow.status(instanceId)).startedAt);
    expect(deadline).toBe(new Date(startedAt + 3_600_000).toISOString());
    // Past the original 4s deadline (with margin), nothing has escalated.
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, startedAt + 6_000 - Date.now())));
    const status = await h.stopflow.status(instanceId);
    expect(status.escalation).toBeNull();
    expect(status.phase).toBe('stopping');

    await h.stopflow.abort(instanceId, { reason: 'give up' });
    await eventually(async () => (await h.stopflow.status(instanceId)).escalation, 'escalation');
    await expect(h.stopflow.setMaxStopDuration(instanceId, '2h')).rejects.toThrow(
      /maxStopDuration: cannot be changed after escalation|already ended/,
    );
    await h.stopflow.result(instanceId);
  });

  test('an invalid duration is rejected before anything is sent', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
    await h.stopflow.stop({ instanceId, volumes: refs('vol-stuck') });
    await expect(h.stopflow.setMaxStopDuration(instanceId, '5 parsecs')).rejects.toThrow(InvalidInputError);
    await expect(h.stopflow.setMaxStopDuration(instanceId, '5 parsecs')).rejects.toThrow(/maxStopDuration: must be/);
    await h.stopflow.abort(instanceId);
    await h.stopflow.result(instanceId);
  });
});

describe('failures and restarts', () => {
  test('a volume that cannot be force-detached fails the stop and the instance is never stopped', async () => {
    const instanceId = await seeded([
      { volumeId: 'vol-ok' },
      { volumeId: 'vol-pinned', behavior: { hang: true, force: 'unsupported' } },
    ]);
    await h.stopflow.stop({ instanceId, volumes: refs('vol-ok', 'vol-pinned'), maxStopDuration: '1s' });
    const error = await h.stopflow.result(instanceId).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(error).toBeInstanceOf(StopFailedError);
    const status = (error as StopFailedError).status;
    expect(status?.phase).toBe('failed');
    expect(status?.instanceStopped).toBe(false);
    const pinned = status?.volumes.find((v) => v.volumeId === 'vol-pinned');
    expect(pinned?.state).toBe('failed');
    expect(pinned?.lastError).toMatch(/does not support force-detach/);
    expect((error as Error).message).toMatch(/vol-pinned/);
    expect((await h.sim.instance(instanceId))?.state).toBe('running');
    expect((await h.stopflow.status(instanceId)).phase).toBe('failed');
    expect((await searchAttributes(instanceId)).phase).toBe('failed');

    // The raw workflow failure is the contract: non-retryable StopFailed with the status in its details.
    const raw = await h.client.workflow
      .getHandle(workflowIdFor(instanceId))
      .result()
      .catch((err: unknown) => err);
    expect(raw).toBeInstanceOf(WorkflowFailedError);
    const cause = (raw as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('StopFailed');
    expect(cause.nonRetryable).toBe(true);
  });

  test('a force-detach that keeps failing is retried a bounded number of times, then fails the volume', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-held', behavior: { hang: true, force: 'fails' } }]);
    await h.stopflow.stop({ instanceId, volumes: refs('vol-held') });
    await volumeReaches(instanceId, 'vol-held', 'detaching');
    await h.stopflow.abort(instanceId);
    const error = await h.stopflow.result(instanceId).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(StopFailedError);
    const cloud = await h.sim.instance(instanceId);
    expect(cloud?.volumes[0]?.forceCalls).toBe(5);
    expect(cloud?.state).toBe('running');
  });

  test('a second start of the same instance joins the running stop; a new stop after a failed one is allowed', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-pinned', behavior: { hang: true, force: 'unsupported' } }]);
    const first = await h.stopflow.stop({ instanceId, volumes: refs('vol-pinned') });
    const second = await h.stopflow.stop({ instanceId, volumes: refs('vol-pinned') });
    expect(first.started).toBe(true);
    expect(second.started).toBe(false);
    expect(second.runId).toBe(first.runId);
    await h.stopflow.abort(instanceId);
    await expect(h.stopflow.result(instanceId)).rejects.toThrow(StopFailedError);

    // An operator unpins the volume; a new stop of the same instance runs as a new workflow run.
    await h.sim.store.mutate((cloud) => {
      const v = cloud.instances[instanceId]?.volumes[0];
      if (v) v.behavior = { ...v.behavior, hang: false };
    });
    const again = await h.stopflow.stop({ instanceId, volumes: refs('vol-pinned') });
    expect(again.started).toBe(true);
    expect(again.runId).not.toBe(first.runId);
    expect((await h.stopflow.result(instanceId)).phase).toBe('stopped');
  });
});

describe('history stays bounded', () => {
  test('a volume stuck for many poll intervals adds no events per poll', async () => {
    // Poll every 200ms: ~1s stuck is 5 polls, ~8s stuck is 40. The history must be the same size.
    const stuckFor = async (ms: number) => {
      const instanceId = await seeded([{ volumeId: 'vol-stuck', behavior: { hang: true } }], 'bounded');
      await h.stopflow.stop({ instanceId, volumes: refs('vol-stuck') });
      await volumeReaches(instanceId, 'vol-stuck', 'detaching');
      await new Promise((resolve) => setTimeout(resolve, ms));
      const pending = await h.client.workflow.getHandle(workflowIdFor(instanceId)).describe();
      await h.stopflow.abort(instanceId);
      await h.stopflow.result(instanceId);
      const checks = (await h.sim.instance(instanceId))?.volumes[0]?.detachCalls ?? 0;
      const waiting = pending.raw.pendingActivities?.[0];
      return {
        ...(await historyShape(instanceId)),
        checks,
        pending: pending.raw.pendingActivities?.length ?? 0,
        attempt: waiting?.attempt ?? 0,
        lastFailure: waiting?.lastFailure?.message ?? '',
        lastHeartbeatMs: optionalTsToMs(waiting?.lastHeartbeatTime) ?? 0,
        lastStartedMs: optionalTsToMs(waiting?.lastStartedTime) ?? 0,
        lastAttemptEndedMs: optionalTsToMs(waiting?.lastAttemptCompleteTime) ?? 0,
      };
    };
    const short = await stuckFor(1_000);
    const long = await stuckFor(8_000);
    console.log(
      `[history] stuck ~1s: ${short.total} events (${short.tasks} of workflow tasks); ` +
        `stuck ~8s: ${long.total} events (${long.tasks} of workflow tasks)`,
    );
    // The events the workflow decides: start, abort, the patch marker and local-activity markers, search
    // attribute upserts, the volume's detach scheduled and cancelled, its force, stopInstance, the end.
    // ~35 more polls in the long run would show here as dozens more. Only the cancelled wait's
    // ActivityTaskStarted may differ: a wait cancelled between attempts has none.
    expect(long.decided).toBeLessThanOrEqual(30);
    expect(Math.abs(long.decided - short.decided)).toBeLessThanOrEqual(1);
    // Workflow tasks: the server may split or merge a few under load (a signal arriving mid-task), but a
    // task per poll would be ~35 tasks, ~100 events.
    expect(long.tasks).toBeLessThanOrEqual(short.tasks + 9);
    expect(long.pending).toBe(1); // the one waiting activity
    // The worker's watch list answers for the wait (version 8): one attempt all along, no retries, no failures,
    // and its heartbeat (sent after its first check) tells a person what the backend said and since when.
    expect(long.attempt).toBe(1);
    expect(long.lastFailure).toBe('');
    expect(long.lastHeartbeatMs).toBeGreaterThanOrEqual(long.lastStartedMs);
  });

  test('a stop asks one patch (version 11): one marker and one TemporalChangeVersion upsert, where it had three', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-p1' }, { volumeId: 'vol-p2' }], 'one-marker');
    await h.stopflow.stop({ instanceId });
    expect((await h.stopflow.result(instanceId)).phase).toBe('stopped');
    const handle = h.client.workflow.getHandle(workflowIdFor(instanceId));
    const events = (await handle.fetchHistory()).events ?? [];
    const patchMarkers = events.filter((e) => e.markerRecordedEventAttributes?.markerName === 'core_patch');
    const versionUpserts = events.filter(
      (e) => e.upsertWorkflowSearchAttributesEventAttributes?.searchAttributes?.indexedFields?.TemporalChangeVersion,
    );
    expect(patchMarkers).toHaveLength(1);
    expect(versionUpserts).toHaveLength(1);
    // And it follows the three it no longer asks: StopVolumes kept (ownership-events), one askWorker (ask-worker-once).
    const stopVolumesUpserts = events.filter(
      (e) => e.upsertWorkflowSearchAttributesEventAttributes?.searchAttributes?.indexedFields?.StopVolumes,
    );
    expect(stopVolumesUpserts).toHaveLength(1);
    const askWorker = events.filter((e) => e.markerRecordedEventAttributes?.markerName === 'core_local_activity');
    expect(askWorker).toHaveLength(1);
    // What visibility shows of the stop's version: a keyword list, read raw (the SDK has no typed key for it).
    const raw = (await handle.describe()).raw.workflowExecutionInfo?.searchAttributes?.indexedFields;
    const versions = raw?.TemporalChangeVersion;
    expect(versions && defaultPayloadConverter.fromPayload(versions)).toEqual(['one-marker']);
  });
});

describe('bad input', () => {
  const cases: Array<[string, unknown, RegExp]> = [
    ['missing instanceId', {}, /instanceId: is required/],
    ['empty instanceId', { instanceId: '' }, /instanceId: must be 1-255 characters/],
    ['bad characters', { instanceId: 'i 1/../' }, /instanceId: must be 1-255 characters of \[A-Za-z0-9._:-\]/],
    [
      'duplicate volumeIds',
      { instanceId: 'i-dup', volumes: refs('vol-a', 'vol-a') },
      /volumes: must not repeat a volumeId/,
    ],
    ['zero duration', { instanceId: 'i-zero', maxStopDuration: '0s' }, /maxStopDuration: must be "off", a positive/],
    ['negative duration', { instanceId: 'i-neg', maxStopDuration: '-5m' }, /maxStopDuration: must be "off"/],
    ['nonsense duration', { instanceId: 'i-pc', maxStopDuration: '5 parsecs' }, /maxStopDuration: must be "off"/],
    ['bad forceGrace', { instanceId: 'i-fg', forceGrace: 'soon' }, /forceGrace: must be "off"/],
    ['unknown field', { instanceId: 'i-unknown', maxStopDurration: '5m' }, /maxStopDurration: unknown field/],
    [
      'volume without id',
      { instanceId: 'i-novol', volumes: [{ device: '/dev/xvdf' }] },
      /volumes\[0\]\.volumeId: is required/,
    ],
  ];

  test.each(cases)(
    '%s is rejected with the field and the rule, and no workflow starts',
    async (_name, request, message) => {
      const stop = h.stopflow.stop(request as Parameters<typeof h.stopflow.stop>[0]);
      await expect(stop).rejects.toThrow(InvalidInputError);
      await expect(h.stopflow.stop(request as Parameters<typeof h.stopflow.stop>[0])).rejects.toThrow(message);
      const instanceId = (request as { instanceId?: unknown }).instanceId;
      if (typeof instanceId === 'string' && instanceId.length > 0) {
        await expect(h.client.workflow.getHandle(workflowIdFor(instanceId)).describe()).rejects.toThrow(/not found/i);
      }
    },
  );

  test('a request that bypasses the client is rejected by the workflow, naming the field, and stops nothing', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-a' }]);
    const handle = await h.client.workflow.start('stopInstance', {
      taskQueue: h.taskQueue,
      workflowId: workflowIdFor(instanceId),
      args: [{ instanceId, maxStopDuration: '5 parsecs', someFutureField: true }],
    });
    const error = await handle.result().catch((err: unknown) => err);
    expect(error).toBeInstanceOf(WorkflowFailedError);
    const cause = (error as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe(INVALID_STOP_REQUEST);
    expect(cause.message).toMatch(/maxStopDuration: must be "off"/);
    expect(cause.message).not.toMatch(/someFutureField/); // unknown fields are tolerated by the workflow
    expect((await h.sim.instance(instanceId))?.volumes[0]?.detachCalls).toBe(0);
  });
});
