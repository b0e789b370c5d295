/**
 * sweep: one look, on a schedule, for the two ways a stop can go wrong
 * quietly (docs/sweep.md):
 *
 *   - stuck stops: stops still `stopping` longer than `stuckAfter`
 *     (a visibility query on the StopPhase search attribute);
 *   - leftover volumes: instances whose latest stop ended `stopped` but whose
 *     backend still reports volumes attached (asked through the provider).
 *
 * Findings go to the result, to gauges on the workflow metric meter and to
 * one log line. Only with `startStopsForLeftovers` does it act: it starts a
 * stop (`stop-<instanceId>`) for each instance with leftovers. Those stops
 * are started by an activity through the Client, not as child workflows:
 * the conflict policy USE_EXISTING lets the sweep join a stop that someone
 * else started meanwhile (a child start would fail on it), the stop gets the
 * same validation, summary and search attributes as every other stop, and it
 * is not tied to the sweep's run at all, so it outlives the sweep without a
 * parent close policy to get right.
 *
 * History is bounded: at most four activities per run, each bounded by
 * `maxInstances`; a schedule starts a fresh run every interval.
 */
import {
  ActivityFailure,
  type ActivityOptions,
  ApplicationFailure,
  log,
  metricMeter,
  proxyActivities,
  setCurrentDetails,
  workflowInfo,
} from '@temporalio/workflow';
import * as z from 'zod/mini';
import { durationSchema, formatDuration, parseDuration } from '../common/duration';
import { providerNameSchema } from '../common/request';
import type {
  LeftoverAttachment,
  LeftoverCheckError,
  LeftoverStopStart,
  LeftoversFound,
  StuckStop,
  StuckStopsFound,
  SweepActivities,
} from '../common/sweep-activities';

/** Type of the ApplicationFailure raised when a sweep's input breaks a rule. */
export const INVALID_SWEEP_INPUT = 'InvalidSweepInput';
/** Type of the ApplicationFailure a sweep ends with when it could not look (visibility or backend down). */
export const SWEEP_FAILED = 'SweepFailed';
export const SWEEP_WORKFLOW_TYPE = 'sweep';

export const SWEEP_DEFAULTS = {
  stuckAfter: '15m',
  lookback: '1h',
  maxInstances: 200,
} as const;
export const MAX_SWEEP_INSTANCES = 1_000;

// Built when parsed, not at module scope: every cached stop has its own copy of
// this module too (see common/request.ts).
const sweepFields = () => ({
  /** A stop still `stopping` this long after it started is reported stuck; "off" skips this check. */
  stuckAfter: z.optional(durationSchema()),
  /** Instances whose latest stop ended `stopped` within this window are checked for leftovers; "off" skips it. */
  lookback: z.optional(durationSchema()),
  /** Ask this provider about every instance; default: the provider each stop used (its request's, else the worker's default). */
  provider: providerNameSchema(),
  /** Start a stop for every instance with leftover volumes. Default false: report only. */
  startStopsForLeftovers: z.optional(z.boolean({ error: 'must be true or false' })),
  /** The task queue whose stops are swept and on which leftover stops are started; default: the sweep's own. */
  taskQueue: z.optional(
    z
      .string({ error: 'must be a string' })
      .check(
        z.minLength(1, { error: 'must not be empty' }),
        z.maxLength(255, { error: 'must be at most 255 characters' }),
      ),
  ),
  /** At most this many stuck stops, and this many stopped instances, are looked at per sweep. */
  maxInstances: z.optional(
    z
      .number({ error: 'must be a whole number' })
      .check(
        z.int({ error: 'must be a whole number' }),
        z.minimum(1, { error: 'must be at least 1' }),
        z.maximum(MAX_SWEEP_INSTANCES, { error: `must be at most ${MAX_SWEEP_INSTANCES}` }),
      ),
  ),
});
const SWEEP_FIELD_NAMES = 'stuckAfter, lookback, provider, startStopsForLeftovers, taskQueue, maxInstances';

/** For the CLI and clients: unknown fields are errors. */
const strictSweepInputSchema = () => z.strictObject(sweepFields());
/** For the workflow: unknown fields are ignored, so an older worker survives a newer schedule. */
const tolerantSweepInputSchema = () => z.looseObject(sweepFields());

export type SweepInput = z.input<ReturnType<typeof strictSweepInputSchema>>;

export interface SweepConfig {
  stuckAfterMs: number | null;
  lookbackMs: number | null;
  provider?: string;
  startStopsForLeftovers: boolean;
  taskQueue?: string;
  maxInstances: number;
}

