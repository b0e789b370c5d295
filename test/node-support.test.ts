/** The end-of-life warning the worker logs at start (worker/node-support.ts): dates, and the one JSON line. */
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../worker/logging';
import { endOfLifeWarning, NODE_END_OF_LIFE, nodeSupport, warnIfEndOfLife } from '../worker/node-support';

const day = (iso: string) => new Date(`${iso}T12:00:00Z`);

function captureLogger() {
  const lines: Array<Record<string, unknown>> = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  return { logger: createLogger({ level: 'info', destination }), lines };
}

describe('Node end of life', () => {
  it('knows each major of the table, its end of life included', () => {
    expect(nodeSupport('v20.20.2', day('2026-04-29'))).toEqual({
      version: '20.20.2',
      major: 20,
      endOfLife: '2026-04-30',
      pastEndOfLife: false,
    });
    expect(nodeSupport('20.20.2', day('2026-04-30')).pastEndOfLife).toBe(true);
    expect(nodeSupport('22.12.0', day('2026-11-30')).pastEndOfLife).toBe(false);
    expect(nodeSupport('24.22.3', day('2026-11-30'))).toMatchObject({ endOfLife: '2028-04-30', pastEndOfLife: false });
    expect(nodeSupport('25.1.0', day('2026-11-30')).pastEndOfLife).toBe(true);
    // Older than the table: past; newer: no known end yet.
    expect(nodeSupport('16.20.2', day('2026-11-30'))).toEqual({ version: '16.20.2', major: 16, pastEndOfLife: true });
    expect(nodeSupport('30.0.0', day('2026-11-30'))).toEqual({ version: '30.0.0', major: 30, pastEndOfLife: false });
    expect(() => nodeSupport('next', day('2026-11-30'))).toThrow('not a Node.js version');
    for (const date of Object.values(NODE_END_OF_LIFE)) expect(date).toMatch(/^\d{4}-\d{2}-\d{2}$/);
  });

  it('logs one warn line on Node 20 after April 2026, none on Node 24', () => {
    const old = captureLogger();
    expect(warnIfEndOfLife(old.logger, '20.20.2', day('2026-11-30'))).toBe(true);
    expect(old.lines).toEqual([
      expect.objectContaining({
        level: 'warn',
        service: 'stopflow-worker',
        node: '20.20.2',
        endOfLife: '2026-04-30',
        recommended: '24 LTS (or 22 LTS)',
        msg: 'Node.js 20.20.2 reached end of life on 2026-04-30 and gets no security fixes: run the worker on Node 24 LTS (or 22 LTS) (docs/worker.md, Deploy)',
      }),
    ]);

    const current = captureLogger();
    expect(warnIfEndOfLife(current.logger, '24.22.3', day('2026-11-30'))).toBe(false);
    expect(warnIfEndOfLife(current.logger, '20.20.2', day('2026-04-29'))).toBe(false);
    expect(current.lines).toEqual([]);
    expect(endOfLifeWarning('16.0.0', day('2026-11-30'))?.fields.endOfLife).toBe('before 2025-04-30');
  });
});
