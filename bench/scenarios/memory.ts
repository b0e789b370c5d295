/**
 * 4. Worker memory and CPU per in-flight stop, at 100, 1,000 and 5,000 stops
 * waiting on a stuck volume. The worker runs alone in a child process
 * (bench/memory-worker.ts) with its simulated cloud already seeded; the
 * baseline is that same worker idle, sampled before any stop starts. Each
 * stop has 4 volumes: 3 detach at once, 1 hangs in `detaching`.
 *
 * Beside it, Temporal's floor: the same measurement of a baseline worker
 * running `waitingFloor` (3 no-op activities and one that keeps failing with
 * the same server-side retry pauses), so what is stopflow's own cost and what
 * every cached workflow costs can be told apart.
 *
 * Memory: RSS (the whole process: V8 main and workflow-thread heaps, the
 * Rust core's workflow cache, buffers) and the main thread's V8 heap, after
 * a forced GC of the main thread. The workflow thread's heap cannot be
 * collected from outside, so RSS includes some of its garbage.
 * CPU: user+system time of the worker process over a fixed window while the
 * stops wait, minus the idle worker's over the same length of window.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { WorkflowNotFoundError } from '@temporalio/client';
import type { waitingFloor } from '../baseline-workflows';
import { type BenchContext, mapLimit, median, round, sleep, startStop, waitUntil } from '../common';
import type { FromWorker, MemorySample, MemoryWorkerConfig, ToWorker } from '../memory-worker';
import type { validatingFloor } from '../validating-floor-workflows';

const WORKER_PATH = fileURLToPath(new URL('../memory-worker.ts', import.meta.url));
const VOLUMES = 4;
/** Large enough that every waiting stop stays cached: the worst case for memory. */
const MAX_CACHED_WORKFLOWS = 6_000;
/**
 * A worker sized for many waiting stops: a stop waiting on a stuck volume has
 * no workflow task to run until it wakes (a detach, an abort, its deadline),
 * so it need not stay cached; when it wakes it replays its ≈ 50 events.
 */
const BOUNDED_CACHE = 100;
/** validatingFloor only explains where stopflow's cost goes; at 5,000 it would add many minutes and no news. */
const FLOOR_ZOD_MAX_STOPS = 1_000;
const MAX_CONCURRENT_ACTIVITIES = 100;
/**
 * V8 heap limit of the worker process, which worker threads (the SDK's workflow thread) inherit.
 * Node's default (about 4 GB on 64-bit) is too small for 5,000 cached stops: the workflow thread
 * runs out of heap and the worker dies, so the benchmark raises it to measure them at all.
 */
export const MAX_HEAP_MB = 16_384;
/** Production poll and retry pause; the hold is short (see the note in BENCHMARKS.md). */
const TIMINGS = { pollIntervalMs: 5_000, holdMs: 1_000, maxPollIntervalMs: 60_000 };

type Kind = MemoryWorkerConfig['kind'];
/** What one cell measures: a workflow kind and the worker's cache size. */
type Variant = 'stopflow' | 'stopflowBounded' | 'floor' | 'floor+zod';
interface Setup {
  kind: Kind;
  maxCachedWorkflows: number;
  /** Node's --max-old-space-size for the worker, or null for Node's default (as a production worker runs). */
  maxOldSpaceSizeMb: number | null;
}
const VARIANTS: Record<Variant, Setup> = {
  stopflow: { kind: 'stopflow', maxCachedWorkflows: MAX_CACHED_WORKFLOWS, maxOldSpaceSizeMb: MAX_HEAP_MB },
  // Node's default heap: a bounded cache does not need a raised one, and a raised one lets V8 put off collecting.
  stopflowBounded: { kind: 'stopflow', maxCachedWorkflows: BOUNDED_CACHE, maxOldSpaceSizeMb: null },
  floor: { kind: 'floor', maxCachedWorkflows: MAX_CACHED_WORKFLOWS, maxOldSpaceSizeMb: MAX_HEAP_MB },
  'floor+zod': { kind: 'floor+zod', maxCachedWorkflows: MAX_CACHED_WORKFLOWS, maxOldSpaceSizeMb: MAX_HEAP_MB },
};
const LABELS: Record<Variant, string> = {
  stopflow: 'stops',
  stopflowBounded: `stops (cache ${BOUNDED_CACHE})`,
  floor: 'floor workflows',
  'floor+zod': 'floor+zod workflows',
};

