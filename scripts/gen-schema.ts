/**
 * `npm run gen-schema`: writes schema/stop-request.schema.json, the JSON
 * Schema (draft 2020-12) of StopRequest, generated from
 * `strictStopRequestSchemas()` in common/request.ts so that services in other
 * languages can validate a request before they start a stop.
 * `npm run gen-schema -- --check` exits 1 when the checked-in file is stale.
 *
 * Two rules live in code that JSON Schema cannot say exactly, so the schema
 * states them in descriptions and is never stricter than the code:
 * - a Duration string's total must be more than 0 and at most 365d (the
 *   pattern checks the spelling and that some digit is not zero);
 * - volumeIds must be unique within `volumes`.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as z from 'zod/mini';
import { MAX_DURATION_MS } from '../common/duration';
import { INSTANCE_ID_RULE, MAX_VOLUMES, strictStopRequestSchemas } from '../common/request';

export const SCHEMA_PATH = fileURLToPath(new URL('../schema/stop-request.schema.json', import.meta.url));

/** A number of seconds, or parts such as 1h30m (units ms, s, m, h, d), with at least one non-zero digit. */
export const DURATION_STRING_PATTERN =
  '^\\s*(?=[^1-9]*[1-9])(?:\\d+(?:\\.\\d+)?|(?:\\d+(?:\\.\\d+)?(?:ms|s|m|h|d))+)\\s*$';

const DURATION_JSON_SCHEMA = {
  description:
    '"off" (no limit), a positive number of seconds, or a string such as "45s", "15m", "1h30m", "2d" (units ms, s, m, h, d). The total must be more than 0 and at most 365d.',
  anyOf: [
    { type: 'string', const: 'off' },
    { type: 'number', exclusiveMinimum: 0, maximum: MAX_DURATION_MS / 1000 },
    { type: 'string', pattern: DURATION_STRING_PATTERN },
  ],
};

export function buildStopRequestJsonSchema(): Record<string, unknown> {
  const {
    request: strictStopRequestSchema,
    duration: durationSchema,
    volumeId: volumeIdSchema,
  } = strictStopRequestSchemas();
  const shape = strictStopRequestSchema.shape;
  const element = shape.volumes.def.innerType.def.element;
  if (!(element instanceof z.ZodMiniObject)) throw new Error('volumes: expected an array of objects');
  const device = element.shape.device;
  if (!device) throw new Error('volumes: expected a device field');
  const registry = z.registry<{ id?: string; title?: string; description?: string }>();
  registry.add(strictStopRequestSchema, {
    title: 'StopRequest',
    description:
      'The single argument of the stopInstance workflow (stopflow docs/contract.md "Input"). Unknown fields are rejected by stopflow clients; the workflow itself ignores them.',
  });
  registry.add(durationSchema, { id: 'Duration', title: 'Duration' });
  registry.add(shape.instanceId, { description: `The instance to stop; ${INSTANCE_ID_RULE}.` });
  registry.add(shape.volumes.def.innerType, {
    description: `The volumes to detach, at most ${MAX_VOLUMES}, each volumeId at most once. When omitted, the worker asks the provider which volumes are attached.`,
  });
  registry.add(volumeIdSchema, { description: `The backend's volume id; ${INSTANCE_ID_RULE}.` });
  registry.add(device, { description: 'The device name on the instance, e.g. /dev/xvdf.' });
  registry.add(shape.maxStopDuration, {
    description: 'After this long from the start, force-detach whatever is still attached. Default "off".',
  });
  registry.add(shape.forceGrace, {
    description:
      'Force-detach never starts earlier than this after the volume\'s first detach request, even on abort. Default "off" (no wait).',
  });
  registry.add(shape.reason.def.innerType, { description: 'Why, for the audit log.' });
  registry.add(shape.requestedBy.def.innerType, { description: 'Who asks, for the audit log.' });
  registry.add(shape.provider.def.innerType, {
    description: "A provider configured on the worker (simulated, linux, aws, …). Default: the worker's default.",
  });

  const generated = z.toJSONSchema(strictStopRequestSchema, {
    target: 'draft-2020-12',
    io: 'input',
    metadata: registry,
    override: (ctx) => {
      if (ctx.zodSchema === durationSchema) {
        for (const key of Object.keys(ctx.jsonSchema)) delete (ctx.jsonSchema as Record<string, unknown>)[key];
        Object.assign(ctx.jsonSchema, { title: 'Duration', ...DURATION_JSON_SCHEMA });
      }
    },
  }) as Record<string, unknown>;
  return generated;
}

export function renderStopRequestJsonSchema(): string {
  return `${JSON.stringify(buildStopRequestJsonSchema(), null, 2)}\n`;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const text = renderStopRequestJsonSchema();
  if (process.argv.includes('--check')) {
    let current = '';
    try {
      current = readFileSync(SCHEMA_PATH, 'utf8');
    } catch {
      // missing: stale
    }
    if (current !== text) {
      console.error(`${SCHEMA_PATH} is stale: run \`npm run gen-schema\` and commit the result`);
      process.exit(1);
    }
    console.log(`${SCHEMA_PATH} is up to date`);
  } else {
    writeFileSync(SCHEMA_PATH, text);
    console.log(`wrote ${SCHEMA_PATH}`);
  }
}
