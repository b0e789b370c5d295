/**
 * The sweep's activities (workflows/sweep.ts, docs/sweep.md): visibility
 * queries through the Client, attachment look-ups through the providers, and
 * starting stops for leftover volumes. They only read, except
 * `startLeftoverStops`, which the workflow calls only when configured.
 */
import { Context } from '@temporalio/activity';
import { type Client, WorkflowNotFoundError } from '@temporalio/client';
import { ApplicationFailure, type Payload } from '@temporalio/common';
import { stopsQuery } from '../client/queries';
import { StopflowClient } from '../client/stopflow-client';
import { StopCauseKey, StopForcedKey, StopPhaseKey, WORKFLOW_TYPE } from '../common/names';
import type {
  LeftoverAttachment,
  LeftoverCheckError,
  LeftoverStopStart,
  LeftoversFound,
  StuckStop,
  StuckStopsFound,
  SweepActivities,
} from '../common/sweep-activities';
import { Backends } from './index';
import type { Provider } from './provider';

export interface SweepActivityDeps {
  /** Lists stops, reads their requests, starts leftover stops; its namespace is the one swept. */
  client: Client;
  providers: ReadonlyMap<string, Provider> | readonly Provider[];
  defaultProvider: string;
  /** When given, must be the client's namespace (guards a worker wired to two namespaces). */
  namespace?: string;
  /** Where leftover stops start when the workflow names none (it always does; kept for direct callers). */
  taskQueue?: string;
  /** Provider look-ups run this many at a time. Default 8. */
  concurrency?: number;
  /**
   * The worker's call budgets (worker/main.ts shares the stops' own): the sweep's look-ups take their tokens
   * after the stops' urgent calls, and pause with them when the backend throttles. Its own otherwise.
   */
  backends?: Backends;
}

const STOP_ID_PREFIX = 'stop-';

