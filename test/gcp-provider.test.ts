/**
 * The gcp provider through the real `@google-cloud/compute` (its REST transport) against a local server
 * speaking the Compute Engine REST API (test/support/gcp-compute-server.ts): the conformance suite, Compute
 * Engine's own answers (device names, boot disks, already detached), the error classification table row by row,
 * credentials, stopping, cancellation and timeouts, throttling, coalesced state checks, a detach re-sent after a
 * timeout that must not start a second operation, the opt-in force, and stops through the workflow on the dev
 * server.
 */
import { randomUUID } from 'node:crypto';
import { OAuth2Client, PassThroughClient } from 'google-auth-library';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  type AttachmentState,
  ForceUnsupportedError,
  PermanentProviderError,
  ThrottledProviderError,
  TransientProviderError,
  type VolumeOfInstance,
} from '../activities/provider';
import {
  DEFAULT_GCP_BUDGET,
  DEFAULT_GCP_MAX_BATCH,
  GcpProvider,
  type GcpProviderOptions,
  requestIdFor,
} from '../activities/providers/gcp';
import { StopFailedError } from '../client/stopflow-client';
import { describeProviderConformance } from './conformance/provider-conformance';
import { eventually, type Harness, startHarness } from './helpers';
import { type Action, GcpComputeServer } from './support/gcp-compute-server';

const PROJECT = 'stopflow-test';
const ZONE = 'us-central1-a';
const TOKEN = 'ya29.stopflow-test-token-never-logged';

let server: GcpComputeServer;
const providers: GcpProvider[] = [];

beforeAll(async () => {
  server = await GcpComputeServer.start();
});
afterAll(async () => {
  await Promise.all(providers.map((p) => p.close()));
  await server?.close();
});

/** A fresh instance name, unique across test files sharing the dev server. */
const vm = () => `vm-${randomUUID().slice(0, 8)}`;
const idOf = (name: string) => `${ZONE}:${name}`;

/** A provider on the local server, with no credentials (PassThroughClient) unless given an auth client. */
function gcp(options: GcpProviderOptions = {}): GcpProvider {
  const provider = new GcpProvider({
    project: PROJECT,
    apiEndpoint: server.host,
    port: server.port,
    protocol: 'http',
    authClient: new PassThroughClient(),
    stopPollMs: 50,
    ...options,
  });
  providers.push(provider);
  return provider;
}

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls until `condition` holds (a request reached the server); fails after 10 s. */
async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await pause(10);
  }
}

const failure = (promise: Promise<unknown>) =>
  promise.then(
    () => undefined,
    (err: unknown) => err,
  );

describeProviderConformance('gcp', async () => ({
  provider: gcp(),
  missingVolume: { volumeId: 'disk-that-does-not-exist' },
  async createInstance() {
    const name = vm();
    const [a, slow, stuck] = [`${name}-a`, `${name}-slow`, `${name}-stuck`];
    server.addInstance({
      name,
      disks: [{ name: a }, { name: slow, detachDelayMs: 200 }, { name: stuck, stuck: true }],
      stopDelayMs: 100,
    });
    return { instanceId: idOf(name), healthy: [{ volumeId: a }, { volumeId: slow }], stuck: { volumeId: stuck } };
  },
  async instanceStopped(instanceId) {
    return server.instance(instanceId).status === 'TERMINATED';
  },
  async unstick(instance) {
    server.unstick(instance.instanceId, instance.stuck.volumeId);
  },
}));

