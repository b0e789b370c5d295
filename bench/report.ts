/**
 * Renders the results of a run (bench/results/latest.json) as BENCHMARKS.md:
 * the machine and versions, a summary with each figure beside its target and
 * its baseline from the same run, the detail of each scenario, and what bounds
 * every figure that misses its target.
 */

import { DEFAULT_MAX_CACHED_WORKFLOWS } from '../worker/defaults';
import { renderIncident, renderIncidentBounds, renderIncidentSummary } from './report-incident';
import type { BenchResults, RunInfo, ScenarioName } from './run-results';
import type { HistoryResult } from './scenarios/history';
import type { MemoryFigures, MemoryResult, MemoryRow } from './scenarios/memory';
import type { LatencyFigure, ReactionResult } from './scenarios/reaction';
import type { ThroughputResult } from './scenarios/throughput';

/**
 * The workflow cache is not what bounds this scenario: its stops run a bounded number at a time, fewer than the
 * worker's default cache holds, so their workflow tasks find them cached (runs before 0.2.10 said otherwise).
 */
function cacheNote(t: ThroughputResult): string {
  const inFlight = t.inFlight ?? 50;
  return `At most ${inFlight} stops run at once, within the worker's default cache of ${num(DEFAULT_MAX_CACHED_WORKFLOWS, 0)} workflows, so a stop's workflow tasks find it cached and nothing is replayed: a larger cache is no lever here (one run with 1,000 gave 0.78, inside this spread).`;
}

/** What one workflow cost the benchmark's process and the dev server, each side: where the throughput ratio comes from. */
function cpuNote(t: ThroughputResult): string {
  const c = t.cpuMsPerStop;
  if (!c) return '';
  const s = c.stopflow;
  const b = c.baseline;
  if (s.server === null || b.server === null) {
    return ` CPU per workflow in the benchmark's process (both workers and the client): stopflow ${num(s.benchProcess)} ms, the minimal workflow ${num(b.benchProcess)} ms (the dev server's process was not found).`;
  }
  const extraWorker = s.benchProcess - b.benchProcess;
  const extraServer = s.server - b.server;
  const sums = (b.benchProcess + b.server) / (s.benchProcess + s.server);
  return ` Measured per workflow over each side's own batches (CPU time from /proc, median over rounds): a stop cost the benchmark's process (both workers and the client) ${num(s.benchProcess)} ms and the dev server ${num(s.server)} ms; the minimal workflow ${num(b.benchProcess)} and ${num(b.server)} ms. Of stopflow's extra ${num(extraWorker + extraServer)} ms, ${num(extraWorker)} are on the worker's side and ${num(extraServer)} on the server's, and the ratio of the two sums, ${num(sums, 2)}, is about what two busy cores allow.${serverDriftNote(t)}`;
}

/** How the server's CPU per workflow moved from the first counted round to the last, when the run recorded it. */
function serverDriftNote(t: ThroughputResult): string {
  const rounds = t.cpuMsPerStopByRound;
  if (!rounds || rounds.stopflow.length < 2) return '';
  const [s0, s1, b0, b1] = [rounds.stopflow, rounds.baseline].flatMap((side) => [side[0]?.server, side.at(-1)?.server]);
  if (s0 == null || s1 == null || b0 == null || b1 == null) return '';
  return ` The server's share moved between rounds: from the first round to the last it went from ${num(s0)} to ${num(s1)} ms per stop and from ${num(b0)} to ${num(b1)} ms per minimal workflow, on one dev server whose in-memory database keeps every workflow the run closed, stops with their search attributes (what moves it was not measured further).`;
}

const kb = (bytes: number) => `${Math.round(bytes / 1024).toLocaleString('en-US')} KB`;
const ms = (value: number) => `${Math.round(value)} ms`;
const num = (value: number, digits = 1) => value.toLocaleString('en-US', { maximumFractionDigits: digits });
/** Events by which stopflow's counts may differ and still be "flat" (workflow-task batching). */
const FLAT_TOLERANCE = 4;

/** The largest size at which stopflow itself was measured (floors may be missing if they failed). */
function largestMeasured(m: MemoryResult | undefined): (MemoryRow & { stopflow: MemoryFigures }) | undefined {
  const rows = (m?.rows ?? []).filter((row): row is MemoryRow & { stopflow: MemoryFigures } => row.stopflow !== null);
  return rows[rows.length - 1];
}

interface Verdict {
  met: boolean;
  text: string;
}

/**
 * What one more waiting stop costs a bounded-cache worker: the RSS growth between the two
 * largest sizes measured, over the stops added. Per-stop averages hide it behind the fixed
 * cost of the cached workflows and the workflow thread's heap.
 */
function marginalBytesPerStop(rows: MemoryRow[]): { bytes: number; from: number; to: number } | undefined {
  const measured = rows.flatMap((row) =>
    row.stopflowBounded ? [{ stops: row.stops, figures: row.stopflowBounded }] : [],
  );
  const small = measured.at(-2);
  const big = measured.at(-1);
  if (!small || !big) return undefined;
  const grown = big.figures.rssPerStop * big.stops - small.figures.rssPerStop * small.stops;
  return { bytes: Math.max(0, grown / (big.stops - small.stops)), from: small.stops, to: big.stops };
}

function atMost(value: number, limit: number, unit: (v: number) => string): Verdict {
  if (value < limit) return { met: true, text: `**met** (${unit(limit - value)} under)` };
  return { met: false, text: `**missed** by ${unit(value - limit)} (${num(value / limit, 2)}× the target)` };
}

/** The scenarios in the order of their sections. */
const SECTIONS: readonly ScenarioName[] = [
  'throughput',
  'reaction',
  'reactionTuned',
  'history',
  'memory',
  'incident',
  'incidentTuned',
];

