/**
 * The `stopflow` package as another service gets it. Built from the sources
 * (scripts/build-package.ts), packed with `npm pack`, installed from the
 * tarball into a fresh project outside this repository (so nothing can resolve
 * from the repository's node_modules) with nothing but its declared
 * dependencies, from the npm registry. There the README's TypeScript example
 * type-checks and runs as written against the dev server, `npx stopflow
 * status` works, and the installed tree carries nothing of the worker. Also:
 * CHANGELOG.md records the current contract, and the client's by-name
 * signal/query/update calls agree with the workflow's definitions.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { QueryDefinition, SignalDefinition, UpdateDefinition } from '@temporalio/common';
import { describe, expect, expectTypeOf, inject, test } from 'vitest';
import type { StopInstanceWorkflow } from '../client/stopflow-client';
import { ABORT_SIGNAL, SET_MAX_STOP_DURATION_UPDATE, STATUS_QUERY } from '../common/names';
import type { AbortPayload, SetMaxStopDurationInput, SetMaxStopDurationResult, StopStatus } from '../common/status';
import { buildPackage } from '../scripts/build-package';
import {
  CHANGELOG_PATH,
  changelogProblem,
  contractOf,
  exportedNames,
  PACKAGE_ENTRY,
  ROOT,
  sourceProgram,
} from '../scripts/package-contract';
import { abortSignal, setMaxStopDurationUpdate, statusQuery } from '../workflows/definitions';
import type { stopInstance } from '../workflows/stop-instance';
import { startHarness } from './helpers';
import type { Ran } from './support/readme-examples';
import { readmeBlock } from './support/readme-examples';

/** Packages that belong to the worker, never to a caller. */
const WORKER_ONLY =
  /^(@temporalio\/(worker|core-bridge|workflow|activity|testing)|@aws-sdk\/.*|@azure\/.*|@google-cloud\/.*)$/;

function run(command: string, args: string[], options: { cwd: string; env?: NodeJS.ProcessEnv }): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(
      command,
      args,
      { cwd: options.cwd, env: options.env ?? cleanEnv(), timeout: 120_000, maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}

/**
 * The environment without npm's own `npm_*` variables: under `npm test` they
 * hold this repository's configuration, which must not steer the fresh
 * project's npm.
 */
function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) if (!/^npm_/i.test(key)) env[key] = value;
  delete env.TEMPORAL_PROFILE;
  return { ...env, ...extra };
}

/** Every file under `dir` whose name ends with `suffix`. */
function filesEndingWith(dir: string, suffix: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith(suffix));
}

