/**
 * The production shape (docs/worker.md, Deploy): `npm run build:app` compiles
 * the worker and the CLI into dist/app/ with the workflow bundle prebuilt; a
 * temporary copy of the repository gets that output, package.json and
 * package-lock.json only, and `npm ci --omit=dev`: no tsx, no TypeScript, no
 * dev dependency. There, with plain `node`, the compiled worker passes its
 * start-up checks on the run's dev server, and the `stopflow` bin (which falls
 * back to the compiled CLI without tsx) runs a worker and a stop to its end.
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { type BuiltApp, buildApp } from '../scripts/build';
import { loadWorkerConfig } from '../worker/config';
import { endOfLifeWarning } from '../worker/node-support';
import { eventually } from './helpers';
import { WorkerProcess } from './support/worker-process';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'stopflow-production-'));
const app = join(dir, 'dist', 'app');

/** Only what production has: no STOPFLOW_/TEMPORAL_ settings of the caller, no loader in NODE_OPTIONS. */
function productionEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const inherited = Object.fromEntries(
    Object.entries(process.env).filter(
      ([key]) =>
        !key.startsWith('STOPFLOW_') &&
        !key.startsWith('TEMPORAL_') &&
        !key.startsWith('VITEST') &&
        !key.startsWith('npm_') &&
        key !== 'NODE_OPTIONS',
    ),
  );
  return {
    ...inherited,
    NODE_ENV: 'production',
    TEMPORAL_ADDRESS: inject('temporalAddress'),
    TEMPORAL_NAMESPACE: 'default',
    TEMPORAL_CONFIG_FILE: join(dir, 'temporal.toml'),
    STOPFLOW_SIM_STATE: join(dir, 'sim-cloud.json'),
    STOPFLOW_METRICS_ADDRESS: 'off',
    ...extra,
  };
}

const started: WorkerProcess[] = [];
function node(args: string[], env: NodeJS.ProcessEnv = productionEnv()): WorkerProcess {
  const proc = new WorkerProcess(env, args, { cwd: dir });
  started.push(proc);
  return proc;
}

function npmCiOmitDev(): Promise<{ code: number | null; output: string; ms: number }> {
  const begun = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn('npm', ['ci', '--omit=dev', '--no-audit', '--no-fund', '--prefer-offline'], {
      cwd: dir,
      env: { ...productionEnv(), npm_config_update_notifier: 'false' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (c: Buffer) => {
      output += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => {
      output += c.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, output, ms: Date.now() - begun }));
  });
}

let built: BuiltApp;
beforeAll(async () => {
  // A profile of its own, so no ~/.config/temporalio/temporal.toml of the machine leaks in.
  writeFileSync(
    join(dir, 'temporal.toml'),
    `[profile.default]\naddress = "${inject('temporalAddress')}"\nnamespace = "default"\n`,
  );
  for (const file of ['package.json', 'package-lock.json']) copyFileSync(join(ROOT, file), join(dir, file));
  mkdirSync(join(dir, 'bin'));
  copyFileSync(join(ROOT, 'bin', 'stopflow.mjs'), join(dir, 'bin', 'stopflow.mjs'));
  // The install (mostly I/O) and the build (CPU) at the same time.
  const [install, app] = await Promise.all([npmCiOmitDev(), buildApp(join(dir, 'dist', 'app'))]);
  if (install.code !== 0) throw new Error(`npm ci --omit=dev failed (${install.code}):\n${install.output}`);
  built = app;
  console.log(`[production-build] npm ci --omit=dev ${install.ms}ms, build ${app.ms}ms`);
}, 240_000);

afterAll(() => {
  for (const proc of started) proc.kill();
  rmSync(dir, { recursive: true, force: true });
});

