/**
 * The aws provider through the real `@aws-sdk/client-ec2` against a local
 * server speaking the EC2 Query API (test/support/ec2-query-server.ts):
 * the conformance suite, EC2's own answers (already detached, busy,
 * IncorrectState), error classification, stopping, cancellation and timeouts,
 * throttling, coalesced state checks, and one stop through the workflow on the
 * dev server.
 */
import { EC2Client } from '@aws-sdk/client-ec2';
import { MockActivityEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { createActivities } from '../activities';
import {
  type AttachmentState,
  PermanentProviderError,
  refusedRequest,
  ThrottledProviderError,
  TransientProviderError,
  type VolumeOfInstance,
} from '../activities/provider';
import { AwsProvider, DEFAULT_AWS_BUDGET, DEFAULT_AWS_MAX_BATCH } from '../activities/providers/aws';
import { describeProviderConformance } from './conformance/provider-conformance';
import { type Harness, startHarness } from './helpers';
import { Ec2QueryServer } from './support/ec2-query-server';

// Credentials and region through the standard chain (environment), as a worker would get them.
const ACCESS_KEY_ID = 'AKIDSTOPFLOWTEST';
process.env.AWS_ACCESS_KEY_ID = ACCESS_KEY_ID;
process.env.AWS_SECRET_ACCESS_KEY = 'stopflow-test-secret';
process.env.AWS_REGION = 'us-east-1';
process.env.AWS_EC2_METADATA_DISABLED = 'true';
delete process.env.AWS_PROFILE;
delete process.env.AWS_SESSION_TOKEN;

let server: Ec2QueryServer;
let seq = 0;
const nextId = (prefix: string) => `${prefix}-${(++seq).toString(16).padStart(8, '0')}`;

beforeAll(async () => {
  server = await Ec2QueryServer.start({ expectAccessKeyId: ACCESS_KEY_ID });
});
afterAll(async () => {
  await server?.close();
});

/** A provider whose client does not retry, so each injected error reaches the classification. */
function noRetryProvider(options: { accessKeyId?: string; maxBatch?: number } = {}): AwsProvider {
  const client = new EC2Client({
    region: 'us-east-1',
    endpoint: server.endpoint,
    maxAttempts: 1,
    credentials: { accessKeyId: options.accessKeyId ?? ACCESS_KEY_ID, secretAccessKey: 'stopflow-test-secret' },
  });
  return new AwsProvider({
    client,
    stopPollMs: 20,
    ...(options.maxBatch !== undefined ? { maxBatch: options.maxBatch } : {}),
  });
}

/** The provider as the worker builds it: its own client, which retries as the SDK does by default (3 tries). */
function retryingProvider(): AwsProvider {
  return new AwsProvider({ endpoint: server.endpoint, stopPollMs: 20 });
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

describeProviderConformance('aws', async () => {
  const provider = new AwsProvider({ endpoint: server.endpoint, stopPollMs: 20 });
  return {
    provider,
    missingVolume: { volumeId: 'vol-0000000000000dead' },
    async createInstance() {
      const instanceId = nextId('i');
      const [a, slow, stuck] = [nextId('vol'), nextId('vol'), nextId('vol')];
      server.addInstance({
        instanceId,
        volumes: [{ volumeId: a }, { volumeId: slow, detachDelayMs: 200 }, { volumeId: stuck, stuck: true }],
        stopDelayMs: 100,
      });
      return { instanceId, healthy: [{ volumeId: a }, { volumeId: slow }], stuck: { volumeId: stuck } };
    },
    async instanceStopped(instanceId) {
      return server.instance(instanceId).state === 'stopped';
    },
    async unstick(instance) {
      server.unstick(instance.stuck.volumeId);
    },
  };
});

describe('aws provider: what EC2 answers', () => {
  test('lists the instance’s EBS volumes with their devices, never the root volume', async () => {
    const instanceId = nextId('i');
    const [a, b] = [nextId('vol'), nextId('vol')];
    server.addInstance({
      instanceId,
      volumes: [
        { volumeId: a, device: '/dev/sdf' },
        { volumeId: b, device: '/dev/sdg' },
      ],
    });
    const provider = noRetryProvider();
    expect(await provider.listAttachedVolumes(instanceId)).toEqual([
      { volumeId: a, device: '/dev/sdf' },
      { volumeId: b, device: '/dev/sdg' },
    ]);
    await expect(provider.listAttachedVolumes('i-00000000000000000')).rejects.toBeInstanceOf(PermanentProviderError);
  });

  test('a busy attachment reads detaching; force sends DetachVolume with Force', async () => {
    const instanceId = nextId('i');
    const volumeId = nextId('vol');
    server.addInstance({ instanceId, volumes: [{ volumeId, stuck: 'busy' }] });
    const provider = noRetryProvider();
    await provider.detachVolume(instanceId, { volumeId });
    expect(server.volume(volumeId).attachments[0]?.state).toBe('busy');
    expect(await provider.getAttachmentState(instanceId, { volumeId })).toBe('detaching');
    // Asking again answers IncorrectState ("in the 'busy' state"): classified as already under way.
    await provider.detachVolume(instanceId, { volumeId });
    expect(await provider.forceDetachVolume(instanceId, { volumeId })).toBe('sent');
    const forced = server
      .callsOf('DetachVolume')
      .filter((c) => c.params.VolumeId === volumeId && c.params.Force === 'true');
    expect(forced).toHaveLength(1);
    expect(forced[0]?.params.InstanceId).toBe(instanceId);
    expect(await provider.getAttachmentState(instanceId, { volumeId })).toBe('detached');
  });

  test('already detached is success, and a force says nothing was forced: volume available, attached elsewhere, or gone', async () => {
    const provider = noRetryProvider();
    const instanceId = nextId('i');
    const other = nextId('i');
    const elsewhere = nextId('vol');
    server.addInstance({ instanceId, volumes: [] });
    server.addInstance({ instanceId: other, volumes: [{ volumeId: elsewhere }] });
    const available = server.addAvailableVolume(nextId('vol')).volumeId;
    for (const volumeId of [available, elsewhere, 'vol-0000000000000gone']) {
      await provider.detachVolume(instanceId, { volumeId });
      expect(await provider.forceDetachVolume(instanceId, { volumeId })).toBe('not-attached');
      expect(await provider.getAttachmentState(instanceId, { volumeId })).toBe('detached');
    }
    // The volume attached to the other instance was left alone.
    expect(server.volume(elsewhere).attachments).toEqual([
      expect.objectContaining({ instanceId: other, state: 'attached' }),
    ]);
  });

  test('IncorrectState on a volume that stays attached (the root volume) is final', async () => {
    const instanceId = nextId('i');
    server.addInstance({ instanceId, rootVolumeId: `vol-root-${instanceId}` });
    const error = await noRetryProvider()
      .detachVolume(instanceId, { volumeId: `vol-root-${instanceId}` })
      .catch((err: unknown) => err);
    expect(error).toBeInstanceOf(PermanentProviderError);
    expect((error as Error).message).toMatch(/IncorrectState.*root volume/);
  });

  test('throttling, 5xx and network errors are transient; auth and permission errors are final', async () => {
    const instanceId = nextId('i');
    const volumeId = nextId('vol');
    server.addInstance({ instanceId, volumes: [{ volumeId }] });
    const provider = noRetryProvider();
    const cases = [
      { status: 503, code: 'RequestLimitExceeded', type: TransientProviderError },
      { status: 400, code: 'Throttling', type: TransientProviderError },
      { status: 500, code: 'InternalError', type: TransientProviderError },
      { status: 503, code: 'Unavailable', type: TransientProviderError },
      { status: 502, code: 'SomethingNew', type: TransientProviderError },
      { status: 401, code: 'AuthFailure', type: PermanentProviderError },
      { status: 403, code: 'UnauthorizedOperation', type: PermanentProviderError },
      { status: 400, code: 'InvalidVolumeID.Malformed', type: PermanentProviderError },
    ];
    for (const { status, code, type } of cases) {
      server.inject({ action: 'DescribeVolumes', status, code, message: `injected ${code}` });
      const error = await provider.getAttachmentState(instanceId, { volumeId }).catch((err: unknown) => err);
      expect(error, code).toBeInstanceOf(type);
      expect((error as Error).message).toContain(code);
    }
    // Wrong credentials: EC2 answers AuthFailure for real, not an injection.
    await expect(
      noRetryProvider({ accessKeyId: 'AKIDWRONG' }).detachVolume(instanceId, { volumeId }),
    ).rejects.toBeInstanceOf(PermanentProviderError);
    // Nothing listening: transient (the endpoint may come back).
    const closed = new AwsProvider({
      client: new EC2Client({ region: 'us-east-1', endpoint: 'http://127.0.0.1:9', maxAttempts: 1 }),
    });
    await expect(closed.getAttachmentState(instanceId, { volumeId })).rejects.toBeInstanceOf(TransientProviderError);
    expect(await provider.getAttachmentState(instanceId, { volumeId })).toBe('attached');
  });

  test('the SDK retries throttling and 5xx itself before anything reaches the workflow', async () => {
    const instanceId = nextId('i');
    const volumeId = nextId('vol');
    server.addInstance({ instanceId, volumes: [{ volumeId }] });
    const provider = new AwsProvider({ endpoint: server.endpoint }); // default client: standard retry mode
    server.inject({ action: 'DetachVolume', status: 503, code: 'ServiceUnavailable', times: 1 });
    server.inject({ action: 'DetachVolume', status: 503, code: 'RequestLimitExceeded', times: 1 });
    await provider.detachVolume(instanceId, { volumeId });
    expect(server.volume(volumeId).detachCalls).toBe(1);
    expect(server.callsOf('DetachVolume').filter((c) => c.params.VolumeId === volumeId)).toHaveLength(3);
  });

  test('stopInstance waits for stopped, and gives up transiently past stopWaitMs', async () => {
    const instanceId = nextId('i');
    server.addInstance({ instanceId, stopDelayMs: 300 });
    await noRetryProvider().stopInstance(instanceId);
    expect(server.instance(instanceId).state).toBe('stopped');
    expect(server.callsOf('DescribeInstances').some((c) => c.params['InstanceId.1'] === instanceId)).toBe(true);

    const slow = nextId('i');
    server.addInstance({ instanceId: slow, stopDelayMs: 60_000 });
    const impatient = new AwsProvider({ endpoint: server.endpoint, stopPollMs: 20, stopWaitMs: 200 });
    const error = await impatient.stopInstance(slow).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(TransientProviderError);
    expect((error as Error).message).toMatch(/still stopping/);
    await expect(impatient.stopInstance('i-00000000000000000')).rejects.toBeInstanceOf(PermanentProviderError);
  });

  test('stopInstance takes a budget token for every request after its first: each DescribeInstances poll', async () => {
    const instanceId = nextId('i');
    server.addInstance({ instanceId, stopDelayMs: 300 });
    let tokens = 0;
    await noRetryProvider().stopInstance(instanceId, { nextRequest: async () => void tokens++ });
    const requests = [...server.callsOf('StopInstances'), ...server.callsOf('DescribeInstances')].filter(
      (c) => c.params['InstanceId.1'] === instanceId,
    );
    expect(requests.length).toBeGreaterThan(2);
    expect(tokens).toBe(requests.length - 1);
  });

  test('checkUsable makes a DryRun call: fine with good credentials, a clear error with bad ones', async () => {
    await new AwsProvider({ endpoint: server.endpoint }).checkUsable();
    await expect(noRetryProvider({ accessKeyId: 'AKIDWRONG' }).checkUsable()).rejects.toThrow(/AuthFailure/);
  });
});

describe('aws provider: the force-detach activity', () => {
  /** The worker's activities over this provider alone, and the EC2 calls one force attempt made. */
  async function forceAttempt(
    volumeId: string,
    instanceId: string,
    heartbeatDetails?: unknown,
    provider: AwsProvider = noRetryProvider(),
  ) {
    const activities = createActivities({
      providers: new Map([[provider.name, provider]]),
      defaultProvider: provider.name,
      pollIntervalMs: 50,
    });
    const env = new MockActivityEnvironment({
      heartbeatTimeoutMs: 10_000,
      ...(heartbeatDetails ? { attempt: 2, heartbeatDetails } : {}),
    });
    const before = server.calls.length;
    const result = await env.run(activities.forceDetachVolume, { instanceId, volume: { volumeId }, provider: 'aws' });
    const calls = server.calls.slice(before).filter((c) => c.params.VolumeId === volumeId || 'VolumeId.1' in c.params);
    return { result, actions: calls.map((c) => `${c.action}${c.params.Force === 'true' ? ' (Force)' : ''}`) };
  }

  /** An instance with one volume whose detach request EC2 took and that stays detaching until forced. */
  async function stuckDetaching() {
    const instanceId = nextId('i');
    const stuck = nextId('vol');
    server.addInstance({ instanceId, volumes: [{ volumeId: stuck, stuck: true }] });
    await noRetryProvider().detachVolume(instanceId, { volumeId: stuck });
    return { instanceId, stuck };
  }

  test('sends its first force unread (EC2 refuses one of a volume not attached): one call fewer before the force', async () => {
    const { instanceId, stuck } = await stuckDetaching();
    const { result, actions } = await forceAttempt(stuck, instanceId);
    expect(result).toMatchObject({ forced: true, attempts: 1 });
    expect(actions[0]).toBe('DetachVolume (Force)');
    expect(server.volume(stuck).forced).toBe(true);
  });

  test('a volume the graceful detach freed before the force is `detached`: EC2 refused the force, nothing was forced', async () => {
    const instanceId = nextId('i');
    server.addInstance({ instanceId, volumes: [] });
    const available = server.addAvailableVolume(nextId('vol')).volumeId;
    const { result, actions } = await forceAttempt(available, instanceId);
    expect(result).toEqual({ forced: false, attempts: 1, checks: 0 });
    expect(actions).toEqual(['DetachVolume (Force)']);
    expect(server.volume(available).forced).toBe(false);
  });

  test('a force applied with its answer lost, then retried by the SDK, is counted: EC2 reading it `available` is that force’s effect', async () => {
    const { instanceId, stuck } = await stuckDetaching();
    // The first try is carried out and answered with a 500; the SDK sends it again, and EC2 finds nothing attached.
    server.inject({ action: 'DetachVolume', status: 500, code: 'InternalError', applied: true });
    const { result, actions } = await forceAttempt(stuck, instanceId, undefined, retryingProvider());
    expect(actions.slice(0, 2)).toEqual(['DetachVolume (Force)', 'DetachVolume (Force)']);
    expect(server.volume(stuck).forced).toBe(true);
    expect(result).toMatchObject({ forced: true, attempts: 1 });
  });

  test('after an unanswered try, a refusal is no refusal: the force may have been applied, and is not taken back', async () => {
    const { instanceId, stuck } = await stuckDetaching();
    server.inject({ action: 'DetachVolume', status: 500, code: 'InternalError', applied: true });
    server.inject({ action: 'DetachVolume', status: 503, code: 'RequestLimitExceeded', times: 2 });
    const err = await retryingProvider()
      .forceDetachVolume(instanceId, { volumeId: stuck })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TransientProviderError);
    expect(err).not.toBeInstanceOf(ThrottledProviderError);
    expect(refusedRequest(err)).toBe(false);
    expect(server.volume(stuck).forced).toBe(true);
  });

  test('a force throttled on every try was refused; throttled, then told nothing is attached, it forced nothing', async () => {
    const { instanceId, stuck } = await stuckDetaching();
    // A refusal, so the attempt may send it again once the budget's pause is over (and every call backs off).
    server.inject({ action: 'DetachVolume', status: 503, code: 'RequestLimitExceeded', times: 3 });
    await expect(retryingProvider().forceDetachVolume(instanceId, { volumeId: stuck })).rejects.toBeInstanceOf(
      ThrottledProviderError,
    );
    expect(server.volume(stuck).forced).toBe(false);
    const available = server.addAvailableVolume(nextId('vol')).volumeId;
    server.inject({ action: 'DetachVolume', status: 503, code: 'RequestLimitExceeded', times: 1 });
    expect(await retryingProvider().forceDetachVolume(instanceId, { volumeId: available })).toBe('not-attached');
    expect(server.callsOf('DetachVolume').filter((c) => c.params.VolumeId === available)).toHaveLength(2);
  });

  test('after an earlier attempt’s force went out, the volume is read first and not forced again', async () => {
    const instanceId = nextId('i');
    server.addInstance({ instanceId, volumes: [] });
    const available = server.addAvailableVolume(nextId('vol')).volumeId;
    const { result, actions } = await forceAttempt(available, instanceId, { forceSentAt: new Date().toISOString() });
    // That force may be what freed it: `force_detached`, and no second force.
    expect(result).toEqual({ forced: true, attempts: 2, checks: 1 });
    expect(actions).toEqual(['DescribeVolumes']);
  });
});

describe('aws provider through the workflow', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ extraProviders: [new AwsProvider({ endpoint: server.endpoint, stopPollMs: 50 })] });
  });
  afterAll(async () => {
    await h?.close();
  });

  test('discovered volumes detach, the stuck one is forced at maxStopDuration, the instance stops', async () => {
    const instanceId = nextId('i');
    const [a, stuck] = [nextId('vol'), nextId('vol')];
    server.addInstance({ instanceId, volumes: [{ volumeId: a }, { volumeId: stuck, stuck: true }], stopDelayMs: 200 });
    await h.stopflow.stop({ instanceId, provider: 'aws', maxStopDuration: '2s' });
    const result = await h.stopflow.result(instanceId);
    expect(result.phase).toBe('stopped');
    expect(result.escalation?.cause).toBe('timeout');
    expect(Object.fromEntries(result.volumes.map((v) => [v.volumeId, v.state]))).toEqual({
      [a]: 'detached',
      [stuck]: 'force_detached',
    });
    expect(server.volume(stuck).forced).toBe(true);
    expect(server.volume(a).forced).toBe(false);
    expect(server.volume(`vol-root-${instanceId}`).attachments).toHaveLength(1);
    expect(server.instance(instanceId).state).toBe('stopped');
  });
});

