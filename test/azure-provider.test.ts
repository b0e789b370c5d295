/**
 * The azure provider through the real `@azure/arm-compute` (and
 * `@azure/identity`'s types and errors) against a local HTTPS server speaking
 * Azure Resource Manager (test/support/azure-arm-server.ts): the conformance
 * suite, ARM's own answers (the OS disk, unmanaged disks, scale sets,
 * DetachUnattachedDisk), ETag conflicts, the error classification table,
 * stopping, cancellation and timeouts, throttling, coalesced state checks,
 * and stops through the workflow on the dev server.
 */
import { CredentialUnavailableError, type TokenCredential } from '@azure/identity';
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
  AzureProvider,
  type AzureProviderOptions,
  DEFAULT_AZURE_BUDGET,
  DEFAULT_AZURE_MAX_BATCH,
  parseAzureInstanceId,
} from '../activities/providers/azure';
import { StopFailedError } from '../client/stopflow-client';
import { describeProviderConformance } from './conformance/provider-conformance';
import { eventually, type Harness, startHarness } from './helpers';
import { AzureArmServer, type DiskSpec } from './support/azure-arm-server';

const SUBSCRIPTION = '00000000-1111-2222-3333-444444444444';
/** The fixed token the test credential hands out; it must never show in an error. */
const TOKEN = 'stopflow-test-token-3f9c2a71e0';
const credential: TokenCredential = {
  getToken: async () => ({ token: TOKEN, expiresOnTimestamp: Date.now() + 3_600_000 }),
};
const wrongCredential: TokenCredential = {
  getToken: async () => ({ token: 'not-the-right-token', expiresOnTimestamp: Date.now() + 3_600_000 }),
};

let server: AzureArmServer;
let seq = 0;
const nextName = (prefix: string) => `${prefix}-${(++seq).toString(16).padStart(4, '0')}`;

beforeAll(async () => {
  server = await AzureArmServer.start({ subscriptionId: SUBSCRIPTION, token: TOKEN });
});
afterAll(async () => {
  await server?.close();
});

/**
 * A provider against the test server. `retries` is the SDK's own retry count: 0 (the default here) lets each
 * injected error reach the classification.
 */
function azure(options: Partial<AzureProviderOptions> & { retries?: number } = {}): AzureProvider {
  const { retries = 0, ...rest } = options;
  return new AzureProvider({
    subscriptionId: SUBSCRIPTION,
    credential,
    endpoint: server.endpoint,
    clientOptions: { tlsOptions: { ca: server.ca }, retryOptions: { maxRetries: retries } },
    stopPollMs: 20,
    ...rest,
  });
}

/** A VM in a fresh resource group; returns its instance id and names. */
function addVm(disks: DiskSpec[], extra: { stopDelayMs?: number; scaleSet?: boolean } = {}) {
  const resourceGroup = nextName('rg');
  const vmName = nextName('vm');
  const vm = server.addVm({ resourceGroup, name: vmName, disks, ...extra });
  return { instanceId: `${resourceGroup}:${vmName}`, resourceGroup, vmName, vm };
}

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls until `condition` holds (a request reached the server, a poll happened); fails after 10 s. */
async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await pause(10);
  }
}

const errorOf = (promise: Promise<unknown>) =>
  promise.then(
    () => undefined,
    (err: unknown) => err,
  );

/** Every error the tests saw, checked at the end for the token. */
const seenErrors: unknown[] = [];
function seen<T>(err: T): T {
  seenErrors.push(err);
  return err;
}

describeProviderConformance(
  'azure',
  async () => {
    const provider = azure({ retries: 3 });
    return {
      provider,
      missingVolume: { volumeId: 'disk-that-does-not-exist' },
      async createInstance() {
        const [a, slow, stuck] = [nextName('disk'), nextName('disk'), nextName('disk')];
        const { instanceId } = addVm([{ name: a }, { name: slow, detachDelayMs: 200 }, { name: stuck, stuck: true }], {
          stopDelayMs: 100,
        });
        return { instanceId, healthy: [{ volumeId: a }, { volumeId: slow }], stuck: { volumeId: stuck } };
      },
      async instanceStopped(instanceId) {
        const { resourceGroup, vmName } = parseAzureInstanceId(instanceId);
        return server.vm(resourceGroup, vmName).powerState === 'stopped';
      },
      async unstick(instance) {
        server.unstick(instance.stuck.volumeId);
      },
      async createForceRefusingVolume() {
        // An unmanaged (VHD blob) data disk: Azure force-detaches managed data disks only.
        const name = nextName('vhd');
        const { instanceId } = addVm([{ name, managed: false, stuck: true }]);
        return { instanceId, volume: { volumeId: name } };
      },
    };
  },
  { volumesCanRefuseForce: true },
);

