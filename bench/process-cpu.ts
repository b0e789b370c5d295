/**
 * CPU time of the benchmark's own process and of the dev server's, read around a batch of work so a
 * scenario can say what one workflow cost each side: on two cores shared by the worker and the server,
 * throughput is bound by their sum. Linux only (it reads /proc); elsewhere the readings are null and
 * the scenario reports no split.
 */
import { readFileSync } from 'node:fs';
import { devServerPid } from '../devserver/server-pid';

export interface CpuReading {
  /** This process: the workers (main thread, workflow thread, the SDK's core, V8's helpers) and the client. */
  benchMs: number;
  /** The dev server's process, or null when it was not found. */
  serverMs: number | null;
}

/** Clock ticks per second of /proc's times: 100 on every Linux the benchmark runs on (USER_HZ). */
const TICKS_PER_SECOND = 100;

/** user + system CPU of a process, ms, from /proc/<pid>/stat (fields 14 and 15, after the command's parentheses). */
function procCpuMs(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(fields[11]) + Number(fields[12]);
    return Number.isFinite(ticks) ? (ticks * 1000) / TICKS_PER_SECOND : null;
  } catch {
    return null;
  }
}

/** A reader of both processes' CPU; null where /proc is not there to read. */
export function cpuReader(serverAddress: string): (() => CpuReading) | null {
  if (procCpuMs(process.pid) === null) return null;
  const serverPid = devServerPid(serverAddress);
  return () => ({
    benchMs: procCpuMs(process.pid) ?? Number.NaN,
    serverMs: serverPid === null ? null : procCpuMs(serverPid),
  });
}
