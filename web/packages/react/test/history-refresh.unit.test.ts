// What a stream of live updates that cannot patch the newest history page costs in `getHistory`
// requests: updates conflated by `maxRate` (each skips versions), and a new counter's page that
// reaches back to version 1. A real QueryClient holds the page (watched by a QueryObserver, as a
// mounted useCounterHistory would), the server is a scripted fetch that answers after a delay,
// and time is vitest's fake clock.
import { TallyClient, type HistoryPage } from "@tally/client";
import { QueryClient, QueryObserver } from "@tanstack/react-query";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { applyUpdate } from "../src/cache.js";
import { HISTORY_REFRESH_INTERVAL_MS } from "../src/history-refresh.js";
import { counterKeys } from "../src/keys.js";
import { historyQuery } from "../src/queries.js";
import { increment, pageOf } from "./history-fixtures.js";

/** How long the scripted server takes to answer a getHistory request. */
const ANSWER_MS = 20;

/**
 * A counter "likes" incremented by 1 from version 1, whose getHistory answers the newest `limit`
 * entries as they were when the request arrived, `ANSWER_MS` later.
 */
function scriptedCounter(version: number) {
  const counter = { version, requests: 0, inFlight: 0, mostInFlight: 0 };
  const fetchStub: typeof fetch = async (_input, init) => {
    const { limit } = JSON.parse(String(init?.body)) as { limit: number };
    const at = counter.version;
    const oldest = Math.max(1, at - limit + 1);
    const page: HistoryPage =
      at === 0 ? { entries: [] } : pageOf(at, oldest, oldest > 1 ? oldest : undefined);
    counter.requests += 1;
    counter.inFlight += 1;
    counter.mostInFlight = Math.max(counter.mostInFlight, counter.inFlight);
    await new Promise((resolve) => setTimeout(resolve, ANSWER_MS));
    counter.inFlight -= 1;
    return new Response(JSON.stringify(page), {
      status: 200,
      headers: { "content-type": "application/json" },
    });
  };
  const client = new TallyClient({ baseUrl: "http://tally.test", fetch: fetchStub });
  return { counter, client };
}

/** The newest page of "likes" watched in a QueryClient, fetched once. */
async function watchedHead(version: number, limit: number) {
  const { counter, client } = scriptedCounter(version);
  const queryClient = new QueryClient({ defaultOptions: { queries: { retry: false } } });
  const query = historyQuery(client, client.principal, queryClient, "likes", { limit });
  const observer = new QueryObserver(queryClient, query);
  const unsubscribe = observer.subscribe(() => {});
  await vi.advanceTimersByTimeAsync(ANSWER_MS);
  expect(counter.requests).toBe(1);
  return {
    counter,
    page: () => queryClient.getQueryData<HistoryPage>(query.queryKey),
    /** The server commits `writes` increments, and the socket tells of the last one only. */
    commit(writes: number) {
      counter.version += writes;
      applyUpdate(queryClient, counterKeys(client), increment(counter.version));
    },
    unsubscribe,
  };
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("a newest history page that updates cannot patch", () => {
  it("is fetched a bounded number of times through 100 conflated updates, and ends as the server's", async () => {
    const head = await watchedHead(20, 5);
    // 100 writes/s shown at `maxRate: 20`: an update every 50 ms, 5 versions after the last.
    for (let i = 0; i < 100; i += 1) {
      head.commit(5);
      await vi.advanceTimersByTimeAsync(50);
    }
    await vi.advanceTimersByTimeAsync(1_000);
    const fetches = head.counter.requests - 1;
    expect(head.counter.mostInFlight).toBe(1);
    // One as the first update comes, one per interval while they do, and one after the last.
    expect(fetches).toBeLessThanOrEqual(5_000 / HISTORY_REFRESH_INTERVAL_MS + 2);
    expect(head.page()).toEqual(pageOf(520, 516, 516));
    head.unsubscribe();
  });

  it("is fetched a bounded number of times while a new counter's page reaches back to version 1", async () => {
    const head = await watchedHead(0, 50);
    // 100 writes 10 ms apart, each told: not one skipped, but until the counter has more
    // entries than the page holds, whether a write trims version 1 is unknown (history.ts).
    for (let i = 0; i < 100; i += 1) {
      head.commit(1);
      await vi.advanceTimersByTimeAsync(10);
    }
    await vi.advanceTimersByTimeAsync(1_000);
    const fetches = head.counter.requests - 1;
    expect(head.counter.mostInFlight).toBe(1);
    expect(fetches).toBeLessThanOrEqual(1_000 / HISTORY_REFRESH_INTERVAL_MS + 2);
    expect(head.page()).toEqual(pageOf(100, 51, 51));
    head.unsubscribe();
  });

  it("is fetched at most twice for a burst that comes at once", async () => {
    const head = await watchedHead(20, 5);
    for (let i = 0; i < 100; i += 1) head.commit(5);
    await vi.advanceTimersByTimeAsync(1_000);
    const fetches = head.counter.requests - 1;
    expect(fetches).toBeLessThanOrEqual(2);
    expect(head.page()).toEqual(pageOf(520, 516, 516));
    head.unsubscribe();
  });
});
