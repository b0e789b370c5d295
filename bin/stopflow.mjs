#!/usr/bin/env node
// The `stopflow` CLI. stopflow runs its TypeScript directly through tsx (no build step).
import { register } from 'tsx/esm/api';

register();
await import('../client/cli/main.ts');
