/**
 * `stopflow` in this repository (bin/stopflow.mjs): every command, including
 * the ones that need the repository's worker code (`worker`, `sim`,
 * `schedule`). The published package's entry is ./package-main.ts.
 */
import { createProgram, runProgram } from './program';
import { registerScheduleCommands } from './schedule-commands';
import { registerSimCommands } from './sim-commands';
import { registerStopCommands } from './stop-commands';
import { registerWorkerCommand } from './worker-command';

const program = createProgram();
registerStopCommands(program);
registerSimCommands(program);
registerWorkerCommand(program);
registerScheduleCommands(program);

await runProgram(program);
