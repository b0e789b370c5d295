/** Shared pieces of the benchmark: settings, statistics, concurrency and start helpers. */
import type { Client, WorkflowHandle } from '@temporalio/client';
import type { NativeConnection } from '@temporalio/worker';
import { StopForcedKey, StopPhaseKey } from '../common/names';
import type { StopRequest } from '../common/request';
import type { StopStatus } from '../common/status';
import type { stopInstance } from '../workflows/stop-instance';

export interface BenchContext {
  quick: boolean;
  /** --memory-sizes: stops in flight for the memory scenario, overriding its defaults. */
  memorySizes: number[] | null;
  /** --incident-sizes: stuck stops per row of the incident scenario (simulated rows), overriding its defaults. */
  incidentSizes: number[] | null;
  /** --incident-aws-sizes: stuck stops per aws row of the incident scenario, overriding its defaults. */
  incidentAwsSizes: number[] | null;
  address: string;
  /** The dev server's Prometheus endpoint: what it was asked, per operation (bench/server-requests.ts). */
  serverMetricsUrl?: string;
  client: Client;
  connection: NativeConnection;
  /** Bundled stopInstance workflow code (workflows/index.ts). */
  stopflowBundle: { code: string };
  /** Bundled baseline workflows (bench/baseline-workflows.ts). */
  baselineBundle: { code: string };
  /** The same baseline bundle written to a file, for child processes. */
  baselineBundlePath: string;
  /** bench/validating-floor-workflows.ts bundled to a file (the memory benchmark's floor + zod). */
  validatingBundlePath: string;
  stopflowBundlePath: string;
  log(line: string): void;
  /** A task-queue name unique to this run. */
  queue(name: string): string;
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[mid] as number)
    : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

/** Nearest-rank percentile (p in 0..100): with n samples, p99 is the max once n < 100. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1] as number;
}

export function round(value: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Runs `fn` over `items` with at most `limit` calls in flight; results in input order. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>) {
  const results: R[] = new Array(items.length);
  let next = 0;
  const lane = async () => {
    for (;;) {
      const i = next++;
      if (i >= items.length) return;
      results[i] = await fn(items[i] as T, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  return results;
}

/** Polls until `fn` is truthy or the timeout passes. */
export async function waitUntil(fn: () => boolean | Promise<boolean>, what: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`bench: timed out after ${timeoutMs}ms waiting for ${what}`);
    await sleep(50);
  }
}

/**
 * Starts a stop the way StopflowClient.stop does (same workflow id, conflict
 * policy and start-time search attributes, so the workflow skips its own
 * upsert) but without the describe round-trip the client adds to tell a new
 * stop from a joined one: the benchmark measures the workflow, not that RPC.
 */
export function startStop(
  client: Client,
  taskQueue: string,
  request: StopRequest,
): Promise<WorkflowHandle<typeof stopInstance>> {
  return client.workflow.start<typeof stopInstance>('stopInstance', {
    taskQueue,
    workflowId: `stop-${request.instanceId}`,
    args: [request],
    workflowIdConflictPolicy: 'USE_EXISTING',
    typedSearchAttributes: [
      { key: StopPhaseKey, value: 'stopping' },
      { key: StopForcedKey, value: false },
    ],
  });
}

export type StopResult = StopStatus;

/** Events in a closed workflow's history. */
export async function historyLength(client: Client, workflowId: string): Promise<number> {
  const history = await client.workflow.getHandle(workflowId).fetchHistory();
  return history.events?.length ?? 0;
}

export function fmtMs(ms: number): string {
  return Number.isFinite(ms) ? `${round(ms, ms < 10 ? 1 : 0)} ms` : 'n/a';
}