/** The run a scenario's figures come from: its own after a `--only` merge, else the file's. */
function runOf(r: BenchResults, name: ScenarioName): RunInfo {
  return r.runs?.[name] ?? r;
}

interface RunGroup {
  info: RunInfo;
  names: ScenarioName[];
}

/** The runs the figures of this file come from, oldest first, each with its scenarios. */
function runGroups(r: BenchResults): RunGroup[] {
  const present = SECTIONS.filter((n) => r.scenarios[n] !== undefined || r.errors[n] !== undefined);
  const groups = new Map<string, RunGroup>();
  for (const name of present) {
    const info = runOf(r, name);
    const key = `${info.generatedAt} ${info.command}`;
    const group = groups.get(key) ?? { info, names: [] };
    group.names.push(name);
    groups.set(key, group);
  }
  return [...groups.values()].sort((a, b) => a.info.generatedAt.localeCompare(b.info.generatedAt));
}

const when = (info: RunInfo) => `${info.generatedAt.slice(0, 16).replace('T', ' ')} UTC`;
const QUICK_NOTE = '**--quick**: small sizes and few rounds, for development; do not quote these figures';

/** "`npm run bench` on 2026-11-30 03:28 UTC in 71 min" */
function describeRun(info: RunInfo): string {
  return `\`${info.command}\` on ${when(info)} in ${Math.round(info.durationSeconds / 60)} min${info.quick ? ` (${QUICK_NOTE})` : ''}`;
}

/** Busy if the load was high at the start or over the minutes before it (the load at the end is the run's own). */
function busy(info: RunInfo): boolean {
  const peakLoad = Math.max(info.machine.loadAverageAtStart[0] ?? 0, info.machine.loadAverageAtStart[1] ?? 0);
  return peakLoad > info.machine.cpus * 0.5;
}

