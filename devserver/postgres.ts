/**
 * A throwaway PostgreSQL for the cluster profile (devserver/cluster.ts): a new
 * data directory in a temporary folder, a free port on 127.0.0.1, password
 * (SCRAM) authentication for the `temporal` user with a random password made
 * for it, and durability settings traded for speed (it is thrown away at the
 * end). It can be stopped and started again on
 * the same directory and port (the fault suite takes the database away for a
 * while), and is stopped by `destroy()`, which removes the directory.
 *
 * The binaries (initdb, postgres) are looked for on PATH, then in Debian's
 * /usr/lib/postgresql/<version>/bin (the `postgresql` package), newest first.
 * PostgreSQL refuses to run as root: as root, it runs as the `postgres` user
 * that package creates.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chownSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { freePort } from './ports';
import { onPath } from './temporal-cli';
import { minimalEnv } from './temporal-server';

export const POSTGRES_USER = 'temporal';

export interface PostgresBinaries {
  initdb: string;
  postgres: string;
  binDir: string;
}

export class PostgresNotFoundError extends Error {
  override name = 'PostgresNotFoundError';
}

export function findPostgres(env: NodeJS.ProcessEnv = process.env): PostgresBinaries {
  const initdb = onPath('initdb', env);
  const postgres = onPath('postgres', env);
  // The folder the binary really is in (PATH often holds links to it), where psql and the other tools are too.
  if (initdb && postgres) return { initdb, postgres, binDir: dirname(realpathSync(postgres)) };
  const debian = '/usr/lib/postgresql';
  const versions = existsSync(debian)
    ? readdirSync(debian)
        .filter((v) => /^\d+$/.test(v))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  for (const version of versions) {
    const binDir = join(debian, version, 'bin');
    if (existsSync(join(binDir, 'initdb')) && existsSync(join(binDir, 'postgres'))) {
      return { initdb: join(binDir, 'initdb'), postgres: join(binDir, 'postgres'), binDir };
    }
  }
  throw new PostgresNotFoundError(
    'stopflow: the cluster profile needs PostgreSQL (initdb and postgres), on PATH or in /usr/lib/postgresql/<version>/bin: `apt-get install postgresql` on Debian.',
  );
}

/** uid/gid to run PostgreSQL as: ourselves, or the `postgres` user when we are root. */
function runAs(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const id = (flag: string) => Number(spawnSync('id', [flag, 'postgres'], { encoding: 'utf8' }).stdout.trim());
  const uid = id('-u');
  const gid = id('-g');
  if (!Number.isInteger(uid) || uid <= 0 || !Number.isInteger(gid)) {
    throw new PostgresNotFoundError(
      "stopflow: PostgreSQL does not run as root, and there is no `postgres` user to run it as (Debian's postgresql package creates one).",
    );
  }
  return { uid, gid };
}

export interface PostgresOptions {
  port?: number;
  env?: NodeJS.ProcessEnv;
  log?: (line: string) => void;
  /** Aborts the start: what was started is stopped and removed, and the promise rejects. */
  signal?: AbortSignal;
}

export interface Postgres {
  host: string;
  port: number;
  user: string;
  /** The `temporal` user's password: random, made for this database. */
  password: string;
  /** The same password in a file only its owner reads (mode 0600), as initdb was given it. */
  passwordFile: string;
  /** Where initdb and postgres (and psql, where installed) are. */
  binDir: string;
  dataDir: string;
  logFile: string;
  /** pid of the running postmaster, undefined while stopped. */
  pid(): number | undefined;
  /** Fast shutdown (SIGINT): connections are closed, the data kept. */
  stop(): Promise<void>;
  /** Starts again on the same directory and port. */
  start(): Promise<void>;
  /** Stops it and removes its directory. */
  destroy(): Promise<void>;
}

/**
 * The environment PostgreSQL gets: PATH and the C locale, nothing else of ours (no tokens, keys or secrets the
 * harness's environment may hold).
 */
function postgresEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return minimalEnv(env, { LC_ALL: 'C', LANG: 'C' }, ['PATH', 'TMPDIR', 'TZ']);
}

