/**
 * What bench/scenarios/incident.ts and its worker process (bench/incident-worker.ts)
 * share: the worker's configuration, its IPC messages, and the ids of the
 * instances and volumes of one row. A module of its own, so the benchmark
 * never loads the worker's entry point.
 */
import type { CallBudget } from '../activities/provider';

export interface IncidentWorkerConfig {
  provider: 'simulated' | 'aws';
  address: string;
  taskQueue: string;
  bundlePath: string;
  /** Instance ids are `<prefix>-s<i>` (stuck), `<prefix>-h<i>` (healthy), `<prefix>-a<i>` (abort probes). */
  prefix: string;
  stuck: number;
  healthy: number;
  probes: number;
  /** simulated: the budget declared on the provider. */
  budget?: CallBudget;
  /** aws: the local EC2 server (already seeded by the benchmark). */
  ec2Endpoint?: string;
  /**
   * Temporal's floor inside this worker's process: a baseline worker (this bundle, `signalFloor`) on this
   * queue, beside the stopflow worker, so that it shares the process's load. Absent: none.
   */
  floor?: { taskQueue: string; bundlePath: string };
}

export interface IncidentSample {
  at: number;
  rss: number;
  heapUsed: number;
  /** User + system CPU of the whole process, microseconds. */
  cpuMicros: number;
  /** Stuck stops whose detach request the backend has answered (they then wait). */
  stuckRequested: number;
  /** Stuck volumes checked at least once by a wait. */
  stuckChecked: number;
  /** Volume states read (a batch of 100 counts 100). */
  volumesChecked: number;
  /** simulated: the provider's own `calls` map, by operation. aws: empty (the EC2 server counts). */
  backendCalls: Record<string, number>;
  cachedWorkflows: number;
  inFlightActivations: number;
  urgentActivities: number;
  waitActivities: number;
  /** Waits the worker's watch list answers for (absent from runs before version 8). */
  watchedWaits?: number;
  /** The worker's main-thread event-loop delay since the previous sample, ms (absent from older runs). */
  eventLoopDelay?: { p50Ms: number; p99Ms: number; maxMs: number };
  /**
   * The worker's main-thread garbage collections since the previous sample (absent from older runs): how many,
   * their summed and longest pause, ms, how many of 5 ms or more, and each of those (up to 500) with its moment
   * (epoch ms, from the worker's clock) and kind.
   */
  gc?: {
    count: number;
    totalMs: number;
    maxMs: number;
    longCount: number;
    long: Array<{ at: number; ms: number; kind: 'minor' | 'major' | 'incremental' | 'weakcb' | 'other' }>;
  };
}

export type ToIncidentWorker = { type: 'sample'; id: number } | { type: 'shutdown' };
export type FromIncidentWorker =
  | { type: 'ready' }
  | { type: 'sample'; id: number; sample: IncidentSample }
  | { type: 'event'; kind: IncidentEventKind; instanceId: string; at: number };

/**
 * Moments the worker reports: a detach request reaching the backend; a probe's force-detach activity
 * starting (what Temporal's own floor, signal → activity, is comparable to); its force reaching the backend;
 * the in-process floor's `mark` activity (keyed by its mark id in place of an instance id).
 */
export type IncidentEventKind = 'detach' | 'forceStarted' | 'force' | 'floorMark';

export const stuckId = (prefix: string, i: number) => `${prefix}-s${i}`;
export const healthyId = (prefix: string, i: number) => `${prefix}-h${i}`;
/** The healthy stop each row runs before its idle sample (seeded beside the healthy ones). */
export const warmUpId = (prefix: string) => `${prefix}-w`;
/** Every abort probe's instance id starts with this. */
export const probePrefix = (prefix: string) => `${prefix}-a`;
export const probeId = (prefix: string, i: number) => `${probePrefix(prefix)}${i}`;
/** Volume ids are unique across instances (EC2's are). */
export const stuckVolume = (instanceId: string) => `vol-${instanceId}-stuck`;
export const healthyVolumes = (instanceId: string) => [`vol-${instanceId}-0`, `vol-${instanceId}-1`];
