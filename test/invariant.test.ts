/**
 * The promise, case by case (docs/contract.md "The invariant"): never `stopped`
 * with a volume attached, every stop ends, cancel and terminate mean what the
 * contract says. Each test here failed on the workflow before the `reconciler`
 * patch. Real dev server, real worker, the simulated cloud behind the activities.
 */
import { randomUUID } from 'node:crypto';
import { Context } from '@temporalio/activity';
import { WorkflowFailedError, WorkflowUpdateStage } from '@temporalio/client';
import type { ApplicationFailure } from '@temporalio/common';
import { NativeConnection } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import { type CallOptions, TransientProviderError } from '../activities/provider';
import { MemorySimStore, type SeedVolume, SimulatedProvider } from '../activities/providers/simulated';
import { InvalidInputError, StopFailedError, StopflowClient } from '../client/stopflow-client';
import { INVALID_STOP_REQUEST, StopPhaseKey, WORKFLOW_TYPE, workflowIdFor } from '../common/names';
import type { StopStatus } from '../common/status';
import { createStopflowWorker } from '../worker/worker';
import { eventually, type Harness, startHarness } from './helpers';

const brokenListing = new SimulatedProvider(
  new MemorySimStore(),
  { failCalls: new Set(['listAttachedVolumes']) },
  'broken-list',
);
const hangingDetach = new SimulatedProvider(
  new MemorySimStore(),
  { hangCalls: new Set(['detachVolume']) },
  'hanging-detach',
);

const stopAlwaysFails = new SimulatedProvider(
  new MemorySimStore(),
  { failCalls: new Set(['stopInstance']) },
  'stop-fails',
);
/**
 * A backend whose first stop call of each instance fails, after a volume was attached to that instance: the call
 * failed (or was throttled) while someone attached a volume, and the next try must not stop over it.
 */
class AttachDuringFailedStop extends SimulatedProvider {
  private readonly failedOnce = new Set<string>();
  override async stopInstance(instanceId: string, options?: CallOptions): Promise<void> {
    if (!this.failedOnce.has(instanceId)) {
      this.failedOnce.add(instanceId);
      await this.attachVolume(instanceId, { volumeId: 'vol-during-stop' });
      throw new TransientProviderError(`simulated stopInstance of ${instanceId}: 503, try again`);
    }
    return super.stopInstance(instanceId, options);
  }
}
const attachDuringFailedStop = new AttachDuringFailedStop(new MemorySimStore(), {}, 'attach-during-stop');

/** A backend whose stop calls fail for the instances in `failing`, and work again once the test removes them. */
class StopFailsUntilRecovered extends SimulatedProvider {
  readonly failing = new Set<string>();
  stopTries = 0;
  override async stopInstance(instanceId: string, options?: CallOptions): Promise<void> {
    this.stopTries++;
    if (this.failing.has(instanceId)) throw new TransientProviderError(`simulated stopInstance of ${instanceId}: 503`);
    return super.stopInstance(instanceId, options);
  }
}
const stopRecovers = new StopFailsUntilRecovered(new MemorySimStore(), {}, 'stop-recovers');

/**
 * A backend whose instance stop is under way until the cancel has reached its activity (as a real cloud's wait for
 * `stopped` is), then finishes, unless the call was aborted by then.
 */
