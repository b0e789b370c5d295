/**
 * The floor of bench/baseline-workflows.ts plus one thing stopflow's workflow
 * does: validating its StopRequest with the zod schemas of common/request.ts.
 * Bundled on its own, because under the SDK's reused V8 context every cached
 * workflow instantiates its own copy of the workflow modules it imports; the
 * memory benchmark uses it to show what that costs per waiting workflow.
 */

import type { StopRequest } from '../common/request';
import { parseStopRequestTolerant } from '../common/request';
import { waitingFloor } from './baseline-workflows';

export async function validatingFloor(request: StopRequest, volumes: number): Promise<void> {
  parseStopRequestTolerant(request);
  await waitingFloor(request.instanceId, volumes);
}
