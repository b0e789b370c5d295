/**
 * A small EC2 on loopback that speaks the EC2 Query API (form-encoded
 * `Action=...` POSTs, XML answers, `<Response><Errors>` error bodies) for the
 * calls the aws provider makes: DetachVolume, DescribeVolumes,
 * DescribeInstances and StopInstances. The real `@aws-sdk/client-ec2` talks
 * to it through an endpoint override, so request signing, serialisation,
 * error parsing and the SDK's own retries all run for real.
 *
 * Scenario knobs: volumes that detach at once, slowly, or stay `detaching`
 * (or `busy`) until forced; volumes with an AWS Marketplace product code
 * (refused while their instance runs); instances that take a while to stop;
 * injected error responses (5xx, throttling, auth) for the next N calls of an
 * action, with headers (Retry-After); throttling for the next N calls; calls
 * held open forever (a hung endpoint); DescribeVolumes answers that lag behind
 * (EC2's eventual consistency). Every call is counted per action
 * (`callCount`), so tests and benchmarks can see how many a stop cost.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export type AttachmentStatus = 'attaching' | 'attached' | 'detaching' | 'detached' | 'busy';
export type InstanceStateName = 'pending' | 'running' | 'shutting-down' | 'terminated' | 'stopping' | 'stopped';

const STATE_CODES: Record<InstanceStateName, number> = {
  pending: 0,
  running: 16,
  'shutting-down': 32,
  terminated: 48,
  stopping: 64,
  stopped: 80,
};

export interface FakeAttachment {
  instanceId: string;
  device: string;
  state: AttachmentStatus;
  attachTime: string;
  detachRequestedAt?: number;
}

export interface FakeVolume {
  volumeId: string;
  attachments: FakeAttachment[];
  /** A detach request leaves the attachment in this state until forced (or unstuck). */
  stuck: false | 'detaching' | 'busy';
  /** Time from a normal detach request to detached. */
  detachDelayMs: number;
  detachCalls: number;
  forceCalls: number;
  forced: boolean;
  /** Carries an AWS Marketplace product code: EC2 refuses to detach it while its instance runs. */
  marketplace: boolean;
  /** Snapshot DescribeVolumes answers with instead of the truth, for `remaining` more calls. */
  stale?: { attachments: FakeAttachment[]; remaining: number };
}

export interface FakeInstance {
  instanceId: string;
  state: InstanceStateName;
  rootDeviceName: string;
  stopDelayMs: number;
  stopRequestedAt?: number;
  stopCalls: number;
}

export interface VolumeSpec {
  volumeId: string;
  device?: string;
  stuck?: boolean | 'busy';
  detachDelayMs?: number;
  /** An AWS Marketplace product code on the volume. */
  marketplace?: boolean;
}

export interface InstanceSpec {
  instanceId: string;
  /** The root EBS volume (never listed for detach); `null` for none. Default `vol-root-<instanceId>`. */
  rootVolumeId?: string | null;
  volumes?: VolumeSpec[];
  state?: InstanceStateName;
  stopDelayMs?: number;
}

export interface Fault {
  /** Only this action (default: any). */
  action?: string;
  /** HTTP status of the error response (default 400; use 5xx for server faults). */
  status?: number;
  code: string;
  message?: string;
  /** How many calls fail (default 1). */
  times?: number;
  /** Extra response headers (e.g. `Retry-After`). */
  headers?: Record<string, string>;
  /** Carry the call out first, then answer with the error: a 5xx after the fact, an answer lost on its way. */
  applied?: boolean;
}

export interface RecordedCall {
  action: string;
  params: Record<string, string>;
}

export interface Ec2QueryServerOptions {
  /** When set, requests signed with any other access key id fail with AuthFailure. */
  expectAccessKeyId?: string;
  /** Keep every call's parameters in `calls` (default true); a long benchmark turns it off and reads `callCount`. */
  recordCalls?: boolean;
}

class Ec2Error extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

interface ArmedFault {
  action?: string;
  status: number;
  code: string;
  message?: string;
  times: number;
  headers: Record<string, string>;
  applied?: boolean;
}

