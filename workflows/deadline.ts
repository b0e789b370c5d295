/**
 * The maxStopDuration deadline: one re-armable timer. `set` moves it (or turns
 * it off); `expired` waits with one timer per arming and answers true only when
 * the deadline *in force* has passed, so an update that lands in the same
 * activation as the old timer's firing wins over it (docs/contract.md).
 */
import { condition } from '@temporalio/workflow';

export class Deadline {
  private version = 0;

  constructor(
    private readonly startedAtMs: number,
    private durationMs: number | null,
  ) {}

  /** The maxStopDuration in force, `null` for "off". */
  get duration(): number | null {
    return this.durationMs;
  }

  /** When it falls due, in epoch ms; `null` when off. */
  get atMs(): number | null {
    return this.durationMs === null ? null : this.startedAtMs + this.durationMs;
  }

  set(durationMs: number | null): void {
    this.durationMs = durationMs;
    this.version++;
  }

  passed(): boolean {
    const at = this.atMs;
    return at !== null && Date.now() >= at;
  }

  /**
   * Resolves true once the deadline in force has passed, false as soon as `done()` holds.
   * Waiting adds one timer to history per arming, never one per check.
   */
  async expired(done: () => boolean, summary: (atMs: number) => string): Promise<boolean> {
    for (;;) {
      if (done()) return false;
      if (this.passed()) return true;
      const armed = this.version;
      const woken = () => done() || this.version !== armed;
      const at = this.atMs;
      if (at === null) await condition(woken);
      else await condition(woken, at - Date.now(), { summary: summary(at) });
      // Whatever woke us (the timer, an update, the end), the loop decides against the deadline in force.
    }
  }
}
