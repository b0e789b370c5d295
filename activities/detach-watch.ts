/**
 * The worker's watch list of stuck volumes. A wait that workflow version 8 (`watched-waits`) schedules hands its
 * volume to this list and returns at once (CompleteAsyncError): it then holds no slot and no SDK state in the
 * worker, and its attempt does not end every hold window. The list checks its volumes in the provider's batched,
 * budgeted checks and completes each wait by its task token as soon as the volume reads `detached` (or the request
 * looks lost).
 *
 * Each wait still heartbeats, from here, at two thirds of its heartbeat timeout (200 s of the default 5 min, the
 * worker's STOPFLOW_WATCH_HEARTBEAT_TIMEOUT since workflow version 9; 80 s of 2 min in version 8): that is how the
 * server notices a lost worker (the wait is retried on another within the timeout) and how this list hears of a
 * cancel (the heartbeat's answer). One request per stuck volume per 200 s, where a wait polling in place cost two
 * per hold window and pause (docs/worker.md "Isolation"). A worker that shuts down hands its waits back at once.
 */
import { AsyncResource } from 'node:async_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { ApplicationFailure } from '@temporalio/activity';
import {
  ActivityCancelledError,
  ActivityNotFoundError,
  ActivityPausedError,
  ActivityResetError,
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
  /** The server said the wait is no longer this list's: what it said decides what the list answers, if anything. */
  | { kind: 'heard'; said: ServerSaid }
  /** No heartbeat got through for a whole heartbeat timeout: the server has timed the attempt out and retries it. */
  | { kind: 'lapsed' };
type ServerSaid = 'cancelled' | 'gone' | 'paused' | 'reset';

/** Longest a shutdown waits for the waits to be handed back: past it, they go back at their heartbeat timeout. */
const RELEASE_BOUND_MS = 10_000;
/** A heartbeat that failed (not a refusal: the server could not be reached) is sent again this soon, once. */
const BEAT_RETRY_MS = 5_000;

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
    // The whole chain is built in the list's own context: a promise made in the activity's context carries its
    // async-local store, and the list keeps this one for as long as the volume is stuck. That store holds the SDK's
    // context of the ended attempt (its Activity, logger, cancellation), several KB per stuck volume.
    const run = this.root.runInAsyncScope(() =>
      this.follow(wait, controller)
        .catch((error: unknown) => {
          // The wait is left to its heartbeat timeout: the server retries it on a worker (this one included).
          this.warn('the watch of a wait broke; the server retries the wait after its heartbeat timeout', wait, error);
        })
        .finally(() => this.watching.delete(controller)),
    );
    this.watching.set(controller, run);
    return true;
  }

  /**
   * Hands every wait back to the server (StillDetaching, retried within a second), for another worker to take. Bounded:
   * a shutdown must not outlast its grace because the server is slow to answer; what is not handed back by then goes
   * back at its heartbeat timeout.
   */
  release(): Promise<void> {
    this.released ??= (async () => {
      for (const controller of this.watching.keys()) controller.abort();
      const bound = sleep(RELEASE_BOUND_MS, undefined, { ref: false });
      await Promise.race([Promise.allSettled([...this.watching.values()]), bound]);
    })();
    return this.released;
  }

  private warn(message: string, wait: WatchedWait, error?: unknown): void {
    const meta = { volumeId: wait.target.volume.volumeId, instanceId: wait.target.instanceId, error };
    if (this.options.warn) this.options.warn(message, meta);
    else console.error(`stopflow: ${message}`, meta);
  }

  private async follow(wait: WatchedWait, controller: AbortController): Promise<void> {
    let heard: Ending | undefined;
    const end = (ending: Ending) => {
      heard ??= ending;
      controller.abort();
    };
    let lastBeatAt = Date.now();
    let retry: NodeJS.Timeout | undefined;
    // The wait's heartbeat, apart from its checks: a check may wait long for budget tokens under throttling.
    const beat = (again = true) => {
      this.completion.heartbeat(wait.taskToken, wait.beat).then(
        () => {
          lastBeatAt = Date.now();
        },
        (err: unknown) => {
          const said = serverSays(err);
          if (said) return end({ kind: 'heard', said });
          if (Date.now() - lastBeatAt >= wait.heartbeatTimeoutMs) {
            this.warn('no heartbeat of a wait reached Temporal for its heartbeat timeout: it is retried', wait, err);
            return end({ kind: 'lapsed' });
          }
          // One missed beat must not time the attempt out: the next is two thirds of the timeout away.
          if (again && !controller.signal.aborted) retry = setTimeout(() => beat(false), BEAT_RETRY_MS);
        },
      );
    };
    const timeoutShare = Math.max(1_000, Math.floor((wait.heartbeatTimeoutMs * 2) / 3));
    const everyMs = Math.min(this.options.heartbeatEveryMs ?? Number.POSITIVE_INFINITY, timeoutShare);
    // Each wait beats at a phase of its own, drawn at random: waits registered in one burst (an incident, a worker
    // restart) spread their beats over the whole interval at once, instead of all beating together an interval later.
    let beats: NodeJS.Timeout | undefined;
    const phase = setTimeout(
      () => {
        beat();
        beats = setInterval(beat, everyMs);
      },
      Math.floor(everyMs * Math.random()),
    );
    let ending: Ending;
    try {
      // A first attempt says at once what it found, for `stopflow status`; later ones carry their details on.
      ending = await this.until(wait, controller.signal, wait.announce ? () => beat() : undefined);
    } finally {
      // A beat in flight that fails after this must not schedule another for an ended watch.
      controller.abort();
      clearTimeout(phase);
      clearInterval(beats);
      clearTimeout(retry);
    }
    ending = heard ?? ending;
    const { taskToken } = wait;
    await this.answer(taskToken, async () => {
      switch (ending.kind) {
        case 'done':
          return this.completion.complete(taskToken, ending.result);
        case 'failed':
          return this.completion.fail(taskToken, ending.error);
        case 'heard':
          return this.acknowledge(taskToken, ending.said);
        case 'lapsed':
          return;
        case 'handback':
          // The next attempt reads the latest details: checks counted on, and how long the request looks lost.
          await this.completion.heartbeat(taskToken, wait.beat);
          return this.completion.fail(taskToken, stillDetaching(wait, HANDBACK_RETRY_MS));
      }
    });
  }

  /** What the SDK's worker answers to the same news for an activity it runs. */
  private async acknowledge(taskToken: Uint8Array, said: ServerSaid): Promise<void> {
    if (said === 'cancelled') await this.completion.reportCancellation(taskToken);
    else if (said === 'paused')
      await this.completion.fail(taskToken, new ApplicationFailure('Activity paused', 'ActivityPause'));
    else if (said === 'reset')
      await this.completion.fail(taskToken, new ApplicationFailure('Activity reset', 'ActivityReset'));
  }

  /**
   * Sends the list's answer, a few times if the server cannot be reached: a detach it failed to report would only be
   * seen after the heartbeat timeout. A refusal ends it, or turns it into the answer that news calls for.
   */
  private async answer(taskToken: Uint8Array, send: () => Promise<void>): Promise<void> {
    for (let tries = 1; ; tries++) {
      try {
        return await send();
      } catch (err) {
        const said = serverSays(err);
        if (said) {
          // Heard while answering (a cancel, say): acknowledged as such, once; the stop may have ended already.
          if (said !== 'gone') await this.acknowledge(taskToken, said).catch(() => undefined);
          return;
        }
        if (tries >= 3) throw err;
        await sleep(1_000 * 2 ** (tries - 1));
      }
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
      if (answered && looksLost(beat, wait.lostAfterMs)) {
        return { kind: 'done', result: { outcome: 'lost', checks: beat.checks } };
      }
      if (Date.now() + pauseMs > handBackAt) return { kind: 'handback' };
      await this.forced
        .pause(ForcedVolumes.key(backend.provider.name, target), sleep(pauseMs, undefined, { signal: stop }))
        .catch(() => undefined);
      pauseMs = Math.min(pauseMs * 2, this.options.maxPollIntervalMs);
    }
  }
}