/** "field: rule", one per problem; throws on invalid input. */
export function parseSweepInput(input: unknown, strict = false): SweepConfig {
  const result = (strict ? strictSweepInputSchema() : tolerantSweepInputSchema()).safeParse(input ?? {});
  if (!result.success) {
    const issues = result.error.issues.map((issue) =>
      issue.code === 'unrecognized_keys'
        ? `${issue.keys.join(', ')}: unknown field (allowed: ${SWEEP_FIELD_NAMES})`
        : `${issue.path.map(String).join('.') || 'input'}: ${issue.message}`,
    );
    throw new SweepInputError(`invalid sweep input: ${issues.join('; ')}`, issues);
  }
  const parsed = result.data;
  const config: SweepConfig = {
    stuckAfterMs: parseDuration(parsed.stuckAfter ?? SWEEP_DEFAULTS.stuckAfter) ?? null,
    lookbackMs: parseDuration(parsed.lookback ?? SWEEP_DEFAULTS.lookback) ?? null,
    startStopsForLeftovers: parsed.startStopsForLeftovers ?? false,
    maxInstances: parsed.maxInstances ?? SWEEP_DEFAULTS.maxInstances,
  };
  if (parsed.provider !== undefined) config.provider = parsed.provider;
  if (parsed.taskQueue !== undefined) config.taskQueue = parsed.taskQueue;
  return config;
}

export class SweepInputError extends Error {
  constructor(
    message: string,
    readonly issues: string[],
  ) {
    super(message);
    this.name = 'SweepInputError';
  }
}

// What the activities find: common/sweep-activities.ts (re-exported for the CLI and tests).
export type {
  LeftoverAttachment,
  LeftoverCheckError,
  LeftoverStopStart,
  LeftoversFound,
  StuckStop,
  StuckStopsFound,
} from '../common/sweep-activities';

export interface SweepResult {
  sweptAt: string;
  taskQueue: string;
  stuckAfter: string;
  lookback: string;
  stuck: StuckStop[];
  stuckTruncated: boolean;
  /** Stopped instances whose backend was asked about attachments. */
  checkedInstances: number;
  leftovers: LeftoverAttachment[];
  /** Instances that could not be checked (unknown to the provider, backend errors); checked again next sweep. */
  checkErrors: LeftoverCheckError[];
  leftoversTruncated: boolean;
  /** Empty unless `startStopsForLeftovers`. */
  startedStops: LeftoverStopStart[];
}

const activityOptions: ActivityOptions = {
  startToCloseTimeout: '5m',
  heartbeatTimeout: '1m',
  // A sweep that cannot look must say so (fail), not report "nothing found"; the next one tries again.
  retry: {
    initialInterval: '1s',
    backoffCoefficient: 2,
    maximumInterval: '30s',
    maximumAttempts: 5,
    nonRetryableErrorTypes: [INVALID_SWEEP_INPUT],
  },
};

function activities(summary: string): SweepActivities {
  return proxyActivities<SweepActivities>({ ...activityOptions, summary });
}

export async function sweep(input?: SweepInput): Promise<SweepResult> {
  const config = validate(input);
  const info = workflowInfo();
  const now = new Date().toISOString();
  const taskQueue = config.taskQueue ?? info.taskQueue;
  const { maxInstances } = config;
  const stuckAfter = formatDuration(config.stuckAfterMs);
  const lookback = formatDuration(config.lookbackMs);
  setCurrentDetails(`**sweep of task queue ${taskQueue}** — looking (stuckAfter ${stuckAfter}, lookback ${lookback})…`);

  const noStuck: StuckStopsFound = { stops: [], truncated: false };
  const noLeftovers: LeftoversFound = { checked: 0, leftovers: [], errors: [], truncated: false };
  let stuck: StuckStopsFound;
  let found: LeftoversFound;
  try {
    [stuck, found] = await Promise.all([
      config.stuckAfterMs === null
        ? noStuck
        : activities(`find stops still stopping after ${stuckAfter}`).findStuckStops({
            taskQueue,
            stuckAfterMs: config.stuckAfterMs,
            now,
            limit: maxInstances,
          }),
      config.lookbackMs === null
        ? noLeftovers
        : activities(`find volumes still attached to instances stopped in the last ${lookback}`).findLeftoverVolumes({
            taskQueue,
            lookbackMs: config.lookbackMs,
            now,
            limit: maxInstances,
            ...(config.provider ? { provider: config.provider } : {}),
          }),
    ]);
  } catch (err) {
    if (!(err instanceof ActivityFailure)) throw err;
    throw ApplicationFailure.create({
      message: `sweep could not look: ${innermostMessage(err)}`,
      type: SWEEP_FAILED,
      nonRetryable: true,
    });
  }

  let startedStops: LeftoverStopStart[] = [];
  if (config.startStopsForLeftovers && found.leftovers.length > 0) {
    try {
      startedStops = await activities(
        `start stops for ${found.leftovers.length} instance(s) with leftover volumes`,
      ).startLeftoverStops({ taskQueue, leftovers: found.leftovers, now, requestedBy: `sweep ${info.workflowId}` });
    } catch (err) {
      if (!(err instanceof ActivityFailure)) throw err;
      const error = `could not start stops: ${innermostMessage(err)}`;
      startedStops = found.leftovers.map((l) => ({ instanceId: l.instanceId, workflowId: l.workflowId, error }));
    }
  }

  const result: SweepResult = {
    sweptAt: now,
    taskQueue,
    stuckAfter,
    lookback,
    stuck: stuck.stops,
    stuckTruncated: stuck.truncated,
    checkedInstances: found.checked,
    leftovers: found.leftovers,
    checkErrors: found.errors,
    leftoversTruncated: found.truncated,
    startedStops,
  };
  report(result);
  return result;
}

