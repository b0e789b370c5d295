/**
 * `npm run cluster`: the production shape of Temporal on this machine, the
 * one the cluster fault suite (test/cluster/) runs on: Temporal Server v1.29.1
 * on PostgreSQL 15 (4 history shards, SQL visibility), the search attributes
 * registered, and the Temporal UI pointed at it. Everything lives in a
 * temporary folder and is removed on Ctrl-C. The first run builds the server,
 * its SQL tool and the UI server with Go (docs/worker.md "The production
 * shape, as tested"). `--build-only` only builds (or finds) the binaries.
 */
import { startCluster } from '../devserver/cluster';
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
// Ctrl-C while starting: exit at once (the database and server processes are killed with this one).
const early = () => process.exit(130);
process.once('SIGINT', early);
const started = Date.now();
const log = (line: string) => console.error(line);
log('stopflow: starting PostgreSQL and Temporal Server…');
const cluster = await startCluster({ port, ui: { port: uiPort }, log });
const steps = Object.entries(cluster.timings)
  .map(([step, ms]) => `${step} ${(ms / 1000).toFixed(1)}s`)
  .join(', ');
console.log(`Temporal cluster for stopflow, up in ${((Date.now() - started) / 1000).toFixed(1)}s (${steps})
  frontend  ${cluster.address}        (TEMPORAL_ADDRESS; namespace ${cluster.namespace})
  Web UI    ${cluster.uiUrl ?? `not started: ${cluster.uiError}. Point any Temporal UI at ${cluster.address}, e.g. docker run -e TEMPORAL_ADDRESS=host.docker.internal:${port} -p 8080:8080 temporalio/ui`}
  HTTP API  ${cluster.httpUrl}
  server    ${cluster.binaries.server} (pid ${cluster.serverPid()}), log ${cluster.serverLog}
  database  PostgreSQL on ${cluster.postgres.host}:${cluster.postgres.port} (user ${cluster.postgres.user}, databases temporal and temporal_visibility), data in ${cluster.postgres.dataDir}
Run a worker against it: TEMPORAL_ADDRESS=${cluster.address} npm run worker
Press Ctrl-C to stop (everything above is removed).`);

process.removeListener('SIGINT', early);
let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  console.error('stopflow: stopping the cluster…');
  await cluster.stop();
  process.exit(0);
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
// Keep the event loop alive until a signal arrives.
setInterval(() => undefined, 1 << 30);
