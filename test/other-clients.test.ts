/**
 * Stops without stopflow's code: the README's `temporal` CLI and HTTP API
 * examples, run as written (read from README.md) against the run's dev server
 * and a real worker. Only the address, the task queue and the instance id are
 * swapped for this test's own.
 */
import { afterAll, beforeAll, expect, inject, test } from 'vitest';
import { workflowIdFor } from '../common/names';
import { eventually, type Harness, startHarness } from './helpers';
import { type Ran, readmeBlock, runShell, shellCommands } from './support/readme-examples';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h?.close();
});

/** Waits until the stop's graceful detach of the stuck volume is under way (the workflow has run its first task). */
async function untilDetaching(instanceId: string): Promise<void> {
  await eventually(
    async () =>
      (await h.stopflow.status(instanceId)).volumes.find((v) => v.volumeId === 'vol-2')?.state === 'detaching',
    'vol-2 detaching',
  );
}

function json(ran: Ran): Record<string, unknown> {
  expect(ran.code, ran.stderr || ran.stdout).toBe(0);
  return JSON.parse(ran.stdout) as Record<string, unknown>;
}

const cliPath = inject('temporalCliPath');
test.runIf(cliPath !== undefined)(
  'the README `temporal` CLI example: start, join, query, update, list, abort, result',
  async () => {
    const instanceId = h.instanceId('tcli');
    await h.sim.addInstance(instanceId, [{ volumeId: 'vol-1' }, { volumeId: 'vol-2', behavior: { hang: true } }]);
    const block = shellCommands(readmeBlock('temporal-cli'));
    expect(block.exports).toEqual({ TEMPORAL_ADDRESS: 'localhost:7233' });
    const env = { ...process.env, TEMPORAL_ADDRESS: inject('temporalAddress') };
    const commands = block.commands.map((c) =>
      c
        .replace(/^temporal /, `'${cliPath}' `)
        .replaceAll('--task-queue stopflow', `--task-queue ${h.taskQueue}`)
        .replaceAll(/\bi-1\b/g, instanceId),
    );
    const [start, query, update, list, signal, result] = commands as [string, string, string, string, string, string];
    expect(commands).toHaveLength(6);
    expect(start).toMatch(/workflow start --type stopInstance/);

    const started = await runShell(start, env);
    expect(started.code, started.stderr).toBe(0);
    const runId = /RunId\s+(\S+)/.exec(started.stdout)?.[1];
    expect(runId).toBeTruthy();
    // UseExisting: a second start while it runs joins the same run.
    const again = await runShell(start, env);
    expect(/RunId\s+(\S+)/.exec(again.stdout)?.[1]).toBe(runId);
    await untilDetaching(instanceId);

    const queried = await runShell(query, env);
    expect(queried.code, queried.stderr).toBe(0);
    expect(queried.stdout).toContain(`"instanceId":"${instanceId}"`);
    expect(queried.stdout).toContain('"phase":"stopping"');

    const updated = await runShell(update, env);
    expect(updated.code, updated.stderr).toBe(0);
    expect(updated.stdout).toMatch(/Result\s+map\[deadline:\d{4}-/);
    expect((await h.stopflow.status(instanceId)).deadline).not.toBeNull();

    // The workflow records StopPhase itself when started by another client, so visibility finds it.
    await eventually(async () => {
      const listed = await runShell(list, env);
      return listed.code === 0 && listed.stdout.includes(workflowIdFor(instanceId));
    }, 'listed as stopping by the temporal CLI');

    const signalled = await runShell(signal, env);
    expect(signalled.code, signalled.stderr).toBe(0);

    const ended = await runShell(result, env);
    expect(ended.code, ended.stderr).toBe(0);
    expect(ended.stdout).toMatch(/COMPLETED/);
    expect(ended.stdout).toContain('"phase":"stopped"');
    expect(ended.stdout).toMatch(/"state":"force_detached","volumeId":"vol-2"/);

    const { entries } = await h.stopflow.history(instanceId);
    const texts = entries.map((e) => e.text);
    expect(texts[0]).toMatch(
      new RegExp(
        `^stop started from .* by ops: stop ${instanceId}: 2 volume\\(s\\): vol-1, vol-2, maxStopDuration 15m$`,
      ),
    );
    expect(texts.some((t) => /^recorded .*StopPhase=stopping/.test(t))).toBe(true);
    expect(
      texts.some((t) => /^signal abort from .*: \{"reason":"maintenance window over","requestedBy":"ops"\}$/.test(t)),
    ).toBe(true);
  },
);

const httpUrl = inject('temporalHttpUrl');
test.runIf(httpUrl !== undefined)(
  'the README HTTP API example: start, join, query, update, abort, describe, result, list',
  async () => {
    const instanceId = h.instanceId('http');
    await h.sim.addInstance(instanceId, [{ volumeId: 'vol-1' }, { volumeId: 'vol-2', behavior: { hang: true } }]);
    const block = shellCommands(readmeBlock('http'));
    expect(block.exports).toEqual({ TEMPORAL_HTTP: 'http://localhost:7243' });
    const env = { ...process.env, TEMPORAL_HTTP: httpUrl };
    const commands = block.commands.map((c) =>
      c
        .replaceAll('"taskQueue":{"name":"stopflow"}', `"taskQueue":{"name":"${h.taskQueue}"}`)
        .replaceAll(/\bi-2\b/g, instanceId),
    );
    expect(commands).toHaveLength(7);
    const [start, query, update, signal, describe, close, list] = commands as [
      string,
      string,
      string,
      string,
      string,
      string,
      string,
    ];

    const started = json(await runShell(start, env));
    expect(started).toMatchObject({ started: true, status: 'WORKFLOW_EXECUTION_STATUS_RUNNING' });
    const joined = json(await runShell(start, env));
    // Joined the running stop: same run, `started` false (left out of the JSON, as proto3 does with defaults).
    expect(joined.runId).toBe(started.runId);
    expect(joined.started ?? false).toBe(false);
    await untilDetaching(instanceId);

    const status = json(await runShell(query, env));
    expect(status.queryResult).toEqual([
      expect.objectContaining({ instanceId, phase: 'stopping', escalation: null, instanceStopped: false }),
    ]);

    const updated = json(await runShell(update, env));
    expect(updated.outcome).toEqual({ success: [{ deadline: expect.stringMatching(/^\d{4}-/) }] });

    expect(json(await runShell(signal, env))).toEqual({});

    const described = await eventually(async () => {
      const d = json(await runShell(describe, env)) as { workflowExecutionInfo?: { status?: string } };
      return d.workflowExecutionInfo?.status === 'WORKFLOW_EXECUTION_STATUS_COMPLETED' ? d : undefined;
    }, 'the stop completed');
    expect(described).toBeTruthy();

    const closeEvent = json(await runShell(close, env)) as {
      history: { events: Array<{ workflowExecutionCompletedEventAttributes?: { result: unknown[] } }> };
    };
    expect(closeEvent.history.events[0]?.workflowExecutionCompletedEventAttributes?.result).toEqual([
      expect.objectContaining({
        phase: 'stopped',
        instanceStopped: true,
        escalation: expect.objectContaining({
          cause: 'abort',
          requestedBy: 'billing',
          reason: 'maintenance window over',
        }),
      }),
    ]);

    await eventually(async () => {
      const listed = json(await runShell(list, env)) as { executions?: Array<{ execution: { workflowId: string } }> };
      return listed.executions?.some((e) => e.execution.workflowId === workflowIdFor(instanceId));
    }, 'listed as stopped over HTTP');

    // An unknown stop: HTTP 404, curl exits 22, the body says why.
    const unknown = await runShell(query.replaceAll(instanceId, h.instanceId('nope')), env);
    expect(unknown.code).toBe(22);
    expect(unknown.stdout).toMatch(/workflow not found/);
  },
);
