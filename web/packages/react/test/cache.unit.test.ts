// The TanStack Query integration: what a live update or snapshot writes into the cache. Value and
// metadata move only forward by version (a late answer never moves them back), a resync snapshot
// replaces them, and history pages are invalidated rather than refetched at once. Keys include the
// principal.
import type { Metadata, ValueAnswer } from "@tally/client";
import { TallyClient } from "@tally/client";
import { QueryClient } from "@tanstack/react-query";
import { describe, expect, it } from "vitest";
import { metadata, snapshot, update } from "../../../test-support/fixtures.js";
import { unsignedToken } from "../../../test-support/tokens.js";
import { applySnapshot, applyUpdate } from "../src/cache.js";
import { counterKeys } from "../src/keys.js";

const keys = counterKeys(new TallyClient({ baseUrl: "http://tally.test", fetch: fetch }));

function cache() {
  const queryClient = new QueryClient();
  const history = keys.history("likes", { limit: 10 });
  queryClient.setQueryData(history, { entries: [] });
  return {
    queryClient,
    value: () => queryClient.getQueryData<ValueAnswer>(keys.value("likes")),
    metadata: () => queryClient.getQueryData<Metadata>(keys.metadata("likes")),
    historyInvalidated: () => queryClient.getQueryState(history)?.isInvalidated ?? false,
  };
}

describe("applyUpdate", () => {
  it("writes getValue and getMetadata and invalidates getHistory", () => {
    const c = cache();
    applyUpdate(c.queryClient, keys, update("likes", 4, 5, 5));
    expect(c.value()).toEqual({ value: 5, version: 5 });
    expect(c.metadata()).toEqual(metadata("likes", 5, 5));
    expect(c.historyInvalidated()).toBe(true);
  });

  it("never moves the cache back to an older version", () => {
    const c = cache();
    applyUpdate(c.queryClient, keys, update("likes", 6, 7, 7));
    c.queryClient.setQueryData(keys.history("likes", { limit: 10 }), { entries: [] });
    applyUpdate(c.queryClient, keys, update("likes", 5, 6, 6));
    applyUpdate(c.queryClient, keys, update("likes", 6, 7, 7));
    expect(c.value()).toEqual({ value: 7, version: 7 });
    expect(c.metadata()?.operationCount).toBe(7);
    expect(c.historyInvalidated()).toBe(false);
  });

  it("leaves other counters alone", () => {
    const c = cache();
    const other = keys.value("dislikes");
    c.queryClient.setQueryData(other, { value: 3, version: 3 });
    applyUpdate(c.queryClient, keys, update("likes", 8, 9, 9));
    expect(c.queryClient.getQueryData(other)).toEqual({ value: 3, version: 3 });
  });
});

describe("applySnapshot", () => {
  it("fills an empty cache, and ignores an older snapshot", () => {
    const c = cache();
    applySnapshot(c.queryClient, keys, snapshot("likes", 4, 4));
    expect(c.value()).toEqual({ value: 4, version: 4 });
    applySnapshot(c.queryClient, keys, snapshot("likes", 2, 2));
    expect(c.value()).toEqual({ value: 4, version: 4 });
  });

  it("replaces the cache on resync, even with an older version", () => {
    const c = cache();
    applyUpdate(c.queryClient, keys, update("likes", 49, 50, 50));
    applySnapshot(c.queryClient, keys, snapshot("likes", 3, 3, true));
    expect(c.value()).toEqual({ value: 3, version: 3 });
    expect(c.metadata()?.operationCount).toBe(3);
  });

  it("invalidates getHistory only when it replaces a cached state, not for a first snapshot", () => {
    const c = cache();
    applySnapshot(c.queryClient, keys, snapshot("likes", 4, 4));
    expect(c.historyInvalidated()).toBe(false);
    applySnapshot(c.queryClient, keys, snapshot("likes", 6, 6));
    expect(c.historyInvalidated()).toBe(true);
  });
});

describe("counterKeys", () => {
  const server = "http://tally.test";
  const tokenOf = (sub: string) => unsignedToken({ sub, exp: 4_000_000_000 });
  const as = (sub: string) =>
    new TallyClient({ baseUrl: server, fetch, getToken: () => tokenOf(sub) });

  it("include the principal, so two identities never share cached data", async () => {
    const [alice, bob] = [as("alice"), as("bob")];
    await Promise.all([alice.credentials.token(), bob.credentials.token()]);
    const [aliceKeys, bobKeys] = [counterKeys(alice), counterKeys(bob)];
    expect(aliceKeys.value("likes")).toEqual([
      "tally",
      server,
      "alice",
      "counter",
      "likes",
      "getValue",
    ]);
    expect(bobKeys.history("likes", { limit: 10 })).toEqual([
      "tally",
      server,
      "bob",
      "counter",
      "likes",
      "getHistory",
      { limit: 10, before: undefined },
    ]);

    const queryClient = new QueryClient();
    applyUpdate(queryClient, aliceKeys, { ...update("likes", 4, 5, 5), by: "carol" });
    expect(queryClient.getQueryData(aliceKeys.value("likes"))).toEqual({ value: 5, version: 5 });
    expect(queryClient.getQueryData(bobKeys.value("likes"))).toBeUndefined();
    expect(queryClient.getQueryData(counterKeys(bob, "alice").value("likes"))).toEqual({
      value: 5,
      version: 5,
    });
  });

  it("are anonymous without getToken, and unknown until getToken answers", async () => {
    expect(keys.all).toEqual(["tally", server, "anonymous"]);
    const pending = as("dave");
    expect(counterKeys(pending).all).toEqual(["tally", server, "unknown"]);
    await pending.credentials.token();
    expect(counterKeys(pending).all).toEqual(["tally", server, "dave"]);
  });
});
