/** Defaults a worker runs with when nothing is configured (docs/worker.md "Tuning"), shared by the builder and the configuration. */

/**
 * Waits that may poll at once. A wait is a promise and a timer, and its checks are coalesced per
 * provider, so slots are cheap: enough that thousands of stuck volumes never make a new wait queue.
 */
export const DEFAULT_MAX_CONCURRENT_WAITS = 5_000;

/**
 * Workflows kept in memory between tasks. A waiting stop wakes rarely (a timer, a wait's result),
 * so replaying it then is cheaper than keeping every one cached: 10,000 waiting stops fit a small
 * worker (BENCHMARKS.md, incident scale).
 */
export const DEFAULT_MAX_CACHED_WORKFLOWS = 250;
