/** bench/server-requests.ts: counting the Temporal frontend's requests from its Prometheus text. */
import { expect, test } from 'vitest';
import { countFrontendRequests, requestRates } from '../bench/server-requests';

const scrape = (poll: number, failed: number) =>
  [
    '# HELP service_requests service_requests counter',
    '# TYPE service_requests counter',
    `service_requests{namespace="default",operation="PollActivityTaskQueue",service_name="frontend"} ${poll}`,
    `service_requests{namespace="_unknown_",operation="PollActivityTaskQueue",service_name="frontend"} 1`,
    `service_requests{namespace="default",operation="RespondActivityTaskFailed",service_name="frontend"} ${failed}`,
    // The history and matching services count the same calls again as they pass them on: not the frontend's.
    `service_requests{namespace="default",operation="RespondActivityTaskFailed",service_name="history"} ${failed * 2}`,
    `service_requests_total{operation="Other",service_name="frontend"} 99`,
    'service_latency_bucket{operation="PollActivityTaskQueue",service_name="frontend",le="0.1"} 3',
  ].join('\n');

test('sums the frontend samples per operation, and nothing else', () => {
  const counts = countFrontendRequests(scrape(40, 10));
  expect(Object.fromEntries(counts)).toEqual({ PollActivityTaskQueue: 41, RespondActivityTaskFailed: 10 });
});

test('rates between two readings count only operations that moved', () => {
  const rates = requestRates(countFrontendRequests(scrape(40, 10)), countFrontendRequests(scrape(100, 10)), 30);
  expect(rates).toEqual({ perSecond: 2, byOperation: { PollActivityTaskQueue: 2 } });
});
