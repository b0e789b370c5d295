/**
 * Workflow stack traces, off by default. The SDK records a stack trace for every promise a workflow
 * creates, for the stack-trace query (the "Stack Trace" tab of the Temporal UI); each is an Error's
 * stack mapped through the bundle's source map. For a stop that is about a third of its workflow
 * thread's CPU (replaying a recorded stop: 29 ms of CPU with them, 20 ms without), and stopflow shows
 * what a stop waits for in its current details and each activity's summary instead.
 *
 * The switch has to be in the bundle: the SDK freezes the workflow context's globals once the bundle
 * has run, so the first statement of a bundle without stack traces sets V8's frame limit to 0. The
 * SDK still runs its hook per promise; the stack it takes is then empty, and cheap.
 */

import { closeSync, openSync, readSync } from 'node:fs';

/** The first statement of a bundle whose workflows capture no stack traces. On line 1: no source-map line moves. */
const STACK_TRACES_OFF = 'Error.stackTraceLimit = 0;';

/** `code` (a bundle) with workflow stack traces off. */
export function withoutStackTraces(code: string): string {
  return code.startsWith(STACK_TRACES_OFF) ? code : `${STACK_TRACES_OFF}${code}`;
}

/** Whether workflows run from this bundle capture stack traces (reads only the bundle's first bytes). */
export function bundleHasStackTraces(head: string): boolean {
  return !head.startsWith(STACK_TRACES_OFF);
}

/** Whether the bundle in this file keeps workflow stack traces (its first bytes only). */
export function fileHasStackTraces(path: string): boolean {
  const fd = openSync(path, 'r');
  try {
    const head = Buffer.alloc(STACK_TRACES_OFF.length);
    const read = readSync(fd, head, 0, head.length, 0);
    return bundleHasStackTraces(head.toString('utf8', 0, read));
  } finally {
    closeSync(fd);
  }
}
