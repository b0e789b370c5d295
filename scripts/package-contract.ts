/**
 * The contract the `stopflow` package carries, as one fingerprint: the JSON
 * Schema of StopRequest, every name the package's entry exports (values and
 * types), and the values of the contract names (workflow type, signal, query
 * and update names, failure types, search attributes, the workflow id rule).
 * Package and contract share one version: CHANGELOG.md's latest entry must be
 * the package.json version and state the current fingerprint, so a contract
 * change cannot land (or be published: scripts/build-package.ts checks too)
 * without an entry. test/client-package.test.ts runs the check.
 *
 * `tsx scripts/package-contract.ts` prints the contract and its fingerprint.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import * as names from '../common/names';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const CHANGELOG_PATH = join(ROOT, 'CHANGELOG.md');
export const PACKAGE_ENTRY = join(ROOT, 'client/index.ts');
const SCHEMA_FILE = join(ROOT, 'schema/stop-request.schema.json');

export interface Contract {
  /** The JSON Schema of StopRequest, as published at `stopflow/stop-request.schema.json`. */
  schema: unknown;
  /** Every name the package's entry exports, types included, sorted. */
  exports: string[];
  /** The values callers address the workflow by (common/names.ts). */
  names: Record<string, unknown>;
}

/** The names a module exports, types included, read by the type checker (no runtime can see types). */
export function exportedNames(program: ts.Program, entry: string): string[] {
  const checker = program.getTypeChecker();
  const source = program.getSourceFile(entry);
  const symbol = source && checker.getSymbolAtLocation(source);
  if (!symbol) throw new Error(`${entry} is not a module of the program`);
  return checker
    .getExportsOfModule(symbol)
    .map((s) => s.name)
    .sort();
}

/** A program over the package entry with the repository's compiler options. */
export function sourceProgram(): ts.Program {
  const parsed = ts.getParsedCommandLineOfConfigFile(
    join(ROOT, 'tsconfig.json'),
    {},
    {
      ...ts.sys,
      onUnRecoverableConfigFileDiagnostic: (d) => {
        throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n'));
      },
    },
  );
  if (!parsed) throw new Error('cannot read tsconfig.json');
  return ts.createProgram([PACKAGE_ENTRY], parsed.options);
}

export function contractOf(exports: string[]): Contract {
  const values: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(names)) {
    // A function here builds an id from an instance id (workflowIdFor): record the rule it applies.
    values[name] = typeof value === 'function' ? value('{instanceId}') : value;
  }
  return { schema: JSON.parse(readFileSync(SCHEMA_FILE, 'utf8')), exports, names: values };
}

/** JSON with object keys sorted at every level, so key order never changes the fingerprint. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

export function fingerprint(contract: Contract): string {
  return `sha256:${createHash('sha256').update(canonical(contract)).digest('hex').slice(0, 16)}`;
}

export interface ChangelogEntry {
  version: string;
  /** The `Contract: sha256:…` line of the entry, if it has one. */
  contract: string | undefined;
}

/** The `## <version>` entries of CHANGELOG.md, newest (first) first. */
export function changelogEntries(text: string): ChangelogEntry[] {
  const entries: ChangelogEntry[] = [];
  const headings = [...text.matchAll(/^## \[?(\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?)\]?.*$/gm)];
  headings.forEach((heading, i) => {
    const body = text.slice((heading.index ?? 0) + heading[0].length, headings[i + 1]?.index ?? text.length);
    entries.push({ version: heading[1] ?? '', contract: /^Contract: `?(sha256:[0-9a-f]+)`?/m.exec(body)?.[1] });
  });
  return entries;
}

/**
 * Why CHANGELOG.md does not record this contract at this version, or undefined
 * when it does. The message says what to write.
 */
export function changelogProblem(contract: Contract, version: string, changelog: string): string | undefined {
  const current = fingerprint(contract);
  const entries = changelogEntries(changelog);
  const latest = entries[0];
  const howTo = `Add an entry at the top of CHANGELOG.md, "## <new version> — <date>", saying what changed for callers, with the line "Contract: \`${current}\`", and set that version in package.json (one version for the package and the contract).`;
  if (!latest) return `CHANGELOG.md has no "## <version>" entry. ${howTo}`;
  if (latest.version !== version) {
    return `CHANGELOG.md's latest entry is ${latest.version} but package.json says ${version}: they must be the same version.`;
  }
  if (latest.contract !== current) {
    const seen = entries.find((e) => e.contract === current);
    return [
      `The contract changed since CHANGELOG.md's latest entry (${latest.version}, ${latest.contract ?? 'no Contract line'}): it is now ${current}${seen ? ` (as in ${seen.version}: a change back is a change too)` : ''}.`,
      'The contract is the JSON Schema (schema/stop-request.schema.json), the names client/index.ts exports and the values of common/names.ts.',
      howTo,
      `Exports now: ${contract.exports.join(', ')}`,
    ].join('\n');
  }
  return undefined;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const contract = contractOf(exportedNames(sourceProgram(), PACKAGE_ENTRY));
  console.log(JSON.stringify({ ...contract, schema: '(schema/stop-request.schema.json)' }, null, 2));
  console.log(`Contract: \`${fingerprint(contract)}\``);
}
