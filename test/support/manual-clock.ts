/** A hand-moved clock for the call budget (activities/call-budget.ts): tests check order and token counts, not timings. */
import type { BudgetClock } from '../../activities/call-budget';

/** Lets every pending promise chain run (the budget's queue is a chain of them). */
export const settle = () => new Promise((resolve) => setImmediate(resolve));

/** A clock the test moves by hand: sleeps resolve when the test advances past them. */
export class ManualClock implements BudgetClock {
  private t = 0;
  private sleepers: { until: number; resolve: () => void }[] = [];
  now(): number {
    return this.t;
  }
  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.sleepers.push({ until: this.t + ms, resolve }));
  }
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    await settle();
    for (;;) {
      const next = this.sleepers.filter((s) => s.until <= end).sort((a, b) => a.until - b.until)[0];
      if (!next) break;
      this.t = Math.max(this.t, next.until);
      this.sleepers = this.sleepers.filter((s) => s !== next);
      next.resolve();
      // Let the woken caller run (and maybe sleep again) before the clock moves on.
      await settle();
    }
    this.t = end;
  }
}
