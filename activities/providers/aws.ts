/**
 * `aws`: EC2 EBS volumes through `@aws-sdk/client-ec2` (DESIGN.md "Providers").
 *
 * - instance: an EC2 instance id (`i-...`); its volumes are the EBS volumes in
 *   its block device mappings, except the root volume (EC2 cannot detach the
 *   root volume of a running instance, and stopping keeps it anyway).
 * - detach: `DetachVolume` for this instance's attachment; force:
 *   `DetachVolume` with `Force` (may lose unflushed writes; the instance sees
 *   the device vanish).
 * - state: `DescribeVolumes`; the attachment to *this* instance decides:
 *   `attaching`/`attached` -> attached, `detaching`/`busy` -> detaching, none
 *   (or volume `available`, or the volume gone) -> detached.
 * - stop: `StopInstances`, then `DescribeInstances` until `stopped`, bounded
 *   by `stopWaitMs`; past it the call fails transiently and the workflow's
 *   retry asks again (both calls are idempotent).
 *
 * Region, credentials and endpoint come from the standard AWS chain
 * (AWS_REGION, AWS_PROFILE, SSO, web identity, instance or pod role,
 * AWS_ENDPOINT_URL_EC2) unless given here. The SDK retries throttling and 5xx
 * a few times itself; what still fails is classified: throttling, 5xx and
 * network errors are TransientProviderError, auth, permission and malformed
 * requests PermanentProviderError.
 */
import {
  DescribeInstancesCommand,
  DescribeVolumesCommand,
  type DescribeVolumesCommandOutput,
  DetachVolumeCommand,
  EC2Client,
  type EC2ClientConfig,
  type Instance,
  StopInstancesCommand,
} from '@aws-sdk/client-ec2';
import type { VolumeRef } from '../../common/request';
import { type AttachmentState, PermanentProviderError, type Provider, TransientProviderError } from '../provider';

export interface AwsProviderOptions {
  region?: string;
  /** An endpoint override (a VPC endpoint, LocalStack, a test server). */
  endpoint?: string;
  name?: string;
  /** A ready client; region and endpoint are then ignored. */
  client?: EC2Client;
  /** Longest one stopInstance call waits for `stopped` before failing transiently. Default 10 minutes. */
  stopWaitMs?: number;
  /** Pause between DescribeInstances checks while the instance stops. Default 5 s. */
  stopPollMs?: number;
}

const THROTTLING = new Set([
  'RequestLimitExceeded',
  'Throttling',
  'ThrottlingException',
  'ThrottledException',
  'RequestThrottled',
  'RequestThrottledException',
  'TooManyRequestsException',
  'SlowDown',
  'EC2ThrottledException',
  'BandwidthLimitExceeded',
  'PriorRequestNotComplete',
]);

const TRANSIENT = new Set([
  'InternalError',
  'InternalFailure',
  'ServiceUnavailable',
  'Unavailable',
  'RequestTimeout',
  'RequestTimeoutException',
  'RequestExpired', // clock skew; the SDK corrects its clock offset and signs again
  'ExpiredToken', // session credentials roll over; the credential chain refreshes them
  'IDPCommunicationError',
  'IncorrectInstanceState', // e.g. StopInstances on a `pending` instance: later it can
  'TimeoutError',
  'RequestAbortedError',
]);

const AUTH = new Set([
  'AuthFailure',
  'UnauthorizedOperation',
  'AccessDenied',
  'AccessDeniedException',
  'Blocked',
  'OptInRequired',
  'PendingVerification',
  'SignatureDoesNotMatch',
  'InvalidClientTokenId',
  'MissingAuthenticationToken',
  'UnrecognizedClientException',
  'CredentialsProviderError',
]);

const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EAI_AGAIN',
  'ENOTFOUND',
  'EHOSTUNREACH',
]);

interface AwsErrorShape {
  name?: string;
  code?: string;
  message?: string;
  $fault?: 'client' | 'server';
  $metadata?: { httpStatusCode?: number };
}

