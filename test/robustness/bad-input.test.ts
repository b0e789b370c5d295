/**
 * Bad input: a table of malformed requests, signals and updates. Each is
 * rejected with an error that names the field or the rule, and starts or
 * changes nothing:
 * - `client`: StopflowClient validates before sending anything (InvalidInputError,
 *   StopNotFoundError, StopAlreadyEndedError); no workflow exists afterwards.
 * - `validator`: the `setMaxStopDuration` update validator rejects it; rejected
 *   updates leave no trace in history (its length is unchanged).
 * - `workflow`: a raw start that bypasses the client reaches the workflow, which
 *   fails at once with ApplicationFailure `InvalidStopRequest` naming the field:
 *   no activity is scheduled and the backend sees no call.
 * - `sdk`, `server`, `cli`: rejected by the worker's SDK (unknown update), the
 *   Temporal server (update after completion, oversized payload) or the
 *   `temporal` CLI (non-JSON input) before anything reaches stopflow.
 * Finally, visibility lists exactly the workflows the fixtures and the
 * `workflow` rows started on this task queue: no rejected request started one.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import { MemorySimStore, SimulatedProvider } from '../../activities/providers/simulated';
import type { StopflowClient } from '../../client/stopflow-client';
import { INVALID_STOP_REQUEST, SET_MAX_STOP_DURATION_UPDATE, workflowIdFor } from '../../common/names';
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

const run = promisify(execFile);

let clients: Clients;
let worker: InProcessWorker;
const taskQueue = uniqueTaskQueue('bad-input');
const sim = new SimulatedProvider(new MemorySimStore());
/** Stops the fixtures and `workflow` rows started on purpose: the only workflow ids visibility may list. */
const expectedWorkflowIds = new Set<string>();

/** Instance ids of rows that must never exist, or that a row starts itself. */
const unknownId = uniqueId('bad-unknown');
const rawNoArgId = uniqueId('bad-raw-noarg');
const oversizedId = uniqueId('bad-oversized');
const cliStartId = uniqueId('bad-cli');
const cliJsonId = uniqueId('bad-cli-json');

/** Fixtures: a stop that is running, one that has escalated (waiting out a 1h forceGrace), one that has ended. */
const fixture = { running: '', escalated: '', ended: '' };

const refs = (...ids: string[]) => ids.map((volumeId) => ({ volumeId }));
const huge = (n: number) => 'x'.repeat(n);
const bad = (request: unknown) => request as StopRequest;

async function historyLength(instanceId: string): Promise<number> {
  const history = await clients.client.workflow.getHandle(workflowIdFor(instanceId)).fetchHistory();
  return history.events?.length ?? 0;
}

async function notStarted(instanceId: string): Promise<void> {
  await expect(clients.client.workflow.getHandle(workflowIdFor(instanceId)).describe()).rejects.toThrow(/not found/i);
}

