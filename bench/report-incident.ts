/**
 * The incident scenario's part of BENCHMARKS.md (bench/report.ts renders the
 * rest): its summary rows, its section, and what bounds each figure that
 * misses its target. Every figure is judged against a baseline of the same
 * run: the N = 0 row, and Temporal's signal → activity floor measured beside
 * each row.
 */
import type { HealthySplit, IncidentResult, IncidentRow, PathSummary } from './scenarios/incident';

/** The incident rows again on the tuned server (`incidentTuned`). */
type TunedIncident = IncidentResult & { dynamicConfig: Record<string, number | boolean> };

type Line = (text?: string) => void;

const kb = (bytes: number) => `${Math.round(bytes / 1024).toLocaleString('en-US')} KB`;
const ms = (value: number) => `${Math.round(value)} ms`;
const num = (value: number, digits = 1) => value.toLocaleString('en-US', { maximumFractionDigits: digits });
const n0 = (value: number) => num(value, 0);
const round2 = (value: number) => Math.round(value * 100) / 100;
const sec = (value: number) => `${num(value / 1000)} s`;
const rowName = (row: IncidentRow) => `${row.provider === 'aws' ? 'aws, ' : ''}N = ${n0(row.stops)}`;

/** Calls per second a worker may make under the budget over a window: the rate, plus the burst spread over it. */
function budgetLimit(inc: IncidentResult, provider: IncidentRow['provider']): number {
  const budget = provider === 'aws' ? inc.awsBudget : inc.simBudget;
  return budget.callsPerSecond + budget.burst / (inc.windowMs / 1000);
}

/** Median of a row's healthy latencies over the N = 0 row's, and the same for p99. */
function healthyRatios(row: IncidentRow, base: IncidentRow | undefined): { p50: number; p99: number } | null {
  if (!row.healthy || !base?.healthy) return null;
  return { p50: round2(row.healthy.p50 / base.healthy.p50), p99: round2(row.healthy.p99 / base.healthy.p99) };
}

function base(inc: IncidentResult): IncidentRow | undefined {
  return inc.rows.find((r) => r.provider === 'simulated' && r.stops === 0 && r.healthy);
}

/** The row the healthy-stop target is judged at: N = 5,000, else the largest simulated row with healthy stops. */
function healthyTargetRow(inc: IncidentResult): IncidentRow | undefined {
  const measured = inc.rows.filter((r) => r.provider === 'simulated' && r.healthy && r.stops > 0);
  return measured.find((r) => r.stops === inc.targets.healthyAtStops) ?? measured.at(-1);
}

function memoryRows(inc: IncidentResult): IncidentRow[] {
  const measured = inc.rows.filter((r) => r.provider === 'simulated' && r.rss.perWaitingStopBytes !== null);
  const atTarget = measured.filter((r) => inc.targets.memoryAtStops.includes(r.stops));
  return atTarget.length > 0 ? atTarget : measured.slice(-1);
}

function abortRows(inc: IncidentResult): Array<IncidentRow & { abort: NonNullable<IncidentRow['abort']> }> {
  return inc.rows.filter((r): r is IncidentRow & { abort: NonNullable<IncidentRow['abort']> } => r.abort !== null);
}