/** The EC2 error code of an SDK error ("InvalidVolume.NotFound"), or its name for local errors. */
export function awsErrorCode(err: unknown): string {
  const e = (err ?? {}) as AwsErrorShape;
  return e.name ?? e.code ?? 'Error';
}

/** Maps an SDK error to the provider error types the activities understand. */
export function classifyAwsError(err: unknown, what: string): Error {
  if (err instanceof TransientProviderError || err instanceof PermanentProviderError) return err;
  const e = (err ?? {}) as AwsErrorShape;
  const code = awsErrorCode(err);
  const status = e.$metadata?.httpStatusCode;
  const message = `${what}: ${code}: ${e.message ?? String(err)}`;
  if (THROTTLING.has(code)) return new TransientProviderError(`${message} (throttled; retried with backoff)`);
  if (AUTH.has(code)) {
    return new PermanentProviderError(
      `${message} (check the worker's AWS credentials and that they allow ec2:DescribeInstances, ec2:DescribeVolumes, ec2:DetachVolume and ec2:StopInstances)`,
    );
  }
  if (TRANSIENT.has(code) || (e.code !== undefined && NETWORK_CODES.has(e.code))) {
    return new TransientProviderError(message);
  }
  if (/Region is missing/i.test(e.message ?? '')) {
    return new PermanentProviderError(`${what}: no AWS region configured (set AWS_REGION or the provider's region)`);
  }
  if (e.$fault === 'server' || (status !== undefined && status >= 500)) return new TransientProviderError(message);
  // Any other answer EC2 gave with a 4xx (malformed id, unsupported operation, ...) will not change on retry.
  if (e.$fault === 'client' || (status !== undefined && status >= 400)) return new PermanentProviderError(message);
  // No answer at all (socket closed, DNS): worth another try.
  return new TransientProviderError(message);
}

