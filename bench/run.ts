/**
 * `npm run bench [-- --quick] [-- --only=throughput,reaction,reactionTuned,history,memory,incident,incidentTuned]`
 *
 * Starts a real Temporal dev server (in memory), runs each scenario against
 * stopflow and against a baseline in the same process and run, and writes
 * bench/results/latest.json and BENCHMARKS.md. `--only` writes its own run to
 * bench/results/partial.json and merges its scenarios into latest.json (the
 * others keep their figures, and latest.json records which run each scenario's
 * figures come from), then renders BENCHMARKS.md again; `--quick` figures never
 * replace a scenario's figures from a full run. The dev server, workers and
 * child processes are torn down also on error.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, loadavg, release, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, Connection } from '@temporalio/client';
import {
  bundleWorkflowCode,
  DefaultLogger,
  makeTelemetryFilterString,
  NativeConnection,
  Runtime,
} from '@temporalio/worker';
import { freePort } from '../devserver/ports';
import { type DevServer, startDevServer } from '../devserver/server';
import { cacheDir, TEMPORAL_CLI_VERSION } from '../devserver/temporal-cli';
import { bundleStopflowWorkflows } from '../worker/worker';
import type { BenchContext } from './common';
import { mergeResults } from './merge-results';
import { renderMarkdown } from './report';
import { type BenchResults, SCENARIOS, type ScenarioName } from './run-results';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const noop = () => undefined;
const quietLogger = { trace: noop, debug: noop, info: noop, warn: noop, error: noop, log: noop };

/** Bundles a bench workflow file on its own (never part of workflows/index.ts). */
function bundle(relativePath: string): Promise<{ code: string }> {
  return bundleWorkflowCode({
    workflowsPath: fileURLToPath(new URL(relativePath, import.meta.url)),
    logger: quietLogger,
  });
}
const log = (line: string) => process.stdout.write(`${line}\n`);

interface Args {
  /** --render: rewrite BENCHMARKS.md from bench/results/latest.json, running nothing. */
  render: boolean;
  quick: boolean;
  only: ScenarioName[] | null;
  memorySizes: number[] | null;
  incidentSizes: number[] | null;
  incidentAwsSizes: number[] | null;
}

/** A list of row sizes; an empty one (`--name=`) means no such rows, so one kind of row can run alone. */
function sizesArg(arg: string, name: string, min: number): number[] {
  const list = arg.slice(`--${name}=`.length);
  if (list === '') return [];
  const sizes = list.split(',').map((v) => (v.trim() === '' ? Number.NaN : Number(v)));
  if (sizes.some((n) => !Number.isInteger(n) || n < min || n > 20_000)) {
    throw new Error(`--${name}: a comma-separated list of whole numbers from ${min} to 20000, e.g. 100,1000`);
  }
  return sizes;
}

function parseArgs(argv: string[]): Args {
  let quick = false;
  let only: ScenarioName[] | null = null;
  let memorySizes: number[] | null = null;
  let incidentSizes: number[] | null = null;
  let incidentAwsSizes: number[] | null = null;
  let render = false;
  for (const arg of argv) {
    if (arg === '--quick') quick = true;
    else if (arg === '--render') render = true;
    else if (arg.startsWith('--memory-sizes=')) memorySizes = sizesArg(arg, 'memory-sizes', 1);
    else if (arg.startsWith('--incident-sizes=')) incidentSizes = sizesArg(arg, 'incident-sizes', 0);
    else if (arg.startsWith('--incident-aws-sizes=')) incidentAwsSizes = sizesArg(arg, 'incident-aws-sizes', 1);
    else if (arg.startsWith('--only=')) {
      const names = arg.slice('--only='.length).split(',').filter(Boolean);
      for (const name of names) {
        if (!(name in SCENARIOS))
          throw new Error(`--only: unknown scenario "${name}" (known: ${Object.keys(SCENARIOS).join(', ')})`);
      }
      only = names as ScenarioName[];
    } else if (arg === '--help' || arg === '-h') {
      log(
        `usage: npm run bench [-- --quick] [-- --only=${Object.keys(SCENARIOS).join(',')}] [-- --memory-sizes=100,1000,5000] [-- --incident-sizes=0,100,1000] [-- --incident-aws-sizes=100] [-- --render]`,
      );
      process.exit(0);
    } else {
      throw new Error(`unknown argument "${arg}" (try --help)`);
    }
  }
  return { render, quick, only, memorySizes, incidentSizes, incidentAwsSizes };
}