export async function startPostgres(options: PostgresOptions = {}): Promise<Postgres> {
  const env = options.env ?? process.env;
  const signal = options.signal;
  signal?.throwIfAborted();
  const bin = findPostgres(env);
  const owner = runAs();
  const root = mkdtempSync(join(tmpdir(), 'stopflow-pg-'));
  const dataDir = join(root, 'data');
  const socketDir = join(root, 'socket');
  const logFile = join(root, 'postgres.log');
  const passwordFile = join(root, 'password');
  const password = randomBytes(24).toString('hex');
  const spawnOptions = { env: postgresEnv(env), ...(owner ?? {}) };
  let port = 0;
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();

  // Should this process exit without destroying it (a crash, a second Ctrl-C): immediate shutdown, then the
  // folder goes. Synchronous, as an exit hook must be.
  const onExit = () => {
    const proc = child;
    if (proc?.pid !== undefined && proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGQUIT');
      waitForExitSync(proc.pid, 5_000);
    }
    rmSync(root, { recursive: true, force: true, maxRetries: 3 });
  };
  process.once('exit', onExit);

  const stop = async () => {
    const proc = child;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) {
      child = undefined;
      return;
    }
    proc.kill('SIGINT');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 30_000);
    await exited;
    clearTimeout(timer);
    child = undefined;
  };

  const destroy = async () => {
    try {
      await stop();
    } finally {
      process.removeListener('exit', onExit);
      rmSync(root, { recursive: true, force: true, maxRetries: 3 });
    }
  };

  /** Starts the postmaster; `abort` counts only for the first start (startPostgres's signal). */
  const launch = async (abort?: AbortSignal) => {
    const out = openSync(logFile, 'a');
    if (owner) chownSync(logFile, owner.uid, owner.gid);
    const from = statSync(logFile).size; // this run's part of the log
    const started = Date.now();
    const proc = spawn(
      bin.postgres,
      [
        '-D',
        dataDir,
        '-p',
        String(port),
        '-c',
        'listen_addresses=127.0.0.1',
        '-c',
        `unix_socket_directories=${socketDir}`,
        '-c',
        'max_connections=300',
        // Thrown away at the end: no need to survive an operating system crash.
        '-c',
        'fsync=off',
        '-c',
        'synchronous_commit=off',
        '-c',
        'full_page_writes=off',
        '-c',
        'shared_buffers=64MB',
      ],
      { ...spawnOptions, stdio: ['ignore', out, out] },
    );
    closeSync(out);
    child = proc;
    exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    // Ready when it accepts connections (and says so in its log); a failed start says why. One that does not come
    // up (or an abort) is stopped before the error is thrown: no postmaster is left behind.
    try {
      for (;;) {
        if (proc.exitCode !== null || proc.signalCode !== null) {
          throw new Error(`postgres exited (code ${proc.exitCode}) while starting: ${since(logFile, from)}`);
        }
        abort?.throwIfAborted();
        if (since(logFile, from).includes('ready to accept connections') && (await accepts(port))) break;
        if (Date.now() - started > 60_000) {
          throw new Error(`postgres did not start within 60s: ${since(logFile, from)}`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    } catch (err) {
      await stop().catch(() => undefined);
      throw err;
    }
  };

  try {
    mkdirSync(dataDir, { mode: 0o700 });
    mkdirSync(socketDir, { mode: 0o700 });
    writeFileSync(passwordFile, `${password}\n`, { mode: 0o600 });
    if (owner) for (const path of [root, dataDir, socketDir, passwordFile]) chownSync(path, owner.uid, owner.gid);
    port = options.port ?? (await freePort());
    // A password (SCRAM) on TCP and on the socket alike: no `trust`, so no other local user gets in as the
    // superuser. The password reaches initdb in a file, never on a command line.
    const init = spawnSync(
      bin.initdb,
      [
        '-D',
        dataDir,
        '-U',
        POSTGRES_USER,
        '--auth-host=scram-sha-256',
        '--auth-local=scram-sha-256',
        `--pwfile=${passwordFile}`,
        '--encoding=UTF8',
        '--no-sync',
        '--no-instructions',
      ],
      { ...spawnOptions, encoding: 'utf8' },
    );
    if (init.status !== 0) {
      throw new PostgresNotFoundError(`stopflow: initdb failed (exit ${init.status}): ${init.stderr || init.stdout}`);
    }
    signal?.throwIfAborted();
    await launch(signal);
  } catch (err) {
    await destroy().catch(() => undefined);
    throw err;
  }
  return {
    host: '127.0.0.1',
    port,
    user: POSTGRES_USER,
    password,
    passwordFile,
    binDir: bin.binDir,
    dataDir,
    logFile,
    pid: () => (child && child.exitCode === null && child.signalCode === null ? child.pid : undefined),
    stop,
    async start() {
      if (child) return;
      await launch();
    },
    destroy,
  };
}

/**
 * Waits, without the event loop (in an exit hook), until process `pid`, our child, has exited: its
 * /proc/<pid>/stat shows it a zombie (nothing reaps it meanwhile) or it is gone. At most `ms`.
 */
function waitForExitSync(pid: number, ms: number): void {
  const deadline = Date.now() + ms;
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  while (Date.now() < deadline) {
    let state: string | undefined;
    try {
      state = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ').at(-1)?.[0];
    } catch {
      return;
    }
    if (state === undefined || state === 'Z' || state === 'X') return;
    Atomics.wait(sleeper, 0, 0, 20);
  }
}

/** The log from byte `from` on (its last 4,000 characters). */
function since(file: string, from: number): string {
  try {
    return readFileSync(file).subarray(from).toString('utf8').slice(-4_000);
  } catch {
    return '';
  }
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
