// Optimistic writes on a counter's getValue entry: the shown value is the committed value with the
// unsettled writes on top, each write counts once whatever order its live update and its answer
// come in, and a refused write is rolled back while the others stay.
import type { ValueAnswer } from "@tally/client";
import { TallyClient } from "@tally/client";
import { QueryClient } from "@tanstack/react-query";
import { describe, expect, it } from "vitest";
import { update } from "../../../test-support/fixtures.js";
import { applyUpdate } from "../src/cache.js";
import { counterKeys } from "../src/keys.js";
import { beginWrite, commitValue } from "../src/optimistic.js";

const keys = counterKeys(new TallyClient({ baseUrl: "http://tally.test", fetch }));
const key = keys.value("likes");
const plusOne = { type: "increment", amount: 1 } as const;

function cacheAt(value: number, version: number) {
  const queryClient = new QueryClient();
  queryClient.setQueryData<ValueAnswer>(key, { value, version });
  return {
    queryClient,
    shown: () => queryClient.getQueryData<ValueAnswer>(key),
  };
}

describe("optimistic writes", () => {
  it("show at once, and the answer takes their place", () => {
    const c = cacheAt(10, 10);
    const settle = beginWrite(c.queryClient, key, { type: "increment", amount: 5 });
    expect(c.shown()).toEqual({ value: 15, version: 10 });
    applyUpdate(c.queryClient, keys, update("likes", 10, 15, 11));
    settle(true);
    expect(c.shown()).toEqual({ value: 15, version: 11 });
  });

  it("count once when a write's live update comes before its answer", () => {
    const c = cacheAt(10, 10);
    const settle = beginWrite(c.queryClient, key, plusOne);
    // The broadcast, then the answer: the same Update twice.
    applyUpdate(c.queryClient, keys, update("likes", 10, 11, 11));
    expect(c.shown()).toEqual({ value: 11, version: 10 });
    applyUpdate(c.queryClient, keys, update("likes", 10, 11, 11));
    settle(true);
    expect(c.shown()).toEqual({ value: 11, version: 11 });
  });

  it("count once each with 50 in flight, answered out of order, with changes made elsewhere", () => {
    const c = cacheAt(0, 0);
    const settles = Array.from({ length: 50 }, () => beginWrite(c.queryClient, key, plusOne));
    expect(c.shown()?.value).toBe(50);
    // The server commits them at versions 1..50 with someone else's +100 at version 26.
    const commits = [];
    let value = 0;
    for (let version = 1; version <= 51; version += 1) {
      const previous = value;
      value += version === 26 ? 100 : 1;
      commits.push(update("likes", previous, value, version));
    }
    for (const live of commits) {
      applyUpdate(c.queryClient, keys, live);
      expect(c.shown()?.value).toBe(50);
    }
    const own = commits.filter((commit) => commit.version !== 26).reverse();
    own.forEach((answer, index) => {
      applyUpdate(c.queryClient, keys, answer);
      (settles[index] as (answered: boolean) => void)(true);
      if (index < own.length - 1) expect(c.shown()?.value).toBe(50);
    });
    expect(c.shown()).toEqual({ value: 150, version: 51 });
  });

  it("roll back a refused write and keep the others", () => {
    const c = cacheAt(10, 10);
    const first = beginWrite(c.queryClient, key, plusOne);
    const refused = beginWrite(c.queryClient, key, { type: "increment", amount: 7 });
    const third = beginWrite(c.queryClient, key, plusOne);
    expect(c.shown()?.value).toBe(19);
    refused(false);
    refused(true);
    expect(c.shown()?.value).toBe(12);
    applyUpdate(c.queryClient, keys, update("likes", 10, 11, 11));
    first(true);
    applyUpdate(c.queryClient, keys, update("likes", 11, 12, 12));
    third(true);
    expect(c.shown()).toEqual({ value: 12, version: 12 });
  });

  it("draw setValue and reset in the order made", () => {
    const c = cacheAt(10, 10);
    beginWrite(c.queryClient, key, plusOne);
    beginWrite(c.queryClient, key, { type: "setValue", value: 40 });
    beginWrite(c.queryClient, key, { type: "decrement", amount: 2 });
    expect(c.shown()?.value).toBe(38);
    beginWrite(c.queryClient, key, { type: "reset" });
    expect(c.shown()?.value).toBe(0);
  });

  it("keep a fetch answer that is older than the known state from moving the value back", () => {
    const c = cacheAt(10, 10);
    expect(commitValue(c.queryClient, key, { value: 8, version: 8 }).shown).toEqual({
      value: 10,
      version: 10,
    });
    const settle = beginWrite(c.queryClient, key, plusOne);
    expect(commitValue(c.queryClient, key, { value: 12, version: 12 }).shown).toEqual({
      value: 11,
      version: 10,
    });
    settle(true);
    expect(c.shown()).toEqual({ value: 12, version: 12 });
  });

  it("show committed states as they come when no value was known to draw on", () => {
    const queryClient = new QueryClient();
    const settle = beginWrite(queryClient, key, plusOne);
    expect(queryClient.getQueryData(key)).toBeUndefined();
    commitValue(queryClient, key, { value: 4, version: 4 });
    expect(queryClient.getQueryData(key)).toEqual({ value: 4, version: 4 });
    settle(true);
    expect(queryClient.getQueryData(key)).toEqual({ value: 4, version: 4 });
  });
});
