/** `stopflow worker`: the production worker, the same code as `npm run worker` (worker/main.ts, docs/worker.md). */
import type { Command } from 'commander';

export function registerWorkerCommand(program: Command): void {
  program
    .command('worker')
    .description(
      'run a stopflow worker configured from the environment (STOPFLOW_*, TEMPORAL_*; see docs/worker.md). Exit codes: 0 stopped cleanly, 1 worker failed, 2 invalid configuration, 3 a start-up check failed',
    )
    .option('--check', 'run the start-up checks, then exit (0 when all pass, 3 when one fails)')
    .option('--write-bundle <path>', 'write the workflow bundle to a file for STOPFLOW_WORKFLOW_BUNDLE, then exit')
    .action(async (opts: { check?: boolean; writeBundle?: string }) => {
      // Loaded on demand: the other commands need no worker runtime.
      const { runWorker } = await import('../../worker/main');
      const options: { checkOnly?: boolean; writeBundle?: string } = {};
      if (opts.check) options.checkOnly = true;
      if (opts.writeBundle) options.writeBundle = opts.writeBundle;
      process.exit(await runWorker(process.env, options));
    });
}
