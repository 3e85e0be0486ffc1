/**
 * Fetches again a history page that live updates may have made stale, coalesced per page, so that
 * a stream of updates that cannot patch it (conflated by `maxRate`, so each skips versions; a new
 * counter's page reaching back to version 1, see history.ts) costs a bounded number of
 * `getHistory` requests, whatever its rate:
 * - one fetch of a page at a time. TanStack's `invalidateQueries` cancels a fetch in flight and
 *   starts another by default (`cancelRefetch`), and a cancelled request still reaches the
 *   server (the query function takes no signal): one request per update, many in flight.
 * - an update that comes while a fetch is on its way (ours, or one TanStack started: a mount, a
 *   focus) asks for one more after it, since its answer may have left the server before that
 *   update; any number of them ask for that one only.
 * - fetches of a page start at least `HISTORY_REFRESH_INTERVAL_MS` apart.
 * The first request after a quiet spell is fetched at once, and the last one of a burst is always
 * followed by a fetch that starts after it, so once updates stop the page is the server's.
 */

import { hashKey, type QueryClient } from "@tanstack/react-query";
import type { HistoryQueryKey } from "./history.js";

/**
 * The least time between two fetches of one history page. Without it, a server answering in a
 * few ms is asked once per update, so up to `maxRate` times a second per card (20 on the page,
 * times 20 cards). A page of history is read by people and drawn as a chart, and the counter's
 * value is live on its own (patched from every update), so showing the newest entries up to a
 * quarter of a second late costs nothing visible, and bounds a card to 4 requests a second.
 */
export const HISTORY_REFRESH_INTERVAL_MS = 250;

/** One page being refreshed: whether another fetch is wanted after the current one. */
interface Refresh {
  wanted: boolean;
}

const refreshing = new WeakMap<QueryClient, Map<string, Refresh>>();

/**
 * Marks history page `key` stale and fetches it again if it is shown, coalesced with the fetches
 * of that page already on their way or due.
 */
export function refreshHistoryPage(queryClient: QueryClient, key: HistoryQueryKey): void {
  const pages = refreshing.get(queryClient) ?? new Map<string, Refresh>();
  refreshing.set(queryClient, pages);
  const hash = hashKey(key);
  const running = pages.get(hash);
  if (running !== undefined) {
    running.wanted = true;
    return;
  }
  const refresh: Refresh = { wanted: true };
  pages.set(hash, refresh);
  void fetchWhileWanted(queryClient, key, refresh).finally(() => pages.delete(hash));
}

/**
 * Fetches `key` while `refresh` wants it, one fetch at a time and starts at least the interval
 * apart; ends an interval after the last fetch started, so the next request after a quiet spell
 * is fetched at once.
 */
async function fetchWhileWanted(queryClient: QueryClient, key: HistoryQueryKey, refresh: Refresh) {
  while (refresh.wanted) {
    refresh.wanted = false;
    const started = Date.now();
    const query = queryClient.getQueryCache().find({ queryKey: key, exact: true });
    // A fetch already on its way is joined: its answer may predate the update.
    if (query?.state.fetchStatus === "fetching") refresh.wanted = true;
    // Marked stale whether shown or not (a page shown later is fetched then); a shown one is
    // fetched, or its fetch in flight is kept. It never rejects (`throwOnError` is false).
    await queryClient.invalidateQueries({ queryKey: key, exact: true }, { cancelRefetch: false });
    const rest = started + HISTORY_REFRESH_INTERVAL_MS - Date.now();
    if (rest > 0) await new Promise((resolve) => setTimeout(resolve, rest));
  }
}
