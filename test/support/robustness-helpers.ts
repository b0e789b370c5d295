/**
 * Shared pieces of the robustness suite (test/robustness): own dev servers,
 * in-process and out-of-process workers over the simulated cloud, and the
 * figures each part prints. Everything here runs the real Temporal dev server
 * and a real Worker; only the cloud behind the activities is simulated.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, Connection, type WorkflowExecutionDescription } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime } from '@temporalio/worker';
import type { ActivityDeps } from '../../activities';
import type { Provider } from '../../activities/provider';
import { StopflowClient } from '../../client/stopflow-client';
import { type DevServer, type DevServerOptions, startDevServer } from '../../devserver/server';
import { createStopflowWorker, type StopflowWorker, type StopflowWorkerOptions } from '../../worker/worker';

let runtimeInstalled = false;
/** Worker logs at ERROR only: injected faults and crashes are the subject here, not noise to print. */
export function installQuietRuntime(): void {
  if (runtimeInstalled) return;
  runtimeInstalled = true;
  try {
    Runtime.install({
      logger: new DefaultLogger('ERROR'),
      // Core's own warnings (e.g. heartbeats failing while the server is down) are expected here.
      telemetryOptions: { logging: { filter: { core: 'ERROR', other: 'ERROR' }, console: {} } },
    });
  } catch {
    // Already instantiated by something else in this process: keep its logger.
  }
}

/**
 * A dev server of this part's own, so heavy or destructive parts (1,000 stops,
 * a server restart) neither slow down nor show up in other test files' server.
 */
export async function startOwnServer(options: DevServerOptions = {}): Promise<DevServer> {
  installQuietRuntime();
  return startDevServer({ allowSdkDownload: process.env.CI !== 'true', logLevel: 'error', ...options });
}

export interface Clients {
  client: Client;
  stopflow: StopflowClient;
  close(): Promise<void>;
}

export async function connectClients(address: string, taskQueue: string): Promise<Clients> {
  const connection = await Connection.connect({ address });
  const client = new Client({ connection });
  return {
    client,
    stopflow: new StopflowClient({ client, taskQueue }),
    close: () => connection.close(),
  };
}

export interface InProcessWorker {
  worker: StopflowWorker;
  connection: NativeConnection;
  /** Settles when the worker stops; rejects if it dies. */
  running: Promise<void>;
  close(): Promise<void>;
}

export interface InProcessWorkerOptions {
  address: string;
  taskQueue: string;
  providers: Provider[];
  bundlePath: string;
  pollIntervalMs?: number;
  holdMs?: number;
  maxPollIntervalMs?: number;
  observe?: ActivityDeps['observe'];
  tuning?: StopflowWorkerOptions['tuning'];
}

export async function startInProcessWorker(options: InProcessWorkerOptions): Promise<InProcessWorker> {
  installQuietRuntime();
  const connection = await NativeConnection.connect({ address: options.address });
  const workerOptions: StopflowWorkerOptions = {
    connection,
    taskQueue: options.taskQueue,
    providers: options.providers,
    pollIntervalMs: options.pollIntervalMs ?? 250,
    holdMs: options.holdMs ?? 2_000,
    maxPollIntervalMs: options.maxPollIntervalMs ?? 1_000,
    workflowBundle: { codePath: options.bundlePath },
    tuning: { shutdownGraceTime: '2s', ...options.tuning },
  };
  if (options.observe) workerOptions.observe = options.observe;
  const worker = await createStopflowWorker(workerOptions);
  const running = worker.run();
  // A worker that dies is reported by the test that awaits `running`; never an unhandled rejection.
  running.catch(() => undefined);
  return {
    worker,
    connection,
    running,
    async close() {
      if (worker.getState() === 'RUNNING') worker.shutdown();
      await running.catch(() => undefined);
      await connection.close().catch(() => undefined);
    },
  };
}

/** The test-only worker entry (a separate OS process that can be SIGKILLed). */
export const WORKER_ENTRY = fileURLToPath(new URL('./robustness-worker.ts', import.meta.url));

