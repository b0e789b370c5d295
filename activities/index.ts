/**
 * The activities: every side effect of a stop. Each takes the provider name
 * from the request and reconciles the backend's actual attachment state
 * towards the workflow's desired one (docs/architecture.md).
 *
 * Three kinds, on three task queues with their own slots (docs/worker.md):
 * - urgent work (list, request, one state read, stop the instance) on the
 *   stop's task queue: short calls that a stop is blocked on;
 * - the read-only wait for `detached` (awaitDetached) on the waits queue, so a
 *   thousand stuck volumes never hold a slot that a healthy stop or an abort needs;
 * - the force (forceDetachVolume) on the forces queue since workflow version 12.
 *
 * An urgent attempt heartbeats about once a second once it has run a second, and
 * every provider call carries the attempt's cancellation, so a cancel reaches it
 * within a heartbeat and no call outlives its activity. A wait of a version 8
 * stop is handed to the worker's watch list (activities/detach-watch.ts), which
 * checks, heartbeats and completes it by task token. A wait of an older stop polls
 * in place: its first attempt beats at once (throttled to one per 20 s by its
 * worker), its later attempts only when they must (pollUntilDetached), and it
 * hears of a cancel at its attempt's end.
 */
import { ApplicationFailure, CancelledFailure, CompleteAsyncError, Context } from '@temporalio/activity';
import { ApplicationFailureCategory } from '@temporalio/common';
import type { VolumeRef } from '../common/request';
import {
  type BackendState,
  DEFAULT_WATCH_HEARTBEAT_TIMEOUT_MS,
  type ForceResult,
  forceSentAt,
  type InstanceTarget,
  type RequestResult,
  type StopActivities,
  type StopInstanceOutcome,
  type VolumeTarget,
  type WaitHeartbeat,
  type WaitResult,
  type WaitTarget,
} from '../common/stop-activities';
import { Backend, type ProviderEvent } from './backend';
import { carriedBeat, type DetachWatch, HANDBACK_RETRY_MS, looksLost, stillDetaching } from './detach-watch';
import { type ConfirmHeartbeat, forceNotRecorded, recordForceMoment } from './force-moment';
import { ForcedVolumes } from './forced-volumes';
import { type Provider, refusedRequest } from './provider';

export type { VolumeTarget, WaitHeartbeat } from '../common/stop-activities';
export type { ProviderEvent } from './backend';

export interface ActivityDeps {
  providers: ReadonlyMap<string, Provider>;
  defaultProvider: string;
  /** How often a wait asks the backend; each check is a heartbeat, never a history event. */
  pollIntervalMs: number;
  /**
   * How long one attempt of a wait keeps polling before it gives its slot back and
   * asks to be retried later (StillDetaching): the server waits, not the worker. The
   * worker's default is DEFAULT_DETACH_HOLD_MS (worker/defaults.ts); 60s when unset here.
   */
  holdMs?: number;
  /** Longest pause between checks of a volume stuck past the hold window. Default 60s. */
  maxPollIntervalMs?: number;
  /**
   * The heartbeat timeout watched waits are scheduled with (reported by requestDetach, workflow version 9): how long
   * a killed worker's waits stay with it. Default DEFAULT_WATCH_HEARTBEAT_TIMEOUT_MS (15 min).
   */
  watchHeartbeatTimeoutMs?: number;
  /** Called on every provider call and error, for metrics. Must not throw. */
  observe?: (event: ProviderEvent) => void;
  /**
   * Sends one heartbeat of the running attempt straight to the server, resolving once the server has recorded it
   * (the SDK's own heartbeats are throttled and never confirmed). A force attempt records its moment this way
   * before the force leaves. The worker passes its client's `activity.heartbeat`; without it (the SDK's mock
   * activity environment) the SDK's heartbeat alone carries the moment.
   */
  confirmHeartbeat?: ConfirmHeartbeat;
}

/** How often an urgent attempt heartbeats, whatever it is doing: a cancel arrives within about this long. */
const HEARTBEAT_EVERY_MS = 1_000;
/**
 * How often a wait heartbeats. Its worker sends at most one heartbeat per 20 s anyway (worker/worker.ts),
 * and thousands of waits encoding details every second would be garbage for nothing.
 */
