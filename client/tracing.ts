/**
 * OpenTelemetry traces, off unless configured with the standard OTEL_*
 * variables (docs/worker.md "Traces"): on when OTEL_EXPORTER_OTLP_ENDPOINT or
 * OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set or OTEL_TRACES_EXPORTER names
 * `otlp`; OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none keeps them off.
 * Spans go over OTLP/HTTP (JSON) to `<endpoint>/v1/traces`.
 *
 * This module is part of the published client package, which does not depend
 * on OpenTelemetry: the rules below need nothing, and `startClientTracing`
 * loads the OpenTelemetry packages only when tracing is on. They are optional
 * for the package (a caller who turns traces on for the CLI installs them;
 * the error says which), which is why their names are not literal imports:
 * the package build (scripts/build-package.ts) refuses any import it does not
 * declare. The repository's own CLI and worker have them as dependencies.
 */
import type { WorkflowClientInterceptor } from '@temporalio/client';

type Env = Record<string, string | undefined>;

export const DEFAULT_OTLP_ENDPOINT = 'http://localhost:4318';

/** The packages `startClientTracing` loads (the worker has them as dependencies). */
export const TRACING_PACKAGES = [
  '@temporalio/interceptors-opentelemetry',
  '@opentelemetry/api',
  '@opentelemetry/sdk-trace-base',
  '@opentelemetry/resources',
  '@opentelemetry/context-async-hooks',
  '@opentelemetry/exporter-trace-otlp-http',
] as const;

const blank = (value: string | undefined): value is undefined => value === undefined || value.trim() === '';

function exporters(env: Env): string[] {
  return (env.OTEL_TRACES_EXPORTER ?? '')
    .split(',')
    .map((e) => e.trim().toLowerCase())
    .filter((e) => e !== '');
}

/** Whether the OTEL_* variables ask for traces. */
export function tracingRequested(env: Env = process.env): boolean {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return false;
  const named = exporters(env);
  if (named.includes('none')) return false;
  return (
    !blank(env.OTEL_EXPORTER_OTLP_ENDPOINT) || !blank(env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) || named.includes('otlp')
  );
}

/** Where spans are sent: the traces endpoint as given, or `<endpoint>/v1/traces` (the OTLP rule). */
export function tracesUrl(env: Env = process.env): string {
  const specific = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim();
  if (specific) return specific;
  const base = env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim() || DEFAULT_OTLP_ENDPOINT;
  return `${base.replace(/\/+$/, '')}/v1/traces`;
}

/** OTEL_EXPORTER_OTLP_HEADERS and OTEL_EXPORTER_OTLP_TRACES_HEADERS (`key=value,…`, values URL-encoded); the latter wins. */
export function exportHeaders(env: Env = process.env): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const raw of [env.OTEL_EXPORTER_OTLP_HEADERS, env.OTEL_EXPORTER_OTLP_TRACES_HEADERS]) {
    for (const pair of (raw ?? '').split(',')) {
      const at = pair.indexOf('=');
      if (at <= 0) continue;
      const key = pair.slice(0, at).trim();
      const value = pair.slice(at + 1).trim();
      try {
        headers[key] = decodeURIComponent(value);
      } catch {
        headers[key] = value;
      }
    }
  }
  return headers;
}

export interface TracingProblem {
  variable: string;
  message: string;
}

