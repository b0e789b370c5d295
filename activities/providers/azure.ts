/**
 * `azure`: managed data disks of Azure virtual machines through
 * `@azure/arm-compute` and `@azure/identity` (docs/providers.md "The azure provider").
 *
 * - instance: `<resourceGroup>:<vmName>` (a stop request's id cannot hold a
 *   `/`, and neither name can hold a `:`); the subscription is the provider's
 *   (`AZURE_SUBSCRIPTION_ID`). Scale-set VMs in Uniform orchestration are not
 *   VM resources and are not served.
 * - volumes: the VM model's data disks, by disk name (`volumeId`), with
 *   `device: "lun<N>"`; the OS disk is never listed and never detached.
 * - detach: a PATCH of the VM model that sets `toBeDetached: true` on the data
 *   disk. The data-disk list is written whole, so the provider reads the latest
 *   model and writes with its ETag (`If-Match`); a 412 (someone else wrote the
 *   model in between) reads again and retries, so a disk attached meanwhile is
 *   never dropped from the list (which would detach it). `DetachUnattachedDisk`
 *   means done. Only the request is sent: the write's long-running operation is
 *   not waited for (a normal detach takes 30-120 s); state checks follow it.
 * - force: the same with `detachOption: "ForceDetach"`, which Azure documents as
 *   a preview feature, for managed data disks only, and not for scale sets: an
 *   unmanaged (VHD) disk, or a VM in a scale set, refuses force
 *   (ForceUnsupportedError).
 * - state: the VM model's data disks: absent -> detached, `toBeDetached`
 *   -> detaching, else attached. One GET of a VM answers every disk of it
 *   (`getAttachmentStates`).
 * - stop: `powerOff` (graceful: the guest shuts down; `skipShutdown` is never
 *   sent, since every disk is already detached when the workflow stops the
 *   instance), then the instance view until `PowerState/stopped` or
 *   `deallocated`, bounded by `stopWaitMs`.
 *
 * Every call takes the activity's AbortSignal (as the SDK's `abortSignal`) and
 * a per-request timeout (`requestTimeoutMs`). Credentials come from
 * `DefaultAzureCredential` unless a credential is given; the token never
 * appears in an error or a log line: errors are rebuilt from the answer's code
 * and message only, never from the SDK's error object (which carries the
 * request, headers included).
 */

import type { DataDisk, VirtualMachine } from '@azure/arm-compute';
import { ComputeManagementClient, type ComputeManagementClientOptionalParams } from '@azure/arm-compute';
import { createComputeManagement } from '@azure/arm-compute/api';
import { DefaultAzureCredential, type TokenCredential } from '@azure/identity';
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

export interface AzureProviderOptions {
  /** The subscription of every VM this provider serves. Default: AZURE_SUBSCRIPTION_ID. */
  subscriptionId?: string;
  /** Default: `new DefaultAzureCredential()` (environment, workload identity, managed identity, Azure CLI, ...). */
  credential?: TokenCredential;
  /**
   * Resource Manager's endpoint, for a sovereign cloud or a test server (https only: the SDK never sends a
   * token over http). Default `https://management.azure.com`. The token's scope follows it (`<origin>/.default`).
   */
  endpoint?: string;
  /** Passed to the SDK client (e.g. `tlsOptions: { ca }` for a private CA, `retryOptions`). */
  clientOptions?: ComputeManagementClientOptionalParams;
  name?: string;
  /** Longest one stopInstance call waits for the VM to be stopped before failing transiently. Default 10 minutes. */
  stopWaitMs?: number;
  /** Pause between instance-view checks while the VM stops. Default 5 s. */
  stopPollMs?: number;
  /** Longest one HTTP request may take (per SDK attempt). Default 30 s. */
  requestTimeoutMs?: number;
  /** How many times a write whose ETag went stale (412) reads the model again and retries. Default 5. */
  maxConflictRetries?: number;
  /** Calls per second this worker may make to Resource Manager (enforced by the activities). Default 5/s, burst 20. */
  budget?: CallBudget;
  /** Most volumes one getAttachmentStates call takes (one VM GET per VM among them). Default 64. */
  maxBatch?: number;
}

