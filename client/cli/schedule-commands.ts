/**
 * `stopflow schedule apply|show|delete`: the Temporal Schedule that runs the
 * sweep (workflows/sweep.ts, docs/sweep.md). `apply` is declarative and
 * idempotent: it creates the schedule, or updates the existing one to exactly
 * the given flags (keeping whether it is paused). Exit codes: 0 ok, 2 bad
 * input, 3 no connection or no such schedule.
 */
import {
  type Client,
  ScheduleAlreadyRunning,
  type ScheduleDescription,
  ScheduleNotFoundError,
  type ScheduleOptionsStartWorkflowAction,
  type ScheduleSpec,
  type ScheduleUpdateOptions,
} from '@temporalio/client';
import type { Command } from 'commander';
import { DURATION_RULE, formatDuration, parseDuration } from '../../common/duration';
import { DEFAULT_TASK_QUEUE } from '../../common/names';
import {
  MAX_SWEEP_INSTANCES,
  parseSweepInput,
  SWEEP_DEFAULTS,
  SWEEP_WORKFLOW_TYPE,
  type SweepInput,
  SweepInputError,
  type sweep,
} from '../../workflows/sweep';
import { CliError, EXIT, withTemporalClient } from './errors';

export const DEFAULT_SCHEDULE_ID = 'stopflow-sweep';
export const DEFAULT_SWEEP_EVERY = '5m';
/** More often than this is a load on visibility and the backends, not more safety. */
const MIN_EVERY_MS = 60_000;
const SCHEDULE_ID_PATTERN = /^[A-Za-z0-9._:-]{1,200}$/;

export interface SweepScheduleOptions {
  scheduleId?: string;
  /** How often the sweep runs (Duration, at least 1m). Default 5m. */
  every?: string | number;
  /** The task queue the sweep runs on (a worker with the sweep activities must poll it). Default `stopflow`. */
  taskQueue?: string;
  /** The sweep's input; `apply` replaces the previous one entirely. */
  input?: SweepInput;
}

export interface AppliedSchedule {
  scheduleId: string;
  created: boolean;
  everyMs: number;
  taskQueue: string;
  input: SweepInput;
}

/** Bad input, named by field and rule; nothing was sent. */
export class ScheduleInputError extends Error {
  override name = 'ScheduleInputError';
}

interface CheckedOptions {
  scheduleId: string;
  everyMs: number;
  taskQueue: string;
  input: SweepInput;
}

function check(options: SweepScheduleOptions): CheckedOptions {
  const scheduleId = options.scheduleId ?? DEFAULT_SCHEDULE_ID;
  if (!SCHEDULE_ID_PATTERN.test(scheduleId)) {
    throw new ScheduleInputError('schedule-id: must be 1-200 characters of [A-Za-z0-9._:-]');
  }
  const everyMs = parseDuration(options.every ?? DEFAULT_SWEEP_EVERY);
  if (everyMs === undefined || everyMs === null) {
    throw new ScheduleInputError(`every: ${DURATION_RULE.replace('"off", ', '')}, not "off"`);
  }
  if (everyMs < MIN_EVERY_MS) throw new ScheduleInputError('every: must be at least 1m');
  const taskQueue = options.taskQueue ?? DEFAULT_TASK_QUEUE;
  if (taskQueue.length === 0 || taskQueue.length > 255) {
    throw new ScheduleInputError('task-queue: must be 1-255 characters');
  }
  const input = options.input ?? {};
  try {
    parseSweepInput(input, true);
  } catch (err) {
    if (err instanceof SweepInputError) throw new ScheduleInputError(err.issues.join('; '));
    throw err;
  }
  return { scheduleId, everyMs, taskQueue, input };
}

function describeInput(input: SweepInput): string {
  const config = parseSweepInput(input, true);
  return [
    `stuckAfter ${formatDuration(config.stuckAfterMs)}`,
    `lookback ${formatDuration(config.lookbackMs)}`,
    `startStopsForLeftovers ${config.startStopsForLeftovers ? 'on' : 'off'}`,
    `provider ${config.provider ?? "(each stop's own)"}`,
    `maxInstances ${config.maxInstances}`,
  ].join(', ');
}

