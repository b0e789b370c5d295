/**
 * A stop's recorded history as JSON, read the way an operator would without
 * the UI: `temporal workflow show --output json` (the Temporal CLI that runs the
 * dev server), or, where the server came from the SDK's download and no CLI
 * path is known, the same JSON from the SDK's fetchHistory + historyToJSON.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Client } from '@temporalio/client';
import { historyToJSON } from '@temporalio/common/lib/proto-utils';

const run = promisify(execFile);

/** One event, with the fields a person reads in the UI decoded from their payloads. */
export interface RecordedEvent {
  eventId: number;
  /** As the UI writes it: "Activity Task Scheduled", "Workflow Execution Signaled", ... */
  eventType: string;
  summary?: string;
  activityType?: string;
  signalName?: string;
  signalInput?: unknown;
  markerName?: string;
  updateName?: string;
  updateInput?: unknown;
}

interface JsonPayload {
  metadata?: Record<string, string>;
  data?: string;
}

type JsonObject = Record<string, unknown>;

const isObject = (value: unknown): value is JsonObject => typeof value === 'object' && value !== null;

/** Decodes a json/plain payload as proto3 JSON writes it (base64 data); other encodings stay undefined. */
export function decodePayload(payload: unknown): unknown {
  if (!isObject(payload)) return undefined;
  const { data, metadata } = payload as JsonPayload;
  const encoding = metadata?.encoding ? Buffer.from(metadata.encoding, 'base64').toString('utf8') : undefined;
  if (encoding !== 'json/plain' || typeof data !== 'string') return undefined;
  return JSON.parse(Buffer.from(data, 'base64').toString('utf8'));
}

/** "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED" or "ActivityTaskScheduled" -> "Activity Task Scheduled". */
export function readableEventType(eventType: string): string {
  const words = eventType.startsWith('EVENT_TYPE_')
    ? eventType.slice('EVENT_TYPE_'.length).toLowerCase().split('_')
    : eventType
        .replace(/([a-z])([A-Z])/g, '$1 $2')
        .toLowerCase()
        .split(' ');
  return words.map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join(' ');
}

function attributes(event: JsonObject): JsonObject {
  const key = Object.keys(event).find((k) => k.endsWith('EventAttributes'));
  const value = key ? event[key] : undefined;
  return isObject(value) ? value : {};
}

function nameOf(value: unknown): string | undefined {
  return isObject(value) && typeof value.name === 'string' ? value.name : undefined;
}

export function parseHistoryJson(json: string): RecordedEvent[] {
  const parsed: unknown = JSON.parse(json);
  const events = isObject(parsed) && Array.isArray(parsed.events) ? parsed.events : [];
  return events.filter(isObject).map((event) => {
    const attrs = attributes(event);
    const recorded: RecordedEvent = {
      eventId: Number(event.eventId),
      eventType: readableEventType(String(event.eventType)),
    };
    const summary = isObject(event.userMetadata) ? decodePayload(event.userMetadata.summary) : undefined;
    if (typeof summary === 'string') recorded.summary = summary;
    const activityType = nameOf(attrs.activityType);
    if (activityType) recorded.activityType = activityType;
    if (typeof attrs.signalName === 'string') {
      recorded.signalName = attrs.signalName;
      const payloads = isObject(attrs.input) && Array.isArray(attrs.input.payloads) ? attrs.input.payloads : [];
      recorded.signalInput = decodePayload(payloads[0]);
    }
    if (typeof attrs.markerName === 'string') recorded.markerName = attrs.markerName;
    if (attrs.markerName === 'core_local_activity') {
      // A local activity's marker: its type is in the marker's data, as the UI reads it.
      const data = isObject(attrs.details) && isObject(attrs.details.data) ? attrs.details.data : undefined;
      const payloads = data && Array.isArray(data.payloads) ? data.payloads : [];
      const marker = decodePayload(payloads[0]);
      if (isObject(marker) && typeof marker.activity_type === 'string') recorded.activityType = marker.activity_type;
    }
    const update = isObject(attrs.acceptedRequest) ? attrs.acceptedRequest.input : undefined;
    if (isObject(update) && typeof update.name === 'string') {
      recorded.updateName = update.name;
      const payloads = isObject(update.args) && Array.isArray(update.args.payloads) ? update.args.payloads : [];
      recorded.updateInput = decodePayload(payloads[0]);
    }
    return recorded;
  });
}

export interface HistorySource {
  client: Client;
  address: string;
  namespace?: string;
  cliPath?: string | undefined;
}

/** The run's history, from `temporal workflow show --output json` when the CLI is known. */
export async function recordedHistory(
  source: HistorySource,
  workflowId: string,
  runId: string,
): Promise<{ via: string; events: RecordedEvent[] }> {
  const namespace = source.namespace ?? 'default';
  if (source.cliPath) {
    const args = ['workflow', 'show', '--address', source.address, '--namespace', namespace];
    args.push('--workflow-id', workflowId, '--run-id', runId, '--output', 'json');
    const { stdout } = await run(source.cliPath, args, { maxBuffer: 64 * 1024 * 1024 });
    return { via: 'temporal workflow show --output json', events: parseHistoryJson(stdout) };
  }
  const history = await source.client.workflow.getHandle(workflowId, runId).fetchHistory();
  return { via: 'fetchHistory + historyToJSON', events: parseHistoryJson(historyToJSON(history)) };
}
