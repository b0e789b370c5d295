/**
 * Spans of provider calls (docs/worker.md "Traces"). Only the OpenTelemetry
 * API is used here, never the SDK: with tracing off (no tracer provider
 * registered, see worker/tracing.ts) the API's tracer is a no-op and these
 * spans cost a function call.
 *
 * The activity's interceptor (worker/tracing.ts) puts the stop's target into
 * the OpenTelemetry context; a provider call made inside that activity reads
 * it here, so Backend.call needs no instance or volume argument.
 */
import { type Context, context, createContextKey, type Span, SpanStatusCode, trace } from '@opentelemetry/api';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';

/** What a span about a stop's work is about. */
export interface TraceTarget {
  instanceId?: string;
  volumeId?: string;
  provider?: string;
}

export const TRACE_ATTRIBUTES = {
  instanceId: 'stopflow.instance_id',
  volumeId: 'stopflow.volume_id',
  provider: 'stopflow.provider',
  operation: 'stopflow.operation',
  outcome: 'stopflow.outcome',
  shared: 'stopflow.shared',
} as const;

const TARGET = createContextKey('stopflow.target');
const TRACER_NAME = 'stopflow';

/** `ctx` with the target of the activity running in it. */
export function withTraceTarget(ctx: Context, target: TraceTarget): Context {
  return ctx.setValue(TARGET, target);
}

export function traceTargetOf(ctx: Context): TraceTarget | undefined {
  return ctx.getValue(TARGET) as TraceTarget | undefined;
}

/** The span attributes of a target (absent fields left out). */
export function targetAttributes(target: TraceTarget): Record<string, string> {
  const attributes: Record<string, string> = {};
  if (target.instanceId !== undefined) attributes[TRACE_ATTRIBUTES.instanceId] = target.instanceId;
  if (target.volumeId !== undefined) attributes[TRACE_ATTRIBUTES.volumeId] = target.volumeId;
  if (target.provider !== undefined) attributes[TRACE_ATTRIBUTES.provider] = target.provider;
  return attributes;
}

/** `ok`, `cancelled`, or the failure's type (TransientProviderError, PermanentProviderError, ...). */
export function outcomeOf(err: unknown): string {
  if (err instanceof CancelledFailure) return 'cancelled';
  if (err instanceof ApplicationFailure && err.type) return err.type;
  return err instanceof Error ? err.name : 'error';
}

/**
 * Runs one provider call in a child span `provider.<operation>` of the current
 * (activity) span. A `shared` call (a batch of state checks serving many
 * activities) is parented where the batch began but names no instance or
 * volume: it is about all of them.
 */
export async function traceProviderCall<T>(
  provider: string,
  operation: string,
  shared: boolean,
  fn: () => Promise<T>,
): Promise<T> {
  const active = context.active();
  const target = shared ? undefined : traceTargetOf(active);
  const attributes: Record<string, string | boolean> = {
    ...targetAttributes({ ...target, provider }),
    [TRACE_ATTRIBUTES.operation]: operation,
  };
  if (shared) attributes[TRACE_ATTRIBUTES.shared] = true;
  return trace
    .getTracer(TRACER_NAME)
    .startActiveSpan(`provider.${operation}`, { attributes }, active, async (span: Span) => {
      try {
        const value = await fn();
        span.setAttribute(TRACE_ATTRIBUTES.outcome, 'ok');
        return value;
      } catch (err) {
        const outcome = outcomeOf(err);
        span.setAttribute(TRACE_ATTRIBUTES.outcome, outcome);
        // A cancel is the stop's decision, not a failure of the backend.
        if (outcome !== 'cancelled') span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
        throw err;
      } finally {
        span.end();
      }
    });
}