export interface MemoryFigures {
  /** Bytes of RSS per waiting stop over the idle worker. */
  rssPerStop: number;
  /** Bytes of main-thread V8 heap per waiting stop. */
  heapPerStop: number;
  /** Microseconds of CPU per second per waiting stop, over the idle worker's. */
  cpuMicrosPerSecPerStop: number;
  /** CPU milliseconds per stop spent bringing it in flight (start, 3 detaches, first wait). */
  rampCpuMsPerStop: number;
  idleRssMb: number;
  loadedRssMb: number;
  rampSeconds: number;
  cachedWorkflows: number;
}

export interface MemoryRow {
  stops: number;
  rounds: number;
  /** Every waiting stop cached. Null when every round of that kind failed (see errors). */
  stopflow: MemoryFigures | null;
  /** The same stops on a worker whose cache holds BOUNDED_CACHE workflows. */
  stopflowBounded: MemoryFigures | null;
  floor: MemoryFigures | null;
  /** The floor plus validating a StopRequest with common/request.ts's zod schemas (not measured above FLOOR_ZOD_MAX_STOPS). */
  floorZod: MemoryFigures | null;
  /** Rounds that failed (e.g. the worker ran out of memory), by kind. */
  errors: string[];
}

export interface MemoryResult {
  volumesPerStop: number;
  maxOldSpaceSizeMb: number;
  maxCachedWorkflows: number;
  boundedCache: number;
  maxConcurrentActivityTaskExecutions: number;
  timings: typeof TIMINGS;
  windowMs: number;
  rows: MemoryRow[];
  target: { maxBytesPerStop: number; atStops: number };
}

class WorkerProcess {
  private nextId = 0;
  private readonly pending = new Map<number, (sample: MemorySample) => void>();
  private readonly exited: Promise<number | null>;
  readonly ready: Promise<void>;

  constructor(private readonly child: ChildProcess) {
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    this.ready = new Promise((resolve, reject) => {
      child.on('message', (message: FromWorker) => {
        if (message.type === 'ready') resolve();
        else this.pending.get(message.id)?.(message.sample);
      });
      void this.exited.then((code) => reject(new Error(`memory worker exited (code ${code}) before it was ready`)));
    });
    this.ready.catch(() => undefined);
  }

