/**
 * The audit log, checked in a real browser: stops run on the real dev server
 * and worker, then Debian's chromium opens each stop's page in the dev server's
 * Temporal Web UI and reads what a person would read there. Screenshots are
 * saved to test-results/ui/ (see docs/audit-log.md for what they show).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import type { AuditEntry } from '../client/history';
import { workflowIdFor } from '../common/names';
import type { StopStatus } from '../common/status';
import { eventually, type Harness, startHarness } from './helpers';
import { browserTestsUnavailable, launchChromium, newPage, screenshot } from './support/browser';
import { type RecordedEvent, recordedHistory } from './support/history-json';
import { type CompactRow, WorkflowPage } from './support/temporal-ui';

const runFile = promisify(execFile);

const uiUrl = inject('temporalUiUrl') ?? process.env.TEMPORAL_UI_URL;
const unavailable = browserTestsUnavailable(uiUrl);
if (unavailable) console.warn(`[stopflow ui tests] skipped: ${unavailable}`);

const REQUESTED_BY = 'ci-ui-test@example.com';
const ABORT = { reason: 'host is being drained', requestedBy: 'ops@example.com' };
// Long enough that the first workflow task runs well before it even on a loaded machine.
const MAX_STOP_DURATION = '8s';
/** Set by the update on a stop started without a deadline; measured from the stop's start, like the original. */
const UPDATED_MAX_STOP_DURATION = '8s';

/** Waits for what a page shows: generous, since the machine may be loaded; never a fixed sleep. */
const PATIENTLY = { timeout: 60_000, interval: 250 };

let h: Harness;
let browser: Browser;
const pages: Page[] = [];

beforeAll(async () => {
  if (unavailable) return;
  [h, browser] = await Promise.all([startHarness({ pollIntervalMs: 200 }), launchChromium()]);
  // The three stops run side by side; each test awaits the one it reads (and sees its failure, if any).
  for (const stop of [abortedStop, timedOutStop, movedDeadlineStop]) stop().catch(() => undefined);
});
afterAll(async () => {
  await Promise.all(pages.map((p) => p.close()));
  await browser?.close();
  await h?.close();
});

interface FinishedStop {
  instanceId: string;
  workflowId: string;
  runId: string;
  result: StopStatus;
}

function volumeReaches(instanceId: string, volumeId: string, state: string): Promise<StopStatus> {
  return eventually(async () => {
    const status = await h.stopflow.status(instanceId);
    return status.volumes.find((v) => v.volumeId === volumeId)?.state === state ? status : undefined;
  }, `${volumeId} to be ${state}`);
}

const VOLUMES = [{ volumeId: 'vol-ok' }, { volumeId: 'vol-stuck' }];

async function seed(prefix: string): Promise<string> {
  const instanceId = h.instanceId(prefix);
  await h.sim.addInstance(instanceId, [{ volumeId: 'vol-ok' }, { volumeId: 'vol-stuck', behavior: { hang: true } }]);
  return instanceId;
}

/** Each stop runs once, for whichever test needs it first. */
function once(run: () => Promise<FinishedStop>): () => Promise<FinishedStop> {
  let started: Promise<FinishedStop> | undefined;
  return () => {
    started ??= run();
    return started;
  };
}

/** A healthy and a stuck volume, no deadline: the healthy one detaches, the stuck one waits for `abort`. */
const abortedStop = once(async () => {
  const instanceId = await seed('ui-abort');
  const { workflowId, runId } = await h.stopflow.stop({
    instanceId,
    volumes: VOLUMES,
    requestedBy: REQUESTED_BY,
    reason: 'ui test: abort',
  });
  await volumeReaches(instanceId, 'vol-ok', 'detached');
  await volumeReaches(instanceId, 'vol-stuck', 'detaching');
  await h.stopflow.abort(instanceId, ABORT);
  const result = await h.stopflow.result(instanceId);
  expect(result.escalation?.cause).toBe('abort');
  return { instanceId, workflowId, runId, result };
});

