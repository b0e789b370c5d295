/**
 * The `stopflow` command line's shell: the program and how it exits. Exit
 * codes: 0 stopped (or success), 1 stop failed, 2 bad input, 3 not found or no
 * connection. Two entries register commands on it: ./main.ts in this
 * repository (every command) and ./package-main.ts in the published package
 * (the stop verbs only).
 */
import { Command, CommanderError } from 'commander';
import { CliError, EXIT } from './errors';
import { registerVolumeCommands } from './volume-commands';

export function createProgram(): Command {
  const program = new Command('stopflow')
    .description('Stop cloud instances without leaving volumes stuck (a Temporal workflow per stop).')
    .showHelpAfterError()
    .exitOverride();
  // Both entries (the repository's and the package's) have it: it needs only the client.
  registerVolumeCommands(program);
  return program;
}

/** Parses the command line and runs the command; every outcome ends the process with its exit code. */
export async function runProgram(program: Command, argv: string[] = process.argv): Promise<void> {
  try {
    await program.parseAsync(argv);
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
}
