/**
 * A stop's state as the workflow holds it, and the pure questions asked of it.
 * The workflow (stop-instance.ts) changes it; the reporter (stop-report.ts)
 * words it; the `status` query snapshots it.
 */
import type { NormalizedStopRequest } from '../common/request';
import {
  type Escalation,
  FINAL_VOLUME_STATES,
  type StopPhase,
  type StopStatus,
  type VolumeState,
  type VolumeStatus,
} from '../common/status';
import type { Deadline } from './deadline';

/** Why a stop stopped waiting: escalation (abort or timeout: force what is left) or cancel (force nothing). */
export interface Cancellation {
  at: string;
}

export interface StopState {
  readonly request: NormalizedStopRequest;
  readonly startedAtMs: number;
  readonly deadline: Deadline;
  phase: StopPhase;
  escalation: Escalation | null;
  cancelled: Cancellation | null;
  /** `null` until the volumes are known (listed, or given by the request). */
  volumes: VolumeStatus[] | null;
  instanceStopped: boolean;
  forced: boolean;
  error?: string;
  /**
   * Graceful work cancelled on escalation or cancel, still acknowledging: awaited (bounded) before the stop
   * ends, never on the way to force or stop. Only waits scheduled before version 8 take any time here; a
   * watched wait settles when cancelled, and its history may end with just its cancel request.
   */
  cancelledWork: Promise<unknown>[];
  /** Resolves when the stop is escalated or cancelled; made by the first volume that waits on it. */
  interruption: Promise<'interrupted'> | null;
  /** Which later patches this run follows, decided once at its start (stop-instance.ts). */
  features: {
    volumeOwnership: boolean;
    completionEvents: boolean;
    sharedInterruption: boolean;
    askWorkerOnce: boolean;
  };
  /** Whether the worker delivers completion events, once askWorker has answered; `null`: asked at the end. */
  completionEventsConfigured: boolean | null;
}

/**
 * The legal moves of one volume (docs/contract.md "States"). `attached` again is
 * how a volume found attached by the final check re-enters the path.
 */
const TRANSITIONS: Record<VolumeState, readonly VolumeState[]> = {
  attached: ['detaching', 'force_detaching', 'failed'],
  detaching: ['detached', 'force_detaching', 'failed', 'attached'],
  force_detaching: ['force_detached', 'detached', 'failed'],
  detached: ['attached'],
  force_detached: ['attached'],
  failed: [],
};

export function canMove(from: VolumeState, to: VolumeState): boolean {
  return from === to || TRANSITIONS[from].includes(to);
}

export function interrupted(state: StopState): boolean {
  return state.escalation !== null || state.cancelled !== null;
}

export function allVolumesSettled(state: StopState): boolean {
  return state.volumes?.every((v) => FINAL_VOLUME_STATES.includes(v.state)) ?? false;
}

export function iso(ms: number | null): string | null {
  return ms === null ? null : new Date(ms).toISOString();
}

export function snapshot(state: StopState): StopStatus {
  const status: StopStatus = {
    instanceId: state.request.instanceId,
    phase: state.phase,
    startedAt: new Date(state.startedAtMs).toISOString(),
    deadline: iso(state.deadline.atMs),
    escalation: state.escalation ? { ...state.escalation } : null,
    volumes: (state.volumes ?? []).map((v) => ({ ...v })),
    instanceStopped: state.instanceStopped,
  };
  if (state.error !== undefined) status.error = state.error;
  return status;
}