/** Summary rows (# 5); pushes the names of missed targets onto `missed`. */
export function renderIncidentSummary(line: Line, inc: IncidentResult, missed: string[]): void {
  const zero = base(inc);
  const target = healthyTargetRow(inc);
  if (target?.healthy && zero?.healthy) {
    const ratio = healthyRatios(target, zero);
    const notAt =
      target.stops === inc.targets.healthyAtStops
        ? ''
        : ` (not the target's ${n0(inc.targets.healthyAtStops)}: largest size measured)`;
    const unfinished = target.healthy.unfinished;
    const met = ratio !== null && ratio.p99 <= inc.targets.healthyP99Ratio && unfinished === 0;
    if (!met) missed.push('incident-healthy');
    const verdict = met
      ? `**met** (${num(ratio?.p99 ?? Number.NaN, 2)}×)`
      : `**missed**: ${num(ratio?.p99 ?? Number.NaN, 2)}×${unfinished > 0 ? `, ${unfinished} of ${target.healthy.samples} not done after ${n0(target.healthy.capMs / 60_000)} min (their latency counted as the time waited: a lower bound)` : ''}`;
    line(
      `| 5 | healthy 2-volume stop, start → result, p99 (p50), ${n0(target.stops)} stops stuck${notAt} | ${ms(target.healthy.p99)} (${ms(target.healthy.p50)}): ${num(ratio?.p99 ?? Number.NaN, 2)}× (${num(ratio?.p50 ?? Number.NaN, 2)}×) the N = 0 figures | N = 0: ${ms(zero.healthy.p99)} (${ms(zero.healthy.p50)}) | p99 ≤ ${inc.targets.healthyP99Ratio} × N = 0 at ${n0(inc.targets.healthyAtStops)} | ${verdict} |`,
    );
  } else {
    missed.push('incident-healthy');
    line(
      `| 5 | healthy stop latency while stops are stuck | not measured (see the errors under "Incident scale") | | p99 ≤ ${inc.targets.healthyP99Ratio} × N = 0 | **missed** |`,
    );
  }

  for (const provider of ['simulated', 'aws'] as const) {
    const rows = inc.rows.filter((r) => r.provider === provider && r.stops > 0 && r.calls);
    if (rows.length === 0) continue;
    const limit = budgetLimit(inc, provider);
    const budget = provider === 'aws' ? inc.awsBudget : inc.simBudget;
    const figure = (r: IncidentRow) =>
      provider === 'aws' ? (r.calls?.describeVolumesPerSecond ?? Number.NaN) : (r.calls?.perSecond ?? Number.NaN);
    const worst = Math.max(...rows.map(figure));
    const met = worst <= limit;
    if (!met) missed.push(`incident-calls-${provider}`);
    const what =
      provider === 'aws'
        ? 'real `DescribeVolumes` calls per second (counted by the local EC2 server), aws provider'
        : 'backend calls per second, simulated cloud';
    line(
      `| 5 | ${what}, while N stops wait on a stuck volume | ${rows.map((r) => `${n0(r.stops)}: ${num(figure(r), 2)}/s`).join('; ')} | budget declared: ${num(budget.callsPerSecond)}/s, burst ${n0(budget.burst)} | set by the budget, not by N (≤ ${num(limit, 2)}/s over ${n0(inc.windowMs / 1000)} s) | ${met ? `**met** (at most ${num(worst, 2)}/s)` : `**missed**: ${num(worst, 2)}/s`} |`,
    );
  }

  const aborts = abortRows(inc);
  if (aborts.length > 0) {
    const excess = aborts.map((r) => r.abort.stopflow.p99 - r.abort.floor.p99);
    const worst = Math.max(...excess);
    const met = worst <= inc.targets.abortOverFloorMs;
    if (!met) missed.push('incident-abort');
    line(
      `| 5 | \`abort\` sent → force-detach started while N stops wait, p99 (p50) | ${aborts.map((r) => `${rowName(r)}: ${ms(r.abort.stopflow.p99)} (${ms(r.abort.stopflow.p50)})`).join('; ')} | signal → activity, beside each row: ${aborts.map((r) => `${ms(r.abort.floor.p99)} (${ms(r.abort.floor.p50)})`).join('; ')} | p99 ≤ floor p99 + ${inc.targets.abortOverFloorMs} ms at every N | ${met ? `**met** (at most ${ms(worst)} over)` : `**missed**: up to ${ms(worst)} over the floor`} |`,
    );
  }

  const mem = memoryRows(inc);
  if (mem.length > 0) {
    const worst = Math.max(...mem.map((r) => r.rss.perWaitingStopBytes ?? Number.NaN));
    const notAt = mem.every((r) => inc.targets.memoryAtStops.includes(r.stops)) ? '' : ' (largest size measured)';
    const met = worst < inc.targets.maxBytesPerStop;
    if (!met) missed.push('incident-memory');
    line(
      `| 5 | worker memory (RSS) per waiting stop, default settings${notAt} | ${mem.map((r) => `${kb(r.rss.perWaitingStopBytes ?? Number.NaN)} at ${n0(r.stops)}`).join('; ')} | idle worker: ${mem.map((r) => `${num(r.rss.idleMb)} MB`).join('; ')} | < ${kb(inc.targets.maxBytesPerStop)} at ${inc.targets.memoryAtStops.map(n0).join(' and ')} | ${met ? `**met** (at most ${kb(worst)})` : `**missed**: up to ${kb(worst)} (${num(worst / inc.targets.maxBytesPerStop, 2)}× the target)`} |`,
    );
  }
  const failedMemory = inc.rows.filter(
    (r) => inc.targets.memoryAtStops.includes(r.stops) && r.rss.perWaitingStopBytes === null,
  );
  for (const r of failedMemory) {
    missed.push('incident-memory');
    line(
      `| 5 | worker memory per waiting stop, ${n0(r.stops)} in flight | **failed**: ${r.errors.join('; ').replace(/\|/g, '\\|')} | | < ${kb(inc.targets.maxBytesPerStop)} | **missed** |`,
    );
  }
}

