/**
 * schema/stop-request.schema.json is generated from the zod schema
 * (`npm run gen-schema`), checked in, and agrees with it: a standard JSON
 * Schema validator (ajv, draft 2020-12) accepts and rejects the same requests
 * as zod, except for the two rules JSON Schema cannot state, where the schema
 * is more lenient and never stricter.
 */
import { readFileSync } from 'node:fs';
import Ajv2020 from 'ajv/dist/2020';
import { describe, expect, test } from 'vitest';
import { strictStopRequestSchemas } from '../common/request';
import { renderStopRequestJsonSchema, SCHEMA_PATH } from '../scripts/gen-schema';

const checkedIn = readFileSync(SCHEMA_PATH, 'utf8');
const validate = new Ajv2020({ strict: true, allErrors: true }).compile(JSON.parse(checkedIn));

const zodAccepts = (request: unknown) => strictStopRequestSchemas().request.safeParse(request).success;
const schemaAccepts = (request: unknown) => validate(request) === true;

const base = { instanceId: 'i-1' };
const agreeing: Array<[string, unknown]> = [
  ['minimal', base],
  [
    'every field',
    {
      instanceId: 'i-0abc.def:1',
      volumes: [{ volumeId: 'vol-1', device: '/dev/xvdf' }, { volumeId: 'vol-2' }],
      maxStopDuration: '15m',
      forceGrace: 60,
      reason: 'maintenance',
      requestedBy: 'ops',
      provider: 'aws',
    },
  ],
  ['maxStopDuration off', { ...base, maxStopDuration: 'off' }],
  ['maxStopDuration 1h30m', { ...base, maxStopDuration: '1h30m' }],
  ['maxStopDuration 2d', { ...base, maxStopDuration: '2d' }],
  ['maxStopDuration 500ms', { ...base, maxStopDuration: '500ms' }],
  ['maxStopDuration "90" (seconds as a string)', { ...base, maxStopDuration: '90' }],
  ['maxStopDuration 1.5h', { ...base, maxStopDuration: '1.5h' }],
  ['maxStopDuration 365d', { ...base, maxStopDuration: '365d' }],
  ['maxStopDuration 0.5 seconds', { ...base, maxStopDuration: 0.5 }],
  ['maxStopDuration 31536000 seconds', { ...base, maxStopDuration: 31_536_000 }],
  ['empty volumes', { ...base, volumes: [] }],
  ['256 volumes', { ...base, volumes: Array.from({ length: 256 }, (_, i) => ({ volumeId: `vol-${i}` })) }],
  // rejected by both
  ['missing instanceId', { volumes: [] }],
  ['empty instanceId', { instanceId: '' }],
  ['instanceId with a slash', { instanceId: 'i/1' }],
  ['instanceId of 256 characters', { instanceId: 'i'.repeat(256) }],
  ['instanceId a number', { instanceId: 42 }],
  ['unknown field', { ...base, maxStopDurration: '5m' }],
  ['unknown volume field', { ...base, volumes: [{ volumeId: 'vol-1', sizeGb: 100 }] }],
  ['volume without volumeId', { ...base, volumes: [{ device: '/dev/xvdf' }] }],
  ['empty device', { ...base, volumes: [{ volumeId: 'vol-1', device: '' }] }],
  ['volumes a string', { ...base, volumes: 'vol-1' }],
  ['257 volumes', { ...base, volumes: Array.from({ length: 257 }, (_, i) => ({ volumeId: `vol-${i}` })) }],
  ['maxStopDuration 0s', { ...base, maxStopDuration: '0s' }],
  ['maxStopDuration 0', { ...base, maxStopDuration: 0 }],
  ['maxStopDuration -5', { ...base, maxStopDuration: -5 }],
  ['maxStopDuration -1m', { ...base, maxStopDuration: '-1m' }],
  ['maxStopDuration "5 parsecs"', { ...base, maxStopDuration: '5 parsecs' }],
  ['maxStopDuration 15 minutes', { ...base, maxStopDuration: '15 minutes' }],
  ['maxStopDuration 1w', { ...base, maxStopDuration: '1w' }],
  ['maxStopDuration empty', { ...base, maxStopDuration: '' }],
  ['maxStopDuration "OFF"', { ...base, maxStopDuration: 'OFF' }],
  ['maxStopDuration true', { ...base, maxStopDuration: true }],
  ['maxStopDuration 400 days in seconds', { ...base, maxStopDuration: 400 * 86_400 }],
  ['forceGrace soon', { ...base, forceGrace: 'soon' }],
  ['reason of 1025 characters', { ...base, reason: 'x'.repeat(1025) }],
  ['requestedBy a number', { ...base, requestedBy: 12 }],
  ['requestedBy of 256 characters', { ...base, requestedBy: 'x'.repeat(256) }],
  ['provider AWS!', { ...base, provider: 'AWS!' }],
  ['request null', null],
  ['request an array', []],
  ['request a string', '{"instanceId":"i-1"}'],
];

/** Rules that live in code only: the schema lets these through, zod rejects them. */
const lenient: Array<[string, unknown]> = [
  ['a repeated volumeId', { ...base, volumes: [{ volumeId: 'vol-1' }, { volumeId: 'vol-1', device: '/dev/xvdf' }] }],
  ['a duration string over 365d', { ...base, maxStopDuration: '400d' }],
  ['a duration string whose parts sum over 365d', { ...base, forceGrace: '300d100d' }],
];

describe('schema/stop-request.schema.json', () => {
  test('is what `npm run gen-schema` generates from the zod schema (regenerate and commit when this fails)', () => {
    expect(renderStopRequestJsonSchema()).toBe(checkedIn);
  });

  test.each(agreeing)('agrees with zod on: %s', (_name, request) => {
    expect(schemaAccepts(request)).toBe(zodAccepts(request));
  });

  test('sanity: the samples include both accepted and rejected requests', () => {
    const accepted = agreeing.filter(([, r]) => zodAccepts(r)).length;
    expect(accepted).toBeGreaterThan(5);
    expect(agreeing.length - accepted).toBeGreaterThan(20);
  });

  test.each(lenient)('is more lenient than zod (never stricter) on: %s', (_name, request) => {
    expect(schemaAccepts(request)).toBe(true);
    expect(zodAccepts(request)).toBe(false);
  });

  test('never rejects a duration that zod accepts', () => {
    const spellings = ['1', '1.25', '45s', '15m', '1h30m', '2d', '1d12h', '250ms', '0.5s', '10m0s', ' 5m ', '00001s'];
    for (const spelling of spellings) {
      const request = { ...base, maxStopDuration: spelling };
      if (zodAccepts(request)) expect(schemaAccepts(request), spelling).toBe(true);
    }
  });
});