describe('gcp provider: what Compute Engine answers', () => {
  test('lists persistent disks with their device names, never the boot disk or a local SSD', async () => {
    const name = vm();
    server.addInstance({
      name,
      disks: [
        { name: `${name}-data`, deviceName: 'persistent-disk-1' },
        { name: `${name}-logs` },
        { name: `${name}-ssd`, type: 'SCRATCH' },
      ],
    });
    const provider = gcp();
    expect(await provider.listAttachedVolumes(idOf(name))).toEqual([
      { volumeId: `${name}-data`, device: 'persistent-disk-1' },
      { volumeId: `${name}-logs`, device: `${name}-logs` },
    ]);
    expect(server.isAttached(idOf(name), `boot-${name}`)).toBe(true);
    await expect(provider.listAttachedVolumes(idOf('vm-never-created'))).rejects.toBeInstanceOf(PermanentProviderError);
  });

  test('instance ids: zone:name, project:zone:name, or a bare name with a default zone; anything else is final', async () => {
    const name = vm();
    server.addInstance({ name, disks: [{ name: `${name}-d` }] });
    const expected = [{ volumeId: `${name}-d`, device: `${name}-d` }];
    expect(await gcp().listAttachedVolumes(`${PROJECT}:${ZONE}:${name}`)).toEqual(expected);
    expect(await gcp({ zone: ZONE }).listAttachedVolumes(name)).toEqual(expected);
    for (const bad of [name, `${ZONE}:Not_A_Name`, `${ZONE}:`]) {
      const error = await failure(gcp().listAttachedVolumes(bad));
      expect(error, bad).toBeInstanceOf(PermanentProviderError);
      expect((error as Error).message).toMatch(/zone:name/);
    }
    const before = server.callCount();
    await failure(gcp().listAttachedVolumes(name));
    expect(server.callCount()).toBe(before); // refused before anything was sent
  });

  test('detaches by the device name the disk is attached under, with a requestId', async () => {
    const name = vm();
    const disk = `${name}-data`;
    server.addInstance({ name, disks: [{ name: disk, deviceName: 'persistent-disk-1' }] });
    const provider = gcp();
    await provider.detachVolume(idOf(name), { volumeId: disk }, { idempotencyKey: 'run-a/1' });
    const [sent] = server.callsOf('instances.detachDisk').filter((c) => c.path.includes(`/instances/${name}/`));
    expect(sent?.query.deviceName).toBe('persistent-disk-1');
    expect(sent?.query.requestId).toBe(requestIdFor('run-a/1', 'detach'));
    expect(await provider.getAttachmentState(idOf(name), { volumeId: disk })).toBe('detached');
    // The device name alone names the volume too.
    const other = vm();
    server.addInstance({ name: other, disks: [{ name: `${other}-x`, deviceName: 'scratchpad' }] });
    await provider.detachVolume(idOf(other), { volumeId: 'scratchpad' });
    expect(server.isAttached(idOf(other), `${other}-x`)).toBe(false);
  });

  test('already detached is success: a disk not attached, an instance gone, "No attached disk found"', async () => {
    const name = vm();
    const disk = `${name}-d`;
    server.addInstance({ name, disks: [{ name: disk }] });
    const provider = gcp();
    const sent = () => server.callCount('instances.detachDisk');
    const before = sent();
    for (const [instanceId, volumeId] of [
      [idOf(name), 'disk-that-does-not-exist'],
      [idOf('vm-gone-long-ago'), disk],
    ] as const) {
      await provider.detachVolume(instanceId, { volumeId });
      expect(await provider.getAttachmentState(instanceId, { volumeId })).toBe('detached');
    }
    expect(sent()).toBe(before); // nothing to detach: no detachDisk at all
    // Detached between our instances.get and our detachDisk: Compute Engine says so, and that is success.
    server.inject({
      action: 'instances.detachDisk',
      status: 400,
      reason: 'invalid',
      message: `Invalid value for field 'deviceName': '${disk}'. No attached disk found with device name '${disk}'.`,
    });
    await provider.detachVolume(idOf(name), { volumeId: disk });
    server.inject({ action: 'instances.detachDisk', status: 404, reason: 'notFound', message: 'gone' });
    await provider.detachVolume(idOf(name), { volumeId: disk });
    expect(server.isAttached(idOf(name), disk)).toBe(true);
  });

  test('a boot disk named in a request is refused while the instance runs', async () => {
    const name = vm();
    server.addInstance({ name });
    const error = await failure(gcp().detachVolume(idOf(name), { volumeId: `boot-${name}` }));
    expect(error).toBeInstanceOf(PermanentProviderError);
    expect((error as Error).message).toMatch(/boot disk.*only from a TERMINATED instance/);
  });

  test('request ids: a UUID, the same for every retry of one activity, different for anything else', () => {
    const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
    const id = requestIdFor('run-1/7', 'detach');
    expect(id).toMatch(uuid);
    expect(requestIdFor('run-1/7', 'detach')).toBe(id);
    expect(requestIdFor('run-1/8', 'detach')).not.toBe(id);
    expect(requestIdFor('run-2/7', 'detach')).not.toBe(id);
    expect(requestIdFor('run-1/7', 'stop/0')).not.toBe(id);
    expect(requestIdFor(undefined, 'detach')).not.toBe(requestIdFor(undefined, 'detach'));
  });
});

