/**
 * The production worker as real processes (`node --import tsx worker/main.ts`
 * and `node bin/stopflow.mjs worker`) on the run's dev server: the metrics
 * endpoint after real stops, SIGTERM in the middle of a stop and a second
 * worker finishing it, and start-up checks that fail with clear messages.
 */
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Client } from '@temporalio/client';
import { msToTs } from '@temporalio/common/lib/time';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { FileSimStore, SimulatedProvider } from '../activities/providers/simulated';
import { StopFailedError, StopflowClient } from '../client/stopflow-client';
import { workflowIdFor } from '../common/names';
import { freePort } from '../devserver/ports';
import { connectClient, eventually } from './helpers';
import { WorkerProcess, workerEnv } from './support/worker-process';

const ENTRY = {
  main: ['--import', 'tsx', 'worker/main.ts'],
  cli: ['bin/stopflow.mjs', 'worker'],
} as const;

const started: WorkerProcess[] = [];
function startWorker(entry: keyof typeof ENTRY, env: Record<string, string>): WorkerProcess {
  const worker = new WorkerProcess(workerEnv({ STOPFLOW_LOG_LEVEL: 'info', ...env }), ENTRY[entry]);
  started.push(worker);
  return worker;
}

const dir = mkdtempSync(join(tmpdir(), 'stopflow-worker-process-'));

type Sample = { name: string; labels: Record<string, string>; value: number };

async function scrape(port: number): Promise<Sample[]> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    const match = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match?.[1] || !match[3]) continue;
    const labels: Record<string, string> = {};
    for (const [, key, value] of (match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      if (key !== undefined && value !== undefined) labels[key] = value;
    }
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

/** The sum of the samples named `name` whose labels include `labels`. */
function value(samples: Sample[], name: string, labels: Record<string, string>): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}

let client: Client;
beforeAll(async () => {
  client = await connectClient();
});
afterAll(async () => {
  for (const worker of started) worker.kill();
  await client?.connection.close();
});

