/**
 * `stopflow stop|abort|set-max-stop-duration|status|list|history`: the
 * StopflowClient on the command line. Exit codes (README "Using stopflow"):
 * 0 stopped or success, 1 the stop failed (the instance was not stopped),
 * 2 bad input, 3 not found or no connection. An abort or deadline change that
 * reaches a stop that already ended changes nothing and says so; it exits with
 * that stop's outcome: 0 when it ended stopped, 1 when it did not.
 */
import { hostname, userInfo } from 'node:os';
import Table from 'cli-table3';
import type { Command } from 'commander';
import { createLogUpdate } from 'log-update';
import { DURATION_RULE, formatDuration, parseDuration } from '../../common/duration';
import { DEFAULT_TASK_QUEUE } from '../../common/names';
import {
  INSTANCE_ID_RULE,
  LEGACY_ID_PATTERN,
  parseStopRequest,
  type StopRequest,
  StopRequestError,
} from '../../common/request';
import type { StopPhase } from '../../common/status';
import type { AuditEntry } from '../history';
import { STOP_PHASES } from '../queries';
import {
  InvalidInputError,
  StopAlreadyEndedError,
  StopFailedError,
  StopflowClient,
  type StopListing,
  StopNotFoundError,
  type StopProgress,
  VolumeHeldError,
  type VolumeProgress,
} from '../stopflow-client';
import { CliError, EXIT, withTemporalClient } from './errors';

function badInput(message: string): CliError {
  return new CliError(message, EXIT.badInput);
}

/** Ids of stops that may exist (older versions allowed more); a new stop's id is checked by the request schema. */
function checkInstanceId(instanceId: string): void {
  if (!LEGACY_ID_PATTERN.test(instanceId)) throw badInput(`instanceId: ${INSTANCE_ID_RULE}`);
}

function checkDuration(field: string, value: string): void {
  if (parseDuration(value) === undefined) throw badInput(`${field}: ${DURATION_RULE}`);
}

/** Who asked, for the audit log, when --requested-by is not given: `user@host`. */
export function defaultRequester(): string {
  let user = process.env.USER ?? 'unknown';
  try {
    user = userInfo().username;
  } catch {
    // no passwd entry (some containers): keep $USER
  }
  return `${user}@${hostname()}`.slice(0, 255);
}

function taskQueueOf(option: string | undefined): string {
  return option ?? (process.env.STOPFLOW_TASK_QUEUE || DEFAULT_TASK_QUEUE);
}

/** Connects, runs `fn`, and turns the client's errors into exit codes. */
async function withStopflow<T>(taskQueue: string, fn: (stopflow: StopflowClient) => Promise<T>): Promise<T> {
  return withTemporalClient(
    // A person at a terminal names real volumes: refuse one another instance's running stop holds.
    (client) => fn(new StopflowClient({ client, taskQueue, refuseHeldVolumes: true })),
    (err) => {
      if (err instanceof InvalidInputError || err instanceof VolumeHeldError) return badInput(err.message);
      if (err instanceof StopNotFoundError) return new CliError(err.message, EXIT.notFoundOrNoConnection);
      if (err instanceof StopFailedError) return new CliError(`the stop failed: ${err.message}`, EXIT.stopFailed);
      if (err instanceof StopAlreadyEndedError) {
        return new CliError(err.message, err.instanceStopped ? EXIT.stopped : EXIT.stopFailed);
      }
      return undefined;
    },
  );
}

// --- rendering ---

function clock(iso: string | undefined): string {
  return iso ? `${iso.slice(11, 19)}Z` : '?';
}

function ago(iso: string, now: number): string {
  return formatDuration(Math.max(1000, now - Date.parse(iso)));
}

