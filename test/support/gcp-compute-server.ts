/**
 * A small Compute Engine on loopback that speaks its REST API (JSON over HTTP, `/compute/v1/...` and
 * `/compute/beta/...` paths, `{ error: { code, message, errors: [{ reason }] } }` error bodies, zonal
 * operations) for the calls the gcp provider makes: instances.get, instances.detachDisk, instances.stop (v1 and
 * beta with noGracefulShutdown), zoneOperations.get / wait / list (with the `filter` the provider sends) and
 * projects.get. The real `@google-cloud/compute` talks to it through `apiEndpoint`, `port` and `protocol: 'http'`,
 * so request encoding, the REST transport and error decoding all run for real.
 *
 * Operations behave as Compute Engine's do: a write answers an operation at once and takes effect when the
 * operation runs, on what is there *then* (a detach takes whatever disk is attached under the device name when it
 * completes); a request id seen before answers the operation it created instead of starting another. Scenario
 * knobs: disks whose detach takes a while or hangs until unstuck (or until the instance is TERMINATED), instances
 * that take a while to stop, injected error answers for the next N calls of an action (with headers such as
 * Retry-After), calls held open forever (before or after they took effect), and a bearer token to expect.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export type InstanceStatus = 'PROVISIONING' | 'STAGING' | 'RUNNING' | 'STOPPING' | 'SUSPENDED' | 'TERMINATED';
export type Action =
  | 'instances.get'
  | 'instances.detachDisk'
  | 'instances.stop'
  | 'zoneOperations.get'
  | 'zoneOperations.wait'
  | 'zoneOperations.list'
  | 'projects.get';

const LINK = 'https://www.googleapis.com/compute/v1';

export interface DiskSpec {
  /** The disk's name (the end of its `source`). */
  name: string;
  /** Default: the disk name. */
  deviceName?: string;
  /** A detach of it stays RUNNING until unstuck, or until the instance is TERMINATED. */
  stuck?: boolean;
  /** Time from the detach request to its operation being DONE. Default 0. */
  detachDelayMs?: number;
  /** SCRATCH for a local SSD. */
  type?: 'PERSISTENT' | 'SCRATCH';
}

export interface InstanceSpec {
  name: string;
  project?: string;
  zone?: string;
  disks?: DiskSpec[];
  /** The boot disk's name; `null` for none. Default `boot-<name>`. */
  bootDisk?: string | null;
  status?: InstanceStatus;
  /** Time from a (graceful) stop request to TERMINATED. Default 0. */
  stopDelayMs?: number;
}

export interface FakeAttachedDisk {
  name: string;
  deviceName: string;
  boot: boolean;
  type: 'PERSISTENT' | 'SCRATCH';
  stuck: boolean;
  detachDelayMs: number;
}

export interface FakeInstance {
  project: string;
  zone: string;
  name: string;
  id: string;
  status: InstanceStatus;
  disks: FakeAttachedDisk[];
  stopDelayMs: number;
  stopCalls: number;
  hardStopCalls: number;
}

export interface FakeOperation {
  id: string;
  name: string;
  project: string;
  zone: string;
  operationType: 'detachDisk' | 'stop';
  targetLink: string;
  status: 'PENDING' | 'RUNNING' | 'DONE';
  clientOperationId?: string;
  error?: { code: string; message: string };
  httpErrorStatusCode?: number;
  /** When it takes effect; `undefined` while it hangs (a stuck disk). */
  dueAt?: number | undefined;
  instanceKey: string;
  deviceName?: string;
  hard?: boolean;
}

export interface Fault {
  /** Only this action (default: any). */
  action?: Action;
  status: number;
  reason: string;
  message?: string;
  /** How many calls fail (default 1). */
  times?: number;
  headers?: Record<string, string>;
}

export interface RecordedCall {
  action: Action;
  method: string;
  path: string;
  query: Record<string, string>;
  authorization?: string;
}

export interface GcpComputeServerOptions {
  /** When set, requests without `Authorization: Bearer <token>` are refused (401 authError). */
  expectToken?: string;
  /** Longest a zoneOperations.wait is held before it answers a still-running operation. Default 300 ms. */
  waitHoldMs?: number;
}

class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