describe('aws provider: errors read by operation (IncorrectInstanceState, IncorrectState)', () => {
  test('StopInstances on a terminated or terminating instance is done; on a pending one it is retried', async () => {
    const provider = noRetryProvider();
    for (const state of ['terminated', 'shutting-down'] as const) {
      const instanceId = nextId('i');
      server.addInstance({ instanceId, state, rootVolumeId: null, volumes: [] });
      // EC2 answers IncorrectInstanceState: the instance runs nothing and holds no volume, so the stop is done.
      await provider.stopInstance(instanceId);
      expect(server.instance(instanceId).stopCalls).toBe(1);
    }
    const pending = nextId('i');
    server.addInstance({ instanceId: pending, state: 'pending' });
    const error = await provider.stopInstance(pending).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(TransientProviderError);
    expect((error as Error).message).toMatch(/IncorrectInstanceState.*pending/);
    server.instance(pending).state = 'running'; // it finished starting: the retry stops it
    await provider.stopInstance(pending);
    expect(server.instance(pending).state).toBe('stopped');
  });

  test('DetachVolume of a Marketplace-coded volume is final while the instance runs, retried while it stops', async () => {
    const instanceId = nextId('i');
    const volumeId = nextId('vol');
    server.addInstance({ instanceId, volumes: [{ volumeId, marketplace: true }], stopDelayMs: 60_000 });
    const provider = noRetryProvider();
    const error = await provider.detachVolume(instanceId, { volumeId }).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(PermanentProviderError);
    expect((error as Error).message).toMatch(/IncorrectInstanceState.*instance is running/);
    expect((error as Error).message).toMatch(/root volume or a volume with an AWS Marketplace product code/);

    server.instance(instanceId).state = 'stopping';
    // Retried, and a refusal: nothing was done (a force refused so is not counted as sent).
    await expect(provider.detachVolume(instanceId, { volumeId })).rejects.toSatisfy(
      (err: unknown) =>
        err instanceof TransientProviderError && err.refused && /instance is stopping/.test(err.message),
    );
    server.instance(instanceId).state = 'stopped';
    await provider.detachVolume(instanceId, { volumeId });
    expect(await provider.getAttachmentState(instanceId, { volumeId })).toBe('detached');
  });

  test('a detach already under way is success even when DescribeVolumes still shows it attached', async () => {
    const instanceId = nextId('i');
    const volumeId = nextId('vol');
    server.addInstance({ instanceId, volumes: [{ volumeId, stuck: true }] });
    const provider = noRetryProvider();
    // EC2's describe calls lag behind: the next answers still show the attachment as it is now.
    server.staleDescribes(volumeId, 20);
    await provider.detachVolume(instanceId, { volumeId });
    expect(server.volume(volumeId).attachments[0]?.state).toBe('detaching');
    expect(await provider.getAttachmentState(instanceId, { volumeId })).toBe('attached'); // the stale read
    // The retry: DetachVolume answers IncorrectState ("in the 'detaching' state"), the describe says attached.
    await provider.detachVolume(instanceId, { volumeId });
    const messages: [string, 'ok' | typeof TransientProviderError | typeof PermanentProviderError][] = [
      [`Volume '${volumeId}' is already detaching.`, 'ok'],
      [`Volume '${volumeId}' is in the 'busy' state.`, 'ok'],
      [`Volume '${volumeId}' is in the 'available' state.`, 'ok'],
      [`Volume '${volumeId}' is in the 'attaching' state.`, TransientProviderError],
      [`Volume '${volumeId}' cannot be detached now.`, PermanentProviderError], // unknown, and the describe says attached
    ];
    for (const [message, expected] of messages) {
      server.inject({ action: 'DetachVolume', code: 'IncorrectState', message });
      const outcome = await provider.detachVolume(instanceId, { volumeId }).then(
        () => 'ok' as const,
        (err: unknown) => err,
      );
      if (expected === 'ok') expect(outcome, message).toBe('ok');
      else expect(outcome, message).toBeInstanceOf(expected);
      // 'attaching' is a refusal EC2 answered: retried, and nothing was done.
      if (expected === TransientProviderError) expect((outcome as TransientProviderError).refused, message).toBe(true);
    }
  });
});

