/**
 * The call budget each cloud adapter keeps to when the operator sets none (STOPFLOW_CALL_BUDGET). A table of its own,
 * free of any cloud SDK, so the worker's start-up summary can say what a default is without loading the adapter.
 * linux calls no remote API and simulated is a local test double: neither has one.
 */
import type { CallBudget } from '../provider';

export const DEFAULT_CALL_BUDGETS = {
  /**
   * EC2 meters each API per account and Region with a token bucket; for non-mutating actions such as
   * DescribeVolumes the documented default is about 100 tokens refilled at 20/s, shared with every other tool
   * of the account. Half that refill rate leaves room for the rest of the account and for a second worker;
   * the burst lets a batch of stops start at once.
   */
  aws: { callsPerSecond: 10, burst: 50 },
  /**
   * Compute Engine meters API requests per project and minute, reads (get, list) and writes (detachDisk, stop)
   * in separate quotas shared with every other tool of the project. 10 calls/s (600 a minute) stays well inside
   * the default quotas and leaves room for the rest of the project and a second worker.
   */
  gcp: { callsPerSecond: 10, burst: 50 },
  /**
   * Resource Manager meters each subscription and principal with token buckets (reads refill at about 25/s,
   * writes at 10/s), and the Compute resource provider adds its own, smaller per-operation buckets for VM reads
   * and writes over 3 and 30 minutes (reported in `x-ms-ratelimit-remaining-resource`). 5/s leaves most of that
   * to the rest of the subscription; a 429 still slows every call of this provider (ThrottledProviderError).
   */
  azure: { callsPerSecond: 5, burst: 20 },
} as const satisfies Record<string, CallBudget>;

/** The budget a provider keeps to when the operator sets none; undefined for one that keeps no budget. */
export function defaultCallBudget(provider: string): CallBudget | undefined {
  return Object.hasOwn(DEFAULT_CALL_BUDGETS, provider)
    ? DEFAULT_CALL_BUDGETS[provider as keyof typeof DEFAULT_CALL_BUDGETS]
    : undefined;
}
