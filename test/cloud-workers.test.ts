/**
 * `STOPFLOW_PROVIDERS=gcp` and `STOPFLOW_PROVIDERS=azure` production workers (`node --import tsx worker/main.ts`),
 * configured only through the environment as docs/worker.md says, stopping instances end to end on the run's dev
 * server against the local cloud servers (test/support/gcp-compute-server.ts, test/support/azure-arm-server.ts).
 *
 * Credentials come the way a deployed worker gets them: gcp sends none to a plain-http loopback endpoint
 * (STOPFLOW_GCP_ENDPOINT); azure takes DefaultAzureCredential's managed identity, here App Service's token
 * endpoint (IDENTITY_ENDPOINT, IDENTITY_HEADER) served by this file, and trusts the test server's self-signed
 * certificate through NODE_EXTRA_CA_CERTS.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Client } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StopFailedError, StopflowClient } from '../client/stopflow-client';
import { connectClient, eventually } from './helpers';
import { AzureArmServer } from './support/azure-arm-server';
import { GcpComputeServer } from './support/gcp-compute-server';
import { WorkerProcess, workerEnv } from './support/worker-process';

const dir = mkdtempSync(join(tmpdir(), 'stopflow-cloud-workers-'));

const started: WorkerProcess[] = [];

/**
 * A production worker with only the given cloud's variables: nothing stopflow-, Temporal-, Google- or
 * Azure-related is inherited from the test run's environment.
 */
function startWorker(env: Record<string, string>): WorkerProcess {
  const clouds = /^(AZURE_|GOOGLE_|GCLOUD_|CLOUDSDK_|IDENTITY_|MSI_|NODE_EXTRA_CA_CERTS$)/;
  const worker = new WorkerProcess(workerEnv({ STOPFLOW_LOG_LEVEL: 'info', ...env }, clouds));
  started.push(worker);
  return worker;
}

const stateOf = (volumes: { volumeId: string; state: string }[]) =>
  Object.fromEntries(volumes.map((v) => [v.volumeId, v.state]));

/** The stop's failure, or a test failure if it ended any other way. */
async function stopFailure(stopflow: StopflowClient, instanceId: string): Promise<StopFailedError> {
  const error = await stopflow.result(instanceId).then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(error).toBeInstanceOf(StopFailedError);
  return error as StopFailedError;
}

/** Waits until the workflow reports the volume detaching, so an abort lands while it is stuck. */
async function untilDetaching(stopflow: StopflowClient, instanceId: string, volumeId: string): Promise<void> {
  await eventually(
    async () =>
      (await stopflow.status(instanceId)).volumes.some((v) => v.volumeId === volumeId && v.state === 'detaching'),
    `${volumeId} to be detaching`,
  );
}

let client: Client;
beforeAll(async () => {
  client = await connectClient();
});
afterAll(async () => {
  for (const worker of started) worker.kill();
  await client?.connection.close();
});

