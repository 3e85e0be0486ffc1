/**
 * Patches the newest history page (the one without `before`) with the entry of a new Update,
 * where the result is exactly the page the server would answer now, so that a burst of updates
 * costs no refetch.
 *
 * The server (PROTOCOL.md §3.3) answers the newest `limit` entries, newest first, with `next`, the
 * version of the oldest on the page, while older entries remain. It keeps the most recent
 * `--history-limit` entries of each counter, and versions have no gaps. So, for the Update whose
 * version is the page's newest + 1:
 * - a page with `next` gets the entry in front and loses its oldest, and `next` becomes the
 *   version of its new oldest: older entries still remain, since a write never lowers how many
 *   are kept;
 * - a page without `next` whose oldest entry is above version 1 shows a trimmed history whole,
 *   so it holds exactly `--history-limit` entries, and the write trims its oldest;
 * - an empty page (a counter never written) gets the entry alone;
 * - a page without `next` that reaches back to version 1 does not tell whether this write trims
 *   version 1 (the history limit may equal its length), so it is refetched. That happens only
 *   while a counter has at most `limit` entries.
 * An Update the page already holds (by version) leaves it alone; any other (an entry missed) makes
 * it refetched. `by` is shown only to principals with `admin` on the counter, so a page whose
 * entries disagree with the Update about `by` was fetched with other rights, and is refetched.
 * This assumes the server's history limit did not change since the page was fetched (a restart
 * with another `--history-limit` makes the next resume resync, which refetches every page).
 */

import type { Entry, HistoryPage, Update } from "@tally/client";
import type { CounterKeys } from "./keys.js";

/** The server's page size when a query gives no `limit` (PROTOCOL.md §3.3). */
export const DEFAULT_HISTORY_LIMIT = 50;

/** The query key of one history page. */
export type HistoryQueryKey = ReturnType<CounterKeys["history"]>;

function paramsOf(key: HistoryQueryKey) {
  return key[key.length - 1] as HistoryQueryKey[6];
}

/** Whether `key` names the newest page of a counter's history (no `before`). */
export function isHeadPage(key: HistoryQueryKey): boolean {
  return paramsOf(key).before === undefined;
}

/** The version of a page's newest entry (0 for an empty page: a counter never written). */
export function newestVersion(page: HistoryPage): number {
  return page.entries[0]?.version ?? 0;
}

/** The history entry of an Update, as `counter.getHistory` would answer it. */
export function entryOf(update: Update): Entry {
  const { version, type, value, previousValue, timestamp, by } = update;
  const amount =
    type === "increment"
      ? value - previousValue
      : type === "decrement"
        ? previousValue - value
        : undefined;
  // In the server's field order.
  return {
    version,
    type,
    ...(amount === undefined ? {} : { amount }),
    previousValue,
    value,
    timestamp,
    ...(by === undefined ? {} : { by }),
  };
}

/**
 * The head page `page` (of query `key`) once `update` is committed: `page` itself when it already
 * holds it, the patched page when that is exact, or null when it must be fetched again.
 */
export function headPageAfter(
  page: HistoryPage,
  update: Update,
  key: HistoryQueryKey,
): HistoryPage | null {
  const newest = newestVersion(page);
  if (update.version <= newest) return page;
  if (update.version !== newest + 1) return null;
  const { entries } = page;
  const oldest = entries[entries.length - 1];
  if (
    oldest !== undefined &&
    entries.some((e) => e.by !== undefined) !== (update.by !== undefined)
  ) {
    return null;
  }
  const entry = entryOf(update);
  if (oldest === undefined) return { entries: [entry] };
  if (page.next !== undefined) {
    const limit = paramsOf(key).limit ?? DEFAULT_HISTORY_LIMIT;
    const kept = [entry, ...entries].slice(0, limit);
    return { entries: kept, next: (kept[kept.length - 1] as Entry).version };
  }
  if (oldest.version > 1) return { entries: [entry, ...entries.slice(0, -1)] };
  return null;
}