/** The default call budget (why this figure: activities/providers/budgets.ts). */
export const DEFAULT_AZURE_BUDGET: CallBudget = DEFAULT_CALL_BUDGETS.azure;
/** A VM has at most 64 data disks; a batch of that many spans one VM or several, one GET each. */
export const DEFAULT_AZURE_MAX_BATCH = 64;
export const DEFAULT_AZURE_REQUEST_TIMEOUT_MS = 30_000;
export const DEFAULT_AZURE_ENDPOINT = 'https://management.azure.com';
/** Resource Manager's subscriptions API version for the start-up check's GET /subscriptions/{id}. */
const SUBSCRIPTIONS_API_VERSION = '2022-12-01';

/** Azure resource group names: 1-90 of letters, digits, `_ - . ( )`, not ending in `.` (ids cannot hold `()`). */
const RESOURCE_GROUP = /^[A-Za-z0-9_.-]{0,89}[A-Za-z0-9_-]$/;
/** Azure VM names: 1-64 of letters, digits, `_ - .` (Windows computer names are shorter; the VM name is not). */
const VM_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
export const AZURE_INSTANCE_ID_RULE =
  'an azure instance id is "<resourceGroup>:<vmName>", such as "prod-rg:web-01" (the subscription is the worker\'s AZURE_SUBSCRIPTION_ID)';

/** A subscription id is a GUID. */
export function isSubscriptionId(text: string): boolean {
  return /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/.test(text);
}

/** `rg:vm` -> { resourceGroup, vmName }; a PermanentProviderError naming the format otherwise. */
export function parseAzureInstanceId(instanceId: string): { resourceGroup: string; vmName: string } {
  const parts = instanceId.split(':');
  const [resourceGroup = '', vmName = ''] = parts;
  if (parts.length !== 2 || !RESOURCE_GROUP.test(resourceGroup) || !VM_NAME.test(vmName)) {
    throw new PermanentProviderError(
      `not an azure instance id: ${JSON.stringify(instanceId)}; ${AZURE_INSTANCE_ID_RULE}`,
    );
  }
  return { resourceGroup, vmName };
}

// --- error classification (docs/providers.md "The azure provider", the table) ---

/** Credential failures from @azure/identity, by name: the identity is missing or refused. */
const CREDENTIAL_ERRORS = new Set([
  'CredentialUnavailableError',
  'AggregateAuthenticationError',
  'AuthenticationRequiredError',
]);
/** Node's TLS verification failures: the worker does not trust the endpoint's certificate (configuration). */
const TLS_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);
/** 401 codes a fresh token fixes: the credential chain gets one on the next call. */
const EXPIRED_TOKEN = new Set(['ExpiredAuthenticationToken']);
const CREDENTIAL_FIX =
  'credentials come from DefaultAzureCredential: set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or a ' +
  'federated token: AZURE_FEDERATED_TOKEN_FILE), give the worker a managed identity, or run `az login`';
const PERMISSION_FIX =
  "give the worker's identity Microsoft.Compute/virtualMachines/read, /write and /powerOff/action, and write access " +
  "to the managed disks (Virtual Machine Contributor on the VMs' and disks' resource groups covers both)";

interface RestErrorShape {
  name?: string;
  code?: string;
  statusCode?: number;
  message?: string;
  /** Non-enumerable on the SDK's RestError; only its headers are read. */
  response?: { headers?: { get(name: string): string | undefined } };
}

function shape(err: unknown): RestErrorShape {
  return (err !== null && typeof err === 'object' ? err : {}) as RestErrorShape;
}

/** The ARM error code of a failed call ("ResourceNotFound"), or the local error's code or name. */
export function azureErrorCode(err: unknown): string {
  const e = shape(err);
  return e.code ?? e.name ?? 'Error';
}

/**
 * The server's retry hint in ms: `retry-after-ms`, `x-ms-retry-after-ms` (milliseconds) or `Retry-After`
 * (seconds or an HTTP date), as the SDK's own throttling policy reads them.
 */
