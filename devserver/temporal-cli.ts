/**
 * Finds the Temporal CLI (the dev server) for tests, the demo and
 * `npm run dev-server`. The SDK's own download cannot reach the internet on
 * every machine, so we look in this order:
 *   1. TEMPORAL_CLI_PATH
 *   2. `temporal` on PATH
 *   3. a cached build in the user's cache folder
 *   4. building it with `go install` into that cache (minutes, once)
 *   5. the SDK's download (machines with internet)
 */
import { spawn, spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { delimiter, join } from 'node:path';
import lockfile from 'proper-lockfile';

export const TEMPORAL_CLI_VERSION = 'v1.5.1';
export const TEMPORAL_CLI_MODULE = 'github.com/temporalio/cli/cmd/temporal';

export type TemporalCli =
  | { kind: 'path'; path: string; source: 'TEMPORAL_CLI_PATH' | 'PATH' | 'cache' | 'go-build' }
  | { kind: 'sdk-download' };

export class TemporalCliNotFoundError extends Error {
  override name = 'TemporalCliNotFoundError';
}

export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CACHE_HOME || join(homedir(), '.cache');
  return join(base, 'stopflow', `temporal-${TEMPORAL_CLI_VERSION}`);
}

/** An executable regular file (shared with devserver/temporal-server.ts). */
export function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

export function onPath(name: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  for (const dir of (env.PATH ?? '').split(delimiter)) {
    if (dir && isExecutable(join(dir, name))) return join(dir, name);
  }
  return undefined;
}

export interface ResolveOptions {
  env?: NodeJS.ProcessEnv;
  /** Where progress messages go (the first build takes minutes). */
  log?: (line: string) => void;
  /** Allow the SDK download as the last resort (default: true, unless CI where it cannot work). */
  allowSdkDownload?: boolean;
}

export async function resolveTemporalCli(options: ResolveOptions = {}): Promise<TemporalCli> {
  const env = options.env ?? process.env;
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));

  if (env.TEMPORAL_CLI_PATH !== undefined) {
    const path = env.TEMPORAL_CLI_PATH;
    if (!isExecutable(path)) {
      throw new TemporalCliNotFoundError(
        `TEMPORAL_CLI_PATH is set to "${path}", which is not an executable file. Point it at a Temporal CLI binary, or unset it to use \`temporal\` on PATH or a cached build.`,
      );
    }
    return { kind: 'path', path, source: 'TEMPORAL_CLI_PATH' };
  }

  const fromPath = onPath('temporal', env);
  if (fromPath) return { kind: 'path', path: fromPath, source: 'PATH' };

  const dir = cacheDir(env);
  const cached = join(dir, 'temporal');
  if (isExecutable(cached)) return { kind: 'path', path: cached, source: 'cache' };

  const go = onPath('go', env);
  if (go) {
    await buildWithGo(go, dir, env, log);
    return { kind: 'path', path: cached, source: 'go-build' };
  }

  if (options.allowSdkDownload ?? true) {
    log(
      'stopflow: no Temporal CLI found and no Go toolchain; falling back to the Temporal SDK download (needs internet).',
    );
    return { kind: 'sdk-download' };
  }
  throw new TemporalCliNotFoundError(notFoundMessage(dir));
}

export function notFoundMessage(dir: string): string {
  return [
    'stopflow: no Temporal CLI available. Provide it one of three ways:',
    '  1. set TEMPORAL_CLI_PATH to a `temporal` binary,',
    '  2. put `temporal` on PATH,',
    `  3. install Go so stopflow can build ${TEMPORAL_CLI_MODULE}@${TEMPORAL_CLI_VERSION} into ${dir}.`,
  ].join('\n');
}

/**
 * Builds into a private temporary folder and renames the binary into place,
 * under a lock, so two processes resolving at once neither corrupt the cache
 * nor build twice.
 */
async function buildWithGo(
  go: string,
  dir: string,
  env: NodeJS.ProcessEnv,
  log: (line: string) => void,
): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const target = join(dir, 'temporal');
  const release = await lockfile.lock(dir, {
    lockfilePath: join(dir, '.build.lock'),
    stale: 30_000,
    update: 5_000,
    retries: { retries: 200, factor: 1, minTimeout: 3_000, maxTimeout: 3_000 },
  });
  try {
    if (isExecutable(target)) return; // another process finished the build while we waited
    const tmp = mkdtempSync(join(dir, '.build-'));
    const started = Date.now();
    log(
      `stopflow: building the Temporal CLI ${TEMPORAL_CLI_VERSION} with Go into ${dir}; the first build takes a few minutes…`,
    );
    const code = await new Promise<number>((resolve, reject) => {
      const child = spawn(go, ['install', `${TEMPORAL_CLI_MODULE}@${TEMPORAL_CLI_VERSION}`], {
        env: { ...env, GOBIN: tmp, CGO_ENABLED: env.CGO_ENABLED ?? '0' },
        stdio: ['ignore', 'inherit', 'inherit'],
      });
      child.on('error', reject);
      child.on('exit', (c) => resolve(c ?? 1));
    });
    if (code !== 0 || !existsSync(join(tmp, 'temporal'))) {
      rmSync(tmp, { recursive: true, force: true });
      throw new TemporalCliNotFoundError(
        `stopflow: \`go install ${TEMPORAL_CLI_MODULE}@${TEMPORAL_CLI_VERSION}\` failed (exit ${code}); see its output above.\n${notFoundMessage(dir)}`,
      );
    }
    renameSync(join(tmp, 'temporal'), target);
    rmSync(tmp, { recursive: true, force: true });
    log(`stopflow: built the Temporal CLI in ${Math.round((Date.now() - started) / 1000)}s: ${target}`);
  } finally {
    await release();
  }
}

/** `temporal --version`, for logs and benchmark reports. */
export function cliVersion(path: string): string {
  const out = spawnSync(path, ['--version'], { encoding: 'utf8' });
  return (out.stdout || out.stderr || '').trim();
}