describe('azure provider: what Azure answers', () => {
  test('lists the VM’s data disks by name with their LUN, never the OS disk; instance ids are checked', async () => {
    const [a, b] = [nextName('disk'), nextName('disk')];
    const { instanceId, resourceGroup, vm } = addVm([{ name: a }, { name: b }]);
    const provider = azure();
    expect(await provider.listAttachedVolumes(instanceId)).toEqual([
      { volumeId: a, device: 'lun0' },
      { volumeId: b, device: 'lun1' },
    ]);
    expect(await provider.getAttachmentState(instanceId, { volumeId: vm.osDiskName })).toBe('attached');
    for (const bad of ['rg/vm', 'just-a-vm', 'a:b:c', 'rg.:vm', ':vm', 'rg:']) {
      const error = seen(await errorOf(provider.listAttachedVolumes(bad)));
      expect(error, bad).toBeInstanceOf(PermanentProviderError);
      expect((error as Error).message).toMatch(/<resourceGroup>:<vmName>/);
    }
    const before = server.count();
    await errorOf(provider.listAttachedVolumes('rg/vm'));
    expect(server.count()).toBe(before); // refused before any request
    const unknownVm = seen(await errorOf(provider.listAttachedVolumes(`${resourceGroup}:no-such-vm`)));
    expect(unknownVm).toBeInstanceOf(PermanentProviderError);
    expect((unknownVm as Error).message).toMatch(/404 ResourceNotFound/);
    const unknownGroup = seen(await errorOf(provider.listAttachedVolumes('no-such-rg:vm')));
    expect(unknownGroup).toBeInstanceOf(PermanentProviderError);
    expect((unknownGroup as Error).message).toMatch(/ResourceGroupNotFound/);
  });

  test('detach writes the latest model with its ETag and only this disk marked; force adds ForceDetach', async () => {
    const [other, stuck] = [nextName('disk'), nextName('disk')];
    const { instanceId, vmName } = addVm([{ name: other }, { name: stuck, stuck: true }]);
    const provider = azure();
    await provider.detachVolume(instanceId, { volumeId: stuck });
    const [read] = server.requestsOf('getVm', vmName).slice(-1);
    const [write] = server.requestsOf('patchVm', vmName);
    expect(read?.authorized && write?.authorized).toBe(true);
    expect(write?.ifMatch).toBe('"1"'); // the ETag of the model it read
    const sent = (write?.body as { properties: { storageProfile: { dataDisks: Record<string, unknown>[] } } })
      .properties.storageProfile.dataDisks;
    expect(sent.map((d) => [d.name, d.toBeDetached ?? false, d.detachOption])).toEqual([
      [other, false, undefined],
      [stuck, true, undefined],
    ]);
    expect(await provider.getAttachmentState(instanceId, { volumeId: stuck })).toBe('detaching');
    expect(await provider.getAttachmentState(instanceId, { volumeId: other })).toBe('attached');
    // Already under way: no second write.
    await provider.detachVolume(instanceId, { volumeId: stuck });
    expect(server.requestsOf('patchVm', vmName)).toHaveLength(1);

    await provider.forceDetachVolume(instanceId, { volumeId: stuck });
    const forced = server.requestsOf('patchVm', vmName)[1];
    const forcedDisks = (forced?.body as { properties: { storageProfile: { dataDisks: Record<string, unknown>[] } } })
      .properties.storageProfile.dataDisks;
    expect(forcedDisks.find((d) => d.name === stuck)).toMatchObject({
      toBeDetached: true,
      detachOption: 'ForceDetach',
    });
    expect(forcedDisks.find((d) => d.name === other)?.toBeDetached).toBe(false);
    expect(await provider.getAttachmentState(instanceId, { volumeId: stuck })).toBe('detached');
    expect(server.disk(stuck).forced).toBe(true);
    expect(server.disk(other).attachedTo).not.toBeNull();
  });

  test('already detached is success: a disk not on the VM, and DetachUnattachedDisk', async () => {
    const disk = nextName('disk');
    const { instanceId, vmName } = addVm([{ name: disk }]);
    const provider = azure();
    for (const volumeId of ['disk-never-attached', disk.toUpperCase()]) {
      if (volumeId !== 'disk-never-attached') {
        // Disk names are case-insensitive in Azure: the upper-case name is the same disk.
        server.inject({
          op: 'patchVm',
          vm: vmName,
          status: 409,
          code: 'DetachUnattachedDisk',
          message: 'not attached',
        });
      }
      await provider.detachVolume(instanceId, { volumeId });
      await provider.forceDetachVolume(instanceId, { volumeId: 'disk-never-attached' });
    }
    expect(server.requestsOf('patchVm', vmName)).toHaveLength(1); // only the one answered DetachUnattachedDisk
    expect(server.disk(disk).attachedTo).not.toBeNull(); // the injected answer changed nothing on the server
  });

  test('the OS disk is never detached: it reads attached and a detach of it is final', async () => {
    const { instanceId, vm, vmName } = addVm([{ name: nextName('disk') }]);
    const provider = azure();
    for (const call of [provider.detachVolume.bind(provider), provider.forceDetachVolume.bind(provider)]) {
      const error = seen(await errorOf(call(instanceId, { volumeId: vm.osDiskName })));
      expect(error).toBeInstanceOf(PermanentProviderError);
      expect((error as Error).message).toMatch(/OS disk/);
    }
    expect(server.requestsOf('patchVm', vmName)).toHaveLength(0);
  });

  test('force is refused for an unmanaged disk, a VM in a scale set, and when ARM refuses ForceDetach', async () => {
    const provider = azure();
    const vhd = nextName('vhd');
    const unmanaged = addVm([{ name: vhd, managed: false }]);
    const flexDisk = nextName('disk');
    const flex = addVm([{ name: flexDisk }], { scaleSet: true });
    const refusedDisk = nextName('disk');
    const refused = addVm([{ name: refusedDisk }]);
    server.inject({
      op: 'patchVm',
      vm: refused.vmName,
      status: 400,
      code: 'InvalidParameter',
      message: "Property 'detachOption' is not supported for this virtual machine.",
    });
    const cases: [string, string, RegExp][] = [
      [unmanaged.instanceId, vhd, /managed data disks only/],
      [flex.instanceId, flexDisk, /scale set/],
      [refused.instanceId, refusedDisk, /refused ForceDetach: InvalidParameter/],
    ];
    for (const [instanceId, volumeId, message] of cases) {
      const error = seen(await errorOf(provider.forceDetachVolume(instanceId, { volumeId })));
      expect(error, volumeId).toBeInstanceOf(ForceUnsupportedError);
      expect((error as Error).message).toMatch(message);
      // The normal detach still works.
      await provider.detachVolume(instanceId, { volumeId });
      expect(await provider.getAttachmentState(instanceId, { volumeId })).toBe('detached');
    }
  });
});

