/**
 * Recorded histories (test/fixtures/<version>/, made by `npm run
 * record-fixtures -- <version>`) must replay on the current workflow code. A
 * failure here means a change would break stops already in flight: guard it
 * with `patched()` instead, and record a new version's fixtures.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { Worker } from '@temporalio/worker';
import { expect, inject, test } from 'vitest';

const FIXTURES = new URL('./fixtures/', import.meta.url);
/** One folder per workflow version that ever ran. */
const versions = readdirSync(FIXTURES, { withFileTypes: true })
  .filter((d) => d.isDirectory())
  .map((d) => d.name)
  .sort();
const names = versions.flatMap((version) =>
  readdirSync(new URL(`${version}/`, FIXTURES))
    .filter((f) => f.endsWith('.json'))
    .map((f) => `${version}/${f}`),
);

test('there are fixtures from more than one workflow version', () => {
  expect(versions.length).toBeGreaterThanOrEqual(2);
});

test.each(versions)('fixtures of %s cover the main paths of a stop', (version) => {
  const scenarios = names.filter((n) => n.startsWith(`${version}/`)).map((n) => n.slice(version.length + 1, -5));
  expect(scenarios).toEqual(
    expect.arrayContaining([
      'abort',
      'force-grace',
      'force-unsupported',
      'graceful',
      'set-max-stop-duration',
      'timeout',
    ]),
  );
});

test('every recorded history replays without nondeterminism', async () => {
  const histories = names.map((name) => ({
    workflowId: name,
    history: JSON.parse(readFileSync(new URL(name, FIXTURES), 'utf8')) as unknown,
  }));
  const results = Worker.runReplayHistories({ workflowBundle: { codePath: inject('workflowBundlePath') } }, histories);
  const failures: string[] = [];
  let replayed = 0;
  for await (const result of results) {
    replayed++;
    if (result.error) failures.push(`${result.workflowId}: ${result.error.message}`);
  }
  expect(failures).toEqual([]);
  expect(replayed).toBe(names.length);
});

type RecordedEvent = Record<string, unknown> & { eventId: string };

/** Each workflow task's completion: its event id and the build id (SDK and workflow bundle) of the worker that ran it. */
function taskBuilds(events: readonly RecordedEvent[]): Array<{ task: number; build: string }> {
  return events.flatMap((event) => {
    const done = event.workflowTaskCompletedEventAttributes as { workerVersion?: { buildId?: string } } | undefined;
    return done ? [{ task: Number(event.eventId), build: done.workerVersion?.buildId ?? '' }] : [];
  });
}

/** The patches a history's markers record, each with the workflow task that recorded it. */
function patchMarkers(events: readonly RecordedEvent[]): Array<{ id: string; task: number }> {
  return events.flatMap((event) => {
    const marker = event.markerRecordedEventAttributes as
      | {
          markerName?: string;
          workflowTaskCompletedEventId?: string;
          details?: Record<string, { payloads?: Array<{ data?: string }> }>;
        }
      | undefined;
    const data = marker?.markerName === 'core_patch' ? marker.details?.['patch-data']?.payloads?.[0]?.data : undefined;
    if (data === undefined) return [];
    const { id } = JSON.parse(Buffer.from(data, 'base64').toString('utf8')) as { id: string };
    return [{ id, task: Number(marker?.workflowTaskCompletedEventId) }];
  });
}

// A rollout history (`record-fixtures -- <version> --started-on=<old bundle>`) began on an older workflow bundle and
// was finished by its folder's: its workflow tasks were run by two builds, the old one first, and the patch its folder
// is named for (`v12-force-lane`: `force-lane`) was recorded by the new one, never by the old. So the replay above
// takes the old branches first and the new one after them.
test.each(names.filter((n) => n.split('/')[1]?.startsWith('rollout-')))(
  '%s was begun by an older workflow bundle and patched by its own version',
  (name) => {
    const folderPatch = name.split('/')[0]?.replace(/^v\d+-/, '');
    const { events } = JSON.parse(readFileSync(new URL(name, FIXTURES), 'utf8')) as { events: RecordedEvent[] };
    const tasks = taskBuilds(events);
    const builds = [...new Set(tasks.map((t) => t.build))];
    expect(builds).toHaveLength(2);
    const handedOver = tasks.findIndex((t) => t.build === builds[1]);
    expect(tasks.slice(handedOver).every((t) => t.build === builds[1])).toBe(true);
    const buildOf = (task: number) => tasks.find((t) => t.task === task)?.build;
    const marked = patchMarkers(events).filter((m) => m.id === folderPatch);
    expect(marked.length).toBeGreaterThan(0);
    expect(marked.map((m) => buildOf(m.task))).toEqual(marked.map(() => builds[1]));
  },
);