export function renderIncident(line: Line, inc: IncidentResult, tuned: TunedIncident | undefined, from: string): void {
  const d = inc.defaults;
  line('## 5. Incident scale');
  line();
  line(from);
  line();
  line(
    `N stops, each with one volume stuck in \`detaching\` forever, on one worker; then what that does to other stops on the same worker. Each row starts a fresh worker in a child process (\`bench/incident-worker.ts\`) built as \`stopflow worker\` builds it with an empty environment: \`maxCachedWorkflows\` ${n0(d.maxCachedWorkflows)}, ${n0(d.maxConcurrentActivities)} activity slots for workflows' urgent work, ${n0(d.maxConcurrentWaits)} slots on the waits task queue, poll ${sec(d.pollIntervalMs)}, hold window ${sec(d.holdMs)}, longest pause ${sec(d.maxPollIntervalMs)}, Node's default heap for the main thread and the worker's own limit for the workflow thread's (200 MB + 2 MB per cached stop), no flag but \`--import tsx\`; the workflow bundle is built once by the benchmark, and the sweep's activities and metrics are not registered. Its backend is the simulated cloud declaring a call budget of ${num(inc.simBudget.callsPerSecond)} calls/s with a burst of ${n0(inc.simBudget.burst)} (five times the aws provider's default rate, so that ramping 10,000 stops takes minutes) and batches of up to ${n0(inc.simMaxBatch)} volumes, or, in the aws rows, the aws provider with its defaults (budget ${num(inc.awsBudget.callsPerSecond)}/s, burst ${n0(inc.awsBudget.burst)}, ${n0(inc.awsMaxBatch)} volumes per \`DescribeVolumes\`) against the local EC2 server of the tests (\`test/support/ec2-query-server.ts\`, in the benchmark's process), which counts the calls it receives. In each row:`,
  );
  line();
  line(
    "1. **idle**: one healthy stop runs first (not counted: the workflow code loaded once in every row), then the worker's RSS is sampled, its cloud already seeded.",
  );
  line(
    "2. **ramp**: the N stops are started (50 starts in flight) with their volume named, until the backend has answered every stuck volume's detach request and the worker has no workflow task left; each stop then waits on its volume. The detach requests go through the budget, so the ramp takes about N ÷ budget seconds.",
  );
  line(
    `3. **waiting**: RSS (no forced GC: the process as it runs), then every backend call over ${n0(inc.windowMs / 1000)} s while nothing but the N waits runs: the simulated provider's own \`calls\` count, or every action the EC2 server received. "Volume states read" counts volumes whose state a call read (one batched call reads many). "Wait slots busy" (and, in brackets, the waits the worker's watch list answers for, holding no slot) and "stuck volumes checked" (at least once since their stop started) show whether the waits fit their slots.`,
  );
  line(
    `4. **healthy**: ${inc.healthyStops} stops with 2 volumes that detach at once, started one every ${ms(inc.healthySpacingMs)} whether or not the previous one ended; start → result of each. p99 is nearest-rank (with ${inc.healthyStops} samples, ${rankOf(inc.healthyStops)}). A stop not done by the cap counts as the time it had waited, a lower bound. The aws rows' stops also wait for \`StopInstances\` to report \`stopped\`: the provider's 5 s stop poll, so their figures are not comparable with the simulated rows'.`,
  );
  line(
    `5. **abort**: ${inc.probes} probe stops, ${inc.probeSpacingMs ? `one after another and at most one every ${ms(inc.probeSpacingMs)} (each costs six budgeted calls: back to back they would spend more than the aws budget themselves, and the force would wait for tokens they spent)` : 'one after another'}, each with one stuck volume: once its detach request reached the backend, \`abort\` is sent and timed to its force-detach reaching the backend (Date.now() in the worker, as in "Reaction")${inc.rows.some((r) => r.abort?.activityStarted) ? ', and to its force-detach activity starting (an activity interceptor on the worker: the path the floor measures, before the force reads the volume and takes its budget tokens)' : ''}. After each probe, one sample of Temporal's own floor as in "Reaction": \`signalFloor\` on a baseline worker in the benchmark's process, timed from the signal to its activity, so both see the same server load${inc.rows.some((r) => r.abort?.floorInWorker) ? "; and one more on a baseline worker inside the stopflow worker's process, beside it (`floor in the worker`): it shares that process's main thread, Temporal's Rust core, its connection and the CPU, not stopflow's workflow thread, slots or task queue" : ''}.`,
  );
  line();
  line(
    `Rows above ${n0(inc.healthyMaxStops)} stops measure 1-3 only. Every row ends by stopping its worker and terminating its workflows.`,
  );
  line();
  line('What the N waiting stops cost:');
  line();
  line(
    '| backend | N stuck | ramp | worker RSS idle → waiting → end | RSS per waiting stop | backend calls/s while waiting | by operation (/s) | volume states read/s | wait slots busy | stuck volumes checked | worker CPU |',
  );
  line('|---|---|---|---|---|---|---|---|---|---|---|');
  for (const r of inc.rows) {
    const c = r.calls;
    const byOp = c
      ? Object.entries(c.byOperation)
          .map(([op, v]) => `${op} ${num(v, 2)}`)
          .join(', ') || 'none'
      : '';
    line(
      `| ${r.provider} | ${n0(r.stops)} | ${r.rampSeconds === null ? 'failed' : `${num(r.rampSeconds)} s`} | ${num(r.rss.idleMb)} → ${r.rss.loadedMb === null ? '?' : num(r.rss.loadedMb)} → ${r.rss.endMb === null ? '?' : num(r.rss.endMb)} MB | ${r.rss.perWaitingStopBytes === null ? 'n/a' : `**${kb(r.rss.perWaitingStopBytes)}**`} | ${c ? `**${num(c.perSecond, 2)}**` : ''} | ${byOp} | ${c ? num(c.volumesCheckedPerSecond) : ''} | ${r.waiting ? `${n0(r.waiting.waitSlotsBusy)}${r.waiting.watched !== undefined ? ` (${n0(r.waiting.watched)} watched)` : ''}` : ''} | ${r.waiting ? `${n0(r.waiting.checked)} of ${n0(r.stops)}` : ''} | ${c ? `${num(c.workerCpuPercent)}%` : ''} |`,
    );
  }
  line();
  if (inc.rows.some((r) => r.calls?.temporal)) {
    line(
      "What they ask of the Temporal server over the same window: requests its frontend received, by its own counters (`service_requests`), from every client (the worker's polls, completions and heartbeats; the benchmark's own few). A wait the watch list answers for (workflow version 8) is one activity task when it starts, then one `RecordActivityTaskHeartbeat` a little before each heartbeat timeout, sent by the list at a phase of its own (every 80 s in version 8; since version 9 the timeout is the worker's setting: every 200 s of 5 min in 0.2.5 to 0.2.7, every 13 min of 15 min since 0.2.8), so the window sees the steady rate from the start; before version 8, each attempt of a wait was one activity task and, past the hold window, one `RespondActivityTaskFailed` (`StillDetaching`, retried by the server later).",
    );
    line();
    line('| backend | N stuck | Temporal requests/s while waiting | per stuck volume, per minute | largest (/s) |');
    line('|---|---|---|---|---|');
    for (const r of inc.rows) {
      const t = r.calls?.temporal;
      if (!t) continue;
      const largest = Object.entries(t.byOperation)
        .sort((a, b) => b[1] - a[1])
        .slice(0, 4)
        .map(([op, v]) => `${op} ${num(v)}`)
        .join(', ');
      const perVolume = r.stops > 0 ? num((t.perSecond * 60) / r.stops, 2) : 'n/a';
      line(`| ${r.provider} | ${n0(r.stops)} | **${num(t.perSecond)}** | ${perVolume} | ${largest || 'none'} |`);
    }
    line();
  }
  line('What other stops on the same worker see:');
  line();
  line(
    '| backend | N stuck | healthy stop p50 | healthy stop p99 | × N = 0 (p50 / p99) | abort → force p50 / p99 / max | of which abort → its activity started, p50 / p99 | floor: signal → activity p50 / p99 / max | abort p99 over the floor | floor in the worker p50 / p99 | backend calls/s during the aborts (budget) |',
  );
  line('|---|---|---|---|---|---|---|---|---|---|---|');
  const zero = base(inc);
  for (const r of inc.rows) {
    if (!r.healthy && !r.abort) continue;
    const h = r.healthy;
    const ratio = r.provider === 'simulated' ? healthyRatios(r, zero) : null;
    const cut = h && h.unfinished > 0 ? ` (${h.unfinished} not done by the cap: ≥)` : '';
    const a = r.abort;
    line(
      `| ${r.provider} | ${n0(r.stops)} | ${h ? `${ms(h.p50)}${cut}` : ''} | ${h ? `**${ms(h.p99)}**` : ''} | ${ratio ? `${num(ratio.p50, 2)} / **${num(ratio.p99, 2)}**` : r.provider === 'aws' ? 'n/a (stop poll)' : ''} | ${a ? `${ms(a.stopflow.p50)} / **${ms(a.stopflow.p99)}** / ${ms(a.stopflow.max)}` : ''} | ${a?.activityStarted ? `${ms(a.activityStarted.p50)} / ${ms(a.activityStarted.p99)}` : ''} | ${a ? `${ms(a.floor.p50)} / ${ms(a.floor.p99)} / ${ms(a.floor.max)}` : ''} | ${a ? `**${ms(a.stopflow.p99 - a.floor.p99)}**` : ''} | ${a?.floorInWorker ? `${ms(a.floorInWorker.p50)} / ${ms(a.floorInWorker.p99)}` : ''} | ${a?.callsPerSecond !== undefined ? `${num(a.callsPerSecond, 1)} (${num((r.provider === 'aws' ? inc.awsBudget : inc.simBudget).callsPerSecond, 0)})` : ''} |`,
    );
  }
  line();
  for (const r of inc.rows) for (const e of r.errors) line(`- **failed**, ${r.provider} N = ${n0(r.stops)}: ${e}`);
  if (inc.rows.some((r) => r.errors.length > 0)) line();
  renderSplits(line, inc);
  if (tuned) renderTuned(line, tuned);
}

