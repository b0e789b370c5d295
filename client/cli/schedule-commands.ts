import type { Command } from 'commander';

// Filled in by issue 10 (schedule apply).
export function registerScheduleCommands(_program: Command): void {}
