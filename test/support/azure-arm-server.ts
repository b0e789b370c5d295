/**
 * A small Azure Resource Manager on loopback, over HTTPS with a self-signed
 * certificate made at start (`openssl`), for the calls the azure provider
 * makes through `@azure/arm-compute`: virtual machine GET and PATCH (with
 * `If-Match` against the model's ETag), `instanceView`, `powerOff`, the
 * `Azure-AsyncOperation` status of the writes, and the subscription GET of the
 * start-up check. The real SDK talks to it (bearer token, JSON bodies, ARM's
 * `{ "error": { "code", "message" } }` errors, `Retry-After`), so its
 * serialisation, error parsing and retries all run for real. HTTPS because the
 * SDK refuses to send a bearer token over plain http; clients trust the
 * certificate through `tlsOptions.ca` (`server.ca`).
 *
 * Azure's behaviour, as modelled here: the VM model lists its data disks; a
 * PATCH that sets `toBeDetached: true` on one starts its detach, and the disk
 * stays in the model with `toBeDetached` (provisioningState `Updating`) until
 * the detach completes, when it leaves the model. Every model change takes a
 * new ETag; a PATCH whose `If-Match` is not the current ETag fails with 412
 * PreconditionFailed. `detachOption: "ForceDetach"` is refused for unmanaged
 * (VHD) disks and for VMs in a scale set. Scenario knobs: disks that detach at
 * once, slowly, or hang until forced; a force that fails; writes by someone
 * else between a client's read and its write (ETag conflicts); VMs that take a
 * while to stop; injected error answers (429 with Retry-After, 5xx, 401, ...);
 * requests held open forever. Every request is recorded (never its token).
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export type PowerState = 'starting' | 'running' | 'stopping' | 'stopped' | 'deallocating' | 'deallocated';
/** What a request was, for faults, hangs and counts. */
export type ArmOperation = 'getVm' | 'patchVm' | 'instanceView' | 'powerOff' | 'operationStatus' | 'getSubscription';

export interface FakeDisk {
  name: string;
  lun: number;
  /** A managed disk (an ARM resource) rather than an unmanaged VHD blob. */
  managed: boolean;
  /** Key of the VM it is attached to; null once detached. */
  attachedTo: string | null;
  toBeDetached: boolean;
  detachOption?: 'ForceDetach';
  /** A normal detach never completes (the guest does not let go) until forced or unstuck. */
  stuck: boolean;
  detachDelayMs: number;
  detachRequestedAt?: number;
  /** ForceDetach requested: completes after `forceDelayMs`. */
  forceRequestedAt?: number;
  forceDelayMs: number;
  detachRequests: number;
  forceRequests: number;
  /** Detached by force. */
  forced: boolean;
  /** The answer a ForceDetach of this disk gets instead of success. */
  forceError?: { status: number; code: string; message: string };
}

export interface FakeVm {
  key: string;
  resourceGroup: string;
  name: string;
  location: string;
  vmId: string;
  osDiskName: string;
  powerState: PowerState;
  stopDelayMs: number;
  stopRequestedAt?: number;
  powerOffCalls: number;
  /** The skipShutdown query parameter of each powerOff. */
  powerOffSkipShutdown: boolean[];
  /** The model's version: the ETag is `"<version>"`. */
  version: number;
  /** Member of a scale set (Flexible orchestration): ForceDetach is refused. */
  scaleSet: boolean;
}

export interface DiskSpec {
  name: string;
  managed?: boolean;
  stuck?: boolean;
  detachDelayMs?: number;
  forceDelayMs?: number;
  forceError?: { status: number; code: string; message: string };
}

export interface VmSpec {
  resourceGroup: string;
  name: string;
  disks?: DiskSpec[];
  powerState?: PowerState;
  stopDelayMs?: number;
  scaleSet?: boolean;
}

