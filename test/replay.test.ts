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