describe('gcp provider: a detach re-sent after a timeout', () => {
  test('reuses its requestId: the late operation is the only one, and a disk attached after it stays attached', async () => {
    const name = vm();
    const disk = `${name}-data`;
    const instanceId = idOf(name);
    server.addInstance({ name, disks: [{ name: disk, stuck: true }] });
    const provider = gcp({ requestTimeoutMs: 300 });
    const key = 'run-late/5';
    // The request lands (Compute Engine starts the operation) but its answer never comes back.
    server.dropAnswers({ action: 'instances.detachDisk' });
    const lost = await failure(provider.detachVolume(instanceId, { volumeId: disk }, { idempotencyKey: key }));
    expect(lost).toBeInstanceOf(TransientProviderError);
    expect((lost as Error).message).toMatch(/no answer within 300 ms/);
    expect(server.detachOperations(instanceId, disk)).toHaveLength(1);
    // The activity's retry sends the same requestId: Compute Engine answers the operation it already has.
    await provider.detachVolume(instanceId, { volumeId: disk }, { idempotencyKey: key });
    expect(server.detachOperations(instanceId, disk)).toHaveLength(1);
    expect(await provider.getAttachmentState(instanceId, { volumeId: disk })).toBe('detaching');
    // The operation completes late; the stop is over; someone attaches the disk again.
    server.unstick(instanceId, disk);
    expect(await provider.getAttachmentState(instanceId, { volumeId: disk })).toBe('detached');
    server.attach(instanceId, { name: disk });
    // A retry of that same activity arriving even later does not detach the new attachment.
    await provider.detachVolume(instanceId, { volumeId: disk }, { idempotencyKey: key });
    await pause(100);
    expect(await provider.getAttachmentState(instanceId, { volumeId: disk })).toBe('attached');
    expect(server.isAttached(instanceId, disk)).toBe(true);
    expect(server.detachOperations(instanceId, disk)).toHaveLength(1);
    const requestIds = new Set(
      server
        .callsOf('instances.detachDisk')
        .filter((c) => c.path.includes(`/instances/${name}/`))
        .map((c) => c.query.requestId),
    );
    expect(requestIds).toEqual(new Set([requestIdFor(key, 'detach')]));
  });
});

describe('gcp provider: error classification (each row against the server)', () => {
  test('throttling, 5xx, not ready and no answer are retried; auth, permission and bad requests are final', async () => {
    const name = vm();
    const disk = `${name}-d`;
    server.addInstance({ name, disks: [{ name: disk }] });
    const provider = gcp({ requestTimeoutMs: 300 });
    type ErrorClass = typeof ThrottledProviderError | typeof TransientProviderError | typeof PermanentProviderError;
    const rows: { action: Action; status: number; reason: string; type: ErrorClass }[] = [
      { action: 'instances.get', status: 429, reason: 'rateLimitExceeded', type: ThrottledProviderError },
      { action: 'instances.get', status: 403, reason: 'rateLimitExceeded', type: ThrottledProviderError },
      { action: 'instances.get', status: 403, reason: 'userRateLimitExceeded', type: ThrottledProviderError },
      { action: 'instances.get', status: 500, reason: 'backendError', type: TransientProviderError },
      { action: 'instances.get', status: 502, reason: 'badGateway', type: TransientProviderError },
      { action: 'instances.get', status: 503, reason: 'backendError', type: TransientProviderError },
      { action: 'instances.detachDisk', status: 400, reason: 'resourceNotReady', type: TransientProviderError },
      { action: 'instances.detachDisk', status: 409, reason: 'conflict', type: TransientProviderError },
      { action: 'instances.get', status: 401, reason: 'authError', type: PermanentProviderError },
      { action: 'instances.get', status: 403, reason: 'forbidden', type: PermanentProviderError },
      { action: 'instances.get', status: 403, reason: 'accessNotConfigured', type: PermanentProviderError },
      { action: 'instances.detachDisk', status: 400, reason: 'invalid', type: PermanentProviderError },
    ];
    for (const { action, status, reason, type } of rows) {
      server.inject({ action, status, reason, message: `injected ${reason}` });
      const error = await failure(provider.detachVolume(idOf(name), { volumeId: disk }));
      const row = `${action} ${status} ${reason}`;
      expect(error, row).toBeInstanceOf(type);
      if (type === TransientProviderError) expect(error, row).not.toBeInstanceOf(ThrottledProviderError);
      expect((error as Error).message, row).toContain(`HTTP ${status} ${reason}`);
      if (status === 401 || (status === 403 && type === PermanentProviderError)) {
        expect((error as Error).message, row).toMatch(/Application Default Credentials/);
      }
    }
    // No answer within requestTimeoutMs, and nothing listening: transient.
    server.hang({ action: 'instances.get' });
    await expect(provider.getAttachmentState(idOf(name), { volumeId: disk })).rejects.toSatisfy(
      (err: unknown) => err instanceof TransientProviderError && /no answer within 300 ms/.test(err.message),
    );
    const closed = gcp({ port: 9 });
    const refused = await failure(closed.getAttachmentState(idOf(name), { volumeId: disk }));
    expect(refused).toBeInstanceOf(TransientProviderError);
    expect(server.isAttached(idOf(name), disk)).toBe(true);
    expect(await provider.getAttachmentState(idOf(name), { volumeId: disk })).toBe('attached');
  });

  test('a detach operation that finds no disk (RESOURCE_NOT_FOUND) is already detached', async () => {
    const name = vm();
    const disk = `${name}-d`;
    server.addInstance({ name, disks: [{ name: disk, detachDelayMs: 50 }] });
    const provider = gcp();
    await provider.detachVolume(idOf(name), { volumeId: disk }, { idempotencyKey: 'k/1' });
    // A second request (another activity) while the first is pending: its operation finds nothing left.
    await provider.detachVolume(idOf(name), { volumeId: disk }, { idempotencyKey: 'k/2' });
    await pause(80);
    expect(await provider.getAttachmentState(idOf(name), { volumeId: disk })).toBe('detached');
    const [, second] = server.detachOperations(idOf(name), disk);
    expect(second?.error?.code).toBe('RESOURCE_NOT_FOUND');
    server.attach(idOf(name), { name: disk });
    // Its retry gets that finished operation back, failed with RESOURCE_NOT_FOUND: success, nothing re-sent.
    await provider.detachVolume(idOf(name), { volumeId: disk }, { idempotencyKey: 'k/2' });
    expect(server.isAttached(idOf(name), disk)).toBe(true);
  });
});

