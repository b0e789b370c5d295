/**
 * The worker's configuration, from the environment only (docs/worker.md has
 * the table). Every problem is reported as `VARIABLE: rule`, all at once, so
 * one restart fixes them all. `describeWorkerConfig` is what the worker prints
 * at start: it shows where secrets come from, never their values.
 */
import { readFileSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import { isAbsolute } from 'node:path';
import {
  type ClientConfigProfile,
  type ClientConnectConfig,
  loadClientConfigProfile,
  toClientOptions,
} from '@temporalio/envconfig';
import { z } from 'zod';
import type { CallBudget } from '../activities/provider';
import { isProviderName, PROVIDER_NAMES, type ProviderName, type ProviderSettings } from '../activities/providers';
import { defaultCallBudget } from '../activities/providers/budgets';
import {
  DEFAULT_LINUX_STATE_DIR,
  isLinuxInstanceId,
  linuxTaskQueue,
  parseDevicePatterns,
} from '../activities/providers/linux';
import { simStatePath } from '../activities/providers/simulated';
import { describeTracing, tracingProblems } from '../client/tracing';
import { formatDuration, parseDuration } from '../common/duration';
import { DEFAULT_TASK_QUEUE } from '../common/names';
import { DEFAULT_WATCH_HEARTBEAT_TIMEOUT_MS, WATCH_HEARTBEAT_TIMEOUT_RANGE_MS } from '../common/stop-activities';
import {
  DEFAULT_DETACH_HOLD_MS,
  DEFAULT_MAX_CACHED_WORKFLOWS,
  DEFAULT_MAX_CONCURRENT_FORCES,
  DEFAULT_MAX_CONCURRENT_WAITS,
} from './defaults';

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error'] as const;
/** Backends whose volume ids are unique across instances: held volumes are refused by default there. */
const GLOBAL_VOLUME_IDS: ReadonlySet<string> = new Set(['aws', 'gcp', 'azure']);
export type LogLevelName = (typeof LOG_LEVELS)[number];

/** The detach wait heartbeats on every poll, and its heartbeat timeout is 30s (workflows/stop-instance.ts). */
export const POLL_INTERVAL_RANGE_MS = [1_000, 20_000] as const;
/** One attempt of the detach wait must end well inside its 10m startToCloseTimeout. */
export const DETACH_HOLD_RANGE_MS = [1_000, 300_000] as const;
export const MAX_POLL_INTERVAL_RANGE_MS = [1_000, 600_000] as const;
export const SHUTDOWN_GRACE_RANGE_MS = [1_000, 600_000] as const;

export interface TemporalSettings {
  address: string;
  namespace: string;
  /** TEMPORAL_PROFILE, when one was asked for. */
  profile?: string;
  /** What client/connection.ts needs to connect (may hold secrets: never print it). */
  connectConfig: ClientConnectConfig;
  /** Safe to print. */
  summary: Record<string, unknown>;
}

export interface WorkerConfig {
  temporal: TemporalSettings;
  taskQueue: string;
  /** Where the task queue's name came from, for the start-up summary. */
  taskQueueSource: 'STOPFLOW_TASK_QUEUE' | 'default' | 'linux host default';
  providers: ProviderName[];
  defaultProvider: ProviderName;
  simStatePath: string;
  linuxStopCommand?: string;
  linuxVolumeDir?: string;
  /** linux: globs over resolved device paths the provider may touch (STOPFLOW_LINUX_DEVICES). */
  linuxDevicePatterns?: string[];
  /** linux: the one instance this host is (STOPFLOW_LINUX_INSTANCE_ID, default the host name); set when linux is configured. */
  linuxInstanceId?: string;
  /** linux: boot-id records of stops (STOPFLOW_LINUX_STATE_DIR); set when linux is configured. */
  linuxStateDir?: string;
  pollIntervalMs: number;
  detachHoldMs: number;
  maxPollIntervalMs: number;
  /** The heartbeat timeout of watched waits (STOPFLOW_WATCH_HEARTBEAT_TIMEOUT): a killed worker's waits move after it. */
  watchHeartbeatTimeoutMs: number;
  metricsAddress: string | null;
  shutdownGraceMs: number;
  maxConcurrentActivities: number;
  /** Slots of the waits task queue (`<taskQueue>-waits`). */
  maxConcurrentWaits: number;
  /** Slots of the forces task queue (`<taskQueue>-forces`). */
  maxConcurrentForces: number;
  maxConcurrentWorkflowTasks: number;
  maxCachedWorkflows: number;
  /** Providers whose call budget the operator set (STOPFLOW_CALL_BUDGET); the others keep their own default. */
  callBudgets: Partial<Record<ProviderName, CallBudget>>;
  logLevel: LogLevelName;
  identity?: string;
  /** A workflow bundle written by `stopflow worker --write-bundle`; otherwise the worker bundles at start. */
  workflowBundlePath?: string;
  /** Refuse a volume another instance's running stop on this task queue holds (STOPFLOW_REFUSE_HELD_VOLUMES). */
  refuseHeldVolumes: boolean;
  /** Workflow stack traces in the bundle this worker builds (STOPFLOW_WORKFLOW_STACK_TRACES; worker/workflow-stack-traces.ts). */
  workflowStackTraces: boolean;
  /** Completion events (STOPFLOW_EVENTS_URL and its secret); absent when off. The secret is never printed. */
  events?: { url: string; secret: string; secretFrom: string };
}

/** Invalid configuration: one `VARIABLE: rule` line per problem. */
export class ConfigError extends Error {
  override name = 'ConfigError';
  constructor(readonly issues: string[]) {
    super(`invalid configuration:\n${issues.map((issue) => `  ${issue}`).join('\n')}`);
  }
}

// --- rules, worded for the person who has to fix the variable ---

const blankToUndefined = (value: unknown) => (typeof value === 'string' && value.trim() === '' ? undefined : value);

function durationVar(example: string, [min, max]: readonly [number, number]) {
  const rule = `must be a duration such as "${example}" (${formatDuration(min)}-${formatDuration(max)})`;
  return z.string().transform((text, ctx) => {
    const ms = parseDuration(text);
    if (typeof ms !== 'number' || ms < min || ms > max) {
      ctx.addIssue({ code: 'custom', message: rule });
      return z.NEVER;
    }
    return ms;
  });
}

function countVar(min: number, max: number) {
  const rule = `must be a whole number from ${min} to ${max}`;
  return z
    .string()
    .regex(/^\s*\d+\s*$/, { error: rule })
    .transform(Number)
    .refine((n) => n >= min && n <= max, { error: rule });
}

const PROVIDERS_RULE = `must be a comma-separated list of providers from: ${PROVIDER_NAMES.join(', ')} (e.g. "${PROVIDER_NAMES[0]}")`;
const providerList = z.string().transform((text, ctx) => {
  const names = text
    .split(',')
    .map((name) => name.trim())
    .filter(Boolean);
  const unknown = names.filter((name) => !isProviderName(name));
  if (names.length === 0 || unknown.length > 0) {
    ctx.addIssue({
      code: 'custom',
      message: unknown.length > 0 ? `${PROVIDERS_RULE}; unknown: ${unknown.join(', ')}` : PROVIDERS_RULE,
    });
    return z.NEVER;
  }
  if (new Set(names).size !== names.length) {
    ctx.addIssue({ code: 'custom', message: `${PROVIDERS_RULE}, each at most once` });
    return z.NEVER;
  }
  return names as ProviderName[];
});

const CALL_BUDGET_RULE =
  'must be a comma-separated list of provider=CALLS_PER_SECOND/BURST, such as "aws=5/25" (calls per second from 0.1 to 10000; burst a whole number from 1 to 100000, by default five seconds of calls), each a provider in STOPFLOW_PROVIDERS other than linux, at most once';
/** Calls a bucket holds when STOPFLOW_CALL_BUDGET gives a rate alone: five seconds of it, as the clouds' defaults do. */
const DEFAULT_BURST_SECONDS = 5;
const callBudgets = z.string().transform((text, ctx) => {
  const budgets: Partial<Record<ProviderName, CallBudget>> = {};
  // An empty entry ("aws=5,,gcp=3", a lone comma) is refused like any other that says nothing usable.
  for (const entry of text.split(',').map((part) => part.trim())) {
    const match = /^([a-z]+)\s*=\s*(\d+(?:\.\d+)?)\s*(?:\/\s*(\d+))?$/.exec(entry);
    const name = match?.[1];
    const callsPerSecond = Number(match?.[2]);
    const burst =
      match?.[3] === undefined ? Math.max(1, Math.ceil(callsPerSecond * DEFAULT_BURST_SECONDS)) : Number(match[3]);
    const fits = callsPerSecond >= 0.1 && callsPerSecond <= 10_000 && burst >= 1 && burst <= 100_000;
    if (!match || name === undefined || !isProviderName(name) || !fits || name in budgets) {
      ctx.addIssue({ code: 'custom', message: `${CALL_BUDGET_RULE}; not: "${entry}"` });
      return z.NEVER;
    }
    budgets[name] = { callsPerSecond, burst };
  }
  return budgets;
});

const METRICS_RULE =
  'must be "off" or an IP address and port to serve Prometheus metrics on, such as "127.0.0.1:9464" (or "0.0.0.0:9464" for other hosts)';
const metricsAddress = z.string().transform((text, ctx) => {
  const value = text.trim();
  if (value.toLowerCase() === 'off') return null;
  const match = /^(?:(\d{1,3}(?:\.\d{1,3}){3})|\[([0-9A-Fa-f:.]+)\]):(\d{1,5})$/.exec(value);
  const ipv4 = match?.[1];
  const port = Number(match?.[3]);
  const ok =
    match !== null &&
    (ipv4 === undefined || ipv4.split('.').every((part) => Number(part) <= 255)) &&
    port >= 1 &&
    port <= 65_535;
  if (!ok) {
    ctx.addIssue({ code: 'custom', message: METRICS_RULE });
    return z.NEVER;
  }
  return value;
});

const LOG_LEVEL_RULE = `must be one of ${LOG_LEVELS.join(', ')}`;
const logLevel = z
  .string()
  .transform((text) => text.trim().toLowerCase())
  .refine((text): text is LogLevelName => (LOG_LEVELS as readonly string[]).includes(text), { error: LOG_LEVEL_RULE })
  .transform((text) => text as LogLevelName);

const BOOL_RULE = 'must be "true" or "false"';
const boolText = z.string().refine((text) => ['true', 'false', '1', '0'].includes(text.trim().toLowerCase()), {
  error: BOOL_RULE,
});

const devicePatterns = z.string().transform((text, ctx) => {
  try {
    return parseDevicePatterns(text);
  } catch (err) {
    ctx.addIssue({
      code: 'custom',
      message: `must be a comma-separated list of globs over device paths, such as "/dev/nvme[1-9]n1,/dev/xvd[f-z]" (${(err as Error).message})`,
    });
    return z.NEVER;
  }
});

const LINUX_INSTANCE_ID_RULE =
  "must be this host's instance id as stop requests name it: 1-255 characters of [A-Za-z0-9._:-] (default the host name)";
const LINUX_ALLOW_LIST_RULE =
  'must be set when linux is in STOPFLOW_PROVIDERS (a directory whose loop images are the volumes), or STOPFLOW_LINUX_DEVICES ' +
  '(comma-separated globs of the devices the linux provider may detach, such as "/dev/nvme[1-9]n1"), or both: ' +
  'without an allow-list the provider would touch any device a request names';

/** A GUID, as activities/providers/azure.ts checks it (not imported: that module loads the Azure SDK). */
const AZURE_SUBSCRIPTION_ID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
const AZURE_SUBSCRIPTION_RULE = 'must be the Azure subscription id (a GUID) of the VMs the azure provider stops';
const AZURE_ENDPOINT_RULE =
  'must be the https URL of Azure Resource Manager, such as "https://management.usgovcloudapi.net" (default https://management.azure.com)';
function isHttpsUrl(text: string): boolean {
  try {
    return new URL(text).protocol === 'https:';
  } catch {
    return false;
  }
}

/** GCP names, as activities/providers/gcp.ts checks them (not imported: that module loads the Compute SDK). */
const GCP_PROJECT = /^(?:[a-z0-9.-]+:)?[a-z][-a-z0-9]{0,61}[a-z0-9]$/;
const GCP_ZONE = /^[a-z][-a-z0-9]{0,62}$/;
const GCP_FORCE_RULE =
  'must be "off" (default: Compute Engine has no forced detach, a disk that will not detach fails the stop) or ' +
  '"stop-instance" (force by stopping the whole instance at once, then detaching)';
const GCP_ENDPOINT_RULE =
  'must be the https URL of the Compute Engine API endpoint, such as "https://compute.googleapis.com", or a plain ' +
  'http URL on a loopback address (a local test server, to which no credentials are sent)';
function isGcpEndpoint(text: string): boolean {
  try {
    const url = new URL(text);
    if (url.pathname !== '/' || url.search !== '') return false;
    return (
      url.protocol === 'https:' ||
      (url.protocol === 'http:' && /^(localhost|127\.\d+\.\d+\.\d+|\[::1\])$/.test(url.hostname))
    );
  } catch {
    return false;
  }
}

const ADDRESS_RULE = 'must be host:port, such as "localhost:7233" or "my-namespace.a1b2c.tmprl.cloud:7233"';
const temporalAddress = z.string().regex(/^[A-Za-z0-9._-]+:\d{1,5}$|^\[[0-9A-Fa-f:.]+\]:\d{1,5}$/, {
  error: ADDRESS_RULE,
});

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

const FILE_RULE = 'must be the path of an existing file';
const existingFile = (rule: string) =>
  z.string().refine(
    (path) => {
      try {
        return statSync(path).isFile();
      } catch {
        return false;
      }
    },
    { error: rule },
  );

const EVENTS_URL_RULE =
  'must be the http or https URL completion events are POSTed to, without user or password (the secret signs them)';
const eventsUrl = z.string().refine(
  (text) => {
    try {
      const url = new URL(text.trim());
      return (url.protocol === 'https:' || url.protocol === 'http:') && !url.username && !url.password;
    } catch {
      return false;
    }
  },
  { error: EVENTS_URL_RULE },
);
/** Worded without the value: a secret must not reach the error output either. */
const EVENTS_SECRET_RULE = 'must be at least 16 characters (it keys the HMAC-SHA256 signature of completion events)';
const eventsSecret = z.string().refine((text) => text.trim().length >= 16, { error: EVENTS_SECRET_RULE });

const envSchema = z
  .object({
    // No default here: a worker with the linux provider defaults to a queue of its own host.
    STOPFLOW_TASK_QUEUE: z.preprocess(
      blankToUndefined,
      z
        .string()
        .regex(/^\S{1,255}$/, { error: 'must be 1-255 characters without spaces' })
        .optional(),
    ),
    STOPFLOW_PROVIDERS: z.preprocess(blankToUndefined, providerList.default(['simulated'])),
    STOPFLOW_DEFAULT_PROVIDER: z.preprocess(blankToUndefined, z.string().trim().optional()),
    STOPFLOW_SIM_STATE: z.preprocess(blankToUndefined, z.string().optional()),
    STOPFLOW_LINUX_STOP_COMMAND: z.preprocess(
      blankToUndefined,
      z.string().max(4096, { error: 'must be at most 4096 characters' }).optional(),
    ),
    STOPFLOW_LINUX_VOLUME_DIR: z.preprocess(
      blankToUndefined,
      z
        .string()
        .refine(isDirectory, { error: 'must be the path of an existing directory (where the loop images live)' })
        .optional(),
    ),
    STOPFLOW_LINUX_DEVICES: z.preprocess(blankToUndefined, devicePatterns.optional()),
    STOPFLOW_LINUX_INSTANCE_ID: z.preprocess(
      blankToUndefined,
      z.string().trim().refine(isLinuxInstanceId, { error: LINUX_INSTANCE_ID_RULE }).optional(),
    ),
    STOPFLOW_LINUX_STATE_DIR: z.preprocess(
      blankToUndefined,
      z
        .string()
        .refine(isAbsolute, { error: 'must be an absolute path (a directory, created when missing)' })
        .optional(),
    ),
    // Checked only when azure is configured (superRefine): other tools on the host may use it their own way.
    AZURE_SUBSCRIPTION_ID: z.preprocess(blankToUndefined, z.string().trim().optional()),
    STOPFLOW_AZURE_ENDPOINT: z.preprocess(
      blankToUndefined,
      z.string().trim().refine(isHttpsUrl, { error: AZURE_ENDPOINT_RULE }).optional(),
    ),
    STOPFLOW_GCP_PROJECT: z.preprocess(
      blankToUndefined,
      z
        .string()
        .trim()
        .regex(GCP_PROJECT, { error: 'must be a Google Cloud project id, such as "my-project-123"' })
        .optional(),
    ),
    STOPFLOW_GCP_ZONE: z.preprocess(
      blankToUndefined,
      z.string().trim().regex(GCP_ZONE, { error: 'must be a Compute Engine zone, such as "us-central1-a"' }).optional(),
    ),
    STOPFLOW_GCP_FORCE: z.preprocess(
      blankToUndefined,
      z.enum(['off', 'stop-instance'], { error: GCP_FORCE_RULE }).optional(),
    ),
    STOPFLOW_GCP_ENDPOINT: z.preprocess(
      blankToUndefined,
      z.string().trim().refine(isGcpEndpoint, { error: GCP_ENDPOINT_RULE }).optional(),
    ),
    STOPFLOW_POLL_INTERVAL: z.preprocess(blankToUndefined, durationVar('5s', POLL_INTERVAL_RANGE_MS).default(5_000)),
    STOPFLOW_DETACH_HOLD: z.preprocess(
      blankToUndefined,
      durationVar('15s', DETACH_HOLD_RANGE_MS).default(DEFAULT_DETACH_HOLD_MS),
    ),
    STOPFLOW_MAX_POLL_INTERVAL: z.preprocess(
      blankToUndefined,
      durationVar('60s', MAX_POLL_INTERVAL_RANGE_MS).default(60_000),
    ),
    STOPFLOW_WATCH_HEARTBEAT_TIMEOUT: z.preprocess(
      blankToUndefined,
      durationVar('15m', WATCH_HEARTBEAT_TIMEOUT_RANGE_MS).default(DEFAULT_WATCH_HEARTBEAT_TIMEOUT_MS),
    ),
    // Loopback unless told otherwise: metrics name instances and volumes (a container sets 0.0.0.0 itself).
    STOPFLOW_METRICS_ADDRESS: z.preprocess(blankToUndefined, metricsAddress.default('127.0.0.1:9464')),
    STOPFLOW_SHUTDOWN_GRACE: z.preprocess(
      blankToUndefined,
      durationVar('20s', SHUTDOWN_GRACE_RANGE_MS).default(20_000),
    ),
    STOPFLOW_MAX_CONCURRENT_ACTIVITIES: z.preprocess(blankToUndefined, countVar(1, 10_000).default(100)),
    STOPFLOW_MAX_CONCURRENT_WORKFLOW_TASKS: z.preprocess(blankToUndefined, countVar(2, 1_000).default(40)),
    STOPFLOW_MAX_CONCURRENT_WAITS: z.preprocess(
      blankToUndefined,
      countVar(1, 100_000).default(DEFAULT_MAX_CONCURRENT_WAITS),
    ),
    STOPFLOW_MAX_CONCURRENT_FORCES: z.preprocess(
      blankToUndefined,
      countVar(1, 10_000).default(DEFAULT_MAX_CONCURRENT_FORCES),
    ),
    STOPFLOW_MAX_CACHED_WORKFLOWS: z.preprocess(
      blankToUndefined,
      countVar(0, 100_000).default(DEFAULT_MAX_CACHED_WORKFLOWS),
    ),
    STOPFLOW_CALL_BUDGET: z.preprocess(blankToUndefined, callBudgets.optional()),
    STOPFLOW_LOG_LEVEL: z.preprocess(blankToUndefined, logLevel.default('info')),
    STOPFLOW_IDENTITY: z.preprocess(
      blankToUndefined,
      z.string().max(255, { error: 'must be at most 255 characters' }).optional(),
    ),
    STOPFLOW_WORKFLOW_BUNDLE: z.preprocess(
      blankToUndefined,
      existingFile(`${FILE_RULE} (a bundle written by \`stopflow worker --write-bundle <path>\`)`).optional(),
    ),
    STOPFLOW_REFUSE_HELD_VOLUMES: z.preprocess(blankToUndefined, boolText.optional()),
    STOPFLOW_WORKFLOW_STACK_TRACES: z.preprocess(blankToUndefined, boolText.optional()),
    STOPFLOW_EVENTS_URL: z.preprocess(blankToUndefined, eventsUrl.optional()),
    STOPFLOW_EVENTS_SECRET: z.preprocess(blankToUndefined, eventsSecret.optional()),
    STOPFLOW_EVENTS_SECRET_FILE: z.preprocess(blankToUndefined, existingFile(FILE_RULE).optional()),
    TEMPORAL_ADDRESS: z.preprocess(blankToUndefined, temporalAddress.optional()),
    TEMPORAL_NAMESPACE: z.preprocess(
      blankToUndefined,
      z
        .string()
        .regex(/^[A-Za-z0-9._-]{1,255}$/, { error: 'must be a namespace name: 1-255 characters of [A-Za-z0-9._-]' })
        .optional(),
    ),
    TEMPORAL_TLS: z.preprocess(blankToUndefined, boolText.optional()),
    TEMPORAL_TLS_DISABLE_HOST_VERIFICATION: z.preprocess(blankToUndefined, boolText.optional()),
    TEMPORAL_TLS_CLIENT_CERT_PATH: z.preprocess(blankToUndefined, existingFile(FILE_RULE).optional()),
    TEMPORAL_TLS_CLIENT_KEY_PATH: z.preprocess(blankToUndefined, existingFile(FILE_RULE).optional()),
    TEMPORAL_TLS_SERVER_CA_CERT_PATH: z.preprocess(blankToUndefined, existingFile(FILE_RULE).optional()),
  })
  .superRefine((env, ctx) => {
    const providers = env.STOPFLOW_PROVIDERS;
    if (env.STOPFLOW_DEFAULT_PROVIDER !== undefined && !providers.some((p) => p === env.STOPFLOW_DEFAULT_PROVIDER)) {
      ctx.addIssue({
        code: 'custom',
        path: ['STOPFLOW_DEFAULT_PROVIDER'],
        message: `must be one of the providers in STOPFLOW_PROVIDERS (${providers.join(', ')})`,
      });
    }
    if (providers.includes('azure') && !AZURE_SUBSCRIPTION_ID.test(env.AZURE_SUBSCRIPTION_ID ?? '')) {
      // Every VM call names the subscription; without one the provider cannot make any.
      ctx.addIssue({
        code: 'custom',
        path: ['AZURE_SUBSCRIPTION_ID'],
        message: `${AZURE_SUBSCRIPTION_RULE}, set when azure is in STOPFLOW_PROVIDERS`,
      });
    }
    if (providers.includes('linux')) {
      // Without an allow-list the linux provider would touch any device a request names (/dev/sda2, /boot).
      if (env.STOPFLOW_LINUX_VOLUME_DIR === undefined && (env.STOPFLOW_LINUX_DEVICES ?? []).length === 0) {
        ctx.addIssue({ code: 'custom', path: ['STOPFLOW_LINUX_VOLUME_DIR'], message: LINUX_ALLOW_LIST_RULE });
      }
      if (env.STOPFLOW_LINUX_INSTANCE_ID === undefined && !isLinuxInstanceId(hostname())) {
        ctx.addIssue({
          code: 'custom',
          path: ['STOPFLOW_LINUX_INSTANCE_ID'],
          message: `${LINUX_INSTANCE_ID_RULE}; the host name ${JSON.stringify(hostname())} is not, so set it`,
        });
      }
    }
    const secretGiven = env.STOPFLOW_EVENTS_SECRET !== undefined || env.STOPFLOW_EVENTS_SECRET_FILE !== undefined;
    if (env.STOPFLOW_EVENTS_SECRET !== undefined && env.STOPFLOW_EVENTS_SECRET_FILE !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['STOPFLOW_EVENTS_SECRET_FILE'],
        message: 'must not be set together with STOPFLOW_EVENTS_SECRET: give the secret one way',
      });
    }
    if (env.STOPFLOW_EVENTS_URL !== undefined && !secretGiven) {
      // Unsigned events would let anyone who can reach the receiver forge a "stopped".
      ctx.addIssue({
        code: 'custom',
        path: ['STOPFLOW_EVENTS_SECRET'],
        message: `${EVENTS_SECRET_RULE}; set it (or STOPFLOW_EVENTS_SECRET_FILE) when STOPFLOW_EVENTS_URL is set`,
      });
    }
    if (env.STOPFLOW_EVENTS_URL === undefined && secretGiven) {
      ctx.addIssue({ code: 'custom', path: ['STOPFLOW_EVENTS_URL'], message: `${EVENTS_URL_RULE}; a secret is set` });
    }
    for (const name of Object.keys(env.STOPFLOW_CALL_BUDGET ?? {})) {
      if (name === 'linux' || !providers.some((p) => p === name)) {
        ctx.addIssue({
          code: 'custom',
          path: ['STOPFLOW_CALL_BUDGET'],
          message:
            name === 'linux'
              ? `${CALL_BUDGET_RULE}; linux calls no remote API and keeps no budget`
              : `${CALL_BUDGET_RULE}; ${name} is not in STOPFLOW_PROVIDERS (${providers.join(', ')})`,
        });
      }
    }
    if (env.STOPFLOW_MAX_POLL_INTERVAL < env.STOPFLOW_POLL_INTERVAL) {
      ctx.addIssue({
        code: 'custom',
        path: ['STOPFLOW_MAX_POLL_INTERVAL'],
        message: `must not be shorter than STOPFLOW_POLL_INTERVAL (${formatDuration(env.STOPFLOW_POLL_INTERVAL)})`,
      });
    }
  });