/** The same volumes with a short maxStopDuration: the deadline timer fires and forces the stuck one. */
const timedOutStop = once(async () => {
  const instanceId = await seed('ui-timeout');
  const { workflowId, runId } = await h.stopflow.stop({
    instanceId,
    volumes: VOLUMES,
    maxStopDuration: MAX_STOP_DURATION,
    requestedBy: REQUESTED_BY,
  });
  const result = await h.stopflow.result(instanceId);
  expect(result.escalation?.cause).toBe('timeout');
  return { instanceId, workflowId, runId, result };
});

/** No deadline at first; the setMaxStopDuration update then sets a short one, which expires. */
const movedDeadlineStop = once(async () => {
  const instanceId = await seed('ui-update');
  const { workflowId, runId } = await h.stopflow.stop({ instanceId, volumes: VOLUMES, requestedBy: REQUESTED_BY });
  await volumeReaches(instanceId, 'vol-stuck', 'detaching');
  const { deadline } = await h.stopflow.setMaxStopDuration(instanceId, UPDATED_MAX_STOP_DURATION);
  expect(deadline).not.toBeNull();
  const result = await h.stopflow.result(instanceId);
  expect(result.escalation?.cause).toBe('timeout');
  return { instanceId, workflowId, runId, result };
});

async function openStop(stop: FinishedStop): Promise<WorkflowPage> {
  const page = await newPage(browser);
  pages.push(page);
  const ui = new WorkflowPage(page, uiUrl as string);
  await ui.open(stop.workflowId, stop.runId);
  return ui;
}

const activityRow = (activityType: string, summary: RegExp | string) =>
  expect.objectContaining({
    kind: 'Activity',
    fields: expect.objectContaining({
      'Activity Type': activityType,
      Summary: typeof summary === 'string' ? expect.stringContaining(summary) : expect.stringMatching(summary),
    }),
  });

/** What both stops show alike: the header, both detaches, the force-detach and the instance stop. */
async function expectCommonStory(ui: WorkflowPage, stop: FinishedStop, name: string): Promise<CompactRow[]> {
  const { page } = ui;
  await expect.poll(() => page.getByText('Completed', { exact: true }).first().isVisible(), PATIENTLY).toBe(true);
  await page.getByText('stopInstance', { exact: true }).first().waitFor();

  // "All": one row per event, each scheduled activity with its type and summary.
  await ui.expectRow('Activity Task Scheduled', 'requestDetach', 'vol-ok');
  await ui.expectRow('Activity Task Scheduled', 'requestDetach', 'vol-stuck');
  await ui.expectRow('Activity Task Scheduled', 'awaitDetached', 'vol-stuck');
  await ui.expectRow('Activity Task Scheduled', 'forceDetachVolume', 'vol-stuck');
  await ui.expectRow('Activity Task Scheduled', 'stopInstanceIfDetached', stop.instanceId);
  await ui.expectRow('Workflow Execution Completed');
  await screenshot(page, `${name}-history-all`);

  // "Compact": one row per activity, signal, timer or marker.
  await ui.view('Compact');
  const rows = await ui.compactRows();
  expect(rows).toEqual(
    expect.arrayContaining([
      activityRow('requestDetach', 'vol-ok'),
      activityRow('requestDetach', 'vol-stuck'),
      activityRow('awaitDetached', 'vol-stuck'),
      activityRow('forceDetachVolume', 'vol-stuck'),
      activityRow('stopInstanceIfDetached', stop.instanceId),
    ]),
  );
  // Only the stuck volume was forced.
  expect(rows.filter((r) => r.fields['Activity Type'] === 'forceDetachVolume')).toHaveLength(1);
  await screenshot(page, `${name}-history-compact`);
  return rows;
}