const WAIT_HEARTBEAT_EVERY_MS = 10_000;
/**
 * A wait's attempts after its first are quiet: the volume has been stuck a whole hold window, the
 * server kept the first attempt's details (what `stopflow status` shows: state, since when), and each
 * heartbeat is a write on the server for every stuck volume (during an incident, a third of what N
 * stuck volumes cost it: docs/worker.md). Such an attempt beats only if it polls longer than this
 * (a hold window above it), or to carry something the next attempt needs (see pollUntilDetached).
 * A cancel reaches it at its end: a cancelled activity is not retried.
 */
const QUIET_FIRST_BEAT_MS = 20_000;
/**
 * How long one attempt of a force polls for the volume to detach before it ends (StillDetaching), and the next
 * of its five attempts forces again. Its own, not the waits' hold window: that one is short so that stuck
 * volumes give the waits' slots back, and a force that takes longer than it to finish is not stuck, but would
 * be sent five times and the volume given up as `failed` after two minutes.
 */
const FORCE_HOLD_MS = 60_000;
/**
 * A wait reports the request lost after every check read `attached` for this many polls (not one stale read),
 * doubled for each time it was already sent again, up to an hour.
 */
const LOST_AFTER_POLLS = 3;
const LOST_AFTER_MAX_MS = 3_600_000;

/** The providers of one worker, each with its budget and coalesced state checks. */
export class Backends {
  readonly forcedVolumes = new ForcedVolumes();
  private readonly byName: Map<string, Backend>;
  constructor(private readonly deps: ActivityDeps) {
    this.byName = new Map([...deps.providers].map(([name, provider]) => [name, new Backend(provider, deps.observe)]));
  }

  resolve(name: string | undefined): Backend {
    const chosen = name ?? this.deps.defaultProvider;
    const backend = this.byName.get(chosen);
    if (!backend) {
      throw ApplicationFailure.nonRetryable(
        `provider "${chosen}" is not configured on this worker (configured: ${[...this.byName.keys()].join(', ')})`,
        'UnknownProvider',
      );
    }
    return backend;
  }
}

/**
 * A force-detach attempt that fails after a force went out (its own, or an earlier attempt's it was told of) carries
 * that force's moment in its failure's details (a WaitHeartbeat): the workflow reads no heartbeat details of a failed
 * activity, and after the last attempt it reads the volume once more. A volume it then finds detached was forced,
 * and is reported so (workflow version 10, `force-sent-audited`). The failure is otherwise the one thrown: its type,
 * retry, delay, category, cause and stack.
 */
function sayingForceSent(err: unknown, forceSentAt: string | undefined): unknown {
  if (!forceSentAt) return err;
  const said: Partial<WaitHeartbeat> = { forceSentAt };
  if (err instanceof CancelledFailure) {
    // A worker shutting down ends the attempt as a retryable failure of its own, without these details: said here.
    // The stop's cancel, a pause or a reset is passed on as it is (none is how the last attempt ends). The SDK cancels
    // for a shutdown with that reason, and with the details only when the core asked for it.
    const shuttingDown = Context.current().cancellationDetails?.workerShutdown || err.message === 'WORKER_SHUTDOWN';
    if (!shuttingDown) return err;
    return ApplicationFailure.create({
      message: `the worker shut down during this attempt, after a force sent at ${forceSentAt}`,
      type: 'WorkerShutdown',
      nonRetryable: false,
      details: [said],
      // As the SDK's own end for a shutdown: expected, logged and counted as no error.
      category: ApplicationFailureCategory.BENIGN,
    });
  }
  const failure = err instanceof ApplicationFailure ? err : ApplicationFailure.fromError(err);
  const saying = new ApplicationFailure(
    failure.message,
    failure.type,
    failure.nonRetryable,
    [said, ...(failure.details ?? [])],
    failure.cause,
    failure.nextRetryDelay,
    failure.category,
  );
  if (failure.stack) saying.stack = failure.stack;
  return saying;
}

/**
 * Runs `fn` with a heartbeat about every `everyMs`; `details` is what the UI and `stopflow status` show.
 * The first beat comes after one interval, not at once: nearly every urgent attempt ends within it, and each
 * heartbeat is a write on the Temporal server (measured in the throughput benchmark: the server's CPU per
 * stop fell from about 56 to 51 ms without them). The heartbeat timeout runs from the attempt's start either
 * way. A poll beats at once (`firstAfterMs` 0): its details are what the UI and `stopflow status` show while it
 * polls.
 */
