/**
 * A test-only Nexus caller: sends any input to any operation of the stopflow
 * service, so tests can reach the handlers with what no typed caller would
 * send (the examples in examples/platform/ only send well-formed requests).
 */
import { createNexusServiceClient } from '@temporalio/workflow';
import { stopflowService } from '../../common/nexus-service';

export type StopflowOperation = 'stop' | 'abort' | 'status';

export async function callStopflow(endpoint: string, operation: StopflowOperation, input: unknown): Promise<unknown> {
  const stopflow = createNexusServiceClient({ endpoint, service: stopflowService });
  // The input is deliberately unchecked here: the handler's validation is what is under test.
  switch (operation) {
    case 'stop':
      return stopflow.executeOperation('stop', input as never);
    case 'abort':
      return stopflow.executeOperation('abort', input as never);
    case 'status':
      return stopflow.executeOperation('status', input as never);
  }
}