export function renderMarkdown(r: BenchResults): string {
  const out: string[] = [];
  const line = (text = '') => out.push(text);
  const { throughput, reaction, reactionTuned, history, memory, incident, incidentTuned } = r.scenarios;
  const groups = runGroups(r);
  const several = groups.length > 1;
  // A section names its run: "*From `npm run bench` on … in 71 min.*"
  const from = (name: ScenarioName) => `*Figures from ${describeRun(runOf(r, name))}.*`;

  line('# Benchmarks');
  line();
  if (!several) {
    line(
      `Generated by ${describeRun(groups[0]?.info ?? r)}. Do not edit by hand: rerun it. The raw figures are in \`bench/results/latest.json\`.`,
    );
  } else {
    line(
      'The figures come from more than one run: a `--only` run replaces the figures of its scenarios and keeps the others from their last run. Each section says which run its figures come from, and a ratio is only ever taken between figures of the same run. Do not edit by hand: rerun. The raw figures are in `bench/results/latest.json`.',
    );
    line();
    for (const g of groups) line(`- ${describeRun(g.info)}: ${g.names.map((n) => `\`${n}\``).join(', ')}`);
  }
  line();
  for (const g of groups.filter((g) => busy(g.info))) {
    const which = several ? `The run of ${g.names.map((n) => `\`${n}\``).join(', ')} (${when(g.info)})` : 'This run';
    line(
      `> **${which} was on a busy machine**: load average ${g.info.machine.loadAverageAtStart.join(' / ')} (1/5/15 min) at the start, on ${g.info.machine.cpus} cores: other work was running. Every figure from it is slower and noisier than on a quiet machine; rerun it on a quiet one before quoting them. Ratios against the baselines measured in the same run hold up better than absolute figures.`,
    );
    line();
  }
  line('## How to reproduce');
  line();
  line('```sh');
  line('npm ci');
  line('npm run bench              # full run: every scenario, several rounds; writes this file');
  line('npm run bench -- --quick   # a few minutes: one round, small sizes; also writes this file');
  line('npm run bench -- --only=incident   # a subset: merged into bench/results/latest.json, this file rewritten');
  line('npm run bench -- --memory-sizes=100,1000      # the memory scenario at these sizes only');
  line('npm run bench -- --incident-sizes=0,100,1000  # the incident scenario (simulated rows) at these sizes only');
  line('npm run bench -- --incident-sizes= --incident-aws-sizes=1000  # its aws rows only (an empty list: none)');
  line('npm run bench -- --render                     # rewrite this file from bench/results/latest.json');
  line('```');
  line();
  line(
    'The first five scenarios take over an hour on two cores (71 minutes on a quiet machine, 2026-11-30), most of it in the memory scenario: each 5,000-stop cell takes 8 to 11 minutes to start its stops, in its own worker process. `--memory-sizes=100,1000` leaves those cells out. The incident scenario takes about 40 minutes (bringing 5,000 and 10,000 stops to their stuck volume is bound by the call budget), and `incidentTuned`, three of its rows again on a second server, about 15 more. A `--quick` run takes about 10 minutes. A `--quick --only=…` run merges its figures too, but never over figures from a full run: those stay, and the quick figures are left in `bench/results/partial.json`.',
  );
  line();
  line(
    "Scenarios: `throughput`, `reaction`, `reactionTuned`, `history`, `memory`, `incident`, `incidentTuned`. Each starts its own workers; the run starts one Temporal dev server (in-memory SQLite) and tears it down, with the workers and child processes, also on error or Ctrl-C. Every stopflow figure is measured beside a baseline in the same run (`bench/baseline-workflows.ts`, bundled on its own; for `incident`, its own N = 0 row and Temporal's signal → activity floor). Tests carry no timing thresholds: speed is reported here.",
  );
  line();
  line('## Machine and versions');
  line();
  // One value when every run agrees, else each run's value after its date.
  const value = (f: (info: RunInfo) => string) => {
    const values = groups.map((g) => ({ at: when(g.info), v: f(g.info) }));
    if (new Set(values.map((x) => x.v)).size <= 1) return values[0]?.v ?? f(r);
    return values.map((x) => `${x.v} (run of ${x.at})`).join('; ');
  };
  line('| | |');
  line('|---|---|');
  line(`| CPU | ${value((i) => `${i.machine.cpuModel}, ${i.machine.cpus} cores`)} |`);
  line(`| memory | ${value((i) => `${i.machine.memoryGb} GB`)} |`);
  line(`| OS | ${value((i) => i.machine.os)} |`);
  line(
    `| load average (1/5/15 min) | ${value((i) => `${i.machine.loadAverageAtStart.join(' / ')} at start, ${i.machine.loadAverageAtEnd.join(' / ')} at end`)} |`,
  );
  line(`| Node.js | ${value((i) => i.versions.node)} |`);
  line(`| Temporal TypeScript SDK | ${value((i) => i.versions.temporalSdk)} |`);
  line(`| Temporal CLI (dev server) | ${value((i) => i.versions.temporalCli.split('\n')[0] ?? '')} |`);
  line(`| dev server | ${value((i) => i.devServer)} |`);
  line(`| stopflow | ${value((i) => i.versions.stopflow)} |`);
  line();

  line('## Summary');
  line();
  line('| # | figure | stopflow | baseline, same run | target | verdict |');
  line('|---|---|---|---|---|---|');
  const missed: string[] = [];
  if (throughput) {
    const v: Verdict =
      throughput.ratio >= throughput.target
        ? { met: true, text: `**met** (ratio ${num(throughput.ratio, 3)})` }
        : {
            met: false,
            text: `**missed** by ${num(((throughput.target - throughput.ratio) / throughput.target) * 100, 1)}% (ratio ${num(throughput.ratio, 3)})`,
          };
    if (!v.met) missed.push('throughput');
    line(
      `| 1 | throughput, ${throughput.volumesPerStop} volumes per stop | ${num(throughput.stopflowMedian)} stops/s | minimal workflow, 6 no-op activities: ${num(throughput.baselineMedian)} workflows/s | ≥ ${throughput.target} × baseline | ${v.text} |`,
    );
  } else line(`| 1 | throughput | ${failed(r, 'throughput')} | | ≥ 0.8 × baseline | |`);
  if (reaction) {
    const a = atMost(reaction.abort.stopflow.p99, reaction.target.p99Ms, ms);
    const d = atMost(reaction.deadline.stopflow.p99, reaction.target.p99Ms, ms);
    if (!a.met) missed.push('abort');
    if (!d.met) missed.push('deadline');
    line(
      `| 2 | \`abort\` sent → force-detach started, p99 (p50) | ${ms(reaction.abort.stopflow.p99)} (${ms(reaction.abort.stopflow.p50)}) | signal → activity: ${ms(reaction.abort.floor.p99)} (${ms(reaction.abort.floor.p50)}) | p99 < ${reaction.target.p99Ms} ms | ${a.text} |`,
    );
    line(
      `| 2 | deadline due → force-detach started, p99 (p50) | ${ms(reaction.deadline.stopflow.p99)} (${ms(reaction.deadline.stopflow.p50)}) | timer due → activity: ${ms(reaction.deadline.floor.p99)} (${ms(reaction.deadline.floor.p50)}) | p99 < ${reaction.target.p99Ms} ms | ${d.text} |`,
    );
  } else line(`| 2 | reaction | ${failed(r, 'reaction')} | | p99 < 100 ms | |`);
  if (history) {
    const events = history.cases.filter((c) => c.how === 'compressed').map((c) => c.stopflowEvents);
    const worst = Math.max(...history.cases.map((c) => c.stopflowEvents));
    // A few events either way come from whether results share a workflow task, not from time.
    const flat = Math.max(...events) - Math.min(...events) <= FLAT_TOLERANCE;
    const met = worst <= history.target.maxEvents && flat;
    if (!met) missed.push('history');
    const naive = history.cases.filter((c) => c.how === 'compressed');
    line(
      `| 3 | history events per stop, a volume stuck 1 min / 10 min / 1 h | ${history.cases
        .filter((c) => c.how === 'compressed')
        .map((c) => c.stopflowEvents)
        .join(
          ' / ',
        )} | naive sleep() loop: ${naive.map((c) => `${num(c.naiveEvents ?? Number.NaN, 0)}${c.naiveDerived ? '*' : ''}`).join(' / ')} | ≤ ${history.target.maxEvents} (10 + 10 × ${history.volumesPerStop}), flat | ${met ? `**met** (at most ${worst}, flat)` : `**missed**: up to ${worst}${flat ? '' : ', not flat'}`} |`,
    );
  } else line(`| 3 | history | ${failed(r, 'history')} | | ≤ 50, flat | |`);
  if (memory) {
    const row = largestMeasured(memory);
    const failedAtTarget = memory.rows.find((x) => x.stops === memory.target.atStops && x.stopflow === null);
    if (failedAtTarget) {
      missed.push('memory');
      line(
        `| 4 | worker memory per stop waiting on a stuck volume, ${num(failedAtTarget.stops, 0)} in flight | **failed**: ${failedAtTarget.errors.join('; ').replace(/\|/g, '\\|')} | | < ${kb(memory.target.maxBytesPerStop)} at ${num(memory.target.atStops, 0)} | **missed** |`,
      );
    }
    if (row) {
      // Judged on a worker sized for many waiting stops (bounded cache); the all-cached worst case beside it.
      const all = atMost(row.stopflow.rssPerStop, memory.target.maxBytesPerStop, kb);
      const bounded = row.stopflowBounded
        ? atMost(row.stopflowBounded.rssPerStop, memory.target.maxBytesPerStop, kb)
        : undefined;
      if (!(bounded ?? all).met && !failedAtTarget) missed.push('memory');
      const at =
        row.stops === memory.target.atStops
          ? ''
          : ` (not the target's ${num(memory.target.atStops, 0)}: largest size measured)`;
      const figure = row.stopflowBounded
        ? `${kb(row.stopflowBounded.rssPerStop)} with \`maxCachedWorkflows\` ${num(memory.boundedCache, 0)}; ${kb(row.stopflow.rssPerStop)} with every stop cached`
        : kb(row.stopflow.rssPerStop);
      const verdict = bounded ? `${bounded.text} with the bounded cache; every stop cached: ${all.text}` : all.text;
      line(
        `| 4 | worker memory (RSS) per stop waiting on a stuck volume, ${num(row.stops, 0)} in flight${at} | ${figure} | minimal waiting workflow, every one cached: ${row.floor ? kb(row.floor.rssPerStop) : 'failed'}; idle worker: ${num(row.stopflow.idleRssMb)} MB | < ${kb(memory.target.maxBytesPerStop)} at ${num(memory.target.atStops, 0)} | ${verdict} |`,
      );
    }
  } else line(`| 4 | memory | ${failed(r, 'memory')} | | < 50 KB | |`);
  if (incident) renderIncidentSummary(line, incident, missed);
  else line(`| 5 | incident scale | ${failed(r, 'incident')} | | see "Incident scale" | |`);
  line();
  if (history?.cases.some((c) => c.naiveDerived)) {
    line('\\* derived, not measured: see "History cost" below.');
    line();
  }

  if (throughput) renderThroughput(line, throughput, from('throughput'));
  // A section with tuned-server rows names their run too when it is another one.
  const fromWithTuned = (name: ScenarioName, tuned: ScenarioName) =>
    r.scenarios[tuned] && describeRun(runOf(r, tuned)) !== describeRun(runOf(r, name))
      ? `${from(name)} The tuned-server rows: ${from(tuned)}`
      : from(name);
  if (reaction) renderReaction(line, reaction, reactionTuned, fromWithTuned('reaction', 'reactionTuned'));
  if (history) renderHistory(line, history, from('history'));
  if (memory) renderMemory(line, memory, from('memory'));
  if (incident) renderIncident(line, incident, incidentTuned, fromWithTuned('incident', 'incidentTuned'));
  renderBounds(line, missed, r);
  return `${out.join('\n').trimEnd()}\n`;
}

