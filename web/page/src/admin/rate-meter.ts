/**
 * A counter's operations a minute as the admin page draws them: the list's `opsLastMinute` to
 * start with, then the versions its live updates carry (a version counts every operation, so
 * conflated updates that jump versions still count each one).
 *
 * The list says how many operations the last minute held, not when: they are taken as spread
 * evenly over that minute, so they leave the window over the next minute, while the operations
 * seen live leave it exactly a minute after they came.
 */

/** The window the meter counts over (ms), as the server's `opsLastMinute`. */
export const WINDOW_MS = 60_000;

export class RateMeter {
  /** The list's count and when it was read. */
  readonly #baseline: number;
  readonly #baselineAt: number;
  /** The last version seen. */
  #version: number;
  /** Operations seen live: when, and how many. */
  #seen: { at: number; ops: number }[] = [];
  /** The samples drawn, oldest first (at most `#max`). */
  #points: number[] = [];
  readonly #max: number;

  constructor(opsLastMinute: number, version: number, now: number, max = 30) {
    this.#baseline = opsLastMinute;
    this.#baselineAt = now;
    this.#version = version;
    this.#max = max;
    this.#points = [opsLastMinute];
  }

  /** The counter is at `version` at time `now`. */
  observe(version: number, now: number): void {
    // A version below the last is a counter started afresh (deleted, then written again).
    const ops = version >= this.#version ? version - this.#version : version;
    this.#version = version;
    if (ops > 0) this.#seen.push({ at: now, ops });
  }

  /** Operations in the minute before `now`. */
  opsLastMinute(now: number): number {
    this.#seen = this.#seen.filter((seen) => seen.at > now - WINDOW_MS);
    const leftOfBaseline = Math.max(0, 1 - (now - this.#baselineAt) / WINDOW_MS);
    const live = this.#seen.reduce((sum, seen) => sum + seen.ops, 0);
    return Math.round(this.#baseline * leftOfBaseline) + live;
  }

  /** Takes a sample at `now` for the sparkline. */
  sample(now: number): void {
    this.#points = [...this.#points, this.opsLastMinute(now)].slice(-this.#max);
  }

  /** The samples, oldest first. */
  get points(): readonly number[] {
    return this.#points;
  }
}