/** Treated as "not attached" by detach and state checks: nothing is left to detach. */
const GONE = new Set(['InvalidVolume.NotFound', 'InvalidAttachment.NotFound']);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export class AwsProvider implements Provider {
  readonly name: string;
  readonly supportsForce = true;
  readonly client: EC2Client;
  private readonly stopWaitMs: number;
  private readonly stopPollMs: number;

  constructor(options: AwsProviderOptions = {}) {
    this.name = options.name ?? 'aws';
    this.stopWaitMs = options.stopWaitMs ?? 10 * 60_000;
    this.stopPollMs = options.stopPollMs ?? 5_000;
    if (options.client) {
      this.client = options.client;
    } else {
      const config: EC2ClientConfig = {};
      if (options.region) config.region = options.region;
      if (options.endpoint) config.endpoint = options.endpoint;
      this.client = new EC2Client(config);
    }
  }

  async listAttachedVolumes(instanceId: string): Promise<VolumeRef[]> {
    const instance = await this.describeInstance(instanceId);
    if (!instance) throw new PermanentProviderError(`EC2 has no instance ${instanceId}`);
    const volumes: VolumeRef[] = [];
    for (const mapping of instance.BlockDeviceMappings ?? []) {
      const volumeId = mapping.Ebs?.VolumeId;
      if (!volumeId || mapping.Ebs?.Status === 'detached') continue;
      if (mapping.DeviceName !== undefined && mapping.DeviceName === instance.RootDeviceName) continue;
      volumes.push(mapping.DeviceName ? { volumeId, device: mapping.DeviceName } : { volumeId });
    }
    return volumes;
  }

  async detachVolume(instanceId: string, volume: VolumeRef): Promise<void> {
    await this.detach(instanceId, volume, false);
  }

  async forceDetachVolume(instanceId: string, volume: VolumeRef): Promise<void> {
    await this.detach(instanceId, volume, true);
  }

  async getAttachmentState(instanceId: string, volume: VolumeRef): Promise<AttachmentState> {
    let answer: DescribeVolumesCommandOutput;
    try {
      answer = await this.client.send(new DescribeVolumesCommand({ VolumeIds: [volume.volumeId] }));
    } catch (err) {
      if (awsErrorCode(err) === 'InvalidVolume.NotFound') return 'detached';
      throw classifyAwsError(err, `DescribeVolumes ${volume.volumeId}`);
    }
    const found = answer.Volumes?.find((v) => v.VolumeId === volume.volumeId);
    const attachment = found?.Attachments?.find((a) => a.InstanceId === instanceId);
    switch (attachment?.State) {
      case undefined:
      case 'detached':
        return 'detached';
      case 'detaching':
      case 'busy':
        return 'detaching';
      default:
        // attaching, attached, or a state newer than this code: not detached.
        return 'attached';
    }
  }

  async stopInstance(instanceId: string): Promise<void> {
    const deadline = Date.now() + this.stopWaitMs;
    let state = await this.requestStop(instanceId);
    for (;;) {
      if (state === 'stopped' || state === 'terminated') return;
      if (Date.now() + this.stopPollMs > deadline) {
        throw new TransientProviderError(
          `EC2 instance ${instanceId} is still ${state} after ${Math.round(this.stopWaitMs / 1000)}s; asking again`,
        );
      }
      await sleep(this.stopPollMs);
      const instance = await this.describeInstance(instanceId);
      if (!instance) throw new PermanentProviderError(`EC2 has no instance ${instanceId}`);
      state = instance.State?.Name ?? 'unknown';
      // Started again by someone else (or the request was lost): ask again.
      if (state === 'running') state = await this.requestStop(instanceId);
    }
  }

  /** Region and credentials resolve, and they may call EC2 (a DryRun call answers DryRunOperation). */
  async checkUsable(): Promise<void> {
    try {
      await this.client.send(new DescribeVolumesCommand({ DryRun: true, MaxResults: 5 }));
    } catch (err) {
      if (awsErrorCode(err) === 'DryRunOperation') return;
      throw new Error(
        `aws provider "${this.name}" cannot use EC2: ${classifyAwsError(err, 'DescribeVolumes (DryRun)').message}`,
      );
    }
  }

  private async detach(instanceId: string, volume: VolumeRef, force: boolean): Promise<void> {
    const what = `DetachVolume${force ? ' (Force)' : ''} ${volume.volumeId} from ${instanceId}`;
    try {
      // No Device: the instance id names the attachment, and a stale device name would make EC2
      // answer InvalidAttachment.NotFound, which reads as success.
      await this.client.send(
        new DetachVolumeCommand({ VolumeId: volume.volumeId, InstanceId: instanceId, Force: force }),
      );
    } catch (err) {
      const code = awsErrorCode(err);
      if (GONE.has(code)) return; // not attached to this instance (any more): already detached
      if (code !== 'IncorrectState') throw classifyAwsError(err, what);
      // IncorrectState says the volume is not in a state to detach: ask what state that is.
      const state = await this.getAttachmentState(instanceId, volume);
      if (state === 'detached' || state === 'detaching') return; // already done, or already under way
      const message = err instanceof Error ? err.message : String(err);
      if (/attaching/.test(message)) throw new TransientProviderError(`${what}: ${message} (retried once attached)`);
      throw new PermanentProviderError(`${what}: IncorrectState: ${message}`);
    }
  }

  private async requestStop(instanceId: string): Promise<string> {
    try {
      const answer = await this.client.send(new StopInstancesCommand({ InstanceIds: [instanceId] }));
      return answer.StoppingInstances?.find((i) => i.InstanceId === instanceId)?.CurrentState?.Name ?? 'stopping';
    } catch (err) {
      if (awsErrorCode(err) === 'InvalidInstanceID.NotFound') {
        throw new PermanentProviderError(`EC2 has no instance ${instanceId}`);
      }
      throw classifyAwsError(err, `StopInstances ${instanceId}`);
    }
  }

  private async describeInstance(instanceId: string): Promise<Instance | undefined> {
    try {
      const answer = await this.client.send(new DescribeInstancesCommand({ InstanceIds: [instanceId] }));
      return answer.Reservations?.flatMap((r) => r.Instances ?? []).find((i) => i.InstanceId === instanceId);
    } catch (err) {
      if (awsErrorCode(err) === 'InvalidInstanceID.NotFound') return undefined;
      throw classifyAwsError(err, `DescribeInstances ${instanceId}`);
    }
  }
}
