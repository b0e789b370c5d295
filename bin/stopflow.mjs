#!/usr/bin/env node
// The `stopflow` CLI in this repository. In a development checkout (tsx installed, a dev dependency) it runs the
// TypeScript sources directly, so it is never stale. In a production install (`npm ci --omit=dev`: no tsx) it runs the
// compiled CLI that `npm run build` wrote to dist/app/ (docs/worker.md, Deploy).
// The published client package has its own bin, written by scripts/build-package.ts.
import { existsSync } from 'node:fs';

let register;
try {
  ({ register } = await import('tsx/esm/api'));
} catch (err) {
  if (err?.code !== 'ERR_MODULE_NOT_FOUND') throw err;
}
if (register) {
  register();
  await import('../client/cli/main.ts');
} else {
  const compiled = new URL('../dist/app/stopflow.js', import.meta.url);
  if (!existsSync(compiled)) {
    process.stderr.write(
      'stopflow: neither tsx (a dev dependency: run `npm ci`) nor the compiled CLI (run `npm run build`, which writes dist/app/) is here\n',
    );
    process.exit(1);
  }
  await import(compiled.href);
}
