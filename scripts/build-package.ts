/**
 * `npm run build:package`: writes the `stopflow` package (the client library
 * and the `stopflow` CLI's stop verbs) into dist/stopflow/, from the sources
 * as they are: `npm pack` / `npm publish` run there. The repository itself
 * stays private and keeps running its TypeScript through tsx.
 *
 * How, and why this way:
 * - The files are the import closure of client/index.ts (the library) and
 *   client/cli/package-main.ts (the CLI), and nothing else. A file under
 *   workflows/, activities/ or worker/, or an import of a package the
 *   published package does not declare, fails the build: a caller installs the
 *   client, never the worker's runtime (no @temporalio/worker, no native core
 *   bridge, no provider SDK).
 * - The sources import without file extensions (moduleResolution Bundler), and
 *   Node's ESM needs them. They are copied to a staging directory with each
 *   relative import given its `.js` (and deep imports into packages without an
 *   `exports` map too), then compiled by tsc with module NodeNext, which checks
 *   every import resolves the way Node will resolve it, and emits ESM with
 *   declarations.
 * - The package.json is generated: the version is the repository's (one
 *   version for the package and the contract, see CHANGELOG.md), dependencies
 *   are the packages the closure imports, at the repository's versions as
 *   caret ranges, and @temporalio/client is a peer dependency (the caller's
 *   own client, shared with the rest of its code).
 */
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { dirname, join, relative, sep } from 'node:path';
import ts from 'typescript';
import { CHANGELOG_PATH, changelogProblem, contractOf, exportedNames, fingerprint, ROOT } from './package-contract';

export const DIST = join(ROOT, 'dist');
export const PACKAGE_DIR = join(DIST, 'stopflow');
const STAGING = join(DIST, '.staging');
const ENTRIES = ['client/index.ts', 'client/cli/package-main.ts', 'common/nexus-service.ts'];
/** Code a caller must never get: the worker side of the repository. */
const FORBIDDEN_DIRS = ['workflows/', 'activities/', 'worker/', 'devserver/', 'bench/', 'scripts/', 'test/'];
/** Shared with the caller's own Temporal code, so the caller chooses the version (within this range). */
const PEERS = ['@temporalio/client'];
/**
 * The only packages the package may import: what a caller needs. The client
 * (peer), @temporalio/common (failures, search attribute keys, payloads),
 * @temporalio/envconfig (Temporal from TEMPORAL_* or a profile; pure JS), zod
 * (validation), nexus-rpc (the Nexus service definition, `stopflow/nexus`, which
 * a caller's workflow bundles), and the CLI's commander, cli-table3 and log-update (pure JS).
 * Anything else, above all the worker runtime (@temporalio/worker and its
 * native core bridge, @temporalio/workflow) and the providers' SDKs, fails the
 * build: adding one here is a decision, not an accident of an import.
 */
const ALLOWED = new Set([
  ...PEERS,
  '@temporalio/common',
  '@temporalio/envconfig',
  'zod',
  'nexus-rpc',
  'commander',
  'cli-table3',
  'log-update',
]);

interface RootPackage {
  name: string;
  version: string;
  description?: string;
  license?: string;
  engines?: Record<string, string>;
  dependencies: Record<string, string>;
}

function packageNameOf(specifier: string): string {
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : (parts[0] ?? specifier);
}

function isBuiltin(specifier: string): boolean {
  return specifier.startsWith('node:') || builtinModules.includes(specifier.split('/')[0] ?? '');
}

/** The repository file a relative import names, or undefined. */
function resolveRelative(fromFile: string, specifier: string): string | undefined {
  const base = join(dirname(fromFile), specifier);
  for (const candidate of [base, `${base}.ts`, join(base, 'index.ts')]) {
    if (existsSync(candidate) && !candidate.endsWith(sep) && /\.(ts|json)$/.test(candidate)) return candidate;
  }
  return undefined;
}

/** A deep import into a package without an `exports` map needs its `.js` under Node's ESM. */
function rewriteBare(specifier: string): string {
  const name = packageNameOf(specifier);
  if (specifier === name || /\.(c|m)?js$/.test(specifier)) return specifier;
  const manifest = JSON.parse(readFileSync(join(ROOT, 'node_modules', name, 'package.json'), 'utf8')) as {
    exports?: unknown;
  };
  return manifest.exports === undefined ? `${specifier}.js` : specifier;
}

