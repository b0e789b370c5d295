/**
 * `npm run record-fixtures -- <label>`: runs the main stop scenarios on a
 * fresh dev server and saves their histories to test/fixtures/<label>/, where
 * test/replay.test.ts replays them against the current workflow code. Record a
 * new set whenever workflow logic changes (behind `patched()`), and keep the
 * old sets: they are what stops already in flight look like.
 *
 * `npm run record-fixtures -- <label> --started-on=<bundle.js>` records the
 * rollout scenarios instead (`rollout-*.json`, beside the label's others): a
 * stop starts on a worker running that bundle (the previous version's, built
 * from its commit), the worker shuts down, and a worker with the current code
 * takes the stop over and finishes it, as in a rolling upgrade.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { Context } from '@temporalio/activity';
import { Client } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime } from '@temporalio/worker';
import { createCompletionEventActivities } from '../activities/completion-event';
import { type CallOptions, TransientProviderError } from '../activities/provider';
import { MemorySimStore, type SeedVolume, SimulatedProvider } from '../activities/providers/simulated';
import { askWorkerActivity, createVolumeHolderActivities } from '../activities/volume-holders';
import { StopflowClient } from '../client/stopflow-client';
import { WORKFLOW_TYPE, workflowIdFor } from '../common/names';
import type { FindVolumeHoldersInput } from '../common/ownership-events';
import type { StopRequest } from '../common/request';
import { startDevServer } from '../devserver/server';
import { createStopflowWorker } from '../worker/worker';

const label = process.argv[2];
const [startedOnArg, ...unknownArgs] = process.argv.slice(3);
const startedOn = startedOnArg?.startsWith('--started-on=') ? startedOnArg.slice('--started-on='.length) : undefined;
if (
  !label ||
  !/^[a-z0-9-]+$/.test(label) ||
  unknownArgs.length > 0 ||
  (startedOnArg !== undefined && !startedOn?.endsWith('.js'))
) {
  console.error(
    'usage: npm run record-fixtures -- <label> [--started-on=<workflow bundle .js>]   (a folder name such as v2-await-cancelled-detach)',
  );
  process.exit(2);
}
const OUT = new URL(`../test/fixtures/${label}/`, import.meta.url);

interface Scenario {
  name: string;
  volumes: SeedVolume[];
  request: Omit<StopRequest, 'instanceId'>;
  /** What happens before the stop starts. */
  before?: (stopflow: StopflowClient, instanceId: string) => Promise<void>;
  /** Seed the instance in the simulated cloud (default true); an unseeded one is unknown to the backend. */
  seed?: boolean;
  /** Start it with a plain Temporal client (no search attributes at start), as other SDKs do. */
  plainStart?: boolean;
  /** What happens while the stop runs. */
  drive?: (stopflow: StopflowClient, instanceId: string) => Promise<void>;
  /** What happens after it ended. */
  after?: (stopflow: StopflowClient, instanceId: string) => Promise<void>;
}