/** The live part of a volume's line: what its detach or force-detach is doing. */
function workText(volume: VolumeProgress): string {
  const work = volume.work;
  if (!work) return '';
  const doing = work.activityType === 'forceDetachVolume' ? 'force-detach' : 'detach';
  const parts: string[] = [];
  if (work.checks !== undefined) {
    // Past its first attempt a wait reports only now and then (docs/architecture.md): its count would be stale.
    const live = work.activityType !== 'awaitDetached' || work.attempt === 1;
    const counted = live ? ` after ${work.checks} check${work.checks === 1 ? '' : 's'}` : '';
    parts.push(`still ${work.backendState ?? volume.state}${counted} since ${clock(work.waitingSince)}`);
  } else if (work.state === 'scheduled') {
    parts.push(`${doing} waiting for a worker`);
  } else {
    parts.push(`${doing} running`);
  }
  const extra = [`attempt ${work.attempt}`];
  if (work.nextAttemptAt) extra.push(`next check ${clock(work.nextAttemptAt)}`);
  if (work.lastFailure && work.checks === undefined) extra.push(`last error: ${work.lastFailure}`);
  if (work.state === 'cancel_requested') extra.push('cancelling');
  if (work.state === 'paused' || work.state === 'pause_requested') extra.push('PAUSED');
  return `${parts.join(', ')} (${extra.join(', ')})`;
}

export interface ViewLine {
  key: string;
  /** What a person reads. */
  text: string;
  /** Changes only when something worth a new plain-text line changed (not a ticking count). */
  signature: string;
}

/** The progress view: a headline, an escalation line, one line per volume, and the outcome once ended. */
export function progressLines(progress: StopProgress, now = Date.now()): ViewLine[] {
  const { status } = progress;
  const lines: ViewLine[] = [];
  const volumes = progress.volumes;
  const done = volumes.filter((v) => v.state === 'detached' || v.state === 'force_detached').length;
  const deadline = status.deadline
    ? `deadline ${clock(status.deadline)}${progress.running ? ` (in ${formatDuration(Math.ceil(Math.max(0, Date.parse(status.deadline) - now) / 1000) * 1000)})` : ''}`
    : 'no deadline';
  const counts =
    status.volumes.length === 0 && progress.running
      ? 'listing volumes'
      : `${done}/${volumes.length} volume(s) detached`;
  const running = progress.running ? `, stopping for ${ago(status.startedAt, now)}` : '';
  lines.push({
    key: 'stop',
    text: `${status.instanceId}: ${status.phase} — ${counts}${running}, ${deadline}`,
    signature: `${status.phase}|${done}/${volumes.length}|${status.deadline}`,
  });
  if (status.escalation) {
    const e = status.escalation;
    const text = `escalated by ${e.cause} at ${clock(e.at)}${e.requestedBy ? ` from ${e.requestedBy}` : ''}${e.reason ? `: ${e.reason}` : ''} — force-detaching what is left`;
    lines.push({ key: 'escalation', text, signature: text });
  }
  const width = Math.max(8, ...volumes.map((v) => v.volumeId.length));
  for (const volume of volumes) {
    const detail =
      volume.work !== undefined
        ? workText(volume)
        : volume.lastError
          ? volume.lastError
          : volume.detachedAt
            ? `at ${clock(volume.detachedAt)}`
            : '';
    const text = `  ${volume.volumeId.padEnd(width)}  ${volume.state.padEnd(14)}  ${detail}`.trimEnd();
    const work = volume.work;
    lines.push({
      key: `volume:${volume.volumeId}`,
      text,
      signature: [
        volume.state,
        volume.lastError ?? '',
        work?.activityType ?? '',
        work?.attempt ?? '',
        work?.backendState ?? '',
        work?.state ?? '',
      ].join('|'),
    });
  }
  for (const work of progress.otherWork) {
    const text = `  ${work.activityType} ${work.state} (attempt ${work.attempt})${work.lastFailure ? `: ${work.lastFailure}` : ''}`;
    lines.push({
      key: `work:${work.activityId}`,
      text,
      signature: `${work.state}|${work.attempt}|${work.lastFailure}`,
    });
  }
  if (!progress.running) {
    const outcome =
      status.phase === 'stopped'
        ? `${status.instanceId}: stopped — instance stopped${status.escalation ? ` (forced by ${status.escalation.cause})` : ''}`
        : `${status.instanceId}: NOT stopped — ${status.error ?? `the stop ended ${progress.executionStatus.toLowerCase()}`}`;
    lines.push({ key: 'outcome', text: outcome, signature: outcome });
  }
  return lines;
}

function exitCodeOf(progress: StopProgress): number {
  if (progress.running) return EXIT.stopped;
  return progress.status.phase === 'stopped' ? EXIT.stopped : EXIT.stopFailed;
}

interface WatchOptions {
  json: boolean;
  intervalMs: number;
}

