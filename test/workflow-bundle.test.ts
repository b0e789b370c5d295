/**
 * The workflow bundle (bundleStopflowWorkflows, worker/worker.ts): every stop evaluates its modules afresh,
 * so code nothing uses must not be in it, and what is in it must stay readable (names kept, nothing renamed)
 * for stack traces in the Temporal UI.
 */
import { readFileSync } from 'node:fs';
import { expect, inject, test } from 'vitest';

const bundle = () => readFileSync(inject('workflowBundlePath'), 'utf8');

test("the shared bundle carries only the zod schema constructors the request's rules use", () => {
  // zod 4.1 defines 159 (schemas, checks, errors) at module load; the rules need 36 of them.
  const constructors = bundle().match(/\$constructor\(/g) ?? [];
  expect(constructors.length).toBeGreaterThan(10);
  expect(constructors.length).toBeLessThan(60);
});

test("the bundle keeps the workflows' own names and words: stack traces and the UI still read", () => {
  const code = bundle();
  for (const name of ['stopInstance', 'runToEnd', 'escalate', 'detachAll', 'stopIfNothingAttached', 'sweep'])
    expect(code, name).toMatch(new RegExp(`function ${name}\\(`));
  // Comments go (licences stay); what the stop says does not.
  expect(code).toContain('force failed: is ');
  expect(code).toContain('@license');
});

test('workflow code builds its zod schemas without compiled fast paths (workflows/zod-config.ts)', () => {
  expect(bundle()).toMatch(/\{\s*jitless: true\s*\}/);
});