const stuck = { hang: true };
const waitForDetaching = async (stopflow: StopflowClient, instanceId: string) => {
  for (;;) {
    const status = await stopflow.status(instanceId);
    if (status.volumes.some((v) => v.state === 'detaching')) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
};

/** Once the instance stop has failed and is retried, cancels the stop; 3 s later the backend stops again. */
const cancelWhileStopIsRetried = async (stopflow: StopflowClient, instanceId: string) => {
  for (;;) {
    const progress = await stopflow.progress(instanceId);
    if (progress.otherWork.some((w) => w.activityType === 'stopInstanceIfDetached' && w.attempt >= 2)) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  await stopflow.client.workflow.getHandle(workflowIdFor(instanceId)).cancel();
  await new Promise((resolve) => setTimeout(resolve, 3_000));
  sim.failingStops.delete(instanceId);
};

/** Rollout scenarios: begun on the `--started-on` bundle's worker, taken over by the current code's after `handOver`. */
interface RolloutScenario {
  name: string;
  volumes: SeedVolume[];
  request: Omit<StopRequest, 'instanceId'>;
  /** On the old worker, after the start: what the stop must have reached before that worker shuts down. */
  handOver: (stopflow: StopflowClient, instanceId: string) => Promise<void>;
  /** On the new worker. */
  drive?: (stopflow: StopflowClient, instanceId: string) => Promise<void>;
}

const rollouts: RolloutScenario[] = [
  {
    // Stuck when its worker is upgraded; the abort comes after: the force is the new version's (version 12 schedules
    // it on the forces task queue, with the patch's marker in the middle of a history begun without it).
    name: 'rollout-abort',
    volumes: [{ volumeId: 'vol-ok' }, { volumeId: 'vol-stuck', behavior: stuck }],
    request: { volumes: [{ volumeId: 'vol-ok' }, { volumeId: 'vol-stuck' }] },
    // Once the stuck volume's wait runs on the old worker and the other volume is detached: the history holds the
    // old version's whole graceful part, and the shutdown interrupts no request.
    handOver: async (stopflow, id) => {
      for (const deadline = Date.now() + 120_000; ; ) {
        if (Date.now() > deadline) throw new Error(`${id}: not waiting on vol-stuck with vol-ok detached after 120 s`);
        const { volumes } = await stopflow.progress(id);
        const waiting = volumes.some((v) => v.work?.activityType === 'awaitDetached' && v.work.state === 'started');
        if (waiting && volumes.find((v) => v.volumeId === 'vol-ok')?.state === 'detached') return;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    },
    drive: async (stopflow, id) => {
      await stopflow.abort(id, { reason: 'fixture', requestedBy: 'record-fixtures' });
    },
  },
];

const scenarios: Scenario[] = [
  {
    name: 'graceful',
    volumes: [{ volumeId: 'vol-a' }, { volumeId: 'vol-b', behavior: { failFirst: 1 } }],
    request: {},
  },
  { name: 'discovered-volumes', volumes: [{ volumeId: 'vol-a' }], request: {} },
  {
    // A detach that takes a while: its wait is answered by the worker's watch list (version 8), by task token.
    name: 'slow-detach',
    volumes: [{ volumeId: 'vol-slow', behavior: { detachDelayMs: 1_500 } }],
    request: { volumes: [{ volumeId: 'vol-slow' }] },
  },
  {
    name: 'abort',
    volumes: [{ volumeId: 'vol-ok' }, { volumeId: 'vol-stuck', behavior: stuck }],
    request: { volumes: [{ volumeId: 'vol-ok' }, { volumeId: 'vol-stuck' }] },
    drive: async (stopflow, id) => {
      await waitForDetaching(stopflow, id);
      await stopflow.abort(id, { reason: 'fixture', requestedBy: 'record-fixtures' });
      await stopflow.abort(id, { reason: 'again' }).catch(() => undefined);
    },
  },
  {
    name: 'timeout',
    volumes: [{ volumeId: 'vol-stuck', behavior: stuck }],
    request: { volumes: [{ volumeId: 'vol-stuck' }], maxStopDuration: '2s' },
  },
  {
    name: 'set-max-stop-duration',
    volumes: [{ volumeId: 'vol-stuck', behavior: stuck }],
    request: { volumes: [{ volumeId: 'vol-stuck' }], maxStopDuration: '1h' },
    drive: async (stopflow, id) => {
      await stopflow.setMaxStopDuration(id, '2h');
      await stopflow.setMaxStopDuration(id, '1s');
    },
  },
  {
    name: 'force-grace',
    volumes: [
      { volumeId: 'vol-late', behavior: { detachDelayMs: 500 } },
      { volumeId: 'vol-stuck', behavior: stuck },
    ],
    request: { forceGrace: '2s', maxStopDuration: '1s' },
  },
  {
    // An abort while the deadline's timer is armed: the deadline timer is cancelled and each stuck volume
    // starts its forceGrace timer in the same workflow task (the order of those commands is the workflow's).
    name: 'abort-in-force-grace',
    volumes: [
      { volumeId: 'vol-ok' },
      { volumeId: 'vol-stuck-1', behavior: stuck },
      { volumeId: 'vol-stuck-2', behavior: stuck },
    ],
    request: { forceGrace: '1s', maxStopDuration: '1h' },
    drive: async (stopflow, id) => {
      await waitForDetaching(stopflow, id);
      await stopflow.abort(id, { reason: 'fixture', requestedBy: 'record-fixtures' });
    },
  },
  {
    name: 'cancel',
    volumes: [{ volumeId: 'vol-ok' }, { volumeId: 'vol-stuck', behavior: stuck }],
    request: { volumes: [{ volumeId: 'vol-ok' }, { volumeId: 'vol-stuck' }] },
    drive: async (stopflow, id) => {
      await waitForDetaching(stopflow, id);
      await stopflow.client.workflow.getHandle(workflowIdFor(id)).cancel();
    },
  },
  {
    // Cancelled while the instance stop is retried (the backend fails it), then the backend recovers.
    name: 'cancel-while-stopping',
    volumes: [{ volumeId: 'vol-ok' }],
    request: {},
    before: async (_stopflow, id) => {
      sim.failingStops.add(id);
    },
    drive: cancelWhileStopIsRetried,
  },
  {
    // Aborted, then cancelled while the escalated instance stop is retried (the backend fails it), then the
    // backend recovers.
    name: 'cancel-after-escalation-while-stopping',
    volumes: [{ volumeId: 'vol-stuck', behavior: stuck }],
    request: { volumes: [{ volumeId: 'vol-stuck' }] },
    before: async (_stopflow, id) => {
      sim.failingStops.add(id);
    },
    drive: async (stopflow, id) => {
      await waitForDetaching(stopflow, id);
      await stopflow.abort(id, { reason: 'fixture', requestedBy: 'record-fixtures' });
      await cancelWhileStopIsRetried(stopflow, id);
    },
  },
  {
    name: 'attached-mid-stop',
    volumes: [{ volumeId: 'vol-slow', behavior: { detachDelayMs: 1_000 } }],
    request: { volumes: [{ volumeId: 'vol-slow' }] },
    drive: async (stopflow, id) => {
      await waitForDetaching(stopflow, id);
      await sim.attachVolume(id, { volumeId: 'vol-late' });
    },
  },
  {
    // A running stop of another instance holds vol-shared: this one is refused (VolumeHeld), nothing detached.
    name: 'volume-held',
    volumes: [{ volumeId: 'vol-shared' }],
    request: { volumes: [{ volumeId: 'vol-shared' }] },
    plainStart: true,
    before: async (stopflow) => {
      await sim.addInstance(HOLDER, [{ volumeId: 'vol-shared', behavior: stuck }]);
      await stopflow.stop({ instanceId: HOLDER, volumes: [{ volumeId: 'vol-shared' }] });
      const query = `WorkflowType = '${WORKFLOW_TYPE}' AND StopVolumes = 'vol-shared' AND ExecutionStatus = 'Running'`;
      for (;;) {
        const seen = await stopflow.client.workflow.count(query);
        if (seen.count > 0) return;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    },
    after: async (stopflow) => {
      await stopflow.abort(HOLDER);
      await stopflow.result(HOLDER);
    },
  },
  {
    name: 'force-unsupported',
    volumes: [{ volumeId: 'vol-pinned', behavior: { hang: true, force: 'unsupported' } }],
    request: { volumes: [{ volumeId: 'vol-pinned' }], maxStopDuration: '1s' },
  },
  {
    // Every force call fails as a timeout would, and the fifth, the last attempt's, is the one applied: the read after
    // the five attempts finds the volume detached by it (version 10: `force_detached`, was `detached`).
    name: 'forced-after-last-attempt',
    volumes: [{ volumeId: 'vol-late', behavior: { hang: true, force: 'answer-lost', forceTakesEffectAt: 5 } }],
    request: { volumes: [{ volumeId: 'vol-late' }], maxStopDuration: '1s' },
  },
  {
    // Its listing fails for good before it asked the worker anything: it asks about completion events at its end.
    name: 'list-failed',
    volumes: [],
    request: {},
    seed: false,
  },
  {
    // The worker's askWorker throws (ASK_FAILS below): the stop goes on unchecked and asks about events at its end.
    name: 'ask-failed',
    volumes: [{ volumeId: 'vol-a' }],
    request: {},
  },
  {
    // The worker's askWorker outlasts its 5 s (ASK_HANGS below): its marker holds a bare TimeoutFailure.
    name: 'ask-timed-out',
    volumes: [{ volumeId: 'vol-a' }],
    request: {},
  },
];

/** The scenario whose askWorker throws, as a worker's would whose visibility client or configuration broke. */
const ASK_FAILS = workflowIdFor('i-ask-failed');
/** The scenario whose askWorker never answers in time, as one whose visibility is throttled would. */
const ASK_HANGS = workflowIdFor('i-ask-timed-out');

const HOLDER = 'i-volume-held-holder';

Runtime.install({ logger: new DefaultLogger('ERROR') });
// Completion events on: every stop's history shows its end handed to a deliverStopEvent child.
const receiver = createServer((_req, res) => res.writeHead(204).end());
await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
const receiverAddress = receiver.address();
const eventsUrl = `http://127.0.0.1:${typeof receiverAddress === 'object' && receiverAddress ? receiverAddress.port : 0}/`;
/** The simulated cloud, whose instance stops fail while their instance is in `failingStops`. */
class FixtureCloud extends SimulatedProvider {
  readonly failingStops = new Set<string>();
  override async stopInstance(instanceId: string, options?: CallOptions): Promise<void> {
    if (this.failingStops.has(instanceId))
      throw new TransientProviderError(`stopInstance of ${instanceId}: 503 (fixture)`);
    return super.stopInstance(instanceId, options);
  }
}
const sim = new FixtureCloud(new MemorySimStore());
const server = await startDevServer();
const cliPath = server.cliPath ?? 'temporal';
try {
  const taskQueue = `fixtures-${randomUUID()}`;
  const connection = await NativeConnection.connect({ address: server.address });
  const client = new Client({ connection: server.env.connection });
  const completionEvents = { url: eventsUrl, secret: 'record-fixtures-secret' };
  // The worker's own answers, as createStopflowWorker builds them, except for the ask-failed scenario.
  const { askWorker } = askWorkerActivity({
    ...createVolumeHolderActivities(client, { refuse: true }),
    ...createCompletionEventActivities(completionEvents),
  });
  const workerOn = (workflowBundle?: { codePath: string }) =>
    createStopflowWorker({
      connection,
      taskQueue,
      ...(workflowBundle ? { workflowBundle } : {}),
      providers: [sim],
      pollIntervalMs: 200,
      // Not the default (15 min): the histories show the wait scheduled with the worker's own setting (version 9).
      watchHeartbeatTimeoutMs: 90_000,
      refuseHeldVolumes: true,
      completionEvents,
      extraActivities: {
        async askWorker(input: FindVolumeHoldersInput) {
          if (input.workflowId === ASK_FAILS) throw new Error('the worker could not answer (fixture)');
          if (input.workflowId === ASK_HANGS) await Context.current().sleep(60_000); // cancelled at its timeout
          return askWorker(input);
        },
      },
    });
  const stopflow = new StopflowClient({ client, taskQueue });
  /** The history as a user gets it from `temporal workflow show --output json`, saved under the scenario's name. */
  const save = (name: string, instanceId: string, outcome: string) => {
    const json = execFileSync(
      cliPath,
      ['workflow', 'show', '--workflow-id', workflowIdFor(instanceId), '--output', 'json', '--address', server.address],
      { encoding: 'utf8' },
    );
    writeFileSync(new URL(`${name}.json`, OUT), json);
    const events = (JSON.parse(json) as { events: unknown[] }).events.length;
    console.log(`${name}: ${outcome}, ${events} events`);
  };
  const outcomeOf = (instanceId: string) =>
    stopflow.result(instanceId).then(
      (s) => s.phase,
      (err: Error) => `failed (${err.message})`,
    );
  mkdirSync(OUT, { recursive: true });
  if (startedOn) {
    for (const rollout of rollouts) {
      const instanceId = `i-${rollout.name}`;
      await sim.addInstance(instanceId, rollout.volumes);
      const before = await workerOn({ codePath: startedOn });
      await before.runUntil(async () => {
        await stopflow.stop({ instanceId, ...rollout.request });
        await rollout.handOver(stopflow, instanceId);
      });
      const after = await workerOn();
      await after.runUntil(async () => {
        await rollout.drive?.(stopflow, instanceId);
        save(rollout.name, instanceId, await outcomeOf(instanceId));
      });
    }
  }
  const worker = startedOn ? undefined : await workerOn();
  await worker?.runUntil(async () => {
    for (const scenario of scenarios) {
      const instanceId = `i-${scenario.name}`;
      if (scenario.seed !== false) await sim.addInstance(instanceId, scenario.volumes);
      await scenario.before?.(stopflow, instanceId);
      if (scenario.plainStart) {
        await client.workflow.start(WORKFLOW_TYPE, {
          taskQueue,
          workflowId: workflowIdFor(instanceId),
          args: [{ instanceId, ...scenario.request }],
        });
      } else {
        await stopflow.stop({ instanceId, ...scenario.request });
      }
      await scenario.drive?.(stopflow, instanceId);
      const outcome = await outcomeOf(instanceId);
      await scenario.after?.(stopflow, instanceId);
      save(scenario.name, instanceId, outcome);
    }
  });
} finally {
  await server.stop();
  receiver.close();
}
