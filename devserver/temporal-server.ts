/**
 * Finds (or builds once) the binaries of the cluster profile (devserver/cluster.ts):
 * Temporal Server v1.29.1, the server inside the Temporal CLI v1.5.1 that the
 * dev server runs, and its SQL schema tool, with the PostgreSQL schema files
 * of that release beside them; and, optionally, the Temporal UI server.
 *
 * Like the CLI (devserver/temporal-cli.ts) they are built with `go install`
 * into the user's cache folder, under a lock, in a temporary folder that is
 * renamed into place once complete, so two processes resolving at once
 * neither corrupt the cache nor build twice:
 *
 *   ~/.cache/stopflow/temporal-server-v1.29.1/
 *     temporal-server, temporal-sql-tool, schema/postgresql/v12/{temporal,visibility}/versioned/
 *   ~/.cache/stopflow/temporal-ui-server-v2.42.1/temporal-ui-server
 */
import { spawn, spawnSync } from 'node:child_process';
import {
  chmodSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
} from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import lockfile from 'proper-lockfile';
import { isExecutable, onPath } from './temporal-cli';

export const TEMPORAL_SERVER_VERSION = 'v1.29.1';
export const TEMPORAL_SERVER_MODULE = 'go.temporal.io/server';
/** The UI server the Temporal CLI v1.5.1 embeds (its go.mod). */
export const TEMPORAL_UI_SERVER_VERSION = 'v2.42.1';
export const TEMPORAL_UI_SERVER_MODULE = 'github.com/temporalio/ui-server/v2';

export interface TemporalServerBinaries {
  server: string;
  sqlTool: string;
  /** schema/postgresql/v12/temporal/versioned */
  schemaDir: string;
  /** schema/postgresql/v12/visibility/versioned */
  visibilitySchemaDir: string;
  source: 'cache' | 'go-build';
}

export class TemporalServerNotFoundError extends Error {
  override name = 'TemporalServerNotFoundError';
}

export interface ServerResolveOptions {
  env?: NodeJS.ProcessEnv;
  /** Where progress messages go (the first build takes minutes). */
  log?: (line: string) => void;
  /** Stops a build under way (`go install` is killed and its temporary folder removed). */
  signal?: AbortSignal;
}

/** What a process the cluster starts inherits from ours, unless it needs more: nothing secret. */
export const MINIMAL_ENV_KEYS = ['PATH', 'HOME', 'TMPDIR', 'LANG', 'TZ'];

/**
 * The environment for a process the cluster profile starts (PostgreSQL, the server, the UI, the SQL tool, the CLI):
 * only `keys` of `env` (PATH, HOME, TMPDIR, LANG, TZ by default) and `extra`, so that the harness's secrets
 * (STOPFLOW_EVENTS_SECRET, OTEL_EXPORTER_OTLP_HEADERS, cloud credentials, …) never reach them.
 */
export function minimalEnv(
  env: NodeJS.ProcessEnv,
  extra: Record<string, string> = {},
  keys: string[] = MINIMAL_ENV_KEYS,
): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const key of keys) {
    const value = env[key];
    if (value !== undefined) out[key] = value;
  }
  return { ...out, ...extra };
}

function cacheBase(env: NodeJS.ProcessEnv): string {
  return join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'stopflow');
}

export function serverCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return join(cacheBase(env), `temporal-server-${TEMPORAL_SERVER_VERSION}`);
}

export function uiServerCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return join(cacheBase(env), `temporal-ui-server-${TEMPORAL_UI_SERVER_VERSION}`);
}

function layout(dir: string): Omit<TemporalServerBinaries, 'source'> {
  return {
    server: join(dir, 'temporal-server'),
    sqlTool: join(dir, 'temporal-sql-tool'),
    schemaDir: join(dir, 'schema', 'postgresql', 'v12', 'temporal', 'versioned'),
    visibilitySchemaDir: join(dir, 'schema', 'postgresql', 'v12', 'visibility', 'versioned'),
  };
}

function complete(dir: string): boolean {
  const l = layout(dir);
  return (
    isExecutable(l.server) && isExecutable(l.sqlTool) && existsSync(l.schemaDir) && existsSync(l.visibilitySchemaDir)
  );
}