/** Every module specifier in a source (imports, re-exports, dynamic imports, import types), with where its text is. */
function moduleSpecifiers(file: string, text: string): Array<{ specifier: string; start: number; end: number }> {
  const found: Array<{ specifier: string; start: number; end: number }> = [];
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const add = (node: ts.Node | undefined) => {
    // Inside the quotes: the literal's text without them.
    if (node && ts.isStringLiteral(node))
      found.push({ specifier: node.text, start: node.getStart() + 1, end: node.getEnd() - 1 });
  };
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) add(node.moduleSpecifier);
    else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) add(node.arguments[0]);
    else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument)) add(node.argument.literal);
    ts.forEachChild(node, visit);
  };
  visit(source);
  return found;
}

interface Closure {
  files: string[];
  packages: Set<string>;
}

/** Every repository file the entries reach, and every package they import; fails on a forbidden one. */
function importClosure(): Closure {
  const files: string[] = [];
  const packages = new Set<string>();
  const problems: string[] = [];
  const queue = ENTRIES.map((e) => join(ROOT, e));
  const seen = new Set(queue);
  while (queue.length > 0) {
    const file = queue.shift() as string;
    files.push(file);
    if (file.endsWith('.json')) continue;
    for (const { specifier } of moduleSpecifiers(file, readFileSync(file, 'utf8'))) {
      const from = relative(ROOT, file);
      if (specifier.startsWith('.')) {
        const target = resolveRelative(file, specifier);
        if (!target) {
          problems.push(`${from}: cannot resolve ${specifier}`);
          continue;
        }
        const path = relative(ROOT, target);
        if (FORBIDDEN_DIRS.some((d) => path.startsWith(d))) {
          problems.push(`${from} imports ${path}: the package must not contain ${path.split('/')[0]}/ code`);
        } else if (!seen.has(target)) {
          seen.add(target);
          queue.push(target);
        }
      } else if (!isBuiltin(specifier)) {
        const name = packageNameOf(specifier);
        if (!ALLOWED.has(name)) problems.push(`${from} imports ${name}, which the package may not depend on`);
        packages.add(name);
      }
    }
  }
  if (problems.length > 0) throw new Error(`the stopflow package cannot be built:\n  ${problems.join('\n  ')}`);
  return { files, packages };
}

