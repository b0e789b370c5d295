/**
 * The alert rules of deploy/prometheus/: promtool's own checks and unit tests,
 * and one end-to-end run where a real Prometheus (Debian's `prometheus`
 * package; .ci/run installs it) scrapes a real worker process on the run's dev
 * server, and the stuck-stop alert fires for a stop held by a stuck volume,
 * then clears after the abort. The end-to-end run uses a copy of the rules with
 * a short stuck threshold; everything else is the shipped file.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Client } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { FileSimStore, SimulatedProvider } from '../activities/providers/simulated';
import { StopflowClient } from '../client/stopflow-client';
import { freePort } from '../devserver/ports';
import { connectClient, eventually } from './helpers';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const RULES = join(ROOT, 'deploy/prometheus/stopflow.rules.yml');
const RULE_TESTS = join(ROOT, 'deploy/prometheus/stopflow.rules.test.yml');
const DOCS = join(ROOT, 'docs/worker.md');
const MISSING =
  'is not installed: install Debian\'s "prometheus" package (apt-get install -y prometheus), as .ci/run does';

interface Run {
  code: number;
  output: string;
}

/** Runs a command to its end (at most 60 s); never rejects, the exit code says how it went. */
function run(command: string, args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(command, args, { cwd: ROOT, timeout: 60_000 }, (err, stdout, stderr) => {
      const output = `${stdout}${stderr}`;
      if (err && 'code' in err && err.code === 'ENOENT') resolve({ code: -1, output: `${command} ${MISSING}` });
      else resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, output });
    });
  });
}

function alertNames(rules: string): string[] {
  return [...rules.matchAll(/^\s*- alert: (\w+)$/gm)].map((m) => m[1] ?? '');
}

describe('alert rules: promtool', () => {
  it('promtool check rules: the rules file is valid', async () => {
    const result = await run('promtool', ['check', 'rules', RULES]);
    expect(result.output).toContain('SUCCESS');
    expect(result.code, result.output).toBe(0);
  });

  it('promtool test rules: each alert fires, and stays quiet, as its unit tests say', async () => {
    const result = await run('promtool', ['test', 'rules', RULE_TESTS]);
    expect(result.code, result.output).toBe(0);
    expect(result.output).toContain('SUCCESS');
  });

  it('every alert has unit tests and a section in docs/worker.md', () => {
    const names = alertNames(readFileSync(RULES, 'utf8'));
    expect(names).toContain('StopflowStopStuck');
    expect(names.length).toBeGreaterThanOrEqual(5);
    const tests = readFileSync(RULE_TESTS, 'utf8');
    const docs = readFileSync(DOCS, 'utf8');
    for (const name of names) {
      expect(tests, `unit tests of ${name}`).toContain(`alertname: ${name}\n`);
      expect(docs, `docs/worker.md section of ${name}`).toContain(`#### ${name}\n`);
    }
  });
});

type LogLine = Record<string, unknown> & { msg?: string };

/** A child process whose output is kept for failure messages; stopped with SIGTERM, then SIGKILL after 10 s. */
class Child {
  readonly child: ChildProcess;
  readonly lines: LogLine[] = [];
  readonly exited: Promise<number | string | null>;

  constructor(
    readonly name: string,
    command: string,
    args: string[],
    env: NodeJS.ProcessEnv,
  ) {
    this.child = spawn(command, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => resolve(code ?? signal));
      this.child.on('error', (err) => {
        this.lines.push({
          msg: `${name}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? MISSING : err.message}`,
        });
        resolve(-1);
      });
    });
    for (const stream of [this.child.stdout, this.child.stderr]) {
      if (!stream) continue;
      createInterface({ input: stream }).on('line', (line) => {
        try {
          this.lines.push(JSON.parse(line) as LogLine);
        } catch {
          this.lines.push({ msg: line });
        }
      });
    }
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null && this.child.pid !== undefined;
  }

  /** The last lines of its output, for a failure message. */
  tail(n = 30): string {
    return `${this.name}:\n${this.lines
      .slice(-n)
      .map((l) => JSON.stringify(l))
      .join('\n')}`;
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(timer);
  }
}

