/**
 * Start-up checks: before polling, the worker makes sure it can do its job,
 * and when it cannot, says exactly what to fix. All checks run, so one start
 * reports every problem:
 *   1. the Temporal server answers at the configured address;
 *   2. the namespace exists;
 *   3. the search attributes StopPhase, StopCause, StopForced, StopVolumes exist with the
 *      right types (if not, the exact command that creates them);
 *   4. every configured provider is usable (`Provider.checkUsable`).
 */
import type { NativeConnection } from '@temporalio/worker';
import type { Provider } from '../activities/provider';
import { ConnectionFailedError, connectTemporalWorker } from '../client/connection';
import { SEARCH_ATTRIBUTES } from '../common/names';
import type { TemporalSettings } from './config';

export interface CheckResult {
  check: string;
  ok: boolean;
  /** What was found, in one sentence. */
  message: string;
  /** When not ok: what to do about it (a command where there is one). */
  fix?: string;
}

const CONNECT_TIMEOUT_MS = 15_000;
const PROVIDER_CHECK_TIMEOUT_MS = 30_000;

/** gRPC status codes the checks tell apart. */
const NOT_FOUND = 5;
const PERMISSION_DENIED = 7;
const UNIMPLEMENTED = 12;

/** temporal.api.enums.v1.IndexedValueType, as the temporal CLI spells the types. */
const INDEXED_VALUE_TYPES: Record<number, string> = {
  1: 'Text',
  2: 'Keyword',
  3: 'Int',
  4: 'Double',
  5: 'Bool',
  6: 'Datetime',
  7: 'KeywordList',
};

function typeName(value: unknown): string {
  if (typeof value === 'number') return INDEXED_VALUE_TYPES[value] ?? `type ${value}`;
  if (typeof value === 'string') {
    const name = value.replace(/^INDEXED_VALUE_TYPE_/, '').toLowerCase();
    return Object.values(INDEXED_VALUE_TYPES).find((t) => t.toLowerCase() === name.replace(/_/g, '')) ?? value;
  }
  return String(value);
}

