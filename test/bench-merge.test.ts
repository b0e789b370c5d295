import { describe, expect, it } from 'vitest';
import { mergeResults } from '../bench/merge-results';
import type { BenchResults, RunInfo } from '../bench/run-results';

const run = (generatedAt: string, quick: boolean): RunInfo => ({
  generatedAt,
  command: quick ? 'npm run bench -- --quick --only=incident' : 'npm run bench',
  quick,
  durationSeconds: 1,
  machine: { cpus: 2, cpuModel: 'test', memoryGb: 1, os: 'test', loadAverageAtStart: [0], loadAverageAtEnd: [0] },
  versions: { node: 'v0', temporalSdk: '0', temporalCli: '0', stopflow: '0' },
  devServer: 'test',
});

// Figures stand in as plain objects: the merge never reads inside them.
const results = (info: RunInfo, scenarios: Record<string, unknown>): BenchResults =>
  ({ ...info, scenarios, errors: {} }) as BenchResults;

describe('merging a --only run into the last results', () => {
  const full = results(run('2026-01-01T00:00:00Z', false), { incident: { from: 'full' }, memory: { from: 'full' } });

  it('writes a first run whole, with each scenario naming it', () => {
    const first = results(run('2026-01-02T00:00:00Z', true), { incident: { from: 'quick' } });
    const { merged, kept } = mergeResults(null, first, ['incident']);
    expect(kept).toEqual([]);
    expect(merged.scenarios).toEqual({ incident: { from: 'quick' } });
    expect(merged.runs?.incident?.generatedAt).toBe('2026-01-02T00:00:00Z');
  });

  it('lets a quick run replace an earlier quick run', () => {
    const quick = results(run('2026-01-02T00:00:00Z', true), { incident: { from: 'quick' } });
    const again = results(run('2026-01-03T00:00:00Z', true), { incident: { from: 'again' } });
    const { merged, kept } = mergeResults(mergeResults(null, quick, ['incident']).merged, again, ['incident']);
    expect(kept).toEqual([]);
    expect(merged.scenarios).toEqual({ incident: { from: 'again' } });
  });

  it('leaves the file as it was when a quick run merges nothing', () => {
    const quick = results(run('2026-01-02T00:00:00Z', true), { incident: { from: 'quick' } });
    const { merged, kept } = mergeResults(full, quick, ['incident']);
    expect(kept).toEqual(['incident']);
    expect(merged).toBe(full);
    expect(merged.generatedAt).toBe('2026-01-01T00:00:00Z');
  });

  it('takes a full run’s figures and records which run each scenario comes from', () => {
    const later = results(run('2026-01-03T00:00:00Z', false), { incident: { from: 'later' } });
    const { merged, kept } = mergeResults(full, later, ['incident']);
    expect(kept).toEqual([]);
    expect(merged.scenarios).toEqual({ incident: { from: 'later' }, memory: { from: 'full' } });
    expect(merged.generatedAt).toBe('2026-01-03T00:00:00Z');
    expect(merged.runs?.incident?.generatedAt).toBe('2026-01-03T00:00:00Z');
    expect(merged.runs?.memory?.generatedAt).toBe('2026-01-01T00:00:00Z');
  });

  it('merges a quick run’s scenario that the file has no full figures for, and keeps out the rest', () => {
    const quick = results(run('2026-01-02T00:00:00Z', true), {
      incident: { from: 'quick' },
      throughput: { from: 'quick' },
    });
    const { merged, kept } = mergeResults(full, quick, ['incident', 'throughput']);
    expect(kept).toEqual(['incident']);
    expect(merged.scenarios).toEqual({
      incident: { from: 'full' },
      memory: { from: 'full' },
      throughput: { from: 'quick' },
    });
    expect(merged.runs?.incident?.quick).toBe(false);
    expect(merged.runs?.throughput?.quick).toBe(true);
  });
});
