/**
 * In-process news that a volume was just forced: a wait on it in this worker (polling in place, or in the watch
 * list) looks again at once instead of at its next poll, so a stop's cancelled wait ends with its force. One per
 * worker, held by its Backends.
 */
import type { VolumeTarget } from '../common/stop-activities';

export class ForcedVolumes {
  private readonly waiting = new Map<string, Set<() => void>>();

  static key(provider: string, target: VolumeTarget): string {
    return `${provider}\u0000${target.instanceId}\u0000${target.volume.volumeId}`;
  }

  forced(key: string): void {
    for (const wake of this.waiting.get(key) ?? []) wake();
  }

  /** Calls `wake` at each force of the volume here, until `unlisten`: the watch list listens for a wait's whole stay. */
  listen(key: string, wake: () => void): void {
    const wakes = this.waiting.get(key);
    if (wakes) wakes.add(wake);
    else this.waiting.set(key, new Set([wake]));
  }

  unlisten(key: string, wake: () => void): void {
    const wakes = this.waiting.get(key);
    if (wakes?.delete(wake) && wakes.size === 0) this.waiting.delete(key);
  }

  /** Resolves when the volume is forced here, or when `sleeping` does; rejects when it rejects first (a cancel). */
  async pause(key: string, sleeping: Promise<void>): Promise<void> {
    let wake: () => void = () => undefined;
    const news = new Promise<void>((resolve) => {
      wake = resolve;
    });
    this.listen(key, wake);
    sleeping.catch(() => undefined); // when the news wins, a later cancel of the sleep is nobody's business
    try {
      await Promise.race([sleeping, news]);
    } finally {
      this.unlisten(key, wake);
    }
  }
}
