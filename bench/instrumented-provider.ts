/**
 * Wraps a provider to record when each call reached the backend, as seen from
 * inside the activity (Date.now() on the worker's clock). The reaction
 * benchmark reads force-detach start times from it; the history benchmark
 * counts how often a stuck volume was checked.
 */

import type { AttachmentState, ForceAnswer, Provider } from '../activities/provider';
import type { VolumeRef } from '../common/request';

type Operation = 'detachVolume' | 'getAttachmentState' | 'forceDetachVolume';

const key = (instanceId: string, volumeId: string) => `${instanceId}/${volumeId}`;

export class InstrumentedProvider implements Provider {
  readonly name: string;
  readonly supportsForce: boolean;
  readonly forceRefusesDetached?: boolean;
  /** First call time per operation and volume. */
  private readonly first = new Map<string, number>();
  private readonly counts = new Map<string, number>();
  private readonly waiters = new Map<string, Array<(at: number) => void>>();

  constructor(private readonly inner: Provider) {
    this.name = inner.name;
    this.supportsForce = inner.supportsForce;
    if (inner.forceRefusesDetached !== undefined) this.forceRefusesDetached = inner.forceRefusesDetached;
  }

  private record(operation: Operation, instanceId: string, volumeId: string): void {
    const k = `${operation}:${key(instanceId, volumeId)}`;
    const now = Date.now();
    this.counts.set(k, (this.counts.get(k) ?? 0) + 1);
    if (this.first.has(k)) return;
    this.first.set(k, now);
    for (const wake of this.waiters.get(k) ?? []) wake(now);
    this.waiters.delete(k);
  }

  /** When `operation` first reached the backend for this volume (resolves at once if it already has). */
  firstCall(operation: Operation, instanceId: string, volumeId: string): Promise<number> {
    const k = `${operation}:${key(instanceId, volumeId)}`;
    const at = this.first.get(k);
    if (at !== undefined) return Promise.resolve(at);
    return new Promise((resolve) => {
      const list = this.waiters.get(k) ?? [];
      list.push(resolve);
      this.waiters.set(k, list);
    });
  }

  calls(operation: Operation, instanceId: string, volumeId: string): number {
    return this.counts.get(`${operation}:${key(instanceId, volumeId)}`) ?? 0;
  }

  listAttachedVolumes(instanceId: string): Promise<VolumeRef[]> {
    return this.inner.listAttachedVolumes(instanceId);
  }

  detachVolume(instanceId: string, volume: VolumeRef): Promise<void> {
    this.record('detachVolume', instanceId, volume.volumeId);
    return this.inner.detachVolume(instanceId, volume);
  }

  getAttachmentState(instanceId: string, volume: VolumeRef): Promise<AttachmentState> {
    this.record('getAttachmentState', instanceId, volume.volumeId);
    return this.inner.getAttachmentState(instanceId, volume);
  }

  forceDetachVolume(instanceId: string, volume: VolumeRef): Promise<ForceAnswer> {
    this.record('forceDetachVolume', instanceId, volume.volumeId);
    return this.inner.forceDetachVolume(instanceId, volume);
  }

  stopInstance(instanceId: string): Promise<void> {
    return this.inner.stopInstance(instanceId);
  }
}
