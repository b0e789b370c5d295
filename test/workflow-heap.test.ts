/**
 * The workflow thread's heap limit (worker/workflow-heap.ts): sized from the cache, set only for
 * threads started after it, never over an operator's own choice.
 */
import { getHeapStatistics } from 'node:v8';
import { Worker as Thread } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { DEFAULT_MAX_CACHED_WORKFLOWS } from '../worker/defaults';
import {
  heapGrowthChosenByOperator,
  heapSizeChosenByOperator,
  limitNextWorkflowThreadHeap,
  WORKFLOW_SEMI_SPACE_MB,
  workflowHeapLimitMb,
  youngGenerationChosenByOperator,
} from '../worker/workflow-heap';

const MB = 2 ** 20;

/** The heap limit a thread started now gets, in MB. */
function nextThreadHeapLimitMb(): Promise<number> {
  const thread = new Thread(
    "require('node:worker_threads').parentPort.postMessage(require('node:v8').getHeapStatistics().heap_size_limit)",
    { eval: true },
  );
  return new Promise((resolve, reject) => {
    thread.once('message', (bytes: number) => resolve(bytes / MB));
    thread.once('error', reject);
  });
}

describe('the workflow thread heap limit', () => {
  it('grows with the cache: room for the SDK and for each cached stop', () => {
    expect(workflowHeapLimitMb(DEFAULT_MAX_CACHED_WORKFLOWS)).toBe(400);
    expect(workflowHeapLimitMb(0)).toBe(200);
    expect(workflowHeapLimitMb(5_000)).toBe(10_200);
    expect(workflowHeapLimitMb(1_000)).toBeGreaterThan(workflowHeapLimitMb(100));
  });

  it("an operator's --max-old-space-size, on the command line or in NODE_OPTIONS, is theirs", () => {
    expect(heapSizeChosenByOperator(['--max-old-space-size=2048'], '')).toBe(true);
    expect(heapSizeChosenByOperator([], '--enable-source-maps --max_old_space_size=1024')).toBe(true);
    expect(heapSizeChosenByOperator(['--import', 'tsx'], '--enable-source-maps')).toBe(false);
    expect(heapSizeChosenByOperator([], '')).toBe(false);
  });

  it("an operator's --heap-growing-percent (command line only: Node refuses it in NODE_OPTIONS) is theirs too", () => {
    expect(heapGrowthChosenByOperator(['--heap-growing-percent=50'])).toBe(true);
    expect(heapGrowthChosenByOperator(['--heap_growing_percent=10', '--import', 'tsx'])).toBe(true);
    expect(heapGrowthChosenByOperator(['--max-old-space-size=512'])).toBe(false);
  });

  it("an operator's --max-semi-space-size, on the command line or in NODE_OPTIONS, is theirs", () => {
    expect(youngGenerationChosenByOperator(['--max-semi-space-size=32'], '')).toBe(true);
    expect(youngGenerationChosenByOperator([], '--max_semi_space_size=8')).toBe(true);
    expect(youngGenerationChosenByOperator(['--max-old-space-size=512'], '--enable-source-maps')).toBe(false);
  });

  it('limits threads started after it, and leaves the running main thread as it was', async () => {
    // This test's process was started without a heap size (vitest's forks), so the worker sets one.
    expect(heapSizeChosenByOperator()).toBe(false);
    const mainBefore = getHeapStatistics().heap_size_limit;
    const before = await nextThreadHeapLimitMb();
    const limit = limitNextWorkflowThreadHeap(25);
    expect(limit).toBe(250);
    const after = await nextThreadHeapLimitMb();
    // The limit V8 reports adds the young generation to the old space (tens of MB on Node 20, more on Node 24);
    // Node's own default is gigabytes.
    expect(after).toBeGreaterThanOrEqual(250);
    expect(after).toBeLessThan(1_024);
    // What is left is the young generation, three semi-spaces' worth: 16 MB each, Node 20's default, where Node 24
    // gives 64 MB each (a thread's limit of 442 MB). On Node 20 this holds either way; CI runs Node 24.
    expect(after - 250).toBeLessThanOrEqual(3 * WORKFLOW_SEMI_SPACE_MB + 16);
    expect(after).toBeLessThan(before);
    expect(getHeapStatistics().heap_size_limit).toBe(mainBefore);
  });
});
