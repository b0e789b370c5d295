import * as z from 'zod/mini';
import { en } from 'zod/v4/locales';
import { type DurationSchema, durationSchema, parseDuration } from './duration';

/**
 * StopRequest, the workflow's single argument (docs/contract.md "Input"). Two
 * variants share one set of field rules: the strict one rejects unknown fields
 * (client, CLI), the tolerant one ignores them (workflow), so that an older
 * worker survives a newer client.
 *
 * Written with `zod/mini`, zod's functional build: the workflow bundle is
 * tree-shaken (worker/worker.ts), so every stop the worker creates or replays
 * evaluates only the parts of zod these rules use, not all of it.
 */

// zod/mini loads no locale: without this, every rule that names no message of its own (a field of the
// wrong type, a request that is not an object) would read "Invalid input" instead of saying what was
// expected, and differently in the worker (whose config also loads classic zod) and elsewhere.
z.config(en());
export const INSTANCE_ID_RULE = 'must be 1-255 characters of [A-Za-z0-9._:-], starting with a letter or digit';
/** Starts with a letter or digit: an id must never read as an option (`-rf`) where it reaches a command line. */
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$/;
/**
 * The rules before the `reconciler` patch: replays of stops started then use them, and a client may
 * still address (abort, query, wait for) such a stop by its id; new stops need ID_PATTERN.
 */
export const LEGACY_ID_PATTERN = /^[A-Za-z0-9._:-]{1,255}$/;
const EMPTY_VOLUMES_RULE =
  'must list at least one volume (omit volumes to detach whatever the backend says is attached)';
/** A single stop of more volumes than this is not an instance, it is a mistake (and a huge history). */
export const MAX_VOLUMES = 256;

const idSchema = (rule: string, pattern = ID_PATTERN) =>
  z.string({ error: `is required and ${rule}` }).check(z.regex(pattern, { error: rule }));

/** A string of at most `max` characters, optional. */
const optionalText = (max: number, min = 0) =>
  z.optional(
    z
      .string({ error: 'must be a string' })
      .check(
        ...(min > 0 ? [z.minLength(min, { error: 'must not be empty' })] : []),
        z.maxLength(max, { error: `must be at most ${max} characters` }),
      ),
  );

const volumeFields = (volumeId: z.ZodMiniString<string>) => ({
  volumeId,
  device: optionalText(255, 1),
});

/** A provider's name as workers configure it; the sweep's input shares the rule. */
export const providerNameSchema = () =>
  z.optional(
    z
      .string({ error: 'must be a string' })
      .check(
        z.regex(/^[a-z][a-z0-9-]{0,62}$/, { error: 'must be a provider name such as "simulated", "linux" or "aws"' }),
      ),
  );

const requestFields = <V extends z.ZodMiniType<VolumeRef>>(volume: V, duration: DurationSchema, legacy = false) => ({
  instanceId: idSchema(INSTANCE_ID_RULE, legacy ? LEGACY_ID_PATTERN : ID_PATTERN),
  volumes: z.optional(
    z.array(volume, { error: 'must be an array of { volumeId, device? }' }).check(
      z.minLength(legacy ? 0 : 1, { error: EMPTY_VOLUMES_RULE }),
      z.maxLength(MAX_VOLUMES, { error: `must list at most ${MAX_VOLUMES} volumes` }),
      z.refine((volumes) => new Set(volumes.map((v) => v.volumeId)).size === volumes.length, {
        error: 'must not repeat a volumeId',
      }),
    ),
  ),
  maxStopDuration: z.optional(duration),
  reason: optionalText(1024),
  requestedBy: optionalText(255),
  provider: providerNameSchema(),
  forceGrace: z.optional(duration),
});

export interface VolumeRef {
  volumeId: string;
  device?: string | undefined;
}

const REQUEST_RULE =
  'must be a StopRequest object { instanceId, volumes?, maxStopDuration?, reason?, requestedBy?, provider?, forceGrace? }';
const VOLUME_RULE = 'must be an object { volumeId, device? }';

// The schemas are built by functions, never at module scope. Every workflow a
// worker keeps cached has its own copy of this module, and a module-level
// schema would stay in memory for as long as its stop waits, to be used once:
// most of a waiting stop's memory when they were (BENCHMARKS.md, item 4).

