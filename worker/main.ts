/**
 * The production worker: `npm run worker` and `stopflow worker` (same code).
 *
 *   configuration (environment, zod) ─► logs + metrics runtime ─► start-up checks ─► poll
 *                                                                  SIGTERM/SIGINT ─► graceful shutdown, exit 0
 *
 * Exit codes: 0 stopped cleanly (or checks passed with --check), 1 the worker
 * failed or its shutdown overran the grace, 2 invalid configuration, 3 a
 * start-up check failed. docs/worker.md describes everything configurable.
 */
import { copyFileSync, existsSync, realpathSync, writeFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { Client } from '@temporalio/client';
import { GracefulShutdownPeriodExpiredError, Runtime } from '@temporalio/worker';
import { Backends, type ProviderEvent } from '../activities';
import { buildProviders } from '../activities/providers';
import { createSweepActivities } from '../activities/sweep';
import { tracingRequested } from '../client/tracing';
import { formatDuration } from '../common/duration';
import { runStartupChecks } from './checks';
import {
  ConfigError,
  describeWorkerConfig,
  linuxProviderSettings,
  loadWorkerConfig,
  type WorkerConfig,
  workflowStackTracesRequested,
} from './config';
import {
  type AppLogger,
  activityLogContext,
  coreLogFilter,
  createLogger,
  logProviderEvent,
  PinoSdkLogger,
} from './logging';
import { prometheusExporter, providerMetrics, watchStops } from './metrics';
import { warnIfEndOfLife } from './node-support';
import { startWorkerTracing, type WorkerTracing } from './tracing';
import { bundleStopflowWorkflows, createStopflowWorker, type StopflowWorker } from './worker';
import { fileHasStackTraces } from './workflow-stack-traces';

export const WORKER_EXIT = { stopped: 0, failed: 1, badConfig: 2, checkFailed: 3 } as const;

/**
 * The workflow bundles `npm run build` writes beside the compiled worker (dist/app/), used when
 * STOPFLOW_WORKFLOW_BUNDLE is unset: the plain one, and the one with the tracing interceptors for a
 * worker that traces. Run from source there are none, and the worker bundles at start.
 */
export const PREBUILT_WORKFLOW_BUNDLE = fileURLToPath(new URL('./workflow-bundle.js', import.meta.url));
export const PREBUILT_TRACED_WORKFLOW_BUNDLE = fileURLToPath(new URL('./workflow-bundle-traced.js', import.meta.url));

/** How long past the grace the worker may take to hand its tasks back before it is abandoned. */
const FORCE_MARGIN_MS = 10_000;

export interface RunWorkerOptions {
  /** Run the start-up checks and exit: 0 when they pass, 3 when one fails. */
  checkOnly?: boolean;
  /** Write the workflow bundle to this file (for STOPFLOW_WORKFLOW_BUNDLE) and exit. */
  writeBundle?: string;
}

/** Runs a worker until SIGTERM or SIGINT; resolves with the process exit code. */
export async function runWorker(env: NodeJS.ProcessEnv = process.env, options: RunWorkerOptions = {}): Promise<number> {
  if (options.writeBundle) return writeBundle(options.writeBundle, env);

  let config: WorkerConfig;
  try {
    config = loadWorkerConfig(env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`stopflow worker: ${err.message}\n(docs/worker.md lists every variable)\n`);
    return WORKER_EXIT.badConfig;
  }
  // The workflow bundle, chosen once: the operator's file, else the one `npm run build` wrote beside this code
  // (with the tracing interceptors for a worker that traces), else none and the worker bundles at start.
  const prebuilt =
    !options.checkOnly && tracingRequested(env) ? PREBUILT_TRACED_WORKFLOW_BUNDLE : PREBUILT_WORKFLOW_BUNDLE;
  const usePrebuilt = config.workflowBundlePath === undefined && existsSync(prebuilt);
  if (usePrebuilt) config = { ...config, workflowBundlePath: prebuilt };
  if (config.workflowBundlePath) {
    // A bundle file decides for itself whether its workflows keep stack traces: asking for them from one built
    // without is refused, not silently ignored (checked before anything starts).
    const hasStackTraces = fileHasStackTraces(config.workflowBundlePath);
    if (config.workflowStackTraces && !hasStackTraces) {
      process.stderr.write(
        `stopflow worker: invalid configuration:\n  STOPFLOW_WORKFLOW_STACK_TRACES: the workflow bundle ${config.workflowBundlePath} was built without stack traces; write one with them (STOPFLOW_WORKFLOW_STACK_TRACES=true stopflow worker --write-bundle <path>, from a source checkout) and set STOPFLOW_WORKFLOW_BUNDLE to it\n`,
      );
      return WORKER_EXIT.badConfig;
    }
    config = { ...config, workflowStackTraces: hasStackTraces };
  }
  // Read once: the events secret must not reach a child process (a linux stop command) through the environment.
  delete env.STOPFLOW_EVENTS_SECRET;
  if (env !== process.env) delete process.env.STOPFLOW_EVENTS_SECRET;

  const logger = createLogger({ level: config.logLevel });
  try {
    Runtime.install({
      logger: new PinoSdkLogger(logger),
      // Signals are handled below, to log them and to exit with a clear code.
      shutdownSignals: [],
      telemetryOptions: {
        logging: { filter: coreLogFilter(config.logLevel), forward: {} },
        ...(config.metricsAddress ? { metrics: prometheusExporter(config.metricsAddress) } : {}),
      },
    });
  } catch (err) {
    logger.error(
      { err, check: 'metrics endpoint' },
      `check failed: cannot serve metrics on ${config.metricsAddress}: ${(err as Error).message}. Set STOPFLOW_METRICS_ADDRESS to a free address or "off".`,
    );
    return WORKER_EXIT.checkFailed;
  }

  logger.info({ config: describeWorkerConfig(config, env) }, 'stopflow worker starting');
  if (usePrebuilt) logger.info({ workflowBundle: prebuilt }, 'workflows: the bundle prebuilt by npm run build');
  warnIfEndOfLife(logger);
  // Traces (docs/worker.md "Traces"), off unless OTEL_* ask for them: only for a worker that polls, and the
  // spans still buffered are sent once it has stopped.
  const tracing = options.checkOnly ? undefined : startWorkerTracing(env, { warn: (message) => logger.warn(message) });
  try {
    return await serve(config, logger, options, tracing);
  } finally {
    await tracing
      ?.shutdown()
      .catch((err: unknown) => logger.warn({ err }, `traces: the last spans were not sent: ${(err as Error).message}`));
  }
}

async function serve(
  config: WorkerConfig,
  logger: AppLogger,
  options: RunWorkerOptions,
  tracing: WorkerTracing | undefined,
): Promise<number> {
  // A signal during start-up ends it quietly; once polling, it starts the graceful shutdown.
  let worker: StopflowWorker | undefined;
  let stopRequested = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopRequested) {
      logger.warn({ signal }, `${signal} again: exiting now; running activities are retried by another worker`);
      process.exit(signal === 'SIGINT' ? 130 : 143);
    }
    stopRequested = true;
    logger.info(
      { signal, shutdownGrace: formatDuration(config.shutdownGraceMs) },
      `${signal}: shutting down; running activities get ${formatDuration(config.shutdownGraceMs)} to finish, then are cancelled and retried by the next worker`,
    );
    if (worker?.getState() === 'RUNNING') worker.shutdown();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  const removeSignalHandlers = () => {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  };

  const providers = await buildProviders(config.providers, {
    simStatePath: config.simStatePath,
    callBudgets: config.callBudgets,
    ...linuxProviderSettings(config),
  });
  const report = await runStartupChecks(config.temporal, providers);
  for (const result of report.results) {
    if (result.ok) logger.info({ check: result.check }, `check ok: ${result.message}`);
    else
      logger.error(
        { check: result.check, fix: result.fix },
        `check failed: ${result.message}${result.fix ? `. ${result.fix}` : ''}`,
      );
  }
  const { connection } = report;
  if (!report.ok || !connection) {
    const failed = report.results.filter((r) => !r.ok).map((r) => r.check);
    logger.error({ failed }, `start-up checks failed (${failed.join(', ')}); not starting`);
    await connection?.close();
    removeSignalHandlers();
    return WORKER_EXIT.checkFailed;
  }
  if (options.checkOnly || stopRequested) {
    if (options.checkOnly) logger.info('all start-up checks passed');
    await connection.close();
    removeSignalHandlers();
    return WORKER_EXIT.stopped;
  }

  const metrics = providerMetrics(Runtime.instance().metricMeter, config.taskQueue);
  const observe = (event: ProviderEvent) => {
    metrics(event);
    logProviderEvent(event);
  };
  const client = new Client({ connection, namespace: config.temporal.namespace });
  try {
    const backends = new Backends({
      providers: new Map(providers.map((p) => [p.name, p])),
      defaultProvider: config.defaultProvider,
      pollIntervalMs: config.pollIntervalMs,
      observe,
    });
    worker = await createStopflowWorker({
      connection,
      namespace: config.temporal.namespace,
      taskQueue: config.taskQueue,
      providers,
      defaultProvider: config.defaultProvider,
      pollIntervalMs: config.pollIntervalMs,
      holdMs: config.detachHoldMs,
      maxPollIntervalMs: config.maxPollIntervalMs,
      watchHeartbeatTimeoutMs: config.watchHeartbeatTimeoutMs,
      maxConcurrentWaits: config.maxConcurrentWaits,
      maxConcurrentForces: config.maxConcurrentForces,
      refuseHeldVolumes: config.refuseHeldVolumes,
      ...(config.events ? { completionEvents: { url: config.events.url, secret: config.events.secret } } : {}),
      observe,
      backends,
      // The sweep (docs/sweep.md) runs on the same worker; its activities need a Client for visibility, and
      // keep to the same call budgets as the stops.
      extraActivities: createSweepActivities({
        client,
        providers,
        defaultProvider: config.defaultProvider,
        namespace: config.temporal.namespace,
        taskQueue: config.taskQueue,
        backends,
      }),
      ...(config.workflowBundlePath
        ? { workflowBundle: { codePath: config.workflowBundlePath } }
        : { workflowStackTraces: config.workflowStackTraces }),
      tuning: {
        maxConcurrentActivityTaskExecutions: config.maxConcurrentActivities,
        maxConcurrentWorkflowTaskExecutions: config.maxConcurrentWorkflowTasks,
        maxCachedWorkflows: config.maxCachedWorkflows,
        ...(config.identity !== undefined ? { identity: config.identity } : {}),
        shutdownGraceTime: config.shutdownGraceMs,
        shutdownForceTime: config.shutdownGraceMs + FORCE_MARGIN_MS,
        interceptors: { activity: [activityLogContext] },
      },
      ...(tracing ? { tracing } : {}),
    });
  } catch (err) {
    logger.error({ err }, `cannot create the worker: ${(err as Error).message}`);
    // A Worker that did not let the connection go within its bound keeps it open; the exit code still says why.
    await connection
      .close()
      .catch((closeErr: unknown) => logger.warn({ err: closeErr }, 'the connection did not close'));
    removeSignalHandlers();
    return WORKER_EXIT.failed;
  }

  let exitCode: number = WORKER_EXIT.stopped;
  const running = worker.run();
  // Gauges of the running stops (the stuck-stop alert), from visibility: only worth the queries when scraped.
  const stopGauges = config.metricsAddress
    ? watchStops({
        client,
        meter: Runtime.instance().metricMeter,
        namespace: config.temporal.namespace,
        taskQueue: config.taskQueue,
        onError: (err) => logger.warn({ err }, `stop gauges not refreshed: ${(err as Error).message}`),
      })
    : undefined;
  // A signal that came while the worker was being created: stop right away (it has polled nothing yet).
  if (stopRequested && worker.getState() === 'RUNNING') worker.shutdown();
  else
    logger.info(
      {
        taskQueue: config.taskQueue,
        namespace: config.temporal.namespace,
        providers: config.providers,
        identity: worker.options.identity,
      },
      `worker polling task queue ${config.taskQueue} in namespace ${config.temporal.namespace}`,
    );
  try {
    await running;
    logger.info('worker stopped: every task handed back');
  } catch (err) {
    if (err instanceof GracefulShutdownPeriodExpiredError) {
      logger.error(
        { err },
        `shutdown overran the grace by ${formatDuration(FORCE_MARGIN_MS)}: exiting anyway; unfinished activities are retried after their heartbeat timeout`,
      );
    } else {
      logger.error({ err }, `worker failed: ${(err as Error).message}`);
    }
    exitCode = WORKER_EXIT.failed;
  }
  await stopGauges?.stop();
  await connection.close();
  removeSignalHandlers();
  return exitCode;
}