type Env = Record<string, string | undefined>;

const isTrue = (text: string | undefined) => text !== undefined && ['true', '1'].includes(text.trim().toLowerCase());

/**
 * STOPFLOW_WORKFLOW_STACK_TRACES alone, for `--write-bundle` (which reads no other variable of the worker's):
 * whether the bundle it writes keeps workflow stack traces.
 */
export function workflowStackTracesRequested(env: Env = process.env): boolean {
  const value = blankToUndefined(env.STOPFLOW_WORKFLOW_STACK_TRACES);
  if (value === undefined) return false;
  if (!boolText.safeParse(value).success) throw new ConfigError([`STOPFLOW_WORKFLOW_STACK_TRACES: ${BOOL_RULE}`]);
  return isTrue(String(value));
}

/** Reads and checks the configuration. Throws ConfigError naming every bad variable and its rule. */
export function loadWorkerConfig(env: Env = process.env): WorkerConfig {
  const parsed = envSchema.safeParse(env);
  const issues = parsed.success
    ? []
    : parsed.error.issues.map((issue) => `${String(issue.path[0] ?? 'environment')}: ${issue.message}`);
  // A bad TEMPORAL_* variable is reported once, by its rule, not again by envconfig.
  let temporal: TemporalSettings | undefined;
  if (!issues.some((issue) => issue.startsWith('TEMPORAL_'))) {
    try {
      temporal = loadTemporalSettings(env);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      issues.push(...err.issues);
    }
  }
  // Traces are configured by the standard OTEL_* variables (client/tracing.ts); checked only when on.
  issues.push(...tracingProblems(env).map((p) => `${p.variable}: ${p.message}`));
  if (!parsed.success || !temporal || issues.length > 0) throw new ConfigError([...new Set(issues)]);

  const e = parsed.data;
  const linux = e.STOPFLOW_PROVIDERS.includes('linux');
  const linuxInstanceId = e.STOPFLOW_LINUX_INSTANCE_ID ?? hostname();
  // Two linux hosts on one queue would take each other's stops (and refuse them): one queue per host by default.
  const taskQueue = e.STOPFLOW_TASK_QUEUE ?? (linux ? linuxTaskQueue(linuxInstanceId) : DEFAULT_TASK_QUEUE);
  const config: WorkerConfig = {
    temporal,
    taskQueue,
    taskQueueSource: e.STOPFLOW_TASK_QUEUE ? 'STOPFLOW_TASK_QUEUE' : linux ? 'linux host default' : 'default',
    providers: e.STOPFLOW_PROVIDERS,
    defaultProvider:
      (e.STOPFLOW_DEFAULT_PROVIDER as ProviderName | undefined) ?? (e.STOPFLOW_PROVIDERS[0] as ProviderName),
    simStatePath: e.STOPFLOW_SIM_STATE ?? simStatePath({}),
    pollIntervalMs: e.STOPFLOW_POLL_INTERVAL,
    detachHoldMs: e.STOPFLOW_DETACH_HOLD,
    maxPollIntervalMs: e.STOPFLOW_MAX_POLL_INTERVAL,
    watchHeartbeatTimeoutMs: e.STOPFLOW_WATCH_HEARTBEAT_TIMEOUT,
    metricsAddress: e.STOPFLOW_METRICS_ADDRESS,
    shutdownGraceMs: e.STOPFLOW_SHUTDOWN_GRACE,
    maxConcurrentActivities: e.STOPFLOW_MAX_CONCURRENT_ACTIVITIES,
    maxConcurrentWaits: e.STOPFLOW_MAX_CONCURRENT_WAITS,
    maxConcurrentForces: e.STOPFLOW_MAX_CONCURRENT_FORCES,
    maxCachedWorkflows: e.STOPFLOW_MAX_CACHED_WORKFLOWS,
    maxConcurrentWorkflowTasks: e.STOPFLOW_MAX_CONCURRENT_WORKFLOW_TASKS,
    callBudgets: e.STOPFLOW_CALL_BUDGET ?? {},
    logLevel: e.STOPFLOW_LOG_LEVEL,
    // Unset: refuse where a volume id names one volume of the backend (the clouds' ids); the simulated cloud
    // reuses names across instances and a linux worker serves one host, so there it is off unless asked.
    refuseHeldVolumes:
      e.STOPFLOW_REFUSE_HELD_VOLUMES === undefined
        ? e.STOPFLOW_PROVIDERS.every((p) => GLOBAL_VOLUME_IDS.has(p))
        : isTrue(e.STOPFLOW_REFUSE_HELD_VOLUMES),
    workflowStackTraces: isTrue(e.STOPFLOW_WORKFLOW_STACK_TRACES),
  };
  if (e.STOPFLOW_LINUX_STOP_COMMAND !== undefined) config.linuxStopCommand = e.STOPFLOW_LINUX_STOP_COMMAND;
  if (e.STOPFLOW_LINUX_VOLUME_DIR !== undefined) config.linuxVolumeDir = e.STOPFLOW_LINUX_VOLUME_DIR;
  if (e.STOPFLOW_LINUX_DEVICES !== undefined) config.linuxDevicePatterns = e.STOPFLOW_LINUX_DEVICES;
  if (linux) {
    config.linuxInstanceId = linuxInstanceId;
    config.linuxStateDir = e.STOPFLOW_LINUX_STATE_DIR ?? DEFAULT_LINUX_STATE_DIR;
  }
  if (e.STOPFLOW_IDENTITY !== undefined) config.identity = e.STOPFLOW_IDENTITY;
  if (e.STOPFLOW_WORKFLOW_BUNDLE !== undefined) config.workflowBundlePath = e.STOPFLOW_WORKFLOW_BUNDLE;
  if (e.STOPFLOW_EVENTS_URL !== undefined) {
    const file = e.STOPFLOW_EVENTS_SECRET_FILE;
    const secret = (file !== undefined ? readFileSync(file, 'utf8') : (e.STOPFLOW_EVENTS_SECRET ?? '')).trim();
    if (secret.length < 16) throw new ConfigError([`STOPFLOW_EVENTS_SECRET_FILE: ${EVENTS_SECRET_RULE}`]);
    config.events = {
      url: e.STOPFLOW_EVENTS_URL.trim(),
      secret,
      secretFrom: file !== undefined ? `file ${file}` : 'STOPFLOW_EVENTS_SECRET',
    };
  }
  return config;
}

