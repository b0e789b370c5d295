/**
 * The `stopflow` Nexus service and the child-workflow integration, on the run's
 * dev server: a caller namespace and an endpoint created by the README's own
 * commands, the README's caller workflows (examples/platform/, shown verbatim
 * in the README) run by a worker of that namespace, against a real stopflow
 * worker. Only the endpoint, namespace and task queue names are swapped for
 * this test's own, as the other README tests swap theirs.
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, WorkflowFailedError } from '@temporalio/client';
import { NexusOperationFailure } from '@temporalio/common';
import { NativeConnection, Worker } from '@temporalio/worker';
import * as nexus from 'nexus-rpc';
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import { workflowIdFor } from '../common/names';
import type { decommissionHost } from '../examples/platform/child-workflows';
import type { escalateStop, retireInstance } from '../examples/platform/nexus-workflows';
import { eventually, type Harness, startHarness, workflowExists } from './helpers';
import type { callStopflow, StopflowOperation } from './support/nexus-caller';
import { readmeBlock, runShell, shellCommands } from './support/readme-examples';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const EXAMPLES = join(ROOT, 'examples/platform');
const cliPath = inject('temporalCliPath');
const suffix = randomUUID().slice(0, 8);
const callerNamespace = `platform-${suffix}`;
const endpoint = `stopflow-${suffix}`;
const callerTaskQueue = `platform-${suffix}`;
const rawTaskQueue = `raw-${suffix}`;
// Written beside the repository's code (.stopflow/ is git-ignored), so `stopflow/nexus` resolves as in the repository.
const copies = join(ROOT, '.stopflow', `nexus-examples-${suffix}`);

let h: Harness;
let native: NativeConnection;
let caller: Client;
const workers: { worker: Worker; running: Promise<void> }[] = [];

/** The example file, with this test's endpoint and task queue in place of `stopflow`, as the worker bundles it. */
function exampleCopy(file: string): string {
  const text = readFileSync(join(EXAMPLES, file), 'utf8');
  const swapped = text
    .replaceAll("endpoint: 'stopflow'", `endpoint: '${endpoint}'`)
    .replaceAll("taskQueue: 'stopflow'", `taskQueue: '${h.taskQueue}'`);
  expect(swapped).not.toBe(text);
  const path = join(copies, file);
  writeFileSync(path, swapped);
  return path;
}

async function runWorker(namespace: string, taskQueue: string, workflowsPath: string): Promise<void> {
  // A namespace just created may take a few seconds to be known everywhere.
  const worker = await eventually(
    () => Worker.create({ connection: native, namespace, taskQueue, workflowsPath }),
    `a worker in namespace ${namespace}`,
    60_000,
  );
  workers.push({ worker, running: worker.run() });
}

beforeAll(async () => {
  h = await startHarness();
  mkdirSync(copies, { recursive: true });
  // The README's endpoint setup, run as written but for the names.
  const block = shellCommands(readmeBlock('nexus-endpoint'));
  expect(block.exports).toEqual({ TEMPORAL_ADDRESS: 'localhost:7233' });
  const env = {
    ...process.env,
    TEMPORAL_ADDRESS: inject('temporalAddress'),
    PATH: cliPath ? `${dirname(cliPath)}:${process.env.PATH ?? ''}` : process.env.PATH,
  };
  for (const command of block.commands) {
    const ran = await runShell(
      command
        .replaceAll('--namespace platform', `--namespace ${callerNamespace}`)
        .replaceAll('--name stopflow', `--name ${endpoint}`)
        .replaceAll('--target-task-queue stopflow', `--target-task-queue ${h.taskQueue}`),
      env,
    );
    expect(ran.code, `${command}\n${ran.stderr}${ran.stdout}`).toBe(0);
  }
  native = await NativeConnection.connect({ address: inject('temporalAddress') });
  caller = new Client({ connection: h.client.connection, namespace: callerNamespace });
  await runWorker(callerNamespace, callerTaskQueue, exampleCopy('nexus-workflows.ts'));
  await runWorker('default', callerTaskQueue, exampleCopy('child-workflows.ts'));
  await runWorker(callerNamespace, rawTaskQueue, join(ROOT, 'test/support/nexus-caller.ts'));
});

