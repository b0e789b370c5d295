/**
 * The audit log: a stop's workflow history turned into timestamped sentences.
 * Activity and timer summaries (the `summary` the workflow gives each step)
 * say what a step was for; completions, failures and cancellations are told
 * against the step they close, so every line reads on its own. Workflow tasks,
 * patch markers and other machinery are left out.
 */
import type { LoadedDataConverter, Payload } from '@temporalio/common';
import type { History } from '@temporalio/common/lib/proto-utils';
import { optionalTsToMs } from '@temporalio/common/lib/time';
import { formatDuration } from '../common/duration';

export type HistoryEvent = NonNullable<History['events']>[number];

export type AuditKind = 'workflow' | 'activity' | 'timer' | 'signal' | 'update' | 'search-attributes' | 'workflow-task';

export interface AuditEntry {
  eventId: number;
  /** ISO time of the event. */
  time: string;
  kind: AuditKind;
  /** The history event type, e.g. `ActivityTaskScheduled`. */
  event: string;
  /** One sentence for people. */
  text: string;
  /** The decoded data behind the sentence (request, signal payload, result, failure), for machines. */
  data?: unknown;
}

interface FailureLike {
  message?: string | null;
  cause?: FailureLike | null;
  applicationFailureInfo?: { type?: string | null } | null;
}

/** The failure's message, with its causes' messages when they add something. */
export function failureText(failure: FailureLike | null | undefined): string {
  const parts: string[] = [];
  let current = failure;
  for (let depth = 0; current && depth < 5; depth++) {
    const message = current.message ?? '';
    if (message && !parts.some((p) => p.includes(message))) parts.push(message);
    current = current.cause;
  }
  return parts.join(': ') || 'unknown failure';
}

function num(value: unknown): number {
  if (typeof value === 'number') return value;
  if (typeof value === 'string') return Number(value);
  if (value && typeof value === 'object' && 'toNumber' in value && typeof value.toNumber === 'function') {
    return Number(value.toNumber());
  }
  return 0;
}

function iso(ts: Parameters<typeof optionalTsToMs>[0]): string {
  const ms = optionalTsToMs(ts);
  return ms === undefined ? '' : new Date(ms).toISOString();
}

