/**
 * Server restart: this part's own dev server, persisted in a SQLite file on a
 * fixed port, is stopped in the middle of 50 stops and started again on the
 * same port and file. The same worker (one NativeConnection to that address)
 * carries on when the server is back, and all 50 stops complete with the
 * right outcome: healthy ones graceful, stuck ones forced when their short
 * maxStopDuration expires (during or after the outage), none leaked.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, inject, test } from 'vitest';
import { MemorySimStore, type SeedVolume, SimulatedProvider } from '../../activities/providers/simulated';
import { workflowIdFor } from '../../common/names';
import type { StopStatus } from '../../common/status';
import { freePort } from '../../devserver/ports';
import type { DevServer } from '../../devserver/server';
import { eventually } from '../helpers';
import {
  type Clients,
  connectClients,
  type InProcessWorker,
  mapLimit,
  report,
  size,
  sleep,
  startInProcessWorker,
  startOwnServer,
  uniqueId,
  uniqueTaskQueue,
} from '../support/robustness-helpers';

const STOPS = size(50, 12);
const OUTAGE_MS = 10_000;

interface Planned {
  instanceId: string;
  volumes: SeedVolume[];
  listed: boolean;
  maxStopDuration?: string;
  mustForce: string[];
  cause: 'graceful' | 'timeout';
}

let port: number;
let dbFilename: string;
let server: DevServer | undefined;
const taskQueue = uniqueTaskQueue('restart');
const sim = new SimulatedProvider(new MemorySimStore());
const extraWorkers: InProcessWorker[] = [];
let worker: InProcessWorker | undefined;
let clients: Clients | undefined;

const start = () => startOwnServer({ port, dbFilename });

beforeAll(async () => {
  port = await freePort();
  dbFilename = join(mkdtempSync(join(tmpdir(), 'stopflow-restart-')), 'temporal.sqlite');
  server = await start();
});

afterAll(async () => {
  await clients?.close().catch(() => undefined);
  for (const w of [...extraWorkers, worker]) await w?.close();
  await server?.stop();
});

function plan(i: number): Planned {
  const instanceId = uniqueId(`restart-${i}`);
  if (i % 5 === 4) {
    // Stuck until a short deadline, which expires around the outage.
    return {
      instanceId,
      volumes: [{ volumeId: 'vol-ok' }, { volumeId: 'vol-stuck', behavior: { hang: true } }],
      listed: false,
      maxStopDuration: `${8 + (i % 4) * 3}s`,
      mustForce: ['vol-stuck'],
      cause: 'timeout',
    };
  }
  // Healthy, but slow enough that many are mid-detach when the server goes away.
  const count = 1 + (i % 3);
  return {
    instanceId,
    volumes: Array.from({ length: count }, (_, v) => ({
      volumeId: `vol-${v}`,
      behavior: { detachDelayMs: 1_000 + ((i * 7 + v * 3) % 12) * 1_000, failFirst: i % 7 === 0 ? 2 : 0 },
    })),
    listed: i % 4 === 1, // some stops ask the provider which volumes are attached
    mustForce: [],
    cause: 'graceful',
  };
}

test(`the dev server restarts (same port and SQLite file) in the middle of ${STOPS} stops; all complete`, async () => {
  if (!server) throw new Error('no server');
  const t0 = Date.now();
  const address = server.address;
  // The same worker settings for the first worker and any that must take over.
  const workerOptions = {
    address,
    taskQueue,
    providers: [sim],
    bundlePath: inject('workflowBundlePath'),
    pollIntervalMs: 300,
    holdMs: 3_000,
    maxPollIntervalMs: 2_000,
  };
  worker = await startInProcessWorker(workerOptions);
  let workerDied: unknown;
  worker.running.catch((err: unknown) => {
    workerDied = err;
  });
  clients = await connectClients(address, taskQueue);
  const c = clients;

  const stops = Array.from({ length: STOPS }, (_, i) => plan(i));
  for (const stop of stops) await sim.addInstance(stop.instanceId, stop.volumes);
  await mapLimit(stops, 10, async (stop) => {
    await c.stopflow.stop({
      instanceId: stop.instanceId,
      ...(stop.listed ? {} : { volumes: stop.volumes.map((v) => ({ volumeId: v.volumeId })) }),
      ...(stop.maxStopDuration ? { maxStopDuration: stop.maxStopDuration } : {}),
    });
  });

  // Mid-way: some stops done, most still detaching.
  const stoppedCount = async () =>
    (await Promise.all(stops.map((s) => sim.instance(s.instanceId)))).filter((i) => i?.state === 'stopped').length;
  await eventually(async () => (await stoppedCount()) >= Math.ceil(STOPS / 5), 'a fifth of the stops to be done');
  const doneBefore = await stoppedCount();
  const restartT = Date.now();
  await server.stop();
  server = undefined;
  const stoppedIn = Date.now() - restartT;
  await sleep(OUTAGE_MS);
  const doneDuringOutage = (await stoppedCount()) - doneBefore;
  const upT = Date.now();
  server = await start();
  expect(server.address).toBe(address);
  const upIn = Date.now() - upT;
  report(
    'restart',
    `server stopped (${stoppedIn}ms) with ${doneBefore}/${STOPS} stops done, down for ${(OUTAGE_MS / 1000).toFixed(0)}s ` +
      `(${doneDuringOutage} more reached the cloud meanwhile), back on ${address} with the same SQLite file in ${upIn}ms`,
  );

  // The worker keeps its connection to the address; should it have died, a new one takes over (and we say so).
  await sleep(2_000);
  let workerNote = 'the same worker carried on (its NativeConnection reconnected by itself)';
  if (workerDied !== undefined || worker.worker.getState() !== 'RUNNING') {
    workerNote = `the worker died (${String(workerDied)}); a new worker took over`;
    extraWorkers.push(worker);
    worker = await startInProcessWorker(workerOptions);
  }

  const results = await mapLimit(stops, 10, async (stop) => {
    const handle = c.client.workflow.getHandle(workflowIdFor(stop.instanceId));
    await eventually(
      async () => (await handle.describe()).status.name !== 'RUNNING',
      `${stop.instanceId} to complete after the restart`,
      150_000,
    );
    return (await handle.result()) as StopStatus;
  });
  const doneAt = Date.now();

  let duplicateStops = 0;
  let duplicateDetachStarts = 0;
  for (const [i, stop] of stops.entries()) {
    const status = results[i] as StopStatus;
    const label = stop.instanceId;
    expect(status.phase, label).toBe('stopped');
    expect(status.escalation?.cause ?? 'graceful', label).toBe(stop.cause);
    expect(status.volumes.map((v) => v.volumeId).sort(), label).toEqual(stop.volumes.map((v) => v.volumeId).sort());
    for (const v of status.volumes) {
      // A healthy volume of a stop with a deadline may be forced too: if the outage (or a loaded machine) kept
      // its detach from being confirmed before the deadline, forcing it is the promised behaviour. Without a
      // deadline nothing may be forced.
      const allowed = stop.mustForce.includes(v.volumeId)
        ? ['force_detached']
        : stop.maxStopDuration
          ? ['detached', 'force_detached']
          : ['detached'];
      expect(allowed, `${label} ${v.volumeId}: ${v.state}`).toContain(v.state);
    }
    const cloud = await sim.instance(stop.instanceId);
    expect(cloud?.state, label).toBe('stopped');
    expect(cloud?.leakedAtStop, label).toEqual([]);
    // stopInstance is idempotent: a call whose completion was lost in the outage is retried, never skipped.
    expect(cloud?.stopCalls ?? 0, label).toBeGreaterThanOrEqual(1);
    duplicateStops += Math.max(0, (cloud?.stopCalls ?? 0) - 1);
    for (const v of cloud?.volumes ?? []) {
      expect(v.state, `${label} ${v.volumeId}`).toBe('detached');
      const recorded = status.volumes.find((r) => r.volumeId === v.volumeId)?.state;
      // Never forced behind the workflow's back; the stuck ones always forced. (A healthy volume the workflow
      // forced may already have detached in the cloud, where force then changes nothing.)
      if (recorded !== 'force_detached') expect(v.forced, `${label} ${v.volumeId}`).toBe(false);
      if (stop.mustForce.includes(v.volumeId)) expect(v.forced, `${label} ${v.volumeId}`).toBe(true);
      duplicateDetachStarts += Math.max(0, v.detachStarts - 1);
    }
  }
  expect(duplicateDetachStarts).toBe(0);

  const forced = stops.filter((s) => s.cause === 'timeout').length;
  report(
    'restart',
    `${workerNote}; all ${STOPS} stops ended stopped (${STOPS - forced} graceful, ${forced} timeout with the stuck volume forced), ` +
      `none leaked; last one done ${((doneAt - upT) / 1000).toFixed(1)}s after the server came back; ` +
      `stopInstance repeated for ${duplicateStops} stop(s) whose completion was lost; part took ${((doneAt - t0) / 1000).toFixed(1)}s`,
  );
}, 300_000);