describe('azure provider: ETag conflicts', () => {
  test('a write that lost the race reads the model again and keeps the other writer’s disk', async () => {
    const disk = nextName('disk');
    const late = nextName('late');
    const { instanceId, resourceGroup, vmName } = addVm([{ name: disk }]);
    server.concurrentWrites(resourceGroup, vmName, 2, late);
    await azure().detachVolume(instanceId, { volumeId: disk });
    const writes = server.requestsOf('patchVm', vmName);
    expect(writes).toHaveLength(3); // 412, 412, accepted
    expect(new Set(writes.map((w) => w.ifMatch)).size).toBe(3); // each with the ETag of a fresh read
    const last = (writes[2]?.body as { properties: { storageProfile: { dataDisks: Record<string, unknown>[] } } })
      .properties.storageProfile.dataDisks;
    expect(last.map((d) => [d.name, d.toBeDetached])).toEqual([
      [disk, true],
      [late, false],
    ]);
    // The disk attached meanwhile is still attached: a blind write of the old list would have detached it.
    expect(server.disk(late).attachedTo).not.toBeNull();
    expect(server.disk(disk).attachedTo).toBeNull();
  });

  test('an ETag only in the response header is used the same way', async () => {
    const disk = nextName('disk');
    const { instanceId, resourceGroup, vmName } = addVm([{ name: disk }]);
    server.etagInBody = false;
    try {
      server.concurrentWrites(resourceGroup, vmName, 1);
      await azure().detachVolume(instanceId, { volumeId: disk });
    } finally {
      server.etagInBody = true;
    }
    const writes = server.requestsOf('patchVm', vmName);
    expect(writes.map((w) => w.ifMatch)).toEqual(['"1"', '"2"']);
    expect(server.disk(disk).attachedTo).toBeNull();
  });

  test('a model that keeps changing fails transiently after maxConflictRetries', async () => {
    const disk = nextName('disk');
    const { instanceId, resourceGroup, vmName } = addVm([{ name: disk }]);
    server.concurrentWrites(resourceGroup, vmName, 100);
    const error = seen(await errorOf(azure({ maxConflictRetries: 2 }).detachVolume(instanceId, { volumeId: disk })));
    expect(error).toBeInstanceOf(TransientProviderError);
    expect(error).not.toBeInstanceOf(ThrottledProviderError);
    expect((error as Error).message).toMatch(/412 PreconditionFailed 3 times/);
    expect(server.requestsOf('patchVm', vmName)).toHaveLength(3);
    server.concurrentWrites(resourceGroup, vmName, 0);
  });
});