beforeAll(async () => {
  const address = inject('temporalAddress');
  worker = await startInProcessWorker({
    address,
    taskQueue,
    providers: [sim],
    bundlePath: inject('workflowBundlePath'),
  });
  clients = await connectClients(address, taskQueue);

  fixture.running = uniqueId('bad-running');
  fixture.escalated = uniqueId('bad-escalated');
  fixture.ended = uniqueId('bad-ended');
  await sim.addInstance(fixture.running, [{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
  await sim.addInstance(fixture.escalated, [{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
  await sim.addInstance(fixture.ended, [{ volumeId: 'vol-a' }]);
  await clients.stopflow.stop({ instanceId: fixture.running, volumes: refs('vol-stuck') });
  await clients.stopflow.stop({ instanceId: fixture.escalated, volumes: refs('vol-stuck'), forceGrace: '1h' });
  await clients.stopflow.stop({ instanceId: fixture.ended, volumes: refs('vol-a') });
  for (const id of Object.values(fixture)) expectedWorkflowIds.add(workflowIdFor(id));
  await clients.stopflow.abort(fixture.escalated, { reason: 'fixture' });
  await eventually(
    async () => (await clients.stopflow.status(fixture.escalated)).escalation,
    'the escalated fixture to escalate',
  );
  await eventually(
    async () => (await clients.stopflow.status(fixture.running)).volumes[0]?.state === 'detaching',
    'the running fixture to wait on its stuck volume',
  );
  expect((await clients.stopflow.result(fixture.ended)).phase).toBe('stopped');
});

afterAll(async () => {
  // Leave nothing running on the shared server.
  for (const id of [fixture.running, fixture.escalated]) {
    await clients?.client.workflow
      .getHandle(workflowIdFor(id))
      .terminate('robustness bad-input fixture')
      .catch(() => undefined);
  }
  await clients?.close();
  await worker?.close();
});

/** One row of the table. `act` must throw; `verify` checks that nothing started or changed. */
interface Row {
  name: string;
  where: 'client' | 'validator' | 'workflow' | 'sdk' | 'server' | 'cli';
  message: RegExp;
  act: (stopflow: StopflowClient) => Promise<unknown>;
  /**
   * not-started: no workflow with that id exists afterwards; unchanged: the target stop's history length
   * and status are the same as before; no-stop-performed: the workflow failed without scheduling any
   * activity and the backend saw no call; nothing-to-check: no valid workflow id to look at (the
   * final test checks that no workflow at all was started).
   */
  verify: 'not-started' | 'unchanged' | 'no-stop-performed' | 'nothing-to-check';
  /** The instance whose workflow must be absent (not-started), unchanged, or have performed no stop. */
  instanceId?: () => string;
}

const rows: Row[] = [];
const seen: Array<{ name: string; where: string; error: string }> = [];

// --- starts, through StopflowClient: rejected before anything is sent ---
function clientStart(name: string, request: (id: string) => unknown, message: RegExp, idIsValid = true): void {
  const id = uniqueId('bad');
  rows.push({
    name,
    where: 'client',
    message,
    act: (stopflow) => stopflow.stop(bad(request(id))),
    verify: idIsValid ? 'not-started' : 'nothing-to-check',
    instanceId: () => id,
  });
}

clientStart('request is null', () => null, /request: must be a StopRequest object/, false);
clientStart('request is an array', () => [], /request: must be a StopRequest object/, false);
clientStart(
  'request is a JSON string, not an object',
  (id) => JSON.stringify({ instanceId: id }),
  /request: must be a StopRequest object/,
  false,
);
clientStart('instanceId missing', () => ({ volumes: refs('vol-a') }), /instanceId: is required/, false);
clientStart(
  'instanceId is a number',
  () => ({ instanceId: 42 }),
  /instanceId: is required and must be 1-255 characters/,
  false,
);
clientStart('instanceId empty', () => ({ instanceId: '' }), /instanceId: must be 1-255 characters/, false);
clientStart(
  'instanceId of 1 MB',
  () => ({ instanceId: huge(1_000_000) }),
  /instanceId: must be 1-255 characters/,
  false,
);
clientStart(
  'instanceId with a slash and spaces',
  () => ({ instanceId: 'i-1 / ../etc' }),
  /instanceId: must be 1-255 characters of \[A-Za-z0-9._:-\]/,
  false,
);
clientStart(
  'volumes is a string',
  (id) => ({ instanceId: id, volumes: 'vol-a' }),
  /volumes: must be an array of \{ volumeId, device\? \}/,
);
clientStart(
  '10,000 volumes',
  (id) => ({ instanceId: id, volumes: Array.from({ length: 10_000 }, (_, i) => ({ volumeId: `vol-${i}` })) }),
  /volumes: must list at most 256 volumes/,
);
clientStart(
  'duplicate volumeIds',
  (id) => ({ instanceId: id, volumes: refs('vol-a', 'vol-b', 'vol-a') }),
  /volumes: must not repeat a volumeId/,
);
clientStart(
  'volume without volumeId',
  (id) => ({ instanceId: id, volumes: [{ device: '/dev/xvdf' }] }),
  /volumes\[0\]\.volumeId: is required/,
);
clientStart(
  'volumeId is a number',
  (id) => ({ instanceId: id, volumes: [{ volumeId: 7 }] }),
  /volumes\[0\]\.volumeId: is required and must be/,
);
clientStart(
  'volumeId of 100 KB',
  (id) => ({ instanceId: id, volumes: [{ volumeId: huge(100_000) }] }),
  /volumes\[0\]\.volumeId: must be 1-255 characters/,
);
clientStart(
  'device empty',
  (id) => ({ instanceId: id, volumes: [{ volumeId: 'vol-a', device: '' }] }),
  /volumes\[0\]\.device: must not be empty/,
);
clientStart(
  'unknown field in a volume',
  (id) => ({ instanceId: id, volumes: [{ volumeId: 'vol-a', sizeGb: 100 }] }),
  /sizeGb: unknown field in volumes\[0\]/,
);
clientStart(
  'unknown top-level field (a typo)',
  (id) => ({ instanceId: id, maxStopDurration: '5m' }),
  /maxStopDurration: unknown field/,
);
clientStart(
  'maxStopDuration "0s"',
  (id) => ({ instanceId: id, maxStopDuration: '0s' }),
  /maxStopDuration: must be "off", a positive number of seconds/,
);
clientStart('maxStopDuration -5', (id) => ({ instanceId: id, maxStopDuration: -5 }), /maxStopDuration: must be "off"/);
clientStart(
  'maxStopDuration Infinity',
  (id) => ({ instanceId: id, maxStopDuration: Number.POSITIVE_INFINITY }),
  /maxStopDuration: must be "off"/,
);
clientStart(
  'maxStopDuration "400d" (over 365d)',
  (id) => ({ instanceId: id, maxStopDuration: '400d' }),
  /maxStopDuration: .*at most 365d/,
);
clientStart(
  'maxStopDuration "5 parsecs"',
  (id) => ({ instanceId: id, maxStopDuration: '5 parsecs' }),
  /maxStopDuration: must be "off"/,
);
clientStart(
  'maxStopDuration is a boolean',
  (id) => ({ instanceId: id, maxStopDuration: true }),
  /maxStopDuration: must be "off"/,
);
clientStart('forceGrace "soon"', (id) => ({ instanceId: id, forceGrace: 'soon' }), /forceGrace: must be "off"/);
clientStart(
  'reason of 1 MB',
  (id) => ({ instanceId: id, reason: huge(1_000_000) }),
  /reason: must be at most 1024 characters/,
);
clientStart('requestedBy is a number', (id) => ({ instanceId: id, requestedBy: 12 }), /requestedBy: must be a string/);
clientStart('provider "AWS!"', (id) => ({ instanceId: id, provider: 'AWS!' }), /provider: must be a provider name/);

// --- signals, updates and queries through StopflowClient ---
rows.push(
  {
    name: 'abort of an unknown instance',
    where: 'client',
    message: /cannot abort the stop of .*: no stop of .* was found/,
    act: (stopflow) => stopflow.abort(unknownId),
    verify: 'not-started',
    instanceId: () => unknownId,
  },
  {
    name: 'abort with an invalid instanceId',
    where: 'client',
    message: /instanceId: must be 1-255 characters/,
    act: (stopflow) => stopflow.abort('no such/instance'),
    verify: 'nothing-to-check',
  },
  {
    name: 'abort whose reason is a number',
    where: 'client',
    message: /reason: must be a string of at most 1024 characters/,
    act: (stopflow) => stopflow.abort(fixture.running, { reason: 42 as unknown as string }),
    verify: 'unchanged',
    instanceId: () => fixture.running,
  },
  {
    name: 'abort with a 1 MB reason',
    where: 'client',
    message: /reason: must be a string of at most 1024 characters/,
    act: (stopflow) => stopflow.abort(fixture.running, { reason: huge(1_000_000) }),
    verify: 'unchanged',
    instanceId: () => fixture.running,
  },
  {
    name: 'abort with a 300-character requestedBy',
    where: 'client',
    message: /requestedBy: must be a string of at most 255 characters/,
    act: (stopflow) => stopflow.abort(fixture.running, { requestedBy: huge(300) }),
    verify: 'unchanged',
    instanceId: () => fixture.running,
  },
  {
    name: 'setMaxStopDuration "-1m"',
    where: 'client',
    message: /maxStopDuration: must be "off", a positive number of seconds/,
    act: (stopflow) => stopflow.setMaxStopDuration(fixture.running, '-1m'),
    verify: 'unchanged',
    instanceId: () => fixture.running,
  },
  {
    name: 'setMaxStopDuration of an unknown instance',
    where: 'client',
    message: /no stop of .* was found/,
    act: (stopflow) => stopflow.setMaxStopDuration(unknownId, '5m'),
    verify: 'not-started',
    instanceId: () => unknownId,
  },
  {
    name: 'setMaxStopDuration after escalation',
    where: 'validator',
    message: /maxStopDuration: cannot be changed after escalation \(abort at /,
    act: (stopflow) => stopflow.setMaxStopDuration(fixture.escalated, '2h'),
    verify: 'unchanged',
    instanceId: () => fixture.escalated,
  },
  {
    name: 'setMaxStopDuration after completion',
    where: 'client',
    message: /cannot change maxStopDuration of the stop of .*: it already ended completed/,
    act: (stopflow) => stopflow.setMaxStopDuration(fixture.ended, '5m'),
    verify: 'unchanged',
    instanceId: () => fixture.ended,
  },
  {
    name: 'abort after completion',
    where: 'client',
    message: /cannot abort the stop of .*: it already ended completed/,
    act: (stopflow) => stopflow.abort(fixture.ended),
    verify: 'unchanged',
    instanceId: () => fixture.ended,
  },
  {
    name: 'status of an unknown instance',
    where: 'client',
    message: /cannot read the status of the stop of .*: no stop of .* was found/,
    act: (stopflow) => stopflow.status(unknownId),
    verify: 'not-started',
    instanceId: () => unknownId,
  },
);

// --- raw updates that bypass the client: the validator (or the SDK, or the server) rejects them ---
const rawUpdate = (instanceId: () => string, name: string, args: [unknown]) => () =>
  clients.client.workflow.getHandle(workflowIdFor(instanceId())).executeUpdate(name, { args });
rows.push(
  {
    name: 'raw update setMaxStopDuration "forever"',
    where: 'validator',
    message: /maxStopDuration: must be "off", a positive number of seconds/,
    act: rawUpdate(() => fixture.running, SET_MAX_STOP_DURATION_UPDATE, [{ maxStopDuration: 'forever' }]),
    verify: 'unchanged',
    instanceId: () => fixture.running,
  },
  {
    name: 'raw update setMaxStopDuration with no payload fields',
    where: 'validator',
    message: /maxStopDuration: must be "off"/,
    act: rawUpdate(() => fixture.running, SET_MAX_STOP_DURATION_UPDATE, [{}]),
    verify: 'unchanged',
    instanceId: () => fixture.running,
  },
  {
    name: 'raw update setMaxStopDuration with a null payload',
    where: 'validator',
    message: /maxStopDuration: must be "off"/,
    act: rawUpdate(() => fixture.running, SET_MAX_STOP_DURATION_UPDATE, [null]),
    verify: 'unchanged',
    instanceId: () => fixture.running,
  },
  {
    name: 'raw update of an unknown name',
    where: 'sdk',
    message: /setMaxStopDurration/,
    act: rawUpdate(() => fixture.running, 'setMaxStopDurration', [{ maxStopDuration: '5m' }]),
    verify: 'unchanged',
    instanceId: () => fixture.running,
  },
  {
    name: 'raw update after completion',
    where: 'server',
    message: /complete|closed|not found/i,
    act: rawUpdate(() => fixture.ended, SET_MAX_STOP_DURATION_UPDATE, [{ maxStopDuration: '5m' }]),
    verify: 'unchanged',
    instanceId: () => fixture.ended,
  },
);

// --- raw starts that bypass the client: the workflow fails with InvalidStopRequest and performs no stop ---
function rawStart(name: string, request: (id: string) => unknown, message: RegExp, seed = true): void {
  const id = uniqueId('bad-raw');
  rows.push({
    name: `raw start: ${name}`,
    where: 'workflow',
    message,
    act: async () => {
      if (seed) await sim.addInstance(id, [{ volumeId: 'vol-a' }, { volumeId: 'vol-b' }]);
      expectedWorkflowIds.add(workflowIdFor(id));
      const handle = await clients.client.workflow.start('stopInstance', {
        taskQueue,
        workflowId: workflowIdFor(id),
        args: [request(id)],
      });
      return handle.result();
    },
    verify: 'no-stop-performed',
    instanceId: () => id,
  });
}
rawStart(
  'instanceId is a number',
  () => ({ instanceId: 42, volumes: refs('vol-a') }),
  /instanceId: is required and must be/,
  false,
);
rawStart(
  '10,000 volumes',
  (id) => ({ instanceId: id, volumes: Array.from({ length: 10_000 }, (_, i) => ({ volumeId: `vol-${i}` })) }),
  /volumes: must list at most 256 volumes/,
);
rawStart(
  'duplicate volumeIds',
  (id) => ({ instanceId: id, volumes: refs('vol-a', 'vol-a') }),
  /volumes: must not repeat a volumeId/,
);
rawStart(
  'maxStopDuration "1 fortnight"',
  (id) => ({ instanceId: id, maxStopDuration: '1 fortnight' }),
  /maxStopDuration: must be "off"/,
);
rawStart(
  'reason of 100 KB',
  (id) => ({ instanceId: id, reason: huge(100_000) }),
  /reason: must be at most 1024 characters/,
);

rows.push(
  {
    name: 'raw start with no argument at all',
    where: 'workflow',
    // zod's own wording for a missing argument; names the request but not what it should be.
    message: /request: must be a StopRequest object/,
    act: async () => {
      const id = rawNoArgId;
      expectedWorkflowIds.add(workflowIdFor(id));
      await sim.addInstance(id, [{ volumeId: 'vol-a' }]);
      const handle = await clients.client.workflow.start('stopInstance', {
        taskQueue,
        workflowId: workflowIdFor(id),
        args: [],
      });
      return handle.result();
    },
    verify: 'no-stop-performed',
    instanceId: () => rawNoArgId,
  },
  {
    name: 'raw start with a 3 MB reason (over the server payload limit)',
    where: 'server',
    message: /size|limit|too large|exceed/i,
    act: () =>
      clients.client.workflow.start('stopInstance', {
        taskQueue,
        workflowId: workflowIdFor(oversizedId),
        args: [{ instanceId: oversizedId, reason: huge(3_000_000) }],
      }),
    verify: 'not-started',
    instanceId: () => oversizedId,
  },
);

// --- the `temporal` CLI ---
async function temporalCli(...args: string[]): Promise<string> {
  const cli = inject('temporalCliPath');
  if (!cli) throw new Error('no temporal CLI path');
  try {
    const { stdout, stderr } = await run(cli, [...args, '--address', inject('temporalAddress')], { timeout: 60_000 });
    return `exit 0: ${stdout}${stderr}`;
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    throw new Error(`temporal ${args[0]} ${args[1]} exited ${e.code}: ${(e.stderr || e.stdout || '').trim()}`);
  }
}
rows.push(
  {
    name: 'temporal CLI: workflow start --input "not json"',
    where: 'cli',
    message: /exited [1-9].*(json|invalid character|input)/is,
    act: () =>
      temporalCli(
        'workflow',
        'start',
        '--type',
        'stopInstance',
        '--task-queue',
        taskQueue,
        '--workflow-id',
        workflowIdFor(cliStartId),
        '--input',
        'not json',
      ),
    verify: 'not-started',
    instanceId: () => cliStartId,
  },
  {
    name: 'temporal CLI: workflow signal abort --input "{reason:"',
    where: 'cli',
    message: /exited [1-9].*(json|unexpected end|input)/is,
    act: () =>
      temporalCli(
        'workflow',
        'signal',
        '--workflow-id',
        workflowIdFor(fixture.running),
        '--name',
        'abort',
        '--input',
        '{reason:',
      ),
    verify: 'unchanged',
    instanceId: () => fixture.running,
  },
  {
    name: 'temporal CLI: workflow update setMaxStopDuration "forever"',
    where: 'validator',
    message: /exited [1-9].*unable to update workflow: maxStopDuration: must be \\?"off\\?"/is,
    act: () =>
      temporalCli(
        'workflow',
        'update',
        'execute',
        '--workflow-id',
        workflowIdFor(fixture.running),
        '--name',
        SET_MAX_STOP_DURATION_UPDATE,
        '--input',
        '{"maxStopDuration":"forever"}',
      ),
    verify: 'unchanged',
    instanceId: () => fixture.running,
  },
  {
    name: 'temporal CLI: workflow start with valid JSON but instanceId 5',
    where: 'workflow',
    message: /InvalidStopRequest.*instanceId: is required and must be/is,
    act: async () => {
      expectedWorkflowIds.add(workflowIdFor(cliJsonId));
      await sim.addInstance(cliJsonId, [{ volumeId: 'vol-a' }]);
      await temporalCli(
        'workflow',
        'start',
        '--type',
        'stopInstance',
        '--task-queue',
        taskQueue,
        '--workflow-id',
        workflowIdFor(cliJsonId),
        '--input',
        '{"instanceId":5,"volumes":[{"volumeId":"vol-a"}]}',
      );
      return clients.client.workflow.getHandle(workflowIdFor(cliJsonId)).result();
    },
    verify: 'no-stop-performed',
    instanceId: () => cliJsonId,
  },
);

const cliBinaryId = uniqueId('bad-cli-bytes');
rows.push({
  name: 'temporal CLI: workflow start with non-JSON bytes (--input-meta encoding=binary/plain)',
  where: 'workflow',
  message: /InvalidStopRequest.*instanceId: is required and must be/is,
  act: async () => {
    expectedWorkflowIds.add(workflowIdFor(cliBinaryId));
    await sim.addInstance(cliBinaryId, [{ volumeId: 'vol-a' }]);
    await temporalCli(
      'workflow',
      'start',
      '--type',
      'stopInstance',
      '--task-queue',
      taskQueue,
      '--workflow-id',
      workflowIdFor(cliBinaryId),
      '--input',
      'not json',
      '--input-meta',
      'encoding=binary/plain',
    );
    return clients.client.workflow.getHandle(workflowIdFor(cliBinaryId)).result();
  },
  verify: 'no-stop-performed',
  instanceId: () => cliBinaryId,
});

/** The message of an error, with the workflow failure's type and cause spelled out. */
function describeError(err: unknown): string {
  if (err instanceof WorkflowFailedError && err.cause instanceof ApplicationFailure) {
    return `${err.cause.type}: ${err.cause.message}`;
  }
  if (err instanceof Error) {
    const cause = err.cause instanceof Error ? ` (${err.cause.message})` : '';
    return `${err.name}: ${err.message}${cause}`;
  }
  return String(err);
}

describe('bad input is rejected with a clear error and starts or changes nothing', () => {
  test('the table has at least 25 rows of each kind of bad input', () => {
    expect(rows.length).toBeGreaterThanOrEqual(25);
  });

  test.each(rows)('$where rejects: $name', async (row) => {
    const instanceId = row.instanceId?.();
    const before =
      row.verify === 'unchanged' && instanceId
        ? { events: await historyLength(instanceId), status: await clients.stopflow.status(instanceId) }
        : undefined;

    const error = await row.act(clients.stopflow).then(
      (value) => new Error(`accepted, returned ${JSON.stringify(value)?.slice(0, 200)}`),
      (err: unknown) => err,
    );
    const text = describeError(error);
    seen.push({ name: row.name, where: row.where, error: text });
    expect(text).toMatch(row.message);
    expect(text).not.toMatch(/^Error: accepted/);
    // Clear means short too: no error echoes a huge input back.
    expect(text.length).toBeLessThan(2_000);
    if (row.where === 'workflow') {
      expect(error).toBeInstanceOf(WorkflowFailedError);
      const cause = (error as WorkflowFailedError).cause;
      expect(cause).toBeInstanceOf(ApplicationFailure);
      expect((cause as ApplicationFailure).type).toBe(INVALID_STOP_REQUEST);
      expect((cause as ApplicationFailure).nonRetryable).toBe(true);
    }

    if (row.verify === 'not-started' && instanceId) await notStarted(instanceId);
    if (row.verify === 'unchanged' && instanceId && before) {
      expect(await historyLength(instanceId)).toBe(before.events);
      expect(await clients.stopflow.status(instanceId)).toEqual(before.status);
    }
    if (row.verify === 'no-stop-performed' && instanceId) {
      const history = await clients.client.workflow.getHandle(workflowIdFor(instanceId)).fetchHistory();
      expect(history.events?.some((e) => e.activityTaskScheduledEventAttributes)).toBe(false);
      const cloud = await sim.instance(instanceId);
      if (cloud) {
        expect(cloud.state).toBe('running');
        expect(cloud.stopCalls).toBe(0);
        expect(cloud.volumes.every((v) => v.detachCalls === 0 && v.forceCalls === 0)).toBe(true);
      }
    }
  });

  test('a raw signal of an unknown name cannot be rejected (signals have no validators): it is recorded but changes nothing', async () => {
    const handle = clients.client.workflow.getHandle(workflowIdFor(fixture.running));
    const before = {
      events: await historyLength(fixture.running),
      status: await clients.stopflow.status(fixture.running),
    };
    await handle.signal('abrot', { reason: 'typo' });
    // Wait until the signal is in history and its workflow task is done.
    await eventually(async () => {
      const d = await handle.describe();
      return d.historyLength > before.events && !d.raw.pendingWorkflowTask;
    }, 'the signal to be processed');
    const history = await handle.fetchHistory();
    const signalled = history.events?.filter((e) => e.workflowExecutionSignaledEventAttributes?.signalName === 'abrot');
    expect(signalled).toHaveLength(1);
    // The stop neither escalated nor moved: the status is exactly what it was.
    expect(await clients.stopflow.status(fixture.running)).toEqual(before.status);
    report(
      'bad-input',
      `unknown signal "abrot": accepted by the server (${(history.events?.length ?? 0) - before.events} events added: the signal and its workflow task), stop unchanged (still ${before.status.phase}, no escalation)`,
    );
  });

  test('no rejected request started a workflow: the task queue holds only the fixtures and raw starts', async () => {
    const listed = await eventually(async () => {
      const ids = new Set<string>();
      for await (const execution of clients.client.workflow.list({ query: `TaskQueue = "${taskQueue}"` })) {
        ids.add(execution.workflowId);
      }
      return ids.size >= expectedWorkflowIds.size ? ids : undefined;
    }, 'visibility to list the expected workflows');
    expect([...listed].sort()).toEqual([...expectedWorkflowIds].sort());
    const byWhere = new Map<string, number>();
    for (const s of seen) byWhere.set(s.where, (byWhere.get(s.where) ?? 0) + 1);
    report(
      'bad-input',
      `${seen.length} bad inputs rejected (${[...byWhere].map(([w, n]) => `${w} ${n}`).join(', ')}); ` +
        `${expectedWorkflowIds.size} workflows on the task queue, all of them fixtures or raw starts that failed InvalidStopRequest`,
    );
    for (const s of seen)
      report('bad-input', `${s.where.padEnd(9)} ${s.name}: ${s.error.replace(/\s+/g, ' ').slice(0, 160)}`);
  });
});
