/**
 * Load: 1,000 stops running at the same time on ONE worker (its own dev
 * server, so the rest of the suite is not slowed down). Every volume takes a
 * few seconds to detach, so all stops are `stopping` together; every one must
 * end stopped with its volumes detached and nothing leaked. Prints start rate,
 * peak concurrency, throughput and latency.
 */
import { afterAll, beforeAll, expect, inject, test } from 'vitest';
import { MemorySimStore, type SeedVolume, SimulatedProvider } from '../../activities/providers/simulated';
import { workflowIdFor } from '../../common/names';
import type { StopStatus } from '../../common/status';
import type { DevServer } from '../../devserver/server';
import {
  type Clients,
  connectClients,
  type InProcessWorker,
  mapLimit,
  percentiles,
  report,
  runMs,
  size,
  startInProcessWorker,
  startOwnServer,
  uniqueId,
  uniqueTaskQueue,
} from '../support/robustness-helpers';

const STOPS = size(1_000, 150);
// One worker, tuned for many concurrent stops whose activities mostly wait on the backend.
const TUNING = { maxConcurrentWorkflowTaskExecutions: 100, maxConcurrentActivityTaskExecutions: 1_000 };

let server: DevServer;
let clients: Clients;
let worker: InProcessWorker;
const taskQueue = uniqueTaskQueue('load');
const sim = new SimulatedProvider(new MemorySimStore());

beforeAll(async () => {
  server = await startOwnServer();
  worker = await startInProcessWorker({
    address: server.address,
    taskQueue,
    providers: [sim],
    bundlePath: inject('workflowBundlePath'),
    pollIntervalMs: 1_000,
    holdMs: 5_000,
    maxPollIntervalMs: 2_000,
    tuning: TUNING,
  });
  clients = await connectClients(server.address, taskQueue);
});

afterAll(async () => {
  await clients?.close();
  await worker?.close();
  await server?.stop();
});

function volumesFor(i: number): SeedVolume[] {
  return Array.from({ length: 1 + (i % 2) }, (_, v) => ({
    volumeId: `vol-${v}`,
    behavior: { detachDelayMs: 4_000 + ((i + v) % 5) * 1_000 },
  }));
}

test(`${STOPS} concurrent stops on one worker all complete`, async () => {
  const stops = Array.from({ length: STOPS }, (_, i) => ({
    instanceId: uniqueId(`load-${i}`),
    volumes: volumesFor(i),
  }));
  for (const stop of stops) await sim.addInstance(stop.instanceId, stop.volumes);

  const t0 = Date.now();
  const handles = await mapLimit(stops, 50, (stop) =>
    clients.stopflow.stop({
      instanceId: stop.instanceId,
      volumes: stop.volumes.map((v) => ({ volumeId: v.volumeId })),
      requestedBy: 'robustness/load',
    }),
  );
  const startedIn = Date.now() - t0;
  expect(handles.every((h) => h.started)).toBe(true);
  // How many were running together once all had been requested.
  const cloudAtStart = await sim.store.read();
  const runningAtStart = stops.filter((s) => cloudAtStart.instances[s.instanceId]?.state === 'running').length;

  const results = await mapLimit(stops, 200, (stop) => clients.stopflow.result(stop.instanceId));
  const doneIn = Date.now() - t0;

  const cloud = await sim.store.read();
  let volumes = 0;
  for (const [i, stop] of stops.entries()) {
    const status = results[i] as StopStatus;
    expect(status.phase, stop.instanceId).toBe('stopped');
    expect(status.volumes.every((v) => v.state === 'detached')).toBe(true);
    volumes += status.volumes.length;
    const instance = cloud.instances[stop.instanceId];
    expect(instance?.state).toBe('stopped');
    expect(instance?.leakedAtStop).toEqual([]);
    expect(instance?.volumes.every((v) => v.detachStarts === 1 && v.forceCalls === 0)).toBe(true);
  }

  const descriptions = await mapLimit(stops, 50, (stop) =>
    clients.client.workflow.getHandle(workflowIdFor(stop.instanceId)).describe(),
  );
  const latency = percentiles(descriptions.map(runMs));
  const history = await clients.client.workflow.getHandle(workflowIdFor(stops[0]?.instanceId ?? '')).fetchHistory();
  report(
    'load',
    `${STOPS} stops (${volumes} volumes, each detaching in 4-8s) on one worker ` +
      `(maxConcurrentWorkflowTaskExecutions ${TUNING.maxConcurrentWorkflowTaskExecutions}, maxConcurrentActivityTaskExecutions ${TUNING.maxConcurrentActivityTaskExecutions}): ` +
      `all stopped, 0 leaked`,
  );
  report(
    'load',
    `requested in ${(startedIn / 1000).toFixed(1)}s (${((STOPS * 1000) / startedIn).toFixed(0)} starts/s), ${runningAtStart} still stopping once all were requested; ` +
      `all done in ${(doneIn / 1000).toFixed(1)}s = ${((STOPS * 1000) / doneIn).toFixed(1)} stops/s; stop duration ${latency.text}; ` +
      `${history.events?.length ?? 0} history events for a ${stops[0]?.volumes.length ?? 0}-volume stop`,
  );
}, 420_000);
