/**
 * `stopflow` as published in the `stopflow` package (its bin): the stop verbs
 * (stop, abort, set-max-stop-duration, status, list, history), which need only
 * the client. `worker`, `sim` and `schedule` run the repository's worker code
 * (the Temporal worker runtime, the providers' SDKs, the workflows), which the
 * package deliberately does not carry: they say where to run them instead of
 * failing as unknown commands.
 */
import type { Command } from 'commander';
import { CliError, EXIT } from './errors';
import { createProgram, runProgram } from './program';
import { registerStopCommands } from './stop-commands';

const REPOSITORY_ONLY: ReadonlyArray<[name: string, description: string, where: string]> = [
  [
    'worker',
    'run a stopflow worker (not in this package)',
    'the worker is not part of the stopflow package, which carries no worker runtime, provider SDK or native module: run it from the stopflow repository (`npm run worker`) or its container image (docs/worker.md)',
  ],
  [
    'sim',
    'seed the simulated cloud of a repository worker (not in this package)',
    'the simulated cloud belongs to a worker run from the stopflow repository: run `node bin/stopflow.mjs sim …` there',
  ],
  [
    'schedule',
    'manage the sweep schedule (not in this package)',
    'the sweep schedule is managed with the worker code of the stopflow repository: run `node bin/stopflow.mjs schedule …` there (docs/sweep.md)',
  ],
];

function registerRepositoryOnlyCommands(program: Command): void {
  for (const [name, description, where] of REPOSITORY_ONLY) {
    program
      .command(name)
      .description(description)
      .argument('[args...]')
      .allowUnknownOption()
      .action(() => {
        throw new CliError(`${name}: ${where}`, EXIT.badInput);
      });
  }
}

const program = createProgram();
registerStopCommands(program);
registerRepositoryOnlyCommands(program);

await runProgram(program);
