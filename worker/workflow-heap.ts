/**
 * The workflow thread's heap limit. The SDK runs workflows in a worker thread
 * whose V8 heap, left to Node's defaults, may grow to several gigabytes: every
 * workflow task of a stop that is not cached replays it in a fresh sandbox
 * (its modules evaluated again), and while thousands of stops start at once
 * that garbage comes faster than V8 sees a reason to collect it. Measured while
 * 3,000 stuck stops started on one worker: 1.2 GB more RSS and still growing
 * with Node's default (and a cache of 250), a plateau 260 MB above idle with a
 * cache of 100 and a 384 MB limit (BENCHMARKS.md, "Incident scale", has the
 * figures of the limit as shipped).
 *
 * What the thread must keep alive is bounded by the workflow cache, so the
 * limit follows from it: a base for the SDK and the bundle, plus room per
 * cached stop. The SDK creates the thread without resource limits, so the
 * only way to give it one is V8's flag, set just before the thread starts (a
 * running isolate keeps the limit it started with: the main thread is not
 * affected). An operator who sets `--max-old-space-size` (command line or
 * NODE_OPTIONS) has decided, and is left alone.
 */
import { setFlagsFromString } from 'node:v8';

/** The SDK, the bundle's code and the thread's own structures, with room to collect. */
const BASE_MB = 200;
/**
 * A cached stop of a few volumes keeps about 0.7 MB alive (BENCHMARKS.md, "Worker memory"); this leaves room
 * for garbage and for stops of dozens of volumes. A stop of hundreds keeps several MB alive (every pending
 * promise of workflow code holds a stack trace for the SDK's stack-trace query): a worker that stops such
 * instances by the hundred at once needs a smaller cache or its own --max-old-space-size (docs/worker.md).
 */
const PER_CACHED_WORKFLOW_MB = 2;

export function workflowHeapLimitMb(maxCachedWorkflows: number): number {
  return Math.ceil(BASE_MB + PER_CACHED_WORKFLOW_MB * Math.max(0, maxCachedWorkflows));
}

/** Whether the process was told a heap size (then the workflow thread inherits that one). */
export function heapSizeChosenByOperator(
  execArgv: readonly string[] = process.execArgv,
  nodeOptions = process.env.NODE_OPTIONS ?? '',
): boolean {
  return [...execArgv, ...nodeOptions.split(/\s+/)].some((arg) => /^--max[-_]old[-_]space[-_]size(=|$)/.test(arg));
}

/**
 * Limits the heap of the workflow thread the SDK starts next (call just before Worker.create).
 * Returns the limit set, in MB, or undefined when the operator chose one.
 */
export function limitNextWorkflowThreadHeap(maxCachedWorkflows: number): number | undefined {
  if (heapSizeChosenByOperator()) return undefined;
  const mb = workflowHeapLimitMb(maxCachedWorkflows);
  setFlagsFromString(`--max-old-space-size=${mb}`);
  return mb;
}
