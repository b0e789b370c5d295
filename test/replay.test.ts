/**
 * Recorded histories (test/fixtures, made by `npm run record-fixtures`) must
 * replay on the current workflow code. A failure here means a change would
 * break stops already in flight: guard it with `patched()` instead.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { Worker } from '@temporalio/worker';
import { expect, inject, test } from 'vitest';

const FIXTURES = new URL('./fixtures/', import.meta.url);
const names = readdirSync(FIXTURES).filter((f) => f.endsWith('.json'));

test('fixtures cover the main paths of a stop', () => {
  expect(names.map((n) => n.replace(/\.json$/, '')).sort()).toEqual(
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