describe('STOPFLOW_PROVIDERS=gcp worker process against the local Compute Engine', () => {
  const PROJECT = 'stopflow-test';
  const ZONE = 'us-central1-a';
  const taskQueue = `cloud-workers-gcp-${randomUUID()}`;
  let server: GcpComputeServer;
  let worker: WorkerProcess;
  let stopflow: StopflowClient;
  const name = () => `cw-${randomUUID().slice(0, 8)}`;

  beforeAll(async () => {
    server = await GcpComputeServer.start();
    stopflow = new StopflowClient({ client, taskQueue });
    worker = startWorker({
      STOPFLOW_TASK_QUEUE: taskQueue,
      STOPFLOW_PROVIDERS: 'gcp',
      STOPFLOW_GCP_ENDPOINT: `http://${server.host}:${server.port}`,
      STOPFLOW_GCP_PROJECT: PROJECT,
      STOPFLOW_GCP_ZONE: ZONE,
      STOPFLOW_GCP_FORCE: 'off',
    });
    await worker.waitUntilPolling();
  });
  afterAll(async () => {
    if (worker) expect(await worker.stop()).toBe(0);
    await server?.close();
  });

  it('starts from the environment alone: the gcp settings printed, the provider check passed against the server', () => {
    const config = worker.lines.find((l) => l.msg === 'stopflow worker starting')?.config;
    expect(config).toMatchObject({
      providers: ['gcp'],
      defaultProvider: 'gcp',
      gcp: {
        project: PROJECT,
        zone: ZONE,
        endpoint: `http://${server.host}:${server.port}`,
        credentials: 'none (plain http to a local server)',
      },
    });
    expect(worker.lines.find((l) => l.check === 'provider gcp')).toMatchObject({ level: 'info' });
    expect(server.callsOf('projects.get').length).toBeGreaterThan(0);
  });

  it('a healthy stop: the data disks detach (boot disk kept), the instance ends TERMINATED, stopped', async () => {
    const vm = name();
    const [a, b] = [`${vm}-a`, `${vm}-b`];
    server.addInstance({ name: vm, disks: [{ name: a }, { name: b, detachDelayMs: 300 }], stopDelayMs: 200 });
    // A bare name: STOPFLOW_GCP_ZONE supplies the zone, and the worker's default provider is gcp.
    await stopflow.stop({ instanceId: vm });
    const result = await stopflow.result(vm);
    expect(result.phase).toBe('stopped');
    expect(result.instanceStopped).toBe(true);
    expect(result.escalation).toBeNull();
    expect(stateOf(result.volumes)).toEqual({ [a]: 'detached', [b]: 'detached' });
    const instance = server.instance(vm);
    expect(instance.status).toBe('TERMINATED');
    expect(instance.disks.map((d) => d.name)).toEqual([`boot-${vm}`]);
    expect([instance.stopCalls, instance.hardStopCalls]).toEqual([1, 0]);
  });

  it('a stuck disk aborted: force is unsupported by default, StopFailed, the instance left running', async () => {
    const vm = name();
    const [a, stuck] = [`${vm}-a`, `${vm}-stuck`];
    server.addInstance({ name: vm, disks: [{ name: a }, { name: stuck, stuck: true }] });
    await stopflow.stop({ instanceId: vm });
    await untilDetaching(stopflow, vm, stuck);
    await stopflow.abort(vm, { reason: 'cloud-workers test', requestedBy: 'test' });
    const status = (await stopFailure(stopflow, vm)).status;
    expect(status).toMatchObject({ phase: 'failed', instanceStopped: false, escalation: { cause: 'abort' } });
    expect(stateOf(status?.volumes ?? [])).toEqual({ [a]: 'detached', [stuck]: 'failed' });
    expect(status?.volumes.find((v) => v.volumeId === stuck)?.lastError).toMatch(/cannot force-detach/);
    const instance = server.instance(vm);
    expect(instance.status).toBe('RUNNING');
    expect([instance.stopCalls, instance.hardStopCalls]).toEqual([0, 0]);
    expect(server.isAttached(vm, stuck)).toBe(true);
  });

  it('sent no credentials to the plain-http endpoint', () => {
    expect(server.calls.length).toBeGreaterThan(0);
    expect(server.calls.filter((c) => c.authorization !== undefined)).toEqual([]);
  });
});