/** The User Metadata tab: the workflow's summary and details, the summarized events, the live details. */
async function expectUserMetadata(ui: WorkflowPage, stop: FinishedStop, name: string, cause: string): Promise<void> {
  await ui.tab('User Metadata');
  const summary = ui.markdownBlock('Summary');
  await expect.poll(() => summary.innerText(), PATIENTLY).toContain(stop.instanceId);
  const details = ui.markdownBlock('Details');
  await expect.poll(() => details.innerText(), PATIENTLY).toContain('vol-stuck');
  const detailsText = await details.innerText();
  for (const expected of [stop.instanceId, 'vol-ok', 'maxStopDuration', REQUESTED_BY]) {
    expect(detailsText).toContain(expected);
  }

  const events = (await ui.eventsWithMetadata()).join('\n');
  expect(events).toMatch(/detach vol-ok[^\n]*\nCompleted/);
  expect(events).toMatch(/vol-stuck/);
  expect(events).toMatch(/force-detach[^\n]*vol-stuck[^\n]*\nCompleted/);

  // Current details come live from the worker (a query), so they may take a moment.
  const current = ui.markdownBlock('Current Details');
  await expect
    .poll(() => current.innerText(), { ...PATIENTLY, message: 'the current details to show the final state' })
    .toContain('force_detached');
  const currentText = await current.innerText();
  expect(currentText).toContain(stop.instanceId);
  expect(currentText).toContain('stopped');
  expect(currentText).toContain(cause);
  expect(currentText).toMatch(/vol-ok: detached/);
  expect(currentText).toMatch(/vol-stuck: force_detached/);
  await screenshot(ui.page, `${name}-user-metadata`);
}

describe('the Temporal UI tells the story of a stop', () => {
  test('an aborted stop shows both detaches, the abort signal with its payload, and the force-detach', async (ctx) => {
    if (unavailable) ctx.skip(unavailable);
    const stop = await abortedStop();
    expect(stop.result.volumes.map((v) => [v.volumeId, v.state])).toEqual([
      ['vol-ok', 'detached'],
      ['vol-stuck', 'force_detached'],
    ]);
    const ui = await openStop(stop);
    await ui.expectRow('Workflow Execution Signaled', 'abort');
    const rows = await expectCommonStory(ui, stop, 'aborted');
    const signal = rows.find((r) => r.kind === 'Signal received');
    expect(signal?.fields['Signal Name']).toBe('abort');
    // The payload is shown inline (cut short by the UI), readable without opening it.
    expect(signal?.fields.Input).toContain(ABORT.reason);
    expect(rows.find((r) => r.fields['Activity Type'] === 'forceDetachVolume')?.fields.Summary).toMatch(/abort/);
    expect(rows.some((r) => r.kind === 'Timer')).toBe(false);

    // "JSON": one event at a time, payloads and user metadata decoded; event 1 carries the workflow's summary.
    await ui.page.getByRole('button', { name: 'JSON', exact: true }).click();
    await ui.page.getByText(`"summary": "stop ${stop.instanceId}`).waitFor();
    await screenshot(ui.page, 'aborted-history-json');
    await expectUserMetadata(ui, stop, 'aborted', 'abort');
  });

  test('a timed-out stop shows both detaches, the maxStopDuration timer firing, and the force-detach', async (ctx) => {
    if (unavailable) ctx.skip(unavailable);
    const stop = await timedOutStop();
    expect(stop.result.volumes.find((v) => v.volumeId === 'vol-stuck')?.state).toBe('force_detached');
    const ui = await openStop(stop);
    await ui.expectRow('Timer Started', 'maxStopDuration');
    await ui.expectRow('Timer Fired');
    const rows = await expectCommonStory(ui, stop, 'timed-out');
    expect(rows).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          kind: 'Timer',
          fields: expect.objectContaining({ Summary: expect.stringMatching(/maxStopDuration/) }),
        }),
      ]),
    );
    expect(rows.some((r) => r.kind === 'Signal received')).toBe(false);
    const force = rows.find((r) => r.fields['Activity Type'] === 'forceDetachVolume');
    expect(force?.fields.Summary).toContain(`maxStopDuration ${MAX_STOP_DURATION}`);
    await expectUserMetadata(ui, stop, 'timed-out', 'timeout');
  });

  test('a stop whose deadline was set by the setMaxStopDuration update shows the update and its payload', async (ctx) => {
    if (unavailable) ctx.skip(unavailable);
    const stop = await movedDeadlineStop();
    const ui = await openStop(stop);
    await ui.expectRow('Workflow Execution Update Accepted', 'setMaxStopDuration');
    await ui.expectRow('Workflow Execution Update Completed', 'deadline');
    // The request's payload is one click away: the accepted row expands to the decoded request.
    await (await ui.expectRow('Workflow Execution Update Accepted')).click();
    await expect
      .poll(() => ui.page.locator('table').first().innerText(), PATIENTLY)
      .toContain(`"maxStopDuration": "${UPDATED_MAX_STOP_DURATION}"`);
    await screenshot(ui.page, 'updated-history-all');

    await ui.view('Compact');
    const rows = await ui.compactRows();
    expect(rows).toEqual(
      expect.arrayContaining([
        {
          kind: 'Workflow Update',
          fields: expect.objectContaining({
            Name: 'setMaxStopDuration',
            'Outcome Success': expect.stringContaining(stop.result.deadline as string),
          }),
        },
        activityRow('forceDetachVolume', 'vol-stuck'),
      ]),
    );
    await screenshot(ui.page, 'updated-history-compact');
  });
});