describe('aws provider: cancellation and timeouts', () => {
  test('every call rejects at once with the signal’s reason when aborted while EC2 does not answer', async () => {
    const instanceId = nextId('i');
    const volumeId = nextId('vol');
    server.addInstance({ instanceId, volumes: [{ volumeId }] });
    // The default request timeout (30 s) is far longer than this test's: only the signal can end these calls.
    const provider = new AwsProvider({ endpoint: server.endpoint });
    const calls: [string, (signal: AbortSignal) => Promise<unknown>][] = [
      ['DescribeInstances', (signal) => provider.listAttachedVolumes(instanceId, { signal })],
      ['DetachVolume', (signal) => provider.detachVolume(instanceId, { volumeId }, { signal })],
      ['DetachVolume', (signal) => provider.forceDetachVolume(instanceId, { volumeId }, { signal })],
      ['DescribeVolumes', (signal) => provider.getAttachmentState(instanceId, { volumeId }, { signal })],
      ['DescribeVolumes', (signal) => provider.getAttachmentStates([{ instanceId, volume: { volumeId } }], { signal })],
      ['StopInstances', (signal) => provider.stopInstance(instanceId, { signal })],
    ];
    for (const [action, call] of calls) {
      server.hang({ action });
      const before = server.hungCalls;
      const controller = new AbortController();
      const reason = new Error(`activity cancelled (${action})`);
      const pending = call(controller.signal).catch((err: unknown) => err);
      await until(() => server.hungCalls > before, `${action} to reach the server`);
      controller.abort(reason);
      expect(await pending, action).toBe(reason);
    }
    // Already aborted: nothing is sent.
    const sent = server.callCount();
    const aborted = AbortSignal.abort(new Error('cancelled before the call'));
    await expect(provider.getAttachmentState(instanceId, { volumeId }, { signal: aborted })).rejects.toThrow(
      /cancelled before the call/,
    );
    expect(server.callCount()).toBe(sent);
  });

  test('the stop wait loop ends on the signal', async () => {
    const instanceId = nextId('i');
    server.addInstance({ instanceId, stopDelayMs: 600_000 });
    const provider = new AwsProvider({ endpoint: server.endpoint, stopPollMs: 20 });
    const controller = new AbortController();
    const pending = provider.stopInstance(instanceId, { signal: controller.signal }).catch((err: unknown) => err);
    const polls = () => server.callsOf('DescribeInstances').filter((c) => c.params['InstanceId.1'] === instanceId);
    await until(() => polls().length >= 2, 'the stop loop to poll');
    const reason = new Error('stop cancelled');
    controller.abort(reason);
    expect(await pending).toBe(reason);
    const after = polls().length;
    await pause(100);
    expect(polls().length).toBe(after); // no poll after the abort
  });

  test('a call EC2 never answers fails transiently after requestTimeoutMs; the SDK retries a timeout', async () => {
    const instanceId = nextId('i');
    const volumeId = nextId('vol');
    server.addInstance({ instanceId, volumes: [{ volumeId }] });
    const once = new AwsProvider({ endpoint: server.endpoint, requestTimeoutMs: 300, maxAttempts: 1 });
    server.hang({ action: 'DescribeVolumes' });
    const error = await once.getAttachmentState(instanceId, { volumeId }).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(TransientProviderError);
    expect((error as Error).message).toMatch(/TimeoutError/);
    // With the SDK's retries a single hung attempt is retried, and the call answers.
    const retrying = new AwsProvider({ endpoint: server.endpoint, requestTimeoutMs: 300 });
    server.hang({ action: 'DescribeVolumes' });
    expect(await retrying.getAttachmentState(instanceId, { volumeId })).toBe('attached');
  });
});

