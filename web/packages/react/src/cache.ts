/**
 * Writes what the server announces into the TanStack Query cache, so that queries show live values
 * without refetching: the value and metadata are set only when newer by version (an answer or an
 * update that arrives late never moves them back), and history pages, which cannot be patched
 * exactly, are invalidated when they may lack an entry.
 */

import type { Metadata, SnapshotMessage, Update, ValueAnswer } from "@tally/client";
import type { QueryClient } from "@tanstack/react-query";
import type { CounterKeys } from "./keys.js";

/** Applies an Update (a mutation's answer or a live update) to the cache. */
export function applyUpdate(queryClient: QueryClient, keys: CounterKeys, update: Update): void {
  write(queryClient, keys, update, false);
}

/** Applies a snapshot; a `resync` snapshot replaces the cached state even if it is older. */
export function applySnapshot(
  queryClient: QueryClient,
  keys: CounterKeys,
  snapshot: SnapshotMessage,
): void {
  write(queryClient, keys, snapshot, snapshot.resync === true);
}

/**
 * Sets the value and metadata of `state` when newer by version (or always, with `replace`), and
 * invalidates the history pages when they may now lack an entry: after an Update that was written
 * (it is itself a new entry), or when a snapshot replaced a different cached state. A snapshot
 * into an empty cache tells nothing the pages do not show, so it leaves them alone.
 */
function write(
  queryClient: QueryClient,
  keys: CounterKeys,
  state: Update | SnapshotMessage,
  replace: boolean,
): void {
  const { value, metadata } = state;
  const name = metadata.name;
  const version = metadata.operationCount;
  const isUpdate = state.type !== "snapshot";
  let changed = false;
  queryClient.setQueryData<ValueAnswer>(keys.value(name), (old) => {
    if (old !== undefined && !replace && old.version >= version) return old;
    if (old === undefined ? isUpdate : old.version !== version || old.value !== value) {
      changed = true;
    }
    return { value, version };
  });
  queryClient.setQueryData<Metadata>(keys.metadata(name), (old) => {
    if (old !== undefined && !replace && old.operationCount >= version) return old;
    if (old === undefined ? isUpdate : old.operationCount !== version) changed = true;
    return metadata;
  });
  if (changed) void queryClient.invalidateQueries({ queryKey: keys.histories(name) });
}
