/**
 * What a benchmark run records (bench/results/latest.json): the scenarios it can run, and for each
 * run when, how and on what. Shared by the runner (run.ts) and the report (report.ts).
 */
import { history } from './scenarios/history';
import { incident, incidentTuned } from './scenarios/incident';
import { memory } from './scenarios/memory';
import { reaction, reactionTuned } from './scenarios/reaction';
import { throughput } from './scenarios/throughput';

export const SCENARIOS = { throughput, reaction, reactionTuned, history, memory, incident, incidentTuned } as const;
export type ScenarioName = keyof typeof SCENARIOS;

/** One invocation of the benchmark: when, how, on what. */
export interface RunInfo {
  generatedAt: string;
  command: string;
  quick: boolean;
  durationSeconds: number;
  machine: {
    cpus: number;
    cpuModel: string;
    memoryGb: number;
    os: string;
    loadAverageAtStart: number[];
    loadAverageAtEnd: number[];
  };
  versions: { node: string; temporalSdk: string; temporalCli: string; stopflow: string };
  devServer: string;
}

/** The top-level RunInfo is the last run that wrote the file. */
export interface BenchResults extends RunInfo {
  scenarios: Partial<{ [K in ScenarioName]: Awaited<ReturnType<(typeof SCENARIOS)[K]>> }>;
  errors: Partial<Record<ScenarioName, string>>;
  /**
   * The run each scenario's figures (or error) come from, once a `--only` run merged into the file.
   * Absent (or a scenario missing from it): the top-level run.
   */
  runs?: Partial<Record<ScenarioName, RunInfo>>;
}