function grpcCode(err: unknown): number | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'number' ? code : undefined;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms / 1000}s`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export function isTemporalCloud(address: string): boolean {
  return /\.tmprl\.cloud(:\d+)?$/.test(address);
}

/**
 * The command that creates the missing search attributes, for the temporal
 * CLI (one command per type, its `--type` takes one value) or, on Temporal
 * Cloud, for tcld.
 */
export function searchAttributeCommands(
  temporal: Pick<TemporalSettings, 'address' | 'namespace' | 'profile'>,
  missing: ReadonlyArray<{ name: string; type: string }>,
): string[] {
  if (isTemporalCloud(temporal.address)) {
    const attributes = missing.map((a) => `--search-attribute "${a.name}=${a.type}"`).join(' ');
    return [`tcld namespace search-attributes add --namespace ${temporal.namespace} ${attributes}`];
  }
  const target = temporal.profile
    ? `--profile ${temporal.profile} --namespace ${temporal.namespace}`
    : `--address ${temporal.address} --namespace ${temporal.namespace}`;
  const types = [...new Set(missing.map((a) => a.type))];
  return types.map((type) => {
    const names = missing
      .filter((a) => a.type === type)
      .map((a) => `--name ${a.name}`)
      .join(' ');
    return `temporal operator search-attribute create ${target} ${names} --type ${type}`;
  });
}

/** Check 1: connects, and asks the server for its version. */
export async function checkServer(
  temporal: TemporalSettings,
): Promise<{ result: CheckResult; connection?: NativeConnection }> {
  const check = 'temporal server';
  let connection: NativeConnection;
  try {
    connection = await withTimeout(
      connectTemporalWorker(temporal),
      CONNECT_TIMEOUT_MS,
      `the Temporal server at ${temporal.address}`,
    );
  } catch (err) {
    const message =
      err instanceof ConnectionFailedError
        ? err.message
        : `cannot reach Temporal at ${temporal.address}: ${messageOf(err)}`;
    return {
      result: {
        check,
        ok: false,
        message,
        fix: 'Start the server or set TEMPORAL_ADDRESS (or TEMPORAL_PROFILE); for TLS or an API key see TEMPORAL_TLS_* and TEMPORAL_API_KEY.',
      },
    };
  }
  let version = '';
  try {
    const info = await connection.workflowService.getSystemInfo({});
    if (info.serverVersion) version = ` (server ${info.serverVersion})`;
  } catch {
    // Reaching it is what matters here; the next checks use it for real.
  }
  return { result: { check, ok: true, message: `Temporal answers at ${temporal.address}${version}` }, connection };
}

/** Check 2. */
export async function checkNamespace(connection: NativeConnection, temporal: TemporalSettings): Promise<CheckResult> {
  const check = 'namespace';
  try {
    await connection.workflowService.describeNamespace({ namespace: temporal.namespace });
    return { check, ok: true, message: `namespace ${temporal.namespace} exists` };
  } catch (err) {
    if (grpcCode(err) === NOT_FOUND) {
      return {
        check,
        ok: false,
        message: `namespace ${temporal.namespace} does not exist on ${temporal.address}`,
        fix: isTemporalCloud(temporal.address)
          ? 'Set TEMPORAL_NAMESPACE to your Temporal Cloud namespace (<name>.<account-id>).'
          : `Set TEMPORAL_NAMESPACE, or create it: temporal operator namespace create --address ${temporal.address} --namespace ${temporal.namespace}`,
      };
    }
    if (grpcCode(err) === PERMISSION_DENIED) {
      return {
        check,
        ok: false,
        message: `not allowed to use namespace ${temporal.namespace}: ${messageOf(err)}`,
        fix: 'Check the API key or client certificate: it must be allowed to use this namespace.',
      };
    }
    return { check, ok: false, message: `cannot describe namespace ${temporal.namespace}: ${messageOf(err)}` };
  }
}

/** Check 3. A server that does not let this worker list them gets the benefit of the doubt (ok, with a note). */
export async function checkSearchAttributes(
  connection: NativeConnection,
  temporal: TemporalSettings,
): Promise<CheckResult> {
  const check = 'search attributes';
  let existing: Record<string, unknown>;
  try {
    const response = await connection.operatorService.listSearchAttributes({ namespace: temporal.namespace });
    existing = { ...(response.customAttributes ?? {}) } as Record<string, unknown>;
  } catch (err) {
    const code = grpcCode(err);
    if (code === PERMISSION_DENIED || code === UNIMPLEMENTED) {
      return {
        check,
        ok: true,
        message: `could not list search attributes (${messageOf(err)}); make sure ${SEARCH_ATTRIBUTES.map((a) => a.name).join(', ')} exist`,
      };
    }
    return {
      check,
      ok: false,
      message: `cannot list the search attributes of ${temporal.namespace}: ${messageOf(err)}`,
    };
  }
  const missing = SEARCH_ATTRIBUTES.filter((a) => !(a.name in existing));
  const wrongType = SEARCH_ATTRIBUTES.filter((a) => a.name in existing && typeName(existing[a.name]) !== a.type);
  if (missing.length === 0 && wrongType.length === 0) {
    return {
      check,
      ok: true,
      message: `${SEARCH_ATTRIBUTES.map((a) => `${a.name} (${a.type})`).join(', ')} exist in ${temporal.namespace}`,
    };
  }
  const problems = [
    ...(missing.length > 0
      ? [`${missing.map((a) => a.name).join(', ')} ${missing.length > 1 ? 'are' : 'is'} missing`]
      : []),
    ...wrongType.map((a) => `${a.name} is ${typeName(existing[a.name])}, stopflow needs ${a.type}`),
  ];
  const result: CheckResult = {
    check,
    ok: false,
    message: `search attributes of namespace ${temporal.namespace}: ${problems.join('; ')}`,
  };
  if (missing.length > 0) {
    result.fix = `Create ${missing.length > 1 ? 'them' : 'it'} with: ${searchAttributeCommands(temporal, missing).join(' && ')}`;
  }
  if (wrongType.length > 0) {
    const rename = `A search attribute's type cannot be changed: remove ${wrongType.map((a) => a.name).join(', ')} from the namespace and create ${wrongType.length > 1 ? 'them' : 'it'} again with the right type, or use another namespace.`;
    result.fix = result.fix ? `${result.fix}. ${rename}` : rename;
  }
  return result;
}

/** Check 4. */
export async function checkProviders(providers: readonly Provider[]): Promise<CheckResult[]> {
  return Promise.all(
    providers.map(async (provider): Promise<CheckResult> => {
      const check = `provider ${provider.name}`;
      if (!provider.checkUsable) return { check, ok: true, message: `${provider.name} has no start-up check` };
      try {
        await withTimeout(provider.checkUsable(), PROVIDER_CHECK_TIMEOUT_MS, `provider ${provider.name}`);
        return { check, ok: true, message: `${provider.name} is usable` };
      } catch (err) {
        return {
          check,
          ok: false,
          message: `provider ${provider.name} is not usable: ${messageOf(err)}`,
          fix: `Fix the ${provider.name} provider's settings (docs/worker.md), or remove it from STOPFLOW_PROVIDERS.`,
        };
      }
    }),
  );
}

export interface StartupCheckReport {
  results: CheckResult[];
  ok: boolean;
  /** Open when the server was reachable; the caller owns it. */
  connection?: NativeConnection;
}

export async function runStartupChecks(
  temporal: TemporalSettings,
  providers: readonly Provider[],
): Promise<StartupCheckReport> {
  const [server, providerResults] = await Promise.all([checkServer(temporal), checkProviders(providers)]);
  const results = [server.result];
  if (server.connection) {
    const namespace = await checkNamespace(server.connection, temporal);
    results.push(namespace);
    if (namespace.ok) results.push(await checkSearchAttributes(server.connection, temporal));
  }
  results.push(...providerResults);
  const report: StartupCheckReport = { results, ok: results.every((r) => r.ok) };
  if (server.connection) report.connection = server.connection;
  return report;
}