afterAll(async () => {
  for (const { worker } of workers) worker.shutdown();
  await Promise.all(workers.map((w) => w.running));
  await native?.close();
  if (cliPath)
    await runShell(`'${cliPath}' operator nexus endpoint delete --name ${endpoint}`, {
      ...process.env,
      TEMPORAL_ADDRESS: inject('temporalAddress'),
    });
  await h?.close();
  rmSync(copies, { recursive: true, force: true });
});

const retire = (instanceId: string, workflowId = `retire-${instanceId}-${randomUUID().slice(0, 4)}`) =>
  caller.workflow.start<typeof retireInstance>('retireInstance', {
    taskQueue: callerTaskQueue,
    workflowId,
    args: [instanceId],
  });
const escalate = (instanceId: string, reason: string) =>
  caller.workflow.execute<typeof escalateStop>('escalateStop', {
    taskQueue: callerTaskQueue,
    workflowId: `escalate-${instanceId}-${randomUUID().slice(0, 4)}`,
    args: [instanceId, reason],
  });

/** Any input to any operation; resolves with the output, or with the handler's error the caller got. */
async function raw(
  operation: StopflowOperation,
  input: unknown,
): Promise<{ output?: unknown; error?: nexus.HandlerError }> {
  try {
    const output = await caller.workflow.execute<typeof callStopflow>('callStopflow', {
      taskQueue: rawTaskQueue,
      workflowId: `raw-${operation}-${randomUUID().slice(0, 8)}`,
      args: [endpoint, operation, input],
    });
    return { output };
  } catch (err) {
    const cause =
      err instanceof WorkflowFailedError && err.cause instanceof NexusOperationFailure ? err.cause.cause : err;
    if (cause instanceof nexus.HandlerError) return { error: cause };
    throw err;
  }
}

/** Waits until the stop of this instance runs and its first volume is detaching. */
async function untilDetaching(instanceId: string): Promise<void> {
  await eventually(
    async () => (await h.stopflow.status(instanceId)).volumes[0]?.state === 'detaching',
    `${instanceId}: first volume detaching`,
  );
}

test('the README shows the example files as they are', () => {
  expect(readmeBlock('nexus-caller')).toBe(readFileSync(join(EXAMPLES, 'nexus-workflows.ts'), 'utf8'));
  expect(readmeBlock('child-workflow')).toBe(readFileSync(join(EXAMPLES, 'child-workflows.ts'), 'utf8'));
});

