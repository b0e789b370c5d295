/**
 * Completion events (issue #17, item 3) on the real dev server: when a stop ends, a deliverStopEvent
 * child delivers one CloudEvents 1.0 event to the worker's endpoint, signed (HMAC-SHA256 over
 * `${timestamp}.${body}`), retried with backoff while the receiver fails or is down, with the same id
 * (the idempotency key) on every try, and without delaying the stop's result. The receiver here is a
 * local HTTP server whose answers the test scripts; short retry delays come from the worker's option.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Context } from '@temporalio/activity';
import { WorkflowFailedError, WorkflowNotFoundError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import { createCompletionEventActivities } from '../activities/completion-event';
import { askWorkerActivity } from '../activities/volume-holders';
import { verifyStopEventSignature } from '../client';
import { signStopEvent } from '../common/event-signature';
import { DELIVER_STOP_EVENT_WORKFLOW_TYPE, workflowIdFor } from '../common/names';
import {
  EVENT_REJECTED,
  type FindVolumeHoldersInput,
  type StopEventData,
  stopEventWorkflowId,
} from '../common/ownership-events';
import { freePort, portInUse } from '../devserver/ports';
import { ConfigError, describeWorkerConfig, loadWorkerConfig } from '../worker/config';
import { eventually, type Harness, startHarness } from './helpers';
import { readmeBlock } from './support/readme-examples';

const SECRET = 'test-secret-0123456789abcdef';

interface Received {
  headers: IncomingHttpHeaders;
  body: string;
  answered: number;
}

/** A receiver whose answer the test decides: a status code, or down (connection refused). */
class Receiver {
  readonly requests: Received[] = [];
  answer: number | 'down' = 500;
  private server: Server | undefined;

