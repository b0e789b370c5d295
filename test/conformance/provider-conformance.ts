/**
 * The provider conformance suite: what the workflow relies on from every
 * backend, checked against the backend itself (simulated, a real Linux host,
 * EC2 through the real SDK). A new provider is done when it passes this.
 *
 *   describeProviderConformance('aws', async () => ({ provider, createInstance, ... }));
 *
 * The fixture knows how to make, on its backend, an instance with volumes
 * that detach normally and one whose detach hangs until forced, and how to
 * tell whether the instance was stopped. Optional abilities (letting a stuck
 * volume go, a volume that refuses force) turn on the tests that need them.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { type AttachmentState, ForceUnsupportedError, type Provider } from '../../activities/provider';
import type { VolumeRef } from '../../common/request';

export interface ConformanceInstance {
  instanceId: string;
  /** Volumes whose detach completes by itself (at least one). */
  healthy: VolumeRef[];
  /** A volume whose detach hangs in `detaching` until it is forced (Linux: a mount held busy). */
  stuck: VolumeRef;
}

export interface ConformanceFixture {
  provider: Provider;
  /** A fresh running instance with its volumes attached. */
  createInstance(): Promise<ConformanceInstance>;
  /** A volume attached to nothing (it may not even exist). */
  missingVolume: VolumeRef;
  /** Whether the backend says the instance is stopped. */
  instanceStopped(instanceId: string): Promise<boolean>;
  /** Lets the stuck volume's pending detach finish by itself (its holder lets go). */
  unstick(instance: ConformanceInstance): Promise<void>;
  /** A volume (of its own instance) that refuses force, for backends that can refuse per volume. */
  createForceRefusingVolume?(): Promise<{ instanceId: string; volume: VolumeRef }>;
  /** After each test: release what its instances still hold. */
  afterEach?(): Promise<void>;
  close?(): Promise<void>;
}

