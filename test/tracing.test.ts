/**
 * OpenTelemetry traces end to end: a local OTLP/HTTP receiver (it decodes the
 * JSON the exporter sends), the production worker as a process configured only
 * through OTEL_* variables, and a client from connectTemporalClient with the
 * same variables. One stop of two simulated volumes must be one trace, from the
 * client's StartWorkflow through the workflow and each activity to each
 * provider call, with the stop's attributes; with the variables unset (or
 * OTEL_SDK_DISABLED=true) nothing is traced or sent.
 */
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Client } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { FileSimStore, SimulatedProvider } from '../activities/providers/simulated';
import { connectTemporalClient, type TemporalTarget } from '../client/connect';
import { StopFailedError, StopflowClient } from '../client/stopflow-client';
import { clientTracing, describeTracing, tracesUrl, tracingProblems, tracingRequested } from '../client/tracing';
import { ConfigError, loadWorkerConfig } from '../worker/config';
import { startWorkerTracing } from '../worker/tracing';
import { eventually } from './helpers';
import { readmeBlock, runShell } from './support/readme-examples';
import { ROOT, WorkerProcess, workerEnv } from './support/worker-process';

const dir = mkdtempSync(join(tmpdir(), 'stopflow-tracing-'));
const emptyTemporalConfig = join(dir, 'temporal.toml');
writeFileSync(emptyTemporalConfig, '');
const SECRET = `secret-${randomUUID()}`;

// --- the OTLP/HTTP receiver ---

type AnyValue = { stringValue?: string; boolValue?: boolean; intValue?: number | string; doubleValue?: number };
type KeyValue = { key: string; value: AnyValue };
interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  attributes?: KeyValue[];
  status?: { code?: number; message?: string };
}
interface OtlpRequest {
  resourceSpans?: Array<{
    resource?: { attributes?: KeyValue[] };
    scopeSpans?: Array<{ spans?: OtlpSpan[] }>;
  }>;
}

/** A span as the tests read it: ids in hex, attributes as a plain object, the service that sent it. */
interface Span {
  traceId: string;
  spanId: string;
  parentSpanId: string | undefined;
  name: string;
  service: string | undefined;
  attributes: Record<string, string | boolean | number | undefined>;
  statusCode: number;
}

function plainValue(value: AnyValue): string | boolean | number | undefined {
  if (value.stringValue !== undefined) return value.stringValue;
  if (value.boolValue !== undefined) return value.boolValue;
  if (value.intValue !== undefined) return Number(value.intValue);
  return value.doubleValue;
}

function attributesOf(list: KeyValue[] | undefined): Record<string, string | boolean | number | undefined> {
  return Object.fromEntries((list ?? []).map((kv) => [kv.key, plainValue(kv.value)]));
}

/** OTLP/JSON carries ids as hex; accept base64 too (the protobuf-JSON mapping) so a change of encoding is not a silent miss. */
function hexId(id: string | undefined): string | undefined {
  if (!id) return undefined;
  return /^[0-9a-f]+$/i.test(id) ? id.toLowerCase() : Buffer.from(id, 'base64').toString('hex');
}

class OtlpReceiver {
  readonly spans: Span[] = [];
  readonly requests: Array<{
    path: string | undefined;
    headers: IncomingHttpHeaders;
    contentType: string | undefined;
  }> = [];
  private readonly server: Server;

  constructor() {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.on('end', () => {
        this.requests.push({ path: req.url, headers: req.headers, contentType: req.headers['content-type'] });
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as OtlpRequest;
        for (const resourceSpans of body.resourceSpans ?? []) {
          const service = attributesOf(resourceSpans.resource?.attributes)['service.name'];
          for (const scope of resourceSpans.scopeSpans ?? []) {
            for (const span of scope.spans ?? []) {
              this.spans.push({
                traceId: hexId(span.traceId) ?? '',
                spanId: hexId(span.spanId) ?? '',
                parentSpanId: hexId(span.parentSpanId),
                name: span.name,
                service: typeof service === 'string' ? service : undefined,
                attributes: attributesOf(span.attributes),
                statusCode: span.status?.code ?? 0,
              });
            }
          }
        }
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      });
    });
  }

  async listen(): Promise<string> {
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  close(): void {
    this.server.close();
  }
}

// --- the worker process (test/support/worker-process.ts) ---