export interface WorkerProcessOptions {
  address: string;
  taskQueue: string;
  simStatePath: string;
  bundlePath: string;
  pollIntervalMs?: number;
  holdMs?: number;
  maxPollIntervalMs?: number;
  /**
   * Makes the force-detach of volumes whose id starts with `slow-force` take
   * this long before it reaches the backend: a force in progress to crash into.
   */
  forceDelayMs?: number;
  /**
   * The heartbeat timeout stops schedule their watched waits with (STOPFLOW_WATCH_HEARTBEAT_TIMEOUT). Default 20 s,
   * not production's 15 min: a SIGKILLed worker's waits then move to another within a test's patience.
   */
  watchHeartbeatTimeoutMs?: number;
}

/** The watched waits' heartbeat timeout of the robustness workers (WorkerProcessOptions.watchHeartbeatTimeoutMs). */
export const ROBUSTNESS_WATCH_HEARTBEAT_TIMEOUT_MS = 20_000;

export interface WorkerProcess {
  kind: 'test' | 'production';
  pid: number;
  child: ChildProcess;
  /** Resolves once the worker polls its task queue. */
  ready: Promise<void>;
  /** Resolves with the exit code or signal. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  output(): string;
  kill(signal: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM (graceful shutdown), then SIGKILL if it has not exited within `graceMs`. For cleanup. */
  stop(graceMs?: number): Promise<void>;
}

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** The production worker (issue 5), when this checkout has it. */
export const PRODUCTION_WORKER_ENTRY = join(ROOT, 'worker', 'main.ts');

/**
 * Which worker program the crash test restarts with: the production worker
 * (`node bin/stopflow.mjs worker`) when worker/main.ts exists, unless
 * STOPFLOW_ROBUSTNESS_WORKER=test asks for the test-only one.
 */
export function productionWorkerAvailable(): boolean {
  return process.env.STOPFLOW_ROBUSTNESS_WORKER !== 'test' && existsSync(PRODUCTION_WORKER_ENTRY);
}

const ms = (n: number) => `${n}ms`;

/**
 * Spawns a worker process over the file-backed simulated cloud. `test`:
 * test/support/robustness-worker.ts (supports forceDelayMs); `production`:
 * `node bin/stopflow.mjs worker`, configured only through its documented
 * environment (docs/worker.md), with STOPFLOW_ and TEMPORAL_ variables of the
 * calling shell removed first so a developer's profile cannot leak in.
 */
