/**
 * zod's settings for workflow code, imported first by workflows/index.ts so that every schema a workflow builds
 * (the stop's request, the sweep's input, a duration) is built under them. Each workflow has its own copy of zod
 * (the SDK's reused V8 context gives every workflow its own module scope), so this reaches workflows only.
 *
 * No compiled fast path: zod would compile one (`new Function`, after a first one to learn whether it may) for each
 * object schema it parses with, and a workflow builds its schemas to parse one value. The client and the CLI, which
 * keep their schema, still compile theirs.
 */
import * as z from 'zod/mini';

z.config({ jitless: true });
