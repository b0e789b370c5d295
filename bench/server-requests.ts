/**
 * What the Temporal server was asked: its frontend's request counters (`service_requests`, by operation)
 * from its Prometheus endpoint. Waits on stuck volumes cost the server requests, not history events; this
 * is how the incident benchmark shows how many.
 */

/** Frontend requests so far, by operation; empty when the server has no metrics endpoint or cannot be read. */
export async function frontendRequests(metricsUrl: string | undefined): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  if (!metricsUrl) return counts;
  let text: string;
  try {
    const response = await fetch(metricsUrl, { signal: AbortSignal.timeout(5_000) });
    if (!response.ok) return counts;
    text = await response.text();
  } catch {
    return counts;
  }
  return countFrontendRequests(text);
}

/** Sums `service_requests` samples of the frontend per operation, from Prometheus text format. */
export function countFrontendRequests(text: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line.startsWith('service_requests{')) continue;
    const labels = line.slice(line.indexOf('{') + 1, line.lastIndexOf('}'));
    if (!/(?:^|,)service_name="frontend"/.test(labels)) continue;
    const operation = /(?:^|,)operation="([^"]+)"/.exec(labels)?.[1];
    const value = Number(
      line
        .slice(line.lastIndexOf('}') + 1)
        .trim()
        .split(/\s+/)[0],
    );
    if (!operation || !Number.isFinite(value)) continue;
    counts.set(operation, (counts.get(operation) ?? 0) + value);
  }
  return counts;
}

/** Requests per second between two readings, by operation (those with any), and in all. */
export function requestRates(
  before: ReadonlyMap<string, number>,
  after: ReadonlyMap<string, number>,
  seconds: number,
): { perSecond: number; byOperation: Record<string, number> } {
  const byOperation: Record<string, number> = {};
  let total = 0;
  for (const [operation, count] of after) {
    const delta = count - (before.get(operation) ?? 0);
    if (delta <= 0) continue;
    byOperation[operation] = Math.round((delta / seconds) * 10) / 10;
    total += delta;
  }
  return { perSecond: Math.round((total / seconds) * 10) / 10, byOperation };
}
