// The TanStack Query integration: what a live update or snapshot writes into the cache. Value and
// metadata move only forward by version (a late answer never moves them back), a resync snapshot
// replaces them, the newest history page is patched where that is exact (the server's page rules)
// and other pages are invalidated rather than refetched at once. Keys include the principal.
import type { Metadata, ValueAnswer } from "@tally/client";
import { TallyClient } from "@tally/client";
import { QueryClient } from "@tanstack/react-query";
import { describe, expect, it } from "vitest";
import { metadata, snapshot, update } from "../../../test-support/fixtures.js";
import { unsignedToken } from "../../../test-support/tokens.js";
import { applySnapshot, applyUpdate } from "../src/cache.js";
import { entryOf, headPageAfter } from "../src/history.js";
import { counterKeys, type HistoryParams } from "../src/keys.js";
import { entries, increment, pageOf } from "./history-fixtures.js";

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
    c.queryClient.setQueryData(keys.history("likes", { limit: 10 }), pageOf(7, 1));
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

const head = (params: HistoryParams) => keys.history("likes", params);

describe("headPageAfter (a history page once an Update is committed)", () => {
  it("puts the entry in front of a page with `next`, drops its oldest and moves `next`", () => {
    // 20 entries kept, a page of 5: versions 20..16, next 16.
    const after = headPageAfter(pageOf(20, 16, 16), increment(21), head({ limit: 5 }));
    expect(after).toEqual(pageOf(21, 17, 17));
  });

  it("reads a page without `limit` as the server's 50", () => {
    const after = headPageAfter(pageOf(60, 11, 11), increment(61), head({}));
    expect(after).toEqual(pageOf(61, 12, 12));
  });

  it("fills an empty page (a counter never written) with the first entry", () => {
    const after = headPageAfter({ entries: [] }, increment(1), head({ limit: 5 }));
    expect(after).toEqual(pageOf(1, 1));
  });

  it("drops the oldest of a trimmed history shown whole (the server keeps as many)", () => {
    // --history-limit 3 and a page of 10: versions 8..6 kept, no next.
    const after = headPageAfter(pageOf(8, 6), increment(9), head({ limit: 10 }));
    expect(after).toEqual(pageOf(9, 7));
  });

  it("is refetched when a page reaching version 1 cannot tell whether the write trims it", () => {
    expect(headPageAfter(pageOf(3, 1), increment(4), head({ limit: 10 }))).toBeNull();
    expect(headPageAfter(pageOf(5, 1), increment(6), head({ limit: 5 }))).toBeNull();
  });

  it("leaves a page that already holds the Update alone, and refetches one that missed some", () => {
    const page = pageOf(20, 16, 16);
    expect(headPageAfter(page, increment(20), head({ limit: 5 }))).toBe(page);
    expect(headPageAfter(page, increment(12), head({ limit: 5 }))).toBe(page);
    expect(headPageAfter(page, increment(22), head({ limit: 5 }))).toBeNull();
  });

  it("patches only when the Update and the page agree on `by` (shown to admins only)", () => {
    const adminPage = pageOf(20, 16, 16, "alice");
    expect(headPageAfter(adminPage, increment(21, "bob"), head({ limit: 5 }))).toEqual({
      entries: [...entries(21, 21, "bob"), ...entries(20, 17, "alice")],
      next: 17,
    });
    expect(headPageAfter(adminPage, increment(21), head({ limit: 5 }))).toBeNull();
    expect(headPageAfter(pageOf(20, 16, 16), increment(21, "bob"), head({ limit: 5 }))).toBeNull();
    expect(headPageAfter({ entries: [] }, increment(1, "bob"), head({ limit: 5 }))).toEqual(
      pageOf(1, 1, undefined, "bob"),
    );
  });

  it("makes the entries the server answers: an amount for increment and decrement only", () => {
    const base = { metadata: metadata("likes", 0, 9), timestamp: "2026-01-01T00:00:09.000Z" };
    const at = { version: 9, previousValue: 7, timestamp: base.timestamp };
    expect(
      entryOf({ ...base, type: "increment", value: 10, previousValue: 7, version: 9 }),
    ).toEqual({ ...at, type: "increment", amount: 3, value: 10 });
    expect(entryOf({ ...base, type: "decrement", value: 2, previousValue: 7, version: 9 })).toEqual(
      { ...at, type: "decrement", amount: 5, value: 2 },
    );
    expect(entryOf({ ...base, type: "setValue", value: 40, previousValue: 7, version: 9 })).toEqual(
      { ...at, type: "setValue", value: 40 },
    );
    expect(entryOf({ ...base, type: "reset", value: 0, previousValue: 7, version: 9 })).toEqual({
      ...at,
      type: "reset",
      value: 0,
    });
  });
});

describe("applyUpdate on history pages", () => {
  it("patches the newest page through a burst without invalidating it, and invalidates older pages", () => {
    const queryClient = new QueryClient();
    const newest = head({ limit: 5 });
    const older = keys.history("likes", { limit: 5, before: 16 });
    queryClient.setQueryData(newest, pageOf(20, 16, 16));
    queryClient.setQueryData(older, pageOf(15, 11, 11));
    for (let version = 21; version <= 220; version += 1) {
      applyUpdate(queryClient, keys, increment(version));
    }
    expect(queryClient.getQueryData(newest)).toEqual(pageOf(220, 216, 216));
    expect(queryClient.getQueryState(newest)?.isInvalidated).toBe(false);
    expect(queryClient.getQueryState(older)?.isInvalidated).toBe(true);
  });

  it("invalidates the newest page when an update was missed", () => {
    const queryClient = new QueryClient();
    const newest = head({ limit: 5 });
    queryClient.setQueryData(newest, pageOf(20, 16, 16));
    applyUpdate(queryClient, keys, increment(22));
    expect(queryClient.getQueryData(newest)).toEqual(pageOf(20, 16, 16));
    expect(queryClient.getQueryState(newest)?.isInvalidated).toBe(true);
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
