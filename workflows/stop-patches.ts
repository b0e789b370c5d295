/**
 * The patches a stop asks at its start, and the rules they give it (test/replay.test.ts replays the histories of
 * every version; docs/contract.md "Versions" lists them). stop-instance.ts asks `oneMarker` and `reconciler`, then
 * `rulesOf` asks the rest it needs, in this order, once; the stop's state keeps the rules. Patches asked only on one
 * path are asked there (stop-if-detached.ts, local-answers.ts, volume-path.ts).
 */
import { patched } from '@temporalio/workflow';
import type { StopState } from './stop-state';

export const STOP_PATCHES = {
  /**
   * Version 11: a stop started on it asks this patch alone, where it asked the three below, and follows all three.
   * Each patch asked costs a stop a marker and the SDK's `TemporalChangeVersion` upsert, a visibility write on the
   * server. Stops started before it replay the three as they ran (the patch is false there: no marker). Asked only
   * at the start of stop-instance.ts, and kept: asked again once a replayed older stop runs live, it would say true.
   */
  oneMarker: 'one-marker',
  /** Version 3: stop-instance.ts. Stops started before it run workflows/legacy/stop-instance-v2.ts. */
  reconciler: 'reconciler',
} as const;

/**
 * Version 4: StopVolumes kept current, a volume another instance's running stop holds refused (VolumeHeld), and a
 * completion event handed to a deliverStopEvent child when the stop ends (if the worker has an endpoint), and every
 * volume waiting on one interruption promise (volume-path.ts). One patch for all three: every patch costs a marker
 * and a search-attribute upsert in history.
 */
const OWNERSHIP_EVENTS = 'ownership-events';
/**
 * Version 5: the worker's two answers (volume holders, completion events configured) come from one local activity
 * before the first detach, not two: each costs a stop a round trip and an activation (both together about 12 of the
 * 94 ms of CPU a stop took in the throughput benchmark). Only after OWNERSHIP_EVENTS.
 */
const ASK_WORKER_ONCE = 'ask-worker-once';

/**
 * The rules of a stop, given whether it has the one-marker patch: all of them if so; otherwise as its history says,
 * asking the older patches in the order they were always asked.
 */
export function rulesOf(oneMarker: boolean): StopState['features'] {
  const ownershipEvents = oneMarker || patched(OWNERSHIP_EVENTS);
  return {
    volumeOwnership: ownershipEvents,
    completionEvents: ownershipEvents,
    sharedInterruption: ownershipEvents,
    askWorkerOnce: oneMarker || (ownershipEvents && patched(ASK_WORKER_ONCE)),
  };
}