export function createSweepActivities(deps: SweepActivityDeps): SweepActivities {
  const { client } = deps;
  const namespace = client.options.namespace;
  if (deps.namespace !== undefined && deps.namespace !== namespace) {
    throw new Error(
      `sweep activities: namespace "${deps.namespace}" differs from the client's namespace "${namespace}"; the sweep would list stops of one and run in the other`,
    );
  }
  const providers: ReadonlyMap<string, Provider> =
    deps.providers instanceof Map
      ? deps.providers
      : new Map((deps.providers as readonly Provider[]).map((p) => [p.name, p]));
  if (!providers.has(deps.defaultProvider)) {
    throw new Error(
      `sweep activities: defaultProvider "${deps.defaultProvider}" is not among the providers (${[...providers.keys()].join(', ') || 'none'})`,
    );
  }
  const concurrency = Math.max(1, deps.concurrency ?? 8);
  const backends =
    deps.backends ?? new Backends({ providers, defaultProvider: deps.defaultProvider, pollIntervalMs: 0 });

  /** The `provider` field of the stop's request, read from its first history event (one small read). */
  const requestedProvider = async (workflowId: string, runId: string): Promise<string | undefined> => {
    const response = await client.workflowService.getWorkflowExecutionHistory({
      namespace,
      execution: { workflowId, runId },
      maximumPageSize: 1,
    });
    const payloads = response.history?.events?.[0]?.workflowExecutionStartedEventAttributes?.input?.payloads;
    if (!payloads || payloads.length === 0) return undefined;
    let decoded: Payload[] = payloads;
    const { payloadCodecs, payloadConverter } = client.options.loadedDataConverter;
    for (const codec of [...payloadCodecs].reverse()) decoded = await codec.decode(decoded);
    const first = decoded[0];
    if (!first) return undefined;
    const request = payloadConverter.fromPayload<unknown>(first);
    if (request && typeof request === 'object' && 'provider' in request && typeof request.provider === 'string') {
      return request.provider;
    }
    return undefined;
  };

  const checkInstance = async (
    candidate: { workflowId: string },
    override: string | undefined,
  ): Promise<{ leftover?: LeftoverAttachment; error?: LeftoverCheckError; checked: boolean }> => {
    const instanceId = instanceIdOf(candidate.workflowId);
    try {
      // Only the instance's latest stop counts: a newer one still running or failed is not "ended stopped".
      const latest = await client.workflow.getHandle(candidate.workflowId).describe();
      if (latest.status.name !== 'COMPLETED' || latest.typedSearchAttributes.get(StopPhaseKey) !== 'stopped') {
        return { checked: false };
      }
      let providerName: string;
      let providerFrom: LeftoverAttachment['providerFrom'];
      if (override) {
        providerName = override;
        providerFrom = 'sweep';
      } else {
        const fromStop = await requestedProvider(latest.workflowId, latest.runId);
        providerName = fromStop ?? deps.defaultProvider;
        providerFrom = fromStop ? 'stop' : 'default';
      }
      const provider = providers.get(providerName);
      if (!provider) {
        return {
          checked: false,
          error: {
            instanceId,
            error: `provider "${providerName}" is not configured on this worker (configured: ${[...providers.keys()].join(', ')})`,
          },
        };
      }
      // Through the budget, in the routine lane (a stop blocked on a call goes first), with the activity's cancellation.
      const attached = await backends
        .resolve(providerName)
        .call(
          'listAttachedVolumes',
          (o) => provider.listAttachedVolumes(instanceId, o),
          Context.current(),
          1,
          'routine',
        );
      const unique = [...new Map(attached.map((v) => [v.volumeId, v])).values()];
      if (unique.length === 0) return { checked: true };
      return {
        checked: true,
        leftover: {
          instanceId,
          workflowId: latest.workflowId,
          runId: latest.runId,
          stoppedAt: (latest.closeTime ?? latest.startTime).toISOString(),
          provider: providerName,
          providerFrom,
          volumes: unique.map((v) =>
            v.device ? { volumeId: v.volumeId, device: v.device } : { volumeId: v.volumeId },
          ),
        },
      };
    } catch (err) {
      return { checked: false, error: { instanceId, error: err instanceof Error ? err.message : String(err) } };
    }
  };

  return {
    /** Stops still `stopping` (and running) that started more than `stuckAfterMs` before `now`, oldest first. */
    async findStuckStops(input: {
      taskQueue: string;
      stuckAfterMs: number;
      now: string;
      limit: number;
    }): Promise<StuckStopsFound> {
      const now = parseNow(input.now);
      // stopsQuery's "stuck" includes ExecutionStatus = 'Running': a terminated stop keeps StopPhase=stopping forever.
      const query = withTaskQueue(
        stopsQuery({ phase: 'stopping', stuckForMs: input.stuckAfterMs, now }),
        input.taskQueue,
      );
      const stops: StuckStop[] = [];
      let truncated = false;
      for await (const execution of client.workflow.list({ query, pageSize: Math.min(input.limit + 1, 1000) })) {
        if (execution.type !== WORKFLOW_TYPE || !execution.workflowId.startsWith(STOP_ID_PREFIX)) continue;
        if (stops.length >= input.limit) {
          truncated = true;
          break;
        }
        const stop: StuckStop = {
          instanceId: instanceIdOf(execution.workflowId),
          workflowId: execution.workflowId,
          runId: execution.runId,
          startedAt: execution.startTime.toISOString(),
          stoppingForMs: Math.max(0, now.getTime() - execution.startTime.getTime()),
          forced: execution.typedSearchAttributes.get(StopForcedKey) === true,
        };
        const cause = execution.typedSearchAttributes.get(StopCauseKey);
        if (cause !== undefined) stop.cause = cause;
        stops.push(stop);
      }
      stops.sort((a, b) => b.stoppingForMs - a.stoppingForMs);
      return { stops, truncated };
    },

    /**
     * Instances whose latest stop ended `stopped` within `lookbackMs` of `now`,
     * and that the provider says still have volumes attached. An instance that
     * cannot be checked is reported in `errors` and does not fail the sweep.
     */
    async findLeftoverVolumes(input: {
      taskQueue: string;
      lookbackMs: number;
      now: string;
      limit: number;
      provider?: string;
    }): Promise<LeftoversFound> {
      const now = parseNow(input.now);
      const since = new Date(now.getTime() - input.lookbackMs);
      const query = `${withTaskQueue(stopsQuery({ phase: 'stopped' }), input.taskQueue)} AND CloseTime > '${since.toISOString()}'`;
      const ctx = Context.current();
      // Visibility lists every run; keep one candidate per instance, most recently closed first.
      const candidates = new Map<string, { workflowId: string }>();
      let truncated = false;
      for await (const execution of client.workflow.list({ query, pageSize: Math.min(input.limit + 1, 1000) })) {
        if (execution.type !== WORKFLOW_TYPE || !execution.workflowId.startsWith(STOP_ID_PREFIX)) continue;
        if (candidates.has(execution.workflowId)) continue;
        if (candidates.size >= input.limit) {
          truncated = true;
          break;
        }
        candidates.set(execution.workflowId, { workflowId: execution.workflowId });
      }
      ctx.heartbeat({ candidates: candidates.size });

      let done = 0;
      // Look-ups wait for the call budget, for a minute or more while the backend throttles: the sweep still
      // beats within its heartbeat timeout, and shows how far it got.
      const beat = setInterval(() => ctx.heartbeat({ candidates: candidates.size, done }), 10_000);
      const results = await mapLimit([...candidates.values()], concurrency, async (candidate) => {
        const result = await checkInstance(candidate, input.provider);
        ctx.heartbeat({ candidates: candidates.size, done: ++done });
        return result;
      }).finally(() => clearInterval(beat));
      const leftovers: LeftoverAttachment[] = [];
      const errors: LeftoverCheckError[] = [];
      let checked = 0;
      for (const r of results) {
        if (r.checked) checked++;
        if (r.leftover) leftovers.push(r.leftover);
        if (r.error) errors.push(r.error);
      }
      return { checked, leftovers, errors, truncated };
    },

    /**
     * Starts a stop (`stop-<instanceId>`, conflict policy USE_EXISTING) for
     * every instance with leftovers. The stop lists the attached volumes
     * itself, so it acts on the backend's state at its start. Safe to retry:
     * an instance whose latest stop started at or after the sweep's `now` was
     * already handled (by an earlier attempt, or by someone else) and is
     * reported, not stopped again.
     */
    async startLeftoverStops(input: {
      taskQueue?: string;
      leftovers: LeftoverAttachment[];
      now: string;
      requestedBy: string;
    }): Promise<LeftoverStopStart[]> {
      const taskQueue = input.taskQueue ?? deps.taskQueue;
      const stopflow = new StopflowClient(taskQueue ? { client, taskQueue } : { client });
      const sweptAt = parseNow(input.now).getTime();
      const ctx = Context.current();
      return mapLimit(input.leftovers, concurrency, async (leftover): Promise<LeftoverStopStart> => {
        const { instanceId, workflowId } = leftover;
        try {
          const latest = await client.workflow
            .getHandle(workflowId)
            .describe()
            .catch((err: unknown) => {
              if (err instanceof WorkflowNotFoundError) return undefined;
              throw err;
            });
          if (latest && latest.startTime.getTime() >= sweptAt) {
            return { instanceId, workflowId, runId: latest.runId, started: false };
          }
          const volumes = leftover.volumes.map((v) => v.volumeId).join(', ');
          const reason = `sweep: ${leftover.volumes.length} volume(s) still attached after the stop that ended stopped at ${leftover.stoppedAt} (run ${leftover.runId}): ${volumes}`;
          const stop = await stopflow.stop({
            instanceId,
            reason: reason.length > 1024 ? `${reason.slice(0, 1021)}...` : reason,
            requestedBy: input.requestedBy.slice(0, 255),
            // The provider the sweep asked, when it was chosen explicitly; else the stop's worker's default.
            ...(leftover.providerFrom === 'default' ? {} : { provider: leftover.provider }),
          });
          ctx.heartbeat({ instanceId });
          return { instanceId, workflowId, runId: stop.runId, started: stop.started };
        } catch (err) {
          return { instanceId, workflowId, error: err instanceof Error ? err.message : String(err) };
        }
      });
    },
  };
}

export type { SweepActivities } from '../common/sweep-activities';

function instanceIdOf(workflowId: string): string {
  return workflowId.startsWith(STOP_ID_PREFIX) ? workflowId.slice(STOP_ID_PREFIX.length) : workflowId;
}

function parseNow(now: string): Date {
  const date = new Date(now);
  if (Number.isNaN(date.getTime())) {
    throw ApplicationFailure.nonRetryable(`now: "${now}" is not an ISO timestamp`, 'InvalidSweepInput');
  }
  return date;
}

/** Task queue names come from configuration; quote them the way the visibility grammar expects. */
function withTaskQueue(query: string, taskQueue: string): string {
  return `${query} AND TaskQueue = '${taskQueue.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

/** Runs `fn` over `items`, at most `limit` at a time, keeping the order. */
async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await fn(items[index] as T, index);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}
