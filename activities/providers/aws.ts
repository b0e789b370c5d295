/**
 * `aws`: EC2 EBS volumes through `@aws-sdk/client-ec2` (docs/contract.md "Providers").
 *
 * - instance: an EC2 instance id (`i-...`); its volumes are the EBS volumes in
 *   its block device mappings, except the root volume (EC2 cannot detach the
 *   root volume of a running instance, and stopping keeps it anyway).
 * - detach: `DetachVolume` for this instance's attachment; force:
 *   `DetachVolume` with `Force` (may lose unflushed writes; the instance sees
 *   the device vanish).
 * - state: `DescribeVolumes`; the attachment to *this* instance decides:
 *   `attaching`/`attached` -> attached, `detaching`/`busy` -> detaching, none
 *   (or volume `available`, or the volume gone) -> detached. Many volumes are
 *   answered by one `DescribeVolumes` (`getAttachmentStates`, up to `maxBatch`).
 * - stop: `StopInstances`, then `DescribeInstances` until `stopped`, bounded
 *   by `stopWaitMs`; past it the call fails transiently and the workflow's
 *   retry asks again (both calls are idempotent). A terminated (or
 *   terminating) instance is done: it runs nothing and holds no volume.
 *
 * Every call takes the activity's AbortSignal (an aborted call rejects with the
 * signal's reason at once) and has timeouts of its own (`connectionTimeoutMs`,
 * `requestTimeoutMs`), so no call outlives its activity or hangs on a dead
 * connection.
 *
 * Region, credentials and endpoint come from the standard AWS chain
 * (AWS_REGION, AWS_PROFILE, SSO, web identity, instance or pod role,
 * AWS_ENDPOINT_URL_EC2) unless given here. The SDK retries throttling and 5xx
 * a few times itself; what still fails is classified: throttling is
 * ThrottledProviderError (the activities slow every call of this provider),
 * 5xx and network errors TransientProviderError, auth, permission and
 * malformed requests PermanentProviderError.
 */
import {
  DescribeInstancesCommand,
  DescribeVolumesCommand,
  DetachVolumeCommand,
  EC2Client,
  type EC2ClientConfig,
  type Instance,
  StopInstancesCommand,
  type Volume,
} from '@aws-sdk/client-ec2';
import type { VolumeRef } from '../../common/request';
import {
  type AttachmentState,
  type CallBudget,
  type CallOptions,
  type ForceAnswer,
  PermanentProviderError,
  type Provider,
  ThrottledProviderError,
  TransientProviderError,
  type VolumeOfInstance,
} from '../provider';
import { DEFAULT_CALL_BUDGETS } from './budgets';

export interface AwsProviderOptions {
  region?: string;
  /** An endpoint override (a VPC endpoint, LocalStack, a test server). */
  endpoint?: string;
  name?: string;
  /** A ready client; region, endpoint, timeouts and maxAttempts are then ignored (the client has its own). */
  client?: EC2Client;
  /** Longest one stopInstance call waits for `stopped` before failing transiently. Default 10 minutes. */
  stopWaitMs?: number;
  /** Pause between DescribeInstances checks while the instance stops. Default 5 s. */
  stopPollMs?: number;
  /** Longest wait for the TCP (and TLS) connection to EC2. Default 5 s. */
  connectionTimeoutMs?: number;
  /**
   * Longest one HTTP request may take, and longest its socket may sit idle, per SDK attempt. Default 30 s.
   * Without it a request to an endpoint that accepted the connection but never answers hangs for many
   * minutes (the SDK's default socket timeout), far past the activity's own timeouts.
   */
  requestTimeoutMs?: number;
  /** Attempts the SDK makes per call (its own retries of throttling, 5xx and timeouts). Default: the SDK's (3). */
  maxAttempts?: number;
  /** Calls per second this worker may make to EC2 (enforced by the activities). Default 10/s, burst 50. */
  budget?: CallBudget;
  /** Most volumes one DescribeVolumes asks about in `getAttachmentStates`. Default 200. */
  maxBatch?: number;
}

/**
 * The default call budget (why this figure: activities/providers/budgets.ts). Operators with a raised limit, or more
 * workers on one account, set `budget` (the worker: STOPFLOW_CALL_BUDGET).
 */
export const DEFAULT_AWS_BUDGET: CallBudget = DEFAULT_CALL_BUDGETS.aws;
/** Volumes per DescribeVolumes: EC2 takes up to 200 values in one filter, the fallback when an id is unknown. */
export const DEFAULT_AWS_MAX_BATCH = 200;
export const DEFAULT_CONNECTION_TIMEOUT_MS = 5_000;
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;

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