/** How stopflow's median compares with its baseline's, in words. */
function overFloor(deltaMs: number): string {
  if (Math.abs(deltaMs) <= 10)
    return `At the median stopflow is within ${ms(Math.abs(deltaMs))} of Temporal's own floor`;
  if (deltaMs < 0) return `At the median stopflow was ${ms(-deltaMs)} faster than the floor (noise)`;
  return `At the median stopflow adds ${ms(deltaMs)} over Temporal's own floor`;
}

function failed(r: BenchResults, name: keyof BenchResults['errors']): string {
  const error = r.errors[name];
  return error ? `failed: ${error.replace(/\|/g, '\\|')}` : 'not run';
}

type Line = (text?: string) => void;

function renderThroughput(line: Line, t: ThroughputResult, from: string): void {
  line('## 1. Throughput');
  line();
  line(from);
  line();
  line(
    `${t.stopsPerRound} stops per round, ${t.rounds} rounds, after a warm-up round. Each stop lists its ${t.volumesPerStop} volumes from the simulated cloud (no latency), detaches them in parallel and stops the instance: six activities. The baseline (\`minimalStop\`) runs six no-op activities in the same shape (one, then ${t.volumesPerStop} in parallel, then one). A round's workflows run ${t.inFlight ?? 50} at a time (each of ${t.inFlight ?? 50} lanes starts one and waits for its result before the next) and the round ends when the last result is in; default worker settings on both sides. Rounds alternate which side goes first, and the ratio is taken per round, so both sides of a ratio saw the same load. Stops are started with the same search attributes and conflict policy as \`StopflowClient.stop\`, without the describe call it adds to tell a new stop from a joined one.`,
  );
  line();
  line('| round | stopflow stops/s | baseline workflows/s | ratio |');
  line('|---|---|---|---|');
  t.stopflowStopsPerSec.forEach((s, i) => {
    line(
      `| ${i + 1} | ${num(s)} | ${num(t.baselineStopsPerSec[i] ?? Number.NaN)} | ${num(t.ratios[i] ?? Number.NaN, 2)} |`,
    );
  });
  line(`| **median** | **${num(t.stopflowMedian)}** | **${num(t.baselineMedian)}** | **${num(t.ratio, 3)}** |`);
  line();
  line(`History events per workflow: stopflow ${t.eventsPerStop.stopflow}, baseline ${t.eventsPerStop.baseline}.`);
  line();
}

function latencyRow(name: string, f: LatencyFigure): string {
  return `| ${name} | ${ms(f.p50)} | ${ms(f.p99)} | ${ms(f.pooled.max)} | ${f.pooled.samples} |`;
}