describe('the contract and its version', () => {
  test('CHANGELOG.md records the current contract at the package version, and notices a change', () => {
    const contract = contractOf(exportedNames(sourceProgram(), PACKAGE_ENTRY));
    const version = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
    const changelog = readFileSync(CHANGELOG_PATH, 'utf8');
    expect(changelogProblem(contract, version, changelog)).toBeUndefined();

    // The check is real: a changed schema, a new export, a renamed signal or a version without its entry all fail it.
    const schema = { ...(contract.schema as Record<string, unknown>), required: ['instanceId', 'volumes'] };
    expect(changelogProblem({ ...contract, schema }, version, changelog)).toMatch(/The contract changed/);
    const exports = [...contract.exports, 'stopAll'].sort();
    expect(changelogProblem({ ...contract, exports }, version, changelog)).toMatch(/Exports now: .*stopAll/);
    const names = { ...contract.names, ABORT_SIGNAL: 'escalate' };
    expect(changelogProblem({ ...contract, names }, version, changelog)).toMatch(/Contract: `sha256:/);
    expect(changelogProblem(contract, '9.9.9', changelog)).toMatch(/latest entry is .* but package.json says 9.9.9/);
  });

  test("the client's by-name signal, query and update agree with the workflow's definitions", () => {
    // The client calls them by name with the types spelled out, so that it needs no @temporalio/workflow.
    expect([abortSignal.name, setMaxStopDurationUpdate.name, statusQuery.name]).toEqual([
      ABORT_SIGNAL,
      SET_MAX_STOP_DURATION_UPDATE,
      STATUS_QUERY,
    ]);
    expectTypeOf(abortSignal).toEqualTypeOf<SignalDefinition<[AbortPayload?]>>();
    expectTypeOf(setMaxStopDurationUpdate).toEqualTypeOf<
      UpdateDefinition<SetMaxStopDurationResult, [SetMaxStopDurationInput]>
    >();
    expectTypeOf(statusQuery).toEqualTypeOf<QueryDefinition<StopStatus>>();
    expectTypeOf<typeof stopInstance>().toEqualTypeOf<StopInstanceWorkflow>();
  });
});

test('npm pack, install alone, type-check and run the README example, npx stopflow, publish --dry-run', async () => {
  const started = Date.now();
  const built = buildPackage();
  const work = mkdtempSync(join(tmpdir(), 'stopflow-package-'));
  const h = await startHarness();
  try {
    const packed = await run('npm', ['pack', '--pack-destination', work, '--json'], { cwd: built.dir });
    expect(packed.code, packed.stderr).toBe(0);
    const [tarball] = JSON.parse(packed.stdout) as Array<{ filename: string; files: Array<{ path: string }> }>;
    if (!tarball) throw new Error(`npm pack printed no tarball: ${packed.stdout}`);
    const paths = tarball.files.map((f) => f.path);
    expect(paths).toEqual(expect.arrayContaining(['client/index.js', 'client/index.d.ts', 'bin/stopflow.js']));
    expect(paths.filter((p) => /^(workflows|activities|worker)\//.test(p))).toEqual([]);

    // A fresh project outside the repository: its own node_modules is all it can resolve from.
    const project = join(work, 'consumer');
    mkdirSync(project);
    writeFileSync(join(project, 'package.json'), '{ "name": "consumer", "private": true, "type": "module" }\n');
    const install = await run(
      'npm',
      ['install', '--prefer-offline', '--no-audit', '--no-fund', join(work, tarball.filename)],
      { cwd: project },
    );
    expect(install.code, install.stderr).toBe(0);

    const lock = JSON.parse(readFileSync(join(project, 'package-lock.json'), 'utf8')) as {
      packages: Record<string, unknown>;
    };
    const installed = Object.keys(lock.packages)
      .filter((key) => key.includes('node_modules/'))
      .map((key) => key.slice(key.lastIndexOf('node_modules/') + 'node_modules/'.length));
    // The peer dependency comes from the registry like the rest; the worker's packages do not come at all.
    expect(installed).toEqual(expect.arrayContaining(['stopflow', '@temporalio/client', '@temporalio/common', 'zod']));
    expect(installed.filter((name) => WORKER_ONLY.test(name))).toEqual([]);
    expect(filesEndingWith(join(project, 'node_modules'), '.node')).toEqual([]);

    // The README's example as written (a fresh instance id), and a probe that the declarations are real types.
    const instanceId = h.instanceId('pkg');
    await h.sim.addInstance(instanceId, [{ volumeId: 'vol-1' }, { volumeId: 'vol-2', behavior: { hang: true } }]);
    writeFileSync(join(project, 'example.ts'), readmeBlock('typescript').replaceAll("'i-1'", `'${instanceId}'`));
    writeFileSync(
      join(project, 'probe.ts'),
      [
        "import { parseStopRequest, type StopStatus, type StopflowClient, WORKFLOW_TYPE } from 'stopflow';",
        "import schema from 'stopflow/stop-request.schema.json' with { type: 'json' };",
        "import { NEXUS_SERVICE, stopflowService } from 'stopflow/nexus';",
        'export function neverCalled(stopflow: StopflowClient): void {',
        '  // @ts-expect-error an instanceId is a string: fails to compile if the declarations were missing or any',
        '  void stopflow.stop({ instanceId: 1 });',
        '}',
        "const phase: StopStatus['phase'] = 'stopped';",
        "const type: 'stopInstance' = WORKFLOW_TYPE;",
        "const nexusService = [NEXUS_SERVICE, Object.keys(stopflowService.operations).sort().join(',')].join(':');",
        "console.log(JSON.stringify({ type, phase, title: schema.title, id: parseStopRequest({ instanceId: 'i-9' }).instanceId, nexusService }));",
        '',
      ].join('\n'),
    );
    // The caller's strictest settings; TypeScript and Node's types are tools, taken from this repository.
    writeFileSync(
      join(project, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          lib: ['ES2022'],
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          strict: true,
          noUncheckedIndexedAccess: true,
          exactOptionalPropertyTypes: true,
          resolveJsonModule: true,
          skipLibCheck: true,
          types: ['node'],
          typeRoots: [join(ROOT, 'node_modules/@types')],
          rootDir: '.',
          outDir: 'out',
        },
        files: ['example.ts', 'probe.ts'],
      }),
    );
    const tsc = await run(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', project], {
      cwd: project,
    });
    expect(tsc.stdout + tsc.stderr).toBe('');
    expect(tsc.code).toBe(0);
    // The package's own declarations, checked too (skipLibCheck above skips them). The Temporal SDK's
    // declarations have errors of their own under these settings, so only ours are counted.
    const libCheck = await run(
      process.execPath,
      [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', project, '--noEmit', '--skipLibCheck', 'false'],
      { cwd: project },
    );
    expect(libCheck.stdout.split('\n').filter((line) => line.startsWith('node_modules/stopflow/'))).toEqual([]);
    expect(libCheck.stdout).not.toMatch(/^(example|probe)\.ts/m);

    const probe = await run(process.execPath, ['out/probe.js'], { cwd: project });
    expect(probe.stderr).toBe('');
    expect(JSON.parse(probe.stdout)).toEqual({
      type: 'stopInstance',
      phase: 'stopped',
      title: 'StopRequest',
      id: 'i-9',
      nexusService: 'stopflow:abort,status,stop',
    });

    const env = cleanEnv({ TEMPORAL_ADDRESS: inject('temporalAddress'), STOPFLOW_TASK_QUEUE: h.taskQueue });
    const example = await run(process.execPath, ['out/example.js'], { cwd: project, env });
    expect(example.stderr).toBe('');
    expect(example.code).toBe(0);
    expect(example.stdout).toContain(`started stop-${instanceId}`);
    expect(example.stdout).toContain('phase stopped vol-1=detached vol-2=force_detached');
    expect(example.stdout).toContain('already ended, instance stopped: true');
    expect(example.stdout).toMatch(/signal abort from .*maintenance window over/);

    // The CLI from the same install: the stop verbs work, the worker's commands say where they run.
    const status = await run('npx', ['stopflow', 'status', instanceId], { cwd: project, env });
    expect(status.stderr).toBe('');
    expect(status.code).toBe(0);
    expect(status.stdout).toContain(instanceId);
    expect(status.stdout).toContain('stopped');
    const worker = await run('npx', ['stopflow', 'worker'], { cwd: project, env });
    expect(worker.code).toBe(2);
    expect(worker.stderr).toContain('the worker is not part of the stopflow package');

    const publish = await run('npm', ['publish', '--dry-run'], { cwd: built.dir });
    expect(publish.code, publish.stderr).toBe(0);
    expect(publish.stderr).toContain(`stopflow@${built.version}`);
    console.log(`[client-package] built, packed, installed and ran in ${Math.round((Date.now() - started) / 1000)}s`);
  } finally {
    await h.close();
    rmSync(work, { recursive: true, force: true });
  }
}, 240_000);