export interface Fault {
  /** Only this operation (default: any). */
  op?: ArmOperation;
  /** Only requests about this VM name (default: any). */
  vm?: string;
  status: number;
  code: string;
  message?: string;
  times?: number;
  headers?: Record<string, string>;
}

export interface RecordedRequest {
  op: ArmOperation | 'unknown';
  method: string;
  path: string;
  query: Record<string, string>;
  /** The If-Match header of a write, when it had one. */
  ifMatch?: string;
  body?: unknown;
  /** Whether it carried the expected bearer token (the token itself is never kept). */
  authorized: boolean;
  at: number;
}

export interface AzureArmServerOptions {
  subscriptionId: string;
  /** The only bearer token accepted; any other answers 401 InvalidAuthenticationToken. */
  token: string;
}

class ArmError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

const API_PREFIX = '/providers/Microsoft.Compute/';
const VM_PATH =
  /^\/subscriptions\/([^/]+)\/resourceGroups\/([^/]+)\/providers\/Microsoft\.Compute\/virtualMachines\/([^/]+)(\/instanceView|\/powerOff)?$/i;
const OPERATION_PATH =
  /^\/subscriptions\/([^/]+)\/providers\/Microsoft\.Compute\/locations\/([^/]+)\/operations\/([^/]+)$/i;
const SUBSCRIPTION_PATH = /^\/subscriptions\/([^/]+)$/i;