function scheduleParts(checked: CheckedOptions) {
  const spec: ScheduleSpec = { intervals: [{ every: checked.everyMs }] };
  const action: ScheduleOptionsStartWorkflowAction<typeof sweep> = {
    type: 'startWorkflow',
    workflowType: SWEEP_WORKFLOW_TYPE,
    taskQueue: checked.taskQueue,
    // The server appends the scheduled time, so every run has its own id.
    workflowId: checked.scheduleId,
    args: [checked.input],
    staticSummary: `stopflow sweep every ${formatDuration(checked.everyMs)}: ${describeInput(checked.input)}`,
  };
  // SKIP: a sweep still running when the next is due is not doubled; after an outage, at most one catches up.
  const policies = { overlap: 'SKIP' as const, catchupWindow: checked.everyMs, pauseOnFailure: false };
  return { spec, action, policies };
}

/** Creates the sweep's schedule, or updates it to exactly these options (a paused schedule stays paused). */
export async function applySweepSchedule(client: Client, options: SweepScheduleOptions = {}): Promise<AppliedSchedule> {
  const checked = check(options);
  const { spec, action, policies } = scheduleParts(checked);
  const applied = {
    scheduleId: checked.scheduleId,
    everyMs: checked.everyMs,
    taskQueue: checked.taskQueue,
    input: checked.input,
  };
  try {
    await client.schedule.create({
      scheduleId: checked.scheduleId,
      spec,
      action,
      policies,
      memo: { stopflow: 'sweep' },
    });
    return { ...applied, created: true };
  } catch (err) {
    if (!(err instanceof ScheduleAlreadyRunning)) throw err;
  }
  await client.schedule.getHandle(checked.scheduleId).update((previous): ScheduleUpdateOptions => {
    const { paused, note, remainingActions } = previous.state;
    const state = {
      paused,
      ...(note !== undefined ? { note } : {}),
      ...(remainingActions !== undefined ? { remainingActions } : {}),
    };
    return { spec, action, policies, state };
  });
  return { ...applied, created: false };
}

export interface SweepScheduleView {
  scheduleId: string;
  everyMs: number | null;
  every: string;
  taskQueue: string | undefined;
  workflowType: string;
  input: unknown;
  paused: boolean;
  note?: string;
  nextActionTimes: string[];
  recentActions: { scheduledAt: string; takenAt: string; workflowId: string; runId: string }[];
  actionsTaken: number;
  actionsSkippedOverlap: number;
}

export function viewSchedule(description: ScheduleDescription): SweepScheduleView {
  const everyMs = description.spec.intervals?.[0]?.every ?? null;
  const view: SweepScheduleView = {
    scheduleId: description.scheduleId,
    everyMs,
    every: everyMs === null ? '(not an interval schedule)' : formatDuration(everyMs),
    taskQueue: description.action.taskQueue,
    workflowType: description.action.workflowType,
    input: description.action.args?.[0],
    paused: description.state.paused,
    nextActionTimes: description.info.nextActionTimes.map((t) => t.toISOString()),
    recentActions: description.info.recentActions.map((a) => ({
      scheduledAt: a.scheduledAt.toISOString(),
      takenAt: a.takenAt.toISOString(),
      workflowId: a.action.workflow.workflowId,
      runId: a.action.workflow.firstExecutionRunId,
    })),
    actionsTaken: description.info.numActionsTaken,
    actionsSkippedOverlap: description.info.numActionsSkippedOverlap,
  };
  if (description.state.note) view.note = description.state.note;
  return view;
}

function formatView(view: SweepScheduleView): string {
  let input: string;
  try {
    input = describeInput((view.input ?? {}) as SweepInput);
  } catch {
    input = JSON.stringify(view.input);
  }
  const lines = [
    `schedule ${view.scheduleId}: ${view.workflowType} every ${view.every} on task queue ${view.taskQueue ?? '?'}${view.paused ? ' (PAUSED)' : ''}`,
    `  input: ${input}`,
    `  next: ${view.nextActionTimes.slice(0, 3).join(', ') || '(none)'}`,
    `  actions taken: ${view.actionsTaken}${view.actionsSkippedOverlap ? `, skipped (previous still running): ${view.actionsSkippedOverlap}` : ''}`,
  ];
  if (view.note) lines.push(`  note: ${view.note}`);
  for (const action of view.recentActions.slice(-5)) lines.push(`  ran: ${action.workflowId} at ${action.takenAt}`);
  return lines.join('\n');
}