/**
 * The Temporal connection through @temporalio/envconfig: TEMPORAL_ADDRESS,
 * TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS*, TEMPORAL_GRPC_META_*,
 * and profiles (TEMPORAL_PROFILE, TEMPORAL_CONFIG_FILE), as client/connection.ts does.
 */
function loadTemporalSettings(env: Env): TemporalSettings {
  const overrideEnvVars: Record<string, string> = {};
  for (const [key, value] of Object.entries(env)) {
    if (value !== undefined && value !== '') overrideEnvVars[key] = value;
  }
  const profileName = overrideEnvVars.TEMPORAL_PROFILE;
  let profile: ClientConfigProfile;
  try {
    profile = loadProfile(profileName, overrideEnvVars);
  } catch (err) {
    const variable = profileName ? 'TEMPORAL_PROFILE' : 'TEMPORAL_CONFIG_FILE';
    throw new ConfigError([
      `${variable}: must name a readable Temporal configuration profile (${(err as Error).message})`,
    ]);
  }
  let connectConfig: ClientConnectConfig;
  try {
    connectConfig = toClientOptions(profile);
  } catch (err) {
    // Certificate or key files named by a profile that cannot be read.
    const variable = profileName ? 'TEMPORAL_PROFILE' : 'TEMPORAL_CONFIG_FILE';
    throw new ConfigError([`${variable}: its TLS files must be readable (${(err as Error).message})`]);
  }
  const address = connectConfig.connectionOptions.address ?? 'localhost:7233';
  const namespace = connectConfig.namespace ?? 'default';
  const settings: TemporalSettings = {
    address,
    namespace,
    connectConfig: { ...connectConfig, connectionOptions: { ...connectConfig.connectionOptions, address } },
    summary: describeTemporal(address, namespace, profileName, profile, connectConfig),
  };
  if (profileName) settings.profile = profileName;
  return settings;
}