/** A compact one-line rendering of a decoded value for sentences. */
function brief(value: unknown, max = 300): string {
  if (value === undefined) return '';
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

function attributesKey(event: HistoryEvent): string | undefined {
  for (const [key, value] of Object.entries(event)) {
    if (key.endsWith('EventAttributes') && value) return key;
  }
  return undefined;
}

/** `activityTaskScheduledEventAttributes` -> `ActivityTaskScheduled` */
function eventName(event: HistoryEvent): string {
  const key = attributesKey(event);
  if (!key) return 'Unknown';
  const name = key.slice(0, -'EventAttributes'.length);
  return name.charAt(0).toUpperCase() + name.slice(1);
}

/** Search attributes that carry no meaning for an audit reader. */
const INTERNAL_SEARCH_ATTRIBUTES = new Set(['BuildIds', 'TemporalChangeVersion']);

export class HistoryDecoder {
  constructor(private readonly converter: LoadedDataConverter) {}

  async payload(payload: Payload | null | undefined): Promise<unknown> {
    if (!payload) return undefined;
    let decoded: Payload[] = [payload];
    for (const codec of [...this.converter.payloadCodecs].reverse()) decoded = await codec.decode(decoded);
    const first = decoded[0];
    if (!first) return undefined;
    try {
      return this.converter.payloadConverter.fromPayload<unknown>(first);
    } catch {
      return '(undecodable payload)';
    }
  }

  async payloads(payloads: { payloads?: Payload[] | null } | null | undefined): Promise<unknown[]> {
    const list = payloads?.payloads ?? [];
    return Promise.all(list.map((p) => this.payload(p)));
  }

  /** The first payload of a Payloads, or undefined. */
  async first(payloads: { payloads?: Payload[] | null } | null | undefined): Promise<unknown> {
    return (await this.payloads(payloads))[0];
  }

  async summary(event: HistoryEvent): Promise<string | undefined> {
    const value = await this.payload(event.userMetadata?.summary);
    return typeof value === 'string' && value ? value : undefined;
  }
}

/** A short description of a StopRequest, for a start event without a summary (started by `temporal` or HTTP). */
function describeRequest(request: unknown): string {
  if (!request || typeof request !== 'object') return `request ${brief(request)}`;
  const r = request as Record<string, unknown>;
  const volumes = Array.isArray(r.volumes)
    ? `${r.volumes.length} volume(s): ${r.volumes
        .map((v) => (v && typeof v === 'object' && 'volumeId' in v ? String(v.volumeId) : '?'))
        .join(', ')}`
    : 'volumes listed from the provider';
  const parts = [`stop ${String(r.instanceId ?? '?')}: ${volumes}`];
  parts.push(`maxStopDuration ${r.maxStopDuration === undefined ? 'off' : String(r.maxStopDuration)}`);
  if (r.forceGrace !== undefined) parts.push(`forceGrace ${String(r.forceGrace)}`);
  if (r.provider !== undefined) parts.push(`provider ${String(r.provider)}`);
  return parts.join(', ');
}

function requestedByText(request: unknown): string {
  if (!request || typeof request !== 'object') return '';
  const r = request as Record<string, unknown>;
  const who = typeof r.requestedBy === 'string' ? ` by ${r.requestedBy}` : '';
  const why = typeof r.reason === 'string' ? ` (reason: ${r.reason})` : '';
  return `${who}${why}`;
}

function describeResult(result: unknown): string {
  if (!result || typeof result !== 'object') return brief(result);
  const r = result as Record<string, unknown>;
  if (typeof r.phase === 'string' && Array.isArray(r.volumes)) {
    const volumes = r.volumes
      .map((v) => (v && typeof v === 'object' ? `${String(v.volumeId)} ${String(v.state)}` : '?'))
      .join(', ');
    return `phase ${r.phase}, instance ${r.instanceStopped ? 'stopped' : 'NOT stopped'}${volumes ? `; ${volumes}` : ''}`;
  }
  return brief(result);
}

interface Scheduled {
  type: string;
  label: string;
  input: unknown;
}

/** Turns one run's history into audit entries, oldest first. */
export async function auditEntries(history: History, converter: LoadedDataConverter): Promise<AuditEntry[]> {
  const decoder = new HistoryDecoder(converter);
  const activities = new Map<number, Scheduled>();
  const startedAttempts = new Map<number, { attempt: number; lastFailure?: string }>();
  const timers = new Map<string, string>();
  const updates = new Map<string, string>();
  const entries: AuditEntry[] = [];

  for (const event of history.events ?? []) {
    const eventId = num(event.eventId);
    const time = iso(event.eventTime);
    const name = eventName(event);
    const push = (kind: AuditKind, text: string, data?: unknown) => {
      const entry: AuditEntry = { eventId, time, kind, event: name, text };
      if (data !== undefined) entry.data = data;
      entries.push(entry);
    };

    if (event.workflowExecutionStartedEventAttributes) {
      const a = event.workflowExecutionStartedEventAttributes;
      const request = await decoder.first(a.input);
      const summary = (await decoder.summary(event)) ?? describeRequest(request);
      const by = a.identity ? ` from ${a.identity}` : '';
      push('workflow', `stop started${by}${requestedByText(request)}: ${summary}`, request);
    } else if (event.workflowExecutionCompletedEventAttributes) {
      const result = await decoder.first(event.workflowExecutionCompletedEventAttributes.result);
      push('workflow', `stop ended: ${describeResult(result)}`, result);
    } else if (event.workflowExecutionFailedEventAttributes) {
      const failure = event.workflowExecutionFailedEventAttributes.failure;
      const type = failure?.applicationFailureInfo?.type;
      const details = await decoder.first(failure?.applicationFailureInfo?.details);
      push('workflow', `stop FAILED${type ? ` (${type})` : ''}: ${failureText(failure)}`, details);
    } else if (event.workflowExecutionTerminatedEventAttributes) {
      const a = event.workflowExecutionTerminatedEventAttributes;
      push('workflow', `stop terminated${a.identity ? ` by ${a.identity}` : ''}: ${a.reason || 'no reason given'}`);
    } else if (event.workflowExecutionCanceledEventAttributes) {
      push('workflow', 'stop cancelled');
    } else if (event.workflowExecutionCancelRequestedEventAttributes) {
      const a = event.workflowExecutionCancelRequestedEventAttributes;
      push(
        'workflow',
        `cancellation requested${a.identity ? ` by ${a.identity}` : ''}${a.cause ? `: ${a.cause}` : ''}`,
      );
    } else if (event.workflowExecutionTimedOutEventAttributes) {
      push('workflow', 'stop timed out (workflow execution timeout)');
    } else if (event.workflowExecutionContinuedAsNewEventAttributes) {
      const a = event.workflowExecutionContinuedAsNewEventAttributes;
      push('workflow', `continued as new run ${a.newExecutionRunId ?? '?'}`);
    } else if (event.workflowTaskFailedEventAttributes) {
      const a = event.workflowTaskFailedEventAttributes;
      push('workflow-task', `workflow task failed (the worker will retry): ${failureText(a.failure)}`);
    } else if (event.workflowTaskTimedOutEventAttributes) {
      push('workflow-task', 'workflow task timed out (a worker took too long or was lost; retried)');
    } else if (event.activityTaskScheduledEventAttributes) {
      const a = event.activityTaskScheduledEventAttributes;
      const type = a.activityType?.name ?? 'activity';
      const input = await decoder.first(a.input);
      const summary = await decoder.summary(event);
      const label = summary ?? `${type} ${brief(input, 120)}`;
      activities.set(eventId, { type, label, input });
      push('activity', `scheduled ${type}: ${label}`, input);
    } else if (event.activityTaskStartedEventAttributes) {
      const a = event.activityTaskStartedEventAttributes;
      const started: { attempt: number; lastFailure?: string } = { attempt: a.attempt ?? 1 };
      if (a.lastFailure) started.lastFailure = failureText(a.lastFailure);
      startedAttempts.set(num(a.scheduledEventId), started);
    } else if (event.activityTaskCompletedEventAttributes) {
      const a = event.activityTaskCompletedEventAttributes;
      const scheduled = activities.get(num(a.scheduledEventId));
      const result = await decoder.first(a.result);
      const attempts = attemptsText(startedAttempts.get(num(a.scheduledEventId)));
      push('activity', `completed ${scheduled?.type ?? 'activity'}: ${scheduled?.label ?? '?'}${attempts}`, result);
    } else if (event.activityTaskFailedEventAttributes) {
      const a = event.activityTaskFailedEventAttributes;
      const scheduled = activities.get(num(a.scheduledEventId));
      const attempts = attemptsText(startedAttempts.get(num(a.scheduledEventId)));
      push(
        'activity',
        `FAILED ${scheduled?.type ?? 'activity'}: ${scheduled?.label ?? '?'}${attempts}: ${failureText(a.failure)}`,
        { message: failureText(a.failure), type: a.failure?.applicationFailureInfo?.type ?? undefined },
      );
    } else if (event.activityTaskTimedOutEventAttributes) {
      const a = event.activityTaskTimedOutEventAttributes;
      const scheduled = activities.get(num(a.scheduledEventId));
      push(
        'activity',
        `timed out ${scheduled?.type ?? 'activity'}: ${scheduled?.label ?? '?'}: ${failureText(a.failure)}`,
      );
    } else if (event.activityTaskCancelRequestedEventAttributes) {
      const a = event.activityTaskCancelRequestedEventAttributes;
      const scheduled = activities.get(num(a.scheduledEventId));
      push('activity', `cancel requested for ${scheduled?.type ?? 'activity'}: ${scheduled?.label ?? '?'}`);
    } else if (event.activityTaskCanceledEventAttributes) {
      const a = event.activityTaskCanceledEventAttributes;
      const scheduled = activities.get(num(a.scheduledEventId));
      push('activity', `cancelled ${scheduled?.type ?? 'activity'}: ${scheduled?.label ?? '?'}`);
    } else if (event.timerStartedEventAttributes) {
      const a = event.timerStartedEventAttributes;
      const timeoutMs = optionalTsToMs(a.startToFireTimeout);
      const summary = (await decoder.summary(event)) ?? `timer ${a.timerId ?? '?'}`;
      timers.set(a.timerId ?? '', summary);
      const fires = timeoutMs === undefined ? '' : ` (fires in ${formatDuration(timeoutMs)})`;
      push('timer', `timer started: ${summary}${fires}`);
    } else if (event.timerFiredEventAttributes) {
      const a = event.timerFiredEventAttributes;
      push('timer', `timer fired: ${timers.get(a.timerId ?? '') ?? `timer ${a.timerId ?? '?'}`}`);
    } else if (event.timerCanceledEventAttributes) {
      const a = event.timerCanceledEventAttributes;
      push('timer', `timer cancelled: ${timers.get(a.timerId ?? '') ?? `timer ${a.timerId ?? '?'}`}`);
    } else if (event.workflowExecutionSignaledEventAttributes) {
      const a = event.workflowExecutionSignaledEventAttributes;
      const input = await decoder.payloads(a.input);
      const payload = input.length === 0 ? undefined : input.length === 1 ? input[0] : input;
      const from = a.identity ? ` from ${a.identity}` : '';
      push(
        'signal',
        `signal ${a.signalName ?? '?'}${from}${payload === undefined ? '' : `: ${brief(payload)}`}`,
        payload,
      );
    } else if (event.workflowExecutionUpdateAdmittedEventAttributes) {
      const a = event.workflowExecutionUpdateAdmittedEventAttributes;
      push('update', `update ${a.request?.input?.name ?? '?'} admitted`);
    } else if (event.workflowExecutionUpdateAcceptedEventAttributes) {
      const a = event.workflowExecutionUpdateAcceptedEventAttributes;
      const request = a.acceptedRequest;
      const updateName = request?.input?.name ?? '?';
      const updateId = request?.meta?.updateId ?? '';
      updates.set(updateId, updateName);
      const input = await decoder.payloads(request?.input?.args);
      const payload = input.length === 1 ? input[0] : input;
      const from = request?.meta?.identity ? ` from ${request.meta.identity}` : '';
      push('update', `update ${updateName} accepted${from}: ${brief(payload)}`, payload);
    } else if (event.workflowExecutionUpdateCompletedEventAttributes) {
      const a = event.workflowExecutionUpdateCompletedEventAttributes;
      const updateName = updates.get(a.meta?.updateId ?? '') ?? 'update';
      if (a.outcome?.failure) {
        push('update', `update ${updateName} failed: ${failureText(a.outcome.failure)}`);
      } else {
        const result = await decoder.first(a.outcome?.success);
        push('update', `update ${updateName} completed: ${brief(result)}`, result);
      }
    } else if (event.upsertWorkflowSearchAttributesEventAttributes) {
      const fields = event.upsertWorkflowSearchAttributesEventAttributes.searchAttributes?.indexedFields ?? {};
      const values: Record<string, unknown> = {};
      for (const [key, payload] of Object.entries(fields)) {
        if (INTERNAL_SEARCH_ATTRIBUTES.has(key)) continue;
        values[key] = await decoder.payload(payload);
      }
      const keys = Object.keys(values);
      if (keys.length > 0) {
        push('search-attributes', `recorded ${keys.map((k) => `${k}=${brief(values[k])}`).join(', ')}`, values);
      }
    }
  }
  return entries;
}

function attemptsText(started: { attempt: number; lastFailure?: string } | undefined): string {
  if (!started || started.attempt <= 1) return '';
  return ` (attempt ${started.attempt}${started.lastFailure ? `; previous: ${started.lastFailure}` : ''})`;
}
