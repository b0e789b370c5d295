/**
 * How a `--only` run's figures join the last results (bench/results/latest.json). Apart from the
 * runner so that the rule can be tested without starting a benchmark.
 */
import type { BenchResults, RunInfo, ScenarioName } from './run-results';

export function runInfo(r: RunInfo): RunInfo {
  const { generatedAt, command, quick, durationSeconds, machine, versions, devServer } = r;
  return { generatedAt, command, quick, durationSeconds, machine, versions, devServer };
}

/**
 * Merges the scenarios a `--only` run measured into the last results. A quick run's figures do not
 * replace a full run's (those scenarios are returned in `kept`). When it merges nothing, `merged` is
 * `previous` itself, header included: a run whose figures were all kept out leaves no trace in the file.
 */
export function mergeResults(
  previous: BenchResults | null,
  current: BenchResults,
  names: readonly ScenarioName[],
): { merged: BenchResults; kept: ScenarioName[] } {
  if (!previous)
    return { merged: { ...current, runs: Object.fromEntries(names.map((n) => [n, runInfo(current)])) }, kept: [] };
  const runs: Partial<Record<ScenarioName, RunInfo>> = {};
  const had = new Set([...Object.keys(previous.scenarios), ...Object.keys(previous.errors)] as ScenarioName[]);
  for (const name of had) runs[name] = previous.runs?.[name] ?? runInfo(previous);
  const scenarios = { ...previous.scenarios } as Record<string, unknown>;
  const errors = { ...previous.errors };
  const kept: ScenarioName[] = [];
  for (const name of names) {
    const before = runs[name];
    if (current.quick && before && !before.quick && name in previous.scenarios) {
      kept.push(name);
      continue;
    }
    if (name in current.scenarios) scenarios[name] = (current.scenarios as Record<string, unknown>)[name];
    else delete scenarios[name];
    if (current.errors[name] !== undefined) errors[name] = current.errors[name];
    else delete errors[name];
    runs[name] = runInfo(current);
  }
  if (kept.length === names.length) return { merged: previous, kept };
  return {
    merged: { ...runInfo(current), scenarios: scenarios as BenchResults['scenarios'], errors, runs },
    kept,
  };
}