export class Ec2QueryServer {
  readonly volumes = new Map<string, FakeVolume>();
  readonly instances = new Map<string, FakeInstance>();
  readonly calls: RecordedCall[] = [];
  /** Calls received per action (hung and failed ones included), whether or not `calls` records them. */
  readonly counts = new Map<string, number>();
  private readonly faults: ArmedFault[] = [];
  private readonly hangs: { action?: string; times: number }[] = [];
  /** Requests held open by `hang`, never answered (until the client gives up). */
  readonly held = new Set<ServerResponse>();
  /** How many requests `hang` has held open so far (it only grows). */
  hungCalls = 0;

  private constructor(
    private readonly server: Server,
    readonly endpoint: string,
    private readonly options: Ec2QueryServerOptions,
  ) {}

  static async start(options: Ec2QueryServerOptions = {}): Promise<Ec2QueryServer> {
    let self: Ec2QueryServer | undefined;
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
    self = new Ec2QueryServer(server, `http://127.0.0.1:${port}`, options);
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
      instanceId: spec.instanceId,
      state: spec.state ?? 'running',
      rootDeviceName: '/dev/xvda',
      stopDelayMs: spec.stopDelayMs ?? 0,
      stopCalls: 0,
    };
    this.instances.set(instance.instanceId, instance);
    const rootVolumeId = spec.rootVolumeId === undefined ? `vol-root-${spec.instanceId}` : spec.rootVolumeId;
    if (rootVolumeId !== null) this.addVolume({ volumeId: rootVolumeId }, instance.instanceId, instance.rootDeviceName);
    (spec.volumes ?? []).forEach((v, i) => {
      this.addVolume(v, instance.instanceId, v.device ?? `/dev/sd${String.fromCharCode(102 + i)}`);
    });
    return instance;
  }

  /** A volume that exists but is attached to nothing (`available`). */
  addAvailableVolume(volumeId: string): FakeVolume {
    return this.addVolume({ volumeId }, undefined, undefined);
  }

  volume(volumeId: string): FakeVolume {
    const volume = this.volumes.get(volumeId);
    if (!volume) throw new Error(`no fake volume ${volumeId}`);
    return volume;
  }

  instance(instanceId: string): FakeInstance {
    const instance = this.instances.get(instanceId);
    if (!instance) throw new Error(`no fake instance ${instanceId}`);
    return instance;
  }

  /** Lets a stuck volume finish its detach normally. */
  unstick(volumeId: string): void {
    const volume = this.volume(volumeId);
    volume.stuck = false;
    for (const a of volume.attachments) if (a.state === 'busy') a.state = 'detaching';
  }

  /** The next `times` calls (of `action`, or any) get this error response instead of an answer. */
  inject(fault: Fault): void {
    this.faults.push({ ...fault, status: fault.status ?? 400, times: fault.times ?? 1, headers: fault.headers ?? {} });
  }

  /**
   * The next `times` calls (of `action`, or any) answer RequestLimitExceeded as EC2 does (HTTP 503), with a
   * Retry-After header when `retryAfterSeconds` is given (EC2 itself rarely sends one; other endpoints do).
   */
  throttle(times: number, options: { action?: string; retryAfterSeconds?: number } = {}): void {
    this.inject({
      ...(options.action !== undefined ? { action: options.action } : {}),
      status: 503,
      code: 'RequestLimitExceeded',
      message: 'Request limit exceeded.',
      times,
      headers: options.retryAfterSeconds !== undefined ? { 'Retry-After': String(options.retryAfterSeconds) } : {},
    });
  }

  /** The next `times` calls (of `action`, or any) are read and then never answered: a hung endpoint. */
  hang(options: { action?: string; times?: number } = {}): void {
    this.hangs.push({ ...(options.action !== undefined ? { action: options.action } : {}), times: options.times ?? 1 });
  }

  /**
   * The next `times` DescribeVolumes answers show the volume's attachments as they are now, whatever happens
   * to it meanwhile: EC2's describe calls are eventually consistent and can lag behind a DetachVolume.
   */
  staleDescribes(volumeId: string, times: number): void {
    const volume = this.volume(volumeId);
    volume.stale = { attachments: volume.attachments.map((a) => ({ ...a })), remaining: times };
  }

  callsOf(action: string): RecordedCall[] {
    return this.calls.filter((c) => c.action === action);
  }

  /** How many calls of `action` arrived (or of every action, without one). */
  callCount(action?: string): number {
    if (action !== undefined) return this.counts.get(action) ?? 0;
    let total = 0;
    for (const n of this.counts.values()) total += n;
    return total;
  }

  resetCounts(): void {
    this.counts.clear();
  }

  // --- the API ---

  private addVolume(spec: VolumeSpec, instanceId: string | undefined, device: string | undefined): FakeVolume {
    const volume: FakeVolume = {
      volumeId: spec.volumeId,
      attachments:
        instanceId && device
          ? [{ instanceId, device, state: 'attached', attachTime: new Date(Date.now() - 3_600_000).toISOString() }]
          : [],
      stuck: spec.stuck === 'busy' ? 'busy' : spec.stuck ? 'detaching' : false,
      detachDelayMs: spec.detachDelayMs ?? 0,
      detachCalls: 0,
      forceCalls: 0,
      forced: false,
      marketplace: spec.marketplace ?? false,
    };
    this.volumes.set(volume.volumeId, volume);
    return volume;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const requestId = randomUUID();
    let action = '';
    try {
      const body = await readBody(req);
      const params = Object.fromEntries(new URLSearchParams(body));
      action = params.Action ?? '';
      this.counts.set(action, (this.counts.get(action) ?? 0) + 1);
      if (this.options.recordCalls !== false) this.calls.push({ action, params });
      this.checkAuth(req);
      const hang = this.hangs.find((h) => h.times > 0 && (h.action === undefined || h.action === action));
      if (hang) {
        hang.times--;
        this.hungCalls++;
        // Never answered; the client's timeout or abort (or close()) ends the connection.
        this.held.add(res);
        res.once('close', () => this.held.delete(res));
        return;
      }
      const fault = this.faults.find((f) => f.times > 0 && (f.action === undefined || f.action === action));
      if (fault) {
        fault.times--;
        if (fault.applied) {
          this.settle();
          this.dispatch(action, params);
        }
        throw new Ec2Error(fault.status, fault.code, fault.message ?? `injected ${fault.code}`, fault.headers);
      }
      if (params.DryRun === 'true') {
        throw new Ec2Error(412, 'DryRunOperation', 'Request would have succeeded, but DryRun flag is set.');
      }
      this.settle();
      const inner = this.dispatch(action, params);
      send(res, 200, xmlResponse(action, requestId, inner));
    } catch (err) {
      const error =
        err instanceof Ec2Error ? err : new Ec2Error(500, 'InternalError', `fake EC2 failed: ${String(err)}`);
      for (const [name, value] of Object.entries(error.headers)) res.setHeader(name, value);
      send(
        res,
        error.status,
        `<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>${esc(error.code)}</Code><Message>${esc(error.message)}</Message></Error></Errors><RequestID>${requestId}</RequestID></Response>`,
      );
    }
  }

  private checkAuth(req: IncomingMessage): void {
    const expected = this.options.expectAccessKeyId;
    if (!expected) return;
    const auth = req.headers.authorization ?? '';
    if (!auth.includes(`Credential=${expected}/`)) {
      throw new Ec2Error(401, 'AuthFailure', 'AWS was not able to validate the provided access credentials');
    }
  }

  /** Time passes: detaches and stops requested long enough ago complete. */
  private settle(): void {
    const now = Date.now();
    for (const volume of this.volumes.values()) {
      volume.attachments = volume.attachments.filter(
        (a) =>
          !(
            a.state === 'detaching' &&
            !volume.stuck &&
            a.detachRequestedAt !== undefined &&
            now - a.detachRequestedAt >= volume.detachDelayMs
          ),
      );
    }
    for (const instance of this.instances.values()) {
      if (
        instance.state === 'stopping' &&
        instance.stopRequestedAt !== undefined &&
        now - instance.stopRequestedAt >= instance.stopDelayMs
      ) {
        instance.state = 'stopped';
      }
    }
  }

  private dispatch(action: string, params: Record<string, string>): string {
    switch (action) {
      case 'DetachVolume':
        return this.detachVolume(params);
      case 'DescribeVolumes':
        return this.describeVolumes(params);
      case 'DescribeInstances':
        return this.describeInstances(params);
      case 'StopInstances':
        return this.stopInstances(params);
      default:
        throw new Ec2Error(400, 'InvalidAction', `The action ${action} is not valid for this web service.`);
    }
  }

  private detachVolume(params: Record<string, string>): string {
    const volumeId = params.VolumeId ?? '';
    const volume = this.volumes.get(volumeId);
    if (!volume) throw new Ec2Error(400, 'InvalidVolume.NotFound', `The volume '${volumeId}' does not exist.`);
    const force = params.Force === 'true';
    if (force) volume.forceCalls++;
    else volume.detachCalls++;
    if (volume.attachments.length === 0) {
      throw new Ec2Error(400, 'IncorrectState', `Volume '${volumeId}' is in the 'available' state.`);
    }
    const instanceId = params.InstanceId;
    const attachment = volume.attachments.find((a) => instanceId === undefined || a.instanceId === instanceId);
    if (!attachment) {
      throw new Ec2Error(
        400,
        'InvalidAttachment.NotFound',
        `Volume '${volumeId}' is not attached to instance '${instanceId}'.`,
      );
    }
    const instance = this.instances.get(attachment.instanceId);
    if (volume.marketplace && instance && instance.state !== 'stopped') {
      // Whether EC2 says IncorrectState or IncorrectInstanceState here is not documented; the latter is the
      // harder case for a client (it names the instance, not the volume), so that is what this server says.
      throw new Ec2Error(
        400,
        'IncorrectInstanceState',
        `The instance '${attachment.instanceId}' is not in the 'stopped' state: volume '${volumeId}' has an AWS Marketplace product code.`,
      );
    }
    if (instance && attachment.device === instance.rootDeviceName && instance.state !== 'stopped') {
      throw new Ec2Error(
        400,
        'IncorrectState',
        `Unable to detach root volume '${volumeId}' from instance '${attachment.instanceId}'`,
      );
    }
    const reply = attachmentXml(volumeId, attachment, 'detaching');
    if (force) {
      volume.forced = true;
      volume.attachments = volume.attachments.filter((a) => a !== attachment);
      return reply;
    }
    if (attachment.state === 'detaching' || attachment.state === 'busy') {
      throw new Ec2Error(400, 'IncorrectState', `Volume '${volumeId}' is in the '${attachment.state}' state.`);
    }
    attachment.state = volume.stuck === 'busy' ? 'busy' : 'detaching';
    attachment.detachRequestedAt = Date.now();
    return reply;
  }

  private describeVolumes(params: Record<string, string>): string {
    const ids = listParam(params, 'VolumeId');
    for (const id of ids) {
      if (!this.volumes.has(id))
        throw new Ec2Error(400, 'InvalidVolume.NotFound', `The volume '${id}' does not exist.`);
    }
    const filters = filterParams(params);
    const items = [...this.volumes.values()]
      .filter((v) => ids.length === 0 || ids.includes(v.volumeId))
      .map((v) => {
        if (!v.stale || v.stale.remaining <= 0) return v;
        v.stale.remaining--;
        return { ...v, attachments: v.stale.attachments };
      })
      .filter((v) =>
        filters.every((f) => {
          if (f.name === 'attachment.instance-id') return v.attachments.some((a) => f.values.includes(a.instanceId));
          if (f.name === 'volume-id') return f.values.includes(v.volumeId);
          throw new Ec2Error(400, 'InvalidParameterValue', `The filter '${f.name}' is invalid`);
        }),
      )
      .map(
        (v) =>
          `<item><volumeId>${esc(v.volumeId)}</volumeId><size>8</size><snapshotId/><availabilityZone>us-east-1a</availabilityZone><status>${v.attachments.length > 0 ? 'in-use' : 'available'}</status><createTime>2024-01-01T00:00:00.000Z</createTime><attachmentSet>${v.attachments.map((a) => `<item>${attachmentFields(v.volumeId, a, a.state)}<deleteOnTermination>false</deleteOnTermination></item>`).join('')}</attachmentSet><volumeType>gp3</volumeType><encrypted>false</encrypted><multiAttachEnabled>false</multiAttachEnabled></item>`,
      );
    return `<volumeSet>${items.join('')}</volumeSet>`;
  }

  private describeInstances(params: Record<string, string>): string {
    const ids = listParam(params, 'InstanceId');
    for (const id of ids) {
      if (!this.instances.has(id)) {
        throw new Ec2Error(400, 'InvalidInstanceID.NotFound', `The instance ID '${id}' does not exist`);
      }
    }
    const items = [...this.instances.values()]
      .filter((i) => ids.length === 0 || ids.includes(i.instanceId))
      .map((i) => {
        const mappings = [...this.volumes.values()].flatMap((v) =>
          v.attachments
            .filter((a) => a.instanceId === i.instanceId)
            .map(
              (a) =>
                `<item><deviceName>${esc(a.device)}</deviceName><ebs><volumeId>${esc(v.volumeId)}</volumeId><status>${a.state}</status><attachTime>${a.attachTime}</attachTime><deleteOnTermination>${a.device === i.rootDeviceName}</deleteOnTermination></ebs></item>`,
            ),
        );
        return `<item><reservationId>r-${esc(i.instanceId)}</reservationId><ownerId>123456789012</ownerId><groupSet/><instancesSet><item><instanceId>${esc(i.instanceId)}</instanceId><imageId>ami-12345678</imageId>${stateXml('instanceState', i.state)}<instanceType>t3.micro</instanceType><rootDeviceType>ebs</rootDeviceType><rootDeviceName>${esc(i.rootDeviceName)}</rootDeviceName><blockDeviceMapping>${mappings.join('')}</blockDeviceMapping></item></instancesSet></item>`;
      });
    return `<reservationSet>${items.join('')}</reservationSet>`;
  }

  private stopInstances(params: Record<string, string>): string {
    const ids = listParam(params, 'InstanceId');
    if (ids.length === 0)
      throw new Ec2Error(400, 'MissingParameter', 'The request must contain the parameter InstanceId');
    const items = ids.map((id) => {
      const instance = this.instances.get(id);
      if (!instance) throw new Ec2Error(400, 'InvalidInstanceID.NotFound', `The instance ID '${id}' does not exist`);
      instance.stopCalls++;
      const previous = instance.state;
      // EC2 refuses to stop an instance that is still starting, or that is being (or was) terminated.
      if (previous === 'pending' || previous === 'shutting-down' || previous === 'terminated') {
        throw new Ec2Error(
          400,
          'IncorrectInstanceState',
          `The instance '${id}' is not in a state from which it can be stopped.`,
        );
      }
      if (previous === 'running') {
        instance.state = 'stopping';
        instance.stopRequestedAt = Date.now();
      }
      return `<item><instanceId>${esc(id)}</instanceId>${stateXml('currentState', instance.state)}${stateXml('previousState', previous)}</item>`;
    });
    return `<instancesSet>${items.join('')}</instancesSet>`;
  }
}