// IncorrectInstanceState is not here: what it means depends on the operation (requestStop, detach).
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
  'TimeoutError', // our connection or request timeout fired: the endpoint may answer next time
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
  /** The raw HTTP response; the SDK attaches it (non-enumerable) to errors it parsed from one. */
  $response?: { headers?: Record<string, string | undefined> };
}

/** The EC2 error code of an SDK error ("InvalidVolume.NotFound"), or its name for local errors. */
export function awsErrorCode(err: unknown): string {
  const e = (err ?? {}) as AwsErrorShape;
  return e.name ?? e.code ?? 'Error';
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The response's Retry-After (seconds or an HTTP date) or x-amz-retry-after (milliseconds), in ms. */
export function retryAfterMs(err: unknown): number | undefined {
  const headers = (err as AwsErrorShape | undefined)?.$response?.headers;
  if (!headers) return undefined;
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    const header = name.toLowerCase();
    if (header === 'x-amz-retry-after' && /^\d+$/.test(value.trim())) return Number(value);
    if (header !== 'retry-after') continue;
    if (/^\d+(\.\d+)?$/.test(value.trim())) return Math.round(Number(value) * 1000);
    const at = Date.parse(value);
    if (!Number.isNaN(at)) return Math.max(0, at - Date.now());
  }
  return undefined;
}