function loadProfile(profileName: string | undefined, overrideEnvVars: Record<string, string>): ClientConfigProfile {
  if (profileName) return loadClientConfigProfile({ profile: profileName, overrideEnvVars });
  try {
    return loadClientConfigProfile({ overrideEnvVars });
  } catch (err) {
    // envconfig trips over a config file without a default profile (a TypeError); no profile was asked for, so
    // the environment alone decides. Any other problem with the file is reported.
    if (!(err instanceof TypeError)) throw err;
    return loadClientConfigProfile({ overrideEnvVars, disableFile: true });
  }
}

function describeSource(source: { path: string } | { data: string | Uint8Array } | undefined): string | undefined {
  if (!source) return undefined;
  return 'path' in source ? source.path : '(inline data, hidden)';
}

function describeTemporal(
  address: string,
  namespace: string,
  profileName: string | undefined,
  profile: ClientConfigProfile,
  connectConfig: ClientConnectConfig,
): Record<string, unknown> {
  const tls = profile.tls;
  const configuredTls = connectConfig.connectionOptions.tls;
  // The SDK turns TLS on by itself when an API key is given and TLS is not configured.
  const tlsOn =
    configuredTls === undefined ? Boolean(profile.apiKey) : configuredTls !== false && configuredTls !== null;
  const summary: Record<string, unknown> = {
    address,
    namespace,
    profile: profileName ?? null,
    tls: tlsOn ? 'on' : 'off',
    apiKey: profile.apiKey ? 'set (hidden)' : 'not set',
  };
  if (tlsOn && tls) {
    const clientCert = describeSource(tls.clientCert);
    const clientKey = describeSource(tls.clientKey);
    const serverCa = describeSource(tls.serverCACert);
    if (clientCert) summary.tlsClientCert = clientCert;
    if (clientKey) summary.tlsClientKey = clientKey.startsWith('(') ? clientKey : `${clientKey} (contents hidden)`;
    if (serverCa) summary.tlsServerCaCert = serverCa;
    if (tls.serverName) summary.tlsServerName = tls.serverName;
  }
  const metaKeys = Object.keys(profile.grpcMeta ?? {});
  if (metaKeys.length > 0) summary.grpcMetadata = Object.fromEntries(metaKeys.map((key) => [key, '(hidden)']));
  return summary;
}

