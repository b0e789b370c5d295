/**
 * How a stop speaks: the Temporal UI's current details, the per-activity and
 * per-timer summaries that make history read as an audit log, the log lines
 * and the metrics. The state machine (stop-instance.ts) only says what
 * happened; the wording lives here, so the UI, the CLI and the docs can share it.
 */
import { log, metricMeter, setCurrentDetails } from '@temporalio/workflow';
import { formatDuration } from '../common/duration';
import type { Escalation, EscalationCause, StopPhase } from '../common/status';
import { iso, type StopState } from './stop-state';

/** Activity and timer summaries: one sentence each in the history, readable without opening payloads. */
export const say = {
  list: (instanceId: string) => `list volumes attached to ${instanceId}`,
  request: (volumeId: string) => `detach ${volumeId}: request`,
  wait: (volumeId: string) => `wait until ${volumeId} is detached`,
  force: (state: StopState, escalation: Escalation, volumeId: string) =>
    `${escalationReason(state, escalation)}: force-detaching ${volumeId}`,
  confirm: (volumeId: string) => `force failed: is ${volumeId} detached anyway?`,
  stop: (instanceId: string) => `stop instance ${instanceId} once the backend lists nothing attached`,
  readStopped: (instanceId: string) => `stopping failed: is ${instanceId} stopped anyway?`,
  forceGrace: (ms: number | null, volumeId: string) => `forceGrace ${formatDuration(ms)} for ${volumeId}`,
  deadline: (atMs: number) => `maxStopDuration deadline ${new Date(atMs).toISOString()}`,
};

/** "abort by ops" / "maxStopDuration 15m expired (deadline …)": the same words in history and in the CLI. */
export function escalationReason(state: StopState, escalation: Escalation): string {
  if (escalation.cause === 'abort') return `abort${escalation.requestedBy ? ` by ${escalation.requestedBy}` : ''}`;
  return `maxStopDuration ${formatDuration(state.deadline.duration)} expired (deadline ${iso(state.deadline.atMs)})`;
}

// Metrics go through the SDK's meter, which skips replays, so counts are exact and nothing touches history.
// Made when first used, not at module load: every cached stop has its own copy of this module.
export function countForce(cause: EscalationCause): void {
  metricMeter.createCounter('stopflow_force_detaches', 'volumes', 'Force-detaches started, by cause').add(1, { cause });
}

export function reportEscalation(state: StopState, escalation: Escalation): void {
  log.info(`stop escalated by ${escalation.cause}: force-detaching volumes not yet detached`, { ...escalation });
  describe(state);
}

export function reportEnd(state: StopState, phase: StopPhase): void {
  const cause = state.escalation?.cause ?? (state.cancelled ? 'cancel' : 'graceful');
  metricMeter.createCounter('stopflow_stops_ended', 'stops', 'Stops that ended, by phase and cause').add(1, {
    phase,
    cause,
  });
  metricMeter
    .createHistogram('stopflow_stop_duration', 'float', 's', 'Seconds from the start of a stop to its end, by phase')
    .record((Date.now() - state.startedAtMs) / 1000, { phase });
  log.info(`stop ended ${phase}`, { phase, cause, error: state.error, instanceStopped: state.instanceStopped });
  describe(state);
}

/** Stops whose details are due to be rendered (module scope is per workflow: each stop has its own). */
const renderDue = new WeakSet<StopState>();

/**
 * Asks for the workflow's "current details" to be rendered again. They are rendered once, in a microtask,
 * after the activation's synchronous changes: a stop of 256 volumes moves hundreds of them in one
 * activation, and rendering every volume on every move would cost the worker n² lines. The details are
 * read through a query, never inside the activation, so nobody sees the difference.
 */
export function describe(state: StopState): void {
  if (renderDue.has(state)) return;
  renderDue.add(state);
  void Promise.resolve().then(() => {
    renderDue.delete(state);
    render(state);
  });
}

/**
 * The workflow's "current details" in the UI: the live per-volume picture, in
 * words. The UI renders Markdown in a short frame, so the tally comes first and
 * blocks are separated by blank lines.
 */
function render(state: StopState): void {
  const { request } = state;
  const volumes = state.volumes ?? [];
  const tally = new Map<string, number>();
  for (const v of volumes) tally.set(v.state, (tally.get(v.state) ?? 0) + 1);
  const counts = [...tally].map(([s, n]) => `${n} ${s}`).join(', ');
  const outcome =
    state.phase === 'stopped' ? 'instance stopped; ' : state.phase === 'failed' ? 'instance NOT stopped; ' : '';
  const headline =
    state.volumes === null
      ? `**${request.instanceId}: ${state.phase}** — listing attached volumes…`
      : `**${request.instanceId}: ${state.phase}** — ${outcome}${volumes.length} volume(s)${counts ? `: ${counts}` : ''}`;
  const blocks = [headline];
  if (volumes.length > 0) {
    blocks.push(
      volumes
        .map((v) => `- ${v.volumeId}: ${v.state} (${v.attempts} request(s))${v.lastError ? ` — ${v.lastError}` : ''}`)
        .join('\n'),
    );
  }
  const facts: string[] = [];
  if (state.escalation) {
    const e = state.escalation;
    facts.push(
      `escalated by ${e.cause} at ${e.at}${e.requestedBy ? ` from ${e.requestedBy}` : ''}${e.reason ? `: ${e.reason}` : ''}`,
    );
  }
  if (state.cancelled) facts.push(`cancelled at ${state.cancelled.at}: nothing more is forced or stopped`);
  facts.push(
    `maxStopDuration ${formatDuration(state.deadline.duration)}, deadline ${iso(state.deadline.atMs) ?? 'none'}, forceGrace ${formatDuration(request.forceGraceMs)}`,
  );
  if (request.requestedBy || request.reason) {
    facts.push(`requested by ${request.requestedBy ?? 'unknown'}${request.reason ? `: ${request.reason}` : ''}`);
  }
  if (state.error) facts.push(`error: ${state.error}`);
  // Two trailing spaces make a Markdown line break.
  blocks.push(facts.join('  \n'));
  setCurrentDetails(blocks.join('\n\n'));
}
