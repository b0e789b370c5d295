/**
 * Volume ownership (patch `ownership-events`): every stop is findable by the volumes it holds, through
 * the `StopVolumes` search attribute, and a stop refuses (VolumeHeld) a volume that a running stop of
 * another instance holds, before it detaches anything. The question goes to visibility through a
 * local activity: one marker event, no extra workflow task. Visibility is eventually consistent, so
 * this catches a second stop of a held volume, not two started in the same second.
 */
import {
  ApplicationFailure,
  log,
  proxyLocalActivities,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import { StopVolumesKey, VOLUME_HELD } from '../common/names';
import {
  type FindVolumeHoldersInput,
  MAX_STOP_VOLUMES_BYTES,
  type OwnershipEventActivities,
  REFUSED_NOTHING_DETACHED,
  stopVolumesValue,
  type VolumeHolder,
  type WorkerAnswers,
} from '../common/ownership-events';
import type { StopStatus } from '../common/status';
import { workerCouldNotAnswer } from './local-answers';

const local = proxyLocalActivities<OwnershipEventActivities>({
  // One short try, then the stop goes on unchecked: visibility that is away or throttled (its default is 10
  // requests a second per namespace, and an incident starts thousands of stops) must not hold stops back.
  startToCloseTimeout: '5s',
  retry: { maximumAttempts: 1 },
});

/**
 * Adds these volume ids to StopVolumes: one upsert when the set grows, none when it already holds them,
 * and none when the list would outgrow what Temporal takes in one search attribute (the server would fail
 * the stop): such a stop is not findable by its volumes, and logs it.
 */
export function publishVolumes(volumeIds: readonly string[]): void {
  const current = workflowInfo().typedSearchAttributes.get(StopVolumesKey) ?? [];
  const next = [...new Set([...current, ...volumeIds])];
  if (next.length === current.length) return;
  const value = stopVolumesValue(next);
  if (!value) {
    log.warn('StopVolumes would exceed the size Temporal allows; this stop is not findable by its volumes', {
      volumes: next.length,
      maxBytes: MAX_STOP_VOLUMES_BYTES,
    });
    return;
  }
  upsertSearchAttributes([{ key: StopVolumesKey, value }]);
}

/**
 * Running stops of other instances, started before this one, that hold any of these volumes; none when
 * visibility cannot say. Only earlier stops count, so two stops that see each other never refuse each other.
 */
export async function otherHolders(volumeIds: readonly string[], startedAtMs: number): Promise<VolumeHolder[]> {
  if (volumeIds.length === 0) return [];
  return (await ask(volumeIds, () => local.findVolumeHolders(question(volumeIds, startedAtMs)))) ?? [];
}

/**
 * askWorker (patch `ask-worker-once`): otherHolders and whether completion events are configured, in one
 * local activity, asked even for a stop with no volume. Null when the worker could not answer: the stop
 * then goes on unchecked, and asks about completion events again at its end.
 */
export async function askWorker(volumeIds: readonly string[], startedAtMs: number): Promise<WorkerAnswers | null> {
  const answers = await ask(volumeIds, () => local.askWorker(question(volumeIds, startedAtMs)));
  if (answers?.holders === null) uncheckedWarning(volumeIds);
  return answers;
}

function question(volumeIds: readonly string[], startedAtMs: number): FindVolumeHoldersInput {
  return {
    workflowId: workflowInfo().workflowId,
    startedAt: new Date(startedAtMs).toISOString(),
    volumeIds: [...volumeIds],
  };
}

/** A local activity's answer, or null (and a warning) when it failed: the stop goes on unchecked. */
async function ask<T>(volumeIds: readonly string[], call: () => Promise<T>): Promise<T | null> {
  try {
    return await call();
  } catch (err) {
    if (!workerCouldNotAnswer(err)) throw err;
    uncheckedWarning(volumeIds, err.message);
    return null;
  }
}

function uncheckedWarning(volumeIds: readonly string[], error?: string): void {
  log.warn('could not ask who else holds these volumes; going on unchecked', {
    volumeIds,
    ...(error ? { error } : {}),
  });
}

/** "vol-1 is held by the running stop stop-i-2 (instance i-2, run …)" for each held volume. */
export function heldMessage(instanceId: string, holders: readonly VolumeHolder[]): string {
  const which = holders
    .map((h) => `${h.volumeId} is held by the running stop ${h.workflowId} (instance ${h.instanceId}, run ${h.runId})`)
    .join('; ');
  return `the stop of ${instanceId} ${REFUSED_NOTHING_DETACHED}: ${which}`;
}

/** The VolumeHeld failure: final; details are the final StopStatus and the holders. */
export function volumeHeld(message: string, status: StopStatus, holders: readonly VolumeHolder[]): ApplicationFailure {
  return ApplicationFailure.create({
    message,
    type: VOLUME_HELD,
    nonRetryable: true,
    details: [status, holders],
  });
}

/** A refused stop never held its volumes: it leaves StopVolumes empty, so it is not found as their holder. */
export function releaseVolumes(): void {
  if ((workflowInfo().typedSearchAttributes.get(StopVolumesKey) ?? []).length === 0) return;
  upsertSearchAttributes([{ key: StopVolumesKey, value: [] }]);
}
