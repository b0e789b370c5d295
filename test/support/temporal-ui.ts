/**
 * Reads a workflow's page in the Temporal Web UI (2.42) the way a person does:
 * by the visible text of its tabs, views and embedded summaries. Written
 * against what the page shows, not against the UI's source.
 *
 * The page of one run is /namespaces/<ns>/workflows/<workflowId>/<runId>/history
 * (/namespaces/<ns>/workflows/<workflowId> redirects to the latest run). Its
 * "History" tab has a timeline and a table with three views: "All" (one row per
 * event), "Compact" (one row per activity, timer, signal or marker, with its type
 * and summary) and "JSON". The "User Metadata" tab shows the workflow's summary
 * and details, every activity and timer that carries a summary, and the
 * workflow's current details (read live from a worker by a query).
 */
import type { Locator, Page } from 'playwright-core';
import { expect } from 'vitest';

/** One row of the Compact view: its kind ("Activity", "Signal received", "Timer", "Marker") and labelled fields. */
export interface CompactRow {
  kind: string;
  fields: Record<string, string>;
}

export class WorkflowPage {
  constructor(
    readonly page: Page,
    readonly uiUrl: string,
    readonly namespace = 'default',
  ) {}

  url(workflowId: string, runId?: string): string {
    const base = `${this.uiUrl}/namespaces/${encodeURIComponent(this.namespace)}/workflows/${encodeURIComponent(workflowId)}`;
    return runId ? `${base}/${encodeURIComponent(runId)}/history` : base;
  }

  /** Opens the run's History tab and waits until its header and event table are on screen. */
  async open(workflowId: string, runId?: string): Promise<void> {
    await this.page.goto(this.url(workflowId, runId));
    await this.page.getByRole('heading', { name: workflowId }).first().waitFor();
    await this.page.getByText('Event History', { exact: true }).waitFor();
    await this.eventRows().first().waitFor();
  }

  /** Every row of the history table, in the current view. */
  eventRows(): Locator {
    return this.page.locator('tr[data-testid="event-summary-row"]');
  }

  /** Waits for a row of the table that contains all the given texts. */
  async expectRow(...texts: (string | RegExp)[]): Promise<Locator> {
    let row = this.eventRows();
    for (const text of texts) row = row.filter({ hasText: text });
    await expect
      .poll(() => row.count(), { timeout: 60_000, interval: 250, message: `a row with ${texts.join(' + ')}` })
      .toBeGreaterThan(0);
    return row.first();
  }

  async tab(name: 'History' | 'User Metadata'): Promise<void> {
    await this.page.getByRole('tab', { name: new RegExp(`^${name}`) }).click();
    if (name === 'History') await this.page.getByText('Event History', { exact: true }).waitFor();
    else await this.page.getByRole('heading', { name: 'Events with Metadata' }).waitFor();
  }

  async view(name: 'All' | 'Compact'): Promise<void> {
    await this.page.getByRole('button', { name, exact: true }).click();
    // Only the Compact view names a row's kind as a bare word, e.g. "Activity".
    const compactKind = this.eventRows().locator('td').getByText('Activity', { exact: true }).first();
    if (name === 'Compact') await compactKind.waitFor();
    else
      await this.eventRows()
        .getByText(/^Activity Task Scheduled$/)
        .first()
        .waitFor();
  }

  /** The All view's rows (one per event, up to a page of 100), by event id: the id and the event type shown. */
  async allEvents(): Promise<{ eventId: number; eventType: string }[]> {
    const events: { eventId: number; eventType: string }[] = [];
    for (const row of await this.eventRows().all()) {
      const cells = await row.locator('td').allInnerTexts();
      events.push({ eventId: Number((cells[0] ?? '').trim()), eventType: (cells.at(-2) ?? '').trim() });
    }
    return events.sort((a, b) => a.eventId - b.eventId);
  }

  /** The Compact view's rows, parsed from what each row shows: its kind, then label/value pairs. */
  async compactRows(): Promise<CompactRow[]> {
    const rows: CompactRow[] = [];
    for (const row of await this.eventRows().all()) {
      const cells = await row.locator('td').allInnerTexts();
      const kind = (cells.at(-2) ?? '').trim();
      const lines = (cells.at(-1) ?? '')
        .split('\n')
        .map((line) => line.trim())
        .filter((line) => line !== '')
        // A pending activity being retried shows a lone "Attempt 4 / ∞" chip before its fields.
        .filter((line) => !/^Attempt \d+ \/ /.test(line));
      const fields: Record<string, string> = {};
      for (let i = 0; i + 1 < lines.length; i += 2) fields[lines[i] as string] = lines[i + 1] as string;
      rows.push({ kind, fields });
    }
    return rows;
  }

  /**
   * The text of an embedded markdown block ("Summary", "Details", "Current Details"
   * on the User Metadata tab). The UI renders each in its own iframe below its heading.
   */
  markdownBlock(heading: 'Summary' | 'Details' | 'Current Details'): Locator {
    return this.page
      .locator(`xpath=//h3[normalize-space()="${heading}"]/ancestor::div[1]/following::iframe[1]`)
      .contentFrame()
      .locator('body');
  }

  /** The activities and timers listed under "Events with Metadata": kind, summary and status. */
  async eventsWithMetadata(): Promise<string[]> {
    const section = this.page.locator('xpath=//h3[normalize-space()="Events with Metadata"]/ancestor::div[2]');
    const text = await section.innerText();
    return text
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line !== '' && line !== 'Events with Metadata');
  }
}