describe('gcp provider: credentials', () => {
  test('the auth client’s token reaches the API; a refused one is final with the fix, and never in the error', async () => {
    const tokenServer = await GcpComputeServer.start({ expectToken: TOKEN });
    try {
      const name = vm();
      tokenServer.addInstance({ name, disks: [{ name: `${name}-d` }] });
      const withToken = (token: string) => {
        const auth = new OAuth2Client();
        auth.setCredentials({ access_token: token, expiry_date: Date.now() + 3_600_000 });
        return gcp({ port: tokenServer.port, authClient: auth });
      };
      const good = withToken(TOKEN);
      expect(await good.listAttachedVolumes(idOf(name))).toHaveLength(1);
      await good.checkUsable();
      expect(tokenServer.calls.at(-1)?.authorization).toBe(`Bearer ${TOKEN}`);

      const wrongToken = 'ya29.wrong-token-also-secret';
      const bad = withToken(wrongToken);
      const error = await failure(bad.listAttachedVolumes(idOf(name)));
      expect(error).toBeInstanceOf(PermanentProviderError);
      expect((error as Error).message).toMatch(/HTTP 401 authError/);
      expect((error as Error).message).toMatch(/Application Default Credentials/);
      const usable = await failure(bad.checkUsable());
      expect((usable as Error).message).toMatch(/cannot use Compute Engine.*HTTP 401 authError/s);
      for (const err of [error, usable]) {
        expect(String(err)).not.toContain(wrongToken);
        expect(JSON.stringify(err)).not.toContain(wrongToken);
      }
    } finally {
      await tokenServer.close();
    }
  });

  test('without credentials checkUsable says how to set them up; without a project it says which variable', async () => {
    const saved = { ...process.env };
    try {
      process.env.GOOGLE_APPLICATION_CREDENTIALS = '/nonexistent/stopflow-key.json';
      const adc = new GcpProvider({ project: PROJECT, apiEndpoint: server.host, port: server.port, protocol: 'http' });
      providers.push(adc);
      const error = await failure(adc.checkUsable());
      expect((error as Error).message).toMatch(/cannot use Compute Engine: .*no Google credentials/);
      expect((error as Error).message).toMatch(/GOOGLE_APPLICATION_CREDENTIALS/);
    } finally {
      process.env = saved;
    }
    const noProject = gcp({ project: '' });
    await expect(noProject.checkUsable()).rejects.toThrow(/STOPFLOW_GCP_PROJECT/);
    await gcp().checkUsable();
    expect(server.callsOf('projects.get').at(-1)?.path).toBe(`/compute/v1/projects/${PROJECT}`);
  });
});

