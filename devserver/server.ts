/** Starts a real Temporal dev server (never a fake) with stopflow's search attributes registered. */
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { StopCauseKey, StopForcedKey, StopPhaseKey, StopVolumesKey } from '../common/names';
import { type ResolveOptions, resolveTemporalCli } from './temporal-cli';

export interface DevServerOptions extends ResolveOptions {
  ip?: string;
  /** gRPC port; a free one when omitted. */
  port?: number;
  /** Serve the Web UI on this port. */
  uiPort?: number;
  /** HTTP API port (Temporal's REST gateway). */
  httpPort?: number;
  /** SQLite file for persistence; in memory when omitted. */
  dbFilename?: string;
  logLevel?: 'debug' | 'info' | 'warn' | 'error';
  /** Serve the server's Prometheus metrics on this loopback port (the benchmarks count its requests). */
  metricsPort?: number;
  /** Dynamic config on top of RECOMMENDED_DYNAMIC_CONFIG (the benchmarks' tuned server). */
  dynamicConfig?: Readonly<Record<string, string | number | boolean>>;
}

export interface DevServer {
  env: TestWorkflowEnvironment;
  address: string;
  uiUrl: string | undefined;
  httpUrl: string | undefined;
  /** The server's Prometheus endpoint, when `metricsPort` was given. */
  metricsUrl: string | undefined;
  cliPath: string | undefined;
  stop(): Promise<void>;
}

/**
 * Task priority (force and abort ahead of other stops' work) needs the new matcher on server 1.29; stopflow
 * works without it, and better with it (docs/worker.md "Isolation"). Every dev server the project starts has it.
 */
export const RECOMMENDED_DYNAMIC_CONFIG = { 'matching.useNewMatcher': true } as const;

export async function startDevServer(options: DevServerOptions = {}): Promise<DevServer> {
  const cli = await resolveTemporalCli(options);
  const ip = options.ip ?? '127.0.0.1';
  const dynamicConfig = { ...RECOMMENDED_DYNAMIC_CONFIG, ...options.dynamicConfig };
  const extraArgs: string[] = Object.entries(dynamicConfig).flatMap(([key, value]) => [
    '--dynamic-config-value',
    `${key}=${value}`,
  ]);
  if (options.httpPort) extraArgs.push('--http-port', String(options.httpPort));
  if (options.metricsPort) extraArgs.push('--metrics-port', String(options.metricsPort));
  const env = await TestWorkflowEnvironment.createLocal({
    server: {
      executable: cli.kind === 'path' ? { type: 'existing-path', path: cli.path } : { type: 'cached-download' },
      ip,
      ...(options.port ? { port: options.port } : {}),
      ...(options.uiPort ? { ui: true, uiPort: options.uiPort } : {}),
      ...(options.dbFilename ? { dbFilename: options.dbFilename } : {}),
      log: { format: 'pretty', level: options.logLevel ?? 'warn' },
      searchAttributes: [StopPhaseKey, StopCauseKey, StopForcedKey, StopVolumesKey],
      extraArgs,
    },
  });
  return {
    env,
    address: env.address,
    uiUrl: options.uiPort ? `http://${ip}:${options.uiPort}` : undefined,
    httpUrl: options.httpPort ? `http://${ip}:${options.httpPort}` : undefined,
    metricsUrl: options.metricsPort ? `http://${ip}:${options.metricsPort}/metrics` : undefined,
    cliPath: cli.kind === 'path' ? cli.path : undefined,
    stop: () => env.teardown(),
  };
}