function renderReaction(
  line: Line,
  r: ReactionResult,
  tuned: (ReactionResult & { dynamicConfig?: Record<string, number | boolean> }) | undefined,
  from: string,
): void {
  line('## 2. Reaction');
  line();
  line(from);
  line();
  line(
    `- **abort**: from just before the client sends the \`abort\` signal (the RPC itself takes ${ms(r.signalRpcMs)} at the median) to the force-detach activity calling the backend, timed with \`Date.now()\` inside the activity (a wrapper around the simulated provider's \`forceDetachVolume\`). Each sample is one stop with one stuck volume whose graceful detach is polling; samples run one after another, each as soon as the previous force-detach started.`,
  );
  line(
    `- **deadline**: from the instant the deadline is due (the run's start time + \`maxStopDuration\` ${ms(r.deadline.maxStopDurationMs)}) to the same moment. ${r.deadline.lanes} stops run side by side, each lane starting its next stop when one ends.`,
  );
  line(
    '- **baselines**, interleaved with the stopflow samples so both see the same load: `signalFloor` waits for a signal and then runs one activity; `timerFloor` sleeps the same duration and then runs one activity. Timed the same way.',
  );
  line(
    `- Worker settings: production defaults (poll ${ms(r.pollIntervalMs)}, hold window 60 s). p50 and p99 are medians over ${r.rounds} round(s) of each round's percentile (nearest rank: with fewer than 100 samples a round's p99 is its maximum); "max" is over all rounds.`,
  );
  line();
  line('| | p50 | p99 | max | samples |');
  line('|---|---|---|---|---|');
  line(latencyRow('stopflow: abort → force-detach started', r.abort.stopflow));
  line(latencyRow('baseline: signal → activity started', r.abort.floor));
  line(latencyRow('stopflow: deadline due → force-detach started', r.deadline.stopflow));
  line(latencyRow('baseline: timer due → activity started', r.deadline.floor));
  line(latencyRow('stopflow: abort → stop ended (result)', r.abortToEnd));
  if (tuned) {
    line(latencyRow('*tuned server*, stopflow: abort → force-detach', tuned.abort.stopflow));
    line(latencyRow('*tuned server*, baseline: signal → activity', tuned.abort.floor));
    line(latencyRow('*tuned server*, stopflow: deadline → force-detach', tuned.deadline.stopflow));
    line(latencyRow('*tuned server*, baseline: timer → activity', tuned.deadline.floor));
  }
  line();
  line(
    r.abortToEnd.p50 >= 0.8 * r.pollIntervalMs
      ? `"abort → stop ended" also waited for the cancelled graceful detach to acknowledge its cancellation. Cancellation reaches an activity only in the reply to a heartbeat, and in the code of this run the detach wait heartbeated once per poll (every ${ms(r.pollIntervalMs)}), so the stop ended up to one poll interval after force-detach started; here the abort came right after the wait's first poll, the worst case. Force-detach itself was not delayed; only the stop's end was. (The wait is now cancelled without waiting for its acknowledgement: a rerun measures that.)`
      : `"abort → stop ended" is ${ms(r.abortToEnd.p50)} at the median: the force, the final listing and \`stopInstance\`; the read-only wait is cancelled without waiting for its acknowledgement.`,
  );
  if (tuned) {
    line();
    line(
      `*Tuned server*: the \`reactionTuned\` scenario repeats one round on a second dev server started with ${Object.entries(
        tuned.dynamicConfig ?? {},
      )
        .map(([k, v]) => `\`--dynamic-config-value ${k}=${v}\``)
        .join(
          ' ',
        )} (the dev server defaults to 20 queue reads per second on its single history shard). It is not what stopflow ships or needs; it shows what the default limit accounts for (see "What bounds it").`,
    );
  }
  line();
}

function renderHistory(line: Line, h: HistoryResult, from: string): void {
  line('## 3. History cost');
  line();
  line(from);
  line();
  line(
    `Each stop has ${h.volumesPerStop} volumes; ${h.volumesPerStop - 1} detach at once and one hangs in \`detaching\` until forced. stopflow's stop ends by its deadline (\`maxStopDuration\` = the stuck time), force-detaches the stuck volume and stops the instance. The naive baseline (\`naivePollingStop\`) requests each detach, then loops: an activity reads the volume's state, then \`sleep(pollInterval)\`; after the number of polls the stuck time allows it force-detaches and stops the instance. Events are counted in the closed workflow's history.`,
  );
  line();
  line(
    `Production timings: poll ${ms(h.production.pollIntervalMs)}, hold window ${ms(h.production.holdMs)}, longest pause between attempts ${ms(h.production.maxPollIntervalMs)}. An hour cannot be waited for in a benchmark, so:`,
  );
  line();
  line(
    `- **real**: the 1-minute case runs for real with the production timings (stopflow's deadline 60 s; the naive loop polls every 5 s, 12 polls).`,
  );
  line(
    `- **compressed**: every timing divided by ${h.compressed.scale} (stopflow: poll ${ms(h.compressed.pollIntervalMs)}, hold ${ms(h.compressed.holdMs)}, longest pause ${ms(h.compressed.maxPollIntervalMs)}, deadline 1 s / 10 s / 60 s for 1 min / 10 min / 1 h). stopflow then makes the same number of detach attempts and polls as in production over the stuck time; the naive loop makes exactly the production number of polls (12 / 120 / 720, one per 5 s) with \`sleep(${h.compressed.pollIntervalMs} ms)\`. Event counts depend on those numbers, not on wall time; the 1-minute row run both ways shows it.`,
  );
  if (h.cases.some((c) => c.naiveDerived)) {
    line(
      `- **derived** (\\*): in a --quick run the naive 1 h loop (720 polls, many minutes on two loaded cores) is not run; its events are computed from a straight line fitted to the measured naive rows: ${num(h.naiveFit.fixed)} + ${num(h.naiveFit.perPoll, 2)} × polls.`,
    );
  } else {
    line(
      `- The naive 1 h loop (720 polls, many minutes on two loaded cores) runs in the first round only; its count is exact, not a timing. A straight line through the measured naive rows: ${num(h.naiveFit.fixed)} + ${num(h.naiveFit.perPoll, 2)} × polls.`,
    );
  }
  line(
    `- stopflow's counts may differ by a few events between rows (up to ${FLAT_TOLERANCE} counts as flat): whether two results reach the workflow in one workflow task or two depends on timing, not on how long the volume was stuck.`,
  );
  line();
  line(
    '| stuck for | how | stopflow events | stopflow polls (heartbeats, no events) | stopflow detach attempts (retries, no events) | naive events | naive polls |',
  );
  line('|---|---|---|---|---|---|---|');
  for (const c of h.cases) {
    line(
      `| ${c.label} | ${c.how} | **${c.stopflowEvents}** | ${c.stopflowPolls} | ${c.stopflowAttempts} | ${c.naiveEvents === null ? 'n/a' : `${num(c.naiveEvents, 0)}${c.naiveDerived ? ' (derived\\*)' : ''}`} | ${c.naivePolls} |`,
    );
  }
  line();
  const perDay = (24 * 3_600_000) / h.production.pollIntervalMs;
  line(
    `The naive loop costs ${num(h.naiveFit.perPoll, 1)} events per poll per stuck volume (activity scheduled/started/completed, timer started/fired, two workflow tasks of three events each). At the production poll of ${ms(h.production.pollIntervalMs)}, a volume stuck for a day would cost ≈ ${num(h.naiveFit.fixed + h.naiveFit.perPoll * perDay, 0)} events (derived), past Temporal's default limit of 51,200 events per history: the naive workflow would be terminated after about ${num((51_200 - h.naiveFit.fixed) / h.naiveFit.perPoll / (3_600_000 / h.production.pollIntervalMs), 1)} hours. stopflow's count does not depend on how long the volume is stuck.`,
  );
  line();
}