  constructor(readonly port: number) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}/stopflow-events`;
  }

  accepted(): Received[] {
    return this.requests.filter((r) => r.answered >= 200 && r.answered < 300);
  }

  async up(): Promise<void> {
    const server = createServer((req, res) => {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (chunk: string) => {
        body += chunk;
      });
      req.on('end', () => {
        const answered = this.answer === 'down' ? 503 : this.answer;
        this.requests.push({ headers: req.headers, body, answered });
        res.writeHead(answered).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(this.port, '127.0.0.1', resolve));
    this.server = server;
  }

  /** Stops listening: deliveries now fail with "connection refused". */
  async down(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

let receiver: Receiver;
let h: Harness;
const retry = { initialMs: 200, maxMs: 1_000 };

/** Instance ids the worker's askWorker fails for, or outlasts its 5 s timeout for; other stops get its answer. */
const ASK_FAILS = 'ask-fails';
const ASK_HANGS = 'ask-hangs';
/**
 * A stop (its askWorker failing, so it asks about events at its end) whose end-of-stop question the worker
 * holds for a few seconds: the test terminates the stop in that window, between its end and the hand-off.
 */
const HELD_AT_END = `${ASK_FAILS}-held-at-end`;
const heldAtEnd = { asked: deferred(), answered: deferred() };

function deferred(): { promise: Promise<void>; resolve(): void } {
  let resolve = () => {};
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

beforeAll(async () => {
  receiver = new Receiver(await freePort());
  await receiver.up();
  const events = createCompletionEventActivities({ url: receiver.url, secret: SECRET, retry });
  // The worker's own askWorker (not refusing held volumes: no holders), unless the stop is one whose ask goes wrong.
  const { askWorker } = askWorkerActivity({ findVolumeHolders: async () => [], ...events });
  h = await startHarness({
    extraActivities: {
      ...events,
      async completionEventsConfigured() {
        if (Context.current().info.workflowExecution?.workflowId.includes(HELD_AT_END)) {
          heldAtEnd.asked.resolve();
          // Under the local activity's 10 s timeout. The worker hears of the terminate only when it next reports
          // on this stop, so the answer comes after it (`.finally` also covers a cancel).
          await Context.current()
            .sleep(6_000)
            .finally(() => heldAtEnd.answered.resolve());
        }
        return events.completionEventsConfigured();
      },
      async askWorker(input: FindVolumeHoldersInput) {
        if (input.workflowId.includes(ASK_FAILS)) throw new Error('the worker could not answer');
        if (input.workflowId.includes(ASK_HANGS)) await Context.current().sleep(60_000); // cancelled at 5 s
        return askWorker(input);
      },
    },
  });
});
afterAll(async () => {
  await h?.close();
  await receiver?.down();
});

function eventsFor(workflowId: string): Received[] {
  return receiver.requests.filter((r) => r.headers['idempotency-key']?.toString().startsWith(`${workflowId}/`));
}

describe('with an events endpoint on the worker', () => {
  test('a stopped stop: delivered once the receiver recovers, signed, same id every try, result not delayed', async () => {
    const instanceId = h.instanceId('ev');
    await h.sim.addInstance(instanceId, [{ volumeId: 'vol-a' }, { volumeId: 'vol-b', behavior: { failFirst: 1 } }]);
    receiver.answer = 500;
    const started = await h.stopflow.stop({ instanceId, volumes: [{ volumeId: 'vol-a' }, { volumeId: 'vol-b' }] });
    // The result comes while the receiver refuses every delivery: the stop does not wait for it.
    const final = await h.stopflow.result(instanceId);
    expect(final.phase).toBe('stopped');
    expect(eventsFor(started.workflowId).filter((r) => r.answered === 200)).toEqual([]);
    await eventually(async () => eventsFor(started.workflowId).length >= 2, 'two refused deliveries');

    // Then the receiver is down for a while (connection refused), and then it accepts.
    await receiver.down();
    const child = h.client.workflow.getHandle(stopEventWorkflowId(started.workflowId, started.runId));
    await eventually(async () => {
      const pending = (await child.describe()).raw.pendingActivities?.[0];
      return (pending?.attempt ?? 0) >= eventsFor(started.workflowId).length + 2 ? pending : undefined;
    }, 'deliveries refused while the receiver is down');
    receiver.answer = 200;
    await receiver.up();
    const delivered = await eventually(
      async () => eventsFor(started.workflowId).find((r) => r.answered === 200),
      'the event accepted',
    );

    const tries = eventsFor(started.workflowId);
    expect(tries.filter((r) => r.answered === 200)).toHaveLength(1);
    const id = `${started.workflowId}/${started.runId}`;
    // Every try carries the same event: same id, same body; a receiver that sees it twice can tell.
    expect(new Set(tries.map((r) => r.headers['idempotency-key']))).toEqual(new Set([id]));
    expect(new Set(tries.map((r) => r.body)).size).toBe(1);

    expect(delivered.headers['content-type']).toMatch(/^application\/cloudevents\+json/);
    const event = JSON.parse(delivered.body) as Record<string, unknown> & { data: StopEventData };
    expect(event).toMatchObject({
      specversion: '1.0',
      id,
      type: 'dev.stopflow.stop.stopped',
      source: `stopflow/default/${h.taskQueue}`,
      subject: instanceId,
      datacontenttype: 'application/json',
      data: { workflowId: started.workflowId, runId: started.runId, instanceId, outcome: 'stopped', status: final },
    });
    expect(event.time).toBe(event.data.endedAt);
    // Nothing of the worker's configuration travels with it.
    expect(delivered.body).not.toContain(SECRET);
    expect(delivered.body).not.toContain(String(receiver.port));

    const signed = {
      secret: SECRET,
      body: delivered.body,
      timestamp: String(delivered.headers['stopflow-timestamp']),
      signature: String(delivered.headers['stopflow-signature']),
    };
    expect(signed.signature).toMatch(/^v1=[0-9a-f]{64}$/);
    expect(verifyStopEventSignature(signed)).toBe(true);
    expect(verifyStopEventSignature({ ...signed, body: delivered.body.replace('"stopped"', '"failed"') })).toBe(false);
    expect(verifyStopEventSignature({ ...signed, secret: 'another-secret-0123456789' })).toBe(false);
    expect(verifyStopEventSignature({ ...signed, now: Date.now() + 10 * 60_000 })).toBe(false);
    // A receiver whose secret is unset or short verifies nothing, even a request signed with that same secret.
    for (const weak of ['', 'short-secret']) {
      const forged = signStopEvent(weak, Number(signed.timestamp), delivered.body);
      expect(verifyStopEventSignature({ ...signed, secret: weak, signature: forged })).toBe(false);
    }

    const outcome = await child.result();
    expect(outcome).toMatchObject({ delivered: true, httpStatus: 200 });
    expect(outcome.attempt).toBeGreaterThan(tries.length); // the refused connections were tries too
    // The stop's own history shows the child it handed the event to.
    const history = await h.client.workflow.getHandle(workflowIdFor(instanceId)).fetchHistory();
    const initiated = (history.events ?? []).find((e) => e.startChildWorkflowExecutionInitiatedEventAttributes);
    expect(initiated?.startChildWorkflowExecutionInitiatedEventAttributes?.workflowType?.name).toBe(
      DELIVER_STOP_EVENT_WORKFLOW_TYPE,
    );
    // One question to the worker for the whole stop (askWorker, before the first detach), not one more at the end.
    expect(localActivityMarkers(history.events ?? [])).toBe(1);
  });

  test('a stop that fails before it asked the worker anything (its listing failed) asks at its end, and its event goes out', async () => {
    receiver.answer = 200;
    const instanceId = h.instanceId('ev-unknown'); // never seeded: the backend does not know it
    const started = await h.stopflow.stop({ instanceId });
    await expect(h.stopflow.result(instanceId)).rejects.toThrow(/could not list the volumes/);
    const delivered = await eventually(async () => eventsFor(started.workflowId)[0], 'the failed event');
    expect(JSON.parse(delivered.body)).toMatchObject({ data: { outcome: 'failed', failureType: 'StopFailed' } });
    const history = await h.client.workflow.getHandle(started.workflowId).fetchHistory();
    expect(localActivityMarkers(history.events ?? [])).toBe(1);
  });

  test.each([
    ['fails', ASK_FAILS],
    ['outlasts its timeout', ASK_HANGS],
  ])('a stop whose askWorker %s goes on unchecked, stops, and asks about events at its end', async (_, kind) => {
    receiver.answer = 200;
    const instanceId = h.instanceId(kind);
    await h.sim.addInstance(instanceId, [{ volumeId: 'vol-a' }]);
    const started = await h.stopflow.stop({ instanceId, volumes: [{ volumeId: 'vol-a' }] });
    const final = await h.stopflow.result(instanceId);
    expect(final.phase).toBe('stopped');
    const cloud = await h.sim.instance(instanceId);
    expect(cloud?.state).toBe('stopped');
    expect(cloud?.leakedAtStop).toEqual([]);
    // The answer the stop could not get at its start is asked again at its end: the event still goes out.
    const delivered = await eventually(async () => eventsFor(started.workflowId)[0], 'the stopped event');
    expect(JSON.parse(delivered.body)).toMatchObject({ data: { outcome: 'stopped' } });
    const history = await h.client.workflow.getHandle(started.workflowId).fetchHistory();
    expect(localActivityMarkers(history.events ?? [])).toBe(2); // the failed askWorker, then completionEventsConfigured
    // And it replays as it ran, as after an eviction from the worker's cache: a replayed marker gives the failure
    // in another shape than the live one (a timeout's TimeoutFailure without its ActivityFailure).
    await Worker.runReplayHistory({ workflowBundle: { codePath: inject('workflowBundlePath') } }, history);
  });

  test('a stop terminated between its end and the hand-off of its event sends none, and nothing runs on for it', async () => {
    receiver.answer = 200;
    const instanceId = h.instanceId(HELD_AT_END);
    await h.sim.addInstance(instanceId, [{ volumeId: 'vol-a' }]);
    const started = await h.stopflow.stop({ instanceId, volumes: [{ volumeId: 'vol-a' }] });
    await heldAtEnd.asked.promise; // the instance is stopped; the stop is asking whether an event goes out
    const stop = h.client.workflow.getHandle(started.workflowId, started.runId);
    await stop.terminate('terminated during the completion-event hand-off');
    // The worker's answer came after the terminate. The workflow task completion it then sends, which would
    // start the child, must be refused: give it time to land before looking.
    await heldAtEnd.answered.promise;
    await new Promise((r) => setTimeout(r, 2_000));

    expect((await stop.describe()).status.name).toBe('TERMINATED');
    const child = h.client.workflow.getHandle(stopEventWorkflowId(started.workflowId, started.runId));
    await expect(child.describe()).rejects.toBeInstanceOf(WorkflowNotFoundError);
    expect(eventsFor(started.workflowId)).toEqual([]);
    const history = await stop.fetchHistory();
    expect(history.events?.some((e) => e.startChildWorkflowExecutionInitiatedEventAttributes)).toBe(false);
    // The stop had done its work before the terminate: the terminate cut off only the announcement.
    expect((await h.sim.instance(instanceId))?.state).toBe('stopped');
  });

  test('a failed stop produces a failed event', async () => {
    receiver.answer = 200;
    const instanceId = h.instanceId('ev');
    await h.sim.addInstance(instanceId, [{ volumeId: 'vol-x', behavior: { hang: true, force: 'unsupported' } }]);
    const started = await h.stopflow.stop({ instanceId, volumes: [{ volumeId: 'vol-x' }], maxStopDuration: '1s' });
    await expect(h.stopflow.result(instanceId)).rejects.toThrow(/not stopped/);
    const delivered = await eventually(async () => eventsFor(started.workflowId)[0], 'the failed event');
    expect(JSON.parse(delivered.body)).toMatchObject({
      type: 'dev.stopflow.stop.failed',
      subject: instanceId,
      data: { outcome: 'failed', failureType: 'StopFailed', status: { phase: 'failed', instanceStopped: false } },
    });
  });

  test("a receiver's 400 is final: the delivery fails EventRejected after one try", async () => {
    receiver.answer = 400;
    const instanceId = h.instanceId('ev');
    await h.sim.addInstance(instanceId, [{ volumeId: 'vol-a' }]);
    const started = await h.stopflow.stop({ instanceId, volumes: [{ volumeId: 'vol-a' }] });
    await h.stopflow.result(instanceId);
    const child = h.client.workflow.getHandle(stopEventWorkflowId(started.workflowId, started.runId));
    const err = await eventually(() => child.result().catch((e: unknown) => e), 'the delivery to end');
    expect(err).toBeInstanceOf(WorkflowFailedError);
    let cause: unknown = (err as WorkflowFailedError).cause;
    while (cause instanceof Error && !(cause instanceof ApplicationFailure) && cause.cause) cause = cause.cause;
    expect(cause).toBeInstanceOf(ApplicationFailure);
    expect((cause as ApplicationFailure).type).toBe(EVENT_REJECTED);
    expect(eventsFor(started.workflowId)).toHaveLength(1);
  });
});

describe('without an events endpoint', () => {
  test('no child workflow is started', async () => {
    const plain = await startHarness();
    try {
      const instanceId = plain.instanceId('ev-off');
      await plain.sim.addInstance(instanceId, [{ volumeId: 'vol-a' }]);
      const started = await plain.stopflow.stop({ instanceId, volumes: [{ volumeId: 'vol-a' }] });
      expect((await plain.stopflow.result(instanceId)).phase).toBe('stopped');
      const history = await plain.client.workflow.getHandle(started.workflowId).fetchHistory();
      const events = history.events ?? [];
      expect(events.some((e) => e.startChildWorkflowExecutionInitiatedEventAttributes)).toBe(false);
      // The answer was asked and recorded (a local activity's marker), so a replay on any replica agrees.
      expect(localActivityMarkers(events)).toBe(1);
      await expect(
        plain.client.workflow.getHandle(stopEventWorkflowId(started.workflowId, started.runId)).describe(),
      ).rejects.toThrow();
    } finally {
      await plain.close();
    }
  });
});

test('the README receiver example runs as written: it logs each event once and refuses a forged one', async () => {
  const port = await freePort();
  const dir = join(process.cwd(), '.stopflow', `readme-events-${port}`);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'receiver.ts');
  writeFileSync(file, readmeBlock('events-receiver'));
  const child = spawn('node_modules/.bin/tsx', [file], {
    env: { ...process.env, PORT: String(port), STOPFLOW_EVENTS_SECRET: SECRET },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => {
    stdout += chunk.toString();
  });
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const worker = await startHarness({
    extraActivities: createCompletionEventActivities({ url: `http://127.0.0.1:${port}/`, secret: SECRET, retry }),
  });
  try {
    await eventually(() => portInUse(port), 'the receiver listening');
    const instanceId = worker.instanceId('ev-readme');
    await worker.sim.addInstance(instanceId, [{ volumeId: 'vol-a' }]);
    await worker.stopflow.stop({ instanceId, volumes: [{ volumeId: 'vol-a' }] });
    await worker.stopflow.result(instanceId);
    await eventually(
      async () => stdout.includes(`dev.stopflow.stop.stopped ${instanceId} stopped`),
      'the event logged',
    );

    const forged = await fetch(`http://127.0.0.1:${port}/`, {
      method: 'POST',
      body: '{"id":"x","type":"dev.stopflow.stop.stopped"}',
      headers: { 'stopflow-timestamp': String(Math.floor(Date.now() / 1000)), 'stopflow-signature': 'v1=00' },
    });
    expect(forged.status).toBe(401);
    expect(stdout.trim().split('\n')).toEqual([`dev.stopflow.stop.stopped ${instanceId} stopped`]);
    expect(stderr).toBe('');
  } finally {
    await worker.close();
    child.kill();
    rmSync(dir, { recursive: true, force: true });
  }
});