/** Maps an SDK error to the provider error types the activities understand. */
export function classifyAwsError(err: unknown, what: string): Error {
  if (err instanceof TransientProviderError || err instanceof PermanentProviderError) return err;
  const e = (err ?? {}) as AwsErrorShape;
  const code = awsErrorCode(err);
  const status = e.$metadata?.httpStatusCode;
  const message = `${what}: ${code}: ${e.message ?? String(err)}`;
  if (THROTTLING.has(code)) {
    return new ThrottledProviderError(
      `${message} (throttled; every call of this provider backs off)`,
      retryAfterMs(err),
    );
  }
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

/**
 * What an `IncorrectState` answer to DetachVolume says, from its message. Read from the message first
 * because DescribeVolumes is eventually consistent: right after a DetachVolume it can still show the
 * attachment `attached`, so re-describing alone would call a detach under way an error.
 */
export function readIncorrectState(message: string): 'under-way' | 'attaching' | 'not-attached' | 'unknown' {
  if (/already detaching|\b(detaching|busy)\b/i.test(message)) return 'under-way';
  if (/\battaching\b/i.test(message)) return 'attaching';
  // "Volume 'vol-...' is in the 'available' state": attached to nothing.
  if (/\bavailable\b/i.test(message)) return 'not-attached';
  return 'unknown';
}

/**
 * Whether a try that failed so may have been carried out: no answer (a timeout, a reset) or a 5xx. A throttled try
 * and a 4xx answer were refused before anything was done.
 */
function mayHaveBeenApplied(err: unknown): boolean {
  if (THROTTLING.has(awsErrorCode(err))) return false;
  const e = (err ?? {}) as AwsErrorShape;
  const status = e.$metadata?.httpStatusCode;
  if (status !== undefined) return status >= 500;
  return e.$fault !== 'client';
}

/** Treated as "not attached" by detach and state checks: nothing is left to detach. */
const GONE = new Set(['InvalidVolume.NotFound', 'InvalidAttachment.NotFound']);

/** Instance states in which a stop is done: stopped, or terminated (it runs nothing and holds no volume). */
const STOP_DONE = new Set(['stopped', 'terminated', 'shutting-down']);

/** The SDK's per-call options: the abort signal, only when there is one (exactOptionalPropertyTypes). */
function sendOptions(signal: AbortSignal | undefined): { abortSignal?: AbortSignal } {
  return signal ? { abortSignal: signal } : {};
}

/** Waits `ms`; rejects with the signal's reason as soon as it aborts. */
function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** The attachment of `volume` to `instanceId`, as an AttachmentState. */
function attachmentState(volume: Volume | undefined, instanceId: string): AttachmentState {
  const attachment = volume?.Attachments?.find((a) => a.InstanceId === instanceId);
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

export class AwsProvider implements Provider {
  readonly name: string;
  readonly supportsForce = true;
  /** DetachVolume names the instance: EC2 refuses it for a volume not attached there, and says so. */
  readonly forceRefusesDetached = true;
  readonly budget: CallBudget;
  readonly maxBatch: number;
  readonly client: EC2Client;
  private readonly stopWaitMs: number;
  private readonly stopPollMs: number;

  constructor(options: AwsProviderOptions = {}) {
    this.name = options.name ?? 'aws';
    this.stopWaitMs = options.stopWaitMs ?? 10 * 60_000;
    this.stopPollMs = options.stopPollMs ?? 5_000;
    this.budget = options.budget ?? DEFAULT_AWS_BUDGET;
    this.maxBatch = Math.max(1, Math.floor(options.maxBatch ?? DEFAULT_AWS_MAX_BATCH));
    if (options.client) {
      this.client = options.client;
    } else {
      const requestTimeout = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
      const config: EC2ClientConfig = {
        requestHandler: {
          connectionTimeout: options.connectionTimeoutMs ?? DEFAULT_CONNECTION_TIMEOUT_MS,
          requestTimeout,
          // Without this the SDK only logs a warning when requestTimeout passes and keeps waiting.
          throwOnRequestTimeout: true,
          // The socket's idle timeout too: the SDK's default for it is many minutes.
          socketTimeout: requestTimeout,
        },
      };
      if (options.region) config.region = options.region;
      if (options.endpoint) config.endpoint = options.endpoint;
      if (options.maxAttempts !== undefined) config.maxAttempts = options.maxAttempts;
      this.client = new EC2Client(config);
    }
  }

  // `options.idempotencyKey` is accepted and not used: DetachVolume and StopInstances take no ClientToken,
  // and both are idempotent by nature (asking again for a detach or a stop under way changes nothing).

  async listAttachedVolumes(instanceId: string, options: CallOptions = {}): Promise<VolumeRef[]> {
    const instance = await this.describeInstance(instanceId, options.signal);
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

  async detachVolume(instanceId: string, volume: VolumeRef, options: CallOptions = {}): Promise<void> {
    await this.detach(instanceId, volume, false, options.signal);
  }

  async forceDetachVolume(instanceId: string, volume: VolumeRef, options: CallOptions = {}): Promise<ForceAnswer> {
    return this.detach(instanceId, volume, true, options.signal);
  }

  async getAttachmentState(instanceId: string, volume: VolumeRef, options: CallOptions = {}): Promise<AttachmentState> {
    const [found] = await this.describeVolumes([volume.volumeId], options.signal);
    return attachmentState(found, instanceId);
  }

  /**
   * One DescribeVolumes per `maxBatch` distinct volumes (the activities pass at most `maxBatch`, so one call),
   * answered in the order given. A volume EC2 does not know reads `detached`, and does not fail the others.
   */
  async getAttachmentStates(
    targets: readonly VolumeOfInstance[],
    options: CallOptions = {},
  ): Promise<AttachmentState[]> {
    const ids = [...new Set(targets.map((t) => t.volume.volumeId))];
    const volumes = new Map<string, Volume>();
    for (let i = 0; i < ids.length; i += this.maxBatch) {
      for (const volume of await this.describeVolumes(ids.slice(i, i + this.maxBatch), options.signal)) {
        if (volume.VolumeId) volumes.set(volume.VolumeId, volume);
      }
    }
    return targets.map((t) => attachmentState(volumes.get(t.volume.volumeId), t.instanceId));
  }

  /** DescribeInstances: `stopped`, `terminated`, or no such instance any more. */
  async isInstanceStopped(instanceId: string, options: CallOptions = {}): Promise<boolean> {
    const instance = await this.describeInstance(instanceId, options.signal);
    const state = instance?.State?.Name;
    return instance === undefined || state === 'stopped' || state === 'terminated';
  }

  async stopInstance(instanceId: string, options: CallOptions = {}): Promise<void> {
    const { signal } = options;
    const deadline = Date.now() + this.stopWaitMs;
    let state = await this.requestStop(instanceId, signal);
    for (;;) {
      if (STOP_DONE.has(state)) return;
      if (Date.now() + this.stopPollMs > deadline) {
        throw new TransientProviderError(
          `EC2 instance ${instanceId} is still ${state} after ${Math.round(this.stopWaitMs / 1000)}s; asking again`,
        );
      }
      await sleep(this.stopPollMs, signal);
      await options.nextRequest?.();
      const instance = await this.describeInstance(instanceId, signal);
      if (!instance) throw new PermanentProviderError(`EC2 has no instance ${instanceId}`);
      state = instance.State?.Name ?? 'unknown';
      // Started again by someone else (or the request was lost): ask again.
      if (state === 'running') {
        await options.nextRequest?.();
        state = await this.requestStop(instanceId, signal);
      }
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

  /** The error to throw for a failed call: the signal's own reason once it aborted, else the classification. */
  private failure(err: unknown, what: string, signal: AbortSignal | undefined): unknown {
    // An aborted call rejects with what the caller aborted with (Temporal's CancelledFailure for an activity),
    // as fetch does, so the caller sees its own cancellation rather than a retryable error.
    if (signal?.aborted) return signal.reason ?? err;
    return classifyAwsError(err, what);
  }

  /**
   * DetachVolume, `not-attached` when EC2 refused it because the volume is not attached to the instance (for a force:
   * nothing was forced, AwsProvider declares forceRefusesDetached), else `sent`.
   */
  private async detach(
    instanceId: string,
    volume: VolumeRef,
    force: boolean,
    signal?: AbortSignal,
  ): Promise<ForceAnswer> {
    const what = `DetachVolume${force ? ' (Force)' : ''} ${volume.volumeId} from ${instanceId}`;
    // No Device: the instance id names the attachment, and a stale device name would make EC2
    // answer InvalidAttachment.NotFound, which reads as success.
    const command = new DetachVolumeCommand({ VolumeId: volume.volumeId, InstanceId: instanceId, Force: force });
    // The client retries a try that timed out, lost its connection or got a 5xx, with a new request (DetachVolume
    // takes no client token): after such a try a force may have been applied, and what EC2 answers the next one may
    // be that force's own effect. Each try's end is seen here, inside the retry loop (a throttled or 4xx try was
    // refused, not applied).
    let unansweredTries = 0;
    if (force) {
      command.middlewareStack.add(
        (next) => async (args) => {
          try {
            return await next(args);
          } catch (err) {
            if (mayHaveBeenApplied(err)) unansweredTries++;
            throw err;
          }
        },
        { step: 'deserialize', priority: 'high', name: 'stopflowForceTries' },
      );
    }
    try {
      await this.client.send(command, sendOptions(signal));
      return 'sent';
    } catch (err) {
      if (signal?.aborted) throw this.failure(err, what, signal);
      // After a try that may have been applied, neither a `not-attached` nor a refusal: the audit counts the force,
      // and the attempt does not send it again in place (the next attempt reads the volume first).
      if (unansweredTries === 0) return this.onDetachError(err, instanceId, volume, what, signal);
      try {
        await this.onDetachError(err, instanceId, volume, what, signal);
        return 'sent';
      } catch (answer) {
        if (signal?.aborted) throw answer;
        throw new TransientProviderError(
          `${what}: ${errorMessage(answer)} (after a try that got no answer or a 5xx: the force may have been applied)`,
        );
      }
    }
  }

  /** What a DetachVolume error means: nothing attached (`not-attached`), under way (`sent`), or the error to throw. */
  private async onDetachError(
    err: unknown,
    instanceId: string,
    volume: VolumeRef,
    what: string,
    signal: AbortSignal | undefined,
  ): Promise<ForceAnswer> {
    const code = awsErrorCode(err);
    if (GONE.has(code)) return 'not-attached'; // not attached to this instance (any more): already detached
    if (code === 'IncorrectState') return this.onIncorrectState(instanceId, volume, what, errorMessage(err), signal);
    if (code === 'IncorrectInstanceState') {
      await this.onDetachIncorrectInstanceState(instanceId, what, errorMessage(err), signal);
      return 'sent';
    }
    throw this.failure(err, what, signal);
  }

  /** DetachVolume said the volume is not in a state to detach: which state decides. */
  private async onIncorrectState(
    instanceId: string,
    volume: VolumeRef,
    what: string,
    message: string,
    signal: AbortSignal | undefined,
  ): Promise<ForceAnswer> {
    switch (readIncorrectState(message)) {
      case 'under-way':
        // A detach under way (ours, retried, or anyone's): the state check follows it.
        return 'sent';
      case 'not-attached':
        // Nothing to detach, so nothing was done.
        return 'not-attached';
      case 'attaching':
        // Refused, nothing done: a force refused so is not counted as sent (activities/index.ts forceDetachVolume).
        throw new TransientProviderError(`${what}: IncorrectState: ${message} (retried once attached)`, true);
      case 'unknown': {
        // A message this code does not know: ask EC2 what state the attachment is in.
        const state = await this.getAttachmentState(instanceId, volume, { signal });
        if (state === 'detached') return 'not-attached';
        if (state === 'detaching') return 'sent';
        throw new PermanentProviderError(`${what}: IncorrectState: ${message}`);
      }
    }
  }

  /**
   * DetachVolume said the instance is in the wrong state. EC2 documents that the root volume, and a volume with
   * an AWS Marketplace product code, cannot be detached while the instance runs ("stop the instance first"):
   * for a running (or stopped) instance no retry changes that. While the instance starts or stops it may.
   */
  private async onDetachIncorrectInstanceState(
    instanceId: string,
    what: string,
    message: string,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const state = (await this.describeInstance(instanceId, signal))?.State?.Name;
    // Gone or terminating: EC2 detaches every volume of a terminated instance; the state check confirms it.
    if (state === undefined || state === 'terminated' || state === 'shutting-down') return;
    if (state === 'pending' || state === 'stopping') {
      throw new TransientProviderError(
        `${what}: IncorrectInstanceState: ${message} (instance is ${state}; retried)`,
        true,
      );
    }
    throw new PermanentProviderError(
      `${what}: IncorrectInstanceState: ${message} (instance is ${state}: EC2 does not detach the root volume or a volume with an AWS Marketplace product code from a running instance; stop the instance first)`,
    );
  }

  /** Asks EC2 to stop the instance; returns the state it is in now. */
  private async requestStop(instanceId: string, signal: AbortSignal | undefined): Promise<string> {
    const what = `StopInstances ${instanceId}`;
    try {
      const answer = await this.client.send(
        new StopInstancesCommand({ InstanceIds: [instanceId] }),
        sendOptions(signal),
      );
      return answer.StoppingInstances?.find((i) => i.InstanceId === instanceId)?.CurrentState?.Name ?? 'stopping';
    } catch (err) {
      if (signal?.aborted) throw this.failure(err, what, signal);
      const code = awsErrorCode(err);
      if (code === 'InvalidInstanceID.NotFound') throw new PermanentProviderError(`EC2 has no instance ${instanceId}`);
      if (code !== 'IncorrectInstanceState') throw this.failure(err, what, signal);
      // The instance cannot be stopped from the state it is in: terminated or terminating is done (nothing runs,
      // nothing is attached), stopping or stopped is what was asked for, starting (`pending`) can be stopped later.
      const instance = await this.describeInstance(instanceId, signal);
      if (!instance) throw new PermanentProviderError(`EC2 has no instance ${instanceId}`);
      const state = instance.State?.Name ?? 'unknown';
      if (STOP_DONE.has(state) || state === 'stopping') return state;
      throw new TransientProviderError(
        `${what}: IncorrectInstanceState: ${errorMessage(err)} (instance is ${state}; asked again)`,
      );
    }
  }

  private async describeInstance(instanceId: string, signal: AbortSignal | undefined): Promise<Instance | undefined> {
    const what = `DescribeInstances ${instanceId}`;
    try {
      const answer = await this.client.send(
        new DescribeInstancesCommand({ InstanceIds: [instanceId] }),
        sendOptions(signal),
      );
      return answer.Reservations?.flatMap((r) => r.Instances ?? []).find((i) => i.InstanceId === instanceId);
    } catch (err) {
      if (!signal?.aborted && awsErrorCode(err) === 'InvalidInstanceID.NotFound') return undefined;
      throw this.failure(err, what, signal);
    }
  }

  /**
   * The volumes EC2 knows among `ids`, in one call. With `VolumeIds`, one unknown id fails the whole call
   * (InvalidVolume.NotFound); then the same ids go as a `volume-id` filter, which leaves unknown ones out.
   */
  private async describeVolumes(ids: readonly string[], signal: AbortSignal | undefined): Promise<Volume[]> {
    if (ids.length === 0) return [];
    const what = `DescribeVolumes ${ids.length === 1 ? ids[0] : `(${ids.length} volumes)`}`;
    try {
      const answer = await this.client.send(new DescribeVolumesCommand({ VolumeIds: [...ids] }), sendOptions(signal));
      return answer.Volumes ?? [];
    } catch (err) {
      if (signal?.aborted || awsErrorCode(err) !== 'InvalidVolume.NotFound') throw this.failure(err, what, signal);
      if (ids.length === 1) return []; // the one volume asked about is gone: detached
    }
    const volumes: Volume[] = [];
    let nextToken: string | undefined;
    do {
      try {
        const answer = await this.client.send(
          new DescribeVolumesCommand({
            Filters: [{ Name: 'volume-id', Values: [...ids] }],
            ...(nextToken !== undefined ? { NextToken: nextToken } : {}),
          }),
          sendOptions(signal),
        );
        volumes.push(...(answer.Volumes ?? []));
        nextToken = answer.NextToken || undefined;
      } catch (err) {
        throw this.failure(err, `${what} by volume-id filter`, signal);
      }
    } while (nextToken !== undefined);
    return volumes;
  }
}
