/**
 * `npm run dev-server`: a real Temporal dev server for stopflow with the Web
 * UI, the HTTP API, the search attributes registered, and history kept in
 * .stopflow/temporal.sqlite so it survives restarts. Ctrl-C stops it.
 */
import { mkdirSync } from 'node:fs';
import { preferredPort } from '../devserver/ports';
import { startDevServer } from '../devserver/server';

const DB = '.stopflow/temporal.sqlite';
mkdirSync('.stopflow', { recursive: true });
const [port, uiPort, httpPort] = await Promise.all([preferredPort(7233), preferredPort(8233), preferredPort(7243)]);
if (port !== 7233) {
  console.error('stopflow: port 7233 is taken (is a dev server already running?); using a free port instead.');
}
const server = await startDevServer({ port, uiPort, httpPort, dbFilename: DB });
console.log(`Temporal dev server for stopflow (${server.cliPath ?? 'SDK download'})
  gRPC      ${server.address}        (TEMPORAL_ADDRESS)
  Web UI    ${server.uiUrl}
  HTTP API  ${server.httpUrl}
  history   ${DB}
  search attributes StopPhase (Keyword), StopCause (Keyword), StopForced (Bool), StopVolumes (KeywordList) registered
Press Ctrl-C to stop.`);

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  await server.stop();
  process.exit(0);
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
// Keep the event loop alive until a signal arrives.
setInterval(() => undefined, 1 << 30);