function withClient<T>(fn: (client: Client) => Promise<T>): Promise<T> {
  return withTemporalClient(fn, (err) => {
    if (err instanceof ScheduleNotFoundError) {
      return new CliError(`no schedule ${err.scheduleId} was found`, EXIT.notFoundOrNoConnection);
    }
    if (err instanceof ScheduleInputError) return new CliError(err.message, EXIT.badInput);
    return undefined;
  });
}

function parseMaxInstances(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > MAX_SWEEP_INSTANCES) {
    throw new CliError(`max-instances: must be a whole number from 1 to ${MAX_SWEEP_INSTANCES}`, EXIT.badInput);
  }
  return n;
}

export function registerScheduleCommands(program: Command): void {
  const schedule = program
    .command('schedule')
    .description('the Temporal Schedule that sweeps for stuck stops and leftover volumes (docs/sweep.md)');

  schedule
    .command('apply')
    .description(
      'create the sweep schedule, or update it to exactly these options (idempotent; a paused schedule stays paused)',
    )
    .option('--every <duration>', 'how often the sweep runs (at least 1m)', DEFAULT_SWEEP_EVERY)
    .option(
      '--stuck-after <duration>',
      'report stops still stopping this long ("off": skip)',
      SWEEP_DEFAULTS.stuckAfter,
    )
    .option(
      '--lookback <duration>',
      'check instances whose latest stop ended stopped this recently ("off": skip)',
      SWEEP_DEFAULTS.lookback,
    )
    .option(
      '--start-stops-for-leftovers',
      'start a stop for every instance with leftover volumes (default: report only)',
    )
    .option('--provider <name>', "ask this provider about every instance (default: each stop's own provider)")
    .option(
      '--max-instances <n>',
      'at most this many stuck stops and stopped instances per sweep',
      String(SWEEP_DEFAULTS.maxInstances),
    )
    .option('--schedule-id <id>', 'the schedule id', DEFAULT_SCHEDULE_ID)
    .option('--task-queue <name>', 'the task queue the sweep runs on (default: STOPFLOW_TASK_QUEUE or "stopflow")')
    .action(
      async (opts: {
        every: string;
        stuckAfter: string;
        lookback: string;
        startStopsForLeftovers?: boolean;
        provider?: string;
        maxInstances: string;
        scheduleId: string;
        taskQueue?: string;
      }) => {
        const input: SweepInput = {
          stuckAfter: opts.stuckAfter,
          lookback: opts.lookback,
          startStopsForLeftovers: opts.startStopsForLeftovers === true,
          maxInstances: parseMaxInstances(opts.maxInstances),
        };
        if (opts.provider !== undefined) input.provider = opts.provider;
        const options: SweepScheduleOptions = {
          scheduleId: opts.scheduleId,
          every: opts.every,
          taskQueue: opts.taskQueue ?? (process.env.STOPFLOW_TASK_QUEUE || DEFAULT_TASK_QUEUE),
          input,
        };
        // Bad input is reported before connecting, so it exits 2 even without a server.
        try {
          check(options);
        } catch (err) {
          if (err instanceof ScheduleInputError) throw new CliError(err.message, EXIT.badInput);
          throw err;
        }
        const applied = await withClient((client) => applySweepSchedule(client, options));
        console.log(
          `${applied.created ? 'created' : 'updated'} schedule ${applied.scheduleId}: sweep every ${formatDuration(applied.everyMs)} on task queue ${applied.taskQueue} (${describeInput(applied.input)})`,
        );
      },
    );

  schedule
    .command('show')
    .description('show the sweep schedule: interval, input, next and recent runs')
    .option('--schedule-id <id>', 'the schedule id', DEFAULT_SCHEDULE_ID)
    .option('--json', 'print JSON')
    .action(async (opts: { scheduleId: string; json?: boolean }) => {
      const view = await withClient(async (client) =>
        viewSchedule(await client.schedule.getHandle(opts.scheduleId).describe()),
      );
      console.log(opts.json ? JSON.stringify(view, null, 2) : formatView(view));
    });

  schedule
    .command('delete')
    .description('delete the sweep schedule (sweeps already running finish)')
    .option('--schedule-id <id>', 'the schedule id', DEFAULT_SCHEDULE_ID)
    .action(async (opts: { scheduleId: string }) => {
      await withClient((client) => client.schedule.getHandle(opts.scheduleId).delete());
      console.log(`deleted schedule ${opts.scheduleId}`);
    });
}