describe('Nexus: the stopflow service from another namespace', () => {
  test('stop returns the StopStatus of a stopped instance', async () => {
    const instanceId = h.instanceId('nx');
    await h.sim.addInstance(instanceId, [
      { volumeId: 'vol-1' },
      { volumeId: 'vol-2', behavior: { detachDelayMs: 300 } },
    ]);
    const result = await (await retire(instanceId)).result();
    expect(result.stopped).toBe(true);
    expect(result.status).toMatchObject({ instanceId, phase: 'stopped', instanceStopped: true, escalation: null });
    expect(result.status.volumes.map((v) => v.state)).toEqual(['detached', 'detached']);
    // The stop is an ordinary stopflow stop in stopflow's namespace: the client reads the same outcome.
    expect(await h.stopflow.status(instanceId)).toEqual(result.status);
    expect((await h.sim.instance(instanceId))?.state).toBe('stopped');
  });

  test('two callers of one instance get the result of one run; abort and status through Nexus', async () => {
    const instanceId = h.instanceId('nx');
    await h.sim.addInstance(instanceId, [{ volumeId: 'vol-1', behavior: { hang: true } }]);
    const first = await retire(instanceId);
    await untilDetaching(instanceId);
    const second = await retire(instanceId);
    // Both operations' completion callbacks are attached to the one running stop.
    const stopHandle = h.client.workflow.getHandle(workflowIdFor(instanceId));
    const described = await eventually(async () => {
      const d = await stopHandle.describe();
      return (d.raw.callbacks ?? []).length === 2 ? d : undefined;
    }, 'two Nexus callbacks on the stop');
    expect(described.status.name).toBe('RUNNING');

    // abort forces the stuck volume; the status it returns is the running stop's (read through `status`).
    const live = await escalate(instanceId, 'maintenance window over');
    expect(live).toMatchObject({ instanceId, startedAt: expect.any(String) });
    const [a, b] = await Promise.all([first.result(), second.result()]);
    expect(a).toEqual(b);
    expect(a.stopped).toBe(true);
    expect(a.status).toMatchObject({
      phase: 'stopped',
      escalation: { cause: 'abort', reason: 'maintenance window over', requestedBy: 'platform' },
      volumes: [{ volumeId: 'vol-1', state: 'force_detached' }],
    });
    // One run of the stop, ever.
    const runs = await eventually(async () => {
      const found: string[] = [];
      for await (const e of h.client.workflow.list({ query: `WorkflowId = '${workflowIdFor(instanceId)}'` }))
        found.push(e.runId);
      return found.length > 0 ? found : undefined;
    }, 'the stop listed');
    expect(runs).toEqual([described.runId]);

    // An abort that reaches the ended stop changes nothing and answers with how it ended.
    const late = await escalate(instanceId, 'too late');
    expect(late).toEqual(a.status);
  });

  test('a stop that fails: the caller sees NexusOperationFailure caused by StopFailed with the final status', async () => {
    const instanceId = h.instanceId('nx');
    await h.sim.addInstance(instanceId, [{ volumeId: 'vol-1', behavior: { hang: true, force: 'unsupported' } }]);
    const handle = await retire(instanceId);
    await untilDetaching(instanceId);
    await escalate(instanceId, 'give up');
    const result = await handle.result();
    expect(result.stopped).toBe(false);
    expect(result.status).toMatchObject({ instanceId, phase: 'failed', instanceStopped: false });
    expect(result.status.volumes[0]).toMatchObject({ volumeId: 'vol-1', state: 'failed' });
    expect(result.status.volumes[0]?.lastError).toMatch(/does not support force-detach/);

    // Exactly what reached the caller, from its own history: the failure the example's catch took apart.
    const history = await caller.workflow.getHandle(handle.workflowId).fetchHistory();
    const failed = history.events?.find(
      (e) => e.nexusOperationFailedEventAttributes,
    )?.nexusOperationFailedEventAttributes;
    const failure = failed?.failure;
    expect(failure?.nexusOperationExecutionFailureInfo).toMatchObject({ service: 'stopflow', operation: 'stop' });
    expect(failure?.cause?.applicationFailureInfo).toMatchObject({ type: 'StopFailed', nonRetryable: true });
    expect(failure?.message).toBe('nexus operation completed unsuccessfully');
    expect(failure?.cause?.message).toBe(
      `instance ${instanceId} was not stopped: vol-1 (simulated volume vol-1 does not support force-detach) could not be detached`,
    );
  });

  test('a refused request fails the operation with the field and the rule, and starts nothing', async () => {
    const instanceId = '-rf';
    const err = await (await retire(instanceId, `retire-bad-${suffix}`)).result().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const operation = (err as WorkflowFailedError).cause;
    expect(operation).toBeInstanceOf(NexusOperationFailure);
    const cause = (operation as NexusOperationFailure).cause;
    expect(cause).toBeInstanceOf(nexus.HandlerError);
    expect(cause).toMatchObject({ type: 'BAD_REQUEST', retryable: false });
    // The server puts the handler error's type before the handler's message.
    expect((cause as Error).message).toBe(
      'handler error (BAD_REQUEST): invalid StopRequest: instanceId: must be 1-255 characters of [A-Za-z0-9._:-], starting with a letter or digit',
    );
    expect(await workflowExists(h.client, instanceId)).toBe(false);

    // abort of an instance with no stop: NOT_FOUND, not retried.
    const missing = await escalate(h.instanceId('nx-none'), 'x').catch((e: unknown) => e);
    const notFound = ((missing as WorkflowFailedError).cause as NexusOperationFailure | undefined)?.cause;
    expect(notFound).toMatchObject({ type: 'NOT_FOUND' });
    expect((notFound as Error).message).toMatch(/no stop of nx-none-.* was found/);
  });
});

