/**
 * Workflow stack traces (worker/workflow-stack-traces.ts): off in the bundles stopflow builds unless asked
 * for, on a real server, with stops that still run to the end either way; and the worker binary refuses
 * to ask for them from a bundle built without.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import type { SimulatedProvider } from '../activities/providers/simulated';
import type { StopflowClient } from '../client/stopflow-client';
import { workflowIdFor } from '../common/names';
import { ConfigError, workflowStackTracesRequested } from '../worker/config';
import { runWorker } from '../worker/main';
import { bundleHasStackTraces, fileHasStackTraces, withoutStackTraces } from '../worker/workflow-stack-traces';
import { eventually, type Harness, startHarness } from './helpers';

/** The SDK's built-in query behind the Temporal UI's "Stack Trace" tab. */
const STACK_TRACE_QUERY = '__stack_trace';

/** Starts a stop with one volume stuck, reads its stack trace while it waits, aborts it, and returns both. */
async function stackTraceOfWaitingStop(stopflow: StopflowClient, sim: SimulatedProvider) {
  const instanceId = `st-${randomUUID().slice(0, 8)}`;
  await sim.addInstance(instanceId, [{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
  await stopflow.stop({ instanceId, volumes: [{ volumeId: 'vol-stuck' }] });
  await eventually(async () => {
    const status = await stopflow.status(instanceId);
    return status.volumes.some((v) => v.state === 'detaching');
  }, 'vol-stuck detaching');
  const handle = stopflow.client.workflow.getHandle(workflowIdFor(instanceId));
  const stack = await handle.query<string>(STACK_TRACE_QUERY);
  await stopflow.abort(instanceId, { reason: 'test over' });
  const result = await stopflow.result(instanceId);
  return { stack, result };
}

describe('workflow stack traces', () => {
  test('a bundle says in its first statement whether they are off, and turning them off twice changes nothing', () => {
    const code = '/******/ (() => {})();';
    expect(bundleHasStackTraces(code)).toBe(true);
    const off = withoutStackTraces(code);
    expect(bundleHasStackTraces(off)).toBe(false);
    expect(withoutStackTraces(off)).toBe(off);
    // On the first line: every line of the source map stays where it was.
    expect(off.split('\n').length).toBe(code.split('\n').length);
  });

  test("the tests' shared bundle (bundleStopflowWorkflows with no options) has them off", () => {
    expect(fileHasStackTraces(inject('workflowBundlePath'))).toBe(false);
  });

  describe('on a real server', () => {
    let h: Harness;
    beforeAll(async () => {
      h = await startHarness();
    });
    afterAll(async () => {
      await h?.close();
    });

    test('off: the stack-trace query answers without a frame of stopflow, and the stop still ends stopped', async () => {
      const { stack, result } = await stackTraceOfWaitingStop(h.stopflow, h.sim);
      expect(stack).not.toMatch(/volume-path|stop-instance/);
      expect(result.phase).toBe('stopped');
      expect(result.volumes[0]?.state).toBe('force_detached');
    });

    test('on (a worker that bundles at start with workflowStackTraces): the query shows where the stop waits', async () => {
      const traced = await startHarness({ workflowStackTraces: true });
      try {
        const { stack, result } = await stackTraceOfWaitingStop(traced.stopflow, traced.sim);
        // Source-mapped: the workflow's own files and functions, as the Temporal UI shows them.
        expect(stack).toMatch(/volume-path\.ts/);
        expect(stack).toMatch(/detachAll/);
        expect(result.phase).toBe('stopped');
      } finally {
        await traced.close();
      }
    }, 120_000);
  });

  describe('the worker binary', () => {
    test('STOPFLOW_WORKFLOW_STACK_TRACES takes true or false and names itself otherwise', () => {
      expect(workflowStackTracesRequested({})).toBe(false);
      expect(workflowStackTracesRequested({ STOPFLOW_WORKFLOW_STACK_TRACES: ' ' })).toBe(false);
      expect(workflowStackTracesRequested({ STOPFLOW_WORKFLOW_STACK_TRACES: 'TRUE' })).toBe(true);
      expect(workflowStackTracesRequested({ STOPFLOW_WORKFLOW_STACK_TRACES: '0' })).toBe(false);
      expect(() => workflowStackTracesRequested({ STOPFLOW_WORKFLOW_STACK_TRACES: 'yes' })).toThrow(ConfigError);
      expect(() => workflowStackTracesRequested({ STOPFLOW_WORKFLOW_STACK_TRACES: 'yes' })).toThrow(
        /STOPFLOW_WORKFLOW_STACK_TRACES: must be "true" or "false"/,
      );
    });

    test('refuses them from a bundle built without, before it connects anywhere', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'stopflow-st-'));
      const bundle = join(dir, 'workflows.js');
      writeFileSync(bundle, withoutStackTraces('/* a bundle */'));
      const written: string[] = [];
      const write = process.stderr.write.bind(process.stderr);
      process.stderr.write = ((chunk: string | Uint8Array) => {
        written.push(String(chunk));
        return true;
      }) as typeof process.stderr.write;
      let code: number;
      try {
        code = await runWorker({
          STOPFLOW_PROVIDERS: 'simulated',
          STOPFLOW_WORKFLOW_BUNDLE: bundle,
          STOPFLOW_WORKFLOW_STACK_TRACES: 'true',
          STOPFLOW_METRICS_ADDRESS: 'off',
          // Nothing listens here: the refusal must come before any connection is tried.
          TEMPORAL_ADDRESS: '127.0.0.1:1',
        });
      } finally {
        process.stderr.write = write;
        rmSync(dir, { recursive: true, force: true });
      }
      expect(code).toBe(2);
      expect(written.join('')).toMatch(
        /STOPFLOW_WORKFLOW_STACK_TRACES: the workflow bundle .* was built without stack traces/,
      );
    });
  });
});
