import type { VolumeRef } from '../common/request';

/**
 * One interface for every backend (DESIGN.md "Providers"). Adapters report the
 * backend's actual state; the workflow owns the desired state and the
 * activities reconcile one towards the other.
 */
export type AttachmentState = 'attached' | 'detaching' | 'detached';

export interface Provider {
  /** The name requests use to choose this provider ("simulated", "linux", "aws"). */
  readonly name: string;
  /** Whether the backend has a forced detach at all; a volume may still refuse it (ForceUnsupportedError). */
  readonly supportsForce: boolean;
  listAttachedVolumes(instanceId: string): Promise<VolumeRef[]>;
  /** Requests a normal detach. Idempotent: a volume already detaching or detached is success. */
  detachVolume(instanceId: string, volume: VolumeRef): Promise<void>;
  getAttachmentState(instanceId: string, volume: VolumeRef): Promise<AttachmentState>;
  /** Forces the detach; may lose unflushed writes. Idempotent like detachVolume. */
  forceDetachVolume(instanceId: string, volume: VolumeRef): Promise<void>;
  stopInstance(instanceId: string): Promise<void>;
  /** Start-up check: throws with a clear message when the backend cannot be used from this worker. */
  checkUsable?(): Promise<void>;
}

/** A failure worth retrying: throttling, timeouts, 5xx, a busy device. */
export class TransientProviderError extends Error {
  override name = 'TransientProviderError';
}

/** The backend cannot force-detach this volume; retrying will not change that. */
export class ForceUnsupportedError extends Error {
  override name = 'ForceUnsupported';
}

/** A failure no retry will fix (unknown instance, permission denied, bad configuration). */
export class PermanentProviderError extends Error {
  override name = 'PermanentProviderError';
}
