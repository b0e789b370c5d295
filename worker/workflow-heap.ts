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
 *
 * The cap bounds the heap; what keeps it near what is alive is how V8 grows it.
 * After a full collection V8 lets a heap grow by a factor it picks itself (up to
 * 4x) and, under the allocation rate of replays, it picks high: the heap climbs
 * to the cap and stays there. Measured with 3,000 stuck stops on one worker (the
 * default cache, RSS without a forced collection): 262 MB above idle with V8's
 * own factor, and the same with a cap of 220 MB; 100 MB with a 25% growth, at no
 * CPU cost we could see (300 replays of a stop, 10.3 s of CPU either way). The
 * flag is process-wide and read as the heap grows, so the main thread, where the
 * waits' garbage lands, is held to it too.
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

/** How far past what is alive a heap may grow after a full collection, in percent (see above). */
export const HEAP_GROWING_PERCENT = 25;

/**
 * The workflow thread's young generation: the size of each of its two semi-spaces, in MB, Node 20's default. On
 * Node 24, V8 gives a thread 64 MB semi-spaces (measured with 250 MB, 400 MB and 4 GB heap limits; 16 MB on Node 20),
 * and under the allocation of replays the thread's new space grows to them. Set process-wide, as the heap limit is:
 * every thread started after it gets it too; the running main thread keeps its own.
 */
export const WORKFLOW_SEMI_SPACE_MB = 16;

/** Whether the process was told a heap size (then the workflow thread inherits that one). */
export function heapSizeChosenByOperator(
  execArgv: readonly string[] = process.execArgv,
  nodeOptions = process.env.NODE_OPTIONS ?? '',
): boolean {
  return chosenByOperator(/^--max[-_]old[-_]space[-_]size(=|$)/, execArgv, nodeOptions);
}

/** Whether the process was told its young generation's size (then the workflow thread inherits it). */
export function youngGenerationChosenByOperator(
  execArgv: readonly string[] = process.execArgv,
  nodeOptions = process.env.NODE_OPTIONS ?? '',
): boolean {
  return chosenByOperator(/^--max[-_]semi[-_]space[-_]size(=|$)/, execArgv, nodeOptions);
}

/** Whether the process was told how its heaps grow (on the command line: Node refuses it in NODE_OPTIONS). */
export function heapGrowthChosenByOperator(execArgv: readonly string[] = process.execArgv): boolean {
  return chosenByOperator(/^--heap[-_]growing[-_]percent(=|$)/, execArgv, '');
}

function chosenByOperator(flag: RegExp, execArgv: readonly string[], nodeOptions: string): boolean {
  return [...execArgv, ...nodeOptions.split(/\s+/)].some((arg) => flag.test(arg));
}

/**
 * Limits the heap of the workflow thread the SDK starts next (call just before Worker.create).
 * Returns the limit set, in MB, or undefined when the operator chose one.
 */
export function limitNextWorkflowThreadHeap(maxCachedWorkflows: number): number | undefined {
  if (!heapGrowthChosenByOperator()) setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
  if (!youngGenerationChosenByOperator()) setFlagsFromString(`--max-semi-space-size=${WORKFLOW_SEMI_SPACE_MB}`);
  if (heapSizeChosenByOperator()) return undefined;
  const mb = workflowHeapLimitMb(maxCachedWorkflows);
  setFlagsFromString(`--max-old-space-size=${mb}`);
  return mb;
}
