/**
 * `simulated`: a test double of a cloud, for demos and tests (docs/contract.md
 * "Providers"). Volumes can be told to detach slowly, hang in `detaching`
 * until forced, fail their first calls transiently, refuse force, or fail it.
 * State lives in memory, or in a JSON file shared by the worker and the
 * `stopflow sim` CLI so a person can seed a scenario and stop it from any client.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import lockfile from 'proper-lockfile';
import type { VolumeRef } from '../../common/request';
import {
  type AttachmentState,
  type CallBudget,
  type CallOptions,
  type ForceAnswer,
  ForceUnsupportedError,
  PermanentProviderError,
  type Provider,
  ThrottledProviderError,
  TransientProviderError,
  type VolumeOfInstance,
} from '../provider';

/**
 * `fails`: refused, the device still held (nothing forced). `answer-lost`: every force call fails as a timeout does,
 * after the backend acted on it or not (`forceTakesEffectAt`): the caller cannot tell.
 */
export type ForceBehavior = 'ok' | 'unsupported' | 'fails' | 'answer-lost';

export interface SimVolumeBehavior {
  /** Time from the detach request to `detached`; 0 = at once. */
  detachDelayMs: number;
  /** Stays `detaching` until force-detached. */
  hang: boolean;
  /** The first N calls on this volume fail with a transient error. */
  failFirst: number;
  force: ForceBehavior;
  /** `answer-lost`: the force call (1 = the first) that detaches the volume; the calls before it change nothing. */
  forceTakesEffectAt?: number;
}

export interface SimVolume {
  volumeId: string;
  device?: string;
  state: AttachmentState;
  behavior: SimVolumeBehavior;
  detachRequestedAt?: number;
  /** Transitions attached -> detaching: how often the backend really started a detach. */
  detachStarts: number;
  detachCalls: number;
  forceCalls: number;
  forced: boolean;
  failuresServed: number;
}

export interface SimInstance {
  instanceId: string;
  state: 'running' | 'stopped';
  volumes: SimVolume[];
  stopCalls: number;
  /** Volumes still attached when the instance was stopped: the leak stopflow exists to prevent. */
  leakedAtStop: string[];
}

export interface SimCloud {
  instances: Record<string, SimInstance>;
}

export const DEFAULT_BEHAVIOR: SimVolumeBehavior = { detachDelayMs: 0, hang: false, failFirst: 0, force: 'ok' };

/** Where a cloud's state lives. `mutate` runs `fn` atomically against it. */
export interface SimStore {
  read(): Promise<SimCloud>;
  mutate<T>(fn: (cloud: SimCloud) => T): Promise<T>;
}

export class MemorySimStore implements SimStore {
  private cloud: SimCloud = { instances: {} };
  async read(): Promise<SimCloud> {
    return structuredClone(this.cloud);
  }
  async mutate<T>(fn: (cloud: SimCloud) => T): Promise<T> {
    return fn(this.cloud);
  }
}

/** JSON file guarded by a lock file, so the worker and the CLI can share it across processes. */
export class FileSimStore implements SimStore {
  constructor(readonly path: string) {}

  async read(): Promise<SimCloud> {
    try {
      return JSON.parse(await readFile(this.path, 'utf8')) as SimCloud;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { instances: {} };
      throw err;
    }
  }

  async mutate<T>(fn: (cloud: SimCloud) => T): Promise<T> {
    await mkdir(dirname(this.path), { recursive: true });
    // proper-lockfile locks a path that must exist; lock the folder-level marker instead of the data file.
    const marker = `${this.path}.lock-target`;
    await writeFile(marker, '', { flag: 'a' });
    const release = await lockfile.lock(marker, {
      retries: { retries: 200, minTimeout: 5, maxTimeout: 100, factor: 1.5 },
      // A lock whose holder died (a killed worker) is taken over after this; the retries above outlast it.
      stale: 10_000,
    });
    try {
      const cloud = await this.read();
      // Save even when fn throws: a simulated failure still counts (failFirst, forceCalls), as in memory.
      let outcome: { ok: true; value: T } | { ok: false; error: unknown };
      try {
        outcome = { ok: true, value: fn(cloud) };
      } catch (error) {
        outcome = { ok: false, error };
      }
      // A file of its own for every write, renamed into place: even two writers (a lock taken over) never
      // interleave their bytes in one file, and a reader sees one whole version or the other.
      const tmp = `${this.path}.${process.pid}.${randomUUID()}.tmp`;
      await writeFile(tmp, `${JSON.stringify(cloud, null, 2)}\n`);
      await rename(tmp, this.path);
      if (!outcome.ok) throw outcome.error;
      return outcome.value;
    } finally {
      await release();
    }
  }
}

