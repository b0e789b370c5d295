/**
 * The process of a dev server, found by the port it was started on: the benchmark reads its CPU time,
 * and a robustness test freezes it (SIGSTOP) to play a server that stops answering. Linux only (it
 * reads /proc); elsewhere, and when no such process is found, null.
 */
import { readdirSync, readFileSync } from 'node:fs';

/** The dev server listening on `address`'s port: `temporal server start-dev --port <port>`, found in /proc. */
export function devServerPid(address: string): number | null {
  const port = address.slice(address.lastIndexOf(':') + 1);
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return null;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const args = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      const at = args.indexOf('--port');
      if (args.includes('start-dev') && at >= 0 && args[at + 1] === port) return Number(entry);
    } catch {
      // The process ended while we looked.
    }
  }
  return null;
}