describe('azure provider: error classification', () => {
  test('each row of the table, against the server', async () => {
    const disk = nextName('disk');
    const { instanceId, vmName } = addVm([{ name: disk }]);
    const provider = azure();
    const rows: {
      status: number;
      code: string;
      headers?: Record<string, string>;
      type: new (...args: never[]) => Error;
      retryAfterMs?: number;
    }[] = [
      {
        status: 429,
        code: 'TooManyRequests',
        headers: { 'Retry-After': '3' },
        type: ThrottledProviderError,
        retryAfterMs: 3_000,
      },
      {
        status: 429,
        code: 'OperationNotAllowed',
        headers: { 'x-ms-retry-after-ms': '1500' },
        type: ThrottledProviderError,
        retryAfterMs: 1_500,
      },
      { status: 429, code: 'TooManyRequests', type: ThrottledProviderError },
      { status: 500, code: 'InternalServerError', type: TransientProviderError },
      { status: 502, code: 'BadGateway', type: TransientProviderError },
      { status: 503, code: 'ServiceUnavailable', type: TransientProviderError },
      { status: 504, code: 'GatewayTimeout', type: TransientProviderError },
      { status: 408, code: 'RequestTimeout', type: TransientProviderError },
      { status: 409, code: 'OperationNotAllowed', type: TransientProviderError },
      { status: 409, code: 'Conflict', type: TransientProviderError },
      { status: 401, code: 'ExpiredAuthenticationToken', type: TransientProviderError },
      { status: 401, code: 'InvalidAuthenticationToken', type: PermanentProviderError },
      { status: 403, code: 'AuthorizationFailed', type: PermanentProviderError },
      { status: 404, code: 'ResourceNotFound', type: PermanentProviderError },
      { status: 400, code: 'InvalidParameter', type: PermanentProviderError },
    ];
    for (const row of rows) {
      server.inject({
        op: 'getVm',
        vm: vmName,
        status: row.status,
        code: row.code,
        ...(row.headers ? { headers: row.headers } : {}),
      });
      const error = seen(await errorOf(provider.getAttachmentState(instanceId, { volumeId: disk })));
      const label = `${row.status} ${row.code}`;
      expect(error, label).toBeInstanceOf(row.type);
      if (row.type === TransientProviderError) expect(error, label).not.toBeInstanceOf(ThrottledProviderError);
      expect((error as Error).message, label).toContain(`${row.status} ${row.code}`);
      if (row.type === ThrottledProviderError) {
        expect((error as ThrottledProviderError).retryAfterMs, label).toBe(row.retryAfterMs);
      }
    }
    // An HTTP-date Retry-After.
    const at = new Date(Date.now() + 60_000).toUTCString();
    server.inject({ op: 'patchVm', vm: vmName, status: 429, code: 'TooManyRequests', headers: { 'Retry-After': at } });
    const dated = seen(await errorOf(provider.detachVolume(instanceId, { volumeId: disk })));
    expect(dated).toBeInstanceOf(ThrottledProviderError);
    expect((dated as ThrottledProviderError).retryAfterMs).toBeGreaterThan(0);
    expect((dated as ThrottledProviderError).retryAfterMs).toBeLessThanOrEqual(60_000);
    // The fixes are in the messages.
    server.inject({ op: 'getVm', status: 403, code: 'AuthorizationFailed' });
    expect(seen(await errorOf(provider.listAttachedVolumes(instanceId)))).toSatisfy(
      (err: unknown) => err instanceof PermanentProviderError && /Virtual Machine Contributor/.test(err.message),
    );

    // A token ARM does not accept, for real (not injected): final, with how credentials are found.
    const refused = seen(await errorOf(azure({ credential: wrongCredential }).listAttachedVolumes(instanceId)));
    expect(refused).toBeInstanceOf(PermanentProviderError);
    expect((refused as Error).message).toMatch(/401 InvalidAuthenticationToken.*DefaultAzureCredential/);
    // No credential at all (DefaultAzureCredential found nothing): final.
    const unavailable: TokenCredential = {
      getToken: async () => {
        throw new CredentialUnavailableError('no credential in this environment');
      },
    };
    const noToken = seen(await errorOf(azure({ credential: unavailable }).listAttachedVolumes(instanceId)));
    expect(noToken).toBeInstanceOf(PermanentProviderError);
    expect((noToken as Error).message).toMatch(/CredentialUnavailableError.*AZURE_CLIENT_ID/);
    // A certificate the worker does not trust (no tlsOptions.ca): final, and nothing reached the server.
    const before = server.count();
    const untrusted = new AzureProvider({ subscriptionId: SUBSCRIPTION, credential, endpoint: server.endpoint });
    const tls = seen(await errorOf(untrusted.listAttachedVolumes(instanceId)));
    expect(tls).toBeInstanceOf(PermanentProviderError);
    expect((tls as Error).message).toMatch(/SELF_SIGNED.*NODE_EXTRA_CA_CERTS/);
    expect(server.count()).toBe(before);
    // Nothing listening: transient (the endpoint may come back).
    const closed = azure({ endpoint: 'https://127.0.0.1:9' });
    expect(seen(await errorOf(closed.listAttachedVolumes(instanceId)))).toBeInstanceOf(TransientProviderError);
    // An answer that never comes: transient after requestTimeoutMs.
    server.hang({ op: 'getVm' });
    const timedOut = seen(await errorOf(azure({ requestTimeoutMs: 300 }).listAttachedVolumes(instanceId)));
    expect(timedOut).toBeInstanceOf(TransientProviderError);
    expect(await provider.getAttachmentState(instanceId, { volumeId: disk })).toBe('attached');
  });

  test('the SDK retries 5xx and honours Retry-After itself before anything reaches the workflow', async () => {
    const disk = nextName('disk');
    const { instanceId, vmName } = addVm([{ name: disk }]);
    const provider = azure({ retries: 3 });
    server.inject({ op: 'getVm', vm: vmName, status: 503, code: 'ServiceUnavailable' });
    server.inject({ op: 'patchVm', vm: vmName, status: 429, code: 'TooManyRequests', headers: { 'Retry-After': '1' } });
    await provider.detachVolume(instanceId, { volumeId: disk });
    expect(server.requestsOf('getVm', vmName)).toHaveLength(2);
    const writes = server.requestsOf('patchVm', vmName);
    expect(writes).toHaveLength(2);
    // The retry waited out the server's Retry-After (a lower bound only).
    expect((writes[1]?.at ?? 0) - (writes[0]?.at ?? 0)).toBeGreaterThanOrEqual(900);
    expect(await provider.getAttachmentState(instanceId, { volumeId: disk })).toBe('detached');
  });

  test('no error, message or string form carries the bearer token', () => {
    expect(seenErrors.length).toBeGreaterThan(20);
    for (const err of seenErrors) {
      const e = err as Error;
      const text = [e.message, String(e), JSON.stringify(e), e.stack ?? ''].join('\n');
      expect(text).not.toContain(TOKEN);
      // Provider errors are built anew: no SDK error (which holds the request and its headers) hangs off them.
      expect((e as { cause?: unknown }).cause).toBeUndefined();
    }
  });
});