function packageVersion(name: string): string {
  const require = createRequire(import.meta.url);
  return (require(`${name}/package.json`) as { version: string }).version;
}

function cliVersion(path: string | undefined): string {
  if (!path) return 'downloaded by the SDK (version not known)';
  try {
    const reported = execFileSync(path, ['--version'], { encoding: 'utf8' }).trim().split('\n')[0] ?? '';
    // A `go install` build reports 0.0.0-DEV; the cache folder says which release it was built from.
    return path.startsWith(cacheDir()) ? `${reported}, built from ${TEMPORAL_CLI_VERSION}` : reported;
  } catch {
    return `unknown (${path})`;
  }
}

async function main(): Promise<number> {
  const { render, quick, only, memorySizes, incidentSizes, incidentAwsSizes } = parseArgs(process.argv.slice(2));
  if (render) {
    const saved = JSON.parse(readFileSync(join(ROOT, 'bench/results/latest.json'), 'utf8')) as BenchResults;
    writeFileSync(join(ROOT, 'BENCHMARKS.md'), renderMarkdown(saved));
    log('bench: wrote BENCHMARKS.md from bench/results/latest.json');
    return 0;
  }
  const names = only ?? (Object.keys(SCENARIOS) as ScenarioName[]);
  const startedAt = Date.now();
  const loadAtStart = loadavg().map((v) => Math.round(v * 100) / 100);
  Runtime.install({
    logger: new DefaultLogger('ERROR'),
    telemetryOptions: {
      logging: { filter: makeTelemetryFilterString({ core: 'ERROR', other: 'ERROR' }), forward: {} },
    },
  });

  let server: DevServer | undefined;
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (interrupted) process.exit(130);
    interrupted = true;
    log(`bench: ${signal}: stopping workers and the dev server (again to exit at once)…`);
    // The SDK's runtime shuts the workers down on this signal; if the scenario still hangs, force the teardown.
    setTimeout(() => void (server?.stop() ?? Promise.resolve()).finally(() => process.exit(130)), 20_000).unref();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const tmp = mkdtempSync(join(tmpdir(), 'stopflow-bench-'));
  const closers: Array<() => Promise<void>> = [];
  const results: BenchResults = {
    generatedAt: new Date().toISOString(),
    command: `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`,
    quick,
    durationSeconds: 0,
    machine: {
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model.trim() ?? 'unknown',
      memoryGb: Math.round((totalmem() / 2 ** 30) * 10) / 10,
      os: `${process.platform} ${release()}`,
      loadAverageAtStart: loadAtStart,
      loadAverageAtEnd: [],
    },
    versions: {
      node: process.version,
      temporalSdk: packageVersion('@temporalio/worker'),
      temporalCli: '',
      stopflow: (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version,
    },
    devServer: 'temporal server start-dev, in-memory SQLite, on this machine',
    scenarios: {},
    errors: {},
  };
  try {
    log(`bench: ${quick ? 'quick' : 'full'} run of ${names.join(', ')}; starting a Temporal dev server…`);
    server = await startDevServer({ logLevel: 'error', metricsPort: await freePort() });
    results.versions.temporalCli = cliVersion(server.cliPath);
    log(`bench: dev server ${server.address} (${results.versions.temporalCli.split('\n')[0]}); bundling workflows…`);
    const stopflowBundle = await bundleStopflowWorkflows();
    const baselineBundle = await bundle('./baseline-workflows.ts');
    const stopflowBundlePath = join(tmp, 'stopflow-workflows.js');
    const baselineBundlePath = join(tmp, 'baseline-workflows.js');
    const validatingBundlePath = join(tmp, 'validating-floor-workflows.js');
    writeFileSync(stopflowBundlePath, stopflowBundle.code);
    writeFileSync(baselineBundlePath, baselineBundle.code);
    if (names.includes('memory')) {
      writeFileSync(validatingBundlePath, (await bundle('./validating-floor-workflows.ts')).code);
    }

    const connection = await NativeConnection.connect({ address: server.address });
    closers.push(() => connection.close());
    const clientConnection = await Connection.connect({ address: server.address });
    closers.push(() => clientConnection.close());
    const runId = Date.now().toString(36);
    const ctx: BenchContext = {
      quick,
      memorySizes,
      incidentSizes,
      incidentAwsSizes,
      address: server.address,
      ...(server.metricsUrl ? { serverMetricsUrl: server.metricsUrl } : {}),
      client: new Client({ connection: clientConnection }),
      connection,
      stopflowBundle,
      baselineBundle,
      stopflowBundlePath,
      baselineBundlePath,
      validatingBundlePath,
      log,
      queue: (name) => `bench-${runId}-${name}`,
    };

    for (const name of names) {
      if (interrupted) break;
      const t0 = Date.now();
      log(`bench: ${name}…`);
      try {
        const result = await SCENARIOS[name](ctx);
        (results.scenarios as Record<string, unknown>)[name] = result;
        log(`bench: ${name} done in ${Math.round((Date.now() - t0) / 1000)} s`);
      } catch (err) {
        const message = err instanceof Error ? (err.stack ?? err.message) : String(err);
        results.errors[name] = message.split('\n')[0] ?? message;
        log(`bench: ${name} FAILED: ${message}`);
      }
    }
  } finally {
    for (const close of closers.reverse()) await close().catch(() => undefined);
    await server?.stop().catch((err: unknown) => log(`bench: dev server teardown: ${String(err)}`));
    rmSync(tmp, { recursive: true, force: true });
  }

  results.durationSeconds = Math.round((Date.now() - startedAt) / 1000);
  results.machine.loadAverageAtEnd = loadavg().map((v) => Math.round(v * 100) / 100);
  mkdirSync(join(ROOT, 'bench/results'), { recursive: true });
  const json = (value: BenchResults) => `${JSON.stringify(value, null, 2)}\n`;
  const latestPath = join(ROOT, 'bench/results/latest.json');
  if (interrupted) {
    // A run cut short must not replace the last complete results.
    writeFileSync(join(ROOT, 'bench/results/partial.json'), json(results));
    log('bench: wrote bench/results/partial.json (interrupted: BENCHMARKS.md left as it was)');
  } else if (only) {
    // This run's own figures, whole; then its scenarios merged into the last results, the others kept.
    writeFileSync(join(ROOT, 'bench/results/partial.json'), json(results));
    const previous = existsSync(latestPath) ? (JSON.parse(readFileSync(latestPath, 'utf8')) as BenchResults) : null;
    const { merged, kept } = mergeResults(previous, results, only);
    if (kept.length > 0) {
      log(
        `bench: --quick figures of ${kept.join(', ')} not merged (latest.json has them from a full run); they are in bench/results/partial.json`,
      );
    }
    if (merged === previous) {
      log('bench: wrote bench/results/partial.json; latest.json and BENCHMARKS.md left as they were');
    } else {
      writeFileSync(latestPath, json(merged));
      writeFileSync(join(ROOT, 'BENCHMARKS.md'), renderMarkdown(merged));
      log(
        'bench: wrote bench/results/partial.json, merged it into bench/results/latest.json and rewrote BENCHMARKS.md',
      );
    }
  } else {
    writeFileSync(latestPath, json(results));
    writeFileSync(join(ROOT, 'BENCHMARKS.md'), renderMarkdown(results));
    log('bench: wrote bench/results/latest.json and BENCHMARKS.md');
  }
  log(`bench: finished in ${results.durationSeconds} s`);
  return Object.keys(results.errors).length > 0 || interrupted ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    log(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(1);
  },
);
