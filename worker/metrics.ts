/**
 * Metrics: one Prometheus endpoint, served by the Temporal SDK's runtime
 * (`Runtime.install({ telemetryOptions: { metrics: { prometheus } } })`). It
 * carries the SDK's worker metrics (`temporal_*`), the workflow's own
 * (`stopflow_stops_ended`, `stopflow_stop_duration`, `stopflow_force_detaches`,
 * emitted through the workflow `metricMeter`) and the activity-level ones
 * defined here, so no second exporter (prom-client) is needed.
 * docs/worker.md lists every name and label.
 */
import { Context } from '@temporalio/activity';
import type { MetricMeter } from '@temporalio/common';
import type { MetricsExporterConfig } from '@temporalio/worker';
import type { ProviderEvent } from '../activities';

/**
 * Buckets of `stopflow_stop_duration` (seconds): a healthy stop takes seconds,
 * a stuck one runs into its maxStopDuration (minutes to hours). The SDK's
 * default buckets are for milliseconds.
 */
export const STOP_DURATION_BUCKETS_S = [1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1_800, 3_600, 7_200, 21_600, 86_400];

export function prometheusExporter(bindAddress: string): MetricsExporterConfig {
  return {
    prometheus: {
      bindAddress,
      histogramBucketOverrides: { stopflow_stop_duration: STOP_DURATION_BUCKETS_S },
    },
  };
}

export const METRIC_NAMES = {
  providerCalls: 'stopflow_provider_calls',
  providerErrors: 'stopflow_provider_errors',
  detachAttempts: 'stopflow_detach_attempts',
} as const;

/**
 * The activities' `observe` hook: counts provider calls, errors by type, and
 * detach requests (graceful and forced). Labels match the workflow metrics'
 * (`namespace`, `taskQueue`) so both can be joined in one query.
 */
export function providerMetrics(meter: MetricMeter): (event: ProviderEvent) => void {
  const calls = meter.createCounter(
    METRIC_NAMES.providerCalls,
    'calls',
    'Calls to the backend, by provider and operation',
  );
  const errors = meter.createCounter(
    METRIC_NAMES.providerErrors,
    'errors',
    'Backend calls that failed, by provider, operation and error type',
  );
  const detachAttempts = meter.createCounter(
    METRIC_NAMES.detachAttempts,
    'requests',
    'Detach requests sent to the backend, by provider and kind (graceful or force)',
  );
  return (event) => {
    try {
      const tags = { ...activityTags(), provider: event.provider, operation: event.operation };
      if (event.kind === 'error') {
        errors.add(1, { ...tags, error_type: event.errorType });
        return;
      }
      calls.add(1, tags);
      if (event.operation === 'detachVolume' || event.operation === 'forceDetachVolume') {
        const kind = event.operation === 'detachVolume' ? 'graceful' : 'force';
        detachAttempts.add(1, { ...activityTags(), provider: event.provider, kind });
      }
    } catch {
      // Metrics must never fail a stop.
    }
  };
}

function activityTags(): Record<string, string> {
  try {
    const { namespace, taskQueue } = Context.current().info;
    return { namespace, taskQueue };
  } catch {
    return {};
  }
}
