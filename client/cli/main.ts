/**
 * `stopflow`: one command line for people and scripts. Exit codes: 0 stopped
 * (or success), 1 stop failed, 2 bad input, 3 not found or no connection.
 */
import { Command, CommanderError } from 'commander';
import { CliError, EXIT } from './errors';
import { registerScheduleCommands } from './schedule-commands';
import { registerSimCommands } from './sim-commands';
import { registerStopCommands } from './stop-commands';
import { registerWorkerCommand } from './worker-command';

const program = new Command('stopflow')
  .description('Stop cloud instances without leaving volumes stuck (a Temporal workflow per stop).')
  .showHelpAfterError()
  .exitOverride();

registerStopCommands(program);
registerSimCommands(program);
registerWorkerCommand(program);
registerScheduleCommands(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    // Help and version exit 0; a wrong flag or missing argument is bad input.
    process.exit(err.exitCode === 0 ? 0 : EXIT.badInput);
  }
  if (err instanceof CliError) {
    console.error(`stopflow: ${err.message}`);
    process.exit(err.exitCode);
  }
  console.error(`stopflow: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(EXIT.notFoundOrNoConnection);
}
