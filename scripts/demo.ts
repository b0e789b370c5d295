/**
 * `npm run demo`: the main job end to end. Brings up a real Temporal dev
 * server (or uses the one at TEMPORAL_ADDRESS) and a worker, seeds a simulated
 * instance with one healthy and one stuck volume, stops it with a short
 * maxStopDuration while showing progress, then prints the result and the link
 * to its history in the Temporal UI.
 */
import { mkdirSync } from 'node:fs';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime } from '@temporalio/worker';
import { FileSimStore, SimulatedProvider } from '../activities/providers/simulated';
import { StopFailedError, StopflowClient } from '../client/stopflow-client';
import { workflowIdFor } from '../common/names';
import type { StopStatus } from '../common/status';
import { preferredPort } from '../devserver/ports';
import { type DevServer, startDevServer } from '../devserver/server';
import { createStopflowWorker } from '../worker/worker';

const MAX_STOP_DURATION = '8s';
const say = (line: string) => console.log(line);

Runtime.install({ logger: new DefaultLogger('ERROR') });
mkdirSync('.stopflow', { recursive: true });

let server: DevServer | undefined;
let address = process.env.TEMPORAL_ADDRESS;
let uiUrl = process.env.TEMPORAL_UI_URL ?? 'http://localhost:8233';
if (!address) {
  say('1. Starting a Temporal dev server (history kept in .stopflow/temporal.sqlite)…');
  const [port, uiPort, httpPort] = await Promise.all([preferredPort(7233), preferredPort(8233), preferredPort(7243)]);
  server = await startDevServer({ port, uiPort, httpPort, dbFilename: '.stopflow/temporal.sqlite' });
  address = server.address;
  uiUrl = server.uiUrl ?? uiUrl;
  say(`   gRPC ${address}, UI ${uiUrl}, HTTP API ${server.httpUrl}`);
} else {
  say(`1. Using the Temporal server at ${address}`);
}

let exitCode = 0;
try {
  const taskQueue = `stopflow-demo-${process.pid}`;
  const sim = new SimulatedProvider(new FileSimStore('.stopflow/sim-cloud.json'));
  const connection = await NativeConnection.connect({ address });
  const worker = await createStopflowWorker({
    connection,
    taskQueue,
    providers: [sim],
    pollIntervalMs: 500,
    holdMs: 3_000,
    maxPollIntervalMs: 2_000,
  });
  say(`2. Worker polling task queue ${taskQueue} with the simulated cloud (.stopflow/sim-cloud.json)`);

  const client = new Client({ connection: await Connection.connect({ address }) });
  const stopflow = new StopflowClient({ client, taskQueue });
  const instanceId = `demo-${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '')}`;
  await sim.addInstance(instanceId, [
    { volumeId: 'vol-healthy', device: '/dev/xvdf', behavior: { detachDelayMs: 2_000 } },
    { volumeId: 'vol-stuck', device: '/dev/xvdg', behavior: { hang: true } },
  ]);
  say(`3. Seeded instance ${instanceId}: vol-healthy detaches in 2s, vol-stuck hangs in "detaching" until forced`);

  await worker.runUntil(async () => {
    say(`4. Stopping ${instanceId} with maxStopDuration ${MAX_STOP_DURATION}:`);
    await stopflow.stop({
      instanceId,
      maxStopDuration: MAX_STOP_DURATION,
      requestedBy: 'npm run demo',
      reason: 'demo',
    });
    const final = await followProgress(stopflow, instanceId);
    say('5. Result:');
    say(
      `   instance ${final.instanceId}: ${final.phase}${final.instanceStopped ? ' (instance stopped)' : ' (instance NOT stopped)'}`,
    );
    if (final.escalation) say(`   escalated: ${final.escalation.cause} at ${final.escalation.at}`);
    for (const v of final.volumes) say(`   ${v.volumeId}: ${v.state}${v.lastError ? ` (${v.lastError})` : ''}`);
    const cloud = await sim.instance(instanceId);
    say(
      `   the simulated cloud agrees: instance ${cloud?.state}, ${cloud?.volumes.map((v) => `${v.volumeId} ${v.state}${v.forced ? ' (forced)' : ''}`).join(', ')}`,
    );
    say(`6. Audit log: ${uiUrl}/namespaces/default/workflows/${workflowIdFor(instanceId)}`);
    if (final.phase !== 'stopped') exitCode = 1;
  });
  await connection.close();
  await client.connection.close();
} finally {
  if (server) {
    if (process.stdout.isTTY && process.env.CI !== 'true') {
      say('The dev server keeps running so you can open the link. Press Ctrl-C to stop it.');
      await new Promise<void>((resolve) => {
        process.once('SIGINT', () => resolve());
        process.once('SIGTERM', () => resolve());
      });
    } else {
      say('(Run `npm run dev-server` to browse this history later: it is kept in .stopflow/temporal.sqlite.)');
    }
    await server.stop();
  }
}
process.exit(exitCode);

/** Prints each change of the stop's status as it happens, until the stop ends. */
async function followProgress(stopflow: StopflowClient, instanceId: string): Promise<StopStatus> {
  const started = Date.now();
  const seen = new Map<string, string>();
  const result = stopflow.result(instanceId).then(
    (status) => status,
    (err: unknown) => {
      if (err instanceof StopFailedError && err.status) return err.status;
      throw err;
    },
  );
  let done = false;
  void result.finally(() => {
    done = true;
  });
  const show = (status: StopStatus) => {
    const elapsed = `${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s`;
    const facts: Array<[string, string]> = [
      ['phase', status.phase],
      ['escalation', status.escalation ? `${status.escalation.cause}: force-detaching what is left` : ''],
      ...status.volumes.map((v): [string, string] => [
        v.volumeId,
        v.attempts > 0 ? `${v.state} (${v.attempts} request(s))` : v.state,
      ]),
    ];
    for (const [key, value] of facts) {
      if (value && seen.get(key) !== value) {
        seen.set(key, value);
        say(`   ${elapsed}  ${key.padEnd(12)} ${value}`);
      }
    }
  };
  while (!done) {
    show(await stopflow.status(instanceId));
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  const final = await result;
  show(final);
  return final;
}
