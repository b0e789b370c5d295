/** Defaults a worker runs with when nothing is configured (docs/worker.md "Tuning"), shared by the builder and the configuration. */

/**
 * Waits that may poll at once. A wait is a promise and a timer, and its checks are coalesced per
 * provider, so slots are cheap: enough that thousands of stuck volumes never make a new wait queue.
 */
export const DEFAULT_MAX_CONCURRENT_WAITS = 5_000;

/**
 * Forces that may run at once, on the forces task queue (workflow version 12). A force attempt holds its slot while
 * it sends the force and watches the volume let go (up to a minute); the provider's call budget, not this number,
 * paces what reaches the backend. As many as the urgent slots: a mass abort forces at the pace it did before it had
 * slots of its own, without taking those.
 */
export const DEFAULT_MAX_CONCURRENT_FORCES = 100;

/**
 * Workflows kept in memory between tasks. A waiting stop runs no workflow task while it waits (its
 * wait is an activity), so the cache only needs to hold the stops that are moving; replaying one
 * that was evicted costs a few milliseconds. Each cached stop costs the workflow thread about a
 * megabyte, and its heap is sized from this number (worker/workflow-heap.ts): 10,000 waiting stops
 * fit a small worker (BENCHMARKS.md, incident scale).
 */
export const DEFAULT_MAX_CACHED_WORKFLOWS = 100;

/**
 * How long one attempt of a wait keeps polling a volume before it gives its slot back and asks
 * the server to retry it later. Three polls: most detaches that finish at all finish within one
 * or two; a stuck volume then costs the worker a slot a fifth of the time, not half.
 */
export const DEFAULT_DETACH_HOLD_MS = 15_000;
