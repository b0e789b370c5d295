/**
 * Faults: a simulated backend where 30% of all provider calls fail
 * transiently and every call takes a random 0-50ms. 200 stops of 1 to 8
 * volumes (some listed by the provider, which fails too) all end `stopped`,
 * every volume detached gracefully — transient errors are retried, never
 * escalated — and no instance is stopped with a volume still attached.
 */
import { afterAll, beforeAll, expect, inject, test } from 'vitest';
import type { ProviderEvent } from '../../activities';
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

const STOPS = size(200, 40);
const FAILURE_RATE = 0.3;
/**
 * Generous on purpose: today one failed provider call fails a whole detach attempt, and retry backoff
 * grows to 1 minute, so the slowest of 900 volumes needs ~10 attempts and ~7 minutes (measured 437s).
 * With transient errors retried inside the detach activity's hold window, all 200 stops end in ~40s.
 */
const TIMEOUT_MS = 300_000;

let server: DevServer;
let clients: Clients;
let worker: InProcessWorker;
const taskQueue = uniqueTaskQueue('faults');
const sim = new SimulatedProvider(new MemorySimStore(), { transientFailureRate: FAILURE_RATE, latencyMs: [0, 50] });
const calls = new Map<string, number>();
const errors = new Map<string, number>();
const bump = (map: Map<string, number>, key: string) => map.set(key, (map.get(key) ?? 0) + 1);

beforeAll(async () => {
  server = await startOwnServer();
  worker = await startInProcessWorker({
    address: server.address,
    taskQueue,
    providers: [sim],
    bundlePath: inject('workflowBundlePath'),
    pollIntervalMs: 500,
    holdMs: 3_000,
    maxPollIntervalMs: 2_000,
    observe: (event: ProviderEvent) => bump(event.kind === 'call' ? calls : errors, event.operation),
    // Up to 900 detach waits at once; each mostly sleeps between checks.
    tuning: { maxConcurrentActivityTaskExecutions: 400 },
  });
  clients = await connectClients(server.address, taskQueue);
});

afterAll(async () => {
  await clients?.close();
  await worker?.close();
  await server?.stop();
});

/** A deterministic spread of sizes and speeds: 1..8 volumes, detaches from instant to 3s. */
function volumesFor(i: number): SeedVolume[] {
  const count = 1 + ((i * 5) % 8);
  return Array.from({ length: count }, (_, v) => ({
    volumeId: `vol-${v}`,
    device: `/dev/xvd${String.fromCharCode(102 + v)}`,
    behavior: { detachDelayMs: ((i + v) % 4) * 1_000 },
  }));
}

test(
  `${STOPS} stops of 1 to 8 volumes with ${FAILURE_RATE * 100}% of provider calls failing transiently all end stopped`,
  async () => {
    const t0 = Date.now();
    const stops = Array.from({ length: STOPS }, (_, i) => ({
      instanceId: uniqueId(`faults-${i}`),
      volumes: volumesFor(i),
      listed: i % 3 === 0,
    }));
    for (const stop of stops) await sim.addInstance(stop.instanceId, stop.volumes);
    await mapLimit(stops, 20, (stop) =>
      clients.stopflow.stop({
        instanceId: stop.instanceId,
        ...(stop.listed ? {} : { volumes: stop.volumes.map((v) => ({ volumeId: v.volumeId, device: v.device })) }),
      }),
    );
    const startedAt = Date.now();

    // Progress every 30s: the tail is retry backoff, so it is worth seeing in CI logs.
    let done = 0;
    const progress = setInterval(
      () => report('faults', `${done}/${STOPS} stops done after ${((Date.now() - startedAt) / 1000).toFixed(0)}s`),
      30_000,
    );
    let results: StopStatus[];
    try {
      results = await mapLimit(stops, 50, async (stop) => {
        const status = await clients.stopflow.result(stop.instanceId);
        done++;
        return status;
      });
    } finally {
      clearInterval(progress);
    }
    const doneAt = Date.now();

    let volumes = 0;
    let detachAttempts = 0;
    for (const [i, stop] of stops.entries()) {
      const status = results[i] as StopStatus;
      expect(status.phase, stop.instanceId).toBe('stopped');
      expect(status.instanceStopped).toBe(true);
      expect(status.escalation, `${stop.instanceId}: transient errors must never escalate`).toBeNull();
      expect(status.volumes.map((v) => v.volumeId).sort()).toEqual(stop.volumes.map((v) => v.volumeId).sort());
      for (const v of status.volumes) {
        expect(v.state, `${stop.instanceId} ${v.volumeId}`).toBe('detached');
        detachAttempts += v.attempts;
      }
      volumes += status.volumes.length;
      const cloud = await sim.instance(stop.instanceId);
      expect(cloud?.state).toBe('stopped');
      expect(cloud?.leakedAtStop, `${stop.instanceId} stopped with a volume attached`).toEqual([]);
      for (const v of cloud?.volumes ?? []) {
        expect(v.state).toBe('detached');
        expect(v.forceCalls).toBe(0);
        expect(v.detachStarts).toBe(1);
      }
    }

    const descriptions = await mapLimit(stops, 20, (stop) =>
      clients.client.workflow.getHandle(workflowIdFor(stop.instanceId)).describe(),
    );
    const durations = percentiles(descriptions.map(runMs));
    const totalCalls = [...calls.values()].reduce((a, b) => a + b, 0);
    const totalErrors = [...errors.values()].reduce((a, b) => a + b, 0);
    expect(totalErrors / totalCalls).toBeGreaterThan(FAILURE_RATE / 2); // the faults really were injected
    const perOp = [...calls].map(([op, n]) => `${op} ${errors.get(op) ?? 0}/${n}`).join(', ');
    report(
      'faults',
      `${STOPS} stops, ${volumes} volumes: all stopped, every volume detached (none forced), 0 leaked; ` +
        `${totalErrors}/${totalCalls} provider calls failed (${((100 * totalErrors) / totalCalls).toFixed(1)}%: ${perOp}); ` +
        `${detachAttempts} detach attempts for ${volumes} volumes`,
    );
    report(
      'faults',
      `stop durations ${durations.text}; all started in ${((startedAt - t0) / 1000).toFixed(1)}s, all done ${((doneAt - startedAt) / 1000).toFixed(1)}s later`,
    );
  },
  TIMEOUT_MS,
);