class StopUnderWayAtCancel extends SimulatedProvider {
  readonly stopsBegun = new Set<string>();
  abortedStops = 0;
  override async stopInstance(instanceId: string, options?: CallOptions): Promise<void> {
    this.stopsBegun.add(instanceId);
    const activity = Context.current().cancellationSignal;
    for (let waited = 0; !activity.aborted; waited += 50) {
      if (waited > 30_000) throw new Error('the cancel never reached the stop activity: the test tests nothing');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    if (options?.signal?.aborted) {
      this.abortedStops++;
      throw options.signal.reason;
    }
    return super.stopInstance(instanceId, options);
  }
}
const slowStop = new StopUnderWayAtCancel(new MemorySimStore(), {}, 'slow-stop');

/** A backend that lists a volume it will never detach (a ghost): the final check finds it attached every round. */
class GhostVolume extends SimulatedProvider {
  override async listAttachedVolumes(instanceId: string, options?: CallOptions) {
    return [...(await super.listAttachedVolumes(instanceId, options)), { volumeId: 'vol-ghost' }];
  }
}
const ghostVolume = new GhostVolume(new MemorySimStore(), {}, 'ghost-volume');

/** A stop call that takes effect with its answer lost, after which the backend cannot list the instance's volumes. */
class StoppedThenUnlistable extends SimulatedProvider {
  override async listAttachedVolumes(instanceId: string, options?: CallOptions) {
    if ((await this.instance(instanceId))?.state === 'stopped') {
      throw new TransientProviderError(`simulated listing of ${instanceId}: 503`);
    }
    return super.listAttachedVolumes(instanceId, options);
  }
}
const stoppedThenUnlistable = new StoppedThenUnlistable(
  new MemorySimStore(),
  { loseAnswers: new Set(['stopInstance']) },
  'stopped-unlistable',
);
const stopAnswerLost = new SimulatedProvider(
  new MemorySimStore(),
  { loseAnswers: new Set(['stopInstance']) },
  'stop-lost',
);

let h: Harness;
beforeAll(async () => {
  h = await startHarness({
    pollIntervalMs: 200,
    extraProviders: [
      brokenListing,
      hangingDetach,
      stopAlwaysFails,
      stopAnswerLost,
      attachDuringFailedStop,
      stopRecovers,
      ghostVolume,
      stoppedThenUnlistable,
      slowStop,
    ],
  });
});
afterAll(async () => {
  await h?.close();
});

async function seeded(volumes: SeedVolume[], sim = h.sim): Promise<string> {
  const instanceId = h.instanceId('inv');
  await sim.addInstance(instanceId, volumes);
  return instanceId;
}

const refs = (...ids: string[]) => ids.map((volumeId) => ({ volumeId }));

function volumeReaches(instanceId: string, volumeId: string, state: string): Promise<StopStatus> {
  return eventually(async () => {
    const status = await h.stopflow.status(instanceId);
    return status.volumes.find((v) => v.volumeId === volumeId)?.state === state ? status : undefined;
  }, `${volumeId} to be ${state}`);
}

/** Cancels the stop, then lets the backend's stop calls work again once the cancel had time to land (10 s at most). */
async function cancelThenRecover(instanceId: string): Promise<void> {
  await h.client.workflow.getHandle(workflowIdFor(instanceId)).cancel();
  await eventually(
    async () => (await h.stopflow.status(instanceId).catch(() => undefined))?.phase !== 'stopping',
    'the stop to end',
    10_000,
  ).catch(() => undefined);
  stopRecovers.failing.delete(instanceId);
}

async function failedStatus(instanceId: string): Promise<StopStatus> {
  const err = await h.stopflow.result(instanceId).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StopFailedError);
  const status = (err as StopFailedError).status;
  expect(status).toBeDefined();
  return status as StopStatus;
}

