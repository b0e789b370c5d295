/**
 * askWorker (and findVolumeHolders, for stops started before it), the local activity behind volume ownership
 * (workflows/volume-ownership.ts): which running stops of other instances hold these volumes, as visibility
 * sees their StopVolumes, and whether this worker delivers completion events.
 */
import { Context } from '@temporalio/activity';
import type { Client } from '@temporalio/client';
import { StopVolumesKey, WORKFLOW_TYPE } from '../common/names';
import {
  type FindVolumeHoldersInput,
  type OwnershipEventActivities,
  type VolumeHolder,
  volumeHoldersQuery,
  type WorkerAnswers,
} from '../common/ownership-events';

const STOP_ID_PREFIX = 'stop-';

export interface VolumeHolderOptions {
  /**
   * Refuse volumes held by another instance's running stop. Off by default for an embedded worker: it is
   * right only where a volume id names one volume on the task queue's backend (aws, gcp, azure; not a
   * simulated cloud whose instances reuse names). The worker binary turns it on (STOPFLOW_REFUSE_HELD_VOLUMES).
   */
  refuse?: boolean;
}

export function createVolumeHolderActivities(client: Client, options: VolumeHolderOptions = {}) {
  return {
    async findVolumeHolders(input: FindVolumeHoldersInput): Promise<VolumeHolder[]> {
      // No volume, nothing to hold (and visibility refuses an empty `IN ()`).
      if (!options.refuse || input.volumeIds.length === 0) return [];
      const askedAt = Date.parse(input.startedAt);
      const holders: VolumeHolder[] = [];
      const query = volumeHoldersQuery(input.volumeIds, { taskQueue: Context.current().info.taskQueue });
      for await (const execution of client.workflow.list({ query })) {
        if (execution.type !== WORKFLOW_TYPE || execution.workflowId === input.workflowId) continue;
        // The earlier stop keeps the volume: two stops that see each other never refuse each other.
        const started = execution.startTime.getTime();
        if (started > askedAt || (started === askedAt && execution.workflowId > input.workflowId)) continue;
        const held = new Set(execution.typedSearchAttributes.get(StopVolumesKey) ?? []);
        for (const volumeId of input.volumeIds) {
          if (!held.has(volumeId)) continue;
          holders.push({
            volumeId,
            workflowId: execution.workflowId,
            runId: execution.runId,
            instanceId: execution.workflowId.startsWith(STOP_ID_PREFIX)
              ? execution.workflowId.slice(STOP_ID_PREFIX.length)
              : execution.workflowId,
          });
        }
      }
      return holders;
    },
  };
}

/**
 * askWorker from the worker's own two answers, as registered (an embedded worker may register its own
 * completionEventsConfigured): both in one marker, since each local activity costs a stop a round trip
 * and an activation. Visibility failing (throttled in an incident) loses the holders only: `null`, and
 * the stop goes on unchecked, still knowing about completion events.
 */
export function askWorkerActivity(answers: {
  findVolumeHolders(input: FindVolumeHoldersInput): Promise<VolumeHolder[]>;
  completionEventsConfigured(): Promise<boolean>;
}): Pick<OwnershipEventActivities, 'askWorker'> {
  return {
    async askWorker(input: FindVolumeHoldersInput): Promise<WorkerAnswers> {
      const completionEvents = await answers.completionEventsConfigured();
      try {
        return { holders: await answers.findVolumeHolders(input), completionEvents };
      } catch (err) {
        Context.current().log.warn('could not ask visibility who else holds these volumes', {
          volumeIds: input.volumeIds,
          error: err instanceof Error ? err.message : String(err),
        });
        return { holders: null, completionEvents };
      }
    },
  };
}
