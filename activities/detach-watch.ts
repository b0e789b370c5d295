/**
 * The worker's watch list of stuck volumes. A wait that workflow version 8 (`watched-waits`) schedules hands its
 * volume to this list and returns at once (CompleteAsyncError): it then holds no slot and no SDK state in the
 * worker, and its attempt does not end every hold window. The list checks its volumes in the provider's batched,
 * budgeted checks and completes each wait by its task token as soon as the volume reads `detached` (or the request
 * looks lost).
 *
 * Each wait still heartbeats, from here, a little before its heartbeat timeout (beatEveryMs: 13 min of the worker's
 * default 15 min, STOPFLOW_WATCH_HEARTBEAT_TIMEOUT, since 0.2.8; 200 s of 5 min before; 80 s of version 8's 2 min):
 * that is how the server notices a lost worker (the wait is retried on another within the timeout) and how this list
 * hears of a cancel (the heartbeat's answer). With the attempt's hand-back once an hour (at a moment drawn over its
 * last quarter hour) it is all a stuck volume costs the server while it waits, so it is as rare as the timeout
 * allows: at 5,000 stuck volumes, a beat every 200 s was most of the server's requests (docs/worker.md "Sizing").
 * A worker that shuts down hands its waits back at once.
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
import type { AttachmentState } from './provider';

/** What the list needs to answer for a wait: who it is (its task token) and its attempt's bounds. */
export interface WatchedWait {
  taskToken: Uint8Array;
  backend: Backend;
  target: VolumeTarget;
  /** The volume is reported lost after reading `attached` this long (see awaitDetached). */
  lostAfterMs: number;
  /** The attempt's start-to-close deadline (epoch ms): the list hands the wait back well before it. */
  attemptDeadlineMs: number;
  /** The attempt's heartbeat timeout; the list beats a little before it (beatEveryMs). */
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
  /** Heartbeat each wait at least this often (default: beatEveryMs of its heartbeat timeout). */
  heartbeatEveryMs?: number;
  /** Where a watch that broke is reported (the worker's logger); stderr by default. */
  warn?: (message: string, meta: Record<string, unknown>) => void;
}

/**
 * The most a beat is sent before the heartbeat timeout would lapse: room for a missed beat's tries (5, 10 and 20 s
 * after each failed one, then every 20 s; the connection's own retries of an unreachable server come on top) and a
 * loaded worker's late timers. Up to 6 min timeouts a third of the timeout is less, and is kept.
 */
const BEAT_MARGIN_MS = 120_000;

/**
 * How often the list beats a wait scheduled with `heartbeatTimeoutMs`: a third of the timeout early, but never more
 * than BEAT_MARGIN_MS. So 80 s of 2 min and 200 s of 5 min as ever, and 13 min of 15 min (28 of 30), where two thirds
 * would beat every 10 min: the longer timeout is chosen to make beats rare, and the margin need not grow with it.
 */
export function beatEveryMs(heartbeatTimeoutMs: number): number {
  return Math.max(1_000, heartbeatTimeoutMs - Math.min(Math.floor(heartbeatTimeoutMs / 3), BEAT_MARGIN_MS));
}

/** How long before its attempt's start-to-close the list hands a stuck volume back (the next attempt takes it again). */
const ANSWER_MARGIN_MS = 60_000;
/**
 * The most a wait is handed back earlier still, drawn at random per attempt (at most a quarter of what is left of
 * it): waits registered in one burst (an incident) would otherwise all be handed back, and take their next attempts,
 * in one burst an hour later, and every hour after, three requests to the server each.
 */
const HANDBACK_SPREAD_MS = 15 * 60_000;
/** Retry delay of an attempt handed back (attempt over, worker shutting down): the volume was just checked. */
export const HANDBACK_RETRY_MS = 1_000;

/** Why the list stopped answering for a wait: each is said to the server once, by the wait's task token. */
type Ending =
  | { kind: 'done'; result: WaitResult }
  | { kind: 'failed'; error: unknown }
  | { kind: 'handback' }
  /** The server said the wait is no longer this list's: what it said decides what the list answers, if anything. */
  | { kind: 'heard'; said: ServerSaid }
  /** No heartbeat got through up to the last try before the heartbeat timeout: the server times the attempt out. */
  | { kind: 'lapsed' };
export type ServerSaid = 'cancelled' | 'gone' | 'paused' | 'reset';

