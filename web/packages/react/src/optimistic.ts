/**
 * Optimistic values: a counter's `getValue` entry shows its committed value with the writes this
 * query client made and that are not settled yet drawn on top, so that a click shows at once,
 * even offline, and every write counts once.
 *
 * Until a write is answered, nothing tells whether a committed state that arrives holds it: the
 * server announces a write to watchers before it answers the writer, and answers to pipelined
 * writes may come in any order. So the writes pending on one counter form a group, drawn on its
 * `base`: the committed state known when the group's first write was made, which none of the
 * group's writes can be in (each was made after it arrived), with every write of the group on
 * top, answered or not. Committed states that arrive while the group is pending (live updates,
 * answers, fetches) are only kept as `latest`; when the group's last write settles, the entry
 * becomes `latest`, which holds each answered write exactly once. A write that is refused (or given up) leaves the group at once: its change is
 * rolled back, and if it was applied after all, `latest` shows it.
 *
 * What remains: while a group is pending, changes made elsewhere do not show in the value (the
 * metadata and history entries, which hold committed state only, do show them), and the version
 * shown is the base's. They show when the group drains, usually one round trip after the last
 * click. No window counts a write twice; without a known base (the value was never fetched nor
 * seen) there is nothing to draw on, and committed states show as they come.
 */

import type { ValueAnswer } from "@tally/client";
import { hashKey, type QueryClient, type QueryKey } from "@tanstack/react-query";

/** A write as it changes the value. */
export type Operation =
  | { type: "increment" | "decrement"; amount: number }
  | { type: "setValue"; value: number }
  | { type: "reset" };

interface Group {
  base: ValueAnswer | undefined;
  latest: ValueAnswer | undefined;
  /**
   * What is drawn on `base`, in the order made (a setValue or reset hides the writes before
   * it): the unsettled writes and the answered ones, which `base` does not hold either.
   */
  writes: Set<Operation>;
  /** How many of `writes` are not settled yet. */
  unsettled: number;
}

const groupsByClient = new WeakMap<QueryClient, Map<string, Group>>();

function groupsOf(queryClient: QueryClient): Map<string, Group> {
  let groups = groupsByClient.get(queryClient);
  if (groups === undefined) {
    groups = new Map();
    groupsByClient.set(queryClient, groups);
  }
  return groups;
}

/** `state` when it is newer than `old` by version (or always, with `replace`). */
function newer(old: ValueAnswer | undefined, state: ValueAnswer, replace: boolean): ValueAnswer {
  if (old !== undefined && !replace && old.version >= state.version) return old;
  return { value: state.value, version: state.version };
}

function applyOperation(value: number, operation: Operation): number {
  switch (operation.type) {
    case "increment":
      return value + operation.amount;
    case "decrement":
      return value - operation.amount;
    case "setValue":
      return operation.value;
    case "reset":
      return 0;
  }
}

/** Writes what a group shows into the cache, and returns it. */
function show(queryClient: QueryClient, key: QueryKey, group: Group): ValueAnswer | undefined {
  const { base } = group;
  const shown =
    base === undefined
      ? group.latest
      : { value: [...group.writes].reduce(applyOperation, base.value), version: base.version };
  if (shown !== undefined) queryClient.setQueryData<ValueAnswer>(key, shown);
  return shown;
}

/** What `commitValue` did. */
export interface Committed {
  /** The committed state known before (undefined when none was). */
  previous: ValueAnswer | undefined;
  /** The committed state known now: `previous` or `state`, whichever is newer. */
  committed: ValueAnswer;
  /** What the entry shows now: `committed` with the pending writes on top. */
  shown: ValueAnswer;
}

/**
 * Records a committed state of the counter whose `getValue` entry is `key`: kept when newer by
 * version than the one known (or always, with `replace`: a resync), and shown under the pending
 * writes, if any.
 */
export function commitValue(
  queryClient: QueryClient,
  key: QueryKey,
  state: ValueAnswer,
  replace = false,
): Committed {
  const group = groupsOf(queryClient).get(hashKey(key));
  if (group === undefined) {
    const previous = queryClient.getQueryData<ValueAnswer>(key);
    const committed = newer(previous, state, replace);
    queryClient.setQueryData<ValueAnswer>(key, committed);
    return { previous, committed, shown: committed };
  }
  const previous = group.latest;
  const committed = newer(previous, state, replace);
  group.latest = committed;
  return { previous, committed, shown: show(queryClient, key, group) ?? committed };
}

/**
 * Shows `operation` on the `getValue` entry `key` until its group drains. Call the returned
 * `settle` once: with `answered` true after the write's answer was committed (`commitValue`), or
 * false when it failed, which takes the operation off at once; later calls do nothing.
 */
export function beginWrite(
  queryClient: QueryClient,
  key: QueryKey,
  operation: Operation,
): (answered: boolean) => void {
  const groups = groupsOf(queryClient);
  const id = hashKey(key);
  let group = groups.get(id);
  if (group === undefined) {
    const known = queryClient.getQueryData<ValueAnswer>(key);
    group = { base: known, latest: known, writes: new Set(), unsettled: 0 };
    groups.set(id, group);
  }
  const pending = group;
  // Its own object, so that two equal operations are two writes.
  const write = { ...operation };
  pending.writes.add(write);
  pending.unsettled += 1;
  show(queryClient, key, pending);
  let settled = false;
  return (answered) => {
    if (settled) return;
    settled = true;
    if (!answered) pending.writes.delete(write);
    pending.unsettled -= 1;
    if (pending.unsettled > 0) {
      show(queryClient, key, pending);
      return;
    }
    groups.delete(id);
    if (pending.latest !== undefined) {
      queryClient.setQueryData<ValueAnswer>(key, pending.latest);
    }
  };
}