function target(): TemporalTarget {
  const address = inject('temporalAddress');
  return { address, namespace: 'default', connectConfig: { connectionOptions: { address } } };
}

const started: WorkerProcess[] = [];
const receivers: OtlpReceiver[] = [];
afterAll(() => {
  for (const worker of started) worker.kill();
  for (const receiver of receivers) receiver.close();
});

describe('the OTEL_* rules', () => {
  it('traces are off unless an endpoint or the otlp exporter is named, and OTEL_SDK_DISABLED wins', () => {
    expect(tracingRequested({})).toBe(false);
    expect(tracingRequested({ OTEL_SERVICE_NAME: 'stopflow', OTEL_EXPORTER_OTLP_HEADERS: 'a=b' })).toBe(false);
    expect(tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: '  ' })).toBe(false);
    expect(tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' })).toBe(true);
    expect(tracingRequested({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://collector:4318/v1/traces' })).toBe(true);
    expect(tracingRequested({ OTEL_TRACES_EXPORTER: 'otlp' })).toBe(true);
    expect(tracingRequested({ OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' })).toBe(
      false,
    );
    expect(tracingRequested({ OTEL_SDK_DISABLED: 'TRUE', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' })).toBe(false);

    expect(tracesUrl({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318/' })).toBe('http://c:4318/v1/traces');
    expect(tracesUrl({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://t:9999/x' })).toBe('http://t:9999/x');
    expect(tracesUrl({ OTEL_TRACES_EXPORTER: 'otlp' })).toBe('http://localhost:4318/v1/traces');
  });

  it('with traces off nothing is set up: no worker tracing, no client interceptor', async () => {
    expect(startWorkerTracing({})).toBeUndefined();
    expect(startWorkerTracing({ OTEL_SDK_DISABLED: 'true', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' })).toBe(
      undefined,
    );
    expect(await clientTracing({})).toBeUndefined();
    const client = await connectTemporalClient(target(), { OTEL_SERVICE_NAME: 'not-enough' });
    try {
      expect(client.options.interceptors.workflow ?? []).toEqual([]);
    } finally {
      await client.connection.close();
    }
  });

  it('tracing that cannot start leaves the client working untraced, with a warning', async () => {
    const warned = new Promise<Error>((resolve) => process.once('warning', resolve));
    const client = await connectTemporalClient(target(), {
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc',
    });
    try {
      expect(client.options.interceptors.workflow ?? []).toEqual([]);
      const warning = await warned;
      expect(warning.name).toBe('StopflowTracingWarning');
      expect(warning.message).toContain('OTEL_EXPORTER_OTLP_PROTOCOL: must be "http/json" or unset');
    } finally {
      await client.connection.close();
    }
  });

  it('a bad endpoint or protocol is a configuration error, and the summary never shows header values', () => {
    const bad = {
      OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc',
      TEMPORAL_CONFIG_FILE: emptyTemporalConfig,
    };
    expect(tracingProblems(bad).map((p) => p.variable)).toEqual([
      'OTEL_EXPORTER_OTLP_ENDPOINT',
      'OTEL_EXPORTER_OTLP_PROTOCOL',
    ]);
    let error: unknown;
    try {
      loadWorkerConfig(bad);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).issues).toEqual(
      expect.arrayContaining([
        'OTEL_EXPORTER_OTLP_ENDPOINT: must be an http(s) URL, such as "http://otel-collector:4318"',
        'OTEL_EXPORTER_OTLP_PROTOCOL: must be "http/json" or unset: stopflow sends traces as OTLP/HTTP JSON',
      ]),
    );
    // Unset, the same variables are not checked: traces are off.
    expect(tracingProblems({ OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' })).toEqual([]);

    const summary = describeTracing({
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `https://user:${SECRET}@collector.example:4318/v1/traces?token=${SECRET}`,
      OTEL_EXPORTER_OTLP_HEADERS: `x-api-key=${SECRET},x-tenant=a`,
    });
    expect(summary).toMatchObject({
      traces: 'OTLP/HTTP JSON',
      endpoint: 'https://collector.example:4318/v1/traces',
      serviceName: 'stopflow-worker',
      headers: { 'x-api-key': '(hidden)', 'x-tenant': '(hidden)' },
    });
    expect(JSON.stringify(summary)).not.toContain(SECRET);
  });
});

describe('one trace per stop, from the client to each provider call', () => {
  const taskQueue = `tracing-${randomUUID()}`;
  const offQueue = `tracing-off-${randomUUID()}`;
  const simState = join(dir, 'sim-cloud.json');
  const sim = new SimulatedProvider(new FileSimStore(simState));
  const receiver = new OtlpReceiver();
  const offReceiver = new OtlpReceiver();
  receivers.push(receiver, offReceiver);
  let endpoint: string;
  let traced: WorkerProcess;
  let untraced: WorkerProcess;

  beforeAll(async () => {
    endpoint = await receiver.listen();
    const offEndpoint = await offReceiver.listen();
    traced = new WorkerProcess(
      workerEnv({
        STOPFLOW_TASK_QUEUE: taskQueue,
        STOPFLOW_SIM_STATE: simState,
        OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
        OTEL_EXPORTER_OTLP_HEADERS: `authorization=Bearer%20${SECRET}`,
        OTEL_SERVICE_NAME: 'stopflow-worker-test',
        // The shared test bundle is the plain one: a traced worker bundles its own, with the tracing interceptors.
        STOPFLOW_WORKFLOW_BUNDLE: '',
      }),
    );
    // Configured, but disabled: it must send nothing.
    untraced = new WorkerProcess(
      workerEnv({
        STOPFLOW_TASK_QUEUE: offQueue,
        STOPFLOW_SIM_STATE: simState,
        OTEL_EXPORTER_OTLP_ENDPOINT: offEndpoint,
        OTEL_SDK_DISABLED: 'true',
      }),
    );
    started.push(traced, untraced);
    await Promise.all([traced.waitUntilPolling(), untraced.waitUntilPolling()]);
  });

  it("the README's client with a service's own OpenTelemetry setup runs as written and roots the stop's trace", async () => {
    const instanceId = `tr-readme-${randomUUID().slice(0, 8)}`;
    await sim.addInstance(instanceId, [{ volumeId: 'vol-1' }]);
    // Written beside the repository's code so `stopflow` resolves to it (.stopflow/ is git-ignored).
    const exampleDir = join(ROOT, '.stopflow', `readme-${instanceId}`);
    mkdirSync(exampleDir, { recursive: true });
    // The service's own setup, as NodeSDK would register it: a global provider, W3C propagation, a context manager.
    writeFileSync(
      join(exampleDir, 'otel-setup.ts'),
      [
        "import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';",
        "import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';",
        "import { Resource } from '@opentelemetry/resources';",
        "import { BasicTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';",
        'const provider = new BasicTracerProvider({',
        "  resource: new Resource({ 'service.name': 'readme-service' }),",
        '  spanProcessors: [new SimpleSpanProcessor(new OTLPTraceExporter({ url: process.env.TRACES_URL }))],',
        '});',
        'provider.register({ contextManager: new AsyncLocalStorageContextManager().enable() });',
        'export const flush = () => provider.forceFlush();',
      ].join('\n'),
    );
    const run = [
      `await stopflow.stop({ instanceId: '${instanceId}', requestedBy: 'readme' });`,
      `console.log('phase', (await stopflow.result('${instanceId}')).phase);`,
      'await client.connection.close();',
      "await (await import('./otel-setup.ts')).flush();",
    ];
    const file = join(exampleDir, 'example.ts');
    writeFileSync(file, ["import './otel-setup.ts';", readmeBlock('typescript-tracing'), ...run].join('\n'));
    try {
      const ran = await runShell(`node_modules/.bin/tsx ${file}`, {
        ...process.env,
        TEMPORAL_ADDRESS: inject('temporalAddress'),
        STOPFLOW_TASK_QUEUE: taskQueue,
        TRACES_URL: `${endpoint}/v1/traces`,
      });
      expect(ran.stderr).toBe('');
      expect(ran.stdout).toContain('phase stopped');
    } finally {
      rmSync(exampleDir, { recursive: true, force: true });
    }
    const root = receiver.spans.find(
      (s) => s.name === 'StartWorkflow:stopInstance' && s.attributes.temporalWorkflowId === `stop-${instanceId}`,
    );
    expect(root?.service).toBe('readme-service');
    expect(root?.parentSpanId).toBeUndefined();
    // The worker's spans of that stop join the service's trace (sent at the latest when the worker stops, below).
    await eventually(
      async () => receiver.spans.some((s) => s.traceId === root?.traceId && s.name === 'RunWorkflow:stopInstance'),
      "the worker's workflow span in the service's trace",
    );
  });

  it('client span → workflow span → activity spans → provider spans, with the stop, the volume, the provider and the outcome', async () => {
    const suffix = randomUUID().slice(0, 8);
    const instanceId = `tr-${suffix}`;
    const unknown = `tr-unknown-${suffix}`;
    await sim.addInstance(instanceId, [{ volumeId: 'vol-a' }, { volumeId: 'vol-b', behavior: { detachDelayMs: 500 } }]);

    const client: Client = await connectTemporalClient(target(), {
      OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
      OTEL_SERVICE_NAME: 'stopflow-client-test',
    });
    expect(client.options.interceptors.workflow).toHaveLength(1);
    const stopflow = new StopflowClient({ client, taskQueue });
    try {
      await stopflow.stop({ instanceId, volumes: [{ volumeId: 'vol-a' }, { volumeId: 'vol-b' }], requestedBy: 'test' });
      expect((await stopflow.result(instanceId)).phase).toBe('stopped');
      // The cloud does not know this instance: listing its volumes fails for good.
      await stopflow.stop({ instanceId: unknown });
      await expect(stopflow.result(unknown)).rejects.toBeInstanceOf(StopFailedError);
    } finally {
      // Closing the connection sends the client's buffered spans; SIGTERM makes the worker send its own.
      await client.connection.close();
    }
    expect(await traced.stop()).toBe(0);

    const byName = (trace: Span[], name: string) => trace.filter((s) => s.name === name);
    const root = receiver.spans.find(
      (s) => s.name === 'StartWorkflow:stopInstance' && s.attributes.temporalWorkflowId === `stop-${instanceId}`,
    );
    if (!root) throw new Error(`no StartWorkflow span for ${instanceId}: ${receiver.spans.map((s) => s.name)}`);
    expect(root.parentSpanId).toBeUndefined();
    expect(root.service).toBe('stopflow-client-test');
    const trace = receiver.spans.filter((s) => s.traceId === root.traceId);
    const span = (id: string | undefined) => trace.find((s) => s.spanId === id);

    const [run, ...otherRuns] = byName(trace, 'RunWorkflow:stopInstance');
    expect(otherRuns).toEqual([]);
    expect(run?.parentSpanId).toBe(root.spanId);
    expect(run?.service).toBe('stopflow-worker-test');
    expect(run?.attributes.workflowId).toBe(`stop-${instanceId}`);

    // Each activity's span hangs under the workflow's StartActivity span, itself under the workflow run.
    const activities = trace.filter((s) => s.name.startsWith('RunActivity:'));
    expect(activities.map((s) => s.name)).toEqual(
      expect.arrayContaining([
        'RunActivity:requestDetach',
        'RunActivity:requestDetach',
        'RunActivity:stopInstanceIfDetached',
      ]),
    );
    for (const activity of activities) {
      const start = span(activity.parentSpanId);
      expect(start?.name).toBe(activity.name.replace('RunActivity:', 'StartActivity:'));
      expect(start?.parentSpanId).toBe(run?.spanId);
      // Every activity of the stop names its instance; those that work on it through a provider, the provider.
      expect(activity.attributes['stopflow.instance_id'], activity.name).toBe(instanceId);
    }
    for (const name of ['RunActivity:requestDetach', 'RunActivity:stopInstanceIfDetached']) {
      for (const activity of byName(trace, name)) expect(activity.attributes['stopflow.provider']).toBe('simulated');
    }
    const detaches = byName(trace, 'RunActivity:requestDetach');
    expect(detaches.map((s) => s.attributes['stopflow.volume_id']).sort()).toEqual(['vol-a', 'vol-b']);

    // One provider span per detach request, under the activity of that volume.
    const requests = byName(trace, 'provider.detachVolume');
    expect(requests.map((s) => s.attributes['stopflow.volume_id']).sort()).toEqual(['vol-a', 'vol-b']);
    for (const request of requests) {
      const parent = span(request.parentSpanId);
      expect(parent?.name).toBe('RunActivity:requestDetach');
      expect(parent?.attributes['stopflow.volume_id']).toBe(request.attributes['stopflow.volume_id']);
      expect(request.attributes).toMatchObject({
        'stopflow.instance_id': instanceId,
        'stopflow.provider': 'simulated',
        'stopflow.operation': 'detachVolume',
        'stopflow.outcome': 'ok',
      });
    }
    const [stopCall] = byName(trace, 'provider.stopInstance');
    expect(span(stopCall?.parentSpanId)?.name).toBe('RunActivity:stopInstanceIfDetached');
    expect(stopCall?.attributes).toMatchObject({
      'stopflow.instance_id': instanceId,
      'stopflow.provider': 'simulated',
      'stopflow.outcome': 'ok',
    });
    expect(stopCall?.attributes['stopflow.volume_id']).toBeUndefined();
    // Every provider span of the stop is in its trace, each under an activity span.
    for (const call of trace.filter((s) => s.name.startsWith('provider.'))) {
      expect(span(call.parentSpanId)?.name).toMatch(/^RunActivity:/);
      expect(call.attributes['stopflow.outcome']).toBeDefined();
    }

    // A failed call carries its error type as the outcome, and an error status.
    const failedRoot = receiver.spans.find(
      (s) => s.name === 'StartWorkflow:stopInstance' && s.attributes.temporalWorkflowId === `stop-${unknown}`,
    );
    const failedList = receiver.spans.find(
      (s) =>
        s.traceId === failedRoot?.traceId &&
        s.name === 'provider.listAttachedVolumes' &&
        s.attributes['stopflow.outcome'] === 'PermanentProviderError',
    );
    expect(failedList?.attributes).toMatchObject({ 'stopflow.instance_id': unknown, 'stopflow.provider': 'simulated' });
    expect(failedList?.statusCode).toBe(2); // STATUS_CODE_ERROR

    // OTLP/HTTP JSON to <endpoint>/v1/traces, with the configured header, which the worker never prints.
    expect(receiver.requests.length).toBeGreaterThan(0);
    for (const request of receiver.requests) {
      expect(request.path).toBe('/v1/traces');
      expect(request.contentType).toBe('application/json');
    }
    expect(receiver.requests.some((r) => r.headers.authorization === `Bearer ${SECRET}`)).toBe(true);
    const config = traced.lines.find((l) => l.msg === 'stopflow worker starting')?.config as Record<string, unknown>;
    expect(config.tracing).toEqual({
      traces: 'OTLP/HTTP JSON',
      endpoint: `${endpoint}/v1/traces`,
      serviceName: 'stopflow-worker-test',
      headers: { authorization: '(hidden)' },
    });
    expect(traced.output).not.toContain(SECRET);
    // An activity's log lines lead to its trace.
    const detachLine = traced.lines.find((l) => l.msg === 'simulated: detach requested' && l.instanceId === instanceId);
    expect(detachLine?.trace_id).toBe(root.traceId);
  });

  it('OTEL_SDK_DISABLED=true: a stop on that worker sends nothing', async () => {
    const instanceId = `tr-off-${randomUUID().slice(0, 8)}`;
    await sim.addInstance(instanceId, [{ volumeId: 'vol-a' }, { volumeId: 'vol-b' }]);
    const client = await connectTemporalClient(target(), {});
    try {
      const stopflow = new StopflowClient({ client, taskQueue: offQueue });
      await stopflow.stop({ instanceId, volumes: [{ volumeId: 'vol-a' }, { volumeId: 'vol-b' }] });
      expect((await stopflow.result(instanceId)).phase).toBe('stopped');
      // An untraced worker's bundle has no tracing interceptors (docs/worker.md): its stops' activities carry
      // no trace header, and the history is what it is without tracing.
      const history = await client.workflow.getHandle(`stop-${instanceId}`).fetchHistory();
      const scheduled = (history.events ?? []).filter((e) => e.activityTaskScheduledEventAttributes);
      expect(scheduled.length).toBeGreaterThan(0);
      for (const event of scheduled) {
        expect(Object.keys(event.activityTaskScheduledEventAttributes?.header?.fields ?? {})).not.toContain(
          '_tracer-data',
        );
      }
    } finally {
      await client.connection.close();
    }
    // After shutdown, when a tracing worker would have flushed everything.
    expect(await untraced.stop()).toBe(0);
    expect(offReceiver.requests).toEqual([]);
    const config = untraced.lines.find((l) => l.msg === 'stopflow worker starting')?.config as Record<string, unknown>;
    expect(config.tracing).toEqual({ traces: 'off' });
  });
});
