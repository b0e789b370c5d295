import * as z from 'zod/mini';

/**
 * docs/contract.md `Duration`: "off", a positive number of seconds, or a string of
 * unit-suffixed parts such as "45s", "15m", "1h30m", "2d". Parsed to
 * milliseconds, with `null` meaning "off" (no limit).
 */
const UNIT_MS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const PART = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/y;
/** Longer than this is surely a typo (and overflows timers): 365 days. */
export const MAX_DURATION_MS = 365 * 86_400_000;
export const DURATION_RULE =
  'must be "off", a positive number of seconds, or a duration such as "45s", "15m", "1h30m", "2d" (at most 365d)';

export type DurationInput = 'off' | number | string;

/** Returns milliseconds, `null` for "off", or `undefined` when the input is not a valid Duration. */
export function parseDuration(input: unknown): number | null | undefined {
  let ms: number;
  if (input === 'off') return null;
  if (typeof input === 'number') {
    if (!Number.isFinite(input) || input <= 0) return undefined;
    ms = input * 1000;
  } else if (typeof input === 'string') {
    const text = input.trim();
    if (text.length === 0 || text.length > 64) return undefined;
    if (/^\d+(\.\d+)?$/.test(text)) return parseDuration(Number(text));
    ms = 0;
    PART.lastIndex = 0;
    while (PART.lastIndex < text.length) {
      const start = PART.lastIndex;
      const match = PART.exec(text);
      if (!match || match.index !== start) return undefined;
      ms += Number(match[1]) * (UNIT_MS[match[2] as string] as number);
    }
  } else {
    return undefined;
  }
  ms = Math.round(ms);
  if (ms <= 0 || ms > MAX_DURATION_MS) return undefined;
  return ms;
}

/**
 * A zod schema for a Duration field that keeps the caller's spelling and
 * checks it parses. A new one per call: see common/request.ts for why
 * workflow code builds its schemas when it uses them.
 */
export function durationSchema() {
  return z
    .union([z.literal('off'), z.number(), z.string()], { error: DURATION_RULE })
    .check(z.refine((value) => parseDuration(value) !== undefined, { error: DURATION_RULE }));
}
export type DurationSchema = ReturnType<typeof durationSchema>;

/** Renders milliseconds for people: 90_000 -> "1m30s". */
export function formatDuration(ms: number | null): string {
  if (ms === null) return 'off';
  if (ms < 1000) return `${ms}ms`;
  const parts: string[] = [];
  let rest = Math.round(ms / 1000);
  for (const [unit, size] of [
    ['d', 86_400],
    ['h', 3_600],
    ['m', 60],
    ['s', 1],
  ] as const) {
    if (rest >= size) {
      parts.push(`${Math.floor(rest / size)}${unit}`);
      rest %= size;
    }
  }
  return parts.join('');
}
