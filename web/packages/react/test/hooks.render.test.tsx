// The hooks in a real React renderer (jsdom) against a real `tally serve`: StrictMode's double
// mount opens one socket, a remount within the linger reuses it, a burst of writes counts once
// and patches the history page instead of refetching it, and a refused write rolls its
// optimistic change back and says why. Sockets are counted by the WebSocket class the client is
// given and by the server's `tally_sessions_open` gauge.
import {
  MAX_SAFE_INTEGER,
  TallyClient,
  TallyError,
  type HistoryPage,
  type ValueAnswer,
} from "@tally/client";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { act, cleanup, render, waitFor } from "@testing-library/react";
import { StrictMode, useState, type ReactNode } from "react";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { SocketCount, readMetric } from "../../../test-support/sockets.js";
import { TallyServer, tempDir } from "../../../test-support/server.js";
import {
  TallyProvider,
  useCounterHistory,
  useCounterValue,
  useCounterWebSocket,
  useIncrementCounter,
  type CounterWebSocket,
} from "../src/index.js";

const dir = tempDir();
let server: TallyServer;

/** `ws`, counting the sockets made. */
const sockets = new SocketCount();

/** Calls to `counter.getHistory` over HTTP. */
let historyFetches = 0;
const countingFetch: typeof fetch = (input, init) => {
  if (String(input).endsWith("/rpc/counter.getHistory")) historyFetches += 1;
  return fetch(input, init);
};

function newClient() {
  return new TallyClient({
    baseUrl: server.url,
    WebSocket: sockets.WebSocket,
    fetch: countingFetch,
    // Quick retries, so that a restart is noticed within a second.
    reconnect: { backoffMinMs: 100, backoffMaxMs: 300 },
  });
}

/** A client for setting counters up over HTTP, outside the tree. */
const admin = () => new TallyClient({ baseUrl: server.url });

function sessionsOpen(): Promise<number> {
  return readMetric(server.url, "tally_sessions_open");
}

function Providers({ client, children }: { client: TallyClient; children: ReactNode }) {
  const [queryClient] = useState(
    () => new QueryClient({ defaultOptions: { queries: { retry: false } } }),
  );
  return (
    <StrictMode>
      <QueryClientProvider client={queryClient}>
        <TallyProvider client={client}>{children}</TallyProvider>
      </QueryClientProvider>
    </StrictMode>
  );
}

/** What the probe saw on its last render, and every value it showed. */
interface Seen {
  socket?: CounterWebSocket;
  value?: ValueAnswer;
  history?: HistoryPage;
  shown: number[];
  increment?: (amount?: number) => void;
  errors: Error[];
}

function Probe({ name, seen, history = false }: { name: string; seen: Seen; history?: boolean }) {
  const socket = useCounterWebSocket(name, { presence: true });
  const value = useCounterValue(name);
  const page = useCounterHistory(name, { limit: 5 }, { enabled: history });
  const increment = useIncrementCounter({ onError: (error) => void seen.errors.push(error) });
  seen.socket = socket;
  seen.value = value.data;
  seen.history = page.data;
  if (value.data !== undefined && seen.shown.at(-1) !== value.data.value) {
    seen.shown.push(value.data.value);
  }
  seen.increment = (amount) => increment.mutate({ name, amount });
  return <output>{value.data?.value ?? "…"}</output>;
}

const newSeen = (): Seen => ({ shown: [], errors: [] });

beforeAll(async () => {
  server = await TallyServer.start(`${dir.path}/tally.db`);
});

afterEach(() => cleanup());

afterAll(async () => {
  await server?.stop();
  dir.remove();
});

describe("useCounterWebSocket in a React tree", () => {
  it("opens one socket under StrictMode's double mount, and a remount reuses it", async () => {
    const client = newClient();
    const before = sockets.made;
    const seen = newSeen();
    const tree = render(
      <Providers client={client}>
        <Probe name="strict" seen={seen} />
        <Probe name="strict-2" seen={newSeen()} />
      </Providers>,
    );
    await waitFor(() => expect(seen.socket?.isConnected).toBe(true));
    expect(sockets.made - before).toBe(1);
    expect(await sessionsOpen()).toBe(1);
    await waitFor(() => expect(seen.socket?.presence).toEqual({ watchers: 1, users: 1 }));

    // Gone and back within the connection's linger (1 s): the same socket.
    tree.rerender(<Providers client={client}>{null}</Providers>);
    const again = newSeen();
    tree.rerender(
      <Providers client={client}>
        <Probe name="strict" seen={again} />
      </Providers>,
    );
    await waitFor(() => expect(again.socket?.isConnected).toBe(true));
    expect(sockets.made - before).toBe(1);

    // Gone for longer: the socket closes.
    tree.unmount();
    await waitFor(async () => expect(await sessionsOpen()).toBe(0), { timeout: 5_000 });
  });
});

