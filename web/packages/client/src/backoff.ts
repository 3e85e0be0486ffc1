/**
 * Reconnect delays: exponential growth with full jitter, the same rule as the Rust client's.
 */

/** How reconnect delays grow. All times in milliseconds. */
export interface BackoffOptions {
  /** The ceiling of the first delay; the seed's 3 s by default. */
  min?: number;
  /** The largest ceiling; 60 s by default. */
  max?: number;
  /** How much the ceiling grows per failed attempt; 2 by default. */
  factor?: number;
}

/** Delays between reconnect attempts. */
export class Backoff {
  readonly min: number;
  readonly max: number;
  readonly factor: number;
  readonly #random: () => number;

  constructor(options: BackoffOptions = {}, random: () => number = Math.random) {
    this.min = Math.max(0, options.min ?? 3_000);
    this.max = Math.max(this.min, options.max ?? 60_000);
    this.factor = Math.max(1, options.factor ?? 2);
    this.#random = random;
  }

  /** The ceiling for attempt `attempt` (0 for the first retry): `min(max, min * factor^attempt)`. */
  ceiling(attempt: number): number {
    const growth = this.factor ** Math.min(Math.max(0, attempt), 64);
    return Math.min(this.max, this.min * growth);
  }

  /**
   * A random delay within `0 ..= ceiling(attempt)` ("full jitter"), so that many clients cut off
   * at once, by a server restart say, do not all come back at the same moment.
   */
  delay(attempt: number): number {
    return Math.round(this.ceiling(attempt) * this.#random());
  }
}