/** Longest a shutdown waits for the waits to be handed back: past it, they go back at their heartbeat timeout. */
const RELEASE_BOUND_MS = 10_000;
/** A heartbeat that failed (not a refusal: the server could not be reached) is first sent again this soon. */
const BEAT_RETRY_MS = 5_000;
/** The longest pause between the tries of a missed beat. */
const MAX_BEAT_RETRY_MS = 20_000;
/**
 * The last try of a missed beat is sent this long before the heartbeat timeout, counted from when the last beat that
 * got through was sent (the server recorded it later): a try sent at the timeout itself could not be in time. One
 * that the connection keeps retrying past the timeout is answered "not found", and the wait is let go as `gone`.
 */
function lastTryMarginMs(heartbeatTimeoutMs: number): number {
  return Math.min(10_000, Math.floor(heartbeatTimeoutMs / 6));
}

/** What a wait in the list uses of it. */
interface WatchList {
  readonly completion: AsyncCompletionClient;
  readonly forced: ForcedVolumes;
  readonly options: DetachWatchOptions;
  /**
   * The context the list was built in (the worker's), not the registering activity's: the list outlives that
   * attempt, and must not carry its cancellation, log attributes or trace span into checks made for later ones.
   */
  readonly root: AsyncResource;
  /** The wait has been answered for (or let go): it leaves the list. */
  left(watched: Watched): void;
  warn(message: string, wait: WatchedWait, error?: unknown): void;
}

export class DetachWatch {
  private readonly watching = new Set<Watched>();
  private released: Promise<void> | undefined;
  private readonly list: WatchList;

  constructor(completion: AsyncCompletionClient, forced: ForcedVolumes, options: DetachWatchOptions) {
    this.list = {
      completion,
      forced,
      options,
      root: new AsyncResource('StopflowDetachWatch'),
      left: (watched) => this.watching.delete(watched),
      warn: (message, wait, error) => {
        const meta = { volumeId: wait.target.volume.volumeId, instanceId: wait.target.instanceId, error };
        if (options.warn) options.warn(message, meta);
        else console.error(`stopflow: ${message}`, meta);
      },
    };
  }

  /** Waits the list answers for now. */
  get size(): number {
    return this.watching.size;
  }

  /** Takes a wait over; false once the worker is shutting down (the activity then hands it back itself). */
  watch(wait: WatchedWait): boolean {
    if (this.released) return false;
    // Built in the list's own context, as is everything a wait schedules from then on: a timer or promise made in
    // the activity's context carries its async-local store, which holds the SDK's context of the ended attempt
    // (its Activity, logger, cancellation), several KB per stuck volume kept for as long as the volume is stuck.
    this.list.root.runInAsyncScope(() => {
      const watched = new Watched(this.list, wait);
      this.watching.add(watched);
      watched.start();
    });
    return true;
  }

  /**
   * Hands every wait back to the server (StillDetaching, retried within a second), for another worker to take. Bounded:
   * a shutdown must not outlast its grace because the server is slow to answer; what is not handed back by then goes
   * back at its heartbeat timeout.
   */
  release(): Promise<void> {
    this.released ??= (async () => {
      const answers = [...this.watching].map((watched) => watched.end({ kind: 'handback' }));
      const bound = sleep(RELEASE_BOUND_MS, undefined, { ref: false });
      await Promise.race([Promise.allSettled(answers), bound]);
    })();
    return this.released;
  }
}

/**
 * One wait in the list, as a small state machine driven by its timers and its checks' answers: a check, then a pause
 * (doubling up to the longest), until the volume detaches, looks lost, errs for good, or the attempt is over; beats on
 * a timer of its own meanwhile. No async function, sleep promise or abort signal per wait or per pause: thousands of
 * these live for as long as their volumes are stuck, and whatever waits through a pause outlives the collections of
 * the young generation and is copied into the old one, for the old generation's collections to find.
 */
class Watched {
  private readonly key: string;
  private readonly handBackAt: number;
  private pauseMs: number;
  /**
   * When the last beat that got through was sent: the server's heartbeat timeout runs from a moment after it. It
   * starts at the registration, a little after the attempt's start, from which the server counts the first timeout:
   * the beat margin (two minutes at 15 min) covers that.
   */
  private lastBeatAt = Date.now();
  /** Set once: why the list stops answering for the wait. */
  private ending: Ending | undefined;
  private answered: Promise<void> | undefined;
  private checking = false;
  /** A force's news came during a check: that answer may predate the force, so check again without a pause. */
  private recheck = false;
  private announce: boolean;
  private pause: NodeJS.Timeout | undefined;
  private beats: NodeJS.Timeout | undefined;
  private beatRetry: NodeJS.Timeout | undefined;
  /** Tries of a missed beat since the last that got through (onBeatFailed). */
  private beatRetries = 0;

