/** StopStatus and its states (docs/contract.md "States"), returned by the `status` query and the workflow. */
export type StopPhase = 'stopping' | 'stopped' | 'failed';
export type VolumeState = 'attached' | 'detaching' | 'detached' | 'force_detaching' | 'force_detached' | 'failed';
export type EscalationCause = 'abort' | 'timeout';
export type StopCause = 'graceful' | EscalationCause;

export interface Escalation {
  cause: EscalationCause;
  at: string;
  reason?: string;
  requestedBy?: string;
}

export interface VolumeStatus {
  volumeId: string;
  state: VolumeState;
  /** Detach and force-detach requests sent to the backend, retries included. */
  attempts: number;
  lastError?: string;
  detachedAt?: string;
}

export interface StopStatus {
  instanceId: string;
  phase: StopPhase;
  startedAt: string;
  deadline: string | null;
  escalation: Escalation | null;
  volumes: VolumeStatus[];
  instanceStopped: boolean;
  /** Additive to the first contract: why the stop failed when no single volume explains it (e.g. stopInstance refused). */
  error?: string;
}

export interface AbortPayload {
  reason?: string;
  requestedBy?: string;
}

export interface SetMaxStopDurationInput {
  maxStopDuration: string | number;
}

export interface SetMaxStopDurationResult {
  deadline: string | null;
}

export const FINAL_VOLUME_STATES: readonly VolumeState[] = ['detached', 'force_detached', 'failed'];