  sample(): Promise<MemorySample> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, (s) => {
        this.pending.delete(id);
        resolve(s);
      });
      void this.exited.then((code) => reject(new Error(`memory worker exited (code ${code})`)));
      this.child.send({ type: 'sample', id } satisfies ToWorker);
    });
  }

  /** Asks for a clean shutdown; kills the process (this benchmark's own child) if it does not exit in time. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    if (this.child.connected) this.child.send({ type: 'shutdown' } satisfies ToWorker);
    const timeout = sleep(30_000).then(() => 'timeout' as const);
    if ((await Promise.race([this.exited, timeout])) === 'timeout') {
      this.child.kill('SIGKILL');
      await this.exited;
    }
  }
}

function medianFigures(rounds: MemoryFigures[]): MemoryFigures | null {
  if (rounds.length === 0) return null;
  const pick = (f: (x: MemoryFigures) => number) => median(rounds.map(f));
  return {
    rssPerStop: Math.round(pick((x) => x.rssPerStop)),
    heapPerStop: Math.round(pick((x) => x.heapPerStop)),
    cpuMicrosPerSecPerStop: round(
      pick((x) => x.cpuMicrosPerSecPerStop),
      2,
    ),
    rampCpuMsPerStop: round(
      pick((x) => x.rampCpuMsPerStop),
      2,
    ),
    idleRssMb: round(pick((x) => x.idleRssMb)),
    loadedRssMb: round(pick((x) => x.loadedRssMb)),
    rampSeconds: round(pick((x) => x.rampSeconds)),
    cachedWorkflows: Math.round(pick((x) => x.cachedWorkflows)),
  };
}

export async function memory(ctx: BenchContext): Promise<MemoryResult> {
  const sizes = ctx.memorySizes ?? (ctx.quick ? [200] : [100, 1_000, 5_000]);
  // Two rounds where they are cheap; the 5,000 cells take many minutes each on two cores.
  const roundsFor = (stops: number) => (ctx.quick || stops > 1_000 ? 1 : 2);
  const windowMs = ctx.quick ? 5_000 : 15_000;
  const rows: MemoryRow[] = [];
  for (const stops of sizes) {
    const measured: Record<Variant, MemoryFigures[]> = {
      stopflow: [],
      stopflowBounded: [],
      floor: [],
      'floor+zod': [],
    };
    const errors: string[] = [];
    const rounds = roundsFor(stops);
    for (let r = 0; r < rounds; r++) {
      // Alternate the order, so no kind always runs on the fresher server.
      const variants: Variant[] = ['stopflow', 'stopflowBounded', 'floor'];
      if (stops <= FLOOR_ZOD_MAX_STOPS) variants.push('floor+zod');
      const order = r % 2 === 0 ? variants : [...variants].reverse();
      for (const variant of order) {
        let f: MemoryFigures;
        try {
          f = await measureOnce(ctx, VARIANTS[variant], stops, windowMs);
        } catch (err) {
          // One failed cell (say the worker ran out of heap at 5,000) must not lose the others.
          const message = `${variant} at ${stops}: ${err instanceof Error ? err.message : String(err)}`;
          errors.push(message);
          ctx.log(`  FAILED ${message}`);
          continue;
        }
        measured[variant].push(f);
        ctx.log(
          `  ${stops} ${LABELS[variant]}, round ${r + 1}/${rounds}: ${round(f.rssPerStop / 1024)} KB RSS each, ${round(f.heapPerStop / 1024)} KB main heap, ${round(f.cpuMicrosPerSecPerStop)} µs CPU/s waiting, ${round(f.rampCpuMsPerStop, 2)} ms CPU to start (ramp ${round(f.rampSeconds)} s, RSS ${round(f.idleRssMb)} -> ${round(f.loadedRssMb)} MB)`,
        );
      }
    }
    rows.push({
      stops,
      rounds,
      stopflow: medianFigures(measured.stopflow),
      stopflowBounded: medianFigures(measured.stopflowBounded),
      floor: medianFigures(measured.floor),
      floorZod: medianFigures(measured['floor+zod']),
      errors,
    });
  }
  return {
    volumesPerStop: VOLUMES,
    maxOldSpaceSizeMb: MAX_HEAP_MB,
    maxCachedWorkflows: MAX_CACHED_WORKFLOWS,
    boundedCache: BOUNDED_CACHE,
    maxConcurrentActivityTaskExecutions: MAX_CONCURRENT_ACTIVITIES,
    timings: TIMINGS,
    windowMs,
    rows,
    target: { maxBytesPerStop: 50 * 1024, atStops: 5_000 },
  };
}

async function measureOnce(
  ctx: BenchContext,
  { kind, maxCachedWorkflows, maxOldSpaceSizeMb }: Setup,
  stops: number,
  windowMs: number,
): Promise<MemoryFigures> {
  const instancePrefix = `mem${{ stopflow: 's', floor: 'f', 'floor+zod': 'z' }[kind]}${maxCachedWorkflows}-${stops}-${randomUUID().slice(0, 8)}`;
  const config: MemoryWorkerConfig = {
    kind,
    address: ctx.address,
    taskQueue: ctx.queue(`memory-${instancePrefix}`),
    bundlePath: {
      stopflow: ctx.stopflowBundlePath,
      floor: ctx.baselineBundlePath,
      'floor+zod': ctx.validatingBundlePath,
    }[kind],
    instancePrefix,
    instances: stops,
    volumesPerStop: VOLUMES,
    ...TIMINGS,
    maxCachedWorkflows,
    maxConcurrentActivityTaskExecutions: MAX_CONCURRENT_ACTIVITIES,
  };
  const child = new WorkerProcess(
    fork(WORKER_PATH, [], {
      execArgv: [
        '--import',
        'tsx',
        '--expose-gc',
        ...(maxOldSpaceSizeMb === null ? [] : [`--max-old-space-size=${maxOldSpaceSizeMb}`]),
      ],
      env: { ...process.env, STOPFLOW_BENCH_MEMORY: JSON.stringify(config) },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    }),
  );
  const ids = Array.from({ length: stops }, (_, i) => `${instancePrefix}-${i}`);
  const workflowId = (id: string) => (kind === 'stopflow' ? `stop-${id}` : id);
  let started = 0; // starts sent so far (terminated at the end)
  try {
    await child.ready;
    await sleep(3_000); // let start-up work (bundle load, first polls) finish before the idle baseline
    const idleA = await child.sample();
    await sleep(windowMs);
    const idleB = await child.sample();

    const volumes = [
      { volumeId: 'vol-stuck' },
      ...Array.from({ length: VOLUMES - 1 }, (_, i) => ({ volumeId: `vol-${i}` })),
    ];
    const rampStart = Date.now();
    await mapLimit(ids, 50, async (id) => {
      started++;
      if (kind === 'stopflow') {
        await startStop(ctx.client, config.taskQueue, { instanceId: id, volumes });
      } else if (kind === 'floor') {
        await ctx.client.workflow.start<typeof waitingFloor>('waitingFloor', {
          taskQueue: config.taskQueue,
          workflowId: id,
          args: [id, VOLUMES],
        });
      } else {
        await ctx.client.workflow.start<typeof validatingFloor>('validatingFloor', {
          taskQueue: config.taskQueue,
          workflowId: id,
          args: [{ instanceId: id, volumes }, VOLUMES],
        });
      }
    });
    await waitUntil(
      async () => {
        const s = await child.sample();
        return s.stuckWaiting >= stops && s.healthyDetached >= stops * (VOLUMES - 1) && s.inFlightActivations === 0;
      },
      `${stops} ${kind} workflows to reach their stuck volume`,
      Math.max(120_000, stops * 250),
    );
    const rampSeconds = (Date.now() - rampStart) / 1000;
    await sleep(3_000); // the last completions' workflow tasks
    const loadedA = await child.sample();
    await sleep(windowMs);
    const loadedB = await child.sample();

    const idleRate = (idleB.cpuMicros - idleA.cpuMicros) / (idleB.at - idleA.at); // µs per ms
    const loadedRate = (loadedB.cpuMicros - loadedA.cpuMicros) / (loadedB.at - loadedA.at);
    const rampCpu = loadedA.cpuMicros - idleB.cpuMicros - idleRate * (loadedA.at - idleB.at);
    return {
      rssPerStop: (loadedB.rss - idleB.rss) / stops,
      heapPerStop: (loadedB.heapUsed - idleB.heapUsed) / stops,
      cpuMicrosPerSecPerStop: ((loadedRate - idleRate) * 1000) / stops,
      rampCpuMsPerStop: rampCpu / 1000 / stops,
      idleRssMb: idleB.rss / 2 ** 20,
      loadedRssMb: loadedB.rss / 2 ** 20,
      rampSeconds,
      cachedWorkflows: loadedB.cachedWorkflows,
    };
  } finally {
    await child.stop();
    // Leave nothing running on the server for the next measurement: terminate these workflows.
    await mapLimit(ids.slice(0, started), 50, async (id) => {
      try {
        await ctx.client.workflow.getHandle(workflowId(id)).terminate('benchmark done');
      } catch (err) {
        if (!(err instanceof WorkflowNotFoundError)) throw err;
      }
    });
  }
}