async function heartbeating<T>(
  details: () => unknown,
  fn: () => Promise<T>,
  everyMs = HEARTBEAT_EVERY_MS,
  firstAfterMs: number = everyMs,
): Promise<T> {
  const ctx = Context.current();
  const beat = () => ctx.heartbeat(details());
  if (firstAfterMs <= 0) beat();
  let timer: ReturnType<typeof setInterval> | undefined;
  const first = setTimeout(
    () => {
      beat();
      timer = setInterval(beat, everyMs);
    },
    firstAfterMs <= 0 ? everyMs : firstAfterMs,
  );
  try {
    return await fn();
  } finally {
    clearTimeout(first);
    clearInterval(timer);
  }
}

/**
 * When a wait's later attempt beats first, if it is still polling: well inside the heartbeat timeout
 * (which runs from the attempt's start), and past the default hold window, so such an attempt sends none.
 */
function quietFirstBeatMs(ctx: Context): number {
  const timeoutMs = ctx.info.heartbeatTimeoutMs ?? 0;
  return timeoutMs > 0 ? Math.min(QUIET_FIRST_BEAT_MS, Math.floor((timeoutMs * 2) / 3)) : QUIET_FIRST_BEAT_MS;
}

const isTransient = (err: unknown) => err instanceof ApplicationFailure && !err.nonRetryable;
const isThrottled = (err: unknown) => err instanceof ApplicationFailure && err.type === 'ThrottledProviderError';

/**
 * The signal of an instance stop under way: the activity's cancellation, except the cancel its workflow asked for
 * (a workflow cancel, an escalation) once the call is under way, which lets the stop finish. A cancel that came
 * before, a worker shutting down, or an attempt the server timed out ends it; and it ends at the attempt's
 * start-to-close whatever came first (a later shutdown or timeout is not passed on once a cancel was).
 */
function stopUnderWaySignal(ctx: Context, attemptStartedAtMs: number): { signal: AbortSignal; release: () => void } {
  const controller = new AbortController();
  const cancellation = ctx.cancellationSignal;
  const onCancel = () => {
    if (!ctx.cancellationDetails?.cancelRequested) controller.abort(cancellation.reason);
  };
  // From when this worker started the attempt (start-to-close runs from the start, not from when it was scheduled).
  const attemptEnd = setTimeout(
    () => controller.abort(new Error('the attempt reached its start-to-close timeout')),
    Math.max(0, attemptStartedAtMs + ctx.info.startToCloseTimeoutMs - Date.now()),
  );
  if (cancellation.aborted) controller.abort(cancellation.reason);
  else cancellation.addEventListener('abort', onCancel, { once: true });
  return {
    signal: controller.signal,
    release: () => {
      clearTimeout(attemptEnd);
      cancellation.removeEventListener('abort', onCancel);
    },
  };
}

/** Tries of one urgent step within its attempt, and the first pause between them (doubling). */
const BRIEF_TRIES = 4;
const BRIEF_PAUSE_MS = 200;

/**
 * One urgent step (a call, a check), tried again in place on a transient error a few times: one flaky
 * answer then costs a fraction of a second, not a workflow-level retry whose backoff grows to a minute.
 * Throttled answers are not counted (see untilNotThrottled).
 */
async function briefly<T>(step: () => Promise<T>): Promise<T> {
  for (let tries = 1; ; tries++) {
    try {
      return await untilNotThrottled(step);
    } catch (err) {
      if (!isTransient(err) || tries >= BRIEF_TRIES) throw err;
      await Context.current().sleep(BRIEF_PAUSE_MS * 2 ** (tries - 1));
    }
  }
}

/**
 * A step tried again for as long as the backend throttles it, within its attempt (its start-to-close and its
 * cancellation bound it). A throttled request was refused, not done, and says nothing about the volume: it must not
 * use up one of a force's five attempts, or a throttled account turns an abort into volumes given up as `failed`.
 * The call budget paces the tries: every throttling answer pauses the provider's calls (Retry-After or backoff).
 */