describe('gcp provider: stopping', () => {
  test('stopInstance waits for TERMINATED through the operation; again (or already stopped) is a success', async () => {
    const name = vm();
    server.addInstance({ name, stopDelayMs: 500 });
    const provider = gcp();
    const waitsBefore = server.callCount('zoneOperations.wait');
    await provider.stopInstance(idOf(name), { idempotencyKey: 'run-s/9' });
    expect(server.instance(idOf(name)).status).toBe('TERMINATED');
    expect(server.callCount('zoneOperations.wait')).toBeGreaterThan(waitsBefore);
    await provider.stopInstance(idOf(name), { idempotencyKey: 'run-s/9' });
    await provider.stopInstance(idOf(name));
    expect(server.instance(idOf(name)).stopCalls).toBe(1);
    expect(server.instance(idOf(name)).hardStopCalls).toBe(0);
    await expect(provider.stopInstance(idOf('vm-never-created'))).rejects.toBeInstanceOf(PermanentProviderError);
  });

  test('a retried stop finds its operation again; an instance started again meanwhile gets a new stop', async () => {
    const name = vm();
    server.addInstance({ name, stopDelayMs: 60_000 });
    const impatient = gcp({ stopWaitMs: 400 });
    const error = await failure(impatient.stopInstance(idOf(name), { idempotencyKey: 'run-r/2' }));
    expect(error).toBeInstanceOf(TransientProviderError);
    expect((error as Error).message).toMatch(/still STOPPING/);
    server.instance(idOf(name)).stopDelayMs = 0;
    // Same key: the same requestId answers the operation already under way (no second stop), waited until done.
    const patient = gcp();
    const finish = setTimeout(() => server.finishPending(idOf(name)), 200);
    await patient.stopInstance(idOf(name), { idempotencyKey: 'run-r/2' });
    clearTimeout(finish);
    expect(server.instance(idOf(name)).status).toBe('TERMINATED');
    expect(server.instance(idOf(name)).stopCalls).toBe(1);
    // ...and an instance someone started again is stopped again, by a new request of the same call.
    server.instance(idOf(name)).status = 'RUNNING';
    await patient.stopInstance(idOf(name), { idempotencyKey: 'run-r/2' });
    expect(server.instance(idOf(name)).status).toBe('TERMINATED');
    expect(server.instance(idOf(name)).stopCalls).toBe(2);
  });
});

describe('gcp provider: force', () => {
  test('by default force is unsupported, with a message naming the limitation, and sends nothing', async () => {
    const name = vm();
    server.addInstance({ name, disks: [{ name: `${name}-d`, stuck: true }] });
    const provider = gcp();
    expect(provider.supportsForce).toBe(false);
    const before = server.callCount();
    const error = await failure(provider.forceDetachVolume(idOf(name), { volumeId: `${name}-d` }));
    expect(error).toBeInstanceOf(ForceUnsupportedError);
    expect((error as Error).message).toMatch(/Compute Engine has no forced detach/);
    expect((error as Error).message).toMatch(/STOPFLOW_GCP_FORCE=stop-instance/);
    expect(server.callCount()).toBe(before);
  });

  test('opted in, force stops the instance at once (noGracefulShutdown) and detaches from the TERMINATED instance', async () => {
    const name = vm();
    const [stuck, other] = [`${name}-stuck`, `${name}-other`];
    server.addInstance({ name, disks: [{ name: stuck, stuck: true }, { name: other }], stopDelayMs: 60_000 });
    const provider = gcp({ forceByStoppingInstance: true });
    expect(provider.supportsForce).toBe(true);
    await provider.detachVolume(idOf(name), { volumeId: stuck });
    expect(await provider.getAttachmentState(idOf(name), { volumeId: stuck })).toBe('detaching');
    await provider.forceDetachVolume(idOf(name), { volumeId: stuck }, { idempotencyKey: 'run-f/3' });
    expect(await provider.getAttachmentState(idOf(name), { volumeId: stuck })).toBe('detached');
    const instance = server.instance(idOf(name));
    expect(instance.status).toBe('TERMINATED');
    expect(instance.hardStopCalls).toBe(1);
    const hard = server.callsOf('instances.stop').filter((c) => c.path.includes(`/instances/${name}/`));
    expect(hard.map((c) => [c.path.split('/')[2], c.query.noGracefulShutdown])).toEqual([['beta', 'true']]);
    // Only the forced disk was detached; the other stays attached to the stopped instance.
    expect(server.isAttached(idOf(name), other)).toBe(true);
    // Idempotent.
    await provider.forceDetachVolume(idOf(name), { volumeId: stuck }, { idempotencyKey: 'run-f/3' });
    expect(instance.hardStopCalls).toBe(1);
  });
});