export function azureRetryAfterMs(err: unknown): number | undefined {
  const headers = shape(err).response?.headers;
  if (!headers || typeof headers.get !== 'function') return undefined;
  for (const name of ['retry-after-ms', 'x-ms-retry-after-ms']) {
    const value = headers.get(name)?.trim();
    if (value && /^\d+$/.test(value)) return Number(value);
  }
  const value = headers.get('retry-after')?.trim();
  if (!value) return undefined;
  if (/^\d+(\.\d+)?$/.test(value)) return Math.round(Number(value) * 1000);
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

/**
 * Maps a failed call to the provider errors the activities understand. The message is rebuilt from the code
 * and the server's message only: the SDK's error object also carries the request (Authorization header and all).
 */
export function classifyAzureError(err: unknown, what: string): Error {
  if (
    err instanceof TransientProviderError ||
    err instanceof PermanentProviderError ||
    err instanceof ForceUnsupportedError
  ) {
    return err;
  }
  const e = shape(err);
  const code = azureErrorCode(err);
  const status = e.statusCode;
  const message = `${what}: ${status !== undefined ? `${status} ` : ''}${code}: ${oneLine(e.message ?? String(err))}`;
  if (status === 429) {
    return new ThrottledProviderError(
      `${message} (throttled; every call of this provider backs off)`,
      azureRetryAfterMs(err),
    );
  }
  if (e.name !== undefined && CREDENTIAL_ERRORS.has(e.name)) {
    return new PermanentProviderError(`${what}: no Azure token (${e.name}); ${CREDENTIAL_FIX}`);
  }
  if (e.name === 'AuthenticationError') {
    // Entra ID itself answered: 5xx is its outage, anything else a refused identity.
    if (status !== undefined && status >= 500)
      return new TransientProviderError(`${what}: AuthenticationError ${status}`);
    return new PermanentProviderError(
      `${what}: Entra ID refused the worker's identity (AuthenticationError); ${CREDENTIAL_FIX}`,
    );
  }
  if (status === 401) {
    if (EXPIRED_TOKEN.has(code)) return new TransientProviderError(message);
    return new PermanentProviderError(`${message}; ${CREDENTIAL_FIX}`);
  }
  if (status === 403) return new PermanentProviderError(`${message}; ${PERMISSION_FIX}`);
  // 408, and 409: another operation holds the VM (Conflict, OperationNotAllowed while it updates), or one was preempted.
  if (status === 408 || status === 409) return new TransientProviderError(message);
  if (status !== undefined && status >= 500) return new TransientProviderError(message);
  if (status !== undefined && status >= 400) return new PermanentProviderError(message);
  if (TLS_CODES.has(code)) {
    return new PermanentProviderError(
      `${message} (the worker does not trust the endpoint's TLS certificate; for a private CA set NODE_EXTRA_CA_CERTS or the provider's clientOptions.tlsOptions.ca)`,
    );
  }
  // No answer (refused or reset connection, DNS, our request timeout: an AbortError when no signal aborted):
  // the endpoint may answer next time.
  return new TransientProviderError(message);
}

function oneLine(text: string): string {
  return text.replace(/\s+/g, ' ').trim().slice(0, 500);
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

const sameName = (a: string | undefined, b: string) => a !== undefined && a.toLowerCase() === b.toLowerCase();

/** The attachment of `diskName` in a VM model, as an AttachmentState (the OS disk reads attached). */
function diskState(vm: VirtualMachine, diskName: string): AttachmentState {
  if (sameName(vm.storageProfile?.osDisk?.name, diskName)) return 'attached';
  const disk = vm.storageProfile?.dataDisks?.find((d) => sameName(d.name, diskName));
  if (!disk) return 'detached';
  return disk.toBeDetached ? 'detaching' : 'attached';
}

type PowerState = 'starting' | 'running' | 'stopping' | 'stopped' | 'deallocating' | 'deallocated' | 'unknown';
const STOP_DONE = new Set<PowerState>(['stopped', 'deallocated']);
/** On the way to stopped: asking again would change nothing. */
const STOP_UNDER_WAY = new Set<PowerState>(['stopping', 'deallocating']);

export class AzureProvider implements Provider {
  readonly name: string;
  readonly supportsForce = true;
  readonly budget: CallBudget;
  readonly maxBatch: number;
  readonly subscriptionId: string;
  readonly client: ComputeManagementClient;
  private readonly context: ReturnType<typeof createComputeManagement>;
  private readonly stopWaitMs: number;
  private readonly stopPollMs: number;
  private readonly requestTimeoutMs: number;
  private readonly maxConflictRetries: number;

  constructor(options: AzureProviderOptions = {}) {
    this.name = options.name ?? 'azure';
    const subscriptionId = options.subscriptionId ?? process.env.AZURE_SUBSCRIPTION_ID ?? '';
    if (!isSubscriptionId(subscriptionId)) {
      throw new Error(
        `azure provider "${this.name}" needs a subscription id (a GUID): set AZURE_SUBSCRIPTION_ID${subscriptionId ? `, not ${JSON.stringify(subscriptionId)}` : ''}`,
      );
    }
    this.subscriptionId = subscriptionId;
    this.stopWaitMs = options.stopWaitMs ?? 10 * 60_000;
    this.stopPollMs = options.stopPollMs ?? 5_000;
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_AZURE_REQUEST_TIMEOUT_MS;
    this.maxConflictRetries = Math.max(0, Math.floor(options.maxConflictRetries ?? 5));
    this.budget = options.budget ?? DEFAULT_AZURE_BUDGET;
    this.maxBatch = Math.max(1, Math.floor(options.maxBatch ?? DEFAULT_AZURE_MAX_BATCH));
    const endpoint = options.endpoint ?? DEFAULT_AZURE_ENDPOINT;
    const credential = options.credential ?? new DefaultAzureCredential();
    const clientOptions: ComputeManagementClientOptionalParams = {
      ...options.clientOptions,
      endpoint,
      credentials: { scopes: [`${new URL(endpoint).origin}/.default`] },
    };
    this.client = new ComputeManagementClient(credential, subscriptionId, clientOptions);
    // The same pipeline options, for the one call the compute client has no method for (GET /subscriptions/{id}).
    this.context = createComputeManagement(credential, subscriptionId, clientOptions);
  }

  // `options.idempotencyKey` is not used: a VM-model write names the disk's desired state (toBeDetached), and
  // powerOff of a stopped VM changes nothing, so a retried call is the same as one call.

  async listAttachedVolumes(instanceId: string, options: CallOptions = {}): Promise<VolumeRef[]> {
    const vm = await this.getVm(instanceId, options.signal);
    return (vm.storageProfile?.dataDisks ?? [])
      .filter((d): d is DataDisk & { name: string } => d.name !== undefined && d.name !== '')
      .map((d) => ({ volumeId: d.name, device: `lun${d.lun}` }));
  }

  async detachVolume(instanceId: string, volume: VolumeRef, options: CallOptions = {}): Promise<void> {
    await this.detach(instanceId, volume.volumeId, false, options.signal);
  }

  async forceDetachVolume(instanceId: string, volume: VolumeRef, options: CallOptions = {}): Promise<ForceAnswer> {
    await this.detach(instanceId, volume.volumeId, true, options.signal);
    return 'sent';
  }

  async getAttachmentState(instanceId: string, volume: VolumeRef, options: CallOptions = {}): Promise<AttachmentState> {
    return diskState(await this.getVm(instanceId, options.signal), volume.volumeId);
  }

  /** One VM GET per distinct VM among the targets, answered in the order given. */
  /** One VM read per instance of the batch: that is what the call budget must count. */
  batchRequests(targets: readonly VolumeOfInstance[]): number {
    return new Set(targets.map((t) => t.instanceId)).size;
  }

  async getAttachmentStates(
    targets: readonly VolumeOfInstance[],
    options: CallOptions = {},
  ): Promise<Array<AttachmentState | Error>> {
    // A VM that cannot be read answers its disks with that error, and the others are answered. A cancel ends the
    // whole batch, and so does throttling (the limit is the subscription's: reading on would spend more of it).
    // Each read has its own timeout (requestTimeoutMs).
    const models = new Map<string, VirtualMachine | Error>();
    for (const instanceId of new Set(targets.map((t) => t.instanceId))) {
      try {
        models.set(instanceId, await this.getVm(instanceId, options.signal));
      } catch (err) {
        if (options.signal?.aborted || err instanceof ThrottledProviderError) throw err;
        models.set(instanceId, err instanceof Error ? err : new TransientProviderError(String(err)));
      }
    }
    return targets.map((t) => {
      const vm = models.get(t.instanceId);
      if (vm instanceof Error) return vm;
      // Every instance was read above; a missing model would be a bug here, never "detached".
      if (!vm) throw new TransientProviderError(`no VM model read for ${t.instanceId}`);
      return diskState(vm, t.volume.volumeId);
    });
  }

  /** The instance view's power state: stopped or deallocated. */
  async isInstanceStopped(instanceId: string, options: CallOptions = {}): Promise<boolean> {
    return STOP_DONE.has(await this.powerState(instanceId, options.signal));
  }

  async stopInstance(instanceId: string, options: CallOptions = {}): Promise<void> {
    const { signal } = options;
    const deadline = Date.now() + this.stopWaitMs;
    let state = await this.powerState(instanceId, signal);
    if (!STOP_DONE.has(state) && !STOP_UNDER_WAY.has(state)) {
      await options.nextRequest?.();
      await this.requestPowerOff(instanceId, signal);
    }
    for (;;) {
      if (STOP_DONE.has(state)) return;
      if (Date.now() + this.stopPollMs > deadline) {
        throw new TransientProviderError(
          `Azure VM ${instanceId} is still ${state} after ${Math.round(this.stopWaitMs / 1000)}s; asking again`,
        );
      }
      await sleep(this.stopPollMs, signal);
      await options.nextRequest?.();
      state = await this.powerState(instanceId, signal);
      // Started again by someone else, or the powerOff was lost: ask again.
      if (state === 'running' || state === 'starting') {
        await options.nextRequest?.();
        await this.requestPowerOff(instanceId, signal);
      }
    }
  }

  /** The credential yields a token and the subscription is reachable and enabled (GET /subscriptions/{id}). */
  async checkUsable(): Promise<void> {
    const what = `GET subscription ${this.subscriptionId}`;
    let problem: string;
    try {
      const response = await this.context.pathUnchecked('/subscriptions/{subscriptionId}', this.subscriptionId).get({
        queryParameters: { 'api-version': SUBSCRIPTIONS_API_VERSION },
        timeout: this.requestTimeoutMs,
      });
      const body = (response.body ?? {}) as { state?: unknown; error?: { code?: unknown; message?: unknown } };
      if (response.status === '200') {
        const state = typeof body.state === 'string' ? body.state : 'unknown';
        if (state === 'Enabled' || state === 'Warned' || state === 'PastDue') return;
        problem = `subscription ${this.subscriptionId} is ${state}: Azure allows no VM writes in it`;
      } else {
        problem = classifyAzureError(
          {
            statusCode: Number(response.status),
            code: typeof body.error?.code === 'string' ? body.error.code : `HTTP${response.status}`,
            message: typeof body.error?.message === 'string' ? body.error.message : '',
          },
          what,
        ).message;
        if (Number(response.status) === 404) {
          problem += ` (set AZURE_SUBSCRIPTION_ID to a subscription the worker's identity can read)`;
        }
      }
    } catch (err) {
      problem = classifyAzureError(err, what).message;
    }
    throw new Error(`azure provider "${this.name}" cannot use Azure Resource Manager: ${problem}`);
  }

  // --- calls ---

  /** The error to throw for a failed call: the signal's own reason once it aborted, else the classification. */
  private failure(err: unknown, what: string, signal: AbortSignal | undefined): unknown {
    // As fetch does: an aborted call rejects with what the caller aborted with (the activity's CancelledFailure).
    if (signal?.aborted) return signal.reason ?? err;
    return classifyAzureError(err, what);
  }

  private sdkOptions(signal: AbortSignal | undefined): {
    abortSignal?: AbortSignal;
    requestOptions: { timeout: number };
  } {
    return { ...(signal ? { abortSignal: signal } : {}), requestOptions: { timeout: this.requestTimeoutMs } };
  }

  private async getVm(instanceId: string, signal: AbortSignal | undefined): Promise<VirtualMachine> {
    const { resourceGroup, vmName } = parseAzureInstanceId(instanceId);
    const what = `GET VM ${instanceId}`;
    let headerEtag: string | undefined;
    try {
      const vm = await this.client.virtualMachines.get(resourceGroup, vmName, {
        ...this.sdkOptions(signal),
        // The ETag is in the body since API 2023-07-01 and in the header; the header covers a body without it.
        onResponse: (response) => {
          headerEtag = response.headers.get('etag') ?? undefined;
        },
      });
      return vm.etag === undefined && headerEtag !== undefined ? { ...vm, etag: headerEtag } : vm;
    } catch (err) {
      throw this.failure(err, what, signal);
    }
  }

  /**
   * Marks the data disk `toBeDetached` (with ForceDetach when forced) in the latest VM model, written with
   * that model's ETag. Done without a write when the model already says so, or the disk is not on the VM.
   */
  private async detach(
    instanceId: string,
    diskName: string,
    force: boolean,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const { resourceGroup, vmName } = parseAzureInstanceId(instanceId);
    const what = `${force ? 'force-detach (ForceDetach)' : 'detach'} of disk ${diskName} from VM ${instanceId}`;
    for (let attempt = 0; ; attempt++) {
      const vm = await this.getVm(instanceId, signal);
      if (sameName(vm.storageProfile?.osDisk?.name, diskName)) {
        throw new PermanentProviderError(
          `${what}: it is the VM's OS disk; Azure detaches no OS disk from a VM (stopflow leaves it attached)`,
        );
      }
      const disks = vm.storageProfile?.dataDisks ?? [];
      const disk = disks.find((d) => sameName(d.name, diskName));
      if (!disk) return; // not attached to this VM (any more): detached
      if (force) {
        if (!disk.managedDisk) {
          throw new ForceUnsupportedError(
            `${what}: Azure force-detaches managed data disks only, and ${diskName} is an unmanaged (VHD) disk`,
          );
        }
        if (vm.virtualMachineScaleSet?.id) {
          throw new ForceUnsupportedError(
            `${what}: Azure does not force-detach disks of VMs in a scale set (ForceDetach is a preview feature for standalone VMs)`,
          );
        }
      }
      if (disk.toBeDetached && (!force || disk.detachOption === 'ForceDetach')) return; // already under way
      const dataDisks: DataDisk[] = disks.map((d) =>
        d === disk ? { ...d, toBeDetached: true, ...(force ? { detachOption: 'ForceDetach' } : {}) } : d,
      );
      const etag = vm.etag;
      try {
        // Only the write's acceptance is awaited (submitted), never the poller itself: its long-running
        // operation lasts as long as the detach does, and the workflow's state checks follow that.
        const poller = this.client.virtualMachines.update(
          resourceGroup,
          vmName,
          { storageProfile: { dataDisks } },
          { ...this.sdkOptions(signal), ...(etag !== undefined ? { ifMatch: etag } : {}) },
        );
        await poller.submitted();
        return;
      } catch (err) {
        if (signal?.aborted) throw this.failure(err, what, signal);
        const code = azureErrorCode(err);
        if (code === 'DetachUnattachedDisk') return;
        if (shape(err).statusCode === 412) {
          // Someone else wrote the VM model since it was read: read it again, so their change is kept.
          if (attempt < this.maxConflictRetries) continue;
          throw new TransientProviderError(
            `${what}: the VM model kept changing (412 PreconditionFailed ${attempt + 1} times); retried later`,
          );
        }
        if (
          force &&
          shape(err).statusCode === 400 &&
          /detachOption|ForceDetach|force.?detach/i.test(shape(err).message ?? '')
        ) {
          throw new ForceUnsupportedError(
            `${what}: Azure refused ForceDetach: ${code}: ${oneLine(shape(err).message ?? '')}`,
          );
        }
        throw this.failure(err, what, signal);
      }
    }
  }

  private async powerState(instanceId: string, signal: AbortSignal | undefined): Promise<PowerState> {
    const { resourceGroup, vmName } = parseAzureInstanceId(instanceId);
    try {
      const view = await this.client.virtualMachines.instanceView(resourceGroup, vmName, this.sdkOptions(signal));
      const code = view.statuses?.find((s) => s.code?.startsWith('PowerState/'))?.code;
      const state = code?.slice('PowerState/'.length).toLowerCase();
      switch (state) {
        case 'starting':
        case 'running':
        case 'stopping':
        case 'stopped':
        case 'deallocating':
        case 'deallocated':
          return state;
        default:
          return 'unknown';
      }
    } catch (err) {
      throw this.failure(err, `GET instance view of VM ${instanceId}`, signal);
    }
  }

  private async requestPowerOff(instanceId: string, signal: AbortSignal | undefined): Promise<void> {
    const { resourceGroup, vmName } = parseAzureInstanceId(instanceId);
    try {
      // Accepted is enough: the instance view says when the VM is stopped (see stopInstance).
      await this.client.virtualMachines.powerOff(resourceGroup, vmName, this.sdkOptions(signal)).submitted();
    } catch (err) {
      throw this.failure(err, `powerOff of VM ${instanceId}`, signal);
    }
  }
}
