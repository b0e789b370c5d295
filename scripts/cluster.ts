/**
 * `npm run cluster`: the production shape of Temporal on this machine, the
 * one the cluster fault suite (test/cluster/) runs on: Temporal Server v1.29.1
 * on PostgreSQL 15 (4 history shards, SQL visibility), the search attributes
 * registered, and the Temporal UI pointed at it. Everything lives in a
 * temporary folder and is removed on Ctrl-C, SIGTERM or SIGHUP, at start-up too. The first run builds the server,
 * its SQL tool and the UI server with Go (docs/worker.md "The production
 * shape, as tested"). `--build-only` only builds (or finds) the binaries.
 */
import { type Cluster, startCluster } from '../devserver/cluster';
import { preferredPort } from '../devserver/ports';
import { resolveTemporalServer, resolveTemporalUiServer } from '../devserver/temporal-server';

// `--build-only` (CI): build or find the binaries, then exit; the test suite's first cluster then starts at once.
if (process.argv.includes('--build-only')) {
  const log = (line: string) => console.error(line);
  const server = await resolveTemporalServer({ log });
  const ui = await resolveTemporalUiServer({ log });
  console.log(`Temporal Server: ${server.server} (${server.source}); UI server: ${ui ?? 'none (see above)'}`);
  process.exit(0);
}

const [port, uiPort] = await Promise.all([preferredPort(7233), preferredPort(8233)]);
if (port !== 7233) {
  console.error('stopflow: port 7233 is taken (is a dev server already running?); using a free port instead.');
}

// A closed terminal (SIGHUP) must not crash this process on its next write: it still has to clean up.
process.stdout.on('error', () => undefined);
process.stderr.on('error', () => undefined);
const log = (line: string) => console.error(line);

// Ctrl-C, SIGTERM or SIGHUP, while starting or after: whatever was started is stopped and its folders removed,
// then the process exits with 128 + the signal's number. A second signal exits at once: the processes are then
// killed and the folders removed as this process exits (devserver/cluster.ts, devserver/postgres.ts).
const EXIT_CODES = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 } as const;
const abort = new AbortController();
let starting: Promise<Cluster> | undefined;
let stopping = false;
const onSignal = (signal: keyof typeof EXIT_CODES) => {
  const code = EXIT_CODES[signal];
  if (stopping) process.exit(code);
  stopping = true;
  log(`stopflow: ${signal}: stopping the cluster…`);
  abort.abort();
  void (async () => {
    try {
      const cluster = await starting?.catch(() => undefined); // an aborted start has cleaned up after itself
      await cluster?.stop();
    } catch (err) {
      log(`stopflow: stopping the cluster: ${(err as Error).message}`);
    } finally {
      process.exit(code);
    }
  })();
};
for (const signal of Object.keys(EXIT_CODES) as (keyof typeof EXIT_CODES)[]) {
  process.on(signal, () => onSignal(signal));
}

const started = Date.now();
log('stopflow: starting PostgreSQL and Temporal Server…');
starting = startCluster({ port, ui: { port: uiPort }, log, signal: abort.signal });
let cluster: Cluster;
try {
  cluster = await starting;
} catch (err) {
  // A signal that also reached a start step (Ctrl-C reaches the whole process group) may be handled just after.
  await new Promise((resolve) => setTimeout(resolve, 100));
  if (stopping) await new Promise(() => undefined); // the signal handler exits once it has cleaned up
  log(`stopflow: the cluster did not start: ${(err as Error).message}`);
  process.exit(1);
}
const steps = Object.entries(cluster.timings)
  .map(([step, ms]) => `${step} ${(ms / 1000).toFixed(1)}s`)
  .join(', ');
console.log(`Temporal cluster for stopflow, up in ${((Date.now() - started) / 1000).toFixed(1)}s (${steps})
  frontend  ${cluster.address}        (TEMPORAL_ADDRESS; namespace ${cluster.namespace})
  Web UI    ${cluster.uiUrl ?? `not started: ${cluster.uiError}. Point any Temporal UI at ${cluster.address}, e.g. docker run -e TEMPORAL_ADDRESS=host.docker.internal:${port} -p 8080:8080 temporalio/ui`}
  HTTP API  ${cluster.httpUrl}
  server    ${cluster.binaries.server} (pid ${cluster.serverPid()}), log ${cluster.serverLog}
  database  PostgreSQL on ${cluster.postgres.host}:${cluster.postgres.port} (user ${cluster.postgres.user}, databases temporal and temporal_visibility; its password, made for this run, is in ${cluster.postgres.passwordFile}), data in ${cluster.postgres.dataDir}
Run a worker against it: TEMPORAL_ADDRESS=${cluster.address} npm run worker
Press Ctrl-C to stop (everything above is removed).`);

// Keep the event loop alive until a signal arrives.
setInterval(() => undefined, 1 << 30);