describe('worker process: metrics, logs and graceful shutdown', () => {
  const taskQueue = `worker-process-${randomUUID()}`;
  const simState = join(dir, 'sim-cloud.json');
  const sim = new SimulatedProvider(new FileSimStore(simState));
  const suffix = randomUUID().slice(0, 8);
  let stopflow: StopflowClient;
  let first: WorkerProcess;
  let metricsPort: number;

  beforeAll(async () => {
    stopflow = new StopflowClient({ client, taskQueue });
    metricsPort = await freePort();
    first = startWorker('main', {
      STOPFLOW_TASK_QUEUE: taskQueue,
      STOPFLOW_SIM_STATE: simState,
      STOPFLOW_METRICS_ADDRESS: `127.0.0.1:${metricsPort}`,
    });
    await first.waitUntilPolling();
  });

  it('serves stopflow metrics with the right values after a stop, and logs each line with its stop', async () => {
    const instanceId = `wp-ok-${suffix}`;
    await sim.addInstance(instanceId, [
      { volumeId: 'vol-fast' },
      { volumeId: 'vol-slow', behavior: { detachDelayMs: 1_500 } },
    ]);
    await stopflow.stop({ instanceId });
    expect((await stopflow.result(instanceId)).phase).toBe('stopped');
    // An instance the cloud does not know: listing its volumes fails for good, and so does the stop.
    const unknown = `wp-unknown-${suffix}`;
    await stopflow.stop({ instanceId: unknown });
    await expect(stopflow.result(unknown)).rejects.toBeInstanceOf(StopFailedError);

    const queue = { taskQueue };
    const samples = await eventually(async () => {
      const s = await scrape(metricsPort);
      return value(s, 'stopflow_stops_ended', { ...queue, phase: 'failed' }) === 1 ? s : undefined;
    }, 'the failed stop in the metrics');
    expect(value(samples, 'stopflow_stops_ended', { ...queue, phase: 'stopped', cause: 'graceful' })).toBe(1);
    expect(value(samples, 'stopflow_stops_ended', { ...queue, phase: 'failed', cause: 'graceful' })).toBe(1);
    expect(value(samples, 'stopflow_stop_duration_count', { ...queue, phase: 'stopped' })).toBe(1);
    expect(value(samples, 'stopflow_stop_duration_sum', { ...queue, phase: 'stopped' })).toBeGreaterThan(1);
    // Buckets in seconds (the SDK's defaults are for milliseconds).
    expect(value(samples, 'stopflow_stop_duration_bucket', { ...queue, phase: 'stopped', le: '1' })).toBe(0);
    expect(value(samples, 'stopflow_stop_duration_bucket', { ...queue, phase: 'stopped', le: '300' })).toBe(1);
    expect(value(samples, 'stopflow_detach_attempts', { ...queue, provider: 'simulated', kind: 'graceful' })).toBe(2);
    expect(value(samples, 'stopflow_detach_attempts', { ...queue, kind: 'force' })).toBe(0);
    expect(value(samples, 'stopflow_force_detaches', queue)).toBe(0);
    expect(
      value(samples, 'stopflow_provider_errors', {
        ...queue,
        provider: 'simulated',
        operation: 'listAttachedVolumes',
        error_type: 'PermanentProviderError',
      }),
    ).toBe(1);
    expect(value(samples, 'stopflow_provider_calls', { ...queue, operation: 'stopInstance' })).toBe(1);
    // The SDK's own worker metrics share the endpoint.
    expect(value(samples, 'temporal_workflow_completed', { task_queue: taskQueue })).toBe(1);

    const configLine = first.lines.find((l) => l.msg === 'stopflow worker starting');
    expect(configLine?.config).toMatchObject({ taskQueue, providers: ['simulated'], pollInterval: '1s' });
    // Log lines reach stdout through the SDK's log buffer (100ms), so wait for them.
    const detachLine = await first.waitForLine(
      (l) => l.msg === 'simulated: detach requested' && l.volumeId === 'vol-slow',
      'the detach request in the logs',
    );
    expect(detachLine).toMatchObject({
      level: 'info',
      instanceId,
      volumeId: 'vol-slow',
      workflowId: `stop-${instanceId}`,
      activityType: 'requestDetach',
    });
    const errorLine = await first.waitForLine(
      (l) => l.level === 'warn' && l.instanceId === unknown && l.sdkComponent === 'activity',
      'the provider error in the logs',
    );
    expect(errorLine).toMatchObject({ workflowId: `stop-${unknown}`, errorType: 'PermanentProviderError' });
  });

  it('SIGTERM during a stop exits 0, and a second worker finishes that stop', async () => {
    const instanceId = `wp-stuck-${suffix}`;
    await sim.addInstance(instanceId, [{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
    await stopflow.stop({ instanceId, requestedBy: 'worker-process test' });
    // The first worker is polling the stuck volume when it is told to stop.
    await first.waitForLine(
      (l) => l.msg === 'simulated: detach requested' && l.instanceId === instanceId,
      'the first worker to request the detach',
    );
    first.child.kill('SIGTERM');
    expect(await first.exited).toBe(0);
    expect(first.lines.some((l) => l.msg?.startsWith('SIGTERM: shutting down'))).toBe(true);
    expect(first.lines.some((l) => l.msg === 'worker stopped: every task handed back')).toBe(true);
    // No worker now: the stop waits on the server.
    expect((await client.workflow.getHandle(workflowIdFor(instanceId)).describe()).status.name).toBe('RUNNING');

    const secondPort = await freePort();
    const second = startWorker('cli', {
      STOPFLOW_TASK_QUEUE: taskQueue,
      STOPFLOW_SIM_STATE: simState,
      STOPFLOW_METRICS_ADDRESS: `127.0.0.1:${secondPort}`,
    });
    await second.waitUntilPolling();
    // The second worker takes over the wait on the stuck volume (the first handed it back at shutdown)...
    const secondIdentity = `${second.child.pid}@${hostname()}`;
    await eventually(async () => {
      const d = await client.workflow.getHandle(workflowIdFor(instanceId)).describe();
      const waiting = d.raw.pendingActivities?.find((a) => a.activityType?.name === 'awaitDetached');
      return waiting?.lastWorkerIdentity === secondIdentity;
    }, 'the second worker to take over the wait');
    // ...and finishes the stop when it is aborted.
    await stopflow.abort(instanceId, { reason: 'worker-process test', requestedBy: 'test' });
    const final = await stopflow.result(instanceId);
    expect(final).toMatchObject({
      phase: 'stopped',
      instanceStopped: true,
      escalation: { cause: 'abort' },
      volumes: [{ volumeId: 'vol-stuck', state: 'force_detached' }],
    });
    expect(await sim.instance(instanceId)).toMatchObject({ state: 'stopped', leakedAtStop: [] });

    const samples = await scrape(secondPort);
    const queue = { taskQueue };
    expect(value(samples, 'stopflow_force_detaches', { ...queue, cause: 'abort' })).toBe(1);
    expect(value(samples, 'stopflow_stops_ended', { ...queue, phase: 'stopped', cause: 'abort' })).toBe(1);
    expect(value(samples, 'stopflow_detach_attempts', { ...queue, kind: 'force' })).toBe(1);

    second.child.kill('SIGTERM');
    expect(await second.exited).toBe(0);
  });
});

describe('worker process: start-up checks', () => {
  it('a namespace without the search attributes and an unusable provider: exit 3, with the commands to fix it', async () => {
    const namespace = `stopflow-checks-${randomUUID().slice(0, 8)}`;
    await client.connection.workflowService.registerNamespace({
      namespace,
      workflowExecutionRetentionPeriod: msToTs('1d'),
    });
    await eventually(
      () => client.connection.operatorService.listSearchAttributes({ namespace }).then(() => true),
      `namespace ${namespace} to be usable`,
    );
    const notAFile = join(dir, 'sim-state-is-a-directory');
    mkdirSync(notAFile);
    const apiKey = `secret-${randomUUID()}`;
    const worker = startWorker('main', {
      TEMPORAL_NAMESPACE: namespace,
      TEMPORAL_API_KEY: apiKey,
      TEMPORAL_TLS: 'false',
      STOPFLOW_TASK_QUEUE: `checks-${randomUUID()}`,
      STOPFLOW_SIM_STATE: notAFile,
    });
    expect(await worker.exited).toBe(3);
    const address = inject('temporalAddress');
    const searchAttributes = worker.lines.find((l) => l.check === 'search attributes');
    expect(searchAttributes).toMatchObject({ level: 'error' });
    expect(searchAttributes?.msg).toContain('StopPhase, StopCause, StopForced are missing');
    expect(searchAttributes?.msg).toContain(
      `temporal operator search-attribute create --address ${address} --namespace ${namespace} --name StopPhase --name StopCause --type Keyword`,
    );
    expect(searchAttributes?.msg).toContain(
      `temporal operator search-attribute create --address ${address} --namespace ${namespace} --name StopForced --type Bool`,
    );
    const provider = worker.lines.find((l) => l.check === 'provider simulated');
    expect(provider).toMatchObject({ level: 'error' });
    expect(provider?.msg).toContain('provider simulated is not usable');
    expect(worker.lines.find((l) => l.msg?.startsWith('start-up checks failed'))?.failed).toEqual([
      'search attributes',
      'provider simulated',
    ]);
    // The API key was used, and never printed.
    expect(worker.lines.find((l) => l.msg === 'stopflow worker starting')?.config).toMatchObject({
      temporal: { apiKey: 'set (hidden)', tls: 'off' },
    });
    expect(worker.output).not.toContain(apiKey);
  });

  it('an unreachable server, a missing namespace, a bad variable and a busy metrics port each say what is wrong', async () => {
    const closedPort = await freePort();
    const missingNamespace = `stopflow-missing-${randomUUID().slice(0, 8)}`;
    const unreachable = startWorker('main', { TEMPORAL_ADDRESS: `127.0.0.1:${closedPort}` });
    const noNamespace = startWorker('main', { TEMPORAL_NAMESPACE: missingNamespace });
    const badConfig = startWorker('cli', { STOPFLOW_POLL_INTERVAL: '45s', STOPFLOW_METRICS_ADDRESS: 'localhost:1' });
    const busy = createServer().listen(0, '127.0.0.1');
    await once(busy, 'listening');
    const busyPort = (busy.address() as AddressInfo).port;
    const portTaken = startWorker('main', { STOPFLOW_METRICS_ADDRESS: `127.0.0.1:${busyPort}` });
    const [unreachableExit, noNamespaceExit, badConfigExit, portTakenExit] = await Promise.all([
      unreachable.exited,
      noNamespace.exited,
      badConfig.exited,
      portTaken.exited,
    ]);
    busy.close();

    expect(unreachableExit).toBe(3);
    expect(unreachable.lines.find((l) => l.check === 'temporal server')?.msg).toContain(
      `cannot reach Temporal at 127.0.0.1:${closedPort}`,
    );

    expect(noNamespaceExit).toBe(3);
    expect(noNamespace.lines.find((l) => l.check === 'namespace')?.msg).toContain(
      `namespace ${missingNamespace} does not exist on ${inject('temporalAddress')}`,
    );

    expect(badConfigExit).toBe(2);
    expect(badConfig.stderr).toContain('STOPFLOW_POLL_INTERVAL: must be a duration such as "5s" (1s-20s)');
    expect(badConfig.stderr).toContain('STOPFLOW_METRICS_ADDRESS: must be "off" or an IP address and port');

    expect(portTakenExit).toBe(3);
    expect(portTaken.lines.find((l) => l.check === 'metrics endpoint')?.msg).toContain(
      `cannot serve metrics on 127.0.0.1:${busyPort}`,
    );
  });
});