describe('stopped means nothing attached', () => {
  test('a volume the request did not name is found before stopping and detached first', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-named' }, { volumeId: 'vol-unnamed' }]);
    await h.stopflow.stop({ instanceId, volumes: refs('vol-named') });
    const result = await h.stopflow.result(instanceId);
    expect(result.phase).toBe('stopped');
    expect(result.volumes.map((v) => [v.volumeId, v.state])).toEqual([
      ['vol-named', 'detached'],
      ['vol-unnamed', 'detached'],
    ]);
    expect((await h.sim.instance(instanceId))?.leakedAtStop).toEqual([]);
  });

  test('a volume attached while the stop runs is detached before the instance stops', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-slow', behavior: { detachDelayMs: 2_000 } }]);
    await h.stopflow.stop({ instanceId, volumes: refs('vol-slow') });
    await volumeReaches(instanceId, 'vol-slow', 'detaching');
    await h.sim.attachVolume(instanceId, { volumeId: 'vol-late' });
    const result = await h.stopflow.result(instanceId);
    expect(result.phase).toBe('stopped');
    expect(result.volumes.find((v) => v.volumeId === 'vol-late')?.state).toBe('detached');
    const cloud = await h.sim.instance(instanceId);
    expect(cloud?.state).toBe('stopped');
    expect(cloud?.leakedAtStop).toEqual([]);
  });

  test('a stop call that failed is tried again only after listing again: a volume attached meanwhile is detached first', async () => {
    const sim = attachDuringFailedStop;
    const instanceId = await seeded([{ volumeId: 'vol-1' }], sim);
    await h.stopflow.stop({ instanceId, provider: sim.name, volumes: refs('vol-1') });
    const result = await h.stopflow.result(instanceId);
    expect(result.phase).toBe('stopped');
    expect(result.volumes.find((v) => v.volumeId === 'vol-during-stop')?.state).toBe('detached');
    const cloud = await sim.instance(instanceId);
    expect(cloud?.state).toBe('stopped');
    expect(cloud?.leakedAtStop).toEqual([]);
    expect(cloud?.volumes.find((v) => v.volumeId === 'vol-during-stop')?.detachStarts).toBe(1);
  });

  test('a volume re-attached after it detached goes through the path again', async () => {
    const instanceId = await seeded([
      { volumeId: 'vol-quick' },
      { volumeId: 'vol-slow', behavior: { detachDelayMs: 2_000 } },
    ]);
    await h.stopflow.stop({ instanceId, volumes: refs('vol-quick', 'vol-slow') });
    await volumeReaches(instanceId, 'vol-quick', 'detached');
    await h.sim.attachVolume(instanceId, { volumeId: 'vol-quick' });
    const result = await h.stopflow.result(instanceId);
    expect(result.phase).toBe('stopped');
    const cloud = await h.sim.instance(instanceId);
    expect(cloud?.leakedAtStop).toEqual([]);
    expect(cloud?.volumes.find((v) => v.volumeId === 'vol-quick')?.detachStarts).toBe(2);
  });

  test('a detach request the backend dropped (the volume attached again while detaching) is sent again', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-dropped', behavior: { detachDelayMs: 3_000 } }]);
    await h.stopflow.stop({ instanceId, volumes: refs('vol-dropped') });
    // The request reached the backend (the status says `detaching` from just before it is sent).
    await eventually(
      async () => (await h.sim.instance(instanceId))?.volumes.find((v) => v.volumeId === 'vol-dropped')?.detachStarts,
      'the detach request to reach the backend',
    );
    // The backend forgets the request: the volume reads `attached`, with no detach under way.
    await h.sim.attachVolume(instanceId, { volumeId: 'vol-dropped' });
    const result = await h.stopflow.result(instanceId);
    expect(result.phase).toBe('stopped');
    const volume = result.volumes.find((v) => v.volumeId === 'vol-dropped');
    expect(volume?.state).toBe('detached');
    expect(volume?.attempts).toBeGreaterThanOrEqual(2);
    const cloud = await h.sim.instance(instanceId);
    expect(cloud?.volumes.find((v) => v.volumeId === 'vol-dropped')?.detachStarts).toBe(2);
    expect(cloud?.leakedAtStop).toEqual([]);
  });

  test('a volume the backend lists attached round after round fails the stop after five rounds, instance running', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-1' }], ghostVolume);
    await h.stopflow.stop({ instanceId, provider: ghostVolume.name });
    const status = await failedStatus(instanceId);
    expect(status.error).toMatch(/still lists vol-ghost attached after 5 rounds/);
    const cloud = await ghostVolume.instance(instanceId);
    expect(cloud?.state).toBe('running');
    expect(cloud?.stopCalls).toBe(0);
  });

  test('an empty volume list is refused by the client and by the workflow', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-1' }]);
    await expect(h.stopflow.stop({ instanceId, volumes: [] })).rejects.toThrow(InvalidInputError);
    const handle = await h.client.workflow.start(WORKFLOW_TYPE, {
      taskQueue: h.taskQueue,
      workflowId: workflowIdFor(instanceId),
      args: [{ instanceId, volumes: [] }],
    });
    const err = await handle.result().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe(INVALID_STOP_REQUEST);
    expect(cause.message).toMatch(/volumes: must list at least one volume/);
    expect((await h.sim.instance(instanceId))?.state).toBe('running');
  });

  test('more volumes listed than one stop handles fails the stop without stopping the instance', async () => {
    const many = Array.from({ length: 260 }, (_, i) => ({ volumeId: `vol-${i}` }));
    const instanceId = await seeded(many);
    await h.stopflow.stop({ instanceId });
    const status = await failedStatus(instanceId);
    expect(status.error).toMatch(/260 volumes .* at most 256/);
    expect((await h.sim.instance(instanceId))?.state).toBe('running');
  });

  test('an id that could read as an option is refused everywhere', async () => {
    await expect(h.stopflow.stop({ instanceId: '-rf' })).rejects.toThrow(/starting with a letter or digit/);
    const instanceId = await seeded([]);
    await expect(h.stopflow.stop({ instanceId, volumes: [{ volumeId: '--force' }] })).rejects.toThrow(
      /volumes\[0\]\.volumeId/,
    );
  });
});