describe('STOPFLOW_PROVIDERS=azure worker process against the local Resource Manager', () => {
  const SUBSCRIPTION = '0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d';
  /** What the managed identity endpoint hands out, and the only token the ARM server accepts. */
  const TOKEN = `stopflow-cloud-workers-${randomUUID()}`;
  const IDENTITY_HEADER = `identity-header-${randomUUID()}`;
  const taskQueue = `cloud-workers-azure-${randomUUID()}`;
  let server: AzureArmServer;
  let identity: Server;
  const tokenRequests: { resource: string | null; header: boolean }[] = [];
  let worker: WorkerProcess;
  let stopflow: StopflowClient;
  const resourceGroup = `rg-cw-${randomUUID().slice(0, 8)}`;
  const vmName = () => `vm-${randomUUID().slice(0, 8)}`;

  beforeAll(async () => {
    server = await AzureArmServer.start({ subscriptionId: SUBSCRIPTION, token: TOKEN });
    // App Service's managed identity endpoint (API 2019-08-01), as DefaultAzureCredential calls it.
    identity = createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://127.0.0.1');
      const header = req.headers['x-identity-header'] === IDENTITY_HEADER;
      tokenRequests.push({ resource: url.searchParams.get('resource'), header });
      res.setHeader('content-type', 'application/json');
      if (!header) {
        res.statusCode = 401;
        res.end(JSON.stringify({ error: 'unauthorized', error_description: 'missing X-IDENTITY-HEADER' }));
        return;
      }
      res.end(
        JSON.stringify({
          access_token: TOKEN,
          expires_on: String(Math.floor(Date.now() / 1000) + 3600),
          resource: url.searchParams.get('resource'),
          token_type: 'Bearer',
        }),
      );
    });
    await new Promise<void>((resolve) => identity.listen(0, '127.0.0.1', resolve));
    const caFile = join(dir, 'arm-ca.pem');
    writeFileSync(caFile, server.ca);
    stopflow = new StopflowClient({ client, taskQueue });
    worker = startWorker({
      STOPFLOW_TASK_QUEUE: taskQueue,
      STOPFLOW_PROVIDERS: 'azure',
      AZURE_SUBSCRIPTION_ID: SUBSCRIPTION,
      STOPFLOW_AZURE_ENDPOINT: server.endpoint,
      IDENTITY_ENDPOINT: `http://127.0.0.1:${(identity.address() as AddressInfo).port}/msi/token`,
      IDENTITY_HEADER,
      NODE_EXTRA_CA_CERTS: caFile,
    });
    await worker.waitUntilPolling();
  });
  afterAll(async () => {
    if (worker) expect(await worker.stop()).toBe(0);
    await server?.close();
    await new Promise<void>((resolve) => (identity ? identity.close(() => resolve()) : resolve()));
  });

  it('starts from the environment alone: the azure settings printed, the subscription checked with a managed identity token', () => {
    const config = worker.lines.find((l) => l.msg === 'stopflow worker starting')?.config;
    expect(config).toMatchObject({
      providers: ['azure'],
      defaultProvider: 'azure',
      azure: { subscription: SUBSCRIPTION, endpoint: server.endpoint },
    });
    expect(worker.lines.find((l) => l.check === 'provider azure')).toMatchObject({ level: 'info' });
    expect(server.requestsOf('getSubscription').some((r) => r.authorized)).toBe(true);
    // The token was asked for the endpoint's own audience.
    expect(tokenRequests[0]).toEqual({ resource: server.endpoint, header: true });
  });

  it('a healthy stop: the data disks detach, the VM is powered off, stopped', async () => {
    const name = vmName();
    const instanceId = `${resourceGroup}:${name}`;
    const [a, b] = [`${name}-a`, `${name}-b`];
    const vm = server.addVm({
      resourceGroup,
      name,
      disks: [{ name: a }, { name: b, detachDelayMs: 500 }],
      stopDelayMs: 200,
    });
    await stopflow.stop({ instanceId });
    const result = await stopflow.result(instanceId);
    expect(result.phase).toBe('stopped');
    expect(result.instanceStopped).toBe(true);
    expect(result.escalation).toBeNull();
    expect(stateOf(result.volumes)).toEqual({ [a]: 'detached', [b]: 'detached' });
    expect(server.dataDisksOf(vm)).toEqual([]);
    expect(server.disk(a).forced || server.disk(b).forced).toBe(false);
    expect(vm.powerState).toBe('stopped');
    expect(vm.powerOffSkipShutdown).toEqual([false]);
  });

  it('a stuck disk aborted: ForceDetach takes it, force_detached, and the VM stops', async () => {
    const name = vmName();
    const instanceId = `${resourceGroup}:${name}`;
    const [a, stuck] = [`${name}-a`, `${name}-stuck`];
    const vm = server.addVm({ resourceGroup, name, disks: [{ name: a }, { name: stuck, stuck: true }] });
    await stopflow.stop({ instanceId });
    await untilDetaching(stopflow, instanceId, stuck);
    await stopflow.abort(instanceId, { reason: 'cloud-workers test', requestedBy: 'test' });
    const result = await stopflow.result(instanceId);
    expect(result).toMatchObject({ phase: 'stopped', instanceStopped: true, escalation: { cause: 'abort' } });
    expect(stateOf(result.volumes)).toEqual({ [a]: 'detached', [stuck]: 'force_detached' });
    expect(server.disk(stuck)).toMatchObject({ forced: true, forceRequests: 1, attachedTo: null });
    expect(server.disk(a).forced).toBe(false);
    expect(vm.powerState).toBe('stopped');
  });

  it('every ARM call carried the managed identity token, and no log line shows it', () => {
    expect(server.requests.length).toBeGreaterThan(0);
    expect(server.requests.filter((r) => !r.authorized)).toEqual([]);
    expect(tokenRequests.every((r) => r.header)).toBe(true);
    expect(worker.output).not.toContain(TOKEN);
    expect(worker.output).not.toContain(IDENTITY_HEADER);
  });
});
