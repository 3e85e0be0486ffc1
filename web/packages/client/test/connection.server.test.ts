// The client's one socket against a real `tally serve`: many subscriptions share it (counted by
// the server's `tally_sessions_open` gauge and by the WebSockets the client made), it closes once
// the last one ends, writes made while the server is down are queued and applied exactly once and
// in order after it comes back, a burst of writes cut off mid-way counts exactly once, and
// presence counts two clients.
import { connect, createServer, type Server, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SocketCount, readMetric } from "../../../test-support/sockets.js";
import { TallyServer, tempDir } from "../../../test-support/server.js";
import { until } from "../../../test-support/until.js";
import { TallyClient, type TallyClientOptions } from "../src/rpc.js";
import { CounterSubscription } from "../src/subscription.js";

const dir = tempDir();
let server: TallyServer;

/** WebSockets made by the clients of this file. */
const sockets = new SocketCount();

function clientFor(options: Partial<TallyClientOptions> = {}) {
  return new TallyClient({
    baseUrl: server.url,
    WebSocket: sockets.WebSocket,
    // Quick retries, so that a restart is noticed within a second.
    reconnect: { backoffMinMs: 200, backoffMaxMs: 500 },
    lingerMs: 100,
    ...options,
  });
}

/** The server's `tally_sessions_open` gauge: open version-2 sockets. */
function sessionsOpen(): Promise<number> {
  return readMetric(server.url, "tally_sessions_open");
}

/** Resolves once `done()` holds, checking every 20 ms for up to 10 s. */
async function eventually(done: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * A TCP proxy in front of the server that can cut every connection at once (no close frame), and
 * can do so when the server's answers reach a count: then the chunk holding that answer, and
 * all after it, never reach the client (writes applied, their answers lost).
 */
class Proxy {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  /** Cut once this many `result` frames came from the server (null: never). */
  cutAtResults: number | null = null;
  #results = 0;

  private constructor(server: Server) {
    this.#server = server;
  }

  static start(upstreamPort: number): Promise<Proxy> {
    const proxy: Proxy = new Proxy(
      createServer((client) => {
        const upstream = connect(upstreamPort, "127.0.0.1");
        for (const socket of [client, upstream]) {
          proxy.#sockets.add(socket);
          socket.on("close", () => proxy.#sockets.delete(socket));
          socket.on("error", () => {});
        }
        client.pipe(upstream);
        upstream.on("data", (chunk: Buffer) => {
          if (proxy.cutAtResults !== null) {
            proxy.#results += chunk.toString("latin1").split('"type":"result"').length - 1;
            if (proxy.#results >= proxy.cutAtResults) {
              proxy.cutAtResults = null;
              proxy.cut();
              return;
            }
          }
          client.write(chunk);
        });
        client.on("close", () => upstream.destroy());
        upstream.on("close", () => client.destroy());
      }),
    );
    return new Promise((resolve) => proxy.#server.listen(0, "127.0.0.1", () => resolve(proxy)));
  }

  get url(): string {
    const address = this.#server.address();
    if (address === null || typeof address === "string") throw new Error("not listening");
    return `http://127.0.0.1:${address.port}`;
  }

  /** Drops every connection through it, as a lost network does. */
  cut(): void {
    for (const socket of this.#sockets) socket.destroy();
  }

  close(): Promise<void> {
    this.cut();
    return new Promise((resolve) => this.#server.close(() => resolve()));
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
    const before = sockets.made;
    const names = Array.from({ length: 10 }, (_, i) => `shared:${i}`);
    const subscriptions = names.map((name) => new CounterSubscription(client, name));
    for (const subscription of subscriptions) {
      await until(subscription, (s) => s.status === "connected");
    }
    expect(sockets.made - before).toBe(1);
    expect(await sessionsOpen()).toBe(1);

    const writer = clientFor();
    for (const name of names) await writer.increment(name, 3);
    for (const subscription of subscriptions) {
      await until(subscription, (s) => s.value === 3 && s.version === 1);
    }

    for (const subscription of subscriptions) subscription.disable();
    await eventually(async () => (await sessionsOpen()) === 0);
    expect(client.connection.getState().status).toBe("idle");
    expect(sockets.made - before).toBe(1);
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

  it("counts each write of a burst once when the socket is cut in the middle of it", async () => {
    const proxy = await Proxy.start(server.port);
    try {
      const client = clientFor({ baseUrl: proxy.url });
      const watching = new CounterSubscription(client, "burst");
      await until(watching, (s) => s.status === "connected");
      const before = sockets.made;
      let answered = 0;
      proxy.cutAtResults = 5;
      const writes = Array.from({ length: 50 }, () =>
        client.increment("burst").then((update) => {
          answered += 1;
          return update;
        }),
      );
      await until(watching, (s) => s.status === "disconnected");
      const answeredBeforeCut = answered;
      const updates = await Promise.all(writes);
      // The cut came with writes on their way: the client connected again and sent them again.
      expect(answeredBeforeCut).toBeLessThan(5);
      expect(sockets.made - before).toBe(1);
      expect(answered).toBe(50);
      expect(new Set(updates.map((u) => u.version)).size).toBe(50);
      const page = await clientFor().getHistory("burst", { limit: 100 });
      expect(page.entries).toHaveLength(50);
      expect(await clientFor().getValue("burst")).toEqual({ value: 50, version: 50 });
      await until(watching, (s) => s.version === 50 && s.pendingWrites === 0);
      watching.disable();
    } finally {
      await proxy.close();
    }
  });

  it("goes over HTTP when nothing watches", async () => {
    const client = clientFor();
    const before = sockets.made;
    expect(await client.increment("script")).toMatchObject({ value: 1, version: 1 });
    expect(sockets.made).toBe(before);
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