const SEGMENTS: Array<[keyof PathSummary, string]> = [
  ['toServer', 'signal sent → recorded'],
  ['toWorkflowTask', '→ its workflow task started'],
  ['workflowTask', 'workflow task run'],
  ['toActivity', '→ activity task started'],
  ['toCode', "→ activity's code runs"],
];

/** Where the time of an abort and of a healthy stop goes, by the server's event times. */
function renderSplits(line: Line, inc: IncidentResult): void {
  const withPaths = inc.rows.filter((r) => r.abort?.paths);
  if (withPaths.length > 0) {
    const refined = withPaths.every((r) => r.abort?.paths?.reading === 'scheduling-task');
    line(
      `Where abort → force goes, by the server's own event times (each probe's and each floor sample's history, read at the end of the abort phase${
        refined
          ? '; a path whose activity needed a second attempt is left out): the signal recorded, then until the workflow task that scheduled the activity started (the first task after the signal, or a later one when the workflow first waited for something else), that task'
          : '): the signal recorded, then until the first workflow task started after it, that task'
      }'s run (until its completion reached the server), the activity task handed to a worker, then the worker running the activity's code. p50 / p99 of each part, ms.${
        refined
          ? ''
          : " (This run's reading, which later runs refine: when the first task after the signal did not itself schedule the activity, the wait for the one that did is counted in the activity task's hand-off, and an activity's second attempt would be taken for its start.)"
      }`,
    );
    line();
    line(`| backend | N stuck | path | ${SEGMENTS.map(([, name]) => name).join(' | ')} |`);
    line(`|---|---|---|${SEGMENTS.map(() => '---|').join('')}`);
    for (const r of withPaths) {
      const p = r.abort?.paths;
      if (!p) continue;
      const cells = (summary: PathSummary) =>
        SEGMENTS.map(([key]) => `${n0(summary[key].p50)} / ${n0(summary[key].p99)}`).join(' | ');
      line(`| ${r.provider} | ${n0(r.stops)} | stopflow | ${cells(p.stopflow)} |`);
      line(`| | | floor | ${cells(p.floor)} |`);
      line(`| | | floor in the worker | ${cells(p.floorInWorker)} |`);
    }
    line();
    // The in-worker floor's hand-offs (server-side: the task waiting for that worker's poll) can be slow for reasons
    // of its own; say so where they are, so that only its workflow task run is read against stopflow's.
    const slowHandOffs = withPaths.filter((r) => {
      const p = r.abort?.paths;
      return p && p.floorInWorker.toWorkflowTask.p50 > p.floor.toWorkflowTask.p50 + 20;
    });
    if (slowHandOffs.length > 0) {
      line(
        `In ${slowHandOffs.map(rowName).join(', ')}, the floor in the worker waited ${slowHandOffs.map((r) => ms(r.abort?.paths?.floorInWorker.toWorkflowTask.p50 ?? Number.NaN)).join(', ')} at the median for each hand-off to its worker (the task waiting for that worker's next poll), where stopflow's own tasks, polled by the same process, waited ${slowHandOffs.map((r) => ms(r.abort?.paths?.stopflow.toWorkflowTask.p50 ?? Number.NaN)).join(', ')}: a property of that second worker's polling, not of the process's load, which this benchmark does not explain. Its total is therefore no floor; its workflow task run (the worker's own time) is the part to compare.`,
      );
      line();
    }
  }
  const withSplits = inc.rows.filter((r) => r.healthy?.split);
  if (withSplits.length > 0) {
    line(
      "Where a healthy stop's time goes, by its history: from its first event to its last, the time its workflow tasks waited to be handed to a worker (the server's queue, or a worker with no free slot), ran (on the worker, until the completion reached the server), and its activities' first attempts waited likewise (summed: the two detaches overlap). The median stop, and the slowest (its split covers what it did by the time it was read, if it was not done by the cap):",
    );
    line();
    // Runs since the worker's main-thread collections were recorded also show those that fell within each stop.
    const gc = withSplits.some((r) => r.healthy?.mainThreadGc);
    line(
      `| backend | N stuck | stop | start → result | first → last event | workflow tasks (n) | tasks waited | tasks ran | activities waited |${gc ? ' main-thread GC pauses during it |' : ''}`,
    );
    line(`|---|---|---|---|---|---|---|---|---|${gc ? '---|' : ''}`);
    for (const r of withSplits) {
      const split = r.healthy?.split;
      if (!split) continue;
      const cells = (s: HealthySplit) =>
        `${ms(s.total)} | ${s.workflowTasks} | ${ms(s.workflowTasksQueued)} | ${ms(s.workflowTasksRan)} | ${ms(s.activitiesQueued)}${gc ? ` | ${s.mainThreadGcMs === undefined ? '' : ms(s.mainThreadGcMs)}` : ''}`;
      line(`| ${r.provider} | ${n0(r.stops)} | median | ${ms(split.median.latencyMs)} | ${cells(split.median)} |`);
      const slowest = split.slowest[0];
      if (slowest) line(`| | | slowest | ${ms(slowest.latencyMs)} | ${cells(slowest)} |`);
    }
    line();
    if (gc) {
      const phases = withSplits
        .filter((r) => r.healthy?.mainThreadGc)
        .map((r) => {
          const g = r.healthy?.mainThreadGc;
          const d = r.healthy?.eventLoopDelay;
          return `${rowName(r)}: ${n0(g?.count ?? 0)} collections, ${n0(g?.longCount ?? 0)} of 5 ms or more, the longest ${ms(g?.maxMs ?? 0)}${d ? `; event-loop delay p99 ${ms(d.p99Ms)}, max ${ms(d.maxMs)}` : ''}`;
        });
      line(
        `The worker's main thread (the activities, provider calls and the SDK's hand-offs to the workflow thread) over each healthy phase, by Node's own GC records (its workflow thread's collections are its own isolate's, not counted): ${phases.join('; ')}. "Main-thread GC pauses during it" sums the pauses of 5 ms or more that overlapped the stop.`,
      );
      line();
    }
  }
}

