/**
 * Idempotency: the same stop requested 20 times at once through
 * StopflowClient.stop yields ONE workflow run, exactly one caller is told
 * `started: true` (the others joined), and the backend sees each volume's
 * detach started once. Once that stop has ended, 20 more concurrent requests
 * start exactly one new run (docs/contract.md: "a new stop after one has ended is
 * allowed"), which again detaches nothing twice.
 */
import { afterAll, beforeAll, expect, inject, test } from 'vitest';
import { MemorySimStore, SimulatedProvider } from '../../activities/providers/simulated';
import type { StopHandle } from '../../client/stopflow-client';
import { workflowIdFor } from '../../common/names';
import type { StopRequest } from '../../common/request';
import { eventually } from '../helpers';
import {
  type Clients,
  connectClients,
  type InProcessWorker,
  report,
  startInProcessWorker,
  uniqueId,
  uniqueTaskQueue,
} from '../support/robustness-helpers';

const CALLERS = 20;

let clients: Clients;
let worker: InProcessWorker;
const taskQueue = uniqueTaskQueue('idempotency');
const sim = new SimulatedProvider(new MemorySimStore());

beforeAll(async () => {
  const address = inject('temporalAddress');
  worker = await startInProcessWorker({
    address,
    taskQueue,
    providers: [sim],
    bundlePath: inject('workflowBundlePath'),
  });
  clients = await connectClients(address, taskQueue);
});

afterAll(async () => {
  await clients?.close();
  await worker?.close();
});

async function concurrently(request: StopRequest): Promise<{ handles: StopHandle[]; ms: number }> {
  const t = Date.now();
  const handles = await Promise.all(Array.from({ length: CALLERS }, () => clients.stopflow.stop(request)));
  return { handles, ms: Date.now() - t };
}

async function startedEvents(workflowId: string, runId: string): Promise<number> {
  const history = await clients.client.workflow.getHandle(workflowId, runId).fetchHistory();
  return history.events?.filter((e) => e.workflowExecutionStartedEventAttributes).length ?? 0;
}

test(`the same stop requested ${CALLERS} times at once is one workflow run, and each volume is detached once`, async () => {
  const instanceId = uniqueId('idem');
  const workflowId = workflowIdFor(instanceId);
  await sim.addInstance(instanceId, [
    { volumeId: 'vol-a', behavior: { detachDelayMs: 3_000 } },
    { volumeId: 'vol-b', behavior: { detachDelayMs: 1_000 } },
    { volumeId: 'vol-c' },
  ]);
  const request: StopRequest = {
    instanceId,
    volumes: [{ volumeId: 'vol-a' }, { volumeId: 'vol-b' }, { volumeId: 'vol-c' }],
    maxStopDuration: '10m',
    requestedBy: 'robustness/idempotency',
  };

  const first = await concurrently(request);
  const runIds = new Set(first.handles.map((h) => h.runId));
  expect(runIds.size).toBe(1);
  expect(first.handles.filter((h) => h.started)).toHaveLength(1);
  const [runId] = [...runIds] as [string];

  const result = await clients.stopflow.result(instanceId);
  expect(result.phase).toBe('stopped');
  expect(await startedEvents(workflowId, runId)).toBe(1);
  const cloud = await sim.instance(instanceId);
  expect(cloud?.stopCalls).toBe(1);
  for (const v of cloud?.volumes ?? []) {
    expect(v.detachStarts, v.volumeId).toBe(1);
    expect(v.forceCalls, v.volumeId).toBe(0);
  }
  // Visibility agrees (it is eventually consistent, so wait for it): one run of this workflow id.
  const countRuns = async () => {
    const seen = new Set<string>();
    for await (const execution of clients.client.workflow.list({ query: `WorkflowId = "${workflowId}"` })) {
      seen.add(execution.runId);
    }
    return seen;
  };
  await eventually(async () => (await countRuns()).size === 1, 'visibility to list the one run');

  // After the stop ended: a new stop is allowed, and 20 concurrent requests start exactly one.
  const second = await concurrently(request);
  const secondRunIds = new Set(second.handles.map((h) => h.runId));
  expect(secondRunIds.size).toBe(1);
  expect(second.handles.filter((h) => h.started)).toHaveLength(1);
  expect(secondRunIds.has(runId)).toBe(false);
  const again = await clients.stopflow.result(instanceId);
  expect(again.phase).toBe('stopped');
  const runs = await eventually(async () => {
    const seen = await countRuns();
    return seen.size === 2 ? seen : undefined;
  }, 'visibility to list both runs');
  const after = await sim.instance(instanceId);
  // Already detached volumes are not detached again; stopping a stopped instance is harmless.
  for (const v of after?.volumes ?? []) expect(v.detachStarts, v.volumeId).toBe(1);
  expect(after?.stopCalls).toBe(2);

  report(
    'idempotency',
    `${CALLERS} concurrent stop() calls in ${first.ms}ms -> 1 run (${first.handles.filter((h) => h.started).length} started: true, ` +
      `${first.handles.filter((h) => !h.started).length} joined), 1 WorkflowExecutionStarted event, detachStarts per volume ` +
      `[${cloud?.volumes.map((v) => v.detachStarts).join(', ')}], detach requests per volume [${cloud?.volumes.map((v) => v.detachCalls).join(', ')}]; ` +
      `after it ended, ${CALLERS} more in ${second.ms}ms -> exactly 1 new run (${runs.size} runs in all)`,
  );
});
