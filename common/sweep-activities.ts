/**
 * What the sweep workflow asks of its activities and what they find: the one interface both sides
 * compile against (activities/sweep.ts implements it, workflows/sweep.ts imports only its types).
 */

export interface StuckStop {
  instanceId: string;
  workflowId: string;
  runId: string;
  startedAt: string;
  /** How long it has been stopping, at the sweep's time. */
  stoppingForMs: number;
  /** Whether it already escalated to force-detach (StopForced), and why (StopCause), as visibility last saw it. */
  forced: boolean;
  cause?: string;
}

export interface StuckStopsFound {
  stops: StuckStop[];
  /** More stuck stops matched than `maxInstances`; the oldest-started are not listed. */
  truncated: boolean;
}

export interface LeftoverAttachment {
  instanceId: string;
  /** The latest stop of the instance, which ended `stopped`. */
  workflowId: string;
  runId: string;
  stoppedAt: string;
  /** The provider that was asked, and whether that name came from the sweep, the stop's request, or the default. */
  provider: string;
  providerFrom: 'sweep' | 'stop' | 'default';
  volumes: { volumeId: string; device?: string }[];
}

export interface LeftoverCheckError {
  instanceId: string;
  error: string;
}

export interface LeftoversFound {
  /** Instances whose latest stop ended `stopped` and whose backend was asked. */
  checked: number;
  leftovers: LeftoverAttachment[];
  errors: LeftoverCheckError[];
  /** More stopped instances matched than `maxInstances`; the least recently stopped were not checked. */
  truncated: boolean;
}

export type LeftoverStopStart =
  | { instanceId: string; workflowId: string; runId: string; started: boolean }
  | { instanceId: string; workflowId: string; error: string };

/**
 * The sweep's activities (activity type names are the method names). A type, not an interface: the
 * worker registers it as a plain record of functions.
 */
export type SweepActivities = {
  /** Stops still `stopping` (and running) that started more than `stuckAfterMs` before `now`, oldest first. */
  findStuckStops(input: {
    taskQueue: string;
    stuckAfterMs: number;
    now: string;
    limit: number;
  }): Promise<StuckStopsFound>;
  /** Instances whose latest stop ended `stopped` within `lookbackMs` and that still have volumes attached. */
  findLeftoverVolumes(input: {
    taskQueue: string;
    lookbackMs: number;
    now: string;
    limit: number;
    provider?: string;
  }): Promise<LeftoversFound>;
  /** Starts a stop for each leftover, unless one already ran since the sweep began. */
  startLeftoverStops(input: {
    taskQueue?: string;
    leftovers: LeftoverAttachment[];
    now: string;
    requestedBy: string;
  }): Promise<LeftoverStopStart[]>;
};
