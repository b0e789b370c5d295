/**
 * The production shape of Temporal, for tests and for `npm run cluster`: a real
 * Temporal Server v1.29.1 process (frontend, history, matching and worker
 * services, 4 history shards) on PostgreSQL 15, with SQL visibility on a second
 * database so that stopflow's search attributes work, and optionally the
 * Temporal UI pointed at it. Everything binds to 127.0.0.1 on free ports and
 * lives in one temporary folder that `stop()` removes.
 *
 * PostgreSQL asks for a password made at random for each cluster; it reaches
 * the SQL tool and the server in their environment (SQL_PASSWORD), never on a
 * command line, and the server's config file (mode 0600) only names the
 * variable. The processes get a minimal environment (PATH, HOME, …: see
 * minimalEnv), not this one, so no secret of the harness reaches them. A start
 * that fails or is aborted (`signal`) stops and removes what it had started;
 * should this process exit without `stop()`, the processes are killed and the
 * folders removed as it exits.
 *
 * The dev server (devserver/server.ts) is the same server code in one process
 * on SQLite; this profile adds what it cannot show: a separate database that
 * can go away, a server process that can be restarted under load, and the
 * persistence and visibility stores a production cluster uses.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Connection } from '@temporalio/client';
import * as names from '../common/names';
import { StopForcedKey, StopPhaseKey } from '../common/names';
import { freePort, portInUse } from './ports';
import { type Postgres, startPostgres } from './postgres';
import { resolveTemporalCli } from './temporal-cli';
import {
  minimalEnv,
  resolveTemporalServer,
  resolveTemporalUiServer,
  type TemporalServerBinaries,
} from './temporal-server';

export const CLUSTER_NAMESPACE = 'default';
/** The CLI's name of each search attribute type. */
const SA_TYPES: Record<string, string> = {
  TEXT: 'Text',
  KEYWORD: 'Keyword',
  INT: 'Int',
  DOUBLE: 'Double',
  BOOL: 'Bool',
  DATETIME: 'Datetime',
  KEYWORD_LIST: 'KeywordList',
};
/** Every search attribute key common/names.ts defines (the ones the dev server registers). */
export const SEARCH_ATTRIBUTES: { name: string; type: string }[] = (Object.values(names) as unknown[]).filter(
  (value): value is { name: string; type: string } =>
    typeof value === 'object' &&
    value !== null &&
    typeof (value as { name?: unknown }).name === 'string' &&
    typeof (value as { type?: unknown }).type === 'string' &&
    (value as { type: string }).type in SA_TYPES,
);
const HOST = '127.0.0.1';

export interface ClusterOptions {
  /** Frontend gRPC port; a free one when omitted. */
  port?: number;
  /** Also start the Temporal UI server (built with Go on first use), on this port or a free one. */
  ui?: boolean | { port?: number };
  /** Extra namespaces to create besides `default`. */
  namespaces?: string[];
  /** Server log level (its log goes to `<root>/temporal-server.log`). Default warn. */
  logLevel?: 'debug' | 'info' | 'warn' | 'error';
  /** Where binaries are looked for (PATH, caches); the processes get only a minimal part of it. */
  env?: NodeJS.ProcessEnv;
  /** Progress lines (builds, start-up steps). */
  log?: (line: string) => void;
  /**
   * Aborts the start: whatever was started so far is stopped and removed, and the promise rejects. (After the
   * start, `stop()` is the way.)
   */
  signal?: AbortSignal;
}

export interface Cluster {
  /** Frontend gRPC address, host:port. */
  address: string;
  /** Frontend HTTP API. */
  httpUrl: string;
  /** The Temporal UI, when started. */
  uiUrl: string | undefined;
  /** Why there is no UI, when one was asked for and could not be started. */
  uiError: string | undefined;
  namespace: string;
  postgres: Postgres;
  root: string;
  /** The server's config file (mode 0600; it names the password's variable, not the password). */
  configFile: string;
  serverLog: string;
  binaries: TemporalServerBinaries;
  temporalCli: string;
  /** Time the start took, by step, in ms. */
  timings: Record<string, number>;
  serverPid(): number | undefined;
  /** Stops the server process: SIGTERM (graceful, SIGKILL after 30s) or SIGKILL (a crash). */
  stopServer(signal?: 'SIGTERM' | 'SIGKILL'): Promise<void>;
  /** Starts the server process again with the same configuration and ports; resolves once it serves. */
  startServer(): Promise<void>;
  /** Stops everything and removes the temporary folder. Safe to call twice. */
  stop(): Promise<void>;
}