describe('gcp provider: cancellation', () => {
  test('every call rejects at once with the signal’s reason when aborted while Compute Engine does not answer', async () => {
    const name = vm();
    const disk = `${name}-d`;
    server.addInstance({ name, disks: [{ name: disk }] });
    // The default request timeout (30 s) is far longer than this test's: only the signal can end these calls.
    const provider = gcp({ forceByStoppingInstance: true });
    const instanceId = idOf(name);
    const volume = { volumeId: disk };
    const calls: [Action, (signal: AbortSignal) => Promise<unknown>][] = [
      ['instances.get', (signal) => provider.listAttachedVolumes(instanceId, { signal })],
      ['instances.detachDisk', (signal) => provider.detachVolume(instanceId, volume, { signal })],
      ['instances.stop', (signal) => provider.forceDetachVolume(instanceId, volume, { signal })],
      ['instances.get', (signal) => provider.getAttachmentState(instanceId, volume, { signal })],
      ['instances.get', (signal) => provider.getAttachmentStates([{ instanceId, volume }], { signal })],
      ['zoneOperations.list', (signal) => provider.getAttachmentState(instanceId, volume, { signal })],
      ['instances.stop', (signal) => provider.stopInstance(instanceId, { signal })],
    ];
    for (const [action, call] of calls) {
      server.hang({ action });
      const before = server.hungCalls;
      const controller = new AbortController();
      const reason = new Error(`activity cancelled (${action})`);
      const pending = failure(call(controller.signal));
      await until(() => server.hungCalls > before, `${action} to reach the server`);
      controller.abort(reason);
      expect(await pending, action).toBe(reason);
    }
    // The aborted requests were really closed, not left open.
    await until(() => server.held.size === 0, 'the aborted requests to close');
    // Already aborted: nothing is sent.
    const sent = server.callCount();
    const aborted = AbortSignal.abort(new Error('cancelled before the call'));
    await expect(provider.getAttachmentState(instanceId, volume, { signal: aborted })).rejects.toThrow(
      /cancelled before the call/,
    );
    expect(server.callCount()).toBe(sent);
    expect(server.isAttached(instanceId, disk)).toBe(true);
    expect(server.instance(instanceId).status).toBe('RUNNING');
  });

  test('the wait for TERMINATED ends on the signal', async () => {
    const name = vm();
    server.addInstance({ name, stopDelayMs: 600_000 });
    const provider = gcp();
    const controller = new AbortController();
    const pending = failure(provider.stopInstance(idOf(name), { signal: controller.signal }));
    const waits = () => server.callsOf('zoneOperations.wait').length;
    const before = waits();
    await until(() => waits() >= before + 2, 'the stop to wait on its operation');
    const reason = new Error('stop cancelled');
    controller.abort(reason);
    expect(await pending).toBe(reason);
    const after = server.callCount();
    await pause(400);
    expect(server.callCount()).toBe(after); // nothing asked after the abort
  });
});

describe('gcp provider: throttling and the call budget', () => {
  test('rateLimitExceeded becomes ThrottledProviderError, with the server’s Retry-After when it gave one', async () => {
    const name = vm();
    const disk = `${name}-d`;
    server.addInstance({ name, disks: [{ name: disk }] });
    const provider = gcp();
    server.throttle(1, { action: 'instances.get', retryAfterSeconds: 3 });
    const hinted = await failure(provider.getAttachmentState(idOf(name), { volumeId: disk }));
    expect(hinted).toBeInstanceOf(ThrottledProviderError);
    expect((hinted as ThrottledProviderError).retryAfterMs).toBe(3_000);
    expect((hinted as Error).message).toMatch(/HTTP 429 rateLimitExceeded/);

    server.throttle(1, { action: 'instances.detachDisk' });
    const bare = await failure(provider.detachVolume(idOf(name), { volumeId: disk }));
    expect(bare).toBeInstanceOf(ThrottledProviderError);
    expect((bare as ThrottledProviderError).retryAfterMs).toBeUndefined();

    const at = new Date(Date.now() + 60_000).toUTCString();
    server.inject({
      action: 'instances.get',
      status: 429,
      reason: 'rateLimitExceeded',
      headers: { 'Retry-After': at },
    });
    const dated = await failure(provider.listAttachedVolumes(idOf(name)));
    expect((dated as ThrottledProviderError).retryAfterMs).toBeGreaterThan(0);
    expect((dated as ThrottledProviderError).retryAfterMs).toBeLessThanOrEqual(60_000);
    expect(server.isAttached(idOf(name), disk)).toBe(true);
  });

  test('declares a call budget and a batch size, both configurable', () => {
    const provider = gcp();
    expect(provider.budget).toEqual(DEFAULT_GCP_BUDGET);
    expect(provider.maxBatch).toBe(DEFAULT_GCP_MAX_BATCH);
    const tuned = gcp({ budget: { callsPerSecond: 50, burst: 200 }, maxBatch: 20 });
    expect(tuned.budget).toEqual({ callsPerSecond: 50, burst: 200 });
    expect(tuned.maxBatch).toBe(20);
  });
});