/** A self-signed certificate for 127.0.0.1 and localhost, made with openssl in a temporary directory. */
function selfSignedCertificate(): { key: string; cert: string } {
  const dir = mkdtempSync(join(tmpdir(), 'stopflow-arm-tls-'));
  try {
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-keyout',
        join(dir, 'key.pem'),
        '-out',
        join(dir, 'cert.pem'),
        '-days',
        '1',
        '-subj',
        '/CN=127.0.0.1',
        '-addext',
        'subjectAltName=IP:127.0.0.1,DNS:localhost',
      ],
      { stdio: 'pipe', timeout: 30_000 },
    );
    return { key: readFileSync(join(dir, 'key.pem'), 'utf8'), cert: readFileSync(join(dir, 'cert.pem'), 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export class AzureArmServer {
  readonly vms = new Map<string, FakeVm>();
  readonly disks = new Map<string, FakeDisk>();
  readonly requests: RecordedRequest[] = [];
  private readonly faults: (Fault & { times: number })[] = [];
  private readonly hangs: { op?: ArmOperation; times: number }[] = [];
  /** VM key -> how many more PATCHes find the model changed by someone else just before they arrive. */
  private readonly concurrentWriters = new Map<string, { times: number; attachName?: string }>();
  private readonly operations = new Map<string, { diskNames: string[]; vmKey: string; kind: 'update' | 'powerOff' }>();
  private readonly held = new Set<ServerResponse>();
  hungCalls = 0;
  subscriptionState = 'Enabled';
  /** Answer VM GETs with the ETag in the header only (as API versions before 2023-07-01 did). */
  etagInBody = true;

  private constructor(
    private readonly server: Server,
    readonly endpoint: string,
    /** The server's certificate: what clients trust (`tlsOptions: { ca }`). */
    readonly ca: string,
    readonly subscriptionId: string,
    private readonly token: string,
  ) {}

  static async start(options: AzureArmServerOptions): Promise<AzureArmServer> {
    const { key, cert } = selfSignedCertificate();
    let self: AzureArmServer | undefined;
    const server = createServer({ key, cert }, (req, res) => {
      if (!self) {
        res.statusCode = 503;
        res.end();
        return;
      }
      void self.handle(req, res);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const { port } = server.address() as AddressInfo;
    self = new AzureArmServer(server, `https://127.0.0.1:${port}`, cert, options.subscriptionId, options.token);
    return self;
  }

  async close(): Promise<void> {
    for (const res of this.held) res.destroy();
    this.held.clear();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  // --- scenario set-up and inspection ---

  addVm(spec: VmSpec): FakeVm {
    const key = vmKey(spec.resourceGroup, spec.name);
    const vm: FakeVm = {
      key,
      resourceGroup: spec.resourceGroup,
      name: spec.name,
      location: 'westeurope',
      vmId: randomUUID(),
      osDiskName: `${spec.name}_OsDisk_1`,
      powerState: spec.powerState ?? 'running',
      stopDelayMs: spec.stopDelayMs ?? 0,
      powerOffCalls: 0,
      powerOffSkipShutdown: [],
      version: 1,
      scaleSet: spec.scaleSet ?? false,
    };
    this.vms.set(key, vm);
    (spec.disks ?? []).forEach((d, lun) => {
      this.disks.set(d.name.toLowerCase(), {
        name: d.name,
        lun,
        managed: d.managed ?? true,
        attachedTo: key,
        toBeDetached: false,
        stuck: d.stuck ?? false,
        detachDelayMs: d.detachDelayMs ?? 0,
        forceDelayMs: d.forceDelayMs ?? 0,
        detachRequests: 0,
        forceRequests: 0,
        forced: false,
        ...(d.forceError ? { forceError: d.forceError } : {}),
      });
    });
    return vm;
  }

  vm(resourceGroup: string, name: string): FakeVm {
    const vm = this.vms.get(vmKey(resourceGroup, name));
    if (!vm) throw new Error(`no fake VM ${resourceGroup}/${name}`);
    return vm;
  }

  disk(name: string): FakeDisk {
    const disk = this.disks.get(name.toLowerCase());
    if (!disk) throw new Error(`no fake disk ${name}`);
    return disk;
  }

  /** Lets a stuck disk's pending detach complete normally. */
  unstick(name: string): void {
    const disk = this.disk(name);
    disk.stuck = false;
  }

  /** The next `times` requests (of `op`, about `vm`, or any) get this error answer. */
  inject(fault: Fault): void {
    this.faults.push({ ...fault, times: fault.times ?? 1 });
  }

  /** The next `times` requests (of `op`, or any) are read and never answered. */
  hang(options: { op?: ArmOperation; times?: number } = {}): void {
    this.hangs.push({ ...(options.op !== undefined ? { op: options.op } : {}), times: options.times ?? 1 });
  }

  /**
   * Someone else writes the VM's model just before each of the next `times` PATCHes arrives: the PATCH's
   * If-Match is stale (412). With `attachName`, the first such write attaches that managed disk (the change a
   * client that ignored the ETag would silently undo, detaching it).
   */
  concurrentWrites(resourceGroup: string, name: string, times: number, attachName?: string): void {
    this.concurrentWriters.set(this.vm(resourceGroup, name).key, {
      times,
      ...(attachName !== undefined ? { attachName } : {}),
    });
  }

  requestsOf(op: ArmOperation, vmName?: string): RecordedRequest[] {
    return this.requests.filter(
      (r) =>
        r.op === op &&
        (vmName === undefined || r.path.toLowerCase().includes(`/virtualmachines/${vmName.toLowerCase()}`)),
    );
  }

  count(op?: ArmOperation): number {
    return op === undefined ? this.requests.length : this.requests.filter((r) => r.op === op).length;
  }

  /** The data disks attached to the VM now, in LUN order. */
  dataDisksOf(vm: FakeVm): FakeDisk[] {
    return [...this.disks.values()].filter((d) => d.attachedTo === vm.key).sort((a, b) => a.lun - b.lun);
  }

  // --- the API ---

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'https://localhost');
    const query = Object.fromEntries(url.searchParams);
    const method = (req.method ?? 'GET').toUpperCase();
    const record: RecordedRequest = {
      op: 'unknown',
      method,
      path: url.pathname,
      query,
      authorized: req.headers.authorization === `Bearer ${this.token}`,
      at: Date.now(),
    };
    const ifMatch = req.headers['if-match'];
    if (typeof ifMatch === 'string') record.ifMatch = ifMatch;
    this.requests.push(record);
    try {
      const text = await readBody(req);
      if (text) record.body = JSON.parse(text) as unknown;
      const route = this.route(method, url.pathname);
      record.op = route.op;
      if (!record.authorized) {
        throw new ArmError(
          401,
          'InvalidAuthenticationToken',
          'The access token is invalid. (it was not issued for this test server)',
        );
      }
      const hang = this.hangs.find((h) => h.times > 0 && (h.op === undefined || h.op === route.op));
      if (hang) {
        hang.times--;
        this.hungCalls++;
        this.held.add(res);
        res.once('close', () => this.held.delete(res));
        return;
      }
      const fault = this.faults.find(
        (f) =>
          f.times > 0 &&
          (f.op === undefined || f.op === route.op) &&
          (f.vm === undefined || f.vm.toLowerCase() === route.vmName?.toLowerCase()),
      );
      if (fault) {
        fault.times--;
        throw new ArmError(fault.status, fault.code, fault.message ?? `injected ${fault.code}`, fault.headers);
      }
      if (query['api-version'] === undefined) {
        throw new ArmError(
          400,
          'MissingApiVersionParameter',
          'The api-version query parameter (?api-version=) is required for all requests.',
        );
      }
      this.settle();
      route.run(res, record);
    } catch (err) {
      const error =
        err instanceof ArmError ? err : new ArmError(500, 'InternalServerError', `fake ARM failed: ${String(err)}`);
      for (const [name, value] of Object.entries(error.headers)) res.setHeader(name, value);
      sendJson(res, error.status, { error: { code: error.code, message: error.message } });
    }
  }

  private route(
    method: string,
    path: string,
  ): { op: ArmOperation; vmName?: string; run: (res: ServerResponse, record: RecordedRequest) => void } {
    const op = OPERATION_PATH.exec(path);
    if (op && method === 'GET') {
      return { op: 'operationStatus', run: (res) => this.operationStatus(res, op[1] ?? '', op[3] ?? '') };
    }
    const sub = SUBSCRIPTION_PATH.exec(path);
    if (sub && method === 'GET')
      return { op: 'getSubscription', run: (res) => this.getSubscription(res, sub[1] ?? '') };
    const m = VM_PATH.exec(path);
    if (!m || !path.includes(API_PREFIX)) throw new ArmError(404, 'NotFound', `no route for ${method} ${path}`);
    const [, subscriptionId = '', resourceGroup = '', vmName = '', action] = m;
    const find = () => this.findVm(subscriptionId, resourceGroup, vmName);
    const suffix = action?.toLowerCase();
    if (suffix === '/instanceview' && method === 'GET') {
      return { op: 'instanceView', vmName, run: (res) => sendJson(res, 200, this.instanceViewJson(find())) };
    }
    if (suffix === '/poweroff' && method === 'POST') {
      return { op: 'powerOff', vmName, run: (res, record) => this.powerOff(res, find(), record) };
    }
    if (suffix === undefined && method === 'GET') {
      return { op: 'getVm', vmName, run: (res, record) => this.getVm(res, find(), record) };
    }
    if (suffix === undefined && method === 'PATCH') {
      return { op: 'patchVm', vmName, run: (res, record) => this.patchVm(res, find(), record) };
    }
    throw new ArmError(405, 'MethodNotAllowed', `${method} is not supported here`);
  }

  private findVm(subscriptionId: string, resourceGroup: string, name: string): FakeVm {
    if (subscriptionId !== this.subscriptionId) {
      throw new ArmError(404, 'SubscriptionNotFound', `The subscription '${subscriptionId}' could not be found.`);
    }
    const vm = this.vms.get(vmKey(resourceGroup, name));
    if (vm) return vm;
    if (![...this.vms.values()].some((v) => v.resourceGroup.toLowerCase() === resourceGroup.toLowerCase())) {
      throw new ArmError(404, 'ResourceGroupNotFound', `Resource group '${resourceGroup}' could not be found.`);
    }
    throw new ArmError(
      404,
      'ResourceNotFound',
      `The Resource 'Microsoft.Compute/virtualMachines/${name}' under resource group '${resourceGroup}' was not found.`,
    );
  }

  /** Time passes: detaches and stops requested long enough ago complete. */
  private settle(): void {
    const now = Date.now();
    for (const disk of this.disks.values()) {
      if (!disk.attachedTo || !disk.toBeDetached) continue;
      const forcedDone = disk.forceRequestedAt !== undefined && now - disk.forceRequestedAt >= disk.forceDelayMs;
      const normalDone =
        !disk.stuck && disk.detachRequestedAt !== undefined && now - disk.detachRequestedAt >= disk.detachDelayMs;
      if (forcedDone || normalDone) {
        const vm = this.vms.get(disk.attachedTo);
        disk.attachedTo = null;
        disk.toBeDetached = false;
        disk.forced = forcedDone && !normalDone;
        if (vm) vm.version++;
      }
    }
    for (const vm of this.vms.values()) {
      if (
        vm.powerState === 'stopping' &&
        vm.stopRequestedAt !== undefined &&
        now - vm.stopRequestedAt >= vm.stopDelayMs
      ) {
        vm.powerState = 'stopped';
      }
    }
  }

  private etag(vm: FakeVm): string {
    return `"${vm.version}"`;
  }

  private provisioningState(vm: FakeVm): string {
    return this.dataDisksOf(vm).some((d) => d.toBeDetached) ? 'Updating' : 'Succeeded';
  }

  private vmJson(vm: FakeVm, expandInstanceView: boolean): Record<string, unknown> {
    const id = `/subscriptions/${this.subscriptionId}/resourceGroups/${vm.resourceGroup}/providers/Microsoft.Compute/virtualMachines/${vm.name}`;
    const diskId = (name: string) =>
      `/subscriptions/${this.subscriptionId}/resourceGroups/${vm.resourceGroup.toUpperCase()}/providers/Microsoft.Compute/disks/${name}`;
    const properties: Record<string, unknown> = {
      vmId: vm.vmId,
      hardwareProfile: { vmSize: 'Standard_D2s_v5' },
      storageProfile: {
        osDisk: {
          osType: 'Linux',
          name: vm.osDiskName,
          createOption: 'FromImage',
          caching: 'ReadWrite',
          managedDisk: { storageAccountType: 'Premium_LRS', id: diskId(vm.osDiskName) },
          deleteOption: 'Delete',
          diskSizeGB: 30,
        },
        dataDisks: this.dataDisksOf(vm).map((d) => ({
          lun: d.lun,
          name: d.name,
          createOption: 'Attach',
          caching: 'None',
          ...(d.managed
            ? { managedDisk: { storageAccountType: 'Premium_LRS', id: diskId(d.name) } }
            : { vhd: { uri: `https://stopflowtest.blob.core.windows.net/vhds/${d.name}.vhd` } }),
          deleteOption: 'Detach',
          diskSizeGB: 64,
          toBeDetached: d.toBeDetached,
          ...(d.detachOption ? { detachOption: d.detachOption } : {}),
        })),
      },
      provisioningState: this.provisioningState(vm),
      timeCreated: '2026-01-01T00:00:00.0000000+00:00',
    };
    if (vm.scaleSet) {
      properties.virtualMachineScaleSet = {
        id: `/subscriptions/${this.subscriptionId}/resourceGroups/${vm.resourceGroup}/providers/Microsoft.Compute/virtualMachineScaleSets/flex-${vm.name}`,
      };
    }
    if (expandInstanceView) properties.instanceView = this.instanceViewJson(vm);
    return {
      name: vm.name,
      id,
      type: 'Microsoft.Compute/virtualMachines',
      location: vm.location,
      ...(this.etagInBody ? { etag: this.etag(vm) } : {}),
      properties,
    };
  }

  private instanceViewJson(vm: FakeVm): Record<string, unknown> {
    return {
      computerName: vm.name,
      osName: 'ubuntu',
      statuses: [
        {
          code: `ProvisioningState/${this.provisioningState(vm).toLowerCase()}`,
          level: 'Info',
          displayStatus: 'Provisioning succeeded',
        },
        { code: `PowerState/${vm.powerState}`, level: 'Info', displayStatus: `VM ${vm.powerState}` },
      ],
    };
  }

  private getVm(res: ServerResponse, vm: FakeVm, record: RecordedRequest): void {
    res.setHeader('ETag', this.etag(vm));
    sendJson(res, 200, this.vmJson(vm, record.query.$expand === 'instanceView'));
  }

  private patchVm(res: ServerResponse, vm: FakeVm, record: RecordedRequest): void {
    const writer = this.concurrentWriters.get(vm.key);
    if (writer && writer.times > 0) {
      writer.times--;
      if (writer.attachName !== undefined) {
        const lun = Math.max(-1, ...this.dataDisksOf(vm).map((d) => d.lun)) + 1;
        this.disks.set(writer.attachName.toLowerCase(), {
          name: writer.attachName,
          lun,
          managed: true,
          attachedTo: vm.key,
          toBeDetached: false,
          stuck: false,
          detachDelayMs: 0,
          forceDelayMs: 0,
          detachRequests: 0,
          forceRequests: 0,
          forced: false,
        });
        delete writer.attachName;
      }
      vm.version++;
    }
    if (record.ifMatch !== undefined && record.ifMatch !== '*' && record.ifMatch !== this.etag(vm)) {
      throw new ArmError(
        412,
        'PreconditionFailed',
        `The ETag '${record.ifMatch}' does not match the current ETag '${this.etag(vm)}' of virtual machine '${vm.name}'.`,
      );
    }
    const body = (record.body ?? {}) as { properties?: { storageProfile?: { dataDisks?: unknown } } };
    const listed = body.properties?.storageProfile?.dataDisks;
    if (listed === undefined)
      throw new ArmError(400, 'InvalidParameter', 'this fake only updates storageProfile.dataDisks');
    if (!Array.isArray(listed)) throw new ArmError(400, 'InvalidParameter', 'dataDisks must be an array');
    const attached = this.dataDisksOf(vm);
    const changes: { disk: FakeDisk; force: boolean }[] = [];
    for (const raw of listed as { name?: string; toBeDetached?: boolean; detachOption?: string }[]) {
      const disk = attached.find((d) => d.name.toLowerCase() === (raw.name ?? '').toLowerCase());
      if (!disk) {
        if (raw.toBeDetached) {
          throw new ArmError(
            409,
            'DetachUnattachedDisk',
            `Disk '${raw.name}' cannot be detached from VM '${vm.name}' since it is not attached.`,
          );
        }
        throw new ArmError(400, 'InvalidParameter', `this fake does not attach disks (${raw.name})`);
      }
      const force = raw.detachOption === 'ForceDetach';
      if (raw.detachOption !== undefined && !force) {
        throw new ArmError(
          400,
          'InvalidParameter',
          `The value '${raw.detachOption}' of parameter 'detachOption' is not allowed.`,
        );
      }
      if (force && !raw.toBeDetached) {
        throw new ArmError(400, 'InvalidParameter', "detachOption 'ForceDetach' requires toBeDetached to be true.");
      }
      if (force && (!disk.managed || vm.scaleSet)) {
        throw new ArmError(
          400,
          'OperationNotAllowed',
          `Force detach (detachOption 'ForceDetach') is supported only for managed data disks of virtual machines outside a scale set; disk '${disk.name}' cannot be force-detached.`,
        );
      }
      if (force && disk.forceError) {
        const { status, code, message } = disk.forceError;
        throw new ArmError(status, code, message);
      }
      if (raw.toBeDetached && (!disk.toBeDetached || (force && disk.detachOption !== 'ForceDetach'))) {
        changes.push({ disk, force });
      } else if (!raw.toBeDetached && disk.toBeDetached) {
        throw new ArmError(409, 'OperationNotAllowed', `Disk '${disk.name}' is being detached; it cannot be changed.`);
      }
    }
    for (const disk of attached) {
      if (!(listed as { name?: string }[]).some((raw) => (raw.name ?? '').toLowerCase() === disk.name.toLowerCase())) {
        // Leaving a disk out of the list detaches it too (ARM replaces the list).
        changes.push({ disk, force: false });
      }
    }
    const now = Date.now();
    for (const { disk, force } of changes) {
      disk.toBeDetached = true;
      if (force) {
        disk.detachOption = 'ForceDetach';
        disk.forceRequests++;
        disk.forceRequestedAt = now;
      } else {
        disk.detachRequests++;
        disk.detachRequestedAt = now;
      }
    }
    if (changes.length > 0) vm.version++;
    this.settle();
    const operationId = randomUUID();
    this.operations.set(operationId, { diskNames: changes.map((c) => c.disk.name), vmKey: vm.key, kind: 'update' });
    res.setHeader('Azure-AsyncOperation', this.operationUrl(vm, operationId));
    res.setHeader('ETag', this.etag(vm));
    sendJson(res, 200, this.vmJson(vm, false));
  }

  private powerOff(res: ServerResponse, vm: FakeVm, record: RecordedRequest): void {
    vm.powerOffCalls++;
    vm.powerOffSkipShutdown.push(record.query.skipShutdown === 'true');
    if (vm.powerState === 'running' || vm.powerState === 'starting') {
      vm.powerState = 'stopping';
      vm.stopRequestedAt = Date.now();
    }
    this.settle();
    const operationId = randomUUID();
    this.operations.set(operationId, { diskNames: [], vmKey: vm.key, kind: 'powerOff' });
    res.setHeader('Azure-AsyncOperation', this.operationUrl(vm, operationId));
    res.setHeader('Location', `${this.operationUrl(vm, operationId)}&monitor=true`);
    res.statusCode = 202;
    res.end();
  }

  private operationUrl(vm: FakeVm, operationId: string): string {
    return `${this.endpoint}/subscriptions/${this.subscriptionId}/providers/Microsoft.Compute/locations/${vm.location}/operations/${operationId}?api-version=2026-03-01`;
  }

  private operationStatus(res: ServerResponse, subscriptionId: string, operationId: string): void {
    const op = this.operations.get(operationId);
    if (!op || subscriptionId !== this.subscriptionId) throw new ArmError(404, 'NotFound', 'no such operation');
    const vm = this.vms.get(op.vmKey);
    const done =
      op.kind === 'powerOff'
        ? vm?.powerState !== 'stopping'
        : op.diskNames.every((name) => this.disks.get(name.toLowerCase())?.attachedTo !== op.vmKey);
    sendJson(res, 200, {
      name: operationId,
      status: done ? 'Succeeded' : 'InProgress',
      startTime: new Date().toISOString(),
    });
  }

  private getSubscription(res: ServerResponse, subscriptionId: string): void {
    if (subscriptionId !== this.subscriptionId) {
      throw new ArmError(404, 'SubscriptionNotFound', `The subscription '${subscriptionId}' could not be found.`);
    }
    sendJson(res, 200, {
      id: `/subscriptions/${subscriptionId}`,
      subscriptionId,
      displayName: 'stopflow test subscription',
      state: this.subscriptionState,
    });
  }
}

function vmKey(resourceGroup: string, name: string): string {
  return `${resourceGroup}/${name}`.toLowerCase();
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  res.statusCode = status;
  res.setHeader('content-type', 'application/json; charset=utf-8');
  res.setHeader('x-ms-request-id', randomUUID());
  res.end(JSON.stringify(body));
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