export interface SimFaults {
  /** Probability (0..1) that any call fails transiently, on top of per-volume behaviour. */
  transientFailureRate?: number;
  /** Random latency added to every call, in ms. */
  latencyMs?: readonly [number, number];
  /**
   * A cloud's rate limit: more calls than this per second (a sliding one-second window)
   * are answered "throttled", as EC2 answers RequestLimitExceeded.
   */
  rateLimitPerSecond?: number;
  /** A call that never answers (until cancelled): the slow backend call the activities must be able to cancel. */
  hangCalls?: ReadonlySet<string>;
  /** Operations that always fail transiently (a backend whose listing is broken, say). */
  failCalls?: ReadonlySet<string>;
  /** Operations that take effect but whose answer is lost (a transient error after the fact). */
  loseAnswers?: ReadonlySet<string>;
}

export interface SimulatedProviderOptions {
  name?: string;
  /** The budget the worker keeps to for this provider (see activities/call-budget.ts). */
  budget?: CallBudget;
  /** Most volumes one batched state check takes; 1 turns coalescing off. Default 100. */
  maxBatch?: number;
}

export interface SeedVolume {
  volumeId: string;
  device?: string;
  behavior?: Partial<SimVolumeBehavior>;
}

export class SimulatedProvider implements Provider {
  readonly name: string;
  readonly supportsForce = true;
  /** Its force of a volume already detached answers `not-attached`, as EC2's does. */
  readonly forceRefusesDetached: boolean = true;
  readonly budget?: CallBudget;
  readonly maxBatch: number;
  /** Calls the backend answered (or throttled), by operation: what a cloud's API would bill or limit. */
  readonly calls = new Map<string, number>();
  /** Calls answered "throttled" (rateLimitPerSecond). */
  throttledCalls = 0;
  private recentCalls: number[] = [];

  constructor(
    readonly store: SimStore,
    private readonly faults: SimFaults = {},
    nameOrOptions: string | SimulatedProviderOptions = 'simulated',
  ) {
    const options = typeof nameOrOptions === 'string' ? { name: nameOrOptions } : nameOrOptions;
    this.name = options.name ?? 'simulated';
    if (options.budget) this.budget = options.budget;
    this.maxBatch = options.maxBatch ?? 100;
  }

  /** Total backend calls so far (every operation). */
  totalCalls(): number {
    let total = 0;
    for (const n of this.calls.values()) total += n;
    return total;
  }

  // --- seeding and inspection, used by the `stopflow sim` CLI and tests ---

  async addInstance(instanceId: string, volumes: SeedVolume[]): Promise<void> {
    await this.store.mutate((cloud) => {
      cloud.instances[instanceId] = {
        instanceId,
        state: 'running',
        volumes: volumes.map((v) => newVolume(v)),
        stopCalls: 0,
        leakedAtStop: [],
      };
    });
  }

  /** Attaches a volume to an existing instance (e.g. a leftover attachment after a stop). */
  async attachVolume(instanceId: string, volume: SeedVolume): Promise<void> {
    await this.store.mutate((cloud) => {
      const instance = requireInstance(cloud, instanceId);
      const existing = instance.volumes.find((v) => v.volumeId === volume.volumeId);
      if (existing) {
        existing.state = 'attached';
        delete existing.detachRequestedAt;
      } else {
        instance.volumes.push(newVolume(volume));
      }
    });
  }

  async instance(instanceId: string): Promise<SimInstance | undefined> {
    return (await this.store.read()).instances[instanceId];
  }

  // --- Provider ---

  async listAttachedVolumes(instanceId: string, options?: CallOptions): Promise<VolumeRef[]> {
    await this.chaos('listAttachedVolumes', options);
    return this.store.mutate((cloud) => {
      const instance = requireInstance(cloud, instanceId);
      settle(instance, Date.now());
      return instance.volumes
        .filter((v) => v.state !== 'detached')
        .map((v) => (v.device ? { volumeId: v.volumeId, device: v.device } : { volumeId: v.volumeId }));
    });
  }

  async detachVolume(instanceId: string, volume: VolumeRef, options?: CallOptions): Promise<void> {
    await this.chaos('detachVolume', options);
    await this.store.mutate((cloud) => {
      const v = this.volumeFor(cloud, instanceId, volume.volumeId);
      v.detachCalls++;
      failIfScheduled(v, 'detach');
      if (v.state === 'attached') {
        v.state = 'detaching';
        v.detachRequestedAt = Date.now();
        v.detachStarts++;
      }
    });
  }

