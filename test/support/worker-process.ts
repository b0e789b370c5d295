/**
 * A production worker process (`node --import tsx worker/main.ts`, or another entry) for the tests that
 * run the worker as operators do: its stdout parsed as JSON log lines, its stderr kept, and the way it
 * ended. `workerEnv` gives it the run's dev server and bundle and nothing stopflow-, Temporal- or
 * tracing-related from the test run's own environment.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { inject } from 'vitest';
import { eventually } from '../helpers';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const WORKER_MAIN = ['--import', 'tsx', 'worker/main.ts'] as const;

export type LogLine = Record<string, unknown> & { msg?: string };

/** Variables of the test run a worker must not inherit: its configuration is only what a test gives it. */
const OWN_VARIABLES = /^(STOPFLOW_|TEMPORAL_|OTEL_)/;

let emptyTemporalConfig: string | undefined;

/**
 * The environment of a worker on the run's dev server, with the shared bundle, quick polls and no metrics
 * listener; `env` adds or overrides, and `exclude` drops more inherited variables (a cloud's credentials).
 */
export function workerEnv(env: Record<string, string>, exclude?: RegExp): NodeJS.ProcessEnv {
  if (!emptyTemporalConfig) {
    // An empty Temporal configuration file: no profile of the machine's user reaches the worker.
    emptyTemporalConfig = join(mkdtempSync(join(tmpdir(), 'stopflow-worker-env-')), 'temporal.toml');
    writeFileSync(emptyTemporalConfig, '');
  }
  const inherited = Object.fromEntries(
    Object.entries(process.env).filter(([key]) => !OWN_VARIABLES.test(key) && !exclude?.test(key)),
  );
  return {
    ...inherited,
    TEMPORAL_ADDRESS: inject('temporalAddress'),
    TEMPORAL_NAMESPACE: 'default',
    TEMPORAL_CONFIG_FILE: emptyTemporalConfig,
    STOPFLOW_WORKFLOW_BUNDLE: inject('workflowBundlePath'),
    STOPFLOW_POLL_INTERVAL: '1s',
    STOPFLOW_SHUTDOWN_GRACE: '2s',
    STOPFLOW_METRICS_ADDRESS: 'off',
    ...env,
  };
}

/** How a process ended and everything it printed. */
export interface Ran {
  code: number | string | null;
  lines: LogLine[];
  stdout: string;
  stderr: string;
}

/** One worker (or other node) process; its stdout is parsed as JSON log lines. */
export class WorkerProcess {
  readonly child: ChildProcess;
  readonly lines: LogLine[] = [];
  stdout = '';
  stderr = '';
  /** How it ended (exit code or signal), once it has and its output is drained. */
  exitCode: number | string | null | undefined;
  readonly exited: Promise<number | string | null>;

  constructor(env: NodeJS.ProcessEnv, args: readonly string[] = WORKER_MAIN, options: { cwd?: string } = {}) {
    this.child = spawn(process.execPath, [...args], {
      cwd: options.cwd ?? ROOT,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    createInterface({ input: this.child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
      this.stdout += `${line}\n`;
      try {
        this.lines.push(JSON.parse(line) as LogLine);
      } catch {
        this.lines.push({ raw: line });
      }
    });
    this.child.stderr?.on('data', (chunk: Buffer) => {
      this.stderr += chunk.toString();
    });
    // `close`, not `exit`: by then stdout and stderr are read to their end.
    this.exited = new Promise((resolve) =>
      this.child.on('close', (code, signal) => {
        this.exitCode = code ?? signal;
        resolve(this.exitCode);
      }),
    );
  }

  /** Waits for the end: its code and everything it printed. */
  async result(): Promise<Ran> {
    const code = await this.exited;
    return { code, lines: this.lines, stdout: this.stdout, stderr: this.stderr };
  }

  /** Everything it printed: its log lines, then its stderr. */
  get output(): string {
    return `${this.lines.map((l) => JSON.stringify(l)).join('\n')}\n${this.stderr}`;
  }

  /** The first log line that matches; fails at once, with the output, if the process ends first. */
  waitForLine(predicate: (line: LogLine) => boolean, what: string, timeoutMs = 120_000): Promise<LogLine> {
    return eventually(
      async () => {
        const found = this.lines.find(predicate);
        if (!found && this.exitCode !== undefined) {
          throw new Error(`worker exited (${this.exitCode}) before ${what}:\n${this.output}`);
        }
        return found;
      },
      what,
      timeoutMs,
    );
  }

  waitUntilPolling(): Promise<LogLine> {
    return this.waitForLine((l) => String(l.msg).startsWith('worker polling task queue'), 'the worker to poll');
  }

  /** SIGTERM (a graceful shutdown), then how it ended. */
  async stop(): Promise<number | string | null> {
    if (this.exitCode === undefined) this.child.kill('SIGTERM');
    return this.exited;
  }

  /** Ends the process if a test left it running (only processes the test started). */
  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}