function memoryRow(name: string, stops: number, f: MemoryFigures | null): string {
  if (!f) return `| ${num(stops, 0)} | ${name} | failed (see below) | | | | | | |`;
  return `| ${num(stops, 0)} | ${name} | **${kb(f.rssPerStop)}** | ${kb(f.heapPerStop)} | ${num(f.idleRssMb)} → ${num(f.loadedRssMb)} MB | ${num(f.cpuMicrosPerSecPerStop, 0)} µs/s | ${num(f.rampCpuMsPerStop, 0)} ms | ${num(f.rampSeconds, 0)} s | ${num(f.cachedWorkflows, 0)} |`;
}

function renderMemory(line: Line, m: MemoryResult, from: string): void {
  line('## 4. Worker memory and CPU per waiting stop');
  line();
  line(from);
  line();
  line(
    `The worker runs alone in a child process (\`bench/memory-worker.ts\`), its simulated cloud seeded before the idle sample. N stops are started, each with ${m.volumesPerStop} volumes (${m.volumesPerStop - 1} detach at once, one hangs), and measured once every stop is waiting on its stuck volume. **Baselines**: the same worker idle (the subtraction in every figure), and in the same run, in their own child processes, \`waitingFloor\` (a minimal workflow: ${m.volumesPerStop - 1} no-op activities and one that keeps failing with the same server-side retry pauses) and \`validatingFloor\` (the same, plus validating a \`StopRequest\` with the zod schemas of \`common/request.ts\`, as stopflow's workflow does).`,
  );
  line();
  line(
    `- Memory: RSS of the whole worker process (main and workflow-thread V8 heaps, the Rust core's workflow cache, buffers) after the idle sample, divided by N; and the main thread's V8 heap likewise, after a forced GC. The workflow thread's heap cannot be collected from outside, so RSS includes some of its garbage, and RSS keeps the high-water mark of the ramp.`,
  );
  line(
    `- CPU: user + system CPU of the worker process over ${num(m.windowMs / 1000, 0)} s while the stops wait, minus the idle worker's over the same length, per stop ("µs/s": microseconds of CPU per second, 1,000,000 = one core); and the CPU it took to bring each stop to the waiting state ("to start").`,
  );
  line(
    `- Worker settings: \`maxCachedWorkflows\` ${num(m.maxCachedWorkflows, 0)} (every waiting stop stays cached), or ${num(m.boundedCache ?? 0, 0)} on the rows marked "cache ${num(m.boundedCache ?? 0, 0)}" (a worker sized for many waiting stops, with Node's default heap: see "What bounds it"), Node \`--max-old-space-size=${m.maxOldSpaceSizeMb ?? 'default'}\` (the workflow thread inherits it; with Node's default of about 4 GB, 5,000 cached stops ran the workflow thread out of heap and the worker died: "ERR_WORKER_OUT_OF_MEMORY", seen while writing this benchmark), \`maxConcurrentActivityTaskExecutions\` ${m.maxConcurrentActivityTaskExecutions}, poll ${ms(m.timings.pollIntervalMs)}, longest pause ${ms(m.timings.maxPollIntervalMs)}, hold window ${ms(m.timings.holdMs)} (shorter than the poll: each attempt checks once and gives its slot back; see "What bounds it" for why not the default 60 s).`,
  );
  line();
  line(
    '| in flight | workflow | RSS per stop | main V8 heap per stop | worker RSS idle → loaded | CPU per stop while waiting | CPU per stop to start | ramp | cached |',
  );
  line('|---|---|---|---|---|---|---|---|---|');
  for (const row of m.rows) {
    line(memoryRow('stopflow', row.stops, row.stopflow));
    if (row.stopflowBounded !== undefined)
      line(memoryRow(`stopflow, cache ${num(m.boundedCache ?? 0, 0)}`, row.stops, row.stopflowBounded));
    line(memoryRow('baseline `waitingFloor`', row.stops, row.floor));
    if (row.floorZod) line(memoryRow('baseline `validatingFloor` (+ zod)', row.stops, row.floorZod));
  }
  line();
  line(
    `Rounds per size (median reported): ${m.rows.map((row) => `${num(row.stops, 0)}: ${row.rounds}`).join(', ')}. \`validatingFloor\` only explains where stopflow's cost goes and is not run above 1,000.`,
  );
  for (const error of m.rows.flatMap((row) => row.errors)) line(`- **failed**: ${error}`);
  line();
  line(
    `The CPU window starts a few seconds after the last stop reached its stuck volume, when the stuck volumes' retries still come every 5–40 s (the pause doubles from the poll interval); once every pause has grown to ${ms(m.timings.maxPollIntervalMs)} (about 2 minutes in) each waiting stop costs less than shown. The main V8 heap barely moves: the workflows live in the workflow thread and the Rust core, which only RSS sees.`,
  );
  line();
}

