/**
 * `gcp`: Compute Engine persistent disks through `@google-cloud/compute` (docs/providers.md "The gcp provider").
 *
 * - instance: `zone:name` (`us-central1-a:web-1`), `project:zone:name`, or a bare `name` when a default zone is
 *   configured. Its volumes are the persistent disks in `instance.disks`, except the boot disk (Compute Engine
 *   detaches a boot disk only from a TERMINATED instance) and local SSDs (they cannot be detached at all). A
 *   volume is named by its disk name (`volumeId`) and carries its device name (`device`): the API detaches by
 *   device name, which is not always the disk name.
 * - detach: `instances.get` to find the device name the disk is attached under now, then `instances.detachDisk`
 *   with a `requestId` derived from the call's idempotency key. Every retry of one activity sends the same
 *   requestId, so Compute Engine answers with the operation it already has instead of starting another: a detach
 *   re-sent after a timeout never becomes a second operation that detaches a disk attached since (the failure of
 *   gcp-compute-persistent-disk-csi-driver issue 965).
 * - state: `instances.get`; a disk not in `instance.disks` (or the instance gone) is detached. A listed disk is
 *   `detaching` while a detachDisk operation on its instance is still pending (`zoneOperations.list`), else
 *   `attached`. `getAttachmentStates` answers many disks with one `instances.get` per instance.
 * - force: Compute Engine has no forced detach (`detachDisk` takes only `deviceName` and `requestId`), so by
 *   default `supportsForce` is false and forceDetachVolume throws ForceUnsupportedError. With the opt-in
 *   `forceByStoppingInstance` the force stops the whole instance at once (v1beta `instances.stop` with
 *   `noGracefulShutdown`) and detaches the disk from the TERMINATED instance: every disk and process of the
 *   instance goes down, not just the stuck disk.
 * - stop: `instances.stop`, then the operation is waited with `zoneOperations.wait` until the instance is
 *   TERMINATED, bounded by `stopWaitMs`; past it the call fails transiently and the workflow asks again.
 *
 * Every call takes the activity's AbortSignal and has a timeout of its own (`requestTimeoutMs`). The SDK's REST
 * transport ignores its own per-call timeout and has no abort option, so both reach the HTTP request through a
 * request interceptor on the auth client's transport, scoped to the call with AsyncLocalStorage: an aborted or
 * timed-out call really closes its request.
 *
 * Credentials come from Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth
 * application-default login`, the attached service account, workload identity) unless an auth client is given.
 * They are never put into an error or a log line: errors carry the API's message, status and reason only.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { createHash, randomUUID } from 'node:crypto';
import { InstancesClient, ProjectsClient, type protos, v1beta, ZoneOperationsClient } from '@google-cloud/compute';
import { type AuthClient, GoogleAuth, PassThroughClient } from 'google-auth-library';
import type { VolumeRef } from '../../common/request';
import {
  type AttachmentState,
  type CallBudget,
  type CallOptions,
  type ForceAnswer,
  ForceUnsupportedError,
  PermanentProviderError,
  type Provider,
  ThrottledProviderError,
  TransientProviderError,
  type VolumeOfInstance,
} from '../provider';
import { DEFAULT_CALL_BUDGETS } from './budgets';

type Instance = protos.google.cloud.compute.v1.IInstance;
type AttachedDisk = protos.google.cloud.compute.v1.IAttachedDisk;
type Operation = protos.google.cloud.compute.v1.IOperation;

export interface GcpProviderOptions {
  name?: string;
  /** The project of instance ids that name none. Default: the one Application Default Credentials resolve. */
  project?: string;
  /** The zone of instance ids that name none (a bare `name`). Default: none; ids then must be `zone:name`. */
  zone?: string;
  /** An endpoint override (a Private Service Connect endpoint, a test server): host name only. */
  apiEndpoint?: string;
  port?: number;
  /** `http` only for a local test server. */
  protocol?: 'http' | 'https';
  /** A ready auth client (tests: google-auth-library's PassThroughClient). Default: Application Default Credentials. */
  authClient?: AuthClient;
  /**
   * Opt-in force: stop the whole instance at once (no graceful shutdown) and detach the disk from the TERMINATED
   * instance. Off by default: Compute Engine has no per-disk force, and this one powers off the instance.
   */
  forceByStoppingInstance?: boolean;
  /** Longest one HTTP request may take. Default 30 s. */
  requestTimeoutMs?: number;
  /** Longest one stopInstance (or the stop of a force) waits for TERMINATED before failing transiently. Default 10 min. */
  stopWaitMs?: number;
  /** Pause before asking again for a stop whose operation is done while the instance is not TERMINATED. Default 5 s. */
  stopPollMs?: number;
  /**
   * Longest one `zoneOperations.wait` may be held open by the server. Compute Engine answers a wait after at
   * most about 2 minutes, or sooner when the operation is done. Default 2.5 min.
   */
  operationWaitMs?: number;
  /** Calls per second this worker may make to Compute Engine (enforced by the activities). Default 10/s, burst 50. */
  budget?: CallBudget;
  /** Most volumes one `getAttachmentStates` takes. Default 100. */
  maxBatch?: number;
}