describe('every stop ends', () => {
  test('workflow cancel ends the stop failed: nothing forced, the instance not stopped', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-ok' }, { volumeId: 'vol-stuck', behavior: { hang: true } }]);
    await h.stopflow.stop({ instanceId, volumes: refs('vol-ok', 'vol-stuck') });
    await volumeReaches(instanceId, 'vol-stuck', 'detaching');
    await h.client.workflow.getHandle(workflowIdFor(instanceId)).cancel();
    const status = await failedStatus(instanceId);
    expect(status.phase).toBe('failed');
    expect(status.instanceStopped).toBe(false);
    expect(status.error).toMatch(/cancelled/);
    expect(status.volumes.find((v) => v.volumeId === 'vol-stuck')).toMatchObject({ state: 'failed' });
    expect(status.volumes.find((v) => v.volumeId === 'vol-stuck')?.lastError).toMatch(/cancelled/);
    const cloud = await h.sim.instance(instanceId);
    expect(cloud?.state).toBe('running');
    expect(cloud?.volumes.every((v) => v.forceCalls === 0)).toBe(true);
    const description = await h.client.workflow.getHandle(workflowIdFor(instanceId)).describe();
    expect(description.typedSearchAttributes.get(StopPhaseKey)).toBe('failed');
  });

  test('workflow cancel while a stuck volume waits: the history records the wait cancelled before the stop ends, and the worker lets it go', async () => {
    // The wait is answered by the worker's watch list (version 8), which hears of the cancel at its next heartbeat;
    // the stop does not wait for that (the wait is read-only), but its history says the wait was cancelled.
    const instanceId = await seeded([{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
    await h.stopflow.stop({ instanceId, volumes: refs('vol-stuck') });
    // This stop's own wait, started (the list may still hold an ended stop's wait of the test before, until its next
    // heartbeat): a watch list size says nothing about which stop.
    await eventually(async () => {
      const work = (await h.stopflow.progress(instanceId)).volumes[0]?.work;
      return work?.activityType === 'awaitDetached' && work.state === 'started';
    }, 'the wait in the watch list');
    const handle = h.client.workflow.getHandle(workflowIdFor(instanceId));
    await handle.cancel();
    const status = await failedStatus(instanceId);
    expect(status.error).toMatch(/cancelled/);
    const events = (await handle.fetchHistory()).events ?? [];
    const waitScheduled = events.find(
      (e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'awaitDetached',
    )?.eventId;
    expect(waitScheduled).toBeDefined();
    const cancelRequestedAt = events.findIndex(
      (e) => String(e.activityTaskCancelRequestedEventAttributes?.scheduledEventId) === String(waitScheduled),
    );
    const endedAt = events.findIndex((e) => e.workflowExecutionFailedEventAttributes);
    expect(cancelRequestedAt).toBeGreaterThan(-1);
    expect(cancelRequestedAt).toBeLessThan(endedAt);
    expect((await h.sim.instance(instanceId))?.volumes[0]?.forceCalls).toBe(0);
    await eventually(async () => h.worker.watch.size === 0, 'the watch list to let the wait go');
  });

  test('an abort while the listing keeps failing ends the stop failed, instance not stopped', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-1' }], brokenListing);
    await h.stopflow.stop({ instanceId, provider: 'broken-list' });
    await eventually(async () => {
      const progress = await h.stopflow.progress(instanceId);
      return progress.otherWork.some((w) => w.activityType === 'listAttachedVolumes' && w.attempt >= 2);
    }, 'the listing to be retried');
    await h.stopflow.abort(instanceId, { reason: 'give up' });
    const status = await failedStatus(instanceId);
    expect(status.error).toMatch(/could not list the volumes/);
    expect((await brokenListing.instance(instanceId))?.state).toBe('running');
  });

  test('maxStopDuration runs from the start: a listing that keeps failing cannot outlive it', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-1' }], brokenListing);
    await h.stopflow.stop({ instanceId, provider: 'broken-list', maxStopDuration: '3s' });
    const status = await failedStatus(instanceId);
    expect(status.escalation?.cause).toBe('timeout');
    expect((await brokenListing.instance(instanceId))?.state).toBe('running');
  });

  test('a backend call that never answers is cancelled when the stop escalates', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-1' }], hangingDetach);
    await h.stopflow.stop({ instanceId, provider: 'hanging-detach', volumes: refs('vol-1') });
    await eventually(async () => (hangingDetach.calls.get('detachVolume') ?? 0) > 0, 'the detach call to hang');
    await h.stopflow.abort(instanceId);
    const result = await h.stopflow.result(instanceId);
    expect(result.phase).toBe('stopped');
    expect(result.volumes[0]?.state).toBe('force_detached');
  });
});

