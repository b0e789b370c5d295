/**
 * The README's "Using stopflow" examples, read from the README itself so the
 * tests run exactly what readers copy. A block is the fenced code block that
 * follows a `<!-- example: NAME -->` line.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const README_PATH = fileURLToPath(new URL('../../README.md', import.meta.url));

export function readmeBlock(name: string): string {
  const text = readFileSync(README_PATH, 'utf8');
  const marker = `<!-- example: ${name} -->`;
  const at = text.indexOf(marker);
  if (at < 0) throw new Error(`README.md has no ${marker}`);
  const match = /```[a-z]*\n([\s\S]*?)```/.exec(text.slice(at));
  if (!match?.[1]) throw new Error(`README.md has no code block after ${marker}`);
  return match[1];
}

function balanced(text: string): boolean {
  let single = false;
  let double = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "'" && !double) single = !single;
    else if (c === '"' && !single && text[i - 1] !== '\\') double = !double;
  }
  return !single && !double;
}

export interface ShellBlock {
  /** `export NAME=value` lines: the environment every command runs in. */
  exports: Record<string, string>;
  /** One shell command per entry, continuation lines and multi-line quotes joined. */
  commands: string[];
}

/** Splits a shell block into commands; `#` comment lines and blank lines are dropped. */
export function shellCommands(block: string): ShellBlock {
  const exports: Record<string, string> = {};
  const commands: string[] = [];
  let pending = '';
  for (const line of block.split('\n')) {
    if (!pending && (line.trim() === '' || line.trim().startsWith('#'))) continue;
    const exported = pending ? null : /^export ([A-Z_][A-Z0-9_]*)=(\S+)(?:\s+#.*)?$/.exec(line.trim());
    if (exported?.[1] && exported[2]) {
      exports[exported[1]] = exported[2];
      continue;
    }
    pending = pending ? `${pending}\n${line}` : line;
    if (line.endsWith('\\') || !balanced(pending)) continue;
    commands.push(pending.replace(/\s+#[^'"]*$/, ''));
    pending = '';
  }
  if (pending) commands.push(pending);
  return { exports, commands };
}

export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs one command with bash, never throwing: the exit code is part of the result. */
export function runShell(command: string, env: NodeJS.ProcessEnv, timeoutMs = 120_000): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(
      'bash',
      ['-c', command],
      { env, timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024, cwd: fileURLToPath(new URL('../..', import.meta.url)) },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}
