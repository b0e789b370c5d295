/**
 * The `stopflow` CLI as a person or a script runs it: a real process
 * (`node bin/stopflow.mjs`) against a real worker, checking what it prints and
 * its exit codes (0 stopped/success, 1 stop failed, 2 bad input, 3 not found
 * or no connection). The README's CLI example runs here as written.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, inject, test } from 'vitest';
import { workflowIdFor } from '../common/names';
import { eventually, type Harness, startHarness, workflowExists } from './helpers';
import { type Ran, readmeBlock, runShell, shellCommands } from './support/readme-examples';

let h: Harness;
let env: NodeJS.ProcessEnv;
const cleanup: string[] = [];
beforeAll(async () => {
  h = await startHarness();
  env = { ...process.env, TEMPORAL_ADDRESS: inject('temporalAddress'), STOPFLOW_TASK_QUEUE: h.taskQueue };
  delete env.TEMPORAL_PROFILE;
});
afterAll(async () => {
  for (const id of cleanup) {
    await h?.client.workflow
      .getHandle(workflowIdFor(id))
      .terminate('cli test cleanup')
      .catch(() => undefined);
  }
  await h?.close();
});

function stopflow(args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<Ran> {
  return new Promise((resolve) => {
    execFile('node', ['bin/stopflow.mjs', ...args], { env: { ...env, ...extraEnv } }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

test('the README CLI example runs as written', async () => {
  const instanceId = h.instanceId('readme-cli');
  await h.sim.addInstance(instanceId, [{ volumeId: 'vol-1' }, { volumeId: 'vol-2', behavior: { hang: true } }]);
  const block = shellCommands(readmeBlock('cli'));
  expect(block.exports).toEqual({ TEMPORAL_ADDRESS: 'localhost:7233' });
  const commands = block.commands.map((c) =>
    c.replaceAll(/\bi-1\b/g, instanceId).replace(/^stopflow /, 'node bin/stopflow.mjs '),
  );
  const checks: Array<[RegExp, (ran: Ran) => Promise<void> | void]> = [
    [/ stop /, (r) => expect(r.stdout).toContain(`started the stop of ${instanceId}`)],
    [
      / status \S+$/,
      (r) => expect(r.stdout).toMatch(new RegExp(`^${instanceId}: stopping — .*\\n +vol-1 .*\\n +vol-2 `)),
    ],
    [
      / set-max-stop-duration /,
      (r) => expect(r.stdout).toMatch(/maxStopDuration of the stop of .* is now 30m: deadline /),
    ],
    [/ list --stuck 15m/, (r) => expect(r.stdout).not.toContain(instanceId)],
    [/ abort /, (r) => expect(r.stdout).toContain(`abort sent to the stop of ${instanceId}`)],
    [
      / status \S+ --watch/,
      (r) => {
        // Not a terminal: time-stamped lines, ending with the outcome.
        expect(r.stdout).toMatch(/^\d\d:\d\d:\d\dZ /m);
        expect(r.stdout).toMatch(/escalated by abort at .* from ops: maintenance window over/);
        expect(r.stdout).toMatch(/vol-2 +force_detached/);
        expect(r.stdout.trimEnd()).toMatch(/stopped — instance stopped \(forced by abort\)$/);
      },
    ],
    [
      / history /,
      (r) => {
        expect(r.stdout).toContain(`stop of ${instanceId}`);
        expect(r.stdout).toMatch(/stop started from .* by ops \(reason: host maintenance\)/);
        expect(r.stdout).toMatch(/update setMaxStopDuration accepted/);
        expect(r.stdout).toMatch(/signal abort from /);
        expect(r.stdout).toMatch(/stop ended: phase stopped/);
      },
    ],
    [/ list --phase stopped/, () => undefined],
  ];
  expect(commands).toHaveLength(checks.length);
  for (const [i, command] of commands.entries()) {
    const [pattern, check] = checks[i] as (typeof checks)[number];
    expect(command).toMatch(pattern);
    const ran = await runShell(command, env);
    expect(ran.code, `${command}\n${ran.stderr}`).toBe(0);
    await check(ran);
  }
  // Visibility lags a little behind the stop: the last command lists it once the listing caught up.
  await eventually(async () => (await runShell(commands.at(-1) as string, env)).stdout.includes(instanceId), 'listed');
});

describe('exit codes', () => {
  test('stop --wait: 0 when stopped (JSON lines), 1 when the instance was not stopped', async () => {
    const ok = h.instanceId('cli');
    const bad = h.instanceId('cli');
    await h.sim.addInstance(ok, [{ volumeId: 'vol-a' }]);
    await h.sim.addInstance(bad, [{ volumeId: 'vol-x', behavior: { hang: true, force: 'unsupported' } }]);
    const [stopped, failed] = await Promise.all([
      stopflow(['stop', ok, '--volume', 'vol-a', '--wait', '--json', '--interval', '200ms']),
      stopflow(['stop', bad, '--max-stop-duration', '1s', '--wait', '--interval', '200ms']),
    ]);
    expect(stopped.code).toBe(0);
    const last = JSON.parse(stopped.stdout.trim().split('\n').at(-1) as string);
    expect(last).toMatchObject({ running: false, status: { phase: 'stopped', instanceStopped: true } });
    expect(failed.code).toBe(1);
    expect(failed.stdout).toContain(`started the stop of ${bad}`);
    expect(failed.stdout).toMatch(/vol-x +failed +simulated volume vol-x does not support force-detach/);
    expect(failed.stdout).toMatch(new RegExp(`${bad}: NOT stopped — instance ${bad} was not stopped`));

    // status of the ended stops: 0 and 1; an abort of them says they ended: 0 (stopped) and 1 (not stopped).
    const [status0, status1, abort0, abort1] = await Promise.all([
      stopflow(['status', ok]),
      stopflow(['status', bad, '--json']),
      stopflow(['abort', ok]),
      stopflow(['abort', bad]),
    ]);
    expect(status0.code).toBe(0);
    expect(status0.stdout).toContain(`${ok}: stopped — instance stopped`);
    expect(status1.code).toBe(1);
    expect(JSON.parse(status1.stdout)).toMatchObject({ executionStatus: 'FAILED', status: { phase: 'failed' } });
    expect(abort0.code).toBe(0);
    expect(abort0.stderr).toMatch(
      /cannot abort the stop of .*: it already ended completed at .*; the instance was stopped/,
    );
    expect(abort1.code).toBe(1);
    expect(abort1.stderr).toMatch(/it already ended failed at .*the instance was NOT stopped/);
  });

  test('bad input exits 2 with the rule, before connecting, and starts nothing', async () => {
    const id = h.instanceId('cli-bad');
    const cases: Array<[string[], RegExp]> = [
      [['stop', id, '--max-stop-duration', '5x'], /maxStopDuration: must be "off"/],
      [['stop', id, '--volume', 'vol-a', '--volume', 'vol-a'], /volumes: must not repeat a volumeId/],
      [['stop', 'bad id!'], /instanceId: must be 1-255 characters/],
      [['stop', id, '--bogus'], /unknown option '--bogus'/],
      [['set-max-stop-duration', id, 'soon'], /maxStopDuration: must be "off"/],
      [['abort', 'bad/id'], /instanceId: must be 1-255/],
      [['list', '--phase', 'stuck'], /phase: must be one of stopping, stopped, failed/],
      [['list', '--stuck', 'a while'], /stuck: must be a positive number/],
    ];
    // Against an address where nothing listens: bad input is found first, so it still exits 2.
    const results = await Promise.all(cases.map(([args]) => stopflow(args, { TEMPORAL_ADDRESS: '127.0.0.1:1' })));
    for (const [i, [args, message]] of cases.entries()) {
      expect(results[i]?.code, args.join(' ')).toBe(2);
      expect(results[i]?.stderr, args.join(' ')).toMatch(message);
    }
    expect(await workflowExists(h.client, id)).toBe(false);
  });

  test('a deadline change refused after escalation exits 2', async () => {
    const id = h.instanceId('cli');
    cleanup.push(id);
    await h.sim.addInstance(id, [{ volumeId: 'vol-s', behavior: { hang: true } }]);
    await h.stopflow.stop({ instanceId: id, volumes: [{ volumeId: 'vol-s' }], forceGrace: '1h' });
    await h.stopflow.abort(id, { reason: 'escalate' });
    await eventually(async () => (await h.stopflow.status(id)).escalation, 'escalated');
    const refused = await stopflow(['set-max-stop-duration', id, '2h']);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/maxStopDuration: cannot be changed after escalation \(abort at /);
  });

  test('an unknown instance and no connection exit 3', async () => {
    const unknown = h.instanceId('nope');
    const [status, history, abort, noServer] = await Promise.all([
      stopflow(['status', unknown]),
      stopflow(['history', unknown]),
      stopflow(['abort', unknown]),
      stopflow(['status', unknown], { TEMPORAL_ADDRESS: '127.0.0.1:1' }),
    ]);
    for (const ran of [status, history, abort]) {
      expect(ran.code).toBe(3);
      expect(ran.stderr).toMatch(new RegExp(`no stop of ${unknown} was found`));
    }
    expect(noServer.code).toBe(3);
    expect(noServer.stderr).toMatch(/cannot reach Temporal at 127\.0\.0\.1:1/);
  });
});

test('history and list print JSON for machines', async () => {
  const id = h.instanceId('cli');
  await h.sim.addInstance(id, [{ volumeId: 'vol-a' }]);
  await h.stopflow.stop({ instanceId: id, volumes: [{ volumeId: 'vol-a' }], requestedBy: 'json-test' });
  await h.stopflow.result(id);
  const history = await stopflow(['history', id, '--json']);
  expect(history.code).toBe(0);
  const parsed = JSON.parse(history.stdout) as { entries: Array<{ kind: string; text: string; time: string }> };
  expect(parsed.entries[0]).toMatchObject({
    kind: 'workflow',
    text: expect.stringMatching(/^stop started .* by json-test/),
  });
  expect(parsed.entries.at(-1)?.text).toMatch(/^stop ended: phase stopped/);
  const listed = await eventually(async () => {
    const ran = await stopflow(['list', '--phase', 'stopped', '--task-queue', h.taskQueue, '--json']);
    const stops = JSON.parse(ran.stdout) as Array<{ instanceId: string; phase: string }>;
    return stops.find((s) => s.instanceId === id);
  }, 'listed as stopped');
  expect(listed).toMatchObject({ phase: 'stopped', executionStatus: 'COMPLETED', taskQueue: h.taskQueue });
});

test.runIf(existsSync('/usr/bin/script'))('status --watch redraws in place in a terminal', async () => {
  const id = h.instanceId('cli-tty');
  await h.sim.addInstance(id, [{ volumeId: 'vol-1' }, { volumeId: 'vol-2', behavior: { hang: true } }]);
  await h.stopflow.stop({ instanceId: id, maxStopDuration: '3s' });
  // `script` gives the CLI a pseudo-terminal; stty gives it a size (a size-less terminal gets plain lines).
  const ran = await runShell(
    `script -qec "stty rows 40 cols 160; node bin/stopflow.mjs status ${id} --watch --interval 300ms" /dev/null`,
    env,
  );
  expect(ran.code).toBe(0);
  expect(ran.stdout).toContain('\u001b[1A'); // cursor up: the view was redrawn, not appended
  expect(ran.stdout).not.toMatch(/^\d\d:\d\d:\d\dZ /m);
  expect(ran.stdout).toMatch(/stopped — instance stopped \(forced by timeout\)/);
});
