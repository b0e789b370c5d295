/**
 * The worker's watch list of stuck volumes. A wait that workflow version 8 (`watched-waits`) schedules hands its
 * volume to this list and returns at once (CompleteAsyncError): it then holds no slot and no SDK state in the
 * worker, and its attempt does not end every hold window. The list checks its volumes in the provider's batched,
 * budgeted checks and completes each wait by its task token as soon as the volume reads `detached` (or the request
 * looks lost).
 *
 * Each wait still heartbeats, from here, at two thirds of its heartbeat timeout (80 s of 2 min): that is how the
 * server notices a lost worker (the wait is retried on another within the timeout) and how this list hears of a
 * cancel (the heartbeat's answer). One request per stuck volume per 80 s, where a wait polling in place cost two
 * per hold window and pause (docs/worker.md "Isolation"). A worker that shuts down hands its waits back at once.
 */
import { AsyncResource } from 'node:async_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { ApplicationFailure } from '@temporalio/activity';
import {
  ActivityCancelledError,
  ActivityNotFoundError,
  ActivityPausedError,
  type AsyncCompletionClient,
} from '@temporalio/client';
import { ApplicationFailureCategory } from '@temporalio/common';
import type { VolumeTarget, WaitHeartbeat, WaitResult } from '../common/stop-activities';
import type { Backend } from './backend';
import { ForcedVolumes } from './forced-volumes';

/** What the list needs to answer for a wait: who it is (its task token) and its attempt's bounds. */
export interface WatchedWait {
  taskToken: Uint8Array;
  backend: Backend;
  target: VolumeTarget;
  /** The volume is reported lost after reading `attached` this long (see awaitDetached). */
  lostAfterMs: number;
  /** The attempt's start-to-close deadline (epoch ms): the list hands the wait back well before it. */
  attemptDeadlineMs: number;
  /** The attempt's heartbeat timeout; the list beats at two thirds of it. */
  heartbeatTimeoutMs: number;
  /** What the server shows of the wait (its heartbeat details), carried on from earlier attempts. */
  beat: WaitHeartbeat;
  /** Heartbeat after the first check (a first attempt: the server has no details to show yet). */
  announce: boolean;
}

export interface DetachWatchOptions {
  /** Pause between the checks of a volume at first; it doubles up to maxPollIntervalMs. */
  pollIntervalMs: number;
  maxPollIntervalMs: number;
  /** Heartbeat each wait at least this often (default: two thirds of its heartbeat timeout). */
  heartbeatEveryMs?: number;
  /** Where a watch that broke is reported (the worker's logger); stderr by default. */
  warn?: (message: string, meta: Record<string, unknown>) => void;
}

/** How long before its attempt's start-to-close the list hands a stuck volume back (the next attempt takes it again). */
const ANSWER_MARGIN_MS = 60_000;
/** Retry delay of an attempt handed back (attempt over, worker shutting down): the volume was just checked. */
export const HANDBACK_RETRY_MS = 1_000;

/** Why the list stopped answering for a wait: each is said to the server once, by the wait's task token. */
type Ending =
  | { kind: 'done'; result: WaitResult }
  | { kind: 'failed'; error: unknown }
  | { kind: 'handback' }
  /** The server said the wait is cancelled, paused or gone: nothing more to say, or only that it heard. */
  | { kind: 'heard'; cancelled: boolean };

export class DetachWatch {
  private readonly watching = new Map<AbortController, Promise<void>>();
  private released: Promise<void> | undefined;
  /**
   * The context the list was built in (the worker's), not the registering activity's: the list outlives that
   * attempt, and must not carry its cancellation, log attributes or trace span into checks made for later ones.
   */
  private readonly root = new AsyncResource('StopflowDetachWatch');

  constructor(
    private readonly completion: AsyncCompletionClient,
    private readonly forced: ForcedVolumes,
    private readonly options: DetachWatchOptions,
  ) {}

  /** Waits the list answers for now. */
  get size(): number {
    return this.watching.size;
  }

  /** Takes a wait over; false once the worker is shutting down (the activity then hands it back itself). */
  watch(wait: WatchedWait): boolean {
    if (this.released) return false;
    const controller = new AbortController();
    const run = this.root
      .runInAsyncScope(() => this.follow(wait, controller))
      .catch((error: unknown) => {
        const meta = { volumeId: wait.target.volume.volumeId, instanceId: wait.target.instanceId, error };
        const warn = this.options.warn ?? ((message: string) => console.error(`stopflow: ${message}`, meta));
        // The wait is left to its heartbeat timeout: the server retries it on a worker (this one included).
        warn('the watch of a wait broke; the server retries the wait after its heartbeat timeout', meta);
      })
      .finally(() => this.watching.delete(controller));
    this.watching.set(controller, run);
    return true;
  }

  /** Hands every wait back to the server (StillDetaching, retried within a second), for another worker to take. */
  release(): Promise<void> {
    this.released ??= (async () => {
      for (const controller of this.watching.keys()) controller.abort();
      await Promise.allSettled([...this.watching.values()]);
    })();
    return this.released;
  }

