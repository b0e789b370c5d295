/** The StopRequest contract and Duration rules (docs/contract.md "Input"), without a server. */
import { describe, expect, test } from 'vitest';
import { formatDuration, parseDuration } from '../common/duration';
import { MAX_VOLUMES, parseStopRequest, parseStopRequestTolerant, StopRequestError } from '../common/request';
import { parseSweepInput, SweepInputError } from '../workflows/sweep';

describe('Duration', () => {
  test.each([
    ['off', null],
    [30, 30_000],
    [0.5, 500],
    ['45s', 45_000],
    ['15m', 900_000],
    ['1h30m', 5_400_000],
    ['2d', 172_800_000],
    ['90', 90_000],
    ['250ms', 250],
  ])('%j parses to %j ms', (input, ms) => {
    expect(parseDuration(input)).toBe(ms);
  });

  test.each([
    '0s',
    '-5m',
    '5 parsecs',
    '',
    'm',
    '1x',
    0,
    -1,
    Number.NaN,
    Number.POSITIVE_INFINITY,
    '400d',
    null,
    {},
    'OFF',
  ])('%j is not a Duration', (input) => {
    expect(parseDuration(input)).toBeUndefined();
  });

  test('formats for people', () => {
    expect(formatDuration(null)).toBe('off');
    expect(formatDuration(5_400_000)).toBe('1h30m');
    expect(formatDuration(250)).toBe('250ms');
  });
});

describe('StopRequest', () => {
  test('a full request is normalized to milliseconds', () => {
    expect(
      parseStopRequest({
        instanceId: 'i-0abc:eu.1',
        volumes: [{ volumeId: 'vol-1', device: '/dev/xvdf' }, { volumeId: 'vol-2' }],
        maxStopDuration: '15m',
        forceGrace: 60,
        reason: 'scale down',
        requestedBy: 'autoscaler',
        provider: 'aws',
      }),
    ).toEqual({
      instanceId: 'i-0abc:eu.1',
      volumes: [{ volumeId: 'vol-1', device: '/dev/xvdf' }, { volumeId: 'vol-2' }],
      maxStopDurationMs: 900_000,
      forceGraceMs: 60_000,
      reason: 'scale down',
      requestedBy: 'autoscaler',
      provider: 'aws',
    });
  });

  test('defaults: maxStopDuration and forceGrace are off', () => {
    expect(parseStopRequest({ instanceId: 'i-1' })).toEqual({
      instanceId: 'i-1',
      maxStopDurationMs: null,
      forceGraceMs: null,
    });
  });

  const invalid: Array<[string, unknown, string]> = [
    ['not an object', 'i-1', 'request:'],
    ['no instanceId', {}, 'instanceId: is required'],
    ['instanceId too long', { instanceId: 'i'.repeat(256) }, 'instanceId: must be 1-255 characters'],
    ['instanceId a number', { instanceId: 42 }, 'instanceId: is required and must be'],
    ['volumes not an array', { instanceId: 'i-1', volumes: 'vol-1' }, 'volumes: must be an array'],
    [
      'too many volumes',
      { instanceId: 'i-1', volumes: Array.from({ length: MAX_VOLUMES + 1 }, (_, i) => ({ volumeId: `v${i}` })) },
      `volumes: must list at most ${MAX_VOLUMES}`,
    ],
    [
      'duplicate volumeId',
      { instanceId: 'i-1', volumes: [{ volumeId: 'v' }, { volumeId: 'v' }] },
      'volumes: must not repeat a volumeId',
    ],
    ['bad volumeId', { instanceId: 'i-1', volumes: [{ volumeId: 'v 1' }] }, 'volumes[0].volumeId: must be'],
    [
      'unknown volume field',
      { instanceId: 'i-1', volumes: [{ volumeId: 'v', size: 1 }] },
      'size: unknown field in volumes[0]',
    ],
    ['reason too long', { instanceId: 'i-1', reason: 'x'.repeat(1025) }, 'reason: must be at most 1024 characters'],
    ['requestedBy not a string', { instanceId: 'i-1', requestedBy: 7 }, 'requestedBy: must be a string'],
    ['provider with spaces', { instanceId: 'i-1', provider: 'my cloud' }, 'provider: must be a provider name'],
    [
      'maxStopDuration "0s"',
      { instanceId: 'i-1', maxStopDuration: '0s' },
      'maxStopDuration: must be "off", a positive number',
    ],
    ['forceGrace "-5m"', { instanceId: 'i-1', forceGrace: '-5m' }, 'forceGrace: must be "off"'],
    ['unknown field', { instanceId: 'i-1', force: true }, 'force: unknown field'],
  ];

  test.each(invalid)('%s: the error names the field and the rule', (_name, input, message) => {
    const error = (() => {
      try {
        parseStopRequest(input);
      } catch (err) {
        return err;
      }
      return undefined;
    })();
    expect(error).toBeInstanceOf(StopRequestError);
    expect((error as Error).message).toContain(message);
  });

  test('the workflow tolerates unknown fields so older workers survive newer clients', () => {
    expect(parseStopRequestTolerant({ instanceId: 'i-1', priority: 'high' }).instanceId).toBe('i-1');
    expect(() => parseStopRequest({ instanceId: 'i-1', priority: 'high' })).toThrow(/priority: unknown field/);
  });
});

describe('messages zod writes itself (zod/mini, with its English locale loaded)', () => {
  const issuesOf = (fn: () => unknown): string[] => {
    try {
      fn();
    } catch (err) {
      if (err instanceof StopRequestError || err instanceof SweepInputError) return err.issues;
      throw err;
    }
    return [];
  };

  test('a device that is not a string names the field and the rule', () => {
    expect(issuesOf(() => parseStopRequest({ instanceId: 'i-1', volumes: [{ volumeId: 'v', device: 7 }] }))).toEqual([
      'volumes[0].device: must be a string',
    ]);
  });

  test('a sweep input that is not an object says what was expected, not "Invalid input"', () => {
    const issues = issuesOf(() => parseSweepInput('every hour', true));
    expect(issues).toEqual(['input: Invalid input: expected object, received string']);
    expect(issuesOf(() => parseSweepInput({ startStopsForLeftovers: 'yes' }))).toEqual([
      'startStopsForLeftovers: must be true or false',
    ]);
  });
});