export interface ConformanceOptions {
  /** Longest wait for a volume to reach a state. Default 20 s. */
  settleTimeoutMs?: number;
  /** Pause between state checks. Default 50 ms. */
  pollMs?: number;
  /** How long a stuck detach must keep reading `detaching`. Default 500 ms. */
  stuckForMs?: number;
  /** The backend can have single volumes that refuse force (the fixture's createForceRefusingVolume makes one). */
  volumesCanRefuseForce?: boolean;
}

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export function describeProviderConformance(
  name: string,
  factory: () => Promise<ConformanceFixture>,
  options: ConformanceOptions = {},
): void {
  const settleTimeoutMs = options.settleTimeoutMs ?? 20_000;
  const pollMs = options.pollMs ?? 50;
  const stuckForMs = options.stuckForMs ?? 500;

  describe(`provider conformance: ${name}`, () => {
    let fixture: ConformanceFixture;
    let provider: Provider;

    beforeAll(async () => {
      fixture = await factory();
      provider = fixture.provider;
    });
    afterEach(async () => {
      await fixture?.afterEach?.();
    });
    afterAll(async () => {
      await fixture?.close?.();
    });

    /** Polls until the volume reads `want`; returns every state seen on the way. */
    async function reach(instanceId: string, volume: VolumeRef, want: AttachmentState): Promise<AttachmentState[]> {
      const seen: AttachmentState[] = [];
      const deadline = Date.now() + settleTimeoutMs;
      for (;;) {
        const state = await provider.getAttachmentState(instanceId, volume);
        seen.push(state);
        if (state === want) return seen;
        if (Date.now() > deadline) {
          throw new Error(
            `${volume.volumeId} did not reach ${want} within ${settleTimeoutMs}ms (saw ${seen.join(' → ')})`,
          );
        }
        await pause(pollMs);
      }
    }

    /** The volume keeps reading `detaching` for a while: it is stuck, not slow. */
    async function staysDetaching(instanceId: string, volume: VolumeRef): Promise<void> {
      await reach(instanceId, volume, 'detaching');
      const until = Date.now() + stuckForMs;
      while (Date.now() < until) {
        expect(await provider.getAttachmentState(instanceId, volume)).toBe('detaching');
        await pause(Math.max(pollMs, stuckForMs / 5));
      }
    }

    test('has a name and declares whether it can force', () => {
      expect(provider.name).toMatch(/^[a-z][a-z0-9-]{0,62}$/);
      expect(typeof provider.supportsForce).toBe('boolean');
    });

    test('listAttachedVolumes lists every attached volume of the instance, each once', async () => {
      const instance = await fixture.createInstance();
      const listed = await provider.listAttachedVolumes(instance.instanceId);
      const ids = listed.map((v) => v.volumeId);
      expect(ids).toEqual(expect.arrayContaining([...instance.healthy, instance.stuck].map((v) => v.volumeId)));
      expect(new Set(ids).size).toBe(ids.length);
      // What it lists is in the shape a StopRequest carries, so it can be detached as listed.
      for (const volume of listed) {
        expect(volume.volumeId).toMatch(/^[A-Za-z0-9._:-]{1,255}$/);
        if (volume.device !== undefined) expect(volume.device.length).toBeGreaterThan(0);
      }
    });

    test('detach ends detached; asking again, or after, is a success', async () => {
      const instance = await fixture.createInstance();
      const [volume] = instance.healthy as [VolumeRef];
      expect(await provider.getAttachmentState(instance.instanceId, volume)).toBe('attached');
      await provider.detachVolume(instance.instanceId, volume);
      await provider.detachVolume(instance.instanceId, volume); // while detaching (or already detached)
      await reach(instance.instanceId, volume, 'detached');
      await provider.detachVolume(instance.instanceId, volume);
      expect(await provider.getAttachmentState(instance.instanceId, volume)).toBe('detached');
      const listed = (await provider.listAttachedVolumes(instance.instanceId)).map((v) => v.volumeId);
      expect(listed).not.toContain(volume.volumeId);
      expect(listed).toContain(instance.stuck.volumeId);
    });

    test('a volume attached to nothing is already detached', async () => {
      const instance = await fixture.createInstance();
      const missing = fixture.missingVolume;
      expect(await provider.getAttachmentState(instance.instanceId, missing)).toBe('detached');
      await provider.detachVolume(instance.instanceId, missing);
      if (provider.supportsForce) {
        const answer = await provider.forceDetachVolume(instance.instanceId, missing);
        // Declared: the force-detach activity sends its first force unread, and trusts this answer.
        if (provider.forceRefusesDetached) expect(answer).toBe('not-attached');
      }
      expect(await provider.getAttachmentState(instance.instanceId, missing)).toBe('detached');
    });

    test('a stuck detach reads detaching, and asking again changes nothing', async () => {
      const instance = await fixture.createInstance();
      const { stuck } = instance;
      expect(await provider.getAttachmentState(instance.instanceId, stuck)).toBe('attached');
      await provider.detachVolume(instance.instanceId, stuck);
      await staysDetaching(instance.instanceId, stuck);
      await provider.detachVolume(instance.instanceId, stuck);
      await staysDetaching(instance.instanceId, stuck);
      // Still the instance's volume while it hangs.
      const listed = (await provider.listAttachedVolumes(instance.instanceId)).map((v) => v.volumeId);
      expect(listed).toContain(stuck.volumeId);
    });

    test('force-detach is supported or refused, as declared', async () => {
      const instance = await fixture.createInstance();
      const { stuck } = instance;
      await provider.detachVolume(instance.instanceId, stuck);
      await reach(instance.instanceId, stuck, 'detaching');
      if (!provider.supportsForce) {
        await expect(provider.forceDetachVolume(instance.instanceId, stuck)).rejects.toBeInstanceOf(
          ForceUnsupportedError,
        );
        return;
      }
      expect(await provider.forceDetachVolume(instance.instanceId, stuck)).toBe('sent');
      await reach(instance.instanceId, stuck, 'detached');
      // Idempotent, and the graceful request that may still be retried is harmless now.
      const again = await provider.forceDetachVolume(instance.instanceId, stuck);
      if (provider.forceRefusesDetached) expect(again).toBe('not-attached');
      await provider.detachVolume(instance.instanceId, stuck);
      expect(await provider.getAttachmentState(instance.instanceId, stuck)).toBe('detached');
    });

    test('force on a volume attached normally detaches it, or is refused as declared', async () => {
      const instance = await fixture.createInstance();
      const [volume] = instance.healthy as [VolumeRef];
      if (!provider.supportsForce) {
        await expect(provider.forceDetachVolume(instance.instanceId, volume)).rejects.toBeInstanceOf(
          ForceUnsupportedError,
        );
        return;
      }
      expect(await provider.forceDetachVolume(instance.instanceId, volume)).toBe('sent');
      await reach(instance.instanceId, volume, 'detached');
    });

    // Registered only for backends that declare per-volume refusals, so no test is left skipped.
    if (options.volumesCanRefuseForce) {
      test('a volume that refuses force says so with ForceUnsupportedError', async () => {
        const { instanceId, volume } = await (
          fixture.createForceRefusingVolume as NonNullable<ConformanceFixture['createForceRefusingVolume']>
        )();
        await expect(provider.forceDetachVolume(instanceId, volume)).rejects.toBeInstanceOf(ForceUnsupportedError);
      });
    }

    test('a stuck detach completes by itself once the backend lets go', async () => {
      const instance = await fixture.createInstance();
      await provider.detachVolume(instance.instanceId, instance.stuck);
      await reach(instance.instanceId, instance.stuck, 'detaching');
      await fixture.unstick(instance);
      await reach(instance.instanceId, instance.stuck, 'detached');
    });

    test('stopInstance stops the instance once its volumes are detached; again is a success', async () => {
      const instance = await fixture.createInstance();
      for (const volume of instance.healthy) await provider.detachVolume(instance.instanceId, volume);
      if (provider.supportsForce) await provider.forceDetachVolume(instance.instanceId, instance.stuck);
      for (const volume of instance.healthy) await reach(instance.instanceId, volume, 'detached');
      expect(await fixture.instanceStopped(instance.instanceId)).toBe(false);
      await provider.stopInstance(instance.instanceId);
      expect(await fixture.instanceStopped(instance.instanceId)).toBe(true);
      await provider.stopInstance(instance.instanceId);
      expect(await fixture.instanceStopped(instance.instanceId)).toBe(true);
    });
  });
}
