/** `stopflow sim …`: seed and inspect the simulated cloud that a worker with the simulated provider uses. */
import type { Command } from 'commander';
import {
  FileSimStore,
  parseVolumeSpec,
  type SimInstance,
  SimulatedProvider,
  simStatePath,
} from '../../activities/providers/simulated';
import { parseDuration } from '../../common/duration';
import { ID_PATTERN, INSTANCE_ID_RULE } from '../../common/request';
import { CliError, EXIT } from './errors';

function provider(): SimulatedProvider {
  return new SimulatedProvider(new FileSimStore(simStatePath()));
}

function volumes(specs: string[]) {
  try {
    return specs.map((spec) => parseVolumeSpec(spec, parseDuration));
  } catch (err) {
    throw new CliError((err as Error).message, EXIT.badInput);
  }
}

function checkId(instanceId: string): void {
  if (!ID_PATTERN.test(instanceId)) throw new CliError(`instanceId: ${INSTANCE_ID_RULE}`, EXIT.badInput);
}

export function describeSimInstance(instance: SimInstance): string {
  const lines = [
    `${instance.instanceId}: ${instance.state}${instance.leakedAtStop.length ? ` (stopped with ${instance.leakedAtStop.join(', ')} still attached!)` : ''}`,
  ];
  for (const v of instance.volumes) {
    const traits = [
      v.behavior.hang ? 'stuck' : '',
      v.behavior.detachDelayMs ? `slow=${v.behavior.detachDelayMs}ms` : '',
      v.behavior.failFirst ? `flaky=${v.behavior.failFirst}` : '',
      v.behavior.force !== 'ok' ? `force ${v.behavior.force}` : '',
    ].filter(Boolean);
    lines.push(
      `  ${v.volumeId}${v.device ? ` (${v.device})` : ''}: ${v.state}${v.forced ? ' (forced)' : ''}${traits.length ? ` [${traits.join(', ')}]` : ''}, detach calls ${v.detachCalls}, force calls ${v.forceCalls}`,
    );
  }
  return lines.join('\n');
}

const collect = (value: string, previous: string[]) => [...previous, value];

export function registerSimCommands(program: Command): void {
  const sim = program
    .command('sim')
    .description(`seed and inspect the simulated cloud (state file: STOPFLOW_SIM_STATE, default ${simStatePath({})})`);

  sim
    .command('add-instance')
    .argument('<instanceId>')
    .option(
      '--volume <spec>',
      'a volume: vol-a, vol-b:stuck, vol-c:slow=5s, vol-d:flaky=3, vol-e:stuck,no-force, vol-f:stuck,force-fails, vol-g@/dev/xvdf (repeatable)',
      collect,
      [],
    )
    .description('add (or replace) a running instance with attached volumes')
    .action(async (instanceId: string, opts: { volume: string[] }) => {
      checkId(instanceId);
      const p = provider();
      await p.addInstance(instanceId, volumes(opts.volume));
      const instance = await p.instance(instanceId);
      if (instance) console.log(describeSimInstance(instance));
    });

  sim
    .command('attach')
    .argument('<instanceId>')
    .argument('<volumeSpec>')
    .description('attach a volume to an existing instance (for example a leftover after a stop)')
    .action(async (instanceId: string, spec: string) => {
      checkId(instanceId);
      const p = provider();
      const [volume] = volumes([spec]);
      if (!volume) throw new CliError('a volume spec is required', EXIT.badInput);
      try {
        await p.attachVolume(instanceId, volume);
      } catch (err) {
        throw new CliError((err as Error).message, EXIT.notFoundOrNoConnection);
      }
      const instance = await p.instance(instanceId);
      if (instance) console.log(describeSimInstance(instance));
    });

  sim
    .command('show')
    .argument('[instanceId]')
    .option('--json', 'print the raw state')
    .description('show the simulated cloud, or one instance')
    .action(async (instanceId: string | undefined, opts: { json?: boolean }) => {
      const cloud = await provider().store.read();
      const instances = instanceId
        ? [cloud.instances[instanceId]].filter((i) => i !== undefined)
        : Object.values(cloud.instances);
      if (instanceId && instances.length === 0) {
        throw new CliError(`the simulated cloud has no instance ${instanceId}`, EXIT.notFoundOrNoConnection);
      }
      if (opts.json) console.log(JSON.stringify(instanceId ? instances[0] : cloud, null, 2));
      else console.log(instances.map(describeSimInstance).join('\n') || '(the simulated cloud is empty)');
    });
}