export function spawnWorkerProcess(options: WorkerProcessOptions & { kind?: 'test' | 'production' }): WorkerProcess {
  const kind = options.kind ?? 'test';
  const base = Object.fromEntries(
    Object.entries(process.env).filter(([key]) => !key.startsWith('STOPFLOW_') && !key.startsWith('TEMPORAL_')),
  );
  const common: NodeJS.ProcessEnv = {
    ...base,
    TEMPORAL_ADDRESS: options.address,
    STOPFLOW_TASK_QUEUE: options.taskQueue,
    STOPFLOW_PROVIDERS: 'simulated',
    STOPFLOW_SIM_STATE: options.simStatePath,
    STOPFLOW_WORKFLOW_BUNDLE: options.bundlePath,
  };
  const env: NodeJS.ProcessEnv =
    kind === 'test'
      ? {
          ...common,
          STOPFLOW_POLL_INTERVAL: String(options.pollIntervalMs ?? 250),
          STOPFLOW_HOLD_MS: String(options.holdMs ?? 2_000),
          STOPFLOW_MAX_POLL_INTERVAL: String(options.maxPollIntervalMs ?? 1_000),
          STOPFLOW_FORCE_DELAY_MS: String(options.forceDelayMs ?? 0),
          STOPFLOW_WATCH_HEARTBEAT_TIMEOUT_MS: String(
            options.watchHeartbeatTimeoutMs ?? ROBUSTNESS_WATCH_HEARTBEAT_TIMEOUT_MS,
          ),
        }
      : {
          ...common,
          // The production worker takes durations, and polls at least every 1s.
          STOPFLOW_POLL_INTERVAL: ms(Math.max(1_000, options.pollIntervalMs ?? 1_000)),
          STOPFLOW_DETACH_HOLD: ms(Math.max(1_000, options.holdMs ?? 3_000)),
          STOPFLOW_MAX_POLL_INTERVAL: ms(Math.max(1_000, options.maxPollIntervalMs ?? 2_000)),
          STOPFLOW_WATCH_HEARTBEAT_TIMEOUT: ms(
            options.watchHeartbeatTimeoutMs ?? ROBUSTNESS_WATCH_HEARTBEAT_TIMEOUT_MS,
          ),
          STOPFLOW_METRICS_ADDRESS: 'off',
          STOPFLOW_SHUTDOWN_GRACE: '2s',
          STOPFLOW_LOG_LEVEL: 'info',
        };
  if (kind === 'production' && options.forceDelayMs) {
    throw new Error('forceDelayMs needs the test worker: the production worker has no such hook');
  }
  const args = kind === 'test' ? ['--import', 'tsx', WORKER_ENTRY] : [join(ROOT, 'bin', 'stopflow.mjs'), 'worker'];
  const readyText = kind === 'test' ? 'ROBUSTNESS-WORKER READY' : 'worker polling task queue';
  const child = spawn(process.execPath, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  const ready = new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      text += chunk.toString();
      if (text.includes(readyText)) resolve();
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', (chunk: Buffer) => {
      text += chunk.toString();
    });
    void exited.then(({ code, signal }) =>
      reject(new Error(`worker process exited (code ${code}, signal ${signal}) before it was ready:\n${text}`)),
    );
  });
  ready.catch(() => undefined);
  if (child.pid === undefined) throw new Error('could not spawn the worker process');
  return {
    kind,
    pid: child.pid,
    child,
    ready,
    exited,
    output: () => text,
    async kill(signal) {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
    async stop(graceMs = 10_000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Whether a process with this pid still exists (after SIGKILL it must not). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Full sizes by default (what CI runs); STOPFLOW_ROBUSTNESS_SIZE=small picks
 * the small ones for development on a busy machine.
 */
export function size(full: number, small: number): number {
  return process.env.STOPFLOW_ROBUSTNESS_SIZE === 'small' ? small : full;
}

export function uniqueTaskQueue(part: string): string {
  return `robustness-${part}-${randomUUID().slice(0, 8)}`;
}

export function uniqueId(prefix: string): string {
  return `${prefix}-${randomUUID().slice(0, 8)}`;
}

/** Runs `fn` over `items` with at most `limit` calls in flight. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>) {
  const results: R[] = new Array(items.length);
  let next = 0;
  const lanes = Array.from({ length: Math.min(limit, items.length) }, async () => {
    for (;;) {
      const index = next++;
      if (index >= items.length) return;
      results[index] = await fn(items[index] as T, index);
    }
  });
  await Promise.all(lanes);
  return results;
}

/** p50 / p95 / max of a list of milliseconds, as "p50 1.2s, p95 3.4s, max 5.6s". */
export function percentiles(ms: readonly number[]): { p50: number; p95: number; max: number; text: string } {
  const sorted = [...ms].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
  const p50 = at(0.5);
  const p95 = at(0.95);
  const max = sorted[sorted.length - 1] ?? 0;
  const s = (n: number) => `${(n / 1000).toFixed(1)}s`;
  return { p50, p95, max, text: `p50 ${s(p50)}, p95 ${s(p95)}, max ${s(max)}` };
}

/** How long a closed workflow ran, from its description. */
export function runMs(description: WorkflowExecutionDescription): number {
  const end = description.closeTime ?? new Date();
  return end.getTime() - description.startTime.getTime();
}

/** Prints one line of figures, tagged with the part, into the test output. */
export function report(part: string, line: string): void {
  console.log(`[robustness:${part}] ${line}`);
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