describe('Nexus: what the handlers refuse, and status of a running stop', () => {
  test('status answers live while the stop runs', async () => {
    const instanceId = h.instanceId('nx-status');
    await h.sim.addInstance(instanceId, [{ volumeId: 'vol-1', behavior: { hang: true } }]);
    await h.stopflow.stop({ instanceId, volumes: [{ volumeId: 'vol-1' }] });
    await untilDetaching(instanceId);
    const { output } = await raw('status', { instanceId });
    expect(output).toMatchObject({
      instanceId,
      phase: 'stopping',
      volumes: [{ volumeId: 'vol-1', state: 'detaching' }],
    });
    await h.stopflow.abort(instanceId);
    expect((await h.stopflow.result(instanceId)).phase).toBe('stopped');
  });

  test('each broken rule is BAD_REQUEST naming the field and the rule, never retried, and changes nothing', async () => {
    const instanceId = h.instanceId('nx-bad');
    const cases: [StopflowOperation, unknown, string][] = [
      ['stop', { instanceId, volumes: [] }, 'invalid StopRequest: volumes: must list at least one volume'],
      ['stop', { instanceId, maxStopDurration: '5m' }, 'maxStopDurration: unknown field (allowed: instanceId,'],
      ['stop', { instanceId, maxStopDuration: 'soon' }, 'invalid StopRequest: maxStopDuration: '],
      ['stop', 'i-1', 'invalid StopRequest: request: must be a StopRequest object'],
      ['abort', null, 'input: must be an object { instanceId, reason?, requestedBy? }'],
      ['abort', { instanceId, reason: 42 }, 'reason: must be a string of at most 1024 characters'],
      ['abort', { instanceId, force: true }, 'force: unknown field (allowed: instanceId, reason, requestedBy)'],
      ['status', {}, 'instanceId: must be 1-255 characters'],
      ['status', { instanceId, runId: 'r-1', verbose: true }, 'runId, verbose: unknown fields (allowed: instanceId)'],
    ];
    for (const [operation, input, message] of cases) {
      const { error } = await raw(operation, input);
      expect(error, `${operation} ${JSON.stringify(input)}`).toMatchObject({ type: 'BAD_REQUEST', retryable: false });
      expect(error?.message).toContain(message);
    }
    expect(await workflowExists(h.client, instanceId)).toBe(false);
  });
});

describe('child workflow: the platform workflow runs stopInstance as its child', () => {
  const decommission = (instanceId: string, workflowId = `decommission-${instanceId}-${randomUUID().slice(0, 4)}`) =>
    h.client.workflow.start<typeof decommissionHost>('decommissionHost', {
      taskQueue: callerTaskQueue,
      workflowId,
      args: [instanceId],
    });

  test('the parent gets the StopStatus of a stopped instance', async () => {
    const instanceId = h.instanceId('child');
    await h.sim.addInstance(instanceId, [{ volumeId: 'vol-1' }]);
    const status = await (await decommission(instanceId)).result();
    expect(status).toMatchObject({ instanceId, phase: 'stopped', instanceStopped: true });
  });

  test('ABANDON: the stop runs to its end when its parent is terminated or cancelled', async () => {
    for (const end of ['terminate', 'cancel'] as const) {
      const instanceId = h.instanceId(`child-${end}`);
      await h.sim.addInstance(instanceId, [{ volumeId: 'vol-1', behavior: { hang: true } }]);
      const parent = await decommission(instanceId);
      await untilDetaching(instanceId);
      // A second parent for the same instance does not join: a child start never uses the running stop.
      const other = await (await decommission(instanceId)).result().catch((e: unknown) => e);
      expect(other).toBeInstanceOf(WorkflowFailedError);
      expect(String((other as WorkflowFailedError).cause)).toMatch(/already started|AlreadyStarted/i);

      if (end === 'terminate') await parent.terminate('platform workflow gone');
      else await parent.cancel();
      await eventually(
        async () => ['TERMINATED', 'CANCELLED'].includes((await parent.describe()).status.name),
        `parent ${end}d`,
      );
      // The parent is closed; the stop still runs, is not cancelled, and ends by its own rules.
      expect((await h.client.workflow.getHandle(workflowIdFor(instanceId)).describe()).status.name).toBe('RUNNING');
      await h.stopflow.abort(instanceId, { reason: `after the parent's ${end}` });
      const final = await h.stopflow.result(instanceId);
      expect(final).toMatchObject({ phase: 'stopped', escalation: { cause: 'abort' } });
      expect(final.volumes[0]?.state).toBe('force_detached');
    }
  });
});