describe('the last step', () => {
  test('a cancel while stopping the instance keeps failing ends the stop, failed, the instance not stopped', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-1' }], stopAlwaysFails);
    await h.stopflow.stop({ instanceId, provider: 'stop-fails' });
    await eventually(async () => {
      const progress = await h.stopflow.progress(instanceId);
      return progress.otherWork.some((w) => w.activityType === 'stopInstanceIfDetached' && w.attempt >= 2);
    }, 'the instance stop to be retried');
    await h.client.workflow.getHandle(workflowIdFor(instanceId)).cancel();
    const status = await failedStatus(instanceId);
    expect(status.instanceStopped).toBe(false);
    expect(status.error).toMatch(/^cancelled at .*: instance .* was not stopped$/);
    expect((await stopAlwaysFails.instance(instanceId))?.state).toBe('running');
  });

  test('a cancel while the instance stop is retried sends no stop call after it, even once the backend recovers', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-1' }], stopRecovers);
    stopRecovers.failing.add(instanceId);
    await h.stopflow.stop({ instanceId, provider: stopRecovers.name });
    await eventually(async () => stopRecovers.stopTries >= 2, 'the instance stop to fail');
    // Before the fix the cancel was followed by five more tries; the backend recovering during them stopped
    // the cancelled stop's instance.
    await cancelThenRecover(instanceId);
    const status = await failedStatus(instanceId);
    expect(status.error).toMatch(/^cancelled at .*: instance .* was not stopped$/);
    expect(status.instanceStopped).toBe(false);
    const cloud = await stopRecovers.instance(instanceId);
    expect(cloud?.state).toBe('running');
    expect(cloud?.stopCalls).toBe(0);
  });

  test('a cancel while the instance stop is under way lets it finish: the stop ends stopped', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-1' }], slowStop);
    await h.stopflow.stop({ instanceId, provider: slowStop.name });
    await eventually(async () => slowStop.stopsBegun.has(instanceId), 'the instance stop to begin');
    await h.client.workflow.getHandle(workflowIdFor(instanceId)).cancel();
    const result = await h.stopflow.result(instanceId);
    expect(result).toMatchObject({ phase: 'stopped', instanceStopped: true });
    // The call saw the cancel and was not aborted by it: one stop call, made before the cancel.
    expect(slowStop.abortedStops).toBe(0);
    const cloud = await slowStop.instance(instanceId);
    expect(cloud?.state).toBe('stopped');
    expect(cloud?.stopCalls).toBe(1);
  });

  test('a cancel after an escalation ends the bounded stop tries too: no stop call after it', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-stuck', behavior: { hang: true } }], stopRecovers);
    stopRecovers.failing.add(instanceId);
    await h.stopflow.stop({ instanceId, provider: stopRecovers.name, volumes: refs('vol-stuck') });
    await volumeReaches(instanceId, 'vol-stuck', 'detaching');
    const triesBefore = stopRecovers.stopTries;
    await h.stopflow.abort(instanceId);
    await eventually(async () => stopRecovers.stopTries >= triesBefore + 2, 'the escalated instance stop to fail');
    await cancelThenRecover(instanceId);
    const status = await failedStatus(instanceId);
    expect(status.error).toMatch(/^cancelled at .*: instance .* was not stopped$/);
    const cloud = await stopRecovers.instance(instanceId);
    expect(cloud?.state).toBe('running');
    expect(cloud?.stopCalls).toBe(0);
    expect(cloud?.volumes[0]?.forced).toBe(true);
  });

  test('an escalated stop whose instance stopped but whose answer was lost ends stopped, not failed', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-stuck', behavior: { hang: true } }], stopAnswerLost);
    await h.stopflow.stop({ instanceId, provider: 'stop-lost', volumes: refs('vol-stuck') });
    await eventually(async () => (await h.stopflow.status(instanceId)).volumes[0]?.state === 'detaching', 'waiting');
    await h.stopflow.abort(instanceId);
    const result = await h.stopflow.result(instanceId);
    expect(result).toMatchObject({ phase: 'stopped', instanceStopped: true });
    const cloud = await stopAnswerLost.instance(instanceId);
    expect(cloud?.leakedAtStop).toEqual([]);
    // The retry after the lost answer lists the volumes again, reads the instance stopped and sends no second call.
    expect(cloud?.stopCalls).toBe(1);
  });

  test('a stop that stopped the instance but cannot confirm its volumes fails, and says the instance is stopped', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-stuck', behavior: { hang: true } }], stoppedThenUnlistable);
    await h.stopflow.stop({ instanceId, provider: stoppedThenUnlistable.name, volumes: refs('vol-stuck') });
    await volumeReaches(instanceId, 'vol-stuck', 'detaching');
    await h.stopflow.abort(instanceId);
    const status = await failedStatus(instanceId);
    expect(status.error).toMatch(/the instance reads stopped, but its volumes could not be confirmed detached/);
    expect(status.instanceStopped).toBe(true);
    expect((await stoppedThenUnlistable.instance(instanceId))?.state).toBe('stopped');
  });

  test('a volume found attached after a cancel is not forced', async () => {
    // Aborted (no grace), then cancelled while the backend lists a volume attached again: nothing more is forced.
    const instanceId = await seeded([{ volumeId: 'vol-stuck', behavior: { hang: true } }], stopAlwaysFails);
    await h.stopflow.stop({ instanceId, provider: 'stop-fails', volumes: refs('vol-stuck') });
    await eventually(async () => (await h.stopflow.status(instanceId)).volumes[0]?.state === 'detaching', 'waiting');
    await h.stopflow.abort(instanceId);
    await eventually(async () => {
      const progress = await h.stopflow.progress(instanceId);
      return progress.otherWork.some((w) => w.activityType === 'stopInstanceIfDetached');
    }, 'the last step to run');
    await stopAlwaysFails.attachVolume(instanceId, { volumeId: 'vol-late', behavior: { hang: true } });
    await h.client.workflow.getHandle(workflowIdFor(instanceId)).cancel();
    await failedStatus(instanceId);
    const late = (await stopAlwaysFails.instance(instanceId))?.volumes.find((v) => v.volumeId === 'vol-late');
    expect(late?.forceCalls).toBe(0);
  });
});

