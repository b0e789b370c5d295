/**
 * Visibility queries over stopflow's search attributes. `stopflow list`, the
 * client's `list()` and the sweep workflow all build their queries here, so
 * "a stuck stop" means the same thing everywhere.
 */
import { WORKFLOW_TYPE } from '../common/names';
import type { StopPhase } from '../common/status';

export interface StopsQueryOptions {
  phase?: StopPhase;
  /** Only stops started more than this long ago (with phase `stopping`: stuck stops). */
  stuckForMs?: number;
  now?: Date;
}

export function stopsQuery(options: StopsQueryOptions = {}): string {
  const clauses = [`WorkflowType = '${WORKFLOW_TYPE}'`];
  if (options.phase) clauses.push(`StopPhase = '${options.phase}'`);
  if (options.stuckForMs !== undefined) {
    const before = new Date((options.now ?? new Date()).getTime() - options.stuckForMs);
    clauses.push(`StartTime < '${before.toISOString()}'`);
  }
  return clauses.join(' AND ');
}