describe('gcp provider: coalesced state checks', () => {
  test('50 disks of 5 instances: one instances.get per instance, the same answers as one by one', async () => {
    const provider = gcp();
    const targets: VolumeOfInstance[] = [];
    for (let i = 0; i < 5; i++) {
      const name = vm();
      const disks = Array.from({ length: 10 }, (_, j) => ({ name: `${name}-${j}`, stuck: j % 3 === 1 }));
      server.addInstance({ name, disks });
      for (const d of disks) targets.push({ instanceId: idOf(name), volume: { volumeId: d.name } });
    }
    // Every state an answer can have: detached (j % 3 == 2), detaching (a stuck one, requested), attached.
    // The last instance gets no request: a pending detach makes every listed disk of its instance read detaching.
    for (const [k, t] of targets.entries()) {
      if (k < 40 && (k % 3 === 2 || k % 10 === 1)) await provider.detachVolume(t.instanceId, t.volume);
    }
    targets.push({ instanceId: idOf('vm-gone-long-ago'), volume: { volumeId: 'whatever' } });
    const one: AttachmentState[] = [];
    for (const t of targets) one.push(await provider.getAttachmentState(t.instanceId, t.volume));
    expect(new Set(one)).toEqual(new Set(['attached', 'detaching', 'detached']));

    const gets = server.callCount('instances.get');
    const lists = server.callCount('zoneOperations.list');
    expect(await provider.getAttachmentStates(targets)).toEqual(one);
    expect(server.callCount('instances.get') - gets).toBe(6);
    expect(server.callCount('zoneOperations.list') - lists).toBeLessThanOrEqual(5);
    expect(await provider.getAttachmentStates([])).toEqual([]);
  });

  test('a zone that cannot be read answers its disks with the error, asked once; the batch answers the other zones', async () => {
    const provider = gcp();
    const [away, awayToo, fine] = [vm(), vm(), vm()];
    const otherZone = 'europe-west1-b';
    server.addInstance({ name: away, disks: [{ name: `${away}-0` }] });
    server.addInstance({ name: awayToo, disks: [{ name: `${awayToo}-0` }] });
    server.addInstance({ name: fine, zone: otherZone, disks: [{ name: `${fine}-0` }] });
    server.inject({ action: 'instances.get', status: 503, reason: 'backendError', message: 'zone unavailable' });
    const gets = server.callCount('instances.get');
    const states = await provider.getAttachmentStates([
      { instanceId: idOf(away), volume: { volumeId: `${away}-0` } },
      { instanceId: idOf(awayToo), volume: { volumeId: `${awayToo}-0` } },
      { instanceId: `${otherZone}:${fine}`, volume: { volumeId: `${fine}-0` } },
    ]);
    expect(states[0]).toBeInstanceOf(TransientProviderError);
    expect(states[1]).toBeInstanceOf(TransientProviderError);
    expect((states[1] as Error).message).toMatch(/not read: .* failed a read of this batch/);
    expect(states[2]).toBe('attached');
    expect(server.callCount('instances.get') - gets).toBe(2);
  });

  test("throttling fails the whole batch: the quota is the project's", async () => {
    const provider = gcp();
    const [first, second] = [vm(), vm()];
    server.addInstance({ name: first, disks: [{ name: `${first}-0` }] });
    server.addInstance({ name: second, disks: [{ name: `${second}-0` }] });
    server.throttle(1, { action: 'instances.get' });
    const gets = server.callCount('instances.get');
    await expect(
      provider.getAttachmentStates([
        { instanceId: idOf(first), volume: { volumeId: `${first}-0` } },
        { instanceId: idOf(second), volume: { volumeId: `${second}-0` } },
      ]),
    ).rejects.toBeInstanceOf(ThrottledProviderError);
    expect(server.callCount('instances.get') - gets).toBe(1);
  });
});