/**
 * Polls the stop until it ends. In a terminal the view is redrawn in place;
 * otherwise each line is printed again only when it changed, with a time stamp
 * (and with --json, one JSON object per change). Returns the final progress.
 */
async function watch(stopflow: StopflowClient, instanceId: string, options: WatchOptions): Promise<StopProgress> {
  // A terminal that reports no size (e.g. a bare pty) cannot be redrawn: print lines there too.
  const { isTTY, rows, columns } = process.stdout;
  const tty = isTTY === true && (rows ?? 0) > 0 && (columns ?? 0) > 0 && !options.json;
  const redraw = tty ? createLogUpdate(process.stdout) : undefined;
  const printed = new Map<string, string>();
  let lastJson = '';
  try {
    for (;;) {
      const progress = await stopflow.progress(instanceId);
      const lines = progressLines(progress);
      if (redraw) {
        redraw(lines.map((l) => l.text).join('\n'));
      } else if (options.json) {
        const signature = lines.map((l) => l.signature).join('\n');
        if (signature !== lastJson) {
          lastJson = signature;
          console.log(JSON.stringify(progress));
        }
      } else {
        const stamp = clock(new Date().toISOString());
        for (const line of lines) {
          if (printed.get(line.key) === line.signature) continue;
          printed.set(line.key, line.signature);
          console.log(`${stamp} ${line.text.trimStart()}`);
        }
      }
      if (!progress.running) return progress;
      await new Promise((resolve) => setTimeout(resolve, options.intervalMs));
    }
  } finally {
    redraw?.done();
  }
}

function intervalOf(value: string): number {
  const ms = parseDuration(value);
  if (ms === undefined || ms === null || ms < 100) throw badInput(`interval: ${DURATION_RULE.replace('"off", ', '')}`);
  return ms;
}

function listingTable(stops: StopListing[], now = Date.now()): string {
  const table = new Table({
    head: ['instance', 'phase', 'cause', 'forced', 'workflow', 'started', 'for'],
    style: { head: [], border: [], compact: true },
  });
  for (const s of stops) {
    const span = s.closeTime
      ? `ended after ${formatDuration(Math.max(1000, Date.parse(s.closeTime) - Date.parse(s.startTime)))}`
      : `running ${ago(s.startTime, now)}`;
    table.push([
      s.instanceId,
      s.phase ?? '-',
      s.cause ?? '-',
      s.forced ? 'yes' : 'no',
      s.executionStatus.toLowerCase(),
      s.startTime,
      span,
    ]);
  }
  return table.toString();
}

function historyTable(entries: AuditEntry[]): string {
  const started = entries[0] ? Date.parse(entries[0].time) : 0;
  const columns = process.stdout.columns && process.stdout.columns > 60 ? process.stdout.columns : 160;
  const table = new Table({
    head: ['time', '+', 'what happened'],
    colWidths: [26, 10, Math.max(30, columns - 26 - 10 - 4)],
    wordWrap: true,
    style: { head: [], border: [], compact: true },
  });
  for (const entry of entries) {
    const offset = Date.parse(entry.time) - started;
    table.push([entry.time, offset < 1000 ? `${offset}ms` : formatDuration(offset), entry.text]);
  }
  return table.toString();
}

const collect = (value: string, previous: string[]) => [...previous, value];

/** `vol-1` or `vol-1@/dev/xvdf`. */
function volumeOf(spec: string): { volumeId: string; device?: string } {
  const at = spec.indexOf('@');
  return at < 0 ? { volumeId: spec } : { volumeId: spec.slice(0, at), device: spec.slice(at + 1) };
}