describe('aws provider: throttling and the call budget', () => {
  test('RequestLimitExceeded becomes ThrottledProviderError, with the server’s Retry-After when it gave one', async () => {
    const instanceId = nextId('i');
    const volumeId = nextId('vol');
    server.addInstance({ instanceId, volumes: [{ volumeId }] });
    const provider = noRetryProvider();
    server.throttle(1, { action: 'DescribeVolumes', retryAfterSeconds: 3 });
    const hinted = await provider.getAttachmentState(instanceId, { volumeId }).catch((err: unknown) => err);
    expect(hinted).toBeInstanceOf(ThrottledProviderError);
    expect((hinted as ThrottledProviderError).retryAfterMs).toBe(3_000);
    expect((hinted as Error).message).toMatch(/RequestLimitExceeded/);

    server.throttle(1, { action: 'DetachVolume' });
    const bare = await provider.detachVolume(instanceId, { volumeId }).catch((err: unknown) => err);
    expect(bare).toBeInstanceOf(ThrottledProviderError);
    expect((bare as ThrottledProviderError).retryAfterMs).toBeUndefined();

    const at = new Date(Date.now() + 60_000).toUTCString();
    server.inject({ action: 'DescribeInstances', status: 400, code: 'Throttling', headers: { 'Retry-After': at } });
    const dated = await provider.listAttachedVolumes(instanceId).catch((err: unknown) => err);
    expect(dated).toBeInstanceOf(ThrottledProviderError);
    expect((dated as ThrottledProviderError).retryAfterMs).toBeGreaterThan(0);
    expect((dated as ThrottledProviderError).retryAfterMs).toBeLessThanOrEqual(60_000);

    // Throttling of a whole batch is one error for the batch.
    server.throttle(1, { action: 'DescribeVolumes' });
    await expect(provider.getAttachmentStates([{ instanceId, volume: { volumeId } }])).rejects.toBeInstanceOf(
      ThrottledProviderError,
    );
    expect(await provider.getAttachmentState(instanceId, { volumeId })).toBe('attached');
  });

  test('declares a call budget and a batch size, both configurable', () => {
    const provider = new AwsProvider({ endpoint: server.endpoint });
    expect(provider.budget).toEqual(DEFAULT_AWS_BUDGET);
    expect(DEFAULT_AWS_BUDGET.callsPerSecond).toBeLessThanOrEqual(20); // EC2's refill for Describe* per account
    expect(DEFAULT_AWS_BUDGET.burst).toBeLessThanOrEqual(100);
    expect(provider.maxBatch).toBe(DEFAULT_AWS_MAX_BATCH);
    const tuned = new AwsProvider({
      endpoint: server.endpoint,
      budget: { callsPerSecond: 50, burst: 200 },
      maxBatch: 20,
    });
    expect(tuned.budget).toEqual({ callsPerSecond: 50, burst: 200 });
    expect(tuned.maxBatch).toBe(20);
  });
});

