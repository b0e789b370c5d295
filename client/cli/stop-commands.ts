import type { Command } from 'commander';

// Filled in by issue 4 (stop, abort, set-max-stop-duration, status, list, history).
export function registerStopCommands(_program: Command): void {}