function buildStrictSchemas() {
  const duration = durationSchema();
  const volumeId = idSchema(INSTANCE_ID_RULE);
  const request = z.strictObject(
    requestFields(z.strictObject(volumeFields(volumeId), { error: VOLUME_RULE }), duration),
    { error: REQUEST_RULE },
  );
  return { request, duration, volumeId };
}

function buildTolerantSchema(legacy = false) {
  const volumeId = idSchema(INSTANCE_ID_RULE, legacy ? LEGACY_ID_PATTERN : ID_PATTERN);
  return z.looseObject(
    requestFields(z.looseObject(volumeFields(volumeId), { error: VOLUME_RULE }), durationSchema(), legacy),
    { error: REQUEST_RULE },
  );
}

let strictSchemas: ReturnType<typeof buildStrictSchemas> | undefined;

/**
 * The strict schema (unknown fields are errors) for clients, the CLI and the
 * JSON Schema, with the parts scripts/gen-schema.ts annotates. Built on first
 * use and kept: a client process has one.
 */
export function strictStopRequestSchemas(): ReturnType<typeof buildStrictSchemas> {
  strictSchemas ??= buildStrictSchemas();
  return strictSchemas;
}

export type StopRequest = z.input<ReturnType<typeof buildStrictSchemas>['request']>;
type ParsedStopRequest = z.output<ReturnType<typeof buildTolerantSchema>>;

/** The request after validation, durations in milliseconds (`null` = off). */
export interface NormalizedStopRequest {
  instanceId: string;
  volumes?: VolumeRef[];
  maxStopDurationMs: number | null;
  forceGraceMs: number | null;
  reason?: string;
  requestedBy?: string;
  provider?: string;
}

export class StopRequestError extends Error {
  constructor(
    message: string,
    readonly issues: string[],
  ) {
    super(message);
    this.name = 'StopRequestError';
  }
}

/** "volumes[1].volumeId: must be ..." — the field and the rule, one line per problem. */
export function describeIssues(error: z.core.$ZodError): string[] {
  return error.issues.map((issue) => {
    const path = issue.path.reduce<string>(
      (acc, key) => (typeof key === 'number' ? `${acc}[${key}]` : acc ? `${acc}.${String(key)}` : String(key)),
      '',
    );
    if (issue.code === 'unrecognized_keys') {
      const where = path ? ` in ${path}` : '';
      const allowed = path
        ? 'volumeId, device'
        : 'instanceId, volumes, maxStopDuration, reason, requestedBy, provider, forceGrace';
      return `${issue.keys.join(', ')}: unknown field${issue.keys.length > 1 ? 's' : ''}${where} (allowed: ${allowed})`;
    }
    return `${path || 'request'}: ${issue.message}`;
  });
}

function normalize(parsed: ParsedStopRequest): NormalizedStopRequest {
  const out: NormalizedStopRequest = {
    instanceId: parsed.instanceId,
    maxStopDurationMs: parsed.maxStopDuration === undefined ? null : (parseDuration(parsed.maxStopDuration) ?? null),
    forceGraceMs: parsed.forceGrace === undefined ? null : (parseDuration(parsed.forceGrace) ?? null),
  };
  if (parsed.volumes)
    out.volumes = parsed.volumes.map((v) =>
      v.device ? { volumeId: v.volumeId, device: v.device } : { volumeId: v.volumeId },
    );
  if (parsed.reason !== undefined) out.reason = parsed.reason;
  if (parsed.requestedBy !== undefined) out.requestedBy = parsed.requestedBy;
  if (parsed.provider !== undefined) out.provider = parsed.provider;
  return out;
}

function parseWith(schema: z.ZodMiniType<ParsedStopRequest>, input: unknown): NormalizedStopRequest {
  const result = schema.safeParse(input);
  if (!result.success) {
    const issues = describeIssues(result.error);
    throw new StopRequestError(`invalid StopRequest: ${issues.join('; ')}`, issues);
  }
  return normalize(result.data);
}

/** For clients and the CLI: unknown fields are errors. Throws StopRequestError. */
export function parseStopRequest(input: unknown): NormalizedStopRequest {
  return parseWith(strictStopRequestSchemas().request, input);
}

/**
 * For the workflow: unknown fields are ignored. Throws StopRequestError. The
 * schema is built per call and dropped after it (see above).
 */
export function parseStopRequestTolerant(
  input: unknown,
  options: { legacyRules?: boolean } = {},
): NormalizedStopRequest {
  return parseWith(buildTolerantSchema(options.legacyRules), input);
}