/** The UI's Compact row as a comparable line: kind and what names it. */
function uiItem(row: CompactRow): string {
  const f = row.fields;
  switch (row.kind) {
    case 'Activity':
      return `activity ${f['Activity Type']}: ${f.Summary ?? ''}`;
    case 'Signal received':
      return `signal ${f['Signal Name']}`;
    case 'Timer':
      return `timer ${f.Summary ?? ''}`;
    case 'Marker':
      return `marker ${f['Marker Name']}`;
    case 'Local Activity':
      return `local activity ${f['Activity Type']}`;
    case 'Workflow Update':
      return `update ${f.Name}`;
    default:
      return `${row.kind} ${JSON.stringify(f)}`; // a kind this test does not know yet: fails the comparison, visibly
  }
}

/** The UI names a local activity's marker (the SDK's `core_local_activity`) "Local Activity". */
function uiEventType(event: RecordedEvent): string {
  return event.eventType === 'Marker Recorded' && event.markerName === 'core_local_activity'
    ? 'Local Activity'
    : event.eventType;
}

/** The same line from the recorded history: one per scheduled activity, signal, started timer and marker. */
function historyItem(event: RecordedEvent): string | undefined {
  switch (event.eventType) {
    case 'Activity Task Scheduled':
      return `activity ${event.activityType}: ${event.summary ?? ''}`;
    case 'Workflow Execution Signaled':
      return `signal ${event.signalName}`;
    case 'Timer Started':
      return `timer ${event.summary ?? ''}`;
    case 'Marker Recorded':
      return event.markerName === 'core_local_activity'
        ? `local activity ${event.activityType}`
        : `marker ${event.markerName}`;
    case 'Workflow Execution Update Accepted':
      return `update ${event.updateName}`;
    default:
      return undefined;
  }
}

/** `stopflow history <instanceId> --json`, run as a person would, against this run's server. */
async function stopflowHistory(instanceId: string, runId: string): Promise<AuditEntry[]> {
  const { stdout } = await runFile('node', ['bin/stopflow.mjs', 'history', instanceId, '--run-id', runId, '--json'], {
    env: { ...process.env, TEMPORAL_ADDRESS: inject('temporalAddress') },
    maxBuffer: 16 * 1024 * 1024,
  });
  return (JSON.parse(stdout) as { entries: AuditEntry[] }).entries;
}