describe('azure provider: stopping and the start-up check', () => {
  test('stopInstance powers off gracefully and waits for stopped; again sends nothing; past stopWaitMs it is transient', async () => {
    const { instanceId, vm } = addVm([], { stopDelayMs: 300 });
    const provider = azure();
    await provider.stopInstance(instanceId);
    expect(vm.powerState).toBe('stopped');
    expect(vm.powerOffSkipShutdown).toEqual([false]); // graceful: the guest shuts down
    await provider.stopInstance(instanceId);
    expect(vm.powerOffCalls).toBe(1);
    vm.powerState = 'deallocated';
    await provider.stopInstance(instanceId);
    expect(vm.powerOffCalls).toBe(1);

    const slow = addVm([], { stopDelayMs: 60_000 });
    const impatient = azure({ stopWaitMs: 200 });
    const error = seen(await errorOf(impatient.stopInstance(slow.instanceId)));
    expect(error).toBeInstanceOf(TransientProviderError);
    expect((error as Error).message).toMatch(/still stopping/);
    expect(seen(await errorOf(impatient.stopInstance(`${slow.resourceGroup}:gone`)))).toBeInstanceOf(
      PermanentProviderError,
    );
    // Started again by someone else while it waited: asked again.
    const restarted = addVm([], { stopDelayMs: 60_000 });
    const pending = azure({ stopPollMs: 20 }).stopInstance(restarted.instanceId);
    await until(() => restarted.vm.powerOffCalls === 1, 'the first powerOff');
    restarted.vm.powerState = 'running';
    await until(() => restarted.vm.powerOffCalls === 2, 'powerOff asked again');
    restarted.vm.powerState = 'stopped';
    await pending;
  });

  test('checkUsable: a token and an enabled subscription pass; otherwise a clear error with the fix', async () => {
    await azure().checkUsable();
    expect(server.requestsOf('getSubscription').at(-1)?.authorized).toBe(true);
    await expect(azure({ subscriptionId: '99999999-1111-2222-3333-444444444444' }).checkUsable()).rejects.toThrow(
      /SubscriptionNotFound.*AZURE_SUBSCRIPTION_ID/,
    );
    await expect(azure({ credential: wrongCredential }).checkUsable()).rejects.toThrow(
      /InvalidAuthenticationToken.*az login/,
    );
    server.subscriptionState = 'Disabled';
    try {
      await expect(azure().checkUsable()).rejects.toThrow(/is Disabled/);
    } finally {
      server.subscriptionState = 'Enabled';
    }
    expect(() => new AzureProvider({ subscriptionId: 'not-a-guid', credential })).toThrow(/AZURE_SUBSCRIPTION_ID/);
  });
});