describe('aws provider: coalesced state checks', () => {
  /** Five instances of ten volumes each, all attached. */
  function fleet(): VolumeOfInstance[] {
    const targets: VolumeOfInstance[] = [];
    for (let i = 0; i < 5; i++) {
      const instanceId = nextId('i');
      const volumes = Array.from({ length: 10 }, (_, j) => ({ volumeId: nextId('vol'), stuck: j % 4 === 1 }));
      server.addInstance({ instanceId, volumes });
      for (const v of volumes) targets.push({ instanceId, volume: { volumeId: v.volumeId } });
    }
    return targets;
  }

  /**
   * Brings the fleet to every state an answer can have, by the volume's place in its instance: 0 attached,
   * 1 detaching (stuck), 2 detached (forced), 3 attached but asked about another instance (detached for it).
   */
  async function mixStates(provider: AwsProvider, targets: VolumeOfInstance[]): Promise<VolumeOfInstance[]> {
    const mixed: VolumeOfInstance[] = [];
    for (const [k, t] of targets.entries()) {
      const place = (k % 10) % 4;
      if (place === 1) await provider.detachVolume(t.instanceId, t.volume);
      if (place === 2) await provider.forceDetachVolume(t.instanceId, t.volume);
      const otherInstance = targets[(k + 10) % targets.length]?.instanceId ?? t.instanceId;
      mixed.push(place === 3 ? { instanceId: otherInstance, volume: t.volume } : t);
    }
    return mixed;
  }

  test('50 volumes of several instances: one DescribeVolumes, the same answers as one by one', async () => {
    const provider = noRetryProvider();
    const targets = await mixStates(provider, fleet());
    const one: AttachmentState[] = [];
    for (const t of targets) one.push(await provider.getAttachmentState(t.instanceId, t.volume));
    expect(new Set(one)).toEqual(new Set(['attached', 'detaching', 'detached']));

    const before = server.callCount('DescribeVolumes');
    const batch = await provider.getAttachmentStates(targets);
    expect(server.callCount('DescribeVolumes') - before).toBe(1);
    expect(batch).toEqual(one);
    const last = server.callsOf('DescribeVolumes').at(-1);
    expect(last?.params['VolumeId.50']).toBe(targets[49]?.volume.volumeId);
  });

  test('an unknown volume among them reads detached without failing the batch', async () => {
    const provider = noRetryProvider();
    const targets = fleet().slice(0, 20);
    const unknown: VolumeOfInstance = {
      instanceId: targets[3]?.instanceId ?? '',
      volume: { volumeId: 'vol-0dead0dead0dead0' },
    };
    const asked = [...targets.slice(0, 10), unknown, ...targets.slice(10)];
    const before = server.callCount('DescribeVolumes');
    const states = await provider.getAttachmentStates(asked);
    expect(states).toEqual([...Array(10).fill('attached'), 'detached', ...Array(10).fill('attached')]);
    // VolumeIds failed the whole call with InvalidVolume.NotFound; the volume-id filter answered the rest.
    expect(server.callCount('DescribeVolumes') - before).toBe(2);
    const fallback = server.callsOf('DescribeVolumes').at(-1);
    expect(fallback?.params['Filter.1.Name']).toBe('volume-id');
    expect(fallback?.params['Filter.1.Value.11']).toBe(unknown.volume.volumeId);
  });

  test('more volumes than maxBatch take one call per maxBatch', async () => {
    const provider = noRetryProvider({ maxBatch: 20 });
    const targets = fleet();
    const before = server.callCount('DescribeVolumes');
    expect(await provider.getAttachmentStates(targets)).toEqual(Array(50).fill('attached'));
    expect(server.callCount('DescribeVolumes') - before).toBe(3);
    expect(await provider.getAttachmentStates([])).toEqual([]);
    expect(server.callCount('DescribeVolumes') - before).toBe(3);
  });
});