describe('gcp provider through the workflow', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({
      extraProviders: [
        gcp(),
        gcp({ name: 'gcp-force', forceByStoppingInstance: true }),
        gcp({ name: 'gcp-late', requestTimeoutMs: 300 }),
      ],
    });
  });
  afterAll(async () => {
    await h?.close();
  });

  test('a healthy stop: every disk detached (boot disk kept), then the instance TERMINATED', async () => {
    const name = vm();
    const [a, b] = [`${name}-a`, `${name}-b`];
    server.addInstance({ name, disks: [{ name: a }, { name: b, detachDelayMs: 300 }], stopDelayMs: 200 });
    await h.stopflow.stop({ instanceId: idOf(name), provider: 'gcp' });
    const result = await h.stopflow.result(idOf(name));
    expect(result.phase).toBe('stopped');
    expect(result.escalation).toBeNull();
    expect(Object.fromEntries(result.volumes.map((v) => [v.volumeId, v.state]))).toEqual({
      [a]: 'detached',
      [b]: 'detached',
    });
    const instance = server.instance(idOf(name));
    expect(instance.status).toBe('TERMINATED');
    expect(instance.disks.map((d) => d.name)).toEqual([`boot-${name}`]);
    expect([instance.stopCalls, instance.hardStopCalls]).toEqual([1, 0]);
  });

  /** Runs a stop with a stuck disk to its failure, and checks that the instance was never stopped. */
  async function expectStopFailed(name: string, stuck: string): Promise<void> {
    const error = await failure(h.stopflow.result(idOf(name)));
    expect(error).toBeInstanceOf(StopFailedError);
    const status = (error as StopFailedError).status;
    expect(status?.phase).toBe('failed');
    expect(status?.instanceStopped).toBe(false);
    const volume = status?.volumes.find((v) => v.volumeId === stuck);
    expect(volume?.state).toBe('failed');
    expect(volume?.lastError).toMatch(/cannot force-detach/);
    const instance = server.instance(idOf(name));
    expect(instance.status).toBe('RUNNING');
    expect([instance.stopCalls, instance.hardStopCalls]).toEqual([0, 0]);
  }

  test('a stuck disk escalated by timeout: force is unsupported, StopFailed, the instance not stopped', async () => {
    const name = vm();
    const [a, stuck] = [`${name}-a`, `${name}-stuck`];
    server.addInstance({ name, disks: [{ name: a }, { name: stuck, stuck: true }] });
    await h.stopflow.stop({ instanceId: idOf(name), provider: 'gcp', maxStopDuration: '2s' });
    await expectStopFailed(name, stuck);
    const status = await h.stopflow.status(idOf(name));
    expect(status.escalation?.cause).toBe('timeout');
    expect(status.volumes.find((v) => v.volumeId === a)?.state).toBe('detached');
  });

  test('a stuck disk escalated by abort: force is unsupported, StopFailed, the instance not stopped', async () => {
    const name = vm();
    const stuck = `${name}-stuck`;
    server.addInstance({ name, disks: [{ name: stuck, stuck: true }] });
    await h.stopflow.stop({ instanceId: idOf(name), provider: 'gcp' });
    await eventually(
      async () => (await h.stopflow.status(idOf(name))).volumes.some((v) => v.state === 'detaching'),
      'the stuck disk to be detaching',
    );
    await h.stopflow.abort(idOf(name), { reason: 'test abort' });
    await expectStopFailed(name, stuck);
    expect((await h.stopflow.status(idOf(name))).escalation?.cause).toBe('abort');
  });

  test('opted in (gcp-force), the stuck disk is forced by stopping the instance, and the stop ends stopped', async () => {
    const name = vm();
    const [a, stuck] = [`${name}-a`, `${name}-stuck`];
    server.addInstance({ name, disks: [{ name: a }, { name: stuck, stuck: true }] });
    await h.stopflow.stop({ instanceId: idOf(name), provider: 'gcp-force', maxStopDuration: '2s' });
    const result = await h.stopflow.result(idOf(name));
    expect(result.phase).toBe('stopped');
    expect(result.escalation?.cause).toBe('timeout');
    expect(Object.fromEntries(result.volumes.map((v) => [v.volumeId, v.state]))).toEqual({
      [a]: 'detached',
      [stuck]: 'force_detached',
    });
    const instance = server.instance(idOf(name));
    expect(instance.status).toBe('TERMINATED');
    expect(instance.hardStopCalls).toBe(1);
    expect(instance.disks.map((d) => d.name)).toEqual([`boot-${name}`]);
  });

  test('throttling and 5xx are retried until the stop completes', async () => {
    const name = vm();
    const [a, b] = [`${name}-a`, `${name}-b`];
    server.addInstance({ name, disks: [{ name: a }, { name: b }] });
    server.throttle(2, { action: 'instances.detachDisk', retryAfterSeconds: 1 });
    server.inject({ action: 'instances.stop', status: 503, reason: 'backendError', times: 2 });
    server.inject({ action: 'instances.get', status: 500, reason: 'backendError', times: 2 });
    await h.stopflow.stop({ instanceId: idOf(name), provider: 'gcp' });
    const result = await h.stopflow.result(idOf(name));
    expect(result.phase).toBe('stopped');
    expect(server.instance(idOf(name)).status).toBe('TERMINATED');
    expect(server.instance(idOf(name)).disks.map((d) => d.name)).toEqual([`boot-${name}`]);
  });

  test('a detach whose answer was lost is retried with its requestId: one operation, completing late', async () => {
    const name = vm();
    const disk = `${name}-data`;
    server.addInstance({ name, disks: [{ name: disk, stuck: true }] });
    server.dropAnswers({ action: 'instances.detachDisk' });
    await h.stopflow.stop({ instanceId: idOf(name), provider: 'gcp-late' });
    const sent = () => server.callsOf('instances.detachDisk').filter((c) => c.path.includes(`/instances/${name}/`));
    // The activity timed out on the lost answer and its retry reached Compute Engine.
    await eventually(async () => sent().length >= 2, 'the detach to be re-sent');
    expect(server.detachOperations(idOf(name), disk)).toHaveLength(1);
    server.unstick(idOf(name), disk); // the one operation completes, late
    const result = await h.stopflow.result(idOf(name));
    expect(result.phase).toBe('stopped');
    expect(new Set(sent().map((c) => c.query.requestId)).size).toBe(1);
    expect(server.detachOperations(idOf(name), disk)).toHaveLength(1);
    // Attached again after the stop: no operation of the stop is left to take it.
    server.attach(idOf(name), { name: disk });
    await pause(300);
    expect(server.isAttached(idOf(name), disk)).toBe(true);
  });
});