/** Copies a source to the staging directory with its imports spelled for Node's ESM. */
function stage(file: string): string {
  const text = readFileSync(file, 'utf8');
  const target = join(STAGING, relative(ROOT, file));
  mkdirSync(dirname(target), { recursive: true });
  if (file.endsWith('.json')) {
    writeFileSync(target, text);
    return target;
  }
  let out = text;
  // From the end, so earlier positions stay valid.
  for (const { specifier, start, end } of moduleSpecifiers(file, text).sort((a, b) => b.start - a.start)) {
    let rewritten = specifier;
    if (specifier.startsWith('.')) {
      const resolved = resolveRelative(file, specifier) as string;
      rewritten = resolved.endsWith('.json')
        ? specifier
        : `./${relative(dirname(file), resolved).replace(/\.ts$/, '.js')}`.replace(/^\.\/\.\.\//, '../');
    } else if (!isBuiltin(specifier)) {
      rewritten = rewriteBare(specifier);
    }
    out = out.slice(0, start) + rewritten + out.slice(end);
  }
  writeFileSync(target, out);
  return target;
}

function compile(staged: string[]): ts.Program {
  // Node treats the staged .ts files as ESM only inside a "type": "module" package.
  writeFileSync(join(STAGING, 'package.json'), '{ "type": "module" }\n');
  const options: ts.CompilerOptions = {
    target: ts.ScriptTarget.ES2022,
    lib: ['lib.es2022.d.ts'],
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    types: ['node'],
    typeRoots: [join(ROOT, 'node_modules/@types')],
    strict: true,
    noUncheckedIndexedAccess: true,
    exactOptionalPropertyTypes: true,
    noImplicitOverride: true,
    esModuleInterop: true,
    skipLibCheck: true,
    resolveJsonModule: true,
    declaration: true,
    rootDir: STAGING,
    outDir: PACKAGE_DIR,
    newLine: ts.NewLineKind.LineFeed,
  };
  const program = ts.createProgram(
    staged.filter((f) => f.endsWith('.ts')),
    options,
  );
  const emitted = program.emit();
  const diagnostics = [...ts.getPreEmitDiagnostics(program), ...emitted.diagnostics];
  if (diagnostics.length > 0) {
    const host: ts.FormatDiagnosticsHost = {
      getCanonicalFileName: (f) => f,
      getCurrentDirectory: () => ROOT,
      getNewLine: () => '\n',
    };
    throw new Error(`the stopflow package does not compile:\n${ts.formatDiagnostics(diagnostics, host)}`);
  }
  return program;
}

/** Dependency ranges: the repository's pinned version as a caret range (a caller's other packages may share it). */
function range(root: RootPackage, name: string): string {
  const version = root.dependencies[name];
  if (!version) throw new Error(`the package imports ${name}, which package.json does not list in dependencies`);
  return /^\d/.test(version) ? `^${version}` : version;
}

export interface BuiltPackage {
  dir: string;
  version: string;
  contract: string;
  dependencies: Record<string, string>;
  peerDependencies: Record<string, string>;
}

export function buildPackage(): BuiltPackage {
  const root = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as RootPackage;
  const closure = importClosure();
  // Only the package's own folders: dist/app (npm run build:app) lives beside it.
  rmSync(PACKAGE_DIR, { recursive: true, force: true });
  rmSync(STAGING, { recursive: true, force: true });
  mkdirSync(STAGING, { recursive: true });
  try {
    const program = compile(closure.files.map(stage));
    const contract = contractOf(exportedNames(program, join(STAGING, 'client/index.ts')));
    const problem = changelogProblem(contract, root.version, readFileSync(CHANGELOG_PATH, 'utf8'));
    if (problem) throw new Error(problem);

    mkdirSync(join(PACKAGE_DIR, 'schema'), { recursive: true });
    copyFileSync(join(ROOT, 'schema/stop-request.schema.json'), join(PACKAGE_DIR, 'schema/stop-request.schema.json'));
    copyFileSync(CHANGELOG_PATH, join(PACKAGE_DIR, 'CHANGELOG.md'));
    copyFileSync(join(ROOT, 'README.md'), join(PACKAGE_DIR, 'README.md'));
    mkdirSync(join(PACKAGE_DIR, 'bin'));
    const bin = join(PACKAGE_DIR, 'bin/stopflow.js');
    writeFileSync(
      bin,
      "#!/usr/bin/env node\n// The `stopflow` CLI: the stop verbs.\nimport '../client/cli/package-main.js';\n",
    );
    chmodSync(bin, 0o755);

    const dependencies: Record<string, string> = {};
    const peerDependencies: Record<string, string> = {};
    for (const name of [...closure.packages].sort()) {
      if (PEERS.includes(name)) peerDependencies[name] = range(root, name);
      else dependencies[name] = range(root, name);
    }
    const manifest = {
      name: root.name,
      version: root.version,
      description: root.description,
      license: root.license,
      type: 'module',
      engines: root.engines,
      exports: {
        '.': { types: './client/index.d.ts', default: './client/index.js' },
        './nexus': { types: './common/nexus-service.d.ts', default: './common/nexus-service.js' },
        './stop-request.schema.json': './schema/stop-request.schema.json',
        './package.json': './package.json',
      },
      types: './client/index.d.ts',
      bin: { stopflow: 'bin/stopflow.js' },
      files: ['bin', 'client', 'common', 'schema', 'CHANGELOG.md'],
      sideEffects: ['./bin/stopflow.js', './client/cli/package-main.js'],
      dependencies,
      peerDependencies,
    };
    writeFileSync(join(PACKAGE_DIR, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`);
    return {
      dir: PACKAGE_DIR,
      version: root.version,
      contract: fingerprint(contract),
      dependencies,
      peerDependencies,
    };
  } finally {
    rmSync(STAGING, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.filename === process.argv[1]) {
  const built = buildPackage();
  console.log(
    `stopflow@${built.version} (contract ${built.contract}) in ${relative(ROOT, built.dir)}: dependencies ${JSON.stringify(built.dependencies)}, peer ${JSON.stringify(built.peerDependencies)}`,
  );
}