  constructor(
    private readonly list: WatchList,
    private readonly wait: WatchedWait,
  ) {
    this.key = ForcedVolumes.key(wait.backend.provider.name, wait.target);
    const lastAnswerAt = wait.attemptDeadlineMs - ANSWER_MARGIN_MS;
    const spreadMs = Math.min(HANDBACK_SPREAD_MS, Math.max(0, (lastAnswerAt - Date.now()) / 4));
    this.handBackAt = Math.max(Date.now() + 1_000, Math.floor(lastAnswerAt - spreadMs * Math.random()));
    this.pauseMs = list.options.pollIntervalMs;
    this.announce = wait.announce;
  }

  start(): void {
    const everyMs = Math.min(
      this.list.options.heartbeatEveryMs ?? Number.POSITIVE_INFINITY,
      beatEveryMs(this.wait.heartbeatTimeoutMs),
    );
    // Each wait beats at a phase of its own, drawn at random: waits registered in one burst (an incident, a worker
    // restart) spread their beats over the whole interval at once, instead of all beating together an interval later.
    this.beats = setTimeout(
      () => {
        this.beat();
        this.beats = setInterval(this.beat, everyMs);
      },
      Math.floor(everyMs * Math.random()),
    );
    this.list.forced.listen(this.key, this.onForced);
    this.check();
  }

  /** Stops the wait's timers and checks, and answers for it once; the answer settles when it is said (or given up). */
  end(ending: Ending): Promise<void> {
    if (this.ending) return this.answered ?? Promise.resolve();
    this.ending = ending;
    clearTimeout(this.pause);
    clearTimeout(this.beats); // a timeout or an interval alike
    clearTimeout(this.beatRetry);
    this.list.forced.unlisten(this.key, this.onForced);
    if (this.checking) this.wait.backend.states.sweepWithdrawn();
    this.answered = this.list.root.runInAsyncScope(() =>
      this.answer(ending)
        .catch((error: unknown) => {
          // The wait is left to its heartbeat timeout: the server retries it on a worker (this one included).
          this.list.warn(
            'the watch of a wait broke; the server retries the wait after its heartbeat timeout',
            this.wait,
            error,
          );
        })
        .finally(() => this.list.left(this)),
    );
    return this.answered;
  }

  private readonly withdrawn = () => this.ending !== undefined;

  private check(): void {
    this.pause = undefined;
    if (this.ending) return;
    this.checking = true;
    this.recheck = false;
    this.wait.backend.states.check(this.wait.target, this.withdrawn).then(this.onState, this.onCheckError);
  }

  private readonly onState = (state: AttachmentState) => {
    this.checking = false;
    if (this.ending) return;
    const { beat } = this.wait;
    beat.state = state;
    beat.checks++;
    if (state === 'detached')
      return void this.end({ kind: 'done', result: { outcome: 'detached', checks: beat.checks } });
    this.announceOnce();
    // Taken into the clock, but not decided on: an answer that may predate a force heard while it was out.
    const lost = looksLost(beat, this.wait.lostAfterMs);
    if (lost && !this.recheck) {
      return void this.end({ kind: 'done', result: { outcome: 'lost', checks: beat.checks } });
    }
    this.pauseThenCheck();
  };

  private readonly onCheckError = (err: unknown) => {
    this.checking = false;
    if (this.ending) return;
    // A final answer (an unknown volume) is the workflow's to decide; a transient one costs a check.
    if (!(err instanceof ApplicationFailure) || err.nonRetryable) return void this.end({ kind: 'failed', error: err });
    this.announceOnce();
    this.pauseThenCheck();
  };

  /** A first attempt says at once what it found, for `stopflow status`; later ones carry their details on. */
  private announceOnce(): void {
    if (!this.announce) return;
    this.announce = false;
    this.beat();
  }

  private pauseThenCheck(): void {
    // A re-check runs at once: only a pause would take the wait past its hand-back time.
    if (this.recheck ? Date.now() >= this.handBackAt : Date.now() + this.pauseMs > this.handBackAt) {
      void this.end({ kind: 'handback' });
      return;
    }
    if (this.recheck) {
      this.check();
      return;
    }
    this.pause = setTimeout(this.onPaused, this.pauseMs);
    this.pauseMs = Math.min(this.pauseMs * 2, this.list.options.maxPollIntervalMs);
  }

  private readonly onPaused = () => this.check();

  /**
   * The volume was forced in this worker: look again now rather than at the end of the pause. Told inside the
   * forcing activity, so it only schedules: the check runs on its own turn, in the list's context.
   */
  private readonly onForced = () => {
    if (this.ending) return;
    if (this.checking) {
      this.recheck = true;
      return;
    }
    clearTimeout(this.pause);
    this.pause = this.list.root.runInAsyncScope(() => setTimeout(this.onPaused, 0));
  };