/** The linux provider's part of buildProviders' settings: every linux variable, for worker/main.ts to pass on. */
export function linuxProviderSettings(config: WorkerConfig): Omit<ProviderSettings, 'simStatePath'> {
  const settings: Omit<ProviderSettings, 'simStatePath'> = {};
  if (config.linuxStopCommand !== undefined) settings.linuxStopCommand = config.linuxStopCommand;
  if (config.linuxVolumeDir !== undefined) settings.linuxVolumeDir = config.linuxVolumeDir;
  if (config.linuxDevicePatterns !== undefined) settings.linuxDevicePatterns = config.linuxDevicePatterns;
  if (config.linuxInstanceId !== undefined) settings.linuxInstanceId = config.linuxInstanceId;
  if (config.linuxStateDir !== undefined) settings.linuxStateDir = config.linuxStateDir;
  return settings;
}

/** What the worker prints at start: every setting, and for secrets only whether they are set. */
export function describeWorkerConfig(config: WorkerConfig, env: Env = process.env): Record<string, unknown> {
  const summary: Record<string, unknown> = {
    temporal: config.temporal.summary,
    taskQueue:
      config.taskQueueSource === 'linux host default'
        ? `${config.taskQueue} (one queue per linux host: start this host's stops on it, or set STOPFLOW_TASK_QUEUE)`
        : config.taskQueue,
    providers: config.providers,
    defaultProvider: config.defaultProvider,
  };
  if (config.providers.includes('simulated')) summary.simState = config.simStatePath;
  if (config.providers.includes('linux')) {
    summary.linux = {
      instanceId: config.linuxInstanceId,
      stopCommand: config.linuxStopCommand ?? 'none (stopping an instance does nothing)',
      volumeDir: config.linuxVolumeDir ?? 'none (no loop device is allowed by its backing file)',
      devices: config.linuxDevicePatterns?.join(',') ?? 'none (no device is allowed by its path)',
      stateDir: config.linuxStateDir,
    };
  }
  if (config.providers.includes('aws')) summary.aws = describeAws(env);
  if (config.providers.includes('gcp')) summary.gcp = describeGcp(env);
  if (config.providers.includes('azure')) summary.azure = describeAzure(env);
  Object.assign(summary, {
    pollInterval: formatDuration(config.pollIntervalMs),
    detachHold: formatDuration(config.detachHoldMs),
    maxPollInterval: formatDuration(config.maxPollIntervalMs),
    watchHeartbeatTimeout: formatDuration(config.watchHeartbeatTimeoutMs),
    metrics: config.metricsAddress ? `http://${config.metricsAddress}/metrics` : 'off',
    shutdownGrace: formatDuration(config.shutdownGraceMs),
    maxConcurrentActivities: config.maxConcurrentActivities,
    maxConcurrentWorkflowTasks: config.maxConcurrentWorkflowTasks,
    maxConcurrentWaits: config.maxConcurrentWaits,
    maxConcurrentForces: config.maxConcurrentForces,
    maxCachedWorkflows: config.maxCachedWorkflows,
    callBudget: Object.fromEntries(
      config.providers
        .filter((p) => p !== 'linux')
        .map((p) => {
          const set = config.callBudgets[p];
          const budget = set ?? defaultCallBudget(p);
          if (!budget) return [p, 'none'];
          return [p, `${budget.callsPerSecond}/s, burst ${budget.burst}${set ? '' : " (the provider's default)"}`];
        }),
    ),
    logLevel: config.logLevel,
    identity: config.identity ?? 'SDK default (pid@hostname)',
    workflowBundle: config.workflowBundlePath ?? 'bundled at start',
    refuseHeldVolumes: config.refuseHeldVolumes,
    workflowStackTraces: config.workflowStackTraces,
    // The endpoint's origin only (a path or query may carry a token), and where the secret comes from.
    completionEvents: config.events
      ? { endpoint: new URL(config.events.url).origin, secret: `${config.events.secretFrom} (hidden)` }
      : 'off',
    // Endpoint and header names only: OTEL_EXPORTER_OTLP_HEADERS often carries an API key.
    tracing: describeTracing(env),
  });
  return summary;
}