  async getAttachmentState(instanceId: string, volume: VolumeRef, options?: CallOptions): Promise<AttachmentState> {
    await this.chaos('getAttachmentState', options);
    return this.store.mutate((cloud) => {
      const v = this.volumeFor(cloud, instanceId, volume.volumeId);
      failIfScheduled(v, 'describe');
      settleVolume(v, Date.now());
      return v.state;
    });
  }

  /** One "describe" for many volumes, like DescribeVolumes with many ids. */
  async getAttachmentStates(
    targets: readonly VolumeOfInstance[],
    options?: CallOptions,
  ): Promise<Array<AttachmentState | Error>> {
    await this.chaos('getAttachmentStates', options);
    return this.store.mutate((cloud) => {
      const now = Date.now();
      // A scheduled failure of any volume fails the whole describe, as one API call would.
      const volumes = targets.map((t) => this.volumeFor(cloud, t.instanceId, t.volume.volumeId));
      for (const v of volumes) failIfScheduled(v, 'describe');
      return volumes.map((v) => {
        settleVolume(v, now);
        return v.state;
      });
    });
  }

  async forceDetachVolume(instanceId: string, volume: VolumeRef, options?: CallOptions): Promise<ForceAnswer> {
    await this.chaos('forceDetachVolume', options);
    return this.store.mutate((cloud): ForceAnswer => {
      const v = this.volumeFor(cloud, instanceId, volume.volumeId);
      v.forceCalls++;
      // Refused, as EC2 refuses it: a volume already detached (a slow detach may have finished by now) is not
      // forced, whatever its force would do.
      settleVolume(v, Date.now());
      if (v.state === 'detached') return 'not-attached';
      if (v.behavior.force === 'unsupported') {
        throw new ForceUnsupportedError(`simulated volume ${v.volumeId} does not support force-detach`);
      }
      if (v.behavior.force === 'fails') {
        throw new TransientProviderError(
          `simulated force-detach of ${v.volumeId} failed: volume still held by the host`,
          true,
        );
      }
      if (v.behavior.force === 'answer-lost') {
        if (v.forceCalls >= (v.behavior.forceTakesEffectAt ?? 1)) {
          v.state = 'detached';
          v.forced = true;
        }
        throw new TransientProviderError(
          `simulated force-detach of ${v.volumeId}: no answer (it may have been applied)`,
        );
      }
      failIfScheduled(v, 'force-detach');
      v.state = 'detached';
      v.forced = true;
      return 'sent';
    });
  }

  async stopInstance(instanceId: string, options?: CallOptions): Promise<void> {
    await this.chaos('stopInstance', options);
    await this.store.mutate((cloud) => {
      const instance = requireInstance(cloud, instanceId);
      settle(instance, Date.now());
      instance.stopCalls++;
      instance.leakedAtStop = instance.volumes.filter((v) => v.state !== 'detached').map((v) => v.volumeId);
      instance.state = 'stopped';
    });
    if (this.faults.loseAnswers?.has('stopInstance')) {
      throw new TransientProviderError(`simulated stopInstance of ${instanceId}: stopped, but the answer was lost`);
    }
  }

  async isInstanceStopped(instanceId: string, options?: CallOptions): Promise<boolean> {
    await this.chaos('isInstanceStopped', options);
    return (await this.store.read()).instances[instanceId]?.state === 'stopped';
  }

  async checkUsable(): Promise<void> {
    await this.store.read();
  }

  private volumeFor(cloud: SimCloud, instanceId: string, volumeId: string): SimVolume {
    const instance = requireInstance(cloud, instanceId);
    const volume = instance.volumes.find((v) => v.volumeId === volumeId);
    if (!volume) {
      // A volume the cloud does not know is not attached to this instance: nothing to detach.
      const ghost = newVolume({ volumeId });
      ghost.state = 'detached';
      instance.volumes.push(ghost);
      return ghost;
    }
    return volume;
  }