function attachmentFields(volumeId: string, a: FakeAttachment, status: AttachmentStatus): string {
  return `<volumeId>${esc(volumeId)}</volumeId><instanceId>${esc(a.instanceId)}</instanceId><device>${esc(a.device)}</device><status>${status}</status><attachTime>${a.attachTime}</attachTime>`;
}

function attachmentXml(volumeId: string, a: FakeAttachment, status: AttachmentStatus): string {
  return attachmentFields(volumeId, a, status);
}

function stateXml(tag: string, state: InstanceStateName): string {
  return `<${tag}><code>${STATE_CODES[state]}</code><name>${state}</name></${tag}>`;
}

function xmlResponse(action: string, requestId: string, inner: string): string {
  return `<?xml version="1.0" encoding="UTF-8"?>\n<${action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>${requestId}</requestId>${inner}</${action}Response>`;
}

/** `VolumeId.1=a&VolumeId.2=b` -> ['a', 'b'] */
function listParam(params: Record<string, string>, name: string): string[] {
  const out: string[] = [];
  for (let i = 1; params[`${name}.${i}`] !== undefined; i++) out.push(params[`${name}.${i}`] as string);
  return out;
}

function filterParams(params: Record<string, string>): { name: string; values: string[] }[] {
  const out: { name: string; values: string[] }[] = [];
  for (let i = 1; params[`Filter.${i}.Name`] !== undefined; i++) {
    out.push({ name: params[`Filter.${i}.Name`] as string, values: listParam(params, `Filter.${i}.Value`) });
  }
  return out;
}

function esc(text: string): string {
  return text.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);
}

function send(res: ServerResponse, status: number, body: string): void {
  res.statusCode = status;
  res.setHeader('content-type', 'text/xml;charset=UTF-8');
  res.end(body);
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