/** The azure provider reads its subscription and endpoint, and DefaultAzureCredential its identity, from the environment. */
function describeAzure(env: Env): Record<string, unknown> {
  const credentials = env.AZURE_FEDERATED_TOKEN_FILE
    ? `workload identity (client ${env.AZURE_CLIENT_ID ?? 'from the token'})`
    : env.AZURE_CLIENT_SECRET || env.AZURE_CLIENT_CERTIFICATE_PATH
      ? `service principal ${env.AZURE_CLIENT_ID ?? '(AZURE_CLIENT_ID not set)'} (secret hidden)`
      : 'DefaultAzureCredential chain (managed identity, Azure CLI, ...)';
  return {
    subscription: env.AZURE_SUBSCRIPTION_ID?.trim(),
    endpoint: env.STOPFLOW_AZURE_ENDPOINT?.trim() || 'https://management.azure.com',
    credentials,
  };
}

/** The gcp provider reads its variables itself, and credentials through Application Default Credentials. */
function describeGcp(env: Env): Record<string, unknown> {
  const endpoint = env.STOPFLOW_GCP_ENDPOINT?.trim();
  const credentials = endpoint?.startsWith('http:')
    ? 'none (plain http to a local server)'
    : env.GOOGLE_APPLICATION_CREDENTIALS
      ? `key file ${env.GOOGLE_APPLICATION_CREDENTIALS} (contents hidden)`
      : 'Application Default Credentials (gcloud application-default login, or the attached service account)';
  return {
    project: env.STOPFLOW_GCP_PROJECT || env.GOOGLE_CLOUD_PROJECT || 'from Application Default Credentials',
    zone: env.STOPFLOW_GCP_ZONE || 'none (instance ids name it: zone:name)',
    force:
      env.STOPFLOW_GCP_FORCE?.trim() === 'stop-instance'
        ? 'stop-instance (a force stops the whole instance at once)'
        : 'off (no forced detach: a disk that will not detach fails the stop)',
    endpoint: endpoint || 'Google default',
    credentials,
  };
}

/** The AWS SDK reads region, endpoint and credentials itself (its default chain); show where they come from. */
function describeAws(env: Env): Record<string, unknown> {
  const credentials = env.AWS_ACCESS_KEY_ID
    ? 'environment (AWS_ACCESS_KEY_ID, secret hidden)'
    : env.AWS_WEB_IDENTITY_TOKEN_FILE
      ? `web identity (${env.AWS_ROLE_ARN ?? 'role from the token'})`
      : env.AWS_PROFILE
        ? `profile ${env.AWS_PROFILE}`
        : 'AWS default chain (instance or pod role, shared config)';
  return {
    region: env.AWS_REGION || env.AWS_DEFAULT_REGION || 'from the AWS config',
    endpoint: env.AWS_ENDPOINT_URL_EC2 || env.AWS_ENDPOINT_URL || 'AWS default',
    credentials,
  };
}