/** The tuned server's rows: the same measurements, only the server's queue-read limits raised. */
function renderTuned(line: Line, tuned: TunedIncident): void {
  const settings = Object.entries(tuned.dynamicConfig)
    .map(([k, v]) => `\`${k}=${v}\``)
    .join(', ');
  line(
    `*Tuned server* (\`incidentTuned\`): the rows ${tuned.rows.map(rowName).join('; ')} again, one by one as above, on a second dev server started with ${settings}${'matching.useNewMatcher' in tuned.dynamicConfig ? '' : ' and `matching.useNewMatcher=true` as on the main server (passed by the code of this run, not recorded in its results)'} (the dev server reads its single history shard's task queues at most 20 times a second by default; a production cluster has many shards). Not what stopflow needs or ships: it shows how much of the default server's figures is that limit.`,
  );
  line();
  line(
    '| backend | N stuck | healthy stop p50 / p99 | × N = 0 (p50 / p99) | abort → force p50 / p99 | floor p50 / p99 | abort p99 over the floor | floor in the worker p50 / p99 |',
  );
  line('|---|---|---|---|---|---|---|---|');
  const zero = base(tuned);
  for (const r of tuned.rows) {
    const h = r.healthy;
    const a = r.abort;
    const ratio = r.provider === 'simulated' ? healthyRatios(r, zero) : null;
    line(
      `| ${r.provider} | ${n0(r.stops)} | ${h ? `${ms(h.p50)} / **${ms(h.p99)}**` : ''} | ${ratio ? `${num(ratio.p50, 2)} / **${num(ratio.p99, 2)}**` : r.provider === 'aws' ? 'n/a (stop poll)' : ''} | ${a ? `${ms(a.stopflow.p50)} / **${ms(a.stopflow.p99)}**` : ''} | ${a ? `${ms(a.floor.p50)} / ${ms(a.floor.p99)}` : ''} | ${a ? `**${ms(a.stopflow.p99 - a.floor.p99)}**` : ''} | ${a?.floorInWorker ? `${ms(a.floorInWorker.p50)} / ${ms(a.floorInWorker.p99)}` : ''} |`,
    );
  }
  line();
  for (const r of tuned.rows)
    for (const e of r.errors) line(`- **failed** (tuned), ${r.provider} N = ${n0(r.stops)}: ${e}`);
  if (tuned.rows.some((r) => r.errors.length > 0)) line();
}