/** What is wrong with the OTEL_* variables when tracing is on: the endpoint must be a URL, the protocol OTLP/HTTP JSON. */
export function tracingProblems(env: Env = process.env): TracingProblem[] {
  if (!tracingRequested(env)) return [];
  const problems: TracingProblem[] = [];
  for (const variable of ['OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT']) {
    const value = env[variable]?.trim();
    if (!value) continue;
    let ok = false;
    try {
      ok = ['http:', 'https:'].includes(new URL(value).protocol);
    } catch {}
    if (!ok) problems.push({ variable, message: 'must be an http(s) URL, such as "http://otel-collector:4318"' });
  }
  for (const variable of ['OTEL_EXPORTER_OTLP_PROTOCOL', 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL']) {
    const value = env[variable]?.trim();
    if (value && value !== 'http/json') {
      problems.push({ variable, message: 'must be "http/json" or unset: stopflow sends traces as OTLP/HTTP JSON' });
    }
  }
  const others = exporters(env).filter((e) => e !== 'otlp' && e !== 'none');
  if (others.length > 0) {
    problems.push({ variable: 'OTEL_TRACES_EXPORTER', message: `must be "otlp" or "none" (not ${others.join(', ')})` });
  }
  return problems;
}

/** What may be printed about tracing: the URL without credentials, header names only, never their values. */
export function describeTracing(
  env: Env = process.env,
  defaultServiceName = 'stopflow-worker',
): Record<string, unknown> {
  if (!tracingRequested(env)) return { traces: 'off' };
  let endpoint = tracesUrl(env);
  try {
    const url = new URL(endpoint);
    url.username = '';
    url.password = '';
    url.search = '';
    endpoint = url.toString();
  } catch {
    endpoint = '(not a URL)';
  }
  const headerNames = Object.keys(exportHeaders(env));
  return {
    traces: 'OTLP/HTTP JSON',
    endpoint,
    serviceName: serviceName(env, defaultServiceName),
    headers: headerNames.length > 0 ? Object.fromEntries(headerNames.map((h) => [h, '(hidden)'])) : 'none',
  };
}

export function serviceName(env: Env, fallback: string): string {
  return env.OTEL_SERVICE_NAME?.trim() || fallback;
}

/** Tracing of one process's client calls: the interceptors to give its Client, and a flush for the end. */
export interface ClientTracing {
  interceptors: WorkflowClientInterceptor[];
  /** Sends the spans still buffered. */
  flush(): Promise<void>;
  /** Sends the spans still buffered and stops the exporter. */
  shutdown(): Promise<void>;
}

// The shapes used of the optional packages (see the header for why they are not imported).
interface Shutdownable {
  shutdown(): Promise<void>;
}
interface TracerProviderLike extends Shutdownable {
  forceFlush(): Promise<void>;
  register(config: { contextManager: unknown }): void;
  getTracer(name: string): unknown;
}
interface TracingModules {
  interceptors: {
    OpenTelemetryWorkflowClientInterceptor: new (options: { tracer: unknown }) => WorkflowClientInterceptor;
  };
  sdk: {
    BasicTracerProvider: new (config: { resource: unknown; spanProcessors: unknown[] }) => TracerProviderLike;
    BatchSpanProcessor: new (exporter: unknown) => unknown;
  };
  resources: { Resource: new (attributes: Record<string, string>) => unknown };
  contextHooks: { AsyncLocalStorageContextManager: new () => { enable(): unknown } };
  exporter: { OTLPTraceExporter: new (config: { url: string; headers: Record<string, string> }) => unknown };
}

async function loadTracingModules(): Promise<TracingModules> {
  const load = async (name: (typeof TRACING_PACKAGES)[number]): Promise<unknown> => {
    let mod: Record<string, unknown>;
    try {
      mod = (await import(name)) as Record<string, unknown>;
    } catch (err) {
      throw new Error(
        `tracing is on (OTEL_* variables) but ${name} cannot be loaded (${(err as Error).message}); install ${TRACING_PACKAGES.join(' ')} or unset the OTEL_* variables`,
      );
    }
    // These are CommonJS: Node's ESM import may leave some of their exports on `default` only.
    const commonJs = typeof mod.default === 'object' && mod.default !== null ? mod.default : {};
    return { ...commonJs, ...mod };
  };
  const [interceptors, , sdk, resources, contextHooks, exporter] = await Promise.all(TRACING_PACKAGES.map(load));
  return { interceptors, sdk, resources, contextHooks, exporter } as TracingModules;
}

/**
 * Client-side tracing from the OTEL_* variables, or undefined when they do not
 * ask for it. Registers a global tracer provider, W3C propagation and an
 * AsyncLocalStorage context manager (the Temporal interceptor needs all three
 * to put the trace into a workflow's headers): meant for a process of its own,
 * such as the CLI. A service with its own OpenTelemetry setup passes
 * `new OpenTelemetryWorkflowClientInterceptor()` to its Client instead (README).
 */
export async function startClientTracing(
  env: Env = process.env,
  defaultServiceName = 'stopflow-cli',
): Promise<ClientTracing | undefined> {
  if (!tracingRequested(env)) return undefined;
  const problem = tracingProblems(env)[0];
  if (problem) throw new Error(`${problem.variable}: ${problem.message}`);
  const m = await loadTracingModules();
  const provider = new m.sdk.BasicTracerProvider({
    resource: new m.resources.Resource({ 'service.name': serviceName(env, defaultServiceName) }),
    spanProcessors: [
      new m.sdk.BatchSpanProcessor(
        new m.exporter.OTLPTraceExporter({ url: tracesUrl(env), headers: exportHeaders(env) }),
      ),
    ],
  });
  provider.register({ contextManager: new m.contextHooks.AsyncLocalStorageContextManager().enable() });
  const interceptor = new m.interceptors.OpenTelemetryWorkflowClientInterceptor({
    tracer: provider.getTracer('stopflow-client'),
  });
  return { interceptors: [interceptor], flush: () => provider.forceFlush(), shutdown: () => provider.shutdown() };
}

let processTracing: Promise<ClientTracing | undefined> | undefined;

/**
 * `startClientTracing` once per process (the first call's variables decide):
 * the tracer provider it registers is global, so every Client of the process
 * shares it.
 */
export function clientTracing(env: Env = process.env): Promise<ClientTracing | undefined> {
  if (!tracingRequested(env)) return Promise.resolve(undefined);
  processTracing ??= startClientTracing(env).catch((err: unknown) => {
    processTracing = undefined;
    throw err;
  });
  return processTracing;
}