interface Ports {
  frontend: number;
  frontendHttp: number;
  frontendMembership: number;
  history: number;
  historyMembership: number;
  matching: number;
  matchingMembership: number;
  worker: number;
  workerMembership: number;
}

/**
 * Ports below 32768: the PostgreSQL schema stores membership ports as smallint, and the operating system hands out
 * free ports from its ephemeral range above that, so they are picked at random from 20000-32767 and checked.
 */
async function lowPort(taken: Set<number>): Promise<number> {
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 12_768);
    if (!taken.has(port) && !(await portInUse(port))) {
      taken.add(port);
      return port;
    }
  }
}

async function allocatePorts(frontend: number | undefined): Promise<Ports> {
  const taken = new Set<number>(frontend ? [frontend] : []);
  const next = () => lowPort(taken);
  return {
    frontend: frontend ?? (await next()),
    frontendHttp: await next(),
    frontendMembership: await next(),
    history: await next(),
    historyMembership: await next(),
    matching: await next(),
    matchingMembership: await next(),
    worker: await next(),
    workerMembership: await next(),
  };
}

/** The server reads the database password from this variable of its environment (the config file names it). */
const PASSWORD_VARIABLE = 'SQL_PASSWORD';

/**
 * The server's configuration file: JSON (which is YAML, which the server reads), rendered by the server as a Go
 * template (the `enable-template` comment) so that the password comes from its environment.
 */
function serverConfigFile(ports: Ports, postgres: Postgres, dynamicConfigPath: string, logLevel: string): string {
  return `# enable-template\n${JSON.stringify(serverConfig(ports, postgres, dynamicConfigPath, logLevel), null, 2)}\n`;
}

function serverConfig(ports: Ports, postgres: Postgres, dynamicConfigPath: string, logLevel: string): unknown {
  const sql = (databaseName: string, maxConns: number) => ({
    sql: {
      pluginName: 'postgres12',
      databaseName,
      connectAddr: `${postgres.host}:${postgres.port}`,
      connectProtocol: 'tcp',
      user: postgres.user,
      password: `{{ env \`${PASSWORD_VARIABLE}\` }}`,
      maxConns,
      maxIdleConns: maxConns,
      maxConnLifetime: '1h',
    },
  });
  const rpc = (grpcPort: number, membershipPort: number, extra: Record<string, unknown> = {}) => ({
    rpc: { grpcPort, membershipPort, bindOnLocalHost: true, ...extra },
  });
  return {
    log: { stdout: true, level: logLevel },
    persistence: {
      defaultStore: 'postgres-default',
      visibilityStore: 'postgres-visibility',
      numHistoryShards: 4,
      datastores: {
        'postgres-default': sql('temporal', 20),
        'postgres-visibility': sql('temporal_visibility', 10),
      },
    },
    global: {
      membership: { maxJoinDuration: '30s', broadcastAddress: HOST },
    },
    services: {
      frontend: rpc(ports.frontend, ports.frontendMembership, { httpPort: ports.frontendHttp }),
      history: rpc(ports.history, ports.historyMembership),
      matching: rpc(ports.matching, ports.matchingMembership),
      worker: rpc(ports.worker, ports.workerMembership),
    },
    clusterMetadata: {
      enableGlobalNamespace: false,
      failoverVersionIncrement: 10,
      masterClusterName: 'active',
      currentClusterName: 'active',
      clusterInformation: {
        active: {
          enabled: true,
          initialFailoverVersion: 1,
          rpcName: 'frontend',
          rpcAddress: `${HOST}:${ports.frontend}`,
          httpAddress: `${HOST}:${ports.frontendHttp}`,
        },
      },
    },
    dcRedirectionPolicy: { policy: 'noop' },
    dynamicConfigClient: { filepath: dynamicConfigPath, pollInterval: '10s' },
  };
}

/** Dynamic config: what the dev server harness sets, and what makes a fresh cluster usable at once. */
function dynamicConfig(): string {
  const values: Record<string, unknown> = {
    // Task priority (force and abort ahead of other stops' work) needs the new matcher (docs/worker.md "Isolation").
    'matching.useNewMatcher': true,
    // Search attributes registered a moment ago are known at once, not after the cache's refresh.
    'system.forceSearchAttributesCacheRefreshOnRead': true,
    // As the dev server: more visibility calls per second than the default 10 (tests list and count stops).
    'frontend.namespaceRPS.visibility': 100,
    'history.hostLevelCacheMaxSize': 8096,
  };
  return `${Object.entries(values)
    .map(([key, value]) => `${key}:\n  - value: ${JSON.stringify(value)}\n`)
    .join('')}`;
}