describe('worker configuration', () => {
  const dir = mkdtempSync(join(tmpdir(), 'stopflow-events-config-'));
  // No developer's Temporal profile may leak in.
  const configFile = join(dir, 'temporal.toml');
  writeFileSync(configFile, '');
  const base = { TEMPORAL_CONFIG_FILE: configFile };
  const issuesOf = (env: Record<string, string>): string[] => {
    try {
      loadWorkerConfig({ ...base, ...env });
      return [];
    } catch (err) {
      if (err instanceof ConfigError) return err.issues;
      throw err;
    }
  };

  test('off unless configured; the URL is an http(s) URL without credentials; a secret goes with it', () => {
    expect(loadWorkerConfig(base).events).toBeUndefined();
    expect(issuesOf({ STOPFLOW_EVENTS_URL: 'https://hooks.example.com/e' })).toEqual([
      expect.stringMatching(
        /^STOPFLOW_EVENTS_SECRET: must be at least 16 characters .*when STOPFLOW_EVENTS_URL is set/,
      ),
    ]);
    for (const url of ['ftp://hooks.example.com/', 'https://user:pw@hooks.example.com/', 'not a url']) {
      expect(issuesOf({ STOPFLOW_EVENTS_URL: url, STOPFLOW_EVENTS_SECRET: SECRET })).toEqual([
        expect.stringMatching(/^STOPFLOW_EVENTS_URL: must be the http or https URL/),
      ]);
    }
    expect(issuesOf({ STOPFLOW_EVENTS_SECRET: SECRET })).toEqual([expect.stringMatching(/^STOPFLOW_EVENTS_URL: /)]);
    const short = issuesOf({ STOPFLOW_EVENTS_URL: 'https://hooks.example.com/', STOPFLOW_EVENTS_SECRET: 'short-one' });
    expect(short).toEqual([expect.stringMatching(/^STOPFLOW_EVENTS_SECRET: must be at least 16 characters/)]);
    expect(short.join('\n')).not.toContain('short-one');
  });

  test('the secret, from the variable or a file, is used but never printed; only the origin of the URL is', () => {
    const url = 'https://hooks.example.com/stopflow?token=abc123';
    const config = loadWorkerConfig({ ...base, STOPFLOW_EVENTS_URL: url, STOPFLOW_EVENTS_SECRET: SECRET });
    expect(config.events).toMatchObject({ url, secret: SECRET });
    const printed = JSON.stringify(describeWorkerConfig(config, {}));
    expect(printed).not.toContain(SECRET);
    expect(printed).not.toContain('abc123');
    expect(describeWorkerConfig(config, {})).toMatchObject({
      completionEvents: { endpoint: 'https://hooks.example.com', secret: 'STOPFLOW_EVENTS_SECRET (hidden)' },
    });

    const file = join(dir, 'events-secret');
    writeFileSync(file, `${SECRET}\n`);
    const fromFile = loadWorkerConfig({ ...base, STOPFLOW_EVENTS_URL: url, STOPFLOW_EVENTS_SECRET_FILE: file });
    expect(fromFile.events?.secret).toBe(SECRET);
    expect(JSON.stringify(describeWorkerConfig(fromFile, {}))).not.toContain(SECRET);
    expect(
      issuesOf({ STOPFLOW_EVENTS_URL: url, STOPFLOW_EVENTS_SECRET: SECRET, STOPFLOW_EVENTS_SECRET_FILE: file }),
    ).toEqual([expect.stringMatching(/^STOPFLOW_EVENTS_SECRET_FILE: must not be set together/)]);
  });

  test('a cloud worker refuses held volumes unless told not to; a simulated one only when told to', () => {
    const aws = { ...base, STOPFLOW_PROVIDERS: 'aws' };
    expect(loadWorkerConfig(aws).refuseHeldVolumes).toBe(true);
    expect(loadWorkerConfig({ ...aws, STOPFLOW_REFUSE_HELD_VOLUMES: 'false' }).refuseHeldVolumes).toBe(false);
    // The simulated cloud reuses volume names across instances: refusing there would refuse unrelated stops.
    expect(loadWorkerConfig(base).refuseHeldVolumes).toBe(false);
    expect(loadWorkerConfig({ ...base, STOPFLOW_REFUSE_HELD_VOLUMES: 'true' }).refuseHeldVolumes).toBe(true);
    expect(issuesOf({ STOPFLOW_REFUSE_HELD_VOLUMES: 'maybe' })).toEqual([
      expect.stringMatching(/^STOPFLOW_REFUSE_HELD_VOLUMES: must be "true" or "false"/),
    ]);
  });
});

/** Local activities a stop ran: each leaves one marker in its history. */
function localActivityMarkers(
  events: { markerRecordedEventAttributes?: { markerName?: string | null } | null }[],
): number {
  return events.filter((e) => e.markerRecordedEventAttributes?.markerName === 'core_local_activity').length;
}