describe('azure provider: cancellation', () => {
  test('every call rejects at once with the signal’s reason while ARM does not answer', async () => {
    const disk = nextName('disk');
    const { instanceId } = addVm([{ name: disk }]);
    // The default request timeout (30 s) is far longer than this test's: only the signal can end these calls.
    const provider = azure();
    const calls: [
      string,
      'getVm' | 'patchVm' | 'instanceView' | 'powerOff',
      (signal: AbortSignal) => Promise<unknown>,
    ][] = [
      ['list', 'getVm', (signal) => provider.listAttachedVolumes(instanceId, { signal })],
      ['detach (read)', 'getVm', (signal) => provider.detachVolume(instanceId, { volumeId: disk }, { signal })],
      ['detach (write)', 'patchVm', (signal) => provider.detachVolume(instanceId, { volumeId: disk }, { signal })],
      ['force (write)', 'patchVm', (signal) => provider.forceDetachVolume(instanceId, { volumeId: disk }, { signal })],
      ['state', 'getVm', (signal) => provider.getAttachmentState(instanceId, { volumeId: disk }, { signal })],
      [
        'states',
        'getVm',
        (signal) => provider.getAttachmentStates([{ instanceId, volume: { volumeId: disk } }], { signal }),
      ],
      ['stop (view)', 'instanceView', (signal) => provider.stopInstance(instanceId, { signal })],
      ['stop (powerOff)', 'powerOff', (signal) => provider.stopInstance(instanceId, { signal })],
    ];
    for (const [label, op, call] of calls) {
      server.hang({ op });
      const before = server.hungCalls;
      const controller = new AbortController();
      const reason = new Error(`activity cancelled (${label})`);
      const pending = errorOf(call(controller.signal));
      await until(() => server.hungCalls > before, `${label} to reach the server`);
      controller.abort(reason);
      expect(await pending, label).toBe(reason);
    }
    // Already aborted: nothing is sent.
    const sent = server.count();
    const aborted = AbortSignal.abort(new Error('cancelled before the call'));
    await expect(provider.getAttachmentState(instanceId, { volumeId: disk }, { signal: aborted })).rejects.toThrow(
      /cancelled before the call/,
    );
    expect(server.count()).toBe(sent);
  });

  test('the stop wait loop ends on the signal', async () => {
    const { instanceId, vmName } = addVm([], { stopDelayMs: 600_000 });
    const provider = azure({ stopPollMs: 20 });
    const controller = new AbortController();
    const pending = errorOf(provider.stopInstance(instanceId, { signal: controller.signal }));
    const polls = () => server.requestsOf('instanceView', vmName).length;
    await until(() => polls() >= 3, 'the stop loop to poll');
    const reason = new Error('stop cancelled');
    controller.abort(reason);
    expect(await pending).toBe(reason);
    const after = polls();
    await pause(100);
    expect(polls()).toBe(after); // no poll after the abort
  });
});

