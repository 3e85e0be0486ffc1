// History pages of counter "likes", incremented by 1 from 0 at version 1 (so value = version), as
// the server would answer them.
import type { Entry, HistoryPage, Update } from "@tally/client";
import { update } from "../../../test-support/fixtures.js";
import { entryOf } from "../src/history.js";

/** The increment that makes version `version`, with `by` when given (an admin's view). */
export function increment(version: number, by?: string): Update {
  return { ...update("likes", version - 1, version, version), ...(by ? { by } : {}) };
}

/** The entries `newest` down to `oldest`. */
export function entries(newest: number, oldest: number, by?: string): Entry[] {
  const list: Entry[] = [];
  for (let version = newest; version >= oldest; version -= 1)
    list.push(entryOf(increment(version, by)));
  return list;
}

/** A page of the entries `newest` down to `oldest`, with `next` when given. */
export function pageOf(newest: number, oldest: number, next?: number, by?: string): HistoryPage {
  return { entries: entries(newest, oldest, by), ...(next === undefined ? {} : { next }) };
}