/**
 * Takes a check's answer (in `beat.state`) into the "lost" clock, and says whether the request looks lost: every
 * answer has read `attached` for `lostAfterMs`. Only answers count: a backend that errors said nothing of the volume.
 * Shared by the watch list and a wait polling in place, so both decide it alike.
 */
export function looksLost(beat: WaitHeartbeat, lostAfterMs: number | undefined): boolean {
  if (beat.state !== 'attached') delete beat.attachedSince;
  else beat.attachedSince ??= new Date().toISOString();
  return (
    lostAfterMs !== undefined &&
    beat.attachedSince !== undefined &&
    Date.now() - Date.parse(beat.attachedSince) >= lostAfterMs
  );
}

/**
 * The details a wait's attempt starts from: those the server kept of the attempts before it (checks counted on,
 * since when, how long the request has looked lost), or fresh ones.
 */
export function carriedBeat(previous: Partial<WaitHeartbeat> | undefined, scheduledAtMs: number): WaitHeartbeat {
  const beat: WaitHeartbeat = {
    checks: previous?.checks ?? 0,
    state: previous?.state ?? 'detaching',
    since: previous?.since ?? new Date(scheduledAtMs).toISOString(),
  };
  if (previous?.attachedSince) beat.attachedSince = previous.attachedSince;
  return beat;
}

/** What an error from the server says of the wait, when it says the wait is no longer this list's to answer for. */
function serverSays(err: unknown): ServerSaid | undefined {
  if (err instanceof ActivityCancelledError) return 'cancelled';
  if (err instanceof ActivityNotFoundError) return 'gone';
  if (err instanceof ActivityPausedError) return 'paused';
  if (err instanceof ActivityResetError) return 'reset';
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