  /** The wait's heartbeat, apart from its checks: a check may wait long for budget tokens under throttling. */
  private readonly beat = () => {
    const sentAt = Date.now();
    this.list.completion.heartbeat(this.wait.taskToken, this.wait.beat).then(() => {
      this.lastBeatAt = Math.max(this.lastBeatAt, sentAt);
      this.beatRetries = 0;
      clearTimeout(this.beatRetry); // the server is reached again: no try is needed
      this.beatRetry = undefined;
    }, this.onBeatFailed);
  };

  private readonly beatAgain = () => {
    this.beatRetry = undefined;
    if (!this.ending) this.beat();
  };

  /**
   * A beat the server did not get is tried again, BEAT_RETRY_MS after it failed, doubling up to MAX_BEAT_RETRY_MS,
   * until one gets through or the last try, sent just before the heartbeat timeout runs out (lastTryMarginMs), fails:
   * then the wait is let go (`lapsed`). The next regular beat is almost a whole timeout away: without the tries, a
   * beat missed in a minute's outage of the server would time the attempt out, and the list would keep the wait it no
   * longer answers for until that beat (then watching its volume twice, once the server retries it here).
   */
  private readonly onBeatFailed = (err: unknown) => {
    if (this.heardFrom(err) || this.ending || this.beatRetry) return;
    const lastTryInMs = this.lapsesAt() - Date.now();
    const backoffMs = Math.min(BEAT_RETRY_MS * 2 ** this.beatRetries++, MAX_BEAT_RETRY_MS);
    this.beatRetry = setTimeout(this.beatAgain, Math.max(0, Math.min(backoffMs, lastTryInMs)));
  };

  /** When a failed beat lets the wait go: the last try's moment. */
  private lapsesAt(): number {
    const timeoutMs = this.wait.heartbeatTimeoutMs;
    return this.lastBeatAt + timeoutMs - lastTryMarginMs(timeoutMs);
  }

  /** What a failed beat says: the server's news ends the wait, as does the failure of the last try (lapsesAt). */
  private heardFrom(err: unknown): boolean {
    const said = serverSays(err);
    if (said) {
      void this.end({ kind: 'heard', said });
      return true;
    }
    if (!this.ending && Date.now() >= this.lapsesAt()) {
      this.list.warn(
        'no heartbeat of a wait reached Temporal for its heartbeat timeout: it is retried',
        this.wait,
        err,
      );
      void this.end({ kind: 'lapsed' });
      return true;
    }
    return false;
  }

  private async answer(ending: Ending): Promise<void> {
    const { taskToken } = this.wait;
    const { completion } = this.list;
    await this.send(async () => {
      switch (ending.kind) {
        case 'done':
          return completion.complete(taskToken, ending.result);
        case 'failed':
          return completion.fail(taskToken, ending.error);
        case 'heard':
          return this.acknowledge(ending.said);
        case 'lapsed':
          return;
        case 'handback':
          // The next attempt reads the latest details: checks counted on, and how long the request looks lost.
          await completion.heartbeat(taskToken, this.wait.beat);
          return completion.fail(taskToken, stillDetaching(this.wait, HANDBACK_RETRY_MS));
      }
    });
  }

  /** What the SDK's worker answers to the same news for an activity it runs. */
  private async acknowledge(said: ServerSaid): Promise<void> {
    const { taskToken } = this.wait;
    const { completion } = this.list;
    if (said === 'cancelled') await completion.reportCancellation(taskToken);
    else if (said === 'paused' || said === 'reset') await completion.fail(taskToken, sdkFailureOn(said));
  }

  /**
   * Sends the list's answer, a few times if the server cannot be reached: a detach it failed to report would only be
   * seen after the heartbeat timeout. A refusal ends it, or turns it into the answer that news calls for.
   */
  private async send(say: () => Promise<void>): Promise<void> {
    for (let tries = 1; ; tries++) {
      try {
        return await say();
      } catch (err) {
        const said = serverSays(err);
        if (said) {
          // Heard while answering (a cancel, say): acknowledged as such, once; the stop may have ended already.
          if (said !== 'gone') await this.acknowledge(said).catch(() => undefined);
          return;
        }
        if (tries >= 3) throw err;
        await sleep(1_000 * 2 ** (tries - 1));
      }
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

/** The failure the SDK's worker ends an attempt with when the server says it was paused or reset. */
export function sdkFailureOn(said: 'paused' | 'reset'): ApplicationFailure {
  return said === 'paused'
    ? new ApplicationFailure('Activity paused', 'ActivityPause')
    : new ApplicationFailure('Activity reset', 'ActivityReset');
}

/** What an error from the server says of an attempt, when it says the attempt is no longer ours to answer for. */
export function serverSays(err: unknown): ServerSaid | undefined {
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
