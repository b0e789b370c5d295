/**
 * Visibility queries over stopflow's search attributes. `stopflow list`, the
 * client's `list()` and the sweep workflow all build their queries here, so
 * "a stuck stop" means the same thing everywhere: a stop whose workflow is
 * still running, whose phase is still `stopping`, and that started more than
 * `stuckForMs` ago.
 */
import { WORKFLOW_TYPE } from '../common/names';
import type { StopPhase } from '../common/status';

export const STOP_PHASES: readonly StopPhase[] = ['stopping', 'stopped', 'failed'];

export interface StopsQueryOptions {
  phase?: StopPhase;
  /**
   * Only stops started more than this long ago whose workflow is still running
   * (with phase `stopping`: stuck stops). A terminated stop keeps
   * `StopPhase = 'stopping'` forever, so "still running" is part of "stuck".
   */
  stuckForMs?: number;
  /** Only stops started on this task queue (one deployment among several sharing a namespace). */
  taskQueue?: string;
  now?: Date;
}

/** `WorkflowType = 'stopInstance' AND StopPhase = 'stopping' AND ExecutionStatus = 'Running' AND StartTime < '…'` */
export function stopsQuery(options: StopsQueryOptions = {}): string {
  const clauses = [`WorkflowType = '${WORKFLOW_TYPE}'`];
  if (options.phase !== undefined) {
    if (!STOP_PHASES.includes(options.phase)) {
      throw new RangeError(`phase: must be one of ${STOP_PHASES.join(', ')}`);
    }
    clauses.push(`StopPhase = '${options.phase}'`);
  }
  if (options.stuckForMs !== undefined) {
    if (!Number.isFinite(options.stuckForMs) || options.stuckForMs < 0) {
      throw new RangeError('stuckForMs: must be a finite number of milliseconds, 0 or more');
    }
    const before = new Date((options.now ?? new Date()).getTime() - options.stuckForMs);
    clauses.push(`ExecutionStatus = 'Running'`, `StartTime < '${before.toISOString()}'`);
  }
  if (options.taskQueue !== undefined) clauses.push(`TaskQueue = '${quote(options.taskQueue)}'`);
  return clauses.join(' AND ');
}

/** Escapes a value for a single-quoted visibility string literal. */
function quote(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/'/g, "\\'");
}