  private async follow(wait: WatchedWait, controller: AbortController): Promise<void> {
    let heard: Ending | undefined;
    // The wait's heartbeat, apart from its checks: a check may wait long for budget tokens under throttling.
    const beat = () => {
      void this.completion.heartbeat(wait.taskToken, wait.beat).catch((err: unknown) => {
        const ending = serverSays(err);
        if (ending && !heard) {
          heard = ending;
          controller.abort();
        }
      });
    };
    const everyMs = Math.min(
      this.options.heartbeatEveryMs ?? Number.POSITIVE_INFINITY,
      Math.max(1_000, Math.floor((wait.heartbeatTimeoutMs * 2) / 3)),
    );
    const beats = setInterval(beat, everyMs);
    let ending: Ending;
    try {
      // A first attempt says at once what it found, for `stopflow status`; later ones carry their details on.
      ending = await this.until(wait, controller.signal, wait.announce ? beat : undefined);
    } finally {
      clearInterval(beats);
    }
    ending = heard ?? ending;
    const { taskToken } = wait;
    try {
      switch (ending.kind) {
        case 'done':
          return await this.completion.complete(taskToken, ending.result);
        case 'failed':
          return await this.completion.fail(taskToken, ending.error);
        case 'heard':
          // A cancel is acknowledged (the stop may still be running: its history then closes the wait).
          if (ending.cancelled) await this.completion.reportCancellation(taskToken);
          return;
        case 'handback':
          // The next attempt reads the latest details: checks counted on, and how long the request looks lost.
          await this.completion.heartbeat(taskToken, wait.beat);
          return await this.completion.fail(taskToken, stillDetaching(wait, HANDBACK_RETRY_MS));
      }
    } catch (err) {
      // The stop moved on (an abort cancelled this wait, the stop ended): nobody is waiting for the answer.
      if (serverSays(err)) return;
      throw err;
    }
  }

  /** Checks the volume until it detaches, looks lost, errs for good, or the attempt is over. */
  private async until(wait: WatchedWait, stop: AbortSignal, afterFirstCheck?: () => void): Promise<Ending> {
    const { backend, target, beat } = wait;
    const handBackAt = Math.max(Date.now() + 1_000, wait.attemptDeadlineMs - ANSWER_MARGIN_MS);
    let pauseMs = this.options.pollIntervalMs;
    for (;;) {
      if (stop.aborted) return { kind: 'handback' };
      let answered = false;
      try {
        beat.state = await backend.states.check(target, stop);
        beat.checks++;
        answered = true;
      } catch (err) {
        if (stop.aborted) return { kind: 'handback' };
        // A final answer (an unknown volume) is the workflow's to decide; a transient one costs a check.
        if (!(err instanceof ApplicationFailure) || err.nonRetryable) return { kind: 'failed', error: err };
      }
      if (beat.state === 'detached') return { kind: 'done', result: { outcome: 'detached', checks: beat.checks } };
      afterFirstCheck?.();
      afterFirstCheck = undefined;
      if (answered) {
        if (beat.state !== 'attached') delete beat.attachedSince;
        else beat.attachedSince ??= new Date().toISOString();
        // Decided on an answer that still reads `attached`, as a wait in place decides it.
        if (beat.attachedSince && Date.now() - Date.parse(beat.attachedSince) >= wait.lostAfterMs) {
          return { kind: 'done', result: { outcome: 'lost', checks: beat.checks } };
        }
      }
      if (Date.now() + pauseMs > handBackAt) return { kind: 'handback' };
      await this.forced
        .pause(ForcedVolumes.key(backend.provider.name, target), sleep(pauseMs, undefined, { signal: stop }))
        .catch(() => undefined);
      pauseMs = Math.min(pauseMs * 2, this.options.maxPollIntervalMs);
    }
  }
}

/** What an error from the server says of the wait, when it says it is no longer this list's to answer for. */
function serverSays(err: unknown): Ending | undefined {
  if (err instanceof ActivityCancelledError) return { kind: 'heard', cancelled: true };
  if (err instanceof ActivityNotFoundError || err instanceof ActivityPausedError)
    return { kind: 'heard', cancelled: false };
  return undefined;
}

/** The answer for a volume still stuck: expected and benign, retried soon by the server. */
export function stillDetaching(
  wait: { target: VolumeTarget; beat: WaitHeartbeat },
  retryMs: number,
): ApplicationFailure {
  const failure = ApplicationFailure.create({
    type: 'StillDetaching',
    category: ApplicationFailureCategory.BENIGN,
    message: `${wait.target.volume.volumeId} still ${wait.beat.state} since ${wait.beat.since} (${wait.beat.checks} checks)`,
    nonRetryable: false,
    nextRetryDelay: retryMs,
  });
  // An answer, not a bug: its stack says nothing, and the server stores it with the attempt.
  failure.stack = `ApplicationFailure: ${failure.message}`;
  return failure;
}