describe('production build: dist/app with production dependencies only', () => {
  it('builds the worker, the CLI and the workflow bundle, and installs no dev dependency', () => {
    for (const file of [built.entries.worker, built.entries.stopflow, built.workflowBundle])
      expect(existsSync(file), file).toBe(true);
    expect(built.packages).toContain('@temporalio/worker');
    for (const dev of ['tsx', 'typescript', 'esbuild', 'vitest', '@biomejs/biome'])
      expect(existsSync(join(dir, 'node_modules', dev)), `${dev} is installed`).toBe(false);
    expect(existsSync(join(dir, 'node_modules', '@temporalio', 'worker'))).toBe(true);
  });

  it('deploy/: the Dockerfile copies every source folder the build reads, and worker.env is a valid configuration', () => {
    const dockerfile = readFileSync(join(ROOT, 'deploy', 'Dockerfile'), 'utf8');
    const buildStage = dockerfile.slice(dockerfile.indexOf(' AS build'), dockerfile.indexOf('RUN npm run build:app'));
    const copied = [...buildStage.matchAll(/^COPY (\S+) /gm)].map((m) => m[1]);
    expect(built.sourceDirs.length).toBeGreaterThan(0);
    for (const source of built.sourceDirs)
      expect(copied, `deploy/Dockerfile does not copy ${source}/`).toContain(source);
    expect(dockerfile).toMatch(/^ARG NODE_IMAGE=node:24-/m);
    expect(dockerfile).toContain('ENTRYPOINT ["node", "--enable-source-maps", "dist/app/worker.js"]');

    const settings: Record<string, string> = {};
    for (const line of readFileSync(join(ROOT, 'deploy', 'worker.env'), 'utf8').split('\n')) {
      const match = /^([A-Z_]+)=(.*)$/.exec(line);
      if (match?.[1] && match[2] !== undefined) settings[match[1]] = match[2];
    }
    const config = loadWorkerConfig({ ...settings, TEMPORAL_CONFIG_FILE: join(dir, 'temporal.toml') });
    expect(config).toMatchObject({
      taskQueue: 'stopflow',
      providers: ['aws'],
      maxConcurrentActivities: 100,
      maxConcurrentWorkflowTasks: 40,
      maxCachedWorkflows: 100,
      detachHoldMs: 15_000,
      maxConcurrentWaits: 5_000,
      metricsAddress: '0.0.0.0:9464',
      shutdownGraceMs: 20_000,
    });
    expect(config.temporal.address).toBe(settings.TEMPORAL_ADDRESS);
  });

  it('the compiled worker passes its start-up checks with plain node, on the prebuilt bundle', async () => {
    const ran = await node([join(app, 'worker.js'), '--check']).result();
    const output = `${ran.stdout}\n${ran.stderr}`;
    expect(ran.code, output).toBe(0);
    const messages = ran.lines.map((l) => l.msg);
    expect(messages).toContain('stopflow worker starting');
    expect(messages).toContain('all start-up checks passed');
    expect(ran.lines.filter((l) => String(l.msg).startsWith('check ok:')).length).toBeGreaterThanOrEqual(4);
    expect(ran.lines.find((l) => String(l.msg).startsWith('workflows: the bundle prebuilt'))).toMatchObject({
      level: 'info',
      workflowBundle: built.workflowBundle,
    });
    // On an end-of-life Node (the machine's Node 20) one warning line; on Node 24 none.
    const expected = endOfLifeWarning(process.versions.node, new Date());
    const warnings = ran.lines.filter((l) => String(l.msg).includes('reached end of life'));
    if (expected) {
      expect(warnings).toEqual([
        expect.objectContaining({ level: 'warn', node: process.versions.node, msg: expected.message }),
      ]);
    } else {
      expect(warnings).toEqual([]);
    }
    expect(ran.stderr).toBe('');

    // --write-bundle from the compiled worker (no workflow sources there) writes the bundle built with the code.
    const copy = join(dir, 'bundle-copy.js');
    const written = await node([join(app, 'worker.js'), '--write-bundle', copy]).result();
    expect(written.code, written.stderr).toBe(0);
    expect(readFileSync(copy, 'utf8')).toBe(readFileSync(built.workflowBundle, 'utf8'));
  });

  it('the stopflow bin, without tsx, runs the compiled CLI: a worker and a stop to its end, then SIGTERM', async () => {
    const taskQueue = `production-${randomUUID()}`;
    const instanceId = `prod-${randomUUID().slice(0, 8)}`;
    const bin = join(dir, 'bin', 'stopflow.mjs');
    const worker = node(
      [bin, 'worker'],
      productionEnv({ STOPFLOW_TASK_QUEUE: taskQueue, STOPFLOW_POLL_INTERVAL: '1s' }),
    );
    await eventually(
      async () => {
        if (worker.child.exitCode !== null) throw new Error(`worker exited:\n${worker.stdout}\n${worker.stderr}`);
        return worker.lines.some((l) => String(l.msg).startsWith('worker polling task queue'));
      },
      'the compiled worker to poll',
      60_000,
    );
    expect(worker.lines.some((l) => String(l.msg).startsWith('workflows: the bundle prebuilt'))).toBe(true);

    const seeded = await node([
      bin,
      'sim',
      'add-instance',
      instanceId,
      '--volume',
      'vol-a',
      '--volume',
      'vol-b',
    ]).result();
    expect(seeded.code, seeded.stderr).toBe(0);
    const stop = await node([
      bin,
      'stop',
      instanceId,
      '--task-queue',
      taskQueue,
      '--wait',
      '--json',
      '--interval',
      '200ms',
    ]).result();
    expect(stop.code, `${stop.stdout}\n${stop.stderr}`).toBe(0);
    expect(stop.lines.at(-1)).toMatchObject({ running: false, status: { phase: 'stopped', instanceStopped: true } });

    worker.child.kill('SIGTERM');
    expect(await worker.exited).toBe(0);
    expect(worker.lines.map((l) => l.msg)).toContain('worker stopped: every task handed back');
  });
});