  private async chaos(operation: string, options: CallOptions | undefined): Promise<void> {
    const { latencyMs, transientFailureRate, rateLimitPerSecond, hangCalls, failCalls } = this.faults;
    const signal = options?.signal;
    signal?.throwIfAborted();
    this.calls.set(operation, (this.calls.get(operation) ?? 0) + 1);
    if (rateLimitPerSecond !== undefined) {
      const now = Date.now();
      this.recentCalls = this.recentCalls.filter((t) => t > now - 1_000);
      this.recentCalls.push(now);
      if (this.recentCalls.length > rateLimitPerSecond) {
        this.throttledCalls++;
        throw new ThrottledProviderError(`simulated ${operation}: RequestLimitExceeded (over ${rateLimitPerSecond}/s)`);
      }
    }
    const delay = hangCalls?.has(operation)
      ? Number.POSITIVE_INFINITY
      : latencyMs
        ? latencyMs[0] + Math.random() * (latencyMs[1] - latencyMs[0])
        : 0;
    if (delay > 0) await abortableDelay(delay, signal);
    if (failCalls?.has(operation) || (transientFailureRate && Math.random() < transientFailureRate)) {
      throw new TransientProviderError(`simulated transient ${operation} error (injected fault)`);
    }
  }
}

/** Waits `ms` (forever for Infinity), or rejects with the signal's reason when it aborts first. */
function abortableDelay(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = Number.isFinite(ms) ? setTimeout(done, ms) : undefined;
    function done() {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }
    function onAbort() {
      if (timer) clearTimeout(timer);
      reject(signal?.reason ?? new Error('aborted'));
    }
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function newVolume(seed: SeedVolume): SimVolume {
  const volume: SimVolume = {
    volumeId: seed.volumeId,
    state: 'attached',
    behavior: { ...DEFAULT_BEHAVIOR, ...seed.behavior },
    detachStarts: 0,
    detachCalls: 0,
    forceCalls: 0,
    forced: false,
    failuresServed: 0,
  };
  if (seed.device) volume.device = seed.device;
  return volume;
}

function requireInstance(cloud: SimCloud, instanceId: string): SimInstance {
  const instance = cloud.instances[instanceId];
  if (!instance) throw new PermanentProviderError(`simulated cloud has no instance ${instanceId}`);
  return instance;
}

function failIfScheduled(v: SimVolume, what: string): void {
  if (v.failuresServed < v.behavior.failFirst) {
    v.failuresServed++;
    throw new TransientProviderError(
      `simulated ${what} of ${v.volumeId} failed transiently (${v.failuresServed}/${v.behavior.failFirst})`,
    );
  }
}

function settleVolume(v: SimVolume, now: number): void {
  if (v.state !== 'detaching' || v.behavior.hang || v.detachRequestedAt === undefined) return;
  if (now - v.detachRequestedAt >= v.behavior.detachDelayMs) v.state = 'detached';
}

function settle(instance: SimInstance, now: number): void {
  for (const v of instance.volumes) settleVolume(v, now);
}

/**
 * Parses the CLI's volume spec: `vol-a`, `vol-b:stuck`, `vol-c:slow=5s`,
 * `vol-d:flaky=3`, `vol-e:stuck,no-force`, `vol-f:stuck,force-fails`,
 * `vol-g@/dev/xvdf`.
 */
export function parseVolumeSpec(spec: string, parseMs: (text: string) => number | null | undefined): SeedVolume {
  const [head = '', options = ''] = spec.split(/:(.*)/s, 2);
  const [volumeId = '', device] = head.split('@', 2);
  if (!/^[A-Za-z0-9._-]{1,255}$/.test(volumeId)) {
    throw new Error(`volume spec "${spec}": the volume id must be 1-255 characters of [A-Za-z0-9._-]`);
  }
  const behavior: Partial<SimVolumeBehavior> = {};
  for (const option of options.split(',').filter(Boolean)) {
    const [key, value] = option.split('=', 2);
    if (key === 'stuck' || key === 'hang') behavior.hang = true;
    else if (key === 'no-force') behavior.force = 'unsupported';
    else if (key === 'force-fails') behavior.force = 'fails';
    else if (key === 'slow') {
      const ms = value === undefined ? undefined : parseMs(value);
      if (typeof ms !== 'number') throw new Error(`volume spec "${spec}": slow= needs a duration such as slow=5s`);
      behavior.detachDelayMs = ms;
    } else if (key === 'flaky') {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 1)
        throw new Error(`volume spec "${spec}": flaky= needs a whole number of failures such as flaky=3`);
      behavior.failFirst = n;
    } else {
      throw new Error(
        `volume spec "${spec}": unknown option "${option}" (known: stuck, slow=<duration>, flaky=<n>, no-force, force-fails)`,
      );
    }
  }
  const seed: SeedVolume = { volumeId, behavior };
  if (device) seed.device = device;
  return seed;
}

/** The file the worker and `stopflow sim` share: STOPFLOW_SIM_STATE, or .stopflow/sim-cloud.json. */
export function simStatePath(env: NodeJS.ProcessEnv = process.env): string {
  return env.STOPFLOW_SIM_STATE || '.stopflow/sim-cloud.json';
}
