/**
 * Metrics: one Prometheus endpoint, served by the Temporal SDK's runtime
 * (`Runtime.install({ telemetryOptions: { metrics: { prometheus } } })`). It
 * carries the SDK's worker metrics (`temporal_*`), the workflow's own
 * (`stopflow_stops_ended`, `stopflow_stop_duration`, `stopflow_force_detaches`,
 * emitted through the workflow `metricMeter`) and the activity-level ones
 * defined here, and the gauges of running stops (`watchStops`, from visibility),
 * so no second exporter (prom-client) is needed.
 * docs/worker.md lists every name and label.
 */
import { Context } from '@temporalio/activity';
import type { Client } from '@temporalio/client';
import type { MetricMeter } from '@temporalio/common';
import type { MetricsExporterConfig } from '@temporalio/worker';
import type { ProviderEvent } from '../activities';
import { stopsQuery } from '../client/queries';

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
export function providerMetrics(
  meter: MetricMeter,
  /**
   * The stop's task queue this worker serves: the `taskQueue` label of every call, forces (which run on
   * `<queue>-forces` since workflow version 12) included, so the labels stay the workflow metrics'.
   */
  stopTaskQueue?: string,
): (event: ProviderEvent) => void {
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
      const tags = { ...activityTags(stopTaskQueue), provider: event.provider, operation: event.operation };
      if (event.kind === 'error') {
        errors.add(1, { ...tags, error_type: event.errorType });
        return;
      }
      calls.add(1, tags);
      if (event.operation === 'detachVolume' || event.operation === 'forceDetachVolume') {
        const kind = event.operation === 'detachVolume' ? 'graceful' : 'force';
        detachAttempts.add(1, { ...activityTags(stopTaskQueue), provider: event.provider, kind });
      }
    } catch {
      // Metrics must never fail a stop.
    }
  };
}

function activityTags(stopTaskQueue: string | undefined): Record<string, string> {
  try {
    const { namespace, taskQueue } = Context.current().info;
    return { namespace, taskQueue: stopTaskQueue ?? taskQueue };
  } catch {
    return {};
  }
}

export const STOP_GAUGE_NAMES = {
  stopping: 'stopflow_stops_stopping',
  oldestAge: 'stopflow_oldest_stop_age_seconds',
  queryErrors: 'stopflow_stop_gauge_errors',
} as const;

/** How often the worker refreshes the stop gauges from visibility. */
export const STOP_GAUGE_INTERVAL_MS = 15_000;
/** Ages are found by bisection between these bounds (seconds) to within this ratio. */
const AGE_MIN_S = 1;
const AGE_MAX_S = 90 * 24 * 3600;
const AGE_PRECISION = 1.1;

export interface StopGaugeOptions {
  /** Reads visibility in the worker's namespace. */
  client: Client;
  meter: MetricMeter;
  namespace: string;
  taskQueue: string;
  intervalMs?: number;
  /** Called when a refresh fails (the gauges keep their last values). */
  onError?: (err: unknown) => void;
}

/**
 * Gauges of the stops that are running now, refreshed from visibility every
 * `intervalMs` (workflow code cannot hold a gauge: a stop waiting on a stuck
 * volume runs no code for hours, and its gauge would live on whichever worker
 * ran its last task). Each worker reports the whole task queue's view, so
 * alert on `max by (namespace, taskQueue)`:
 *
 * - `stopflow_stops_stopping`: stops whose workflow is running with `StopPhase = 'stopping'`;
 * - `stopflow_oldest_stop_age_seconds`: how long the oldest of them has been stopping
 *   (0 when none), a lower bound within 10 % found by bisecting count queries on
 *   `StartTime`, so it costs about a dozen count queries per refresh whatever the fleet;
 * - `stopflow_stop_gauge_errors`: refreshes that failed.
 */
export function watchStops(options: StopGaugeOptions): { stop(): Promise<void> } {
  const { client, meter, taskQueue } = options;
  const tags = { namespace: options.namespace, taskQueue };
  const stopping = meter.createGauge(
    STOP_GAUGE_NAMES.stopping,
    'int',
    'stops',
    'Running stops in phase stopping (visibility)',
  );
  const oldestAge = meter.createGauge(
    STOP_GAUGE_NAMES.oldestAge,
    'float',
    's',
    'Seconds the oldest running stop has been stopping, 0 when none (visibility)',
  );
  const errors = meter.createCounter(
    STOP_GAUGE_NAMES.queryErrors,
    'refreshes',
    'Refreshes of the stop gauges that failed',
  );
  const abort = new AbortController();
  const intervalMs = options.intervalMs ?? STOP_GAUGE_INTERVAL_MS;

  const countOlderThan = (now: Date, ageS: number) =>
    client.workflow
      .count(stopsQuery({ phase: 'stopping', stuckForMs: ageS * 1000, now, taskQueue }))
      .then((r) => r.count);

  const refresh = async () => {
    const now = new Date();
    const running = await countOlderThan(now, 0);
    let age = 0;
    if (running > 0 && (await countOlderThan(now, AGE_MIN_S)) > 0) {
      // Invariant: a stop older than lo exists, none older than hi.
      let lo = AGE_MIN_S;
      let hi = AGE_MAX_S;
      if ((await countOlderThan(now, hi)) > 0) lo = hi;
      while (hi / lo > AGE_PRECISION) {
        const mid = Math.sqrt(lo * hi);
        if ((await countOlderThan(now, mid)) > 0) lo = mid;
        else hi = mid;
      }
      age = lo;
    }
    stopping.set(running, tags);
    oldestAge.set(Math.round(age * 10) / 10, tags);
  };

  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();
  const loop = async () => {
    try {
      await client.withAbortSignal(abort.signal, refresh);
    } catch (err) {
      if (abort.signal.aborted) return;
      try {
        errors.add(1, tags);
      } catch {
        // Metrics must never stop the worker.
      }
      options.onError?.(err);
    }
    if (abort.signal.aborted) return;
    timer = setTimeout(() => {
      running = loop();
    }, intervalMs);
  };
  running = loop();
  return {
    async stop() {
      abort.abort();
      clearTimeout(timer);
      await running;
    },
  };
}
