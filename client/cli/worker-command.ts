import type { Command } from 'commander';

// Filled in by issue 5 (worker).
export function registerWorkerCommand(_program: Command): void {}