describe('azure provider: call budget and coalesced state checks', () => {
  test('declares a call budget and a batch size, both configurable', () => {
    const provider = azure();
    expect(provider.budget).toEqual(DEFAULT_AZURE_BUDGET);
    expect(provider.maxBatch).toBe(DEFAULT_AZURE_MAX_BATCH);
    const tuned = azure({ budget: { callsPerSecond: 20, burst: 100 }, maxBatch: 10 });
    expect(tuned.budget).toEqual({ callsPerSecond: 20, burst: 100 });
    expect(tuned.maxBatch).toBe(10);
  });

  test('many disks of several VMs: one GET per VM, the same answers as one by one', async () => {
    const provider = azure();
    const targets: VolumeOfInstance[] = [];
    const vmNames: string[] = [];
    for (let i = 0; i < 3; i++) {
      const disks = Array.from({ length: 6 }, (_, j) => ({ name: nextName('disk'), stuck: j % 3 === 1 }));
      const { instanceId, vmName } = addVm(disks);
      vmNames.push(vmName);
      for (const [j, d] of disks.entries()) {
        // 0: attached, 1: detaching (stuck), 2: detached
        if (j % 3 !== 0) await provider.detachVolume(instanceId, { volumeId: d.name });
        targets.push({ instanceId, volume: { volumeId: d.name } });
      }
      targets.push({ instanceId, volume: { volumeId: 'not-on-this-vm' } });
    }
    const one: AttachmentState[] = [];
    for (const t of targets) one.push(await provider.getAttachmentState(t.instanceId, t.volume));
    expect(new Set(one)).toEqual(new Set(['attached', 'detaching', 'detached']));
    const before = vmNames.map((name) => server.requestsOf('getVm', name).length);
    expect(await provider.getAttachmentStates(targets)).toEqual(one);
    expect(vmNames.map((name, i) => server.requestsOf('getVm', name).length - (before[i] ?? 0))).toEqual([1, 1, 1]);
    expect(await provider.getAttachmentStates([])).toEqual([]);
  });

  test('a VM that cannot be read answers its disks with the error; the batch answers the others', async () => {
    const provider = azure();
    const [awayDisk, fineDisk] = [nextName('disk'), nextName('disk')];
    const away = addVm([{ name: awayDisk }]);
    const fine = addVm([{ name: fineDisk }]);
    server.inject({ op: 'getVm', vm: away.vmName, status: 503, code: 'ServiceUnavailable' });
    const states = await provider.getAttachmentStates([
      { instanceId: away.instanceId, volume: { volumeId: awayDisk } },
      { instanceId: fine.instanceId, volume: { volumeId: fineDisk } },
    ]);
    expect(states[0]).toBeInstanceOf(TransientProviderError);
    expect(states[1]).toBe('attached');
  });

  test("throttling fails the whole batch: the limit is the subscription's", async () => {
    const provider = azure();
    const [firstDisk, secondDisk] = [nextName('disk'), nextName('disk')];
    const first = addVm([{ name: firstDisk }]);
    const second = addVm([{ name: secondDisk }]);
    server.inject({ op: 'getVm', vm: first.vmName, status: 429, code: 'TooManyRequests' });
    await expect(
      provider.getAttachmentStates([
        { instanceId: first.instanceId, volume: { volumeId: firstDisk } },
        { instanceId: second.instanceId, volume: { volumeId: secondDisk } },
      ]),
    ).rejects.toBeInstanceOf(ThrottledProviderError);
    expect(server.requestsOf('getVm', second.vmName)).toHaveLength(0);
  });
});