describe("mutations in a React tree", () => {
  it("count each of a burst once and patch the history page without refetching it", async () => {
    const setup = admin();
    for (let i = 0; i < 8; i += 1) await setup.increment("burst");
    const client = newClient();
    const seen = newSeen();
    render(
      <Providers client={client}>
        <Probe name="burst" seen={seen} history />
      </Providers>,
    );
    await waitFor(() => expect(seen.socket?.isConnected).toBe(true));
    await waitFor(() => expect(seen.value?.value).toBe(8));
    await waitFor(() => expect(historyFetches).toBeGreaterThan(0));
    const fetchesBefore = historyFetches;

    act(() => {
      for (let i = 0; i < 30; i += 1) seen.increment?.();
    });
    await waitFor(() => expect(seen.value).toEqual({ value: 38, version: 38 }));
    // Optimistic values only ever went up: no write counted twice, none dropped and re-added.
    expect(Math.max(...seen.shown)).toBe(38);
    expect(seen.shown).toEqual([...seen.shown].sort((a, b) => a - b));
    await waitFor(() => expect(seen.socket?.pendingWrites).toBe(0));
    expect(historyFetches).toBe(fetchesBefore);
    expect(seen.history).toEqual(await setup.getHistory("burst", { limit: 5 }));
    expect(seen.errors).toEqual([]);
    expect((await setup.getValue("burst")).value).toBe(38);
  });

  it("show 50 writes made while the server is down at once, and count each once after", async () => {
    await admin().setValue("offline", 100);
    const client = newClient();
    const seen = newSeen();
    render(
      <Providers client={client}>
        <Probe name="offline" seen={seen} history />
      </Providers>,
    );
    await waitFor(() => expect(seen.socket?.isConnected).toBe(true));
    await waitFor(() => expect(seen.value?.value).toBe(100));

    await server.stop();
    await waitFor(() => expect(seen.socket?.isConnected).toBe(false));
    act(() => {
      for (let i = 0; i < 50; i += 1) seen.increment?.();
    });
    await waitFor(() => expect(seen.value?.value).toBe(150));
    expect(seen.socket?.pendingWrites).toBe(50);

    server = await server.restart();
    await waitFor(() => expect(seen.socket?.pendingWrites).toBe(0), { timeout: 10_000 });
    await waitFor(() => expect(seen.value).toEqual({ value: 150, version: 51 }));
    expect(Math.max(...seen.shown)).toBe(150);
    expect(seen.errors).toEqual([]);
    const history = await admin().getHistory("offline", { limit: 5 });
    await waitFor(() => expect(seen.history).toEqual(history));
    expect((await admin().getValue("offline")).value).toBe(150);
  });

  it("roll a refused write back, and say why", async () => {
    await admin().setValue("full", MAX_SAFE_INTEGER);
    const client = newClient();
    const seen = newSeen();
    render(
      <Providers client={client}>
        <Probe name="full" seen={seen} />
      </Providers>,
    );
    await waitFor(() => expect(seen.socket?.isConnected).toBe(true));
    await waitFor(() => expect(seen.value?.value).toBe(MAX_SAFE_INTEGER));

    act(() => seen.increment?.());
    await waitFor(() => expect(seen.errors).toHaveLength(1));
    // Shown at once, then rolled back.
    expect(seen.shown).toEqual([MAX_SAFE_INTEGER, MAX_SAFE_INTEGER + 1, MAX_SAFE_INTEGER]);
    const error = seen.errors[0];
    expect(error).toBeInstanceOf(TallyError);
    expect((error as TallyError).code).toBe("out_of_range");
    expect(seen.value).toEqual({ value: MAX_SAFE_INTEGER, version: 1 });
    expect(seen.socket?.pendingWrites).toBe(0);
  });
});
