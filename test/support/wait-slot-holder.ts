/**
 * A test-only workflow that takes one slot of a stopflow worker's waits queue and keeps it: it schedules
 * `awaitDetached` as stops before workflow version 8 did, polling in place rather than handed to the watch
 * list, for a volume that stays `detaching`. Such waits (in-flight stops of an older version, during an
 * upgrade) are what can still fill a worker's wait slots; new stops' waits leave their slot at once.
 */
import { proxyActivities } from '@temporalio/workflow';
import type { StopActivities } from '../../common/stop-activities';

export async function holdWaitSlot(waitsQueue: string, provider: string, instanceId: string, volumeId: string) {
  const { awaitDetached } = proxyActivities<StopActivities>({
    taskQueue: waitsQueue,
    startToCloseTimeout: '10m',
    heartbeatTimeout: '1m',
    retry: { maximumAttempts: 1 },
  });
  return awaitDetached({ provider, instanceId, volume: { volumeId } });
}
