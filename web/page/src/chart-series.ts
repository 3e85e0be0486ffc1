/**
 * The points a card's chart draws: the counter's value at each version it saw, from the head
 * history page and from every update (live, replayed or a write's own answer), merged by version
 * so that one change seen twice (on the socket and in the next history page) is one point.
 *
 * With conflation the versions of live updates jump; the missing ones come in with the next
 * history page, or stay missing (a chart of the latest states is still the right line).
 */

import type { Entry, Update } from "@tally/client";

/** One point: when the version was committed (seconds since the epoch, uPlot's time unit). */
export interface Point {
  version: number;
  time: number;
  value: number;
}

/** What the chart is given to draw: uPlot's columns, times then values. */
export type Columns = [times: number[], values: number[]];

export class ValueSeries {
  readonly #max: number;
  /** Ascending by version, at most `#max`. */
  #points: Point[] = [];
  readonly #listeners = new Set<() => void>();

  /** Keeps the newest `max` points. */
  constructor(max: number) {
    this.#max = max;
  }

  /** The entries of a history page (newest first, as the server sends them). */
  addEntries(entries: readonly Entry[]): void {
    this.#add(entries.map(pointOf));
  }

  /** One update, or a write's answer. */
  addUpdate(update: Update): void {
    this.#add([pointOf(update)]);
  }

  /** The points, oldest first. */
  get points(): readonly Point[] {
    return this.#points;
  }

  /**
   * The columns to draw at time `now` (seconds): the points, and the last value held until now,
   * so that a single change, or the last one long ago, still draws a line up to the present.
   */
  columns(now: number): Columns {
    const times = this.#points.map((p) => p.time);
    const values = this.#points.map((p) => p.value);
    const last = this.#points.at(-1);
    if (last !== undefined) {
      times.push(Math.max(now, last.time));
      values.push(last.value);
    }
    return [times, values];
  }

  /** Calls `listener` after each change of the points; returns the way to stop. */
  subscribe(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #add(points: Point[]): void {
    const known = new Set(this.#points.map((p) => p.version));
    const fresh = points.filter((p) => !known.has(p.version));
    if (fresh.length === 0) return;
    const merged = [...this.#points, ...fresh].sort((a, b) => a.version - b.version);
    // A version older than all kept points that would be cut at once changes nothing.
    const kept = merged.slice(-this.#max);
    if (kept.length === this.#points.length && kept.every((p, i) => p === this.#points[i])) return;
    this.#points = kept;
    for (const listener of this.#listeners) listener();
  }
}

function pointOf(change: Entry | Update): Point {
  return {
    version: change.version,
    time: Date.parse(change.timestamp) / 1000,
    value: change.value,
  };
}
