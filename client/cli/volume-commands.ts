/**
 * `stopflow volume <volumeId> [--wait] [--json]`: which stop holds a volume and the volume's state in it;
 * with --wait, until it is released (`detached` or `force_detached`). Exit codes as every stop verb: 0
 * held or released, 1 the holding stop failed with it attached, 2 bad input, 3 no stop holds it (or no
 * connection).
 */
import type { Command } from 'commander';
import { DURATION_RULE, parseDuration } from '../../common/duration';
import { DEFAULT_TASK_QUEUE } from '../../common/names';
import { ID_PATTERN, INSTANCE_ID_RULE } from '../../common/request';
import {
  InvalidInputError,
  StopflowClient,
  StopNotFoundError,
  VolumeNotReleasedError,
  type VolumeOwnership,
} from '../stopflow-client';
import { CliError, EXIT, withTemporalClient } from './errors';

/** "vol-1: detaching in the stop of i-1 (workflow stop-i-1, run …), which is stopping". */
export function ownershipLine(o: VolumeOwnership): string {
  const stop = `the stop of ${o.instanceId} (workflow ${o.workflowId}, run ${o.runId})`;
  const where = o.running ? `which is ${o.phase}` : `which ended ${o.phase}`;
  const state = o.state ?? 'not yet listed';
  const error = o.volume?.lastError ? ` — ${o.volume.lastError}` : '';
  return `${o.volumeId}: ${state} in ${stop}, ${where}${error}`;
}

function durationOf(field: string, value: string, min: number): number {
  const ms = parseDuration(value);
  if (ms === undefined || ms === null || ms < min) throw new CliError(`${field}: ${DURATION_RULE}`, EXIT.badInput);
  return ms;
}

export function registerVolumeCommands(program: Command): void {
  program
    .command('volume')
    .argument('<volumeId>')
    .description('which stop holds a volume and its state there; --wait until it is detached')
    .option('--wait', 'wait until the volume is detached or force_detached; exit 1 if its stop failed with it')
    .option('--timeout <duration>', 'with --wait: give up after this long (exit 1)')
    .option('--interval <duration>', 'with --wait: how often to look', '1s')
    .option('--task-queue <name>', 'the workers\' task queue (default: STOPFLOW_TASK_QUEUE or "stopflow")')
    .option('--json', 'print JSON')
    .action(
      async (
        volumeId: string,
        opts: { wait?: boolean; timeout?: string; interval: string; taskQueue?: string; json?: boolean },
      ) => {
        if (!ID_PATTERN.test(volumeId)) throw new CliError(`volumeId: ${INSTANCE_ID_RULE}`, EXIT.badInput);
        const intervalMs = durationOf('interval', opts.interval, 100);
        const timeoutMs = opts.timeout === undefined ? undefined : durationOf('timeout', opts.timeout, 1);
        const taskQueue = opts.taskQueue ?? (process.env.STOPFLOW_TASK_QUEUE || DEFAULT_TASK_QUEUE);
        const print = (o: VolumeOwnership) => {
          const { status: _status, ...rest } = o;
          console.log(opts.json ? JSON.stringify(rest) : ownershipLine(o));
        };
        await withTemporalClient(
          async (client) => {
            const stopflow = new StopflowClient({ client, taskQueue });
            if (!opts.wait) {
              print(await stopflow.volume(volumeId));
              return;
            }
            const released = await stopflow.waitUntilReleased(volumeId, {
              intervalMs,
              ...(timeoutMs !== undefined ? { timeoutMs } : {}),
            });
            print(released);
          },
          (err) => {
            if (err instanceof InvalidInputError) return new CliError(err.message, EXIT.badInput);
            if (err instanceof StopNotFoundError) return new CliError(err.message, EXIT.notFoundOrNoConnection);
            if (err instanceof VolumeNotReleasedError) {
              if (opts.json) {
                const { status: _status, ...rest } = err.ownership;
                console.log(JSON.stringify(rest));
              }
              return new CliError(err.message, EXIT.stopFailed);
            }
            return undefined;
          },
        );
      },
    );
}
