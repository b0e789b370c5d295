#!/usr/bin/env node
// The `stopflow` CLI in this repository: it runs its TypeScript directly through tsx (no build step).
// The published package has its own bin, compiled JavaScript, written by scripts/build-package.ts.
import { register } from 'tsx/esm/api';

register();
await import('../client/cli/main.ts');