async function writeBundle(path: string, env: NodeJS.ProcessEnv): Promise<number> {
  // The bundle for this environment: with the tracing interceptors when OTEL_* turn traces on.
  const traced = tracingRequested(env);
  let stackTraces: boolean;
  try {
    stackTraces = workflowStackTracesRequested(env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`stopflow worker: ${err.message}\n`);
    return WORKER_EXIT.badConfig;
  }
  const prebuilt = traced ? PREBUILT_TRACED_WORKFLOW_BUNDLE : PREBUILT_WORKFLOW_BUNDLE;
  // Compiled (dist/app/) there are no workflow sources to bundle: the bundle built with the code is the one.
  if (existsSync(prebuilt)) {
    if (stackTraces && !fileHasStackTraces(prebuilt)) {
      process.stderr.write(
        'stopflow worker: invalid configuration:\n  STOPFLOW_WORKFLOW_STACK_TRACES: this compiled worker carries only a bundle without stack traces; write one from a source checkout\n',
      );
      return WORKER_EXIT.badConfig;
    }
    copyFileSync(prebuilt, path);
  } else writeFileSync(path, (await bundleStopflowWorkflows({ traced, stackTraces })).code);
  process.stdout.write(`stopflow worker: workflow bundle written to ${path} (set STOPFLOW_WORKFLOW_BUNDLE=${path})\n`);
  return WORKER_EXIT.stopped;
}

/** `npm run worker [-- --check | --write-bundle <path>]`. */
function isEntryPoint(): boolean {
  const script = process.argv[1];
  if (!script) return false;
  try {
    return import.meta.url === pathToFileURL(realpathSync(script)).href;
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  let options: RunWorkerOptions;
  try {
    const { values } = parseArgs({
      options: { check: { type: 'boolean' }, 'write-bundle': { type: 'string' } },
      allowPositionals: false,
    });
    options = {};
    if (values.check) options.checkOnly = true;
    if (values['write-bundle']) options.writeBundle = values['write-bundle'];
  } catch (err) {
    process.stderr.write(`stopflow worker: ${(err as Error).message} (options: --check, --write-bundle <path>)\n`);
    process.exit(WORKER_EXIT.badConfig);
  }
  process.exit(await runWorker(process.env, options));
}