interface Armed {
  action?: Action;
  times: number;
}

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export class GcpComputeServer {
  readonly instances = new Map<string, FakeInstance>();
  readonly operations = new Map<string, FakeOperation>();
  /** Operations by the requestId that created them: a request id seen again answers the same operation. */
  readonly byRequestId = new Map<string, FakeOperation>();
  readonly calls: RecordedCall[] = [];
  readonly counts = new Map<string, number>();
  /** Requests never answered (hang), until the client gives up or close(). */
  readonly held = new Set<ServerResponse>();
  hungCalls = 0;
  private readonly faults: (Fault & { times: number })[] = [];
  private readonly hangs: Armed[] = [];
  private readonly unanswered: Armed[] = [];
  private seq = 0;

  private constructor(
    private readonly server: Server,
    readonly host: string,
    readonly port: number,
    private readonly options: GcpComputeServerOptions,
  ) {}

  static async start(options: GcpComputeServerOptions = {}): Promise<GcpComputeServer> {
    let self: GcpComputeServer | undefined;
    const server = createServer((req, res) => {
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
    self = new GcpComputeServer(server, '127.0.0.1', port, options);
    return self;
  }

  async close(): Promise<void> {
    this.held.clear();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  // --- scenario set-up and inspection ---

  addInstance(spec: InstanceSpec): FakeInstance {
    const instance: FakeInstance = {
      project: spec.project ?? 'stopflow-test',
      zone: spec.zone ?? 'us-central1-a',
      name: spec.name,
      id: String(1_000_000 + ++this.seq),
      status: spec.status ?? 'RUNNING',
      disks: [],
      stopDelayMs: spec.stopDelayMs ?? 0,
      stopCalls: 0,
      hardStopCalls: 0,
    };
    const boot = spec.bootDisk === undefined ? `boot-${spec.name}` : spec.bootDisk;
    if (boot !== null) instance.disks.push(this.disk({ name: boot }, true));
    for (const disk of spec.disks ?? []) instance.disks.push(this.disk(disk, false));
    this.instances.set(key(instance.project, instance.zone, instance.name), instance);
    return instance;
  }

  /** The instance by `zone:name` (default project) or its name alone (default project and zone). */
  instance(id: string): FakeInstance {
    const parts = id.split(':');
    const name = parts.pop() ?? '';
    const zone = parts.pop() ?? 'us-central1-a';
    const project = parts.length > 0 ? parts.join(':') : 'stopflow-test';
    const instance = this.instances.get(key(project, zone, name));
    if (!instance) throw new Error(`no fake instance ${id}`);
    return instance;
  }

  /** Attaches a disk (again): someone else's attach, e.g. after a stop ended. */
  attach(instanceId: string, disk: DiskSpec): void {
    this.instance(instanceId).disks.push(this.disk(disk, false));
  }

  isAttached(instanceId: string, diskName: string): boolean {
    return this.instance(instanceId).disks.some((d) => d.name === diskName);
  }

  /** Lets a stuck disk's pending detach finish. */
  unstick(instanceId: string, diskName: string): void {
    const instance = this.instance(instanceId);
    for (const disk of instance.disks) if (disk.name === diskName) disk.stuck = false;
    for (const op of this.operations.values()) {
      if (op.instanceKey === keyOf(instance) && op.status !== 'DONE' && op.dueAt === undefined) op.dueAt = Date.now();
    }
  }

  /** Every pending operation of the instance (a stop, a detach) takes effect at the next request. */
  finishPending(instanceId: string): void {
    const instanceKey = keyOf(this.instance(instanceId));
    for (const op of this.operations.values()) {
      if (op.instanceKey === instanceKey && op.status !== 'DONE') op.dueAt = Date.now();
    }
  }

  /** Detach operations created for this disk's device (deduplicated requests create none). */
  detachOperations(instanceId: string, deviceName: string): FakeOperation[] {
    const instanceKey = keyOf(this.instance(instanceId));
    return [...this.operations.values()].filter(
      (op) => op.instanceKey === instanceKey && op.operationType === 'detachDisk' && op.deviceName === deviceName,
    );
  }

  /** The next `times` calls (of `action`, or any) get this error answer. */
  inject(fault: Fault): void {
    this.faults.push({ ...fault, times: fault.times ?? 1 });
  }

  /** The next `times` calls answer 429 rateLimitExceeded, as Compute Engine does past a rate quota. */
  throttle(times: number, options: { action?: Action; retryAfterSeconds?: number } = {}): void {
    this.inject({
      ...(options.action !== undefined ? { action: options.action } : {}),
      status: 429,
      reason: 'rateLimitExceeded',
      message:
        "Quota exceeded for quota metric 'Read requests' and limit 'Read requests per minute' of service 'compute.googleapis.com'",
      times,
      headers: options.retryAfterSeconds !== undefined ? { 'Retry-After': String(options.retryAfterSeconds) } : {},
    });
  }

  /** The next `times` calls are read and never answered, and take no effect: a hung endpoint. */
  hang(options: { action?: Action; times?: number } = {}): void {
    this.hangs.push({ ...(options.action !== undefined ? { action: options.action } : {}), times: options.times ?? 1 });
  }

  /**
   * The next `times` calls take effect (an operation is created) but their answer never comes: the client times
   * out not knowing whether its request landed.
   */
  dropAnswers(options: { action?: Action; times?: number } = {}): void {
    this.unanswered.push({
      ...(options.action !== undefined ? { action: options.action } : {}),
      times: options.times ?? 1,
    });
  }

  callsOf(action: Action): RecordedCall[] {
    return this.calls.filter((c) => c.action === action);
  }

  callCount(action?: Action): number {
    if (action !== undefined) return this.counts.get(action) ?? 0;
    let total = 0;
    for (const n of this.counts.values()) total += n;
    return total;
  }

  // --- the API ---

  private disk(spec: DiskSpec, boot: boolean): FakeAttachedDisk {
    return {
      name: spec.name,
      deviceName: spec.deviceName ?? spec.name,
      boot,
      type: spec.type ?? 'PERSISTENT',
      stuck: spec.stuck ?? false,
      detachDelayMs: spec.detachDelayMs ?? 0,
    };
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      await readBody(req);
      const url = new URL(req.url ?? '/', 'http://localhost');
      const route = this.route(req.method ?? 'GET', url.pathname);
      const query = Object.fromEntries(url.searchParams);
      const call: RecordedCall = { action: route.action, method: req.method ?? 'GET', path: url.pathname, query };
      if (req.headers.authorization) call.authorization = req.headers.authorization;
      this.calls.push(call);
      this.counts.set(route.action, (this.counts.get(route.action) ?? 0) + 1);
      this.checkAuth(req);
      if (take(this.hangs, route.action)) {
        this.hold(res);
        return;
      }
      const fault = this.faults.find((f) => f.times > 0 && (f.action === undefined || f.action === route.action));
      if (fault) {
        fault.times--;
        throw new ApiError(fault.status, fault.reason, fault.message ?? `injected ${fault.reason}`, fault.headers);
      }
      this.settle();
      const body = await this.dispatch(route, query);
      if (take(this.unanswered, route.action)) {
        this.hold(res);
        return;
      }
      send(res, 200, body);
    } catch (err) {
      const error =
        err instanceof ApiError ? err : new ApiError(500, 'backendError', `fake Compute Engine failed: ${err}`);
      for (const [name, value] of Object.entries(error.headers)) res.setHeader(name, value);
      send(res, error.status, {
        error: {
          code: error.status,
          message: error.message,
          errors: [
            {
              message: error.message,
              domain: error.reason.includes('RateLimit') ? 'usageLimits' : 'global',
              reason: error.reason,
            },
          ],
          ...(error.status === 429 ? { status: 'RESOURCE_EXHAUSTED' } : {}),
        },
      });
    }
  }

  private hold(res: ServerResponse): void {
    this.hungCalls++;
    this.held.add(res);
    res.once('close', () => this.held.delete(res));
  }

  private checkAuth(req: IncomingMessage): void {
    const token = this.options.expectToken;
    if (token === undefined) return;
    if (req.headers.authorization !== `Bearer ${token}`) {
      throw new ApiError(
        401,
        'authError',
        'Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.',
      );
    }
  }

  private route(method: string, path: string): Route {
    const m =
      /^\/compute\/(v1|beta)\/projects\/([^/]+)(?:\/zones\/([^/]+)\/(instances|operations)(?:\/([^/]+)(?:\/([^/]+))?)?)?$/.exec(
        path,
      );
    if (!m) throw new ApiError(404, 'notFound', `The requested URL ${path} was not found on this server.`);
    const [, version, project = '', zone, collection, name, verb] = m;
    const r = { beta: version === 'beta', project: decodeURIComponent(project), zone: zone ?? '', name: name ?? '' };
    if (!collection && method === 'GET') return { ...r, action: 'projects.get' };
    if (collection === 'instances' && name && !verb && method === 'GET') return { ...r, action: 'instances.get' };
    if (collection === 'instances' && verb === 'detachDisk' && method === 'POST') {
      return { ...r, action: 'instances.detachDisk' };
    }
    if (collection === 'instances' && verb === 'stop' && method === 'POST') return { ...r, action: 'instances.stop' };
    if (collection === 'operations' && !name && method === 'GET') return { ...r, action: 'zoneOperations.list' };
    if (collection === 'operations' && name && !verb && method === 'GET') return { ...r, action: 'zoneOperations.get' };
    if (collection === 'operations' && verb === 'wait' && method === 'POST')
      return { ...r, action: 'zoneOperations.wait' };
    throw new ApiError(400, 'badRequest', `${method} ${path} is not an API this server knows`);
  }

  private async dispatch(route: Route, query: Record<string, string>): Promise<unknown> {
    switch (route.action) {
      case 'projects.get':
        return { kind: 'compute#project', name: route.project, id: '4242' };
      case 'instances.get':
        return this.instanceJson(this.lookup(route));
      case 'instances.detachDisk':
        return this.opJson(this.detachDisk(route, query));
      case 'instances.stop':
        return this.opJson(this.stop(route, query));
      case 'zoneOperations.get':
        return this.opJson(this.operation(route));
      case 'zoneOperations.wait': {
        const op = this.operation(route);
        const until = Date.now() + (this.options.waitHoldMs ?? 300);
        while (op.status !== 'DONE' && Date.now() < until) {
          await pause(10);
          this.settle();
        }
        return this.opJson(op);
      }
      case 'zoneOperations.list': {
        const match = filterOf(query.filter ?? '');
        const items = [...this.operations.values()]
          .filter((op) => op.project === route.project && op.zone === route.zone)
          .map((op) => this.opJson(op))
          .filter(match);
        return { kind: 'compute#operationList', id: `projects/${route.project}/zones/${route.zone}/operations`, items };
      }
    }
  }

  private lookup(route: Route): FakeInstance {
    const instance = this.instances.get(key(route.project, route.zone, route.name));
    if (!instance) {
      throw new ApiError(
        404,
        'notFound',
        `The resource 'projects/${route.project}/zones/${route.zone}/instances/${route.name}' was not found`,
      );
    }
    return instance;
  }

  private operation(route: Route): FakeOperation {
    const op = this.operations.get(route.name);
    if (!op || op.zone !== route.zone) {
      throw new ApiError(
        404,
        'notFound',
        `The resource 'projects/${route.project}/zones/${route.zone}/operations/${route.name}' was not found`,
      );
    }
    return op;
  }

  private detachDisk(route: Route, query: Record<string, string>): FakeOperation {
    const instance = this.lookup(route);
    const requestId = query.requestId;
    const seen = requestId ? this.byRequestId.get(requestId) : undefined;
    if (seen) return seen;
    const deviceName = query.deviceName ?? '';
    const disk = instance.disks.find((d) => d.deviceName === deviceName);
    if (!disk) {
      throw new ApiError(
        400,
        'invalid',
        `Invalid value for field 'deviceName': '${deviceName}'. No attached disk found with device name '${deviceName}'.`,
      );
    }
    if (disk.boot && instance.status !== 'TERMINATED') {
      throw new ApiError(
        400,
        'invalidResourceUsage',
        `Invalid resource usage: 'Cannot detach boot disk from a running instance.'`,
      );
    }
    const op = this.newOperation(instance, 'detachDisk', requestId);
    op.deviceName = deviceName;
    op.dueAt = disk.stuck && instance.status !== 'TERMINATED' ? undefined : Date.now() + disk.detachDelayMs;
    this.settle();
    return op;
  }

  private stop(route: Route, query: Record<string, string>): FakeOperation {
    const instance = this.lookup(route);
    const requestId = query.requestId;
    const seen = requestId ? this.byRequestId.get(requestId) : undefined;
    if (seen) return seen;
    const hard = route.beta && query.noGracefulShutdown === 'true';
    if (hard) instance.hardStopCalls++;
    else instance.stopCalls++;
    const op = this.newOperation(instance, 'stop', requestId);
    op.hard = hard;
    if (instance.status !== 'TERMINATED') instance.status = 'STOPPING';
    op.dueAt = Date.now() + (hard ? 0 : instance.stopDelayMs);
    this.settle();
    return op;
  }

  private newOperation(
    instance: FakeInstance,
    operationType: 'detachDisk' | 'stop',
    requestId?: string,
  ): FakeOperation {
    const id = String(7_000_000 + ++this.seq);
    const op: FakeOperation = {
      id,
      name: `operation-${Date.now()}-${randomUUID().slice(0, 8)}`,
      project: instance.project,
      zone: instance.zone,
      operationType,
      targetLink: selfLink(instance),
      status: 'RUNNING',
      instanceKey: keyOf(instance),
    };
    if (requestId) {
      op.clientOperationId = requestId;
      this.byRequestId.set(requestId, op);
    }
    this.operations.set(op.name, op);
    return op;
  }

  /** Time passes: operations due take effect, in order, on what is there when they do. */
  private settle(): void {
    const now = Date.now();
    const due = [...this.operations.values()]
      .filter((op) => op.status !== 'DONE' && op.dueAt !== undefined && op.dueAt <= now)
      .sort((a, b) => (a.dueAt ?? 0) - (b.dueAt ?? 0));
    for (const op of due) this.complete(op);
  }

  private complete(op: FakeOperation): void {
    op.status = 'DONE';
    const instance = this.instances.get(op.instanceKey);
    if (!instance) return;
    if (op.operationType === 'stop') {
      instance.status = 'TERMINATED';
      // A powered-off guest holds nothing: detaches that hung on it complete.
      for (const pending of this.operations.values()) {
        if (pending.instanceKey === op.instanceKey && pending.status !== 'DONE' && pending.dueAt === undefined) {
          pending.dueAt = Date.now();
          this.complete(pending);
        }
      }
      return;
    }
    const index = instance.disks.findIndex((d) => d.deviceName === op.deviceName);
    if (index < 0) {
      op.error = { code: 'RESOURCE_NOT_FOUND', message: `No attached disk found with device name '${op.deviceName}'.` };
      op.httpErrorStatusCode = 404;
      return;
    }
    instance.disks.splice(index, 1);
  }

  private instanceJson(instance: FakeInstance): unknown {
    return {
      kind: 'compute#instance',
      id: instance.id,
      name: instance.name,
      zone: `${LINK}/projects/${instance.project}/zones/${instance.zone}`,
      status: instance.status,
      selfLink: selfLink(instance),
      disks: instance.disks.map((d, index) => ({
        kind: 'compute#attachedDisk',
        type: d.type,
        mode: 'READ_WRITE',
        ...(d.type === 'PERSISTENT'
          ? { source: `${LINK}/projects/${instance.project}/zones/${instance.zone}/disks/${d.name}` }
          : {}),
        deviceName: d.deviceName,
        index,
        boot: d.boot,
        autoDelete: d.boot,
        interface: 'SCSI',
      })),
    };
  }

  private opJson(op: FakeOperation): Record<string, unknown> {
    return {
      kind: 'compute#operation',
      id: op.id,
      name: op.name,
      zone: `${LINK}/projects/${op.project}/zones/${op.zone}`,
      operationType: op.operationType,
      targetLink: op.targetLink,
      status: op.status,
      progress: op.status === 'DONE' ? 100 : 0,
      selfLink: `${LINK}/projects/${op.project}/zones/${op.zone}/operations/${op.name}`,
      ...(op.clientOperationId ? { clientOperationId: op.clientOperationId } : {}),
      ...(op.error ? { error: { errors: [op.error] }, httpErrorStatusCode: op.httpErrorStatusCode } : {}),
    };
  }
}

interface Route {
  action: Action;
  beta: boolean;
  project: string;
  zone: string;
  name: string;
}

function key(project: string, zone: string, name: string): string {
  return `${project}/${zone}/${name}`;
}

function keyOf(instance: FakeInstance): string {
  return key(instance.project, instance.zone, instance.name);
}

function selfLink(instance: FakeInstance): string {
  return `${LINK}/projects/${instance.project}/zones/${instance.zone}/instances/${instance.name}`;
}

function take(armed: Armed[], action: Action): boolean {
  const hit = armed.find((a) => a.times > 0 && (a.action === undefined || a.action === action));
  if (hit) hit.times--;
  return hit !== undefined;
}

/**
 * The list filter's subset the provider uses: `(field = "value")` and `(field != "value")` clauses joined by
 * AND. Anything else is refused, as a filter Compute Engine cannot parse is.
 */
function filterOf(filter: string): (item: Record<string, unknown>) => boolean {
  if (filter.trim() === '') return () => true;
  const clauses: { field: string; negate: boolean; value: string }[] = [];
  for (const part of filter.split(/\)\s+AND\s+\(/)) {
    const m = /^\(?\s*([A-Za-z]+)\s*(!=|=)\s*"([^"]*)"\s*\)?$/.exec(part.trim());
    if (!m)
      throw new ApiError(
        400,
        'invalid',
        `Invalid value for field 'filter': '${filter}'. Invalid list filter expression.`,
      );
    clauses.push({ field: m[1] ?? '', negate: m[2] === '!=', value: m[3] ?? '' });
  }
  return (item) => clauses.every((c) => (String(item[c.field] ?? '') === c.value) !== c.negate);
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => {
      body += chunk;
    });
    req.on('end', () => resolve(body));
    req.on('error', reject);
  });
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json; charset=UTF-8');
  res.setHeader('Content-Length', Buffer.byteLength(text));
  res.end(text);
}
