/**
 * The worker's OpenTelemetry traces (docs/worker.md "Traces"), off unless the
 * OTEL_* variables ask for them (client/tracing.ts has the rules). When on:
 *
 * - a tracer provider with an OTLP/HTTP exporter (batched), registered
 *   globally with an AsyncLocalStorage context manager and W3C propagation, so
 *   the provider-call spans of activities/tracing.ts (API only) record;
 * - Temporal's activity interceptors (a `RunActivity:<type>` span, child of
 *   the workflow's `StartActivity:<type>`), and ours, which adds the stop's
 *   instance, volume and provider to that span and to the context its provider
 *   calls read;
 * - the `exporter` sink through which the workflow's spans (made inside the
 *   sandbox by the interceptor module below) reach the same processor.
 *
 * Only a traced worker's workflow bundle has the workflow interceptor module
 * (TRACING_WORKFLOW_MODULES): a traced worker bundles its workflows with it at
 * start (bundleStopflowWorkflows({ traced: true }) in worker/worker.ts) or
 * takes the prebuilt `workflow-bundle-traced.js`; an untraced worker's bundle
 * leaves it out, since every workflow evaluates its bundle's modules afresh
 * (docs/worker.md "Traces"). An untraced worker still registers the sink
 * (NO_TRACING_SINKS), which drops whatever a traced bundle sends it. The
 * module adds no command to a workflow's history (only a trace-context header
 * on scheduled activities), so stops replay the same on either bundle
 * (test/replay.test.ts).
 */
import { createRequire } from 'node:module';
import { context, DiagLogLevel, diag, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { Resource } from '@opentelemetry/resources';
import { BasicTracerProvider, BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { ATTR_SERVICE_NAME } from '@opentelemetry/semantic-conventions';
import {
  makeWorkflowExporter,
  OpenTelemetryActivityInboundInterceptor,
  OpenTelemetryActivityOutboundInterceptor,
  type OpenTelemetryWorkflowExporter,
} from '@temporalio/interceptors-opentelemetry';
import type { ActivityInterceptorsFactory, InjectedSinks } from '@temporalio/worker';
import { type TraceTarget, targetAttributes, withTraceTarget } from '../activities/tracing';
import { exportHeaders, serviceName, tracesUrl, tracingRequested } from '../client/tracing';
import { targetFields, withStopFields } from './logging';

type Env = Record<string, string | undefined>;

export const DEFAULT_SERVICE_NAME = 'stopflow-worker';

/** The workflow interceptor module of @temporalio/interceptors-opentelemetry, bundled with the workflows. */
export const TRACING_WORKFLOW_MODULES: string[] = [
  createRequire(import.meta.url).resolve('@temporalio/interceptors-opentelemetry/lib/workflow-interceptors'),
];

export type TracingSinks = InjectedSinks<{ exporter: OpenTelemetryWorkflowExporter }>;

/** With tracing off the workflow's spans are dropped here (an unregistered sink would log an error per span). */
export const NO_TRACING_SINKS: TracingSinks = { exporter: { export: { fn: () => undefined } } };

export interface WorkerTracing {
  /** Activity interceptors, outermost first; `defaultProvider` is the provider of requests that name none. */
  activityInterceptors(defaultProvider: string): ActivityInterceptorsFactory[];
  /** The sink the workflow interceptors export their spans through. */
  sinks: TracingSinks;
  /** Sends the spans still buffered; called once the worker has stopped. */
  shutdown(): Promise<void>;
}

/**
 * Our activity interceptor (inside Temporal's, whose span is then the active
 * one): the activity's span gets the stop's instance, volume and provider, and
 * provider calls made by the activity find them in the context.
 */
export function activityTraceTarget(defaultProvider: string): ActivityInterceptorsFactory {
  return (ctx) => ({
    inbound: {
      execute(input, next) {
        const arg: unknown = input.args[0];
        const fields = targetFields(arg);
        const target: TraceTarget = {};
        if (fields.instanceId !== undefined) {
          // An activity on the stop's instance (its argument names it): it works through a provider.
          const named = (arg as { provider?: unknown }).provider;
          target.instanceId = fields.instanceId;
          target.provider = typeof named === 'string' ? named : defaultProvider;
          if (fields.volumeId !== undefined) target.volumeId = fields.volumeId;
        } else {
          // Any other activity of a stop still belongs to its instance: the workflow id is `stop-<instanceId>`.
          const { instanceId } = withStopFields({ workflowId: ctx.info.workflowExecution?.workflowId });
          if (typeof instanceId !== 'string') return next(input);
          target.instanceId = instanceId;
        }
        trace.getActiveSpan()?.setAttributes(targetAttributes(target));
        return context.with(withTraceTarget(context.active(), target), () => next(input));
      },
    },
  });
}

export interface TracingLog {
  warn(message: string): void;
}

/** Starts the worker's tracing from the OTEL_* variables, or returns undefined when they do not ask for it. */
export function startWorkerTracing(env: Env = process.env, log?: TracingLog): WorkerTracing | undefined {
  if (!tracingRequested(env)) return undefined;
  if (log) {
    // An unreachable collector is worth a line in the log (OpenTelemetry is silent otherwise); the
    // exporter's messages name the URL, never the headers.
    diag.setLogger(
      {
        error: (message) => log.warn(`traces: ${message}`),
        warn: (message) => log.warn(`traces: ${message}`),
        info: () => undefined,
        debug: () => undefined,
        verbose: () => undefined,
      },
      DiagLogLevel.WARN,
    );
  }
  const resource = new Resource({ [ATTR_SERVICE_NAME]: serviceName(env, DEFAULT_SERVICE_NAME) });
  const processor = new BatchSpanProcessor(new OTLPTraceExporter({ url: tracesUrl(env), headers: exportHeaders(env) }));
  const provider = new BasicTracerProvider({ resource, spanProcessors: [processor] });
  provider.register({ contextManager: new AsyncLocalStorageContextManager().enable() });
  return {
    activityInterceptors: (defaultProvider) => [
      (ctx) => ({
        inbound: new OpenTelemetryActivityInboundInterceptor(ctx),
        outbound: new OpenTelemetryActivityOutboundInterceptor(ctx),
      }),
      activityTraceTarget(defaultProvider),
    ],
    sinks: { exporter: makeWorkflowExporter(processor, resource) },
    shutdown: () => provider.shutdown(),
  };
}
