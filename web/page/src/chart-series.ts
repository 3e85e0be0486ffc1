/**
 * The points a card's chart draws: the counter's value at each version it saw, from the head
 * history page and from every update (live, replayed or a write's own answer), merged by version
 * so that one change seen twice (on the socket and in the next history page) is one point.
 *
 * With conflation the versions of live updates jump; the missing ones come in with the next
 * history page, or stay missing (a chart of the latest states is still the right line).
 */

import type { Entry, Update } from "@tally/client";

/** One change: when it was committed (seconds since the epoch, uPlot's time unit), from what to what. */
export interface Point {
  version: number;
  time: number;
  previousValue: number;
  value: number;
}

/** The shortest time the chart spans (seconds), so that a burst of changes is not drawn over milliseconds. */
const MIN_SPAN = 10;

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

  /** Forgets every point: the counter was deleted, and its next life starts at version 1. */
  clear(): void {
    if (this.#points.length === 0) return;
    this.#points = [];
    for (const listener of this.#listeners) listener();
  }

  /** The points, oldest first. */
  get points(): readonly Point[] {
    return this.#points;
  }

  /**
   * The columns to draw at time `now` (seconds), from a little before the oldest change to now:
   * the value the oldest change started from, each change, and the last value held until now
   * (so that a single change, or the last one long ago, still draws a line to the present).
   */
  columns(now: number): Columns {
    const first = this.#points[0];
    const last = this.#points.at(-1);
    if (first === undefined || last === undefined) return [[], []];
    const end = Math.max(now, last.time);
    const lead = Math.max(1, (end - first.time) / 10);
    const start = Math.min(first.time - lead, end - MIN_SPAN);
    return [
      [start, ...this.#points.map((p) => p.time), end],
      [first.previousValue, ...this.#points.map((p) => p.value), last.value],
    ];
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
    previousValue: change.previousValue,
    value: change.value,
  };
}
