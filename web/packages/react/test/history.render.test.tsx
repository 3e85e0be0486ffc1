// useCounterHistory's newest page in a React tree, with the server's answers scripted: a page
// that was on its way while updates came (which could not patch it) is fetched once more after
// it lands, and after a resync a cached page newer than the server's data gives way to the
// server's answer.
import { TallyClient, type HistoryPage } from "@tally/client";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { act, cleanup, render, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, it } from "vitest";
import { snapshot } from "../../../test-support/fixtures.js";
import { applySnapshot, applyUpdate } from "../src/cache.js";
import { TallyProvider, counterKeys, useCounterHistory } from "../src/index.js";
import { increment, pageOf } from "./history-fixtures.js";

/** A server whose getHistory answers are given one by one by the test. */
function scriptedServer() {
  const waiting: ((page: HistoryPage) => void)[] = [];
  const fetchStub: typeof fetch = async () => {
    const page = await new Promise<HistoryPage>((resolve) => waiting.push(resolve));
    return new Response(JSON.stringify(page), {
      status: 200,
      headers: { "content-type": "application/json" },
    });
  };
  return {
    client: new TallyClient({ baseUrl: "http://tally.test", fetch: fetchStub }),
    /** How many getHistory requests were made. */
    requests: () => waiting.length,
    /** Answers request `index` (from 0) with `page`. */
    answer: (index: number, page: HistoryPage) =>
      (waiting[index] as (p: HistoryPage) => void)(page),
  };
}

function HistoryProbe({ seen }: { seen: { page?: HistoryPage } }) {
  seen.page = useCounterHistory("likes", { limit: 5 }).data;
  return null;
}

function renderProbe(client: TallyClient) {
  const queryClient = new QueryClient({ defaultOptions: { queries: { retry: false } } });
  const seen: { page?: HistoryPage } = {};
  render(
    <QueryClientProvider client={queryClient}>
      <TallyProvider client={client}>
        <HistoryProbe seen={seen} />
      </TallyProvider>
    </QueryClientProvider>,
  );
  return { queryClient, seen, keys: counterKeys(client) };
}

afterEach(() => cleanup());

describe("useCounterHistory's newest page", () => {
  it("is fetched again when updates came while it was on its way", async () => {
    const server = scriptedServer();
    const { queryClient, seen, keys } = renderProbe(server.client);
    await waitFor(() => expect(server.requests()).toBe(1));
    act(() => {
      applyUpdate(queryClient, keys, increment(11));
      applyUpdate(queryClient, keys, increment(12));
    });
    // The answer left before those two writes.
    server.answer(0, pageOf(10, 6, 6));
    await waitFor(() => expect(server.requests()).toBe(2));
    server.answer(1, pageOf(12, 8, 8));
    await waitFor(() => expect(seen.page).toEqual(pageOf(12, 8, 8)));
    // From then on, updates patch it.
    act(() => applyUpdate(queryClient, keys, increment(13)));
    await waitFor(() => expect(seen.page).toEqual(pageOf(13, 9, 9)));
    expect(server.requests()).toBe(2);
  });

  it("gives way to the server's answer after a resync, even though that is older", async () => {
    const server = scriptedServer();
    const { queryClient, seen, keys } = renderProbe(server.client);
    await waitFor(() => expect(server.requests()).toBe(1));
    act(() => applySnapshot(queryClient, keys, snapshot("likes", 50, 50)));
    server.answer(0, pageOf(50, 46, 46));
    await waitFor(() => expect(seen.page).toEqual(pageOf(50, 46, 46)));
    // The server's data was replaced: the counter is at version 3 now.
    act(() => applySnapshot(queryClient, keys, snapshot("likes", 3, 3, true)));
    await waitFor(() => expect(server.requests()).toBe(2));
    server.answer(1, pageOf(3, 1));
    await waitFor(() => expect(seen.page).toEqual(pageOf(3, 1)));
  });
});