interface PromAlert {
  labels: Record<string, string>;
  annotations: Record<string, string>;
  state: 'pending' | 'firing';
  value: string;
}

describe('alert rules end to end: Prometheus scrapes a worker process', () => {
  const dir = mkdtempSync(join(tmpdir(), 'stopflow-alerts-'));
  const taskQueue = `alerts-${randomUUID()}`;
  const simState = join(dir, 'sim-cloud.json');
  const sim = new SimulatedProvider(new FileSimStore(simState));
  const children: Child[] = [];
  let client: Client;
  let stopflow: StopflowClient;
  let worker: Child;
  let prometheus: Child;
  let promUrl: string;

  const api = async <T>(path: string): Promise<T> => {
    const response = await fetch(`${promUrl}${path}`, { signal: AbortSignal.timeout(5_000) });
    const body = (await response.json()) as { status: string; data: T; error?: string };
    if (body.status !== 'success') throw new Error(`Prometheus ${path}: ${body.error ?? response.status}`);
    return body.data;
  };
  /** The value of a PromQL query that returns at most one sample, or undefined when it returns none. */
  const query = async (promql: string): Promise<number | undefined> => {
    const data = await api<{ result: { value: [number, string] }[] }>(
      `/api/v1/query?query=${encodeURIComponent(promql)}`,
    );
    if (data.result.length > 1) throw new Error(`${promql}: ${data.result.length} samples`);
    const sample = data.result[0];
    return sample ? Number(sample.value[1]) : undefined;
  };
  const stuckAlert = async (): Promise<PromAlert | undefined> => {
    const { alerts } = await api<{ alerts: PromAlert[] }>('/api/v1/alerts');
    return alerts.find((a) => a.labels.alertname === 'StopflowStopStuck' && a.labels.taskQueue === taskQueue);
  };
  const context = () => `${prometheus.tail(15)}\n${worker.tail(15)}`;

  beforeAll(async () => {
    client = await connectClient();
    stopflow = new StopflowClient({ client, taskQueue });
    const [metricsPort, promPort] = [await freePort(), await freePort()];

    // The shipped rules with a short stuck threshold: 5 s past the start for 3 s instead of 15m for 5m.
    const shipped = readFileSync(RULES, 'utf8');
    const stuckRule = /(- alert: StopflowStopStuck\n\s+expr: [^\n]*\)) > 900\n(\s+)for: 5m\n/;
    expect(shipped).toMatch(stuckRule);
    const rules = join(dir, 'stopflow.rules.yml');
    writeFileSync(rules, shipped.replace(stuckRule, '$1 > 5\n$2for: 3s\n'));
    const config = join(dir, 'prometheus.yml');
    writeFileSync(
      config,
      [
        'global: { scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s }',
        `rule_files: [${JSON.stringify(rules)}]`,
        'scrape_configs:',
        '  - job_name: stopflow-worker',
        `    static_configs: [{ targets: ["127.0.0.1:${metricsPort}"] }]`,
        '',
      ].join('\n'),
    );
    const temporalConfig = join(dir, 'temporal.toml');
    writeFileSync(temporalConfig, '');

    prometheus = new Child(
      'prometheus',
      'prometheus',
      [
        `--config.file=${config}`,
        `--storage.tsdb.path=${join(dir, 'data')}`,
        `--web.listen-address=127.0.0.1:${promPort}`,
        '--log.level=warn',
      ],
      process.env,
    );
    children.push(prometheus);
    promUrl = `http://127.0.0.1:${promPort}`;

    const inherited = Object.fromEntries(
      Object.entries(process.env).filter(([key]) => !key.startsWith('STOPFLOW_') && !key.startsWith('TEMPORAL_')),
    );
    worker = new Child('worker', process.execPath, ['--import', 'tsx', 'worker/main.ts'], {
      ...inherited,
      TEMPORAL_ADDRESS: inject('temporalAddress'),
      TEMPORAL_NAMESPACE: 'default',
      TEMPORAL_CONFIG_FILE: temporalConfig,
      STOPFLOW_WORKFLOW_BUNDLE: inject('workflowBundlePath'),
      STOPFLOW_TASK_QUEUE: taskQueue,
      STOPFLOW_SIM_STATE: simState,
      STOPFLOW_POLL_INTERVAL: '1s',
      STOPFLOW_SHUTDOWN_GRACE: '2s',
      STOPFLOW_LOG_LEVEL: 'info',
      STOPFLOW_METRICS_ADDRESS: `127.0.0.1:${metricsPort}`,
    });
    children.push(worker);

    await eventually(
      async () => {
        if (!prometheus.running) throw new Error(`prometheus exited\n${prometheus.tail()}`);
        return (await fetch(`${promUrl}/-/ready`)).ok;
      },
      'Prometheus to be ready',
      30_000,
    );
    await eventually(
      async () => {
        if (!worker.running) throw new Error(`the worker exited\n${worker.tail()}`);
        return worker.lines.some((l) => String(l.msg).startsWith('worker polling task queue'));
      },
      'the worker to poll',
      60_000,
    );
  });

  afterAll(async () => {
    await Promise.all(children.map((c) => c.stop()));
    await client?.connection.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('StopflowStopStuck fires for a stop held by a stuck volume, and clears after the abort', async () => {
    // Prometheus scrapes the worker, and the worker's first visibility refresh says no stop is stopping.
    await eventually(
      async () => (await query(`up{job="stopflow-worker"}`)) === 1,
      `Prometheus to scrape the worker\n${context()}`,
      20_000,
    );
    await eventually(
      async () => (await query(`stopflow:stops_stopping:max{taskQueue="${taskQueue}"}`)) === 0,
      `the stop gauges in Prometheus\n${context()}`,
      20_000,
    );
    expect(await stuckAlert()).toBeUndefined();

    const instanceId = `alerts-${randomUUID().slice(0, 8)}`;
    await sim.addInstance(instanceId, [{ volumeId: 'vol-stuck', behavior: { hang: true } }]);
    await stopflow.stop({ instanceId, requestedBy: 'alerts test' });

    // The gauges refresh every 15 s: within two refreshes the stop is older than the 5 s threshold, then 3 s pending.
    const firing = await eventually(
      async () => {
        const alert = await stuckAlert();
        return alert?.state === 'firing' ? alert : undefined;
      },
      `StopflowStopStuck to fire\n${context()}`,
      45_000,
    );
    expect(firing.labels).toMatchObject({ severity: 'critical', namespace: 'default', taskQueue });
    expect(Number(firing.value)).toBeGreaterThan(5);
    expect(firing.annotations.summary).toContain(`A stop on ${taskQueue} has been stopping for`);
    expect(await query(`stopflow:stops_stopping:max{taskQueue="${taskQueue}"}`)).toBe(1);
    // The stop is still held by its volume.
    expect((await stopflow.progress(instanceId)).status.phase).toBe('stopping');

    await stopflow.abort(instanceId, { reason: 'alerts test', requestedBy: 'alerts test' });
    expect(await stopflow.result(instanceId)).toMatchObject({
      phase: 'stopped',
      escalation: { cause: 'abort' },
      volumes: [{ volumeId: 'vol-stuck', state: 'force_detached' }],
    });
    // Cleared at the next refresh: no alert, pending or firing, and the gauges say so (the recording rules are
    // evaluated in their own group, up to an evaluation apart from the alert's).
    await eventually(
      async () =>
        (await stuckAlert()) === undefined &&
        (await query(`stopflow:oldest_stop_age_seconds:max{taskQueue="${taskQueue}"}`)) === 0 &&
        (await query(`stopflow:stops_stopping:max{taskQueue="${taskQueue}"}`)) === 0,
      `StopflowStopStuck to clear\n${context()}`,
      30_000,
    );
    await eventually(
      async () => (await query(`sum(stopflow_force_detaches{taskQueue="${taskQueue}",cause="abort"})`)) === 1,
      `the force-detach in Prometheus\n${context()}`,
      10_000,
    );
    // One force-detach is no incident, and the worker is up.
    const { alerts } = await api<{ alerts: PromAlert[] }>('/api/v1/alerts');
    expect(alerts.filter((a) => a.labels.taskQueue === taskQueue || a.labels.job === 'stopflow-worker')).toEqual([]);
    expect(alerts.map((a) => a.labels.alertname)).not.toContain('StopflowWorkerMissing');
  });
});