/** "What bounds it" lines for the incident targets missed. */
export function renderIncidentBounds(
  line: Line,
  inc: IncidentResult,
  tuned: TunedIncident | undefined,
  missed: string[],
): void {
  const d = inc.defaults;
  const zero = base(inc);
  if (missed.includes('incident-healthy')) {
    const r = healthyTargetRow(inc);
    const why: string[] = [];
    if (r?.waiting && r.waiting.checked < r.stops) {
      why.push(
        `only ${n0(r.waiting.checked)} of the ${n0(r.stops)} stuck volumes had been checked even once by the end of the waiting window: a wait holds one of the ${n0(d.maxConcurrentWaits)} slots of the waits task queue for its whole ${sec(d.holdMs)} hold window, so the rest queue on the server. A healthy volume's own wait (\`awaitDetached\`) goes to that same queue at the same priority (only force carries \`priorityKey: 1\`), so it queues behind them: the isolation keeps urgent activities off that queue, but a healthy stop still needs one wait on it`,
      );
    }
    const limit = r?.calls ? budgetLimit(inc, r.provider) : 0;
    if (r?.calls && r.calls.perSecond >= 0.8 * (r.provider === 'aws' ? inc.awsBudget : inc.simBudget).callsPerSecond) {
      why.push(
        `the call budget was spent (${num(r.calls.perSecond, 2)} calls/s against ${num(limit, 2)}/s): each of a healthy stop's budgeted calls in a row (the detach requests, its state check, the final listing and \`stopInstance\`) waits for a token`,
      );
    }
    const slow = r?.healthy?.split?.slowest[0];
    const typical = zero?.healthy?.split?.slowest[0];
    if (why.length === 0 && r?.calls && r.healthy) {
      const p50 = zero ? healthyRatios(r, zero)?.p50 : undefined;
      const shared = `with ${r.healthy.samples} samples the p99 is ${rankOf(r.healthy.samples)}${p50 !== undefined ? ` (the median was ${num(p50, 2)}× N = 0's)` : ''}, and the dev server, the worker (${num(r.calls.workerCpuPercent)}% of a core while the stops waited) and the benchmark share the machine's cores`;
      why.push(
        `neither the waits task queue nor the call budget was full at this N (all ${n0(r.waiting?.checked ?? 0)} stuck volumes checked, ${num(r.calls.perSecond, 2)} calls/s)${slow && typical ? `; ${shared}` : `, so these figures name no stopflow cause: ${shared}`}`,
      );
    }
    if (slow && typical) {
      const ranOver = slow.workflowTasksRan - typical.workflowTasksRan;
      const waitedOver =
        slow.workflowTasksQueued + slow.activitiesQueued - typical.workflowTasksQueued - typical.activitiesQueued;
      why.push(
        `by its history, the slowest healthy stop at this N (${ms(slow.latencyMs)}) had its workflow tasks wait ${ms(slow.workflowTasksQueued)} and its activities ${ms(slow.activitiesQueued)} to be handed to a worker (the server's queue, or no free slot), and its workflow tasks run ${ms(slow.workflowTasksRan)} (on the worker); the slowest stop of N = 0 (${ms(typical.latencyMs)}): ${ms(typical.workflowTasksQueued)}, ${ms(typical.activitiesQueued)} and ${ms(typical.workflowTasksRan)}. ${ranOver >= waitedOver ? `More of the excess (${ms(ranOver)} against ${ms(waitedOver)}) is in its workflow tasks' runs on the stopflow worker than in hand-offs` : `More of the excess (${ms(waitedOver)} against ${ms(ranOver)}) is in hand-offs than in its workflow tasks' runs`}`,
      );
      const delay = r?.healthy?.eventLoopDelay;
      if (slow.mainThreadGcMs !== undefined && delay) {
        why.push(
          `the worker's main thread (activities, provider calls, the hand-offs to the workflow thread) was paused by its collections of 5 ms or more for ${ms(slow.mainThreadGcMs)} in all during that stop, and over the whole healthy phase its event loop was at most ${ms(delay.maxMs)} late at a time (a stop's hand-offs through it each wait at most that, and several can add up; the workflow thread's collections, the SDK's core and the server's answers are not measured here)`,
        );
      }
    }
    const floorNow = r?.abort?.floor.p99;
    const floorIdle = zero?.abort?.floor.p99;
    if (floorNow !== undefined && floorIdle !== undefined && floorIdle > 0 && floorNow > floorIdle) {
      why.push(
        `Temporal's own floor (signal → activity, a minimal workflow on a worker of its own) was ${num(floorNow / floorIdle, 2)}× slower at p99 in this row than in N = 0's (${ms(floorNow)} against ${ms(floorIdle)}): the same dev server, holding the N waiting stops, hands out every task more slowly, whoever's`,
      );
    }
    const tunedRow = tuned?.rows.find((t) => t.provider === 'simulated' && t.stops === r?.stops && t.healthy);
    const tunedRatio = tunedRow && tuned ? healthyRatios(tunedRow, base(tuned)) : null;
    if (tunedRow?.healthy && tunedRatio) {
      why.push(
        `on the tuned server (queue reads not limited to 20 a second) the same row gives p99 ${ms(tunedRow.healthy.p99)}, ${num(tunedRatio.p99, 2)}× its own N = 0 (${tunedRatio.p99 <= inc.targets.healthyP99Ratio ? 'within' : 'still over'} the target)`,
      );
    }
    const ratio = r && zero ? healthyRatios(r, zero) : null;
    line(
      `**Healthy stops while ${n0(r?.stops ?? 0)} stops are stuck** (p99 ${r?.healthy ? ms(r.healthy.p99) : 'n/a'}, ${ratio ? `${num(ratio.p99, 2)}×` : 'n/a'} the N = 0 row's ${zero?.healthy ? ms(zero.healthy.p99) : 'n/a'}): ${why.join('; and ')}.`,
    );
    line();
  }
  for (const provider of ['simulated', 'aws'] as const) {
    if (!missed.includes(`incident-calls-${provider}`)) continue;
    const rows = inc.rows.filter((r) => r.provider === provider && r.calls && r.stops > 0);
    line(
      `**Backend calls, ${provider}** (${rows.map((r) => `${n0(r.stops)}: ${num(r.calls?.perSecond ?? Number.NaN, 2)}/s`).join('; ')}; budget ${num(budgetLimit(inc, provider), 2)}/s over the window): by operation, ${rows
        .map(
          (r) =>
            `${n0(r.stops)}: ${Object.entries(r.calls?.byOperation ?? {})
              .map(([op, v]) => `${op} ${num(v, 2)}`)
              .join(', ')}`,
        )
        .join(
          '; ',
        )}. The budget is per worker process and covers every call of the provider; calls above it mean a path that does not take a token.`,
    );
    line();
  }
  if (missed.includes('incident-abort')) {
    const rows = abortRows(inc);
    const p50 = rows.map((r) => `${rowName(r)}: ${ms(r.abort.stopflow.p50 - r.abort.floor.p50)}`).join('; ');
    const p99 = rows.map((r) => `${rowName(r)}: ${ms(r.abort.stopflow.p99 - r.abort.floor.p99)}`).join('; ');
    const medians = rows.map((r) => r.abort.stopflow.p50 - r.abort.floor.p50);
    const [low, high] = [Math.min(...medians), Math.max(...medians)];
    const gatherText = `The median's excess ranges from ${ms(low)} to ${ms(high)}.`;
    const overBudget = rows
      .filter((r) => r.abort.callsPerSecond !== undefined)
      .filter(
        (r) =>
          (r.abort.callsPerSecond ?? 0) >= 0.9 * (r.provider === 'aws' ? inc.awsBudget : inc.simBudget).callsPerSecond,
      )
      .map(rowName);
    const budgetText =
      overBudget.length > 0
        ? ` In ${overBudget.join(', ')} the backend received 90% of the budget or more during the aborts (every request it counted, the probes' own included, and the aws stop's \`DescribeInstances\` polls inside a \`StopInstances\` call, which the budget takes as one call): the read and the force are urgent calls, first in the budget's queue, but they wait for a token when the bucket is empty.`
        : '';
    const split = rows.filter((r) => r.abort.activityStarted);
    const splitText =
      split.length > 0
        ? ` Split at the force-detach activity's start: abort → the activity starting, the path the floor measures, is over the floor at p99 by ${split.map((r) => `${rowName(r)}: ${ms((r.abort.activityStarted?.p99 ?? 0) - r.abort.floor.p99)}`).join('; ')}; the force's own part (its budget token, since 0.2.10 the server recording its moment, and until 0.2.13 a state read first, up to the backend), as the difference of the two medians, is ${split.map((r) => `${rowName(r)}: ${ms(r.abort.stopflow.p50 - (r.abort.activityStarted?.p50 ?? 0))}`).join('; ')}.`
        : '';
    const ownPart = split.map((r) => r.abort.stopflow.p50 - (r.abort.activityStarted?.p50 ?? 0));
    const withPaths = rows.some((r) => r.abort.paths);
    const excessBefore =
      split.length > 0 && Math.max(...ownPart) <= 5
        ? ` So where a row misses, the excess came before the force's activity started, on the path the floor takes too (signal → workflow task → activity task)${withPaths ? '' : ", but to a worker process busier than the floor's (its N waits, their checks), with a workflow task that carries more commands than the floor's one (the wait's cancel and the stop's search attributes beside the force)"}.`
        : '';
    const pathText = rows
      .filter((r) => r.abort.paths && r.abort.stopflow.p99 - r.abort.floor.p99 > inc.targets.abortOverFloorMs)
      .map((r) => {
        const p = r.abort.paths;
        if (!p) return '';
        const [key, name] = SEGMENTS.reduce((worst, seg) =>
          p.stopflow[seg[0]].p99 - p.floor[seg[0]].p99 > p.stopflow[worst[0]].p99 - p.floor[worst[0]].p99 ? seg : worst,
        );
        return `${rowName(r)}: "${name}", p99 ${ms(p.stopflow[key].p99)} against the floor's ${ms(p.floor[key].p99)} and ${ms(p.floorInWorker[key].p99)} for the floor in the worker's process`;
      })
      .filter((t) => t !== '');
    // Rows that miss where stopflow's workflow task run is slower at p99 than the in-worker floor's, while the
    // process's main thread stalled less than that difference.
    const inWorkflowThread = rows.filter((r) => {
      const p = r.abort.paths;
      const stall = r.abort.eventLoopDelay?.maxMs;
      if (!p || stall === undefined || r.abort.stopflow.p99 - r.abort.floor.p99 <= inc.targets.abortOverFloorMs)
        return false;
      const over = p.stopflow.workflowTask.p99 - p.floorInWorker.workflowTask.p99;
      return over > inc.targets.abortOverFloorMs && stall < over;
    });
    const gcText =
      inWorkflowThread.length > 0
        ? ` In ${inWorkflowThread.map(rowName).join(', ')}, a workflow task's run, the stopflow worker's own time, is slower at p99 than the floor's in the same process, and the process's main thread never stalled that long (event-loop delay at most ${inWorkflowThread.map((r) => ms(r.abort.eventLoopDelay?.maxMs ?? Number.NaN)).join(', ')}): what delays it is in stopflow's workflow thread, which the floor does not share. That thread holds the stops cached (${n0(d.maxCachedWorkflows)} at most, ${inWorkflowThread.map((r) => n0(r.waiting?.cachedWorkflows ?? 0)).join(', ')} here) and creates each new stop afresh. A likely cause, not measured by this benchmark: its garbage collections. On this machine (\`--trace-gc\` on the incident worker, one quick aws 200 row, 2026-11-30) they paused that thread for 8 to 30 ms at a time, several times a minute while probes started, and a task that lands in one waits it out.`
        : '';
    // Rows that miss where stopflow's workflow task run is within the target of the in-worker floor's at p99, and the
    // in-worker floor's own run grew from its N = 0 figure: a minimal workflow on the same process pays it too.
    const idleRun = (r: IncidentRow) =>
      abortRows(inc).find((z) => z.provider === r.provider && z.stops === 0)?.abort.paths?.floorInWorker.workflowTask
        .p99;
    const inProcess = rows.filter((r) => {
      const p = r.abort.paths;
      const idle = idleRun(r);
      if (!p || idle === undefined || r.stops === 0) return false;
      if (r.abort.stopflow.p99 - r.abort.floor.p99 <= inc.targets.abortOverFloorMs) return false;
      return (
        p.stopflow.workflowTask.p99 - p.floorInWorker.workflowTask.p99 <= inc.targets.abortOverFloorMs &&
        p.floorInWorker.workflowTask.p99 > idle
      );
    });
    const processText =
      inProcess.length > 0
        ? ` In ${inProcess.map(rowName).join(', ')}, the minimal workflow run inside the stopflow worker's process took longer over its workflow task too: p99 ${inProcess.map((r) => `${ms(idleRun(r) ?? Number.NaN)} at N = 0, ${ms(r.abort.paths?.floorInWorker.workflowTask.p99 ?? Number.NaN)} here`).join('; ')}, with stopflow's within ${inProcess.map((r) => ms((r.abort.paths?.stopflow.workflowTask.p99 ?? 0) - (r.abort.paths?.floorInWorker.workflowTask.p99 ?? 0))).join(', ')} of it. So the excess is what a process holding the N waits (its watch list's timers, checks and heartbeats on the main thread every workflow task passes through, and their garbage) costs any workflow task run there, not stopflow's workflow code; the floor's own worker runs in a process with no waits. Running the waits in a process of their own would take it off the urgent path; stopflow does not do that today.`
        : '';
    const pathsText =
      pathText.length > 0
        ? ` By the server's event times, the part of the path whose p99 is furthest over the floor's, where a row misses: ${pathText.join('; ')}.${gcText}${processText}`
        : '';
    const tunedText = tuned
      ? ` On the tuned server, abort p99 over the floor: ${abortRows(tuned)
          .map((r) => `${rowName(r)}: ${ms(r.abort.stopflow.p99 - r.abort.floor.p99)}`)
          .join('; ')}.`
      : '';
    const rankText = rankOf(inc.probes, 'sample');
    line(
      `**Abort → force-detach while stops wait**: over the floor at the median ${p50}; at p99 ${p99}. Until 0.2.13 a force started with a state read (force is never sent for a volume the backend reads detached): an urgent check, batched apart from the waits' checks and sent at once (\`activities/state-checks.ts\`), but one more backend round trip than the floor's activity makes. Since 0.2.13 a first force goes out unread where the backend refuses a force of a volume not attached (aws and the simulated cloud, both here), so its own part is its budget token, the server recording its moment (\`RecordActivityTaskHeartbeat\`, one round trip) and the call.${budgetText} ${gatherText}${splitText}${excessBefore}${pathsText}${tunedText} At p99, with ${inc.probes} samples per row the p99 is ${rankText}, and both sides are one hand-off of the dev server's task queues (≈ 50 ms each, see "Reaction") from being slower.`,
    );
    line();
  }
  if (missed.includes('incident-memory')) {
    const rows = memoryRows(inc);
    const sim = inc.rows.filter((r) => r.provider === 'simulated' && r.rss.loadedMb !== null && r.stops > 0);
    const big = sim.at(-1);
    const small = sim.at(-2);
    const marginal =
      big && small && big.rss.loadedMb !== null && small.rss.loadedMb !== null
        ? ((big.rss.loadedMb - big.rss.idleMb - (small.rss.loadedMb - small.rss.idleMb)) * 2 ** 20) /
          (big.stops - small.stops)
        : null;
    line(
      `**Memory per waiting stop** (${rows.map((r) => `${kb(r.rss.perWaitingStopBytes ?? Number.NaN)} at ${n0(r.stops)}`).join('; ')}, default settings). With \`maxCachedWorkflows\` ${n0(d.maxCachedWorkflows)}, up to ${n0(d.maxCachedWorkflows)} stops stay cached whatever N is, and the workflow thread's V8 heap, capped from that number, holds them and the garbage of replaying the others when they wake: a fixed cost of the worker under load that the per-stop figure spreads over N, so it falls as N grows.${marginal !== null && big && small ? ` Each stop beyond ${n0(small.stops)} added ≈ ${kb(marginal)} (the growth from ${n0(small.stops)} to ${n0(big.stops)} waiting stops, over the ${n0(big.stops - small.stops)} stops added).` : ''} RSS is sampled without a forced GC, so it includes garbage not yet collected; the memory scenario's forced-GC figures are the finer measurement of the same cost.`,
    );
    line();
  }
}

/** Which sample a nearest-rank p99 of `samples` is: "the slowest stop", "the 2nd slowest sample". */
function rankOf(samples: number, noun = 'stop'): string {
  const fromTop = samples - Math.ceil(0.99 * samples) + 1;
  return fromTop === 1 ? `the slowest ${noun}` : `the ${ordinal(fromTop)} slowest ${noun}`;
}

/** 2 → "2nd": for "the 2nd slowest sample". */
function ordinal(n: number): string {
  const tens = n % 100;
  if (tens >= 11 && tens <= 13) return `${n}th`;
  return `${n}${['th', 'st', 'nd', 'rd'][n % 10] ?? 'th'}`;
}
