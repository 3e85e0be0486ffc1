/**
 * Writes what the server announces into the TanStack Query cache, so that queries show live values
 * without refetching: the value and metadata are set only when newer by version (an answer or an
 * update that arrives late never moves them back), and history pages, which cannot be patched
 * exactly, are invalidated.
 */

import type { Metadata, SnapshotMessage, Update, ValueAnswer } from "@tally/client";
import type { QueryClient } from "@tanstack/react-query";
import type { CounterKeys } from "./keys.js";

/** Applies an Update (a mutation's answer or a live update) to the cache. */
export function applyUpdate(queryClient: QueryClient, keys: CounterKeys, update: Update): void {
  const name = update.metadata.name;
  const changed = setIfNewer(queryClient, keys, name, update.value, update.metadata, false);
  if (changed) void queryClient.invalidateQueries({ queryKey: keys.histories(name) });
}

/** Applies a snapshot; a `resync` snapshot replaces the cached state even if it is older. */
export function applySnapshot(
  queryClient: QueryClient,
  keys: CounterKeys,
  snapshot: SnapshotMessage,
): void {
  const name = snapshot.metadata.name;
  const replace = snapshot.resync === true;
  const changed = setIfNewer(queryClient, keys, name, snapshot.value, snapshot.metadata, replace);
  if (changed) void queryClient.invalidateQueries({ queryKey: keys.histories(name) });
}

function setIfNewer(
  queryClient: QueryClient,
  keys: CounterKeys,
  name: string,
  value: number,
  metadata: Metadata,
  replace: boolean,
): boolean {
  const version = metadata.operationCount;
  let changed = false;
  queryClient.setQueryData<ValueAnswer>(keys.value(name), (old) => {
    if (old !== undefined && !replace && old.version >= version) return old;
    if (old === undefined || old.version !== version || old.value !== value) changed = true;
    return { value, version };
  });
  queryClient.setQueryData<Metadata>(keys.metadata(name), (old) => {
    if (old !== undefined && !replace && old.operationCount >= version) return old;
    if (old === undefined || old.operationCount !== version) changed = true;
    return metadata;
  });
  return changed;
}
