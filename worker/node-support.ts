/**
 * Which Node.js the worker runs on, and whether that line still gets security
 * fixes. The worker logs one warning at start on an end-of-life Node
 * (docs/worker.md "Deploy"); it still starts: `engines` in package.json says
 * what runs, this says what is still maintained.
 *
 * End-of-life dates from the Node.js release schedule
 * (https://github.com/nodejs/Release): even majors are LTS for 30 months after
 * October of their year, odd majors live 8 months. A major newer than the
 * table has no known end: no warning. A major older than the table is past it.
 */
export const NODE_END_OF_LIFE: Readonly<Record<number, string>> = {
  18: '2025-04-30',
  19: '2023-06-01',
  20: '2026-04-30',
  21: '2024-06-01',
  22: '2027-04-30',
  23: '2025-06-01',
  24: '2028-04-30',
  25: '2026-06-01',
  26: '2029-04-30',
};

/** The Node majors this repository's CI runs on: the machine's Node 20 (quick start) and Node 24 LTS (.ci/run). */
export const RECOMMENDED_NODE = '24 LTS (or 22 LTS)';

export interface NodeSupport {
  version: string;
  major: number;
  /** `YYYY-MM-DD`, or undefined for a major newer than the table. */
  endOfLife?: string;
  /** True when the major's end of life is on or before `now`. */
  pastEndOfLife: boolean;
}

export function nodeSupport(version: string, now: Date): NodeSupport {
  const clean = version.replace(/^v/, '');
  const major = Number.parseInt(clean.split('.')[0] ?? '', 10);
  if (!Number.isInteger(major)) throw new Error(`not a Node.js version: ${version}`);
  const majors = Object.keys(NODE_END_OF_LIFE).map(Number);
  const endOfLife = NODE_END_OF_LIFE[major];
  if (endOfLife !== undefined) {
    return { version: clean, major, endOfLife, pastEndOfLife: Date.parse(`${endOfLife}T00:00:00Z`) <= now.getTime() };
  }
  return { version: clean, major, pastEndOfLife: major < Math.min(...majors) };
}

/** The warning's fields and message, or undefined when the Node is maintained. */
export function endOfLifeWarning(
  version: string,
  now: Date,
): { fields: { node: string; endOfLife: string; recommended: string }; message: string } | undefined {
  const support = nodeSupport(version, now);
  if (!support.pastEndOfLife) return undefined;
  const since = support.endOfLife ? ` on ${support.endOfLife}` : '';
  return {
    fields: {
      node: support.version,
      endOfLife: support.endOfLife ?? 'before 2025-04-30',
      recommended: RECOMMENDED_NODE,
    },
    message: `Node.js ${support.version} reached end of life${since} and gets no security fixes: run the worker on Node ${RECOMMENDED_NODE} (docs/worker.md, Deploy)`,
  };
}

/** Logs the warning at `warn` (one JSON line) when the running Node is past its end of life; returns whether it did. */
export function warnIfEndOfLife(
  logger: { warn(fields: object, message: string): void },
  version: string = process.versions.node,
  now: Date = new Date(),
): boolean {
  const warning = endOfLifeWarning(version, now);
  if (warning) logger.warn(warning.fields, warning.message);
  return warning !== undefined;
}