/** The default call budget (why this figure: activities/providers/budgets.ts). */
export const DEFAULT_GCP_BUDGET: CallBudget = DEFAULT_CALL_BUDGETS.gcp;
/** State checks in one batch: one instances.get per distinct instance, so the batch size only bounds the work. */
export const DEFAULT_GCP_MAX_BATCH = 100;
export const DEFAULT_GCP_REQUEST_TIMEOUT_MS = 30_000;
const DEFAULT_STOP_WAIT_MS = 10 * 60_000;
const DEFAULT_OPERATION_WAIT_MS = 150_000;
const COMPUTE_SCOPE = 'https://www.googleapis.com/auth/compute';

export const GCP_FORCE_UNSUPPORTED =
  'Compute Engine has no forced detach: instances.detachDisk takes only a device name and a request id, and a ' +
  'disk the guest does not release stays attached. Opt in to forcing by stopping the whole instance ' +
  '(STOPFLOW_GCP_FORCE=stop-instance) if losing what its other disks and processes have not flushed is acceptable';

const AUTH_FIX =
  'set up Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS=<service account key file>, ' +
  '`gcloud auth application-default login`, or the service account of the VM or workload) with ' +
  'compute.instances.get, compute.instances.detachDisk, compute.instances.stop, compute.zoneOperations.get/list ' +
  'and compute.projects.get ' +
  '(roles/compute.instanceAdmin.v1), and make sure the Compute Engine API is enabled in the project';

/** The zero UUID is refused by Compute Engine; a fixed namespace keeps derived request ids apart from others. */
const REQUEST_ID_NAMESPACE = 'stopflow-gcp-request-id:';

/**
 * A UUID derived from the idempotency key and what the call does (RFC 4122 version 5 layout over SHA-1): the
 * same key gives the same requestId on every retry, so Compute Engine deduplicates the retried request.
 */
export function requestIdFor(idempotencyKey: string | undefined, purpose: string): string {
  if (idempotencyKey === undefined) return randomUUID();
  const bytes = createHash('sha1').update(`${REQUEST_ID_NAMESPACE}${purpose}:${idempotencyKey}`).digest();
  bytes[6] = ((bytes[6] ?? 0) & 0x0f) | 0x50;
  bytes[8] = ((bytes[8] ?? 0) & 0x3f) | 0x80;
  const hex = bytes.subarray(0, 16).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

/** STOPFLOW_GCP_FORCE values: `off` (default) or `stop-instance` (the opt-in force). */
export const GCP_FORCE_MODES = ['off', 'stop-instance'] as const;

/**
 * The provider's options from the worker's environment (worker/config.ts checks the same variables first):
 * STOPFLOW_GCP_PROJECT, STOPFLOW_GCP_ZONE, STOPFLOW_GCP_FORCE=stop-instance, and STOPFLOW_GCP_ENDPOINT (an https
 * URL; plain http only on a loopback address, for a local test server, and then no credentials are sent at all).
 */
export function gcpOptionsFromEnv(env: Record<string, string | undefined>): GcpProviderOptions {
  const options: GcpProviderOptions = {};
  const project = env.STOPFLOW_GCP_PROJECT?.trim();
  const zone = env.STOPFLOW_GCP_ZONE?.trim();
  if (project) options.project = project;
  if (zone) options.zone = zone;
  if (env.STOPFLOW_GCP_FORCE?.trim() === 'stop-instance') options.forceByStoppingInstance = true;
  const endpoint = env.STOPFLOW_GCP_ENDPOINT?.trim();
  if (endpoint) {
    const url = new URL(endpoint);
    options.apiEndpoint = url.hostname.replace(/^\[(.*)\]$/, '$1');
    if (url.port) options.port = Number(url.port);
    if (url.protocol === 'http:') {
      if (!isLoopback(url.hostname))
        throw new PermanentProviderError('STOPFLOW_GCP_ENDPOINT: plain http only on loopback');
      // A token must never travel in clear text: a local server gets no credentials.
      options.protocol = 'http';
      options.authClient = new PassThroughClient();
    }
  }
  return options;
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

// --- errors ---

/**
 * The error classification table (docs/providers.md has the same):
 *   reason rateLimitExceeded / userRateLimitExceeded, or HTTP 429   -> ThrottledProviderError (Retry-After honoured)
 *   HTTP 5xx, resourceNotReady, HTTP 409, network errors, timeouts   -> TransientProviderError
 *   HTTP 401, 403 (forbidden, insufficientPermissions, API disabled) -> PermanentProviderError (with the fix)
 *   other HTTP 4xx (invalid, badRequest, ...)                        -> PermanentProviderError
 * and, read by the operation that got them (not here): NotFound of the instance is "detached" for state checks
 * and detach; "No attached disk found" from detachDisk is already detached; RESOURCE_NOT_FOUND as the error of a
 * detach operation is already detached.
 */
const THROTTLING_REASONS = new Set(['rateLimitExceeded', 'userRateLimitExceeded', 'RATE_LIMIT_EXCEEDED']);
const TRANSIENT_REASONS = new Set(['resourceNotReady', 'backendError', 'internalError', 'RESOURCE_NOT_READY']);
const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EAI_AGAIN',
  'ENOTFOUND',
  'EHOSTUNREACH',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
]);

