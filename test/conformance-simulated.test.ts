/** The simulated cloud passes the provider conformance suite, like every real backend must. */
import { MemorySimStore, SimulatedProvider } from '../activities/providers/simulated';
import { describeProviderConformance } from './conformance/provider-conformance';

describeProviderConformance(
  'simulated',
  async () => {
    const sim = new SimulatedProvider(new MemorySimStore());
    let n = 0;
    return {
      provider: sim,
      missingVolume: { volumeId: 'vol-never-attached' },
      async createInstance() {
        const instanceId = `i-conformance-${++n}`;
        await sim.addInstance(instanceId, [
          { volumeId: 'vol-a', device: '/dev/xvdf' },
          { volumeId: 'vol-slow', behavior: { detachDelayMs: 200 } },
          { volumeId: 'vol-stuck', behavior: { hang: true } },
        ]);
        return {
          instanceId,
          healthy: [{ volumeId: 'vol-a', device: '/dev/xvdf' }, { volumeId: 'vol-slow' }],
          stuck: { volumeId: 'vol-stuck' },
        };
      },
      async instanceStopped(instanceId) {
        return (await sim.instance(instanceId))?.state === 'stopped';
      },
      async unstick(instance) {
        await sim.store.mutate((cloud) => {
          const volume = cloud.instances[instance.instanceId]?.volumes.find(
            (v) => v.volumeId === instance.stuck.volumeId,
          );
          if (volume) volume.behavior.hang = false;
        });
      },
      async createForceRefusingVolume() {
        const instanceId = `i-conformance-${++n}`;
        await sim.addInstance(instanceId, [
          { volumeId: 'vol-no-force', behavior: { hang: true, force: 'unsupported' } },
        ]);
        return { instanceId, volume: { volumeId: 'vol-no-force' } };
      },
    };
  },
  { volumesCanRefuseForce: true },
);
