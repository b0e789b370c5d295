/**
 * The aws provider through the real `@aws-sdk/client-ec2` against a local
 * server speaking the EC2 Query API (test/support/ec2-query-server.ts):
 * the conformance suite, EC2's own answers (already detached, busy,
 * IncorrectState), error classification, stopping, and one stop through the
 * workflow on the dev server.
 */
import { EC2Client } from '@aws-sdk/client-ec2';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { PermanentProviderError, TransientProviderError } from '../activities/provider';
import { AwsProvider } from '../activities/providers/aws';
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
function noRetryProvider(options: { accessKeyId?: string } = {}): AwsProvider {
  const client = new EC2Client({
    region: 'us-east-1',
    endpoint: server.endpoint,
    maxAttempts: 1,
    credentials: { accessKeyId: options.accessKeyId ?? ACCESS_KEY_ID, secretAccessKey: 'stopflow-test-secret' },
  });
  return new AwsProvider({ client, stopPollMs: 20 });
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
    await provider.forceDetachVolume(instanceId, { volumeId });
    const forced = server
      .callsOf('DetachVolume')
      .filter((c) => c.params.VolumeId === volumeId && c.params.Force === 'true');
    expect(forced).toHaveLength(1);
    expect(forced[0]?.params.InstanceId).toBe(instanceId);
    expect(await provider.getAttachmentState(instanceId, { volumeId })).toBe('detached');
  });

  test('already detached is success: volume available, attached elsewhere, or gone', async () => {
    const provider = noRetryProvider();
    const instanceId = nextId('i');
    const other = nextId('i');
    const elsewhere = nextId('vol');
    server.addInstance({ instanceId, volumes: [] });
    server.addInstance({ instanceId: other, volumes: [{ volumeId: elsewhere }] });
    const available = server.addAvailableVolume(nextId('vol')).volumeId;
    for (const volumeId of [available, elsewhere, 'vol-0000000000000gone']) {
      await provider.detachVolume(instanceId, { volumeId });
      await provider.forceDetachVolume(instanceId, { volumeId });
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

  test('checkUsable makes a DryRun call: fine with good credentials, a clear error with bad ones', async () => {
    await new AwsProvider({ endpoint: server.endpoint }).checkUsable();
    await expect(noRetryProvider({ accessKeyId: 'AKIDWRONG' }).checkUsable()).rejects.toThrow(/AuthFailure/);
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