function run(
  command: string,
  args: string[],
  options: { env: NodeJS.ProcessEnv; cwd?: string; signal?: AbortSignal | undefined },
): Promise<{ code: number; output: string }> {
  return new Promise((resolve, reject) => {
    const { signal, ...rest } = options;
    // An abort kills the command, and the promise rejects.
    const child = spawn(command, args, { ...rest, ...(signal ? { signal } : {}), stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code: code ?? 1, output }));
  });
}

async function mustRun(
  command: string,
  args: string[],
  what: string,
  env: NodeJS.ProcessEnv,
  signal: AbortSignal | undefined,
): Promise<string> {
  const { code, output } = await run(command, args, { env, signal });
  if (code !== 0) throw new Error(`${what} failed (exit ${code}): ${output.slice(-3_000)}`);
  return output;
}

/** An error `until` does not retry: a process it waits on has died. */
class FatalError extends Error {}

/** The start was aborted (ClusterOptions.signal). */
class StartAbortedError extends FatalError {
  override name = 'AbortError';
  constructor() {
    super('stopflow: the cluster start was aborted');
  }
}

/**
 * Retries `fn` until it returns true, every 250ms, for at most `timeoutMs`; `aborted` is asked before each try and
 * throws to give up at once.
 */
async function until(
  fn: () => Promise<boolean>,
  what: string,
  timeoutMs: number,
  aborted: () => void = () => undefined,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    aborted();
    try {
      if (await fn()) return;
    } catch (err) {
      if (err instanceof FatalError) throw err;
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: HOST, port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

function logTail(file: string, from = 0): string {
  try {
    return readFileSync(file).subarray(from).toString('utf8').slice(-3_000);
  } catch {
    return '';
  }
}

async function setUpSchemas(
  binaries: TemporalServerBinaries,
  postgres: Postgres,
  env: NodeJS.ProcessEnv,
  signal: AbortSignal | undefined,
): Promise<void> {
  // The password in the tool's environment (it reads SQL_PASSWORD), not on its command line.
  const toolEnv = minimalEnv(env, { [PASSWORD_VARIABLE]: postgres.password });
  const common = ['--plugin', 'postgres12', '--ep', postgres.host, '-p', String(postgres.port), '-u', postgres.user];
  await Promise.all(
    [
      ['temporal', binaries.schemaDir],
      ['temporal_visibility', binaries.visibilitySchemaDir],
    ].map(async ([db, dir]) => {
      const tool = (args: string[], what: string) =>
        mustRun(
          binaries.sqlTool,
          [...common, '--db', db as string, ...args],
          `temporal-sql-tool ${what} (${db})`,
          toolEnv,
          signal,
        );
      await tool(['create-database', '--defaultdb', 'postgres'], 'create-database');
      await tool(['setup-schema', '-v', '0.0'], 'setup-schema');
      await tool(['update-schema', '-d', dir as string], 'update-schema');
    }),
  );
}

export async function startCluster(options: ClusterOptions = {}): Promise<Cluster> {
  const env = options.env ?? process.env;
  const log = options.log ?? (() => undefined);
  const timings: Record<string, number> = {};
  let mark = Date.now();
  const lap = (step: string) => {
    const now = Date.now();
    timings[step] = now - mark;
    mark = now;
  };
  const signal = options.signal;
  let starting = true;
  /** Throws once the start is aborted; the signal counts only while starting (afterwards `stop()` is the way). */
  const aborted = () => {
    if (starting && signal?.aborted) throw new StartAbortedError();
  };
  const startSignal = () => (starting ? signal : undefined);

  aborted();
  const [binaries, cli, uiBinary] = await Promise.all([
    resolveTemporalServer({ env, log, ...(signal ? { signal } : {}) }),
    resolveTemporalCli({ env, log, allowSdkDownload: false }),
    options.ui ? resolveTemporalUiServer({ env, log, ...(signal ? { signal } : {}) }) : Promise.resolve(undefined),
  ]);
  if (cli.kind !== 'path') throw new Error('stopflow: the cluster profile needs the Temporal CLI binary');
  const temporalCli = cli.path;
  aborted();
  lap('binaries');

  const root = mkdtempSync(join(tmpdir(), 'stopflow-cluster-'));
  const children: { server: ChildProcess | undefined; ui: ChildProcess | undefined } = {
    server: undefined,
    ui: undefined,
  };
  let postgres: Postgres | undefined;
  let stopped = false;

  // Should this process exit without `stop()` (a crash, a second Ctrl-C, a test run cut short): the server and the
  // UI are killed and the folder removed (PostgreSQL has its own hook). Synchronous, as an exit hook must be.
  const onExit = () => {
    for (const child of [children.ui, children.server]) {
      if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    rmSync(root, { recursive: true, force: true, maxRetries: 3 });
  };
  process.once('exit', onExit);

  const stopServer = async (signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM') => {
    const child = children.server;
    if (!child) return;
    children.server = undefined;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    await exited;
    clearTimeout(timer);
  };

  const stopAll = async () => {
    if (stopped) return;
    stopped = true;
    const ui = children.ui;
    children.ui = undefined;
    if (ui && ui.exitCode === null && ui.signalCode === null) {
      const exited = new Promise<void>((resolve) => ui.once('exit', () => resolve()));
      ui.kill('SIGKILL');
      await exited;
    }
    try {
      await stopServer('SIGTERM');
      await postgres?.destroy();
    } finally {
      process.removeListener('exit', onExit);
      rmSync(root, { recursive: true, force: true, maxRetries: 3 });
    }
  };

  try {
    const pg = await startPostgres({ env, log, ...(signal ? { signal } : {}) });
    postgres = pg;
    aborted();
    lap('postgres');
    await setUpSchemas(binaries, pg, env, signal);
    aborted();
    lap('schemas');

    const ports = await allocatePorts(options.port);
    const configDir = join(root, 'config');
    mkdirSync(configDir, { recursive: true, mode: 0o700 });
    const dynamicConfigPath = join(configDir, 'dynamicconfig.yaml');
    writeFileSync(dynamicConfigPath, dynamicConfig(), { mode: 0o600 });
    const configFile = join(configDir, 'cluster.yaml');
    writeFileSync(configFile, serverConfigFile(ports, pg, dynamicConfigPath, options.logLevel ?? 'warn'), {
      mode: 0o600,
    });
    chmodSync(configFile, 0o600);
    const address = `${HOST}:${ports.frontend}`;
    const serverLog = join(root, 'temporal-server.log');
    // The server, the UI and the CLI get a minimal environment: none of this process's secrets, and no TEMPORAL_*
    // variable of ours (an address or namespace meant for another server). The server alone gets the password.
    const serverEnv = minimalEnv(env, { [PASSWORD_VARIABLE]: pg.password });
    const uiEnv = minimalEnv(env);
    const cliEnv = minimalEnv(env, { TEMPORAL_CLI_SHOW_STACKS: '' });
    const temporal = (args: string[]) =>
      run(temporalCli, [...args, '--address', address, '--command-timeout', '15s'], {
        env: cliEnv,
        signal: startSignal(),
      });

    /** Spawns the server; resolves once the frontend answers for the namespace (existing, or any on first start). */
    const startServer = async (firstStart = false) => {
      if (children.server) return;
      const out = openSync(serverLog, 'a');
      const from = statSync(serverLog).size;
      const child = spawn(
        binaries.server,
        ['--root', root, '--config', 'config', '--env', 'cluster', '--allow-no-auth', 'start'],
        { cwd: root, env: serverEnv, stdio: ['ignore', out, out] },
      );
      closeSync(out);
      children.server = child;
      const died = () => child.exitCode !== null || child.signalCode !== null;
      await until(
        async () => {
          if (died()) throw new FatalError(`temporal-server exited (${child.exitCode}): ${logTail(serverLog, from)}`);
          if (!(await accepts(ports.frontend))) return false;
          const { code } = await temporal(
            firstStart
              ? ['operator', 'cluster', 'health']
              : ['operator', 'namespace', 'describe', '-n', CLUSTER_NAMESPACE],
          );
          return code === 0;
        },
        'the Temporal server to serve',
        120_000,
        aborted,
      ).catch((err: Error) => {
        if (err instanceof StartAbortedError) throw err;
        if (died()) throw new Error(`temporal-server exited (${child.exitCode}): ${logTail(serverLog, from)}`);
        throw new Error(`${err.message}\nserver log: ${logTail(serverLog, from)}`);
      });
    };

    await startServer(true);
    lap('server');

    for (const namespace of [CLUSTER_NAMESPACE, ...(options.namespaces ?? [])]) {
      await until(
        async () => {
          const { code, output } = await temporal(['operator', 'namespace', 'create', '-n', namespace]);
          return code === 0 || /already (exists|registered)/i.test(output);
        },
        `namespace ${namespace} to be created`,
        60_000,
        aborted,
      );
      // One call per attribute: on SQL visibility, v1.29.1 registers only one of several new names given together.
      await until(
        async () => {
          const { output: listed } = await temporal(['operator', 'search-attribute', 'list', '-n', namespace]);
          const missing = SEARCH_ATTRIBUTES.filter((key) => !new RegExp(`^\\s*${key.name}\\s`, 'm').test(listed));
          for (const key of missing) {
            await temporal([
              'operator',
              'search-attribute',
              'create',
              '-n',
              namespace,
              '--name',
              key.name,
              '--type',
              SA_TYPES[key.type] as string,
            ]);
          }
          return missing.length === 0;
        },
        `search attributes in ${namespace}`,
        60_000,
        aborted,
      );
    }
    // Usable through the frontend: the namespace resolves and a visibility query with the attributes works.
    const connection = await Connection.connect({ address });
    try {
      for (const namespace of [CLUSTER_NAMESPACE, ...(options.namespaces ?? [])]) {
        await until(
          async () => {
            await connection.workflowService.listWorkflowExecutions({
              namespace,
              pageSize: 1,
              query: `${StopPhaseKey.name} = 'stopping' AND ${StopForcedKey.name} = false`,
            });
            return true;
          },
          `namespace ${namespace} to answer visibility queries on the search attributes`,
          60_000,
          aborted,
        );
      }
    } finally {
      await connection.close();
    }
    lap('namespaces');

    let uiUrl: string | undefined;
    let uiError: string | undefined;
    if (options.ui) {
      if (!uiBinary) {
        uiError = 'the Temporal UI server could not be built (see the log above)';
      } else {
        const uiPort = (typeof options.ui === 'object' ? options.ui.port : undefined) ?? (await freePort());
        const uiRoot = join(root, 'ui');
        mkdirSync(join(uiRoot, 'config'), { recursive: true });
        writeFileSync(
          join(uiRoot, 'config', 'cluster.yaml'),
          `${JSON.stringify(
            {
              temporalGrpcAddress: address,
              host: HOST,
              port: uiPort,
              enableUi: true,
              defaultNamespace: CLUSTER_NAMESPACE,
              notifyOnNewVersion: false,
              cors: { allowOrigins: [`http://${HOST}:${uiPort}`, `http://localhost:${uiPort}`] },
            },
            null,
            2,
          )}\n`,
        );
        const uiLog = join(root, 'temporal-ui.log');
        const out = openSync(uiLog, 'a');
        const ui = spawn(uiBinary, ['--root', uiRoot, '--config', 'config', '--env', 'cluster', 'start'], {
          cwd: uiRoot,
          env: uiEnv,
          stdio: ['ignore', out, out],
        });
        closeSync(out);
        children.ui = ui;
        try {
          await until(
            async () => {
              if (ui.exitCode !== null)
                throw new Error(`temporal-ui-server exited (${ui.exitCode}): ${logTail(uiLog)}`);
              return accepts(uiPort);
            },
            'the Temporal UI',
            30_000,
            aborted,
          );
          uiUrl = `http://${HOST}:${uiPort}`;
        } catch (err) {
          if (err instanceof StartAbortedError) throw err;
          uiError = (err as Error).message;
        }
      }
      lap('ui');
    }

    aborted();
    starting = false;
    return {
      address,
      httpUrl: `http://${HOST}:${ports.frontendHttp}`,
      uiUrl,
      uiError,
      namespace: CLUSTER_NAMESPACE,
      postgres: pg,
      root,
      configFile,
      serverLog,
      binaries,
      temporalCli,
      timings,
      serverPid: () => {
        const child = children.server;
        return child && child.exitCode === null && child.signalCode === null ? child.pid : undefined;
      },
      stopServer,
      startServer: () => startServer(false),
      stop: stopAll,
    };
  } catch (err) {
    await stopAll().catch(() => undefined);
    throw err;
  }
}