async function untilNotThrottled<T>(step: () => Promise<T>): Promise<T> {
  for (;;) {
    try {
      return await step();
    } catch (err) {
      if (!isThrottled(err)) throw err;
    }
  }
}

/**
 * The activities over these providers. With `watch`, a wait a version 8 stop schedules (`watched`) is handed to
 * that watch list (activities/detach-watch.ts); without one, every wait polls in place.
 */
export function createActivities(deps: ActivityDeps, backends = new Backends(deps), watch?: DetachWatch) {
  const holdMs = deps.holdMs ?? 60_000;
  const maxPollIntervalMs = Math.max(deps.maxPollIntervalMs ?? 60_000, deps.pollIntervalMs);

  /**
   * Polls until `detached` (or, with `lostAfter`, until the request was lost),
   * inside one hold window. A transient error on one check costs a poll, not the
   * attempt. Past the window: StillDetaching with a growing nextRetryDelay, so
   * a volume stuck for a day holds no slot and adds no history.
   */
  const pollUntilDetached = async (
    backend: Backend,
    target: VolumeTarget,
    {
      lostAfterMs,
      heartbeatEveryMs = HEARTBEAT_EVERY_MS,
      quietAfterFirst = false,
      attemptHoldMs = holdMs,
      forceSentAt,
    }: {
      lostAfterMs?: number;
      heartbeatEveryMs?: number;
      quietAfterFirst?: boolean;
      attemptHoldMs?: number;
      /** A force's poll: the force it sent, carried in its details (forceDetachVolume). */
      forceSentAt?: string | undefined;
    } = {},
  ): Promise<{ outcome: 'detached' | 'lost'; checks: number }> => {
    const ctx = Context.current();
    const releaseAt = Date.now() + attemptHoldMs;
    const previous = ctx.info.heartbeatDetails as Partial<WaitHeartbeat> | undefined;
    // Quiet past the first attempt, once the server has details to show (a first attempt that never beat, a
    // worker lost before its first heartbeat, leaves none).
    const quiet = quietAfterFirst && ctx.info.attempt > 1 && previous !== undefined;
    const beat = carriedBeat(previous, ctx.info.scheduledTimestampMs);
    if (forceSentAt) beat.forceSentAt = forceSentAt;
    let beaten = !quiet;
    let checksHere = 0;
    // The attempt's last word: a worker that throttles heartbeats still sends the latest details with the
    // failure, so the next attempt counts on from here. A quiet attempt that has not beaten says it only
    // when the next attempt needs it (a lost request is timed across attempts); otherwise the server keeps
    // the details it has, and this would be one more write per attempt.
    const lastWord = () => {
      if (beaten || (beat.attachedSince ?? null) !== (previous?.attachedSince ?? null)) ctx.heartbeat(beat);
    };
    return heartbeating(
      () => {
        beaten = true;
        return beat;
      },
      async () => {
        for (;;) {
          let answered = false;
          try {
            beat.state = await backend.states.check(target, ctx.cancellationSignal);
            beat.checks++;
            checksHere++;
            answered = true;
          } catch (err) {
            // A cancel or a final error ends the wait for good: nothing for a next attempt to read.
            if (!isTransient(err)) throw err;
            if (Date.now() + deps.pollIntervalMs > releaseAt) {
              lastWord();
              throw err;
            }
          }
          if (beat.state === 'detached') return { outcome: 'detached', checks: beat.checks };
          // Decided on an answer that still reads `attached`: errors after an old read say nothing new.
          if (answered && looksLost(beat, lostAfterMs)) return { outcome: 'lost', checks: beat.checks };
          if (Date.now() + deps.pollIntervalMs > releaseAt) {
            lastWord();
            const releases = Math.max(0, ctx.info.attempt - 1);
            const failure = ApplicationFailure.create({
              type: 'StillDetaching',
              // Expected while a volume is stuck: logged at debug and not counted as an activity failure.
              category: ApplicationFailureCategory.BENIGN,
              message: `${target.volume.volumeId} still ${beat.state} since ${beat.since} (attempt ${ctx.info.attempt}: ${checksHere} checks)`,
              nonRetryable: false,
              nextRetryDelay: Math.min(deps.pollIntervalMs * 2 ** releases, maxPollIntervalMs),
            });
            // An answer, not a bug: its stack says nothing, and the server stores it with every attempt.
            failure.stack = `ApplicationFailure: ${failure.message}`;
            throw failure;
          }
          await backends.forcedVolumes.pause(
            ForcedVolumes.key(backend.provider.name, target),
            ctx.sleep(deps.pollIntervalMs),
          );
        }
      },
      heartbeatEveryMs,
      // At once: a poll's details are what the UI and `stopflow status` show of it; a quiet attempt, only
      // if it polls that long.
      quiet ? quietFirstBeatMs(ctx) : 0,
    );
  };

  const listOnce = async (backend: Backend, instanceId: string): Promise<VolumeRef[]> => {
    const listed = await backend.call('listAttachedVolumes', (o) =>
      backend.provider.listAttachedVolumes(instanceId, o),
    );
    // A backend may report a volume twice (several attachments, several mounts): detach each once.
    return [...new Map(listed.map((v) => [v.volumeId, v])).values()];
  };
  const listAttached = (backend: Backend, instanceId: string) => briefly(() => listOnce(backend, instanceId));

  const activities = {
    async listAttachedVolumes(input: InstanceTarget): Promise<VolumeRef[]> {
      const backend = backends.resolve(input.provider);
      return heartbeating(
        () => undefined,
        () => listAttached(backend, input.instanceId),
      );
    },

    async requestDetach(target: VolumeTarget): Promise<RequestResult> {
      const backend = backends.resolve(target.provider);
      const ctx = Context.current();
      let sent = 0;
      const state = await heartbeating(
        () => undefined,
        async () => {
          await briefly(async () => {
            try {
              await backend.call('detachVolume', (o) =>
                backend.provider.detachVolume(target.instanceId, target.volume, o),
              );
              sent++;
            } catch (err) {
              // A throttled request was refused, not made: the volume's attempts count what the backend took.
              if (!isThrottled(err)) sent++;
              throw err;
            }
          });
          // One coalesced check: a detach that is done already skips the wait (and its queue) entirely.
          return briefly(() => backend.states.check(target, ctx.cancellationSignal, 'urgent'));
        },
      );
      // Earlier attempts counted as one request each (their tries in place are not known here).
      return {
        requests: ctx.info.attempt - 1 + sent,
        state,
        watchHeartbeatTimeoutMs: deps.watchHeartbeatTimeoutMs ?? DEFAULT_WATCH_HEARTBEAT_TIMEOUT_MS,
      };
    },

    async awaitDetached(target: WaitTarget): Promise<WaitResult> {
      const lostAfterMs = Math.min(
        LOST_AFTER_MAX_MS,
        LOST_AFTER_POLLS * deps.pollIntervalMs * 2 ** Math.min(20, target.rerequests ?? 0),
      );
      const backend = backends.resolve(target.provider);
      const ctx = Context.current();
      // Workflow version 8: the watch list answers for it by its task token, and this attempt ends here.
      if (target.watched && watch) {
        const previous = ctx.info.heartbeatDetails as Partial<WaitHeartbeat> | undefined;
        const beat = carriedBeat(previous, ctx.info.scheduledTimestampMs);
        const watched = watch.watch({
          // A copy: the SDK's is a view of the whole decoded task (its input and headers too).
          taskToken: Uint8Array.from(ctx.info.taskToken),
          backend,
          // Only what a check needs: the list keeps thousands of these.
          target: { provider: target.provider, instanceId: target.instanceId, volume: target.volume },
          lostAfterMs,
          attemptDeadlineMs: Date.now() + ctx.info.startToCloseTimeoutMs,
          heartbeatTimeoutMs: ctx.info.heartbeatTimeoutMs ?? ctx.info.startToCloseTimeoutMs,
          beat,
          announce: previous === undefined,
        });
        // A worker shutting down takes nothing on: the attempt goes back to the server for another worker.
        if (!watched) throw stillDetaching({ target, beat }, HANDBACK_RETRY_MS);
        throw new CompleteAsyncError();
      }
      return pollUntilDetached(backend, target, {
        lostAfterMs,
        heartbeatEveryMs: WAIT_HEARTBEAT_EVERY_MS,
        quietAfterFirst: true,
      });
    },

    async forceDetachVolume(target: VolumeTarget): Promise<ForceResult> {
      const backend = backends.resolve(target.provider);
      if (!backend.provider.supportsForce) {
        throw ApplicationFailure.nonRetryable(
          `provider "${backend.provider.name}" cannot force-detach volumes`,
          'ForceUnsupported',
        );
      }
      const ctx = Context.current();
      // An earlier attempt that sent the force and did not report it forced (its worker died or its attempt was cut
      // off mid-call; the volume was slower than its minute) said so in its heartbeat details: the volume may be
      // detached because of that force.
      const sentEarlier = forceSentAt(ctx.info.heartbeatDetails);
      // Kept in every heartbeat of this attempt (a failed attempt's last details are what the next one reads).
      let said: Partial<WaitHeartbeat> | undefined = sentEarlier ? { forceSentAt: sentEarlier } : undefined;
      try {
        // Force may lose data: never on a volume the backend already reads detached (the graceful detach won). A
        // backend that refuses such a force itself is not asked first, unless an earlier attempt's force went out:
        // then the read is what tells whether that force is done, and no second force follows it.
        const readFirst = sentEarlier !== undefined || backend.provider.forceRefusesDetached !== true;
        const before = readFirst
          ? await heartbeating(
              () => said,
              () => briefly(() => backend.states.check(target, ctx.cancellationSignal, 'urgent')),
            )
          : undefined;
        const checked = readFirst ? 1 : 0;
        // The audit must not hide a force: a volume forced by an earlier attempt is `force_detached`, not `detached`.
        if (before === 'detached') return { forced: sentEarlier !== undefined, attempts: ctx.info.attempt, checks: 1 };
        const answer = await heartbeating(
          () => said,
          // One force per attempt, never repeated in place: force may lose data, and its tries are counted (5).
          // A throttled one was refused, not done: it is sent again once the budget's pause is over.
          () =>
            untilNotThrottled(() => {
              const prior = said;
              // Back to what was said before this try: its force was refused, or never left.
              const takeBack = () => {
                said = prior;
                ctx.heartbeat(said);
              };
              return backend.call(
                'forceDetachVolume',
                async (o) => {
                  try {
                    const answered = await backend.provider.forceDetachVolume(target.instanceId, target.volume, o);
                    // Refused as not attached: nothing forced, and the moment recorded for it is taken back. Should
                    // this worker die before the take-back reaches the server, the next attempt reads the volume
                    // detached and reports it `force_detached`: a refused force over-reported, the audit's safe side.
                    if (answered === 'not-attached') takeBack();
                    return answered;
                  } catch (err) {
                    // A refusal (throttled, a device still held, unsupported) forced nothing. Anything else (a timeout,
                    // a 5xx, the attempt cut off mid-call) may have been applied: it counts, the safe side for an audit.
                    if (refusedRequest(err)) takeBack();
                    throw err;
                  }
                },
                ctx,
                1,
                'urgent',
                // Said before the request leaves, for the next attempt if this one never hears how it went (see
                // above), and recorded by the server first (./force-moment.ts); if it is not, nothing leaves.
                async () => {
                  said = { forceSentAt: new Date().toISOString() };
                  ctx.heartbeat(said);
                  try {
                    await recordForceMoment(ctx, said, deps.confirmHeartbeat);
                  } catch (err) {
                    takeBack();
                    throw await forceNotRecorded(ctx, err);
                  }
                },
              );
            }),
        );
        // Detached before this force reached it: by the graceful detach, or by an earlier attempt's force.
        if (answer === 'not-attached') {
          return { forced: sentEarlier !== undefined, attempts: ctx.info.attempt, checks: checked };
        }
        backends.forcedVolumes.forced(ForcedVolumes.key(backend.provider.name, target));
        const { checks } = await pollUntilDetached(backend, target, {
          attemptHoldMs: FORCE_HOLD_MS,
          forceSentAt: said?.forceSentAt,
        });
        return { forced: true, attempts: ctx.info.attempt, checks: checks + checked };
      } catch (err) {
        // After a force went out the volume may be detaching because of it: the failure says so (see sayingForceSent).
        throw sayingForceSent(err, said?.forceSentAt);
      }
    },

    async readAttachmentState(target: VolumeTarget): Promise<BackendState> {
      const backend = backends.resolve(target.provider);
      return heartbeating(
        () => undefined,
        () => briefly(() => backend.states.check(target, Context.current().cancellationSignal, 'urgent')),
      );
    },

    async readInstanceStopped(input: InstanceTarget): Promise<'stopped' | 'running' | 'unknown'> {
      const backend = backends.resolve(input.provider);
      const read = backend.provider.isInstanceStopped?.bind(backend.provider);
      if (!read) return 'unknown';
      const stopped = await heartbeating(
        () => undefined,
        () => briefly(() => backend.call('isInstanceStopped', (o) => read(input.instanceId, o))),
      );
      return stopped ? 'stopped' : 'running';
    },

    async stopInstanceIfDetached(input: InstanceTarget): Promise<StopInstanceOutcome> {
      const startedAtMs = Date.now();
      const backend = backends.resolve(input.provider);
      const readStopped = backend.provider.isInstanceStopped?.bind(backend.provider);
      // A stop call may have been sent already: by an earlier attempt (its worker died, its answer was lost) or an
      // earlier try of this one. Then an instance the backend reads stopped, with nothing attached, is not stopped
      // again: one stop call per stop, where the backend can tell. A retried attempt asks whatever the one before it
      // did: an instance someone else stopped meanwhile, with nothing attached, is as stopped.
      let maybeSent = Context.current().info.attempt > 1;
      return heartbeating(
        () => undefined,
        // The last word before stopping: whatever the request named, the backend is asked what is attached.
        // A failed stop call is tried again only after asking again: a volume may have been attached while
        // the call failed, or during the throttling pause after it.
        () =>
          briefly(async () => {
            const attached = await listOnce(backend, input.instanceId);
            if (attached.length > 0) return { stopped: false, instanceId: input.instanceId, attached };
            if (
              maybeSent &&
              readStopped &&
              (await backend.call('isInstanceStopped', (o) => readStopped(input.instanceId, o)))
            ) {
              return { stopped: true, instanceId: input.instanceId };
            }
            // A stop under way finishes: a workflow cancel or an escalation does not abort it (an instance left
            // `stopping` by an aborted wait would stop anyway, after the stop reported it running). Its polls
            // for `stopped` wait for routine tokens, behind other stops' forces and requests.
            const underWay = stopUnderWaySignal(Context.current(), startedAtMs);
            try {
              await backend.call('stopInstance', async (o) => {
                // Not under way yet: a cancel that came first means no stop call at all.
                underWay.signal.throwIfAborted();
                try {
                  return await backend.provider.stopInstance(input.instanceId, {
                    ...o,
                    signal: underWay.signal,
                    nextRequest: () => backend.budget.take(underWay.signal, 1, 'routine'),
                  });
                } catch (err) {
                  // Sent, whatever came back, unless the backend refused it (throttled): then a retry need not ask.
                  if (!refusedRequest(err)) maybeSent = true;
                  throw err;
                }
              });
            } finally {
              underWay.release();
            }
            return { stopped: true, instanceId: input.instanceId };
          }),
      );
    },
  } satisfies StopActivities;

  /**
   * The activities of stops started before the reconciler patch (workflows/legacy/),
   * kept so they can finish: the graceful request-and-wait in one, and the unchecked stop.
   */
  const legacy = {
    async detachVolume(target: VolumeTarget): Promise<{ attempts: number; checks: number; rerequests: number }> {
      const backend = backends.resolve(target.provider);
      await heartbeating(
        () => undefined,
        () => backend.call('detachVolume', (o) => backend.provider.detachVolume(target.instanceId, target.volume, o)),
      );
      const { checks } = await pollUntilDetached(backend, target);
      return { attempts: Context.current().info.attempt, checks, rerequests: 0 };
    },
    async stopInstance(input: InstanceTarget): Promise<{ instanceId: string; state: 'stopped' }> {
      const backend = backends.resolve(input.provider);
      await heartbeating(
        () => undefined,
        () => backend.call('stopInstance', (o) => backend.provider.stopInstance(input.instanceId, o)),
      );
      return { instanceId: input.instanceId, state: 'stopped' };
    },
  };

  return { ...activities, ...legacy };
}

export type StopflowActivities = ReturnType<typeof createActivities>;