describe('force and the graceful path', () => {
  test('a volume that detaches gracefully while force keeps failing is detached, and the instance stops', async () => {
    const instanceId = await seeded([{ volumeId: 'vol-late', behavior: { detachDelayMs: 3_000, force: 'fails' } }]);
    await h.stopflow.stop({ instanceId, volumes: refs('vol-late') });
    await volumeReaches(instanceId, 'vol-late', 'detaching');
    await h.stopflow.abort(instanceId);
    const result = await h.stopflow.result(instanceId);
    expect(result.phase).toBe('stopped');
    expect(result.volumes[0]?.state).toBe('detached');
    expect((await h.sim.instance(instanceId))?.leakedAtStop).toEqual([]);
  });

  test('abort reaches a waiting stop without waiting for its next poll', async () => {
    // A poll interval far longer than the stop takes: the wait must hear of the cancel from its heartbeat.
    const slowPolls = await startHarness({ pollIntervalMs: 20_000, holdMs: 60_000 });
    try {
      const instanceId = slowPolls.instanceId('poll');
      await slowPolls.sim.addInstance(instanceId, [{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
      await slowPolls.stopflow.stop({ instanceId, volumes: refs('vol-stuck') });
      await eventually(async () => {
        const status = await slowPolls.stopflow.status(instanceId);
        return status.volumes[0]?.state === 'detaching';
      }, 'the volume to be detaching');
      const aborted = Date.now();
      await slowPolls.stopflow.abort(instanceId);
      const result = await slowPolls.stopflow.result(instanceId);
      expect(result.phase).toBe('stopped');
      expect(Date.now() - aborted).toBeLessThan(15_000);
    } finally {
      await slowPolls.close();
    }
  });
});

describe('the deadline in force decides', () => {
  test('an update that lands with the old timer firing wins over it', async () => {
    const sim = new SimulatedProvider(new MemorySimStore());
    const taskQueue = `race-${randomUUID()}`;
    const instanceId = `race-${randomUUID().slice(0, 8)}`;
    await sim.addInstance(instanceId, [{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
    const start = async () => {
      const connection = await NativeConnection.connect({ address: inject('temporalAddress') });
      const worker = await createStopflowWorker({
        connection,
        taskQueue,
        providers: [sim],
        pollIntervalMs: 200,
        holdMs: 2_000,
        workflowBundle: { codePath: inject('workflowBundlePath') },
      });
      const running = worker.run();
      return async () => {
        worker.shutdown();
        await running;
        await connection.close();
      };
    };
    let stopWorker = await start();
    const stopflow = new StopflowClient({ client: h.client, taskQueue });
    await stopflow.stop({ instanceId, volumes: refs('vol-stuck'), maxStopDuration: '4s' });
    const { deadline } = await eventually(async () => {
      const status = await stopflow.status(instanceId);
      return status.volumes[0]?.state === 'detaching' ? status : undefined;
    }, 'detaching');
    // No worker while the deadline passes: its timer fires into a task nobody takes yet...
    await stopWorker();
    const handle = h.client.workflow.getHandle(workflowIdFor(instanceId));
    // Past the old deadline, with room for the server to fire the timer.
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, Date.parse(deadline ?? '') - Date.now()) + 2_000));
    // ...and the update that moves the deadline lands in that same task.
    const update = handle.startUpdate('setMaxStopDuration', {
      args: [{ maxStopDuration: '1h' }],
      waitForStage: WorkflowUpdateStage.ACCEPTED,
    });
    stopWorker = await start();
    try {
      const accepted = await update;
      const { deadline } = (await accepted.result()) as { deadline: string };
      expect(Date.parse(deadline)).toBeGreaterThan(Date.now() + 30 * 60_000);
      const status = await stopflow.status(instanceId);
      expect(status.escalation).toBeNull();
      expect(status.volumes[0]?.state).toBe('detaching');
      expect((await sim.instance(instanceId))?.volumes[0]?.forceCalls).toBe(0);
      await stopflow.abort(instanceId);
      expect((await stopflow.result(instanceId)).phase).toBe('stopped');
    } finally {
      await stopWorker();
    }
  });
});