describe('azure provider through the workflow', () => {
  let h: Harness;
  beforeAll(async () => {
    // SDK retries off: throttling and 5xx reach the activities, whose retries (and call budget) handle them.
    h = await startHarness({ extraProviders: [azure({ stopPollMs: 50 })] });
  });
  afterAll(async () => {
    await h?.close();
  });

  test('a healthy stop: the discovered disks detach, then the VM is powered off', async () => {
    const [a, slow] = [nextName('disk'), nextName('disk')];
    const { instanceId, vm } = addVm([{ name: a }, { name: slow, detachDelayMs: 500 }], { stopDelayMs: 200 });
    await h.stopflow.stop({ instanceId, provider: 'azure' });
    const result = await h.stopflow.result(instanceId);
    expect(result.phase).toBe('stopped');
    expect(result.escalation).toBeNull();
    expect(Object.fromEntries(result.volumes.map((v) => [v.volumeId, v.state]))).toEqual({
      [a]: 'detached',
      [slow]: 'detached',
    });
    expect(server.disk(a).forced || server.disk(slow).forced).toBe(false);
    expect(server.dataDisksOf(vm)).toEqual([]);
    expect(vm.powerState).toBe('stopped');
    expect(vm.powerOffSkipShutdown).toEqual([false]);
  });

  test('a stuck disk is forced at maxStopDuration, the others detach normally, the VM stops', async () => {
    const [a, stuck] = [nextName('disk'), nextName('disk')];
    const { instanceId, vm } = addVm([{ name: a }, { name: stuck, stuck: true }], { stopDelayMs: 200 });
    await h.stopflow.stop({ instanceId, provider: 'azure', maxStopDuration: '2s' });
    const result = await h.stopflow.result(instanceId);
    expect(result.phase).toBe('stopped');
    expect(result.escalation?.cause).toBe('timeout');
    expect(Object.fromEntries(result.volumes.map((v) => [v.volumeId, v.state]))).toEqual({
      [a]: 'detached',
      [stuck]: 'force_detached',
    });
    expect(server.disk(stuck).forced).toBe(true);
    expect(server.disk(a).forced).toBe(false);
    expect(vm.powerState).toBe('stopped');
  });

  test('a stuck disk is forced on abort', async () => {
    const [a, stuck] = [nextName('disk'), nextName('disk')];
    const { instanceId, vm } = addVm([{ name: a }, { name: stuck, stuck: true }]);
    await h.stopflow.stop({ instanceId, provider: 'azure', maxStopDuration: '1h' });
    await eventually(
      async () => server.disk(stuck).detachRequests > 0 && server.disk(a).attachedTo === null,
      'the stuck disk to be detaching and the other detached',
    );
    await h.stopflow.abort(instanceId, { reason: 'maintenance window over' });
    const result = await h.stopflow.result(instanceId);
    expect(result.phase).toBe('stopped');
    expect(result.escalation?.cause).toBe('abort');
    expect(Object.fromEntries(result.volumes.map((v) => [v.volumeId, v.state]))).toEqual({
      [a]: 'detached',
      [stuck]: 'force_detached',
    });
    expect(server.disk(stuck).forced).toBe(true);
    expect(vm.powerState).toBe('stopped');
  });

  test('a force that cannot work fails the stop (StopFailed) and the VM is not stopped', async () => {
    // An unmanaged disk refuses force (ForceUnsupported); a managed one whose ForceDetach ARM rejects (final).
    const vhd = nextName('vhd');
    const unmanaged = addVm([{ name: vhd, managed: false, stuck: true }]);
    const managed = nextName('disk');
    const rejected = addVm([
      {
        name: managed,
        stuck: true,
        forceError: { status: 400, code: 'BadRequest', message: 'The disk could not be released by the host.' },
      },
    ]);
    await h.stopflow.stop({ instanceId: unmanaged.instanceId, provider: 'azure', maxStopDuration: '1s' });
    await h.stopflow.stop({ instanceId: rejected.instanceId, provider: 'azure', maxStopDuration: '1s' });
    for (const [{ instanceId, vm }, disk] of [
      [unmanaged, vhd],
      [rejected, managed],
    ] as const) {
      const failed = await errorOf(h.stopflow.result(instanceId));
      expect(failed, instanceId).toBeInstanceOf(StopFailedError);
      expect((failed as StopFailedError).status).toMatchObject({ phase: 'failed', instanceStopped: false });
      expect((failed as StopFailedError).status?.volumes.map((v) => [v.volumeId, v.state])).toEqual([[disk, 'failed']]);
      expect(vm.powerOffCalls).toBe(0);
      expect(vm.powerState).toBe('running');
      expect(server.disk(disk).attachedTo).toBe(vm.key);
    }
  });

  test('throttling (its Retry-After honoured) and 5xx are retried; the stop completes', async () => {
    const disk = nextName('disk');
    const { instanceId, vm, vmName } = addVm([{ name: disk }]);
    server.inject({ op: 'getVm', vm: vmName, status: 429, code: 'TooManyRequests', headers: { 'Retry-After': '1' } });
    server.inject({ op: 'patchVm', vm: vmName, status: 500, code: 'InternalServerError' });
    server.inject({ op: 'powerOff', vm: vmName, status: 503, code: 'ServiceUnavailable' });
    await h.stopflow.stop({ instanceId, provider: 'azure' });
    const result = await h.stopflow.result(instanceId);
    expect(result.phase).toBe('stopped');
    expect(result.volumes.map((v) => [v.volumeId, v.state])).toEqual([[disk, 'detached']]);
    expect(vm.powerState).toBe('stopped');
    const about = server.requests.filter((r) => r.path.toLowerCase().includes(`/virtualmachines/${vmName}`));
    // The throttled read came first; the next request about this VM waited out its Retry-After (a lower bound).
    expect(about[0]?.op).toBe('getVm');
    expect((about[1]?.at ?? 0) - (about[0]?.at ?? 0)).toBeGreaterThanOrEqual(900);
    expect(server.requestsOf('patchVm', vmName)).toHaveLength(2); // the 500, then the write that took
    expect(vm.powerOffCalls).toBe(1); // the 503 never reached the VM
    expect(server.requestsOf('powerOff', vmName)).toHaveLength(2);
  });
});
