/**
 * One provider as the activities use it: every call waits for the provider's
 * call budget, carries the activity's cancellation, is reported to metrics,
 * and has its error translated once into an ApplicationFailure type the
 * workflow's retry policies understand (docs/contract.md "Failure types").
 * Each call is a `provider.<operation>` span when tracing is on (./tracing.ts).
 */
import { ApplicationFailure, CancelledFailure, Context } from '@temporalio/activity';
import { type BudgetLane, CallBudgetLimiter, honouredRetryAfterMs } from './call-budget';
import {
  type CallOptions,
  ForceUnsupportedError,
  PermanentProviderError,
  type Provider,
  ThrottledProviderError,
  TransientProviderError,
} from './provider';
import { CheckWithdrawn, StateChecks } from './state-checks';
import { traceProviderCall } from './tracing';

export type ProviderEvent =
  | { kind: 'call'; provider: string; operation: string }
  | { kind: 'error'; provider: string; operation: string; errorType: string };

/**
 * Longest a call that serves no single activity (a batch of state checks) may take, per request it makes (a
 * batch that reads VM by VM makes one per instance). An activity's call ends with its activity (cancellation,
 * start-to-close); a batch's has nothing to end it, and the next batch waits for it: a provider that never
 * answers one would leave every wait and every check before a force of that provider unanswered. The clouds'
 * SDKs time each request out sooner (30 s); this is the backstop for providers that do not.
 */
export const SHARED_CALL_TIMEOUT_MS = 60_000;

export class Backend {
  readonly budget: CallBudgetLimiter;
  readonly states: StateChecks;

  constructor(
    readonly provider: Provider,
    private readonly observe?: (event: ProviderEvent) => void,
    private readonly sharedCallTimeoutMs = SHARED_CALL_TIMEOUT_MS,
  ) {
    this.budget = new CallBudgetLimiter(provider.budget);
    // A batch's cost and lane reach the budget: a check before a force goes ahead of the waits' checks.
    this.states = new StateChecks(
      provider,
      (operation, fn, shared, cost, lane) => this.call(operation, fn, shared ? null : undefined, cost, lane),
      (operation, err) => this.translate(operation, err, undefined),
    );
  }

  /**
   * Runs one provider call inside an activity: budget first, then the call with the
   * activity's AbortSignal and idempotency key. A batched state check serves many
   * activities at once and so belongs to none: it passes `ctx` null.
   */
  async call<T>(
    operation: string,
    fn: (options: CallOptions) => Promise<T>,
    ctx: Context | null = currentContext(),
    /** Backend requests the call makes, in budget tokens. */
    cost = 1,
    /** Calls made for an activity are urgent; a batch of waits' checks is routine unless an urgent check rides in it. */
    lane: BudgetLane = ctx ? 'urgent' : 'routine',
    /**
     * A step of the caller's own between the budget's token and the request (a force records its moment with the
     * Temporal server first: activities/force-moment.ts). If it fails, no request is made and the call is neither
     * observed (metrics, logs) nor translated: its error is the caller's, passed on as it is. Its span still shows it.
     */
    beforeRequest?: () => Promise<void>,
  ): Promise<T> {
    const signal = ctx?.cancellationSignal;
    const options: CallOptions = {};
    if (signal) options.signal = signal;
    if (ctx) options.idempotencyKey = `${ctx.info.workflowExecution?.runId ?? 'standalone'}/${ctx.info.activityId}`;
    // A long call's further requests (a force's stop-and-wait, say) in its own lane; the instance stop's
    // polls for `stopped` choose the routine one (activities/index.ts).
    options.nextRequest = () => this.budget.take(signal, 1, lane);
    // The span covers the wait for a budget token too: a throttled backend shows as long provider spans.
    return traceProviderCall(this.provider.name, operation, ctx === null, async () => {
      try {
        await this.budget.take(signal, cost, lane);
        if (beforeRequest) {
          await beforeRequest().catch((err: unknown) => Promise.reject(new NotTheProviders(err)));
          // The step may have taken seconds: a throttling pause that began meanwhile holds this request too.
          await this.budget.pauseOver(signal);
        }
        this.observe?.({ kind: 'call', provider: this.provider.name, operation });
        const value = ctx ? await fn(options) : await this.shared(operation, fn, options, cost);
        this.budget.succeeded();
        return value;
      } catch (err) {
        throw this.translate(operation, err, signal);
      }
    });
  }

  /**
   * A shared call, with a signal that aborts it at the timeout; one that does not listen is given up on
   * there all the same (a transient error for its callers), and left to settle on its own.
   */
  private async shared<T>(
    operation: string,
    fn: (options: CallOptions) => Promise<T>,
    options: CallOptions,
    /** Requests the call makes: one VM read per instance of a batch may each take a while. */
    requests: number,
  ): Promise<T> {
    const timeoutMs = this.sharedCallTimeoutMs * Math.max(1, requests);
    const timeout = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const error = new TransientProviderError(`${this.provider.name} ${operation}: no answer after ${timeoutMs} ms`);
        timeout.abort(error);
        reject(error);
      }, timeoutMs);
    });
    try {
      return await Promise.race([fn({ ...options, signal: timeout.signal }), expired]);
    } finally {
      clearTimeout(timer);
    }
  }

  private translate(operation: string, err: unknown, signal: AbortSignal | undefined): Error {
    // Not the provider's error: nothing was asked of it (activities/state-checks.ts; a caller's step before it).
    if (err instanceof NotTheProviders) return err.error;
    if (err instanceof CancelledFailure || err instanceof CheckWithdrawn) return err;
    // The activity was cancelled: whatever the SDK or child process threw is that cancellation.
    if (signal?.aborted) return signal.reason instanceof Error ? signal.reason : new CancelledFailure('cancelled');
    const error = err instanceof Error ? err : new Error(String(err));
    this.observe?.({ kind: 'error', provider: this.provider.name, operation, errorType: error.name });
    if (error instanceof ForceUnsupportedError || error instanceof PermanentProviderError) {
      return ApplicationFailure.create({ message: error.message, type: error.name, nonRetryable: true, cause: error });
    }
    if (error instanceof ThrottledProviderError) {
      this.budget.throttled(error.retryAfterMs);
      const retryAfterMs = honouredRetryAfterMs(error.retryAfterMs);
      return ApplicationFailure.create({
        message: error.message,
        type: error.name,
        nonRetryable: false,
        cause: error,
        ...(retryAfterMs !== undefined ? { nextRetryDelay: retryAfterMs } : {}),
      });
    }
    return ApplicationFailure.create({ message: error.message, type: error.name, nonRetryable: false, cause: error });
  }
}

/** An error of a call's `beforeRequest` step, kept apart from the provider's own on its way out. */
class NotTheProviders {
  readonly error: Error;
  constructor(err: unknown) {
    this.error = err instanceof Error ? err : new Error(String(err));
  }
}

function currentContext(): Context | null {
  try {
    return Context.current();
  } catch {
    return null;
  }
}