export interface GcpErrorInfo {
  /** HTTP status, when the API answered. */
  status?: number;
  /** The first `errors[].reason` of the API's answer (`notFound`, `rateLimitExceeded`), or an operation error code. */
  reason?: string;
  message: string;
  retryAfterMs?: number;
  /** A network error code (ECONNREFUSED), when there was no answer. */
  networkCode?: string;
}

interface ApiErrorBody {
  error?: { code?: number; message?: string; status?: string; errors?: { reason?: string; message?: string }[] };
}

function parseBody(data: unknown): ApiErrorBody | undefined {
  if (typeof data === 'object' && data !== null) return data as ApiErrorBody;
  if (typeof data !== 'string' || !data.trimStart().startsWith('{')) return undefined;
  try {
    return JSON.parse(data) as ApiErrorBody;
  } catch {
    return undefined;
  }
}

/** A Retry-After header (seconds or an HTTP date), in ms. */
export function parseRetryAfter(value: string | null | undefined): number | undefined {
  if (value === null || value === undefined) return undefined;
  const text = value.trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Math.round(Number(text) * 1000);
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

interface ErrorShape {
  message?: string;
  code?: unknown;
  status?: unknown;
  reason?: unknown;
  cause?: { code?: unknown };
  response?: { status?: number; data?: unknown; headers?: { get?(name: string): string | null } };
}

/** What an SDK error says: the answer's status, reason and message; never the request (its headers hold the token). */
export function readGcpError(err: unknown): GcpErrorInfo {
  const e = (err ?? {}) as ErrorShape;
  const response = e.response;
  const body = parseBody(response?.data) ?? parseBody(e.message);
  const status = response?.status ?? (typeof e.status === 'number' ? e.status : undefined);
  const info: GcpErrorInfo = {
    message: body?.error?.message ?? (err instanceof Error ? err.message : String(err)),
  };
  if (status !== undefined) info.status = status;
  const reason = body?.error?.errors?.find((x) => x.reason)?.reason ?? (typeof e.reason === 'string' ? e.reason : '');
  if (reason) info.reason = reason;
  const retryAfter = parseRetryAfter(response?.headers?.get?.('retry-after'));
  if (retryAfter !== undefined) info.retryAfterMs = retryAfter;
  for (const code of [e.code, e.cause?.code]) {
    if (typeof code === 'string' && NETWORK_CODES.has(code)) info.networkCode = code;
  }
  return info;
}

function describe(info: GcpErrorInfo): string {
  const tags = [info.status !== undefined ? `HTTP ${info.status}` : undefined, info.reason, info.networkCode].filter(
    (t): t is string => t !== undefined,
  );
  return `${tags.length > 0 ? `${tags.join(' ')}: ` : ''}${info.message}`;
}

/** The answer a classified error was made from, so the operation that got it can still read it (NotFound). */
const answers = new WeakMap<Error, GcpErrorInfo>();

/** What the API answered, for an SDK error or an error classifyGcpError made from one. */
export function answerOf(err: unknown): GcpErrorInfo {
  return (err instanceof Error ? answers.get(err) : undefined) ?? readGcpError(err);
}

/** Maps an API answer (or its absence) to the provider error types the activities understand. */
export function classifyGcpError(err: unknown, what: string): Error {
  if (
    err instanceof TransientProviderError ||
    err instanceof PermanentProviderError ||
    err instanceof ForceUnsupportedError
  ) {
    return err;
  }
  const info = readGcpError(err);
  const error = classify(info, `${what}: ${describe(info)}`);
  answers.set(error, info);
  return error;
}

function classify(info: GcpErrorInfo, message: string): Error {
  const { status, reason } = info;
  if ((reason !== undefined && THROTTLING_REASONS.has(reason)) || status === 429) {
    return new ThrottledProviderError(
      `${message} (throttled; every call of this provider backs off)`,
      info.retryAfterMs,
    );
  }
  if (status === 401 || status === 403) return new PermanentProviderError(`${message} (${AUTH_FIX})`);
  if (
    (reason !== undefined && TRANSIENT_REASONS.has(reason)) ||
    status === 409 ||
    (status !== undefined && status >= 500) ||
    info.networkCode !== undefined
  ) {
    return new TransientProviderError(message);
  }
  if (status !== undefined && status >= 400) return new PermanentProviderError(message);
  // No answer at all (socket closed, DNS): worth another try.
  return new TransientProviderError(message);
}

/** The error of a finished operation (`error.errors[]`), classified as an answer with that HTTP status would be. */
function operationError(op: Operation, what: string): Error | undefined {
  const first = op.error?.errors?.[0];
  if (!first) return undefined;
  const info: GcpErrorInfo = { message: first.message ?? 'operation failed' };
  if (first.code) info.reason = first.code;
  if (op.httpErrorStatusCode) info.status = op.httpErrorStatusCode;
  const error = classifyGcpError(
    { message: info.message, reason: info.reason, status: info.status },
    `${what} (operation ${op.name})`,
  );
  return error;
}

const isNotFound = (err: unknown) => {
  const info = answerOf(err);
  return info.status === 404 || info.reason === 'notFound';
};

// --- names ---

export interface InstanceName {
  project: string;
  zone: string;
  name: string;
}

const NAME = /^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$/;
const ZONE = /^[a-z][-a-z0-9]{0,62}$/;
const PROJECT = /^(?:[a-z0-9.-]+:)?[a-z][-a-z0-9]{0,61}[a-z0-9]$/;

/** The disk name at the end of a disk URL (`.../zones/z/disks/NAME` or `.../regions/r/disks/NAME`). */
export function diskName(source: string | null | undefined): string | undefined {
  const match = /\/disks\/([^/]+)$/.exec(source ?? '');
  return match?.[1];
}

/** The entry of `instance.disks` that is this volume: its disk name, or its device name, is the volumeId. */
function findDisk(instance: Instance, volume: VolumeRef): AttachedDisk | undefined {
  const disks = instance.disks ?? [];
  return (
    disks.find((d) => diskName(d.source) === volume.volumeId) ?? disks.find((d) => d.deviceName === volume.volumeId)
  );
}

// --- cancellation and timeouts of each HTTP request ---

interface CallScope {
  signal: AbortSignal | undefined;
  timeout: AbortSignal;
}

/** The call an HTTP request belongs to: the SDK keeps the async context from our call down to its fetch. */
const callScope = new AsyncLocalStorage<CallScope>();
const intercepted = new WeakSet<AuthClient>();

/**
 * Gives every request of this auth client the signal and timeout of the call it belongs to. The SDK's REST
 * transport neither takes an AbortSignal nor applies its own per-call timeout to the HTTP request, which
 * would otherwise wait forever on an endpoint that accepted the connection and never answers.
 */
function interceptRequests(client: AuthClient): void {
  if (intercepted.has(client)) return;
  intercepted.add(client);
  client.transporter.interceptors.request.add({
    resolved: async (config) => {
      const scope = callScope.getStore();
      if (!scope) return config;
      const signals: AbortSignal[] = [scope.timeout];
      if (scope.signal) signals.push(scope.signal);
      if (config.signal) signals.push(config.signal as AbortSignal);
      config.signal = AbortSignal.any(signals);
      return config;
    },
  });
}

/** Settles like `promise`, or rejects with the signal's reason as soon as it aborts. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    if (signal.aborted) {
      onAbort();
      return;
    }
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
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

interface Clients {
  auth: AuthClient;
  instances: InstancesClient;
  instancesBeta: v1beta.InstancesClient;
  operations: ZoneOperationsClient;
  projects: ProjectsClient;
  project: string | undefined;
}

const DONE = 'DONE';
const TERMINATED = 'TERMINATED';

export class GcpProvider implements Provider {
  readonly name: string;
  readonly supportsForce: boolean;
  readonly budget: CallBudget;
  readonly maxBatch: number;
  private readonly requestTimeoutMs: number;
  private readonly stopWaitMs: number;
  private readonly operationWaitMs: number;
  private readonly stopPollMs: number;
  private clients: Promise<Clients> | undefined;

  constructor(private readonly options: GcpProviderOptions = {}) {
    this.name = options.name ?? 'gcp';
    this.supportsForce = options.forceByStoppingInstance ?? false;
    this.budget = options.budget ?? DEFAULT_GCP_BUDGET;
    this.maxBatch = Math.max(1, Math.floor(options.maxBatch ?? DEFAULT_GCP_MAX_BATCH));
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_GCP_REQUEST_TIMEOUT_MS;
    this.stopWaitMs = options.stopWaitMs ?? DEFAULT_STOP_WAIT_MS;
    this.operationWaitMs = options.operationWaitMs ?? DEFAULT_OPERATION_WAIT_MS;
    this.stopPollMs = options.stopPollMs ?? 5_000;
  }

  async listAttachedVolumes(instanceId: string, options: CallOptions = {}): Promise<VolumeRef[]> {
    const id = await this.instanceName(instanceId, options.signal);
    const instance = await this.getInstance(id, options.signal);
    if (!instance) throw new PermanentProviderError(`Compute Engine has no instance ${instanceId}`);
    const volumes: VolumeRef[] = [];
    for (const disk of instance.disks ?? []) {
      // The boot disk stays (it detaches only from a TERMINATED instance, and stopping keeps it); a local SSD
      // (SCRATCH) cannot be detached at all.
      if (disk.boot || disk.type === 'SCRATCH') continue;
      const volumeId = diskName(disk.source) ?? disk.deviceName;
      if (!volumeId) continue;
      volumes.push(disk.deviceName ? { volumeId, device: disk.deviceName } : { volumeId });
    }
    return volumes;
  }

  async detachVolume(instanceId: string, volume: VolumeRef, options: CallOptions = {}): Promise<void> {
    const { signal } = options;
    const id = await this.instanceName(instanceId, signal);
    const instance = await this.getInstance(id, signal);
    const disk = instance && findDisk(instance, volume);
    if (!instance || !disk?.deviceName) return; // not attached to this instance (any more): already detached
    if (disk.boot && instance.status !== TERMINATED) {
      throw new PermanentProviderError(
        `${volume.volumeId} is the boot disk of ${instanceId}: Compute Engine detaches a boot disk only from a TERMINATED instance`,
      );
    }
    await this.sendDetach(id, disk.deviceName, requestIdFor(options.idempotencyKey, 'detach'), signal);
  }

  async forceDetachVolume(instanceId: string, volume: VolumeRef, options: CallOptions = {}): Promise<ForceAnswer> {
    if (!this.supportsForce)
      throw new ForceUnsupportedError(`${volume.volumeId} on ${instanceId}: ${GCP_FORCE_UNSUPPORTED}`);
    const { signal } = options;
    const id = await this.instanceName(instanceId, signal);
    let instance = await this.getInstance(id, signal);
    // Not read first (forceRefusesDetached is not declared): `sent` throughout, the audit's safe side.
    if (!instance || !findDisk(instance, volume)) return 'sent';
    if (instance.status !== TERMINATED) {
      await this.stopAndWait(id, options.idempotencyKey, 'force-stop', true, signal, options.nextRequest);
      instance = await this.getInstance(id, signal);
    }
    // A detach pending on the running instance completes once it is TERMINATED; otherwise detach now.
    const disk = instance && findDisk(instance, volume);
    if (!instance || !disk?.deviceName) return 'sent';
    await this.sendDetach(id, disk.deviceName, requestIdFor(options.idempotencyKey, 'force-detach'), signal);
    return 'sent';
  }

  async getAttachmentState(instanceId: string, volume: VolumeRef, options: CallOptions = {}): Promise<AttachmentState> {
    const [state] = await this.getAttachmentStates([{ instanceId, volume }], options);
    if (state instanceof Error) throw state;
    return state ?? 'attached';
  }

  /**
   * One `instances.get` per distinct instance (and, for instances that still list an asked disk, one look at
   * their pending detach operations), answered in the order given. An instance that cannot be read (its zone
   * away, a timeout) answers its disks with that error; the others are answered. A cancel ends the whole batch.
   */
  /**
   * For the call budget: an `instances.get` per instance of the batch, and for those with a disk still
   * attached an operations list (counted for all: the budget must not be exceeded, only under-used).
   */
  batchRequests(targets: readonly VolumeOfInstance[]): number {
    return 2 * new Set(targets.map((t) => t.instanceId)).size;
  }

  async getAttachmentStates(
    targets: readonly VolumeOfInstance[],
    options: CallOptions = {},
  ): Promise<Array<AttachmentState | Error>> {
    const { signal } = options;
    type Entry = { id: InstanceName; instance: Instance | undefined; detaching?: boolean; error?: Error };
    const byInstance = new Map<string, Entry>();
    // Each instance's own failure is its disks' answer. A cancel is the whole batch's, and so is throttling: the
    // quota is the project's, and reading on into it would only spend more of it.
    const ownFailure = (err: unknown): Error => {
      if (signal?.aborted || err instanceof ThrottledProviderError) throw err;
      return err instanceof Error ? err : new TransientProviderError(String(err));
    };
    // A zone that failed one read (away, timing out) answers its other instances with that error unasked: a
    // batch spends one request timeout per zone away, not one per instance.
    const zonesAway = new Map<string, Error>();
    // Each target's instance key, or why its instance name could not be resolved.
    const keys: Array<string | Error> = [];
    for (const target of targets) {
      try {
        const id = await this.instanceName(target.instanceId, signal);
        const key = `${id.project}/${id.zone}/${id.name}`;
        keys.push(key);
        if (byInstance.has(key)) continue;
        const zone = `${id.project}/${id.zone}`;
        const away = zonesAway.get(zone);
        if (away) {
          byInstance.set(key, { id, instance: undefined, error: away });
          continue;
        }
        try {
          byInstance.set(key, { id, instance: await this.getInstance(id, signal) });
        } catch (err) {
          const error = ownFailure(err);
          if (error instanceof TransientProviderError) {
            zonesAway.set(
              zone,
              new TransientProviderError(
                `not read: ${id.zone} failed a read of this batch (${id.name}: ${error.message})`,
              ),
            );
          }
          byInstance.set(key, { id, instance: undefined, error });
        }
      } catch (err) {
        keys.push(ownFailure(err));
      }
    }
    const states: Array<AttachmentState | Error> = [];
    for (const [i, target] of targets.entries()) {
      const key = keys[i];
      if (key instanceof Error) {
        states.push(key);
        continue;
      }
      const entry = byInstance.get(key ?? '');
      if (entry?.error) {
        states.push(entry.error);
        continue;
      }
      if (!entry?.instance || !findDisk(entry.instance, target.volume)) {
        states.push('detached');
        continue;
      }
      if (entry.detaching === undefined) {
        try {
          entry.detaching = await this.hasPendingDetach(entry.id, entry.instance, signal);
        } catch (err) {
          entry.error = ownFailure(err);
          states.push(entry.error);
          continue;
        }
      }
      states.push(entry.detaching ? 'detaching' : 'attached');
    }
    return states;
  }

  /** `instances.get`: TERMINATED (Compute Engine's stopped), or no such instance any more. */
  async isInstanceStopped(instanceId: string, options: CallOptions = {}): Promise<boolean> {
    const instance = await this.getInstance(await this.instanceName(instanceId, options.signal), options.signal);
    return instance === undefined || instance.status === TERMINATED;
  }

  async stopInstance(instanceId: string, options: CallOptions = {}): Promise<void> {
    const id = await this.instanceName(instanceId, options.signal);
    await this.stopAndWait(id, options.idempotencyKey, 'stop', false, options.signal, options.nextRequest);
  }

  /** Credentials resolve, the project is known, and it answers `projects.get`. */
  async checkUsable(): Promise<void> {
    const what = `gcp provider "${this.name}" cannot use Compute Engine`;
    try {
      const clients = await this.getClients(undefined);
      const project = clients.project;
      if (!project) {
        throw new PermanentProviderError(
          'no project: set STOPFLOW_GCP_PROJECT (or GOOGLE_CLOUD_PROJECT), or use credentials that name one',
        );
      }
      await this.call(`projects.get ${project}`, undefined, this.requestTimeoutMs, () =>
        clients.projects.get({ project }),
      );
    } catch (err) {
      throw new Error(`${what}: ${classifyGcpError(err, 'check').message}`);
    }
  }

  /** Releases the clients' connections. */
  async close(): Promise<void> {
    const clients = await this.clients?.catch(() => undefined);
    this.clients = undefined;
    if (!clients) return;
    await Promise.all([
      clients.instances.close(),
      clients.instancesBeta.close(),
      clients.operations.close(),
      clients.projects.close(),
    ]);
  }

  // --- the calls ---

  /** Sends detachDisk with this requestId; an answer that says the disk is not attached is success. */
  private async sendDetach(
    id: InstanceName,
    deviceName: string,
    requestId: string,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const what = `instances.detachDisk ${deviceName} from ${id.zone}/${id.name}`;
    let op: Operation;
    try {
      op = await this.call(what, signal, this.requestTimeoutMs, async (c) => {
        const [lro] = await c.instances.detachDisk({ ...id, instance: id.name, deviceName, requestId });
        return (lro as { latestResponse?: Operation }).latestResponse ?? {};
      });
    } catch (err) {
      if (signal?.aborted) throw err;
      const info = answerOf(err);
      // The instance is gone, or nothing is attached under this device name: nothing is left to detach.
      if (info.status === 404 || info.reason === 'notFound') return;
      if (info.status === 400 && /no attached disk/i.test(info.message)) return;
      throw err;
    }
    // The same requestId again answers the operation already there; if it already failed, say why.
    if (op.status === DONE) {
      const failure = operationError(op, what);
      if (failure && !/RESOURCE_NOT_FOUND/.test(op.error?.errors?.[0]?.code ?? '')) throw failure;
    }
  }

  /** Whether a detachDisk operation on this instance is still pending: its disks read `detaching` meanwhile. */
  private async hasPendingDetach(
    id: InstanceName,
    instance: Instance,
    signal: AbortSignal | undefined,
  ): Promise<boolean> {
    const target = instance.selfLink ?? '';
    const filter = `(targetLink = "${target}") AND (operationType = "detachDisk") AND (status != "DONE")`;
    let pageToken: string | undefined;
    // Filtering is server-side, but a page may still come back empty with a token: a few pages at most.
    for (let page = 0; page < 10; page++) {
      const what = `zoneOperations.list ${id.zone} (detachDisk of ${id.name})`;
      const [items, , raw] = await this.call(what, signal, this.requestTimeoutMs, (c) =>
        c.operations.list(
          { project: id.project, zone: id.zone, filter, maxResults: 500, ...(pageToken ? { pageToken } : {}) },
          { autoPaginate: false },
        ),
      );
      if (items.some((op) => op.status !== DONE && op.targetLink === target)) return true;
      pageToken = raw?.nextPageToken || undefined;
      if (!pageToken) return false;
    }
    return false;
  }

  /**
   * Asks for the stop (hard: v1beta with noGracefulShutdown) and waits for its operation until the instance is
   * TERMINATED, at most `stopWaitMs`. Each round has its own requestId: a retried call finds its own operations
   * again, and an instance started again by someone meanwhile gets a new stop.
   */
  private async stopAndWait(
    id: InstanceName,
    idempotencyKey: string | undefined,
    purpose: string,
    hard: boolean,
    signal: AbortSignal | undefined,
    /** The call budget's token for each request after the first (CallOptions.nextRequest). */
    nextRequest: () => Promise<void> = async () => {},
  ): Promise<void> {
    const deadline = Date.now() + this.stopWaitMs;
    const where = `${id.zone}/${id.name}`;
    for (let round = 0; ; round++) {
      // A stop done while the instance is not TERMINATED (started again, or still settling): not in a tight loop.
      if (round > 0) {
        await sleep(this.stopPollMs, signal);
        await nextRequest();
      }
      const instance = await this.getInstance(id, signal);
      if (!instance) throw new PermanentProviderError(`Compute Engine has no instance ${where}`);
      if (instance.status === TERMINATED) return;
      if (Date.now() > deadline) {
        throw new TransientProviderError(
          `Compute Engine instance ${where} is still ${instance.status} after ${Math.round(this.stopWaitMs / 1000)}s; asking again`,
        );
      }
      const requestId = requestIdFor(idempotencyKey, `${purpose}/${round}`);
      const what = `instances.stop${hard ? ' (noGracefulShutdown)' : ''} ${where}`;
      await nextRequest();
      let op = await this.call(what, signal, this.requestTimeoutMs, async (c) => {
        const request = { project: id.project, zone: id.zone, instance: id.name, requestId };
        const [lro] = hard
          ? await c.instancesBeta.stop({ ...request, noGracefulShutdown: true })
          : await c.instances.stop(request);
        return (lro as { latestResponse?: Operation }).latestResponse ?? {};
      });
      while (op.status !== DONE) {
        const left = deadline - Date.now();
        if (left <= 0) break;
        const operation = op.name ?? '';
        await nextRequest();
        // The server holds a wait until the operation is done or about 2 minutes passed; our timeout is longer.
        op = await this.call(
          `zoneOperations.wait ${operation}`,
          signal,
          Math.min(left, this.operationWaitMs) + this.requestTimeoutMs,
          async (c) => (await c.operations.wait({ project: id.project, zone: id.zone, operation }))[0],
        );
      }
      if (op.status === DONE) {
        const failure = operationError(op, what);
        if (failure) throw failure;
      }
    }
  }

  private async getInstance(id: InstanceName, signal: AbortSignal | undefined): Promise<Instance | undefined> {
    try {
      return await this.call(`instances.get ${id.zone}/${id.name}`, signal, this.requestTimeoutMs, async (c) => {
        const [instance] = await c.instances.get({ project: id.project, zone: id.zone, instance: id.name });
        return instance;
      });
    } catch (err) {
      if (!signal?.aborted && isNotFound(err)) return undefined;
      throw err;
    }
  }

  /**
   * Runs one SDK call with the caller's signal and its own timeout on every HTTP request it makes; an aborted
   * call rejects with the signal's reason at once (as fetch does), a timed-out one transiently, the rest classified.
   */
  private async call<T>(
    what: string,
    signal: AbortSignal | undefined,
    timeoutMs: number,
    fn: (clients: Clients) => Promise<T>,
  ): Promise<T> {
    if (signal?.aborted) throw signal.reason;
    const clients = await this.getClients(signal);
    const timeout = AbortSignal.timeout(timeoutMs);
    const pending = callScope.run({ signal, timeout }, () => fn(clients));
    try {
      return await untilAborted(pending, signal);
    } catch (err) {
      pending.catch(() => undefined); // the abandoned call's own rejection is expected
      if (signal?.aborted) throw signal.reason;
      if (timeout.aborted) {
        throw new TransientProviderError(`${what}: no answer within ${timeoutMs} ms (requestTimeoutMs)`);
      }
      throw classifyGcpError(err, what);
    }
  }

  /** The SDK's clients, built once credentials resolve; a failure is retried by the next call. */
  private getClients(signal: AbortSignal | undefined): Promise<Clients> {
    if (!this.clients) {
      this.clients = this.createClients().catch((err: unknown) => {
        this.clients = undefined;
        throw err;
      });
    }
    return untilAborted(this.clients, signal);
  }

  private async createClients(): Promise<Clients> {
    const o = this.options;
    let auth = o.authClient;
    let project = o.project;
    if (!auth) {
      const adc = new GoogleAuth({ scopes: [COMPUTE_SCOPE] });
      try {
        auth = (await adc.getClient()) as AuthClient;
        project ??= (await adc.getProjectId().catch(() => undefined)) ?? undefined;
      } catch (err) {
        // The library's message says which sources it tried; it names files, never secrets.
        throw new PermanentProviderError(
          `no Google credentials: ${err instanceof Error ? err.message.split('\n')[0] : String(err)} (${AUTH_FIX})`,
        );
      }
    }
    interceptRequests(auth);
    const clientOptions = {
      authClient: auth,
      ...(o.apiEndpoint !== undefined ? { apiEndpoint: o.apiEndpoint } : {}),
      ...(o.port !== undefined ? { port: o.port } : {}),
      ...(o.protocol !== undefined ? { protocol: o.protocol } : {}),
    };
    return {
      auth,
      instances: new InstancesClient(clientOptions),
      instancesBeta: new v1beta.InstancesClient(clientOptions),
      operations: new ZoneOperationsClient(clientOptions),
      projects: new ProjectsClient(clientOptions),
      project,
    };
  }

  /** `name`, `zone:name` or `project:zone:name` (a domain-scoped project has a colon of its own). */
  private async instanceName(instanceId: string, signal: AbortSignal | undefined): Promise<InstanceName> {
    const parts = instanceId.split(':');
    const name = parts.pop() ?? '';
    const zone = parts.pop() ?? this.options.zone;
    const project = parts.length > 0 ? parts.join(':') : (await this.getClients(signal)).project;
    const rule =
      'a Compute Engine instance is named "zone:name" (us-central1-a:web-1), "project:zone:name", or "name" with STOPFLOW_GCP_ZONE set';
    if (!NAME.test(name))
      throw new PermanentProviderError(`${instanceId}: "${name}" is not an instance name (${rule})`);
    if (zone === undefined || !ZONE.test(zone)) {
      throw new PermanentProviderError(`${instanceId}: no zone (${rule})`);
    }
    if (project === undefined || !PROJECT.test(project)) {
      throw new PermanentProviderError(
        `${instanceId}: no project (set STOPFLOW_GCP_PROJECT or GOOGLE_CLOUD_PROJECT, or name it: project:zone:name)`,
      );
    }
    return { project, zone, name };
  }
}