/** The audit entry's step in the same words as uiItem (patch markers are machinery the audit log leaves out). */
function auditItem(entry: AuditEntry): string | undefined {
  const text = entry.text;
  switch (entry.event) {
    case 'ActivityTaskScheduled':
      return `activity ${text.replace(/^scheduled /, '')}`;
    case 'WorkflowExecutionSignaled':
      return `signal ${/^signal (\S+)/.exec(text)?.[1] ?? '?'}`;
    case 'TimerStarted':
      return `timer ${text.replace(/^timer started: /, '').replace(/ \(fires in [^)]*\)$/, '')}`;
    case 'WorkflowExecutionUpdateAccepted':
      return `update ${/^update (\S+) accepted/.exec(text)?.[1] ?? '?'}`;
    default:
      return undefined;
  }
}

describe('the UI and the recorded history show the same events', () => {
  // The UI is compared event by event with the raw history (`temporal workflow show --output json`),
  // and step by step with the audit log people read (`stopflow history <instanceId> --json`).
  for (const [name, stopOf] of [
    ['aborted', abortedStop],
    ['timed-out', timedOutStop],
    ['updated', movedDeadlineStop],
  ] as const) {
    test(`${name} stop: every event, activity, signal and timer in the UI is in the history, and back`, async (ctx) => {
      if (unavailable) ctx.skip(unavailable);
      const stop = await stopOf();
      const { events } = await recordedHistory(
        { client: h.client, address: inject('temporalAddress'), cliPath: inject('temporalCliPath') },
        stop.workflowId,
        stop.runId,
      );
      expect(events.length).toBeGreaterThan(10);
      expect(stop.workflowId).toBe(workflowIdFor(stop.instanceId));
      const ui = await openStop(stop);

      // "All" view: the same events with the same types, event by event.
      await ui.expectRow(String(events.length), 'Workflow Execution Completed');
      const uiEvents = await ui.allEvents();
      expect(uiEvents).toEqual(events.map((e) => ({ eventId: e.eventId, eventType: uiEventType(e) })));

      // "Compact" view: the same activities (type and summary), signals, timers and markers.
      await ui.view('Compact');
      const rows = await ui.compactRows();
      const fromUi = rows.map(uiItem).sort();
      const fromHistory = events.flatMap((e) => historyItem(e) ?? []).sort();
      expect(fromUi).toEqual(fromHistory);
      // Signal payloads: the UI shows the start of the same JSON the history holds.
      const uiSignals = rows.filter((r) => r.kind === 'Signal received');
      const recordedSignals = events.filter((e) => e.signalName !== undefined);
      expect(uiSignals).toHaveLength(recordedSignals.length);
      const recordedInputs = recordedSignals.map((e) => JSON.stringify(e.signalInput));
      for (const signal of uiSignals) {
        const shown = (signal.fields.Input ?? '').replace(/…$/, '');
        expect(shown.length).toBeGreaterThan(10);
        expect(recordedInputs.some((input) => input.startsWith(shown))).toBe(true);
      }
      // `stopflow history`: the same activities (type and summary), signals, timers and updates as the UI. It
      // leaves out the SDK's markers: patches, and the local activities that ask the worker (who else holds
      // these volumes, whether completion events are on), which the UI shows and the stop's status reports.
      const audit = await stopflowHistory(stop.instanceId, stop.runId);
      const fromAudit = audit.flatMap((e) => auditItem(e) ?? []).sort();
      expect(fromAudit).toEqual(
        fromUi.filter((item) => !item.startsWith('marker ') && !item.startsWith('local activity ')),
      );
      expect(audit.some((e) => e.kind === 'workflow' && /completed|stopped/i.test(e.text))).toBe(true);
      await screenshot(ui.page, `${name}-compared-compact`);
    });
  }
});