function renderBounds(line: Line, missed: string[], r: BenchResults): void {
  line('## What bounds it');
  line();
  if (missed.length === 0) {
    line('Every target was met in this run.');
    line();
  }
  const { throughput, reaction, reactionTuned, memory, incident } = r.scenarios;
  if (runGroups(r).length > 1) {
    line("Each paragraph is about its section's figures, from that section's run (see the top of this file).");
    line();
  }
  // The largest size at which stopflow and both floors were all measured, for the comparisons.
  const largest = [...(memory?.rows ?? [])]
    .reverse()
    .map((row) =>
      row.stopflow && row.floor && row.floorZod
        ? { stops: row.stops, stopflow: row.stopflow, floor: row.floor, floorZod: row.floorZod }
        : undefined,
    )
    .find((row) => row !== undefined);
  if (missed.includes('throughput') && throughput) {
    const extra = largest ? largest.stopflow.rampCpuMsPerStop - largest.floor.rampCpuMsPerStop : 0;
    const zodCpu = largest ? largest.floorZod.rampCpuMsPerStop - largest.floor.rampCpuMsPerStop : 0;
    const ramp = largest
      ? ` The memory scenario measures it: at ${num(largest.stops, 0)} stops, bringing one stop to its waiting state cost the worker ${num(largest.stopflow.rampCpuMsPerStop, 0)} ms of CPU, the minimal workflow ${num(largest.floor.rampCpuMsPerStop, 0)} ms, and the minimal workflow plus the zod validation ${num(largest.floorZod.rampCpuMsPerStop, 0)} ms: of stopflow's extra ${num(extra, 0)} ms, ${num(zodCpu, 0)} ms are the validation (rounds of one cell differ by several milliseconds, so read the split as rough; see the rounds in \`bench/results/latest.json\`).`
      : '';
    // Point at the lever that the figures say is the larger one.
    const lever =
      largest && zodCpu >= extra / 2
        ? ' A hand-written check of the request inside the workflow (zod stays in the client and the CLI, which validate first anyway) would remove most of it, at the price of a second validator to keep in step with the schemas.'
        : " The validation is the smaller part; the rest is stopflow's own work per stop that the minimal workflow does not do: a workflow task per detach result, the per-volume details in the Temporal UI and the search-attribute upsert that makes stops findable. Those are what stopflow is for, so most of this overhead buys its audit trail.";
    const spread = `${num(Math.min(...throughput.ratios), 2)} to ${num(Math.max(...throughput.ratios), 2)}`;
    line(
      `**Throughput** (ratio ${num(throughput.ratio, 3)} against ${throughput.target}; per round ${spread}). On ${r.machine.cpus} cores shared with the dev server, the worker's and the server's CPU per workflow together decide.${cpuNote(throughput)} On the worker's side a stop does more than six no-op activities: its first workflow task instantiates stopflow's workflow modules for that workflow alone (under the SDK's reused V8 context, module scope is per workflow; only the SDK's own modules are shared), with the parts of zod the request's rules use (\`zod/mini\`; since 0.2.11 the bundle drops the code nothing uses: 36 of zod's 159 constructors left), and validates the request; it asks the worker once through a local activity, and its activities pass the call budget and the activity interceptors. On the server's side it has ${throughput.eventsPerStop.stopflow} history events against ${throughput.eventsPerStop.baseline}, among them its patch marker with the SDK's own \`TemporalChangeVersion\` upsert (one since workflow version 11, 0.2.12; three from 0.2.1 to 0.2.11), and the upserts that make stops findable (their volumes, their end): visibility writes. ${cacheNote(throughput)}${ramp}${lever} Sharing the schemas through the bundler's \`preloadModules\` is no way out: the SDK deep-freezes shared modules and zod then fails with "Cannot assign to read only property 'lastIndex'"; sharing zod alone worked but did not move these figures (both tried while writing this benchmark).`,
    );
    line();
  }
  if (missed.includes('abort') && reaction) {
    const t = reactionTuned
      ? ` With the limit raised to 1,000 reads per second (tuned server, same run) the same measurement gives p50 ${ms(reactionTuned.abort.stopflow.p50)} / p99 ${ms(reactionTuned.abort.stopflow.p99)} (baseline ${ms(reactionTuned.abort.floor.p50)} / ${ms(reactionTuned.abort.floor.p99)}).`
      : '';
    line(
      `**Abort → force-detach** (p99 ${ms(reaction.abort.stopflow.p99)}, baseline ${ms(reaction.abort.floor.p99)}). ${overFloor(reaction.abort.stopflow.p50 - reaction.abort.floor.p50)}: the signal's workflow task schedules the force-detach at once. Both are bounded by the dev server: its single history shard reads its task queues at most 20 times a second (\`history.transferProcessorMaxPollRPS\`), so under a steady stream of work every hand-off waits for the next read, ≈ 50 ms, and abort → force needs two (signal → workflow task, workflow task → activity task): ≈ 100 ms. An idle server hands off in a few milliseconds; that is why a sample taken after a pause is fast.${t} A production cluster has many shards; measure there before quoting a figure.`,
    );
    line();
  }
  if (missed.includes('deadline') && reaction) {
    const t = reactionTuned
      ? ` Raising the queue-read limits (tuned server) does not remove it: p99 ${ms(reactionTuned.deadline.stopflow.p99)} (baseline ${ms(reactionTuned.deadline.floor.p99)}).`
      : '';
    line(
      `**Deadline → force-detach** (p99 ${ms(reaction.deadline.stopflow.p99)}, baseline ${ms(reaction.deadline.floor.p99)}). The baseline \`sleep()\` misses the target too: this is Temporal timer firing on the dev server. ${overFloor(reaction.deadline.stopflow.p50 - reaction.deadline.floor.p50)}. A timer is started when the server records the workflow task that created it, so it is already late by that task's latency; the server's timer queue then fires it some time after it is due, more so when ${reaction.deadline.lanes} stops' timers and tasks crowd the two cores.${t} stopflow's own part is the one workflow task that turns the timer into a force-detach, and with fewer than 100 samples per round a round's p99 is its slowest sample: one unlucky workflow task on a loaded machine. A deadline is minutes long in practice; a few hundred milliseconds on it are not what an operator notices, but the target is missed on this machine.`,
    );
    line();
  }
  if (missed.includes('history')) {
    line(
      `**History**: a stop exceeded 10 + 10 × volumes events, or its count moved by more than ${FLAT_TOLERANCE} events between stuck times; see "History cost" for the row.`,
    );
    line();
  }
  const failedCells = memory?.rows.flatMap((row) => row.errors) ?? [];
  if (missed.includes('memory') && failedCells.length > 0) {
    line(
      `**Memory, failed cells**: ${failedCells.join('; ')}. A worker whose cache holds more workflows than its workflow thread's V8 heap (about 4 GB by default on 64-bit Node) can hold fails when it runs out; the SDK's default \`maxCachedWorkflows\` is sized from the heap for this reason.`,
    );
    line();
  }
  const top = largestMeasured(memory);
  if (memory && largest && top && top.stopflow.rssPerStop >= memory.target.maxBytesPerStop) {
    const zodShare = largest.floorZod.rssPerStop - largest.floor.rssPerStop;
    const rest = largest.stopflow.rssPerStop - largest.floorZod.rssPerStop;
    const boundedRows = memory.rows.filter((row) => row.stopflowBounded && row.stopflow);
    const boundedRow = boundedRows.at(-1);
    const marginal = marginalBytesPerStop(boundedRows);
    const marginalText = marginal
      ? `: the cached stops and the workflow thread's heap are a fixed cost, and each stop beyond them adds ≈ ${kb(marginal.bytes)} (the growth from ${num(marginal.from, 0)} to ${num(marginal.to, 0)} waiting stops, divided by the ${num(marginal.to - marginal.from, 0)} stops added)`
      : '';
    const boundedText =
      boundedRow?.stopflowBounded && boundedRow.stopflow
        ? ` With \`maxCachedWorkflows\` ${num(memory.boundedCache, 0)}, ${num(boundedRow.stops, 0)} waiting stops cost the worker ${kb(boundedRow.stopflowBounded.rssPerStop)} each (every stop cached: ${kb(boundedRow.stopflow.rssPerStop)})${marginalText}. The price is CPU when an evicted stop has work again: it replays its history first, which the design keeps at ≈ 50 events. Bringing a stop to its waiting state takes three such wake-ups (one per healthy volume) and cost ${num(boundedRow.stopflowBounded.rampCpuMsPerStop, 0)} ms of CPU per stop with the bounded cache, against ${num(boundedRow.stopflow.rampCpuMsPerStop, 0)} ms with every stop cached; while the stops wait, ${num(boundedRow.stopflowBounded.cpuMicrosPerSecPerStop, 0)} against ${num(boundedRow.stopflow.cpuMicrosPerSecPerStop, 0)} µs/s.`
        : '';
    line(
      `**Memory with every stop cached** (${kb(top.stopflow.rssPerStop)} at ${num(top.stops, 0)}, target ${kb(memory.target.maxBytesPerStop)}). Even the minimal waiting workflow costs ${top.floor ? kb(top.floor.rssPerStop) : kb(largest.floor.rssPerStop)} of worker RSS while cached: one cached workflow costs more than the target on this SDK (its documentation quotes about 1 MB per cached workflow with the reused V8 context). At ${num(largest.stops, 0)}, of stopflow's ${kb(largest.stopflow.rssPerStop)}, validating the request with zod inside the workflow accounts for ${kb(zodShare)} (\`validatingFloor\` minus \`waitingFloor\`): zod's modules, which every cached workflow evaluates for itself, and the heap the workflow thread grew to build and parse with the schemas (they are built per validation and then dropped, not kept per workflow). The remaining ${kb(rest)} is the rest of stopflow's per-workflow modules and state (the workflow module graph, status and details objects, more workflow tasks and events in the core's cache). So a worker cannot keep ${num(memory.target.atStops, 0)} waiting stops cached in ${kb(memory.target.maxBytesPerStop)} each, and it need not: a stop waiting on a stuck volume has no workflow task to run until it wakes (the volume detaches, an abort, its deadline).${boundedText} \`STOPFLOW_MAX_CACHED_WORKFLOWS\` sets it (docs/worker.md). The rows here set the cache explicitly; the worker's default is now a bounded cache of its own (\`DEFAULT_MAX_CACHED_WORKFLOWS\`), measured under "Incident scale".`,
    );
    line();
    line(
      `**Activity slots**: since workflow version 8 a stuck volume's wait holds no slot while it waits: its attempt hands the volume to the worker's watch list and returns, and the list answers for it. The hold window (\`holdMs\`, 15 s by default) applies only to waits of stops started before version 8, which poll in place on a slot of the waits task queue, so this scenario's short one (1 s) does not change what its stops do. The waits have a task queue and slots of their own, apart from the ${memory.maxConcurrentActivityTaskExecutions} slots of urgent work; "Incident scale" measures what that does with default settings.`,
    );
    line();
  }
  // A ratio is only taken within one run: the tuned rows of another run (older code, perhaps) are not compared here.
  const tunedSameRun =
    describeRun(runOf(r, 'incidentTuned')) === describeRun(runOf(r, 'incident'))
      ? r.scenarios.incidentTuned
      : undefined;
  if (incident) renderIncidentBounds(line, incident, tunedSameRun, missed);
}
