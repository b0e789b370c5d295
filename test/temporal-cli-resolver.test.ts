/** The Temporal CLI resolver: order of sources, clear errors, and a cache that concurrent builds cannot corrupt. */
import { execFile } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, test } from 'vitest';
import { cacheDir, resolveTemporalCli, TemporalCliNotFoundError } from '../devserver/temporal-cli';

const run = promisify(execFile);

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'stopflow-resolver-'));
}

function executable(path: string, body: string): string {
  writeFileSync(path, `#!/bin/sh\n${body}\n`);
  chmodSync(path, 0o755);
  return path;
}

/** A stand-in for `go` that "builds" slowly and records each build, to exercise locking and the rename. */
function fakeGo(dir: string, builds: string): string {
  mkdirSync(dir, { recursive: true });
  return executable(
    join(dir, 'go'),
    `echo build >> "${builds}"; sleep 1; printf '#!/bin/sh\\necho temporal fake\\n' > "$GOBIN/temporal"; chmod +x "$GOBIN/temporal"`,
  );
}

describe('resolveTemporalCli', () => {
  test('TEMPORAL_CLI_PATH that is not an executable fails at once, naming the variable', async () => {
    await expect(resolveTemporalCli({ env: { TEMPORAL_CLI_PATH: '/nonexistent' } })).rejects.toThrow(
      /TEMPORAL_CLI_PATH is set to "\/nonexistent"/,
    );
  });

  test('`npm run temporal-cli` (the first step of npm test) exits 1 within seconds with that message', async () => {
    const started = Date.now();
    const result = await run('npx', ['tsx', 'scripts/temporal-cli.ts'], {
      env: { ...process.env, TEMPORAL_CLI_PATH: '/nonexistent' },
    }).catch((err: { code: number; stderr: string }) => err);
    expect('code' in result ? result.code : 0).toBe(1);
    expect(result.stderr).toMatch(/TEMPORAL_CLI_PATH/);
    console.log(`[resolver] failed in ${Date.now() - started}ms`);
  });

  test('TEMPORAL_CLI_PATH wins over PATH and the cache', async () => {
    const dir = tempDir();
    const explicit = executable(join(dir, 'my-temporal'), 'echo mine');
    mkdirSync(join(dir, 'bin'));
    executable(join(dir, 'bin', 'temporal'), 'echo path');
    const cli = await resolveTemporalCli({ env: { TEMPORAL_CLI_PATH: explicit, PATH: join(dir, 'bin') } });
    expect(cli).toEqual({ kind: 'path', path: explicit, source: 'TEMPORAL_CLI_PATH' });
  });

  test('then `temporal` on PATH, then the cache', async () => {
    const dir = tempDir();
    mkdirSync(join(dir, 'bin'));
    const onPath = executable(join(dir, 'bin', 'temporal'), 'echo path');
    expect(await resolveTemporalCli({ env: { PATH: join(dir, 'bin'), XDG_CACHE_HOME: dir } })).toMatchObject({
      path: onPath,
      source: 'PATH',
    });
    const cached = join(cacheDir({ XDG_CACHE_HOME: dir }), 'temporal');
    mkdirSync(cacheDir({ XDG_CACHE_HOME: dir }), { recursive: true });
    executable(cached, 'echo cached');
    expect(await resolveTemporalCli({ env: { PATH: join(dir, 'empty'), XDG_CACHE_HOME: dir } })).toMatchObject({
      path: cached,
      source: 'cache',
    });
  });

  test('with nothing found and no Go, one error names the three ways to provide the binary', async () => {
    const dir = tempDir();
    const error = await resolveTemporalCli({
      env: { PATH: join(dir, 'empty'), XDG_CACHE_HOME: dir },
      allowSdkDownload: false,
    }).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(TemporalCliNotFoundError);
    expect((error as Error).message).toMatch(/TEMPORAL_CLI_PATH/);
    expect((error as Error).message).toMatch(/on PATH/);
    expect((error as Error).message).toMatch(/install Go/);
  });

  test('two processes resolving at once build once and leave one complete binary', async () => {
    const dir = tempDir();
    const builds = join(dir, 'builds.log');
    fakeGo(join(dir, 'gobin'), builds);
    const env = { PATH: `${join(dir, 'gobin')}:/usr/bin:/bin`, XDG_CACHE_HOME: dir };
    const messages: string[] = [];
    const [a, b] = await Promise.all([
      resolveTemporalCli({ env, log: (m) => messages.push(m) }),
      resolveTemporalCli({ env, log: (m) => messages.push(m) }),
    ]);
    expect(a.kind === 'path' && a.path).toBe(join(cacheDir(env), 'temporal'));
    expect(b.kind === 'path' && b.path).toBe(join(cacheDir(env), 'temporal'));
    expect(readFileSync(builds, 'utf8').trim().split('\n')).toHaveLength(1);
    expect(messages.some((m) => /first build takes a few minutes/.test(m))).toBe(true);
    const { stdout } = await run(join(cacheDir(env), 'temporal'));
    expect(stdout.trim()).toBe('temporal fake');
    // No half-built leftovers in the cache folder.
    expect(readdirSync(cacheDir(env)).filter((f) => f.startsWith('.build-'))).toEqual([]);
  });

  test('a failing Go build reports the failure and leaves no binary behind', async () => {
    const dir = tempDir();
    mkdirSync(join(dir, 'gobin'));
    executable(join(dir, 'gobin', 'go'), 'echo "go: module lookup disabled" >&2; exit 1');
    const env = { PATH: `${join(dir, 'gobin')}:/usr/bin:/bin`, XDG_CACHE_HOME: dir };
    await expect(resolveTemporalCli({ env, log: () => undefined })).rejects.toThrow(/go install .* failed \(exit 1\)/);
    expect(readdirSync(cacheDir(env)).filter((f) => f === 'temporal' || f.startsWith('.build-'))).toEqual([]);
  });
});
