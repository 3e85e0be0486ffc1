/**
 * Writes what the server announces into the TanStack Query cache, so that queries show live values
 * without refetching: the value and metadata are set only when newer by version (an answer or an
 * update that arrives late never moves them back; the value shows pending writes on top, see
 * optimistic.ts), the newest history page is patched with each new entry where that is exact
 * (see history.ts), and other pages are fetched again when they may lack an entry (at a bounded
 * rate, see history-refresh.ts).
 */

import type { HistoryPage, Metadata, SnapshotMessage, Update } from "@tally/client";
import type { QueryClient } from "@tanstack/react-query";
import { headPageAfter, isHeadPage, type HistoryQueryKey } from "./history.js";
import { refreshHistoryPage } from "./history-refresh.js";
import type { CounterKeys } from "./keys.js";
import { commitValue } from "./optimistic.js";

/** Applies an Update (a mutation's answer or a live update) to the cache. */
export function applyUpdate(queryClient: QueryClient, keys: CounterKeys, update: Update): void {
  const changed = write(queryClient, keys, update, false);
  for (const { key, page } of historyPages(queryClient, keys, update.metadata.name)) {
    // A page not fetched yet (its first fetch may be on its way) cannot be patched.
    if (!isHeadPage(key) || page === undefined) {
      if (changed) refreshHistoryPage(queryClient, key);
    } else {
      const patched = headPageAfter(page, update, key);
      if (patched === null) refreshHistoryPage(queryClient, key);
      else if (patched !== page) queryClient.setQueryData(key, patched);
    }
  }
}

/** Applies a snapshot; a `resync` snapshot replaces the cached state even if it is older. */
export function applySnapshot(
  queryClient: QueryClient,
  keys: CounterKeys,
  snapshot: SnapshotMessage,
): void {
  if (!write(queryClient, keys, snapshot, snapshot.resync === true)) return;
  // A snapshot tells of no entry, so any page may now lack some.
  for (const { key } of historyPages(queryClient, keys, snapshot.metadata.name)) {
    refreshHistoryPage(queryClient, key);
  }
}

/**
 * Sets the value and metadata of `state` when newer by version (or always, with `replace`), and
 * tells whether the history pages may now lack an entry: after an Update that was written (it
 * is itself a new entry), or when a snapshot replaced a different known state. A snapshot into
 * an empty cache tells nothing the pages do not show.
 */
function write(
  queryClient: QueryClient,
  keys: CounterKeys,
  state: Update | SnapshotMessage,
  replace: boolean,
): boolean {
  const { value, metadata } = state;
  const name = metadata.name;
  const version = metadata.operationCount;
  const isUpdate = state.type !== "snapshot";
  const { previous, committed } = commitValue(
    queryClient,
    keys.value(name),
    { value, version },
    replace,
  );
  let changed =
    committed !== previous &&
    (previous === undefined ? isUpdate : previous.version !== version || previous.value !== value);
  queryClient.setQueryData<Metadata>(keys.metadata(name), (old) => {
    if (old !== undefined && !replace && old.operationCount >= version) return old;
    if (old === undefined ? isUpdate : old.operationCount !== version) changed = true;
    return metadata;
  });
  return changed;
}

/** The cached history pages of counter `name`. */
function historyPages(queryClient: QueryClient, keys: CounterKeys, name: string) {
  return queryClient
    .getQueryCache()
    .findAll({ queryKey: keys.histories(name) })
    .map((query) => ({
      key: query.queryKey as HistoryQueryKey,
      page: query.state.data as HistoryPage | undefined,
    }));
}
