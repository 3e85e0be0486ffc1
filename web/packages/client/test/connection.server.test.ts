// The client's one socket against a real `tally serve`: many subscriptions share it (counted by
// the server's `tally_sessions_open` gauge and by the WebSockets the client made), it closes once
// the last one ends, writes made while the server is down are queued and applied exactly once and
// in order after it comes back, and presence counts two clients.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { TallyServer, tempDir } from "../../../test-support/server.js";
import { until } from "../../../test-support/until.js";
import { TallyClient, type TallyClientOptions } from "../src/rpc.js";
import { CounterSubscription } from "../src/subscription.js";

const dir = tempDir();
let server: TallyServer;

/** WebSockets made by the clients of this file. */
let socketsMade = 0;
class CountedWebSocket extends WebSocket {
  constructor(url: string) {
    super(url);
    socketsMade += 1;
  }
}

function clientFor(options: Partial<TallyClientOptions> = {}) {
  return new TallyClient({
    baseUrl: server.url,
    WebSocket: CountedWebSocket as unknown as typeof globalThis.WebSocket,
    // Quick retries, so that a restart is noticed within a second.
    reconnect: { backoffMinMs: 200, backoffMaxMs: 500 },
    lingerMs: 100,
    ...options,
  });
}

/** The server's `tally_sessions_open` gauge: open version-2 sockets. */
async function sessionsOpen(): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("tally_sessions_open "));
  return Number(line?.split(" ")[1] ?? 0);
}

/** Resolves once `done()` holds, checking every 20 ms for up to 10 s. */
async function eventually(done: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

beforeAll(async () => {
  server = await TallyServer.start(`${dir.path}/tally.db`, { args: ["--reconnect-spread", "0s"] });
});

afterAll(async () => {
  await server?.stop();
  dir.remove();
});

describe("one socket per client", () => {
  it("carries ten subscriptions, each live, and closes after the last one ends", async () => {
    const client = clientFor();
    const before = socketsMade;
    const names = Array.from({ length: 10 }, (_, i) => `shared:${i}`);
    const subscriptions = names.map((name) => new CounterSubscription(client, name));
    for (const subscription of subscriptions) {
      await until(subscription, (s) => s.status === "connected");
    }
    expect(socketsMade - before).toBe(1);
    expect(await sessionsOpen()).toBe(1);

    const writer = clientFor();
    for (const name of names) await writer.increment(name, 3);
    for (const subscription of subscriptions) {
      await until(subscription, (s) => s.value === 3 && s.version === 1);
    }

    for (const subscription of subscriptions) subscription.disable();
    await eventually(async () => (await sessionsOpen()) === 0);
    expect(client.connection.getState().status).toBe("idle");
    expect(socketsMade - before).toBe(1);
  });

  it("queues writes made while the server is down and applies each once, in order, after it is back", async () => {
    const client = clientFor();
    const watching = new CounterSubscription(client, "queued");
    await until(watching, (s) => s.status === "connected");
    await client.increment("queued");

    await server.stop();
    await until(watching, (s) => s.status === "disconnected");
    const writes = [
      client.increment("queued", 2),
      client.setValue("queued", 10),
      client.increment("queued", 5),
      client.decrement("queued"),
    ];
    expect(client.connection.getState().pendingWrites).toBe(4);
    expect(watching.getState().pendingWrites).toBe(4);

    server = await server.restart();
    const answers = await Promise.all(writes);
    expect(answers.map((a) => [a.type, a.value, a.version])).toEqual([
      ["increment", 3, 2],
      ["setValue", 10, 3],
      ["increment", 15, 4],
      ["decrement", 14, 5],
    ]);
    expect(client.connection.getState().pendingWrites).toBe(0);
    await until(watching, (s) => s.version === 5 && s.value === 14 && s.pendingWrites === 0);

    const page = await clientFor().getHistory("queued", { limit: 100 });
    expect(page.entries.map((e) => `${e.type} ${e.amount ?? e.value}`).reverse()).toEqual([
      "increment 1",
      "increment 2",
      "setValue 10",
      "increment 5",
      "decrement 1",
    ]);
    watching.disable();
  });

  it("goes over HTTP when nothing watches", async () => {
    const client = clientFor();
    const before = socketsMade;
    expect(await client.increment("script")).toMatchObject({ value: 1, version: 1 });
    expect(socketsMade).toBe(before);
    expect(client.connection.getState()).toMatchObject({ status: "idle", pendingWrites: 0 });
  });
});

describe("presence", () => {
  it("counts the watchers of two clients, and one after the other leaves", async () => {
    const first = new CounterSubscription(clientFor(), "room", { presence: true });
    const second = new CounterSubscription(clientFor(), "room", { presence: true });
    // Anonymous sockets count as a user each.
    await until(first, (s) => s.presence?.watchers === 2 && s.presence.users === 2);
    await until(second, (s) => s.presence?.watchers === 2);
    second.disable();
    await until(first, (s) => s.presence?.watchers === 1 && s.presence.users === 1);
    first.disable();
  });
});