export function registerStopCommands(program: Command): void {
  program.addHelpText(
    'after',
    '\nExit codes: 0 stopped (or success), 1 the stop failed, 2 bad input, 3 not found or no connection.\nConnection: TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*, or TEMPORAL_PROFILE (Temporal config profiles).',
  );

  program
    .command('stop')
    .argument('<instanceId>')
    .description('start a stop of an instance, or join the one already running')
    .option('--volume <id[@device]>', 'a volume to detach (repeatable); default: ask the provider', collect, [])
    .option('--max-stop-duration <duration>', 'force-detach what is left after this long ("off", 45s, 15m, 1h30m)')
    .option('--force-grace <duration>', 'never force a volume earlier than this after its first detach request')
    .option('--reason <text>', 'why, for the audit log')
    .option('--requested-by <who>', 'who asks, for the audit log (default: user@host)')
    .option('--provider <name>', "a provider configured on the worker (default: the worker's default)")
    .option('--task-queue <name>', 'the workers\' task queue (default: STOPFLOW_TASK_QUEUE or "stopflow")')
    .option('--wait', 'watch the stop until it ends; exit 0 when stopped, 1 when it failed')
    .option('--interval <duration>', 'with --wait: how often to refresh', '1s')
    .option('--json', 'print JSON')
    .action(
      async (
        instanceId: string,
        opts: {
          volume: string[];
          maxStopDuration?: string;
          forceGrace?: string;
          reason?: string;
          requestedBy?: string;
          provider?: string;
          taskQueue?: string;
          wait?: boolean;
          interval: string;
          json?: boolean;
        },
      ) => {
        const request: StopRequest = { instanceId, requestedBy: opts.requestedBy ?? defaultRequester() };
        if (opts.volume.length > 0) request.volumes = opts.volume.map(volumeOf);
        if (opts.maxStopDuration !== undefined) request.maxStopDuration = opts.maxStopDuration;
        if (opts.forceGrace !== undefined) request.forceGrace = opts.forceGrace;
        if (opts.reason !== undefined) request.reason = opts.reason;
        if (opts.provider !== undefined) request.provider = opts.provider;
        // Bad input is reported before connecting: exit 2 even without a server, and nothing is started.
        try {
          parseStopRequest(request);
        } catch (err) {
          if (err instanceof StopRequestError) throw badInput(`invalid stop request: ${err.issues.join('; ')}`);
          throw err;
        }
        const intervalMs = opts.wait ? intervalOf(opts.interval) : 0;
        const taskQueue = taskQueueOf(opts.taskQueue);
        const code = await withStopflow(taskQueue, async (stopflow) => {
          const handle = await stopflow.stop(request);
          const said = handle.started
            ? `started the stop of ${instanceId} (workflow ${handle.workflowId}, run ${handle.runId}, task queue ${taskQueue})`
            : `joined the stop of ${instanceId} already running (workflow ${handle.workflowId}, run ${handle.runId}); this request's options were not applied`;
          if (opts.json && !opts.wait) {
            const { handle: _handle, ...rest } = handle;
            console.log(JSON.stringify(rest));
            return EXIT.stopped;
          }
          if (!opts.json) console.log(said);
          if (!opts.wait) {
            console.log(`watch it with: stopflow status ${instanceId} --watch`);
            return EXIT.stopped;
          }
          const final = await watch(stopflow, instanceId, { json: opts.json === true, intervalMs });
          return exitCodeOf(final);
        });
        process.exitCode = code;
      },
    );

  program
    .command('abort')
    .argument('<instanceId>')
    .description('escalate a running stop: force-detach every volume not yet detached (after its forceGrace)')
    .option('--reason <text>', 'why, for the audit log')
    .option('--requested-by <who>', 'who asks, for the audit log (default: user@host)')
    .action(async (instanceId: string, opts: { reason?: string; requestedBy?: string }) => {
      checkInstanceId(instanceId);
      const payload = {
        requestedBy: opts.requestedBy ?? defaultRequester(),
        ...(opts.reason ? { reason: opts.reason } : {}),
      };
      if (payload.requestedBy.length > 255) throw badInput('requestedBy: must be at most 255 characters');
      if (opts.reason !== undefined && opts.reason.length > 1024)
        throw badInput('reason: must be at most 1024 characters');
      await withStopflow(taskQueueOf(undefined), (stopflow) => stopflow.abort(instanceId, payload));
      console.log(
        `abort sent to the stop of ${instanceId}: volumes not yet detached are force-detached (each after its forceGrace); watch it with: stopflow status ${instanceId} --watch`,
      );
    });

  program
    .command('set-max-stop-duration')
    .argument('<instanceId>')
    .argument('<duration>', '"off", a number of seconds, or 45s, 15m, 1h30m, 2d; measured from the start of the stop')
    .description('move the deadline of a running stop (refused once it escalated)')
    .action(async (instanceId: string, duration: string) => {
      checkInstanceId(instanceId);
      checkDuration('maxStopDuration', duration);
      const { deadline } = await withStopflow(taskQueueOf(undefined), (stopflow) =>
        stopflow.setMaxStopDuration(instanceId, duration),
      );
      console.log(
        deadline
          ? `maxStopDuration of the stop of ${instanceId} is now ${formatDuration(parseDuration(duration) ?? null)}: deadline ${deadline}`
          : `maxStopDuration of the stop of ${instanceId} is now off: no deadline`,
      );
    });

  program
    .command('status')
    .argument('<instanceId>')
    .description('per-volume progress of the latest stop; exit 1 when it ended without stopping the instance')
    .option('--watch', 'follow the stop until it ends (redraws in a terminal, prints changed lines otherwise)')
    .option('--interval <duration>', 'with --watch: how often to refresh', '1s')
    .option('--json', 'print JSON (with --watch: one object per change)')
    .action(async (instanceId: string, opts: { watch?: boolean; interval: string; json?: boolean }) => {
      checkInstanceId(instanceId);
      const intervalMs = intervalOf(opts.interval);
      const code = await withStopflow(taskQueueOf(undefined), async (stopflow) => {
        if (opts.watch) return exitCodeOf(await watch(stopflow, instanceId, { json: opts.json === true, intervalMs }));
        const progress = await stopflow.progress(instanceId);
        console.log(
          opts.json
            ? JSON.stringify(progress, null, 2)
            : progressLines(progress)
                .map((l) => l.text)
                .join('\n'),
        );
        return exitCodeOf(progress);
      });
      process.exitCode = code;
    });

  program
    .command('list')
    .description('list stops by phase (a visibility query on StopPhase), or the stuck ones')
    .option('--phase <phase>', `only stops in this phase (${STOP_PHASES.join(', ')})`)
    .option('--stuck <duration>', 'only stops still stopping (and running) that started more than this long ago')
    .option('--task-queue <name>', 'only stops started on this task queue (default: all)')
    .option('--limit <n>', 'at most this many (1-1000)', '100')
    .option('--json', 'print JSON')
    .action(async (opts: { phase?: string; stuck?: string; taskQueue?: string; limit: string; json?: boolean }) => {
      if (opts.phase !== undefined && !STOP_PHASES.includes(opts.phase as StopPhase)) {
        throw badInput(`phase: must be one of ${STOP_PHASES.join(', ')}`);
      }
      if (opts.stuck !== undefined) {
        const ms = parseDuration(opts.stuck);
        if (ms === undefined || ms === null) throw badInput(`stuck: ${DURATION_RULE.replace('"off", ', '')}`);
      }
      const limit = Number(opts.limit);
      const stops = await withStopflow(taskQueueOf(undefined), (stopflow) =>
        stopflow.list({
          ...(opts.phase !== undefined ? { phase: opts.phase as StopPhase } : {}),
          ...(opts.stuck !== undefined ? { stuckFor: opts.stuck } : {}),
          ...(opts.taskQueue !== undefined ? { taskQueue: opts.taskQueue } : {}),
          limit,
        }),
      );
      if (opts.json) {
        console.log(JSON.stringify(stops, null, 2));
      } else if (stops.length === 0) {
        console.log(
          opts.stuck !== undefined
            ? `no stop has been stopping for more than ${opts.stuck}`
            : `no stops found${opts.phase ? ` in phase ${opts.phase}` : ''}`,
        );
      } else {
        console.log(listingTable(stops));
        if (stops.length >= limit) console.log(`(the first ${limit}; raise --limit to see more)`);
      }
    });

  program
    .command('history')
    .argument('<instanceId>')
    .description('the audit log of the latest stop: what happened, when, and why')
    .option('--run-id <runId>', 'an earlier stop of this instance (see `stopflow list`)')
    .option('--json', 'print JSON')
    .action(async (instanceId: string, opts: { runId?: string; json?: boolean }) => {
      checkInstanceId(instanceId);
      const history = await withStopflow(taskQueueOf(undefined), (stopflow) =>
        stopflow.history(instanceId, opts.runId !== undefined ? { runId: opts.runId } : {}),
      );
      if (opts.json) {
        console.log(JSON.stringify(history, null, 2));
        return;
      }
      console.log(`stop of ${instanceId} (workflow ${history.workflowId}, run ${history.runId})`);
      console.log(historyTable(history.entries));
    });
}