/** The cached server, SQL tool and schema files; built with Go on first use. */
export async function resolveTemporalServer(options: ServerResolveOptions = {}): Promise<TemporalServerBinaries> {
  const env = options.env ?? process.env;
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const dir = serverCacheDir(env);
  if (complete(dir)) return { ...layout(dir), source: 'cache' };
  const go = onPath('go', env);
  if (!go) {
    throw new TemporalServerNotFoundError(
      `stopflow: the cluster profile needs Temporal Server ${TEMPORAL_SERVER_VERSION} in ${dir}, and there is no Go toolchain on PATH to build it (\`go install ${TEMPORAL_SERVER_MODULE}/cmd/server@${TEMPORAL_SERVER_VERSION}\`). Install Go 1.24 or newer.`,
    );
  }
  await buildCached(
    dir,
    log,
    `Temporal Server ${TEMPORAL_SERVER_VERSION} and its SQL tool`,
    () => complete(dir),
    async (tmp) => {
      const gobin = join(tmp, '.gobin');
      await goInstallAsync(
        go,
        env,
        gobin,
        [
          `${TEMPORAL_SERVER_MODULE}/cmd/server@${TEMPORAL_SERVER_VERSION}`,
          `${TEMPORAL_SERVER_MODULE}/cmd/tools/sql@${TEMPORAL_SERVER_VERSION}`,
        ],
        options.signal,
      );
      renameSync(join(gobin, 'server'), join(tmp, 'temporal-server'));
      renameSync(join(gobin, 'sql'), join(tmp, 'temporal-sql-tool'));
      rmSync(gobin, { recursive: true, force: true });
      // The schema files of this very release, from the module `go install` just put in the module cache.
      const modCache = spawnSync(go, ['env', 'GOMODCACHE'], { env, encoding: 'utf8' }).stdout.trim();
      const source = join(
        modCache,
        `${TEMPORAL_SERVER_MODULE}@${TEMPORAL_SERVER_VERSION}`,
        'schema',
        'postgresql',
        'v12',
      );
      if (!existsSync(source))
        throw new TemporalServerNotFoundError(`stopflow: no PostgreSQL schema files in ${source}`);
      const target = join(tmp, 'schema', 'postgresql', 'v12');
      mkdirSync(dirname(target), { recursive: true });
      cpSync(source, target, { recursive: true });
      makeWritable(join(tmp, 'schema')); // the module cache is read-only; the cache folder must stay removable
    },
  );
  if (!complete(dir)) throw new TemporalServerNotFoundError(`stopflow: the build left ${dir} incomplete`);
  return { ...layout(dir), source: 'go-build' };
}

/**
 * The Temporal UI server binary, built once with Go into the cache; undefined
 * (with the reason logged) when it cannot be built here.
 */
export async function resolveTemporalUiServer(options: ServerResolveOptions = {}): Promise<string | undefined> {
  const env = options.env ?? process.env;
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const dir = uiServerCacheDir(env);
  const target = join(dir, 'temporal-ui-server');
  if (isExecutable(target)) return target;
  const go = onPath('go', env);
  if (!go) {
    log('stopflow: no Go toolchain on PATH, so no Temporal UI server for the cluster');
    return undefined;
  }
  try {
    await buildCached(
      dir,
      log,
      `the Temporal UI server ${TEMPORAL_UI_SERVER_VERSION}`,
      () => isExecutable(target),
      async (tmp) => {
        const gobin = join(tmp, '.gobin');
        await goInstallAsync(
          go,
          env,
          gobin,
          [`${TEMPORAL_UI_SERVER_MODULE}/cmd/server@${TEMPORAL_UI_SERVER_VERSION}`],
          options.signal,
        );
        renameSync(join(gobin, 'server'), join(tmp, 'temporal-ui-server'));
        rmSync(gobin, { recursive: true, force: true });
      },
    );
  } catch (err) {
    log(`stopflow: could not build the Temporal UI server: ${(err as Error).message}`);
    return undefined;
  }
  return isExecutable(target) ? target : undefined;
}

function goInstallAsync(
  go: string,
  env: NodeJS.ProcessEnv,
  gobin: string,
  packages: string[],
  signal: AbortSignal | undefined,
): Promise<void> {
  mkdirSync(gobin, { recursive: true });
  return new Promise<void>((resolve, reject) => {
    // The build gets the whole environment (module proxy, Go caches, credentials for private proxies); what it
    // builds runs later with minimalEnv.
    const child = spawn(go, ['install', ...packages], {
      env: { ...env, GOBIN: gobin, CGO_ENABLED: env.CGO_ENABLED ?? '0' },
      stdio: ['ignore', 'inherit', 'inherit'],
      ...(signal ? { signal } : {}),
    });
    child.on('error', reject);
    child.on('exit', (code) =>
      code === 0
        ? resolve()
        : reject(
            new TemporalServerNotFoundError(
              `\`go install ${packages.join(' ')}\` failed (exit ${code}); see its output above`,
            ),
          ),
    );
  });
}

function makeWritable(path: string): void {
  const stat = statSync(path);
  chmodSync(path, stat.isDirectory() ? 0o755 : 0o644);
  if (stat.isDirectory()) for (const entry of readdirSync(path)) makeWritable(join(path, entry));
}

/** Builds into a temporary folder beside `dir` under a lock, then renames it to `dir`. */
async function buildCached(
  dir: string,
  log: (line: string) => void,
  what: string,
  isDone: () => boolean,
  build: (tmp: string) => Promise<void>,
): Promise<void> {
  const parent = dirname(dir);
  mkdirSync(parent, { recursive: true });
  const release = await lockfile.lock(parent, {
    lockfilePath: `${dir}.build.lock`,
    stale: 30_000,
    update: 5_000,
    retries: { retries: 400, factor: 1, minTimeout: 3_000, maxTimeout: 3_000 },
  });
  try {
    if (isDone()) return; // another process finished the build while we waited
    rmSync(dir, { recursive: true, force: true }); // an incomplete leftover
    const tmp = mkdtempSync(`${dir}.build-`);
    const started = Date.now();
    log(`stopflow: building ${what} with Go into ${dir}; the first build takes a few minutes…`);
    try {
      await build(tmp);
      renameSync(tmp, dir);
    } catch (err) {
      rmSync(tmp, { recursive: true, force: true });
      throw err;
    }
    log(`stopflow: built ${what} in ${Math.round((Date.now() - started) / 1000)}s: ${dir}`);
  } finally {
    await release();
  }
}
