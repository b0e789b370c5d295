/**
 * Structured JSON logs, one object per line on stdout (pino). The Temporal
 * SDK's own logger, the workflow and activity context loggers and the core's
 * native logs are all forwarded here, so every line has the same shape:
 *
 *   {"level":"warn","time":"…","service":"stopflow-worker","msg":"Activity failed",
 *    "workflowId":"stop-i-1","instanceId":"i-1","volumeId":"vol-2","activityType":"detachVolume",…}
 *
 * `instanceId` comes from the workflow id (`stop-<instanceId>`, docs/contract.md), so
 * it is on every line about a stop; `volumeId` is on every line of an activity
 * that works on one volume (added by `activityLogContext`).
 */
import { hostname } from 'node:os';
import { Context } from '@temporalio/activity';
import type { LogMetadata, Logger as SdkLogger, LogLevel as SdkLogLevel } from '@temporalio/common';
import type { ActivityInterceptorsFactory } from '@temporalio/worker';
import pino from 'pino';
import type { ProviderEvent } from '../activities';
import type { LogLevelName } from './config';

export type AppLogger = pino.Logger;

export interface LoggerOptions {
  level: LogLevelName;
  /** Where lines go; stdout by default. Writes are synchronous so nothing is lost when the process exits. */
  destination?: pino.DestinationStream;
}

export function createLogger(options: LoggerOptions): AppLogger {
  return pino(
    {
      level: options.level,
      base: { service: 'stopflow-worker', pid: process.pid, hostname: hostname() },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      serializers: { err: pino.stdSerializers.err, error: pino.stdSerializers.err },
    },
    options.destination ?? pino.destination({ dest: 1, sync: true }),
  );
}

const WORKFLOW_ID_PREFIX = 'stop-';
/** Noise for people reading logs: opaque tokens and payload dumps. */
const DROPPED_KEYS = new Set(['taskToken']);

/** Adds `instanceId` to any line about a stop, from its workflow id. */
export function withStopFields(meta: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(meta)) {
    if (!DROPPED_KEYS.has(key)) out[key] = value;
  }
  const workflowId = out.workflowId;
  if (out.instanceId === undefined && typeof workflowId === 'string' && workflowId.startsWith(WORKFLOW_ID_PREFIX)) {
    out.instanceId = workflowId.slice(WORKFLOW_ID_PREFIX.length);
  }
  return out;
}

const LEVELS: Record<SdkLogLevel, pino.Level> = {
  TRACE: 'trace',
  DEBUG: 'debug',
  INFO: 'info',
  WARN: 'warn',
  ERROR: 'error',
};

/** The Temporal SDK's Logger interface over pino; install it with `Runtime.install({ logger })`. */
const ABANDONED_WAIT_COMPLETED = 'Activity not found on completion';

export class PinoSdkLogger implements SdkLogger {
  constructor(private readonly logger: AppLogger) {}

  log(level: SdkLogLevel, message: string, meta?: LogMetadata): void {
    // A wait for `detached` that a stop cancelled without waiting (it is read-only: docs/contract.md) may still
    // finish before it hears of the cancel; the server then refuses its result. Expected, so not a warning.
    const expected = level === 'WARN' && message.startsWith(ABANDONED_WAIT_COMPLETED);
    const pinoLevel = expected ? 'debug' : (LEVELS[level] ?? 'info');
    if (!this.logger.isLevelEnabled(pinoLevel)) return;
    this.logger[pinoLevel](withStopFields(meta ?? {}), message);
  }
  trace(message: string, meta?: LogMetadata): void {
    this.log('TRACE', message, meta);
  }
  debug(message: string, meta?: LogMetadata): void {
    this.log('DEBUG', message, meta);
  }
  info(message: string, meta?: LogMetadata): void {
    this.log('INFO', message, meta);
  }
  warn(message: string, meta?: LogMetadata): void {
    this.log('WARN', message, meta);
  }
  error(message: string, meta?: LogMetadata): void {
    this.log('ERROR', message, meta);
  }
}

/** The core (Rust) log filter matching a pino level; the core's debug output is only for SDK bugs. */
export function coreLogFilter(level: LogLevelName): { core: SdkLogLevel; other: SdkLogLevel } {
  const core: SdkLogLevel = level === 'trace' || level === 'debug' ? 'DEBUG' : level === 'info' ? 'INFO' : 'WARN';
  return { core, other: 'ERROR' };
}

/** instanceId and volumeId of a stopflow activity's argument (VolumeTarget or { instanceId }). */
export function targetFields(arg: unknown): Record<string, string> {
  const fields: Record<string, string> = {};
  if (typeof arg !== 'object' || arg === null) return fields;
  const { instanceId, volume } = arg as { instanceId?: unknown; volume?: unknown };
  if (typeof instanceId === 'string') fields.instanceId = instanceId;
  if (typeof volume === 'object' && volume !== null) {
    const { volumeId } = volume as { volumeId?: unknown };
    if (typeof volumeId === 'string') fields.volumeId = volumeId;
  }
  return fields;
}

/**
 * Activity interceptor: every log line an activity writes (its own and the
 * SDK's about it) carries the instanceId and volumeId it works on.
 */
export const activityLogContext: ActivityInterceptorsFactory = () => {
  let fields: Record<string, string> = {};
  return {
    inbound: {
      execute(input, next) {
        fields = targetFields(input.args[0]);
        return next(input);
      },
    },
    outbound: {
      getLogAttributes(input, next) {
        return next({ ...input, ...fields });
      },
    },
  };
};

const PROVIDER_ACTIONS: Record<string, string> = {
  listAttachedVolumes: 'listing attached volumes',
  detachVolume: 'detach requested',
  forceDetachVolume: 'force-detach requested',
  stopInstance: 'instance stop requested',
};

/**
 * The activities' `observe` hook for logs: each request to the backend at
 * info (state checks of the detach wait at debug), each failure at warn.
 * Goes through the activity logger, so lines carry instanceId and volumeId.
 */
export function logProviderEvent(event: ProviderEvent): void {
  let log: SdkLogger;
  try {
    log = Context.current().log;
  } catch {
    return; // not inside an activity
  }
  const meta = { provider: event.provider, operation: event.operation };
  if (event.kind === 'error') {
    log.warn(`${event.provider} ${event.operation} failed (${event.errorType})`, {
      ...meta,
      errorType: event.errorType,
    });
    return;
  }
  const action = PROVIDER_ACTIONS[event.operation];
  if (action) log.info(`${event.provider}: ${action}`, meta);
  else log.debug(`${event.provider}: ${event.operation}`, meta);
}