function validate(input: unknown): SweepConfig {
  try {
    return parseSweepInput(input);
  } catch (err) {
    if (err instanceof SweepInputError) {
      throw ApplicationFailure.create({
        message: err.message,
        type: INVALID_SWEEP_INPUT,
        nonRetryable: true,
        details: [err.issues],
      });
    }
    throw err;
  }
}

/** Gauges (the latest sweep's counts, for alerts such as `stopflow_sweep_stuck_stops > 0`), one log line, the UI details. */
function report(result: SweepResult): void {
  const leftoverVolumes = result.leftovers.reduce((n, l) => n + l.volumes.length, 0);
  const started = result.startedStops.filter((s) => 'runId' in s && s.started).length;
  const tags = { swept_task_queue: result.taskQueue };
  // Created here, not at module load: the CLI imports this module for its input schema, outside any workflow.
  metricMeter
    .createGauge(
      'stopflow_sweep_stuck_stops',
      'int',
      'stops',
      'Stops still stopping after stuckAfter, at the last sweep',
    )
    .set(result.stuck.length, tags);
  metricMeter
    .createGauge(
      'stopflow_sweep_leftover_volumes',
      'int',
      'volumes',
      'Volumes still attached to instances whose latest stop ended stopped, at the last sweep',
    )
    .set(leftoverVolumes, tags);
  metricMeter
    .createGauge(
      'stopflow_sweep_check_errors',
      'int',
      'instances',
      'Stopped instances the last sweep could not check with their provider',
    )
    .set(result.checkErrors.length, tags);
  if (started > 0) {
    metricMeter
      .createCounter('stopflow_sweep_leftover_stops_started', 'stops', 'Stops the sweep started for leftover volumes')
      .add(started, tags);
  }

  const stuckText = result.stuck.map((s) => `${s.instanceId} (${formatDuration(s.stoppingForMs)})`).join(', ');
  const leftoverText = result.leftovers
    .map((l) => `${l.instanceId}: ${l.volumes.map((v) => v.volumeId).join(', ')}`)
    .join('; ');
  const headline =
    `sweep of ${result.taskQueue}: ${result.stuck.length}${result.stuckTruncated ? '+' : ''} stuck stop(s), ` +
    `${leftoverVolumes} leftover volume(s) on ${result.leftovers.length}${result.leftoversTruncated ? '+' : ''} instance(s)` +
    `${result.checkErrors.length ? `, ${result.checkErrors.length} instance(s) not checked` : ''}` +
    `${result.startedStops.length ? `, ${started} stop(s) started` : ''}`;
  const attributes = {
    sweptTaskQueue: result.taskQueue,
    stuckStops: result.stuck.length,
    leftoverInstances: result.leftovers.length,
    leftoverVolumes,
    checkedInstances: result.checkedInstances,
    checkErrors: result.checkErrors.length,
    stopsStarted: started,
    stuck: stuckText,
    leftovers: leftoverText,
  };
  if (result.stuck.length > 0 || leftoverVolumes > 0 || result.checkErrors.length > 0) log.warn(headline, attributes);
  else log.info(headline, attributes);

  const blocks = [
    `**${headline}**`,
    `stuckAfter ${result.stuckAfter}, lookback ${result.lookback}, ${result.checkedInstances} stopped instance(s) checked`,
  ];
  if (result.stuck.length > 0)
    blocks.push(
      result.stuck
        .map(
          (s) =>
            `- stuck: ${s.instanceId} stopping for ${formatDuration(s.stoppingForMs)}${s.forced ? ' (forcing)' : ''}`,
        )
        .join('\n'),
    );
  if (result.leftovers.length > 0)
    blocks.push(
      result.leftovers
        .map(
          (l) => `- leftover: ${l.instanceId} (stopped ${l.stoppedAt}): ${l.volumes.map((v) => v.volumeId).join(', ')}`,
        )
        .join('\n'),
    );
  if (result.checkErrors.length > 0)
    blocks.push(result.checkErrors.map((e) => `- not checked: ${e.instanceId}: ${e.error}`).join('\n'));
  if (result.startedStops.length > 0)
    blocks.push(
      result.startedStops
        .map((s) =>
          'error' in s
            ? `- stop of ${s.instanceId} not started: ${s.error}`
            : `- stop of ${s.instanceId} ${s.started ? 'started' : 'already running, joined'} (run ${s.runId})`,
        )
        .join('\n'),
    );
  setCurrentDetails(blocks.join('\n\n'));
}

function innermostMessage(err: unknown): string {
  let current: unknown = err;
  while (current instanceof ActivityFailure && current.cause) current = current.cause;
  return current instanceof Error ? current.message : String(current);
}
