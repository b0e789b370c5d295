/**
 * `npm run build:app` (and `npm run build`, after the client package): compiles
 * the worker and the `stopflow` CLI into dist/app/, to run with plain `node`,
 * production dependencies only (no tsx, no TypeScript, no dev dependency):
 *
 *   dist/app/worker.js            the production worker (worker/main.ts): `node dist/app/worker.js [--check]`
 *   dist/app/stopflow.js          the `stopflow` CLI, every command (client/cli/main.ts); bin/stopflow.mjs runs it
 *                                 when tsx is not installed
 *   dist/app/workflow-bundle.js   the workflows, bundled by the Temporal SDK (webpack) at build time; the
 *                                 compiled worker uses it unless STOPFLOW_WORKFLOW_BUNDLE names another
 *   dist/app/chunk-*.js           code shared by both, and the providers loaded on demand
 *
 * How: esbuild bundles the repository's own modules (the sources import
 * without file extensions, which Node's ESM cannot resolve) into ESM files,
 * one flat directory, and leaves every package external: node_modules is
 * installed by `npm ci --omit=dev` beside it, so the Temporal SDK's native core
 * bridge is the one built for the platform. The build fails when the output
 * imports a package that package.json does not list in `dependencies` (a dev
 * dependency would be missing in production). Types are checked by `tsc`
 * (npm test), not here.
 *
 * dist/stopflow/ belongs to scripts/build-package.ts (the client package); this
 * script only ever replaces dist/app/.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build, type Plugin } from 'esbuild';
import { bundleStopflowWorkflows } from '../worker/worker';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const APP_DIR = join(ROOT, 'dist', 'app');
/** The oldest Node the compiled code must run on: the `engines` floor. */
const TARGET = 'node20';

const ENTRIES = { worker: 'worker/main.ts', stopflow: 'client/cli/main.ts' } as const;

export interface BuiltApp {
  dir: string;
  /** Entry name → file. */
  entries: Record<keyof typeof ENTRIES, string>;
  workflowBundle: string;
  /** Packages the compiled code imports (all in `dependencies`). */
  packages: string[];
  /** The repository's top-level folders the compiled code comes from (what deploy/Dockerfile must copy). */
  sourceDirs: string[];
  ms: number;
}

function packageNameOf(specifier: string): string {
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : (parts[0] ?? specifier);
}

function isBuiltin(specifier: string): boolean {
  return specifier.startsWith('node:') || builtinModules.includes(specifier.split('/')[0] ?? '');
}

/**
 * How Node's ESM must spell an import of a package's file: a deep import into a package without an `exports` map
 * (`@temporalio/common/lib/time`) needs its `.js` (or `/index.js`), which the sources leave out (moduleResolution
 * Bundler). Every package import stays external.
 */
function nodeSpecifier(specifier: string): string {
  const name = packageNameOf(specifier);
  if (specifier === name || /\.(c|m)?js$|\.json$|\.node$/.test(specifier)) return specifier;
  const packageDir = join(ROOT, 'node_modules', name);
  const manifest = JSON.parse(readFileSync(join(packageDir, 'package.json'), 'utf8')) as { exports?: unknown };
  if (manifest.exports !== undefined) return specifier;
  const file = join(ROOT, 'node_modules', specifier);
  if (existsSync(`${file}.js`)) return `${specifier}.js`;
  if (existsSync(join(file, 'index.js')) && statSync(file).isDirectory()) return `${specifier}/index.js`;
  throw new Error(
    `cannot tell how Node resolves ${specifier}: neither ${specifier}.js nor ${specifier}/index.js exists`,
  );
}

const externalPackages: Plugin = {
  name: 'external-packages',
  setup(build) {
    build.onResolve({ filter: /^[^./]/ }, (args) => ({
      path: isBuiltin(args.path) ? args.path : nodeSpecifier(args.path),
      external: true,
    }));
  },
};

/** Compiles into `outDir` (default dist/app/, emptied first). */
export async function buildApp(outDir: string = APP_DIR): Promise<BuiltApp> {
  const started = Date.now();
  const manifest = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
    dependencies?: Record<string, string>;
    devDependencies?: Record<string, string>;
  };
  rmSync(outDir, { recursive: true, force: true });
  mkdirSync(outDir, { recursive: true });

  const result = await build({
    absWorkingDir: ROOT,
    entryPoints: Object.fromEntries(Object.entries(ENTRIES).map(([name, file]) => [name, join(ROOT, file)])),
    outdir: outDir,
    // One flat directory: worker/main.ts finds workflow-bundle.js beside the file its code lands in.
    entryNames: '[name]',
    chunkNames: 'chunk-[hash]',
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: TARGET,
    plugins: [externalPackages],
    sourcemap: 'linked',
    banner: { js: '#!/usr/bin/env node' },
    metafile: true,
    logLevel: 'warning',
  });

  const packages = new Set<string>();
  for (const output of Object.values(result.metafile.outputs)) {
    for (const imported of output.imports) {
      if (imported.external && !isBuiltin(imported.path)) packages.add(packageNameOf(imported.path));
    }
  }
  const problems = [...packages]
    .filter((name) => manifest.dependencies?.[name] === undefined)
    .map((name) =>
      manifest.devDependencies?.[name] !== undefined
        ? `${name} is a devDependency: \`npm ci --omit=dev\` would not install it`
        : `${name} is not in package.json`,
    );
  if (problems.length > 0) {
    rmSync(outDir, { recursive: true, force: true });
    throw new Error(`the compiled worker and CLI import packages production lacks:\n  ${problems.join('\n  ')}`);
  }

  // Two bundles: a worker that traces takes the one with the OpenTelemetry workflow interceptors (worker/main.ts).
  const workflowBundle = join(outDir, 'workflow-bundle.js');
  writeFileSync(workflowBundle, (await bundleStopflowWorkflows()).code);
  writeFileSync(join(outDir, 'workflow-bundle-traced.js'), (await bundleStopflowWorkflows({ traced: true })).code);
  // The compiled files are ESM even when dist/app/ is copied away from the repository's package.json.
  writeFileSync(join(outDir, 'package.json'), '{ "type": "module" }\n');
  const entries = {
    worker: join(outDir, 'worker.js'),
    stopflow: join(outDir, 'stopflow.js'),
  };
  for (const file of Object.values(entries)) chmodSync(file, 0o755);
  const sourceDirs = new Set(Object.keys(result.metafile.inputs).map((input) => input.split('/')[0] ?? input));
  return {
    dir: outDir,
    entries,
    workflowBundle,
    packages: [...packages].sort(),
    sourceDirs: [...sourceDirs].sort(),
    ms: Date.now() - started,
  };
}

if (process.argv[1] && import.meta.filename === process.argv[1]) {
  const built = await buildApp(process.argv[2] ?? APP_DIR);
  console.log(
    `dist/app built in ${built.ms}ms: ${Object.values(built.entries)
      .map((f) => relative(ROOT, f))
      .join(', ')}, ${relative(ROOT, built.workflowBundle)}; packages: ${built.packages.join(', ')}`,
  );
}
