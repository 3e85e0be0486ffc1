// Writes with idempotency keys against a real `tally serve`: the same key counts once and gets the
// first answer, a write whose answer is lost (a proxy cuts the connection after the server read
// the request) is sent again and counts once, an abort stops the retries, and a key reused for
// another operation is refused without a retry; a write with expectedVersion applies only at that
// version, over HTTP and the socket.
import { connect, createServer, type Server, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SocketCount } from "../../../test-support/sockets.js";
import { TallyServer, tempDir } from "../../../test-support/server.js";
import { TallyClient, TallyError } from "../src/rpc.js";

const dir = tempDir();
let server: TallyServer;

beforeAll(async () => {
  server = await TallyServer.start(`${dir.path}/tally.db`);
});

afterAll(async () => {
  await server?.stop();
  dir.remove();
});

/**
 * A TCP proxy in front of the server that forwards each request, and for the first `cut`
 * connections (all of them with `Infinity`) closes the client's side as soon as the server's
 * answer starts, so the client never sees it: a write applied, its answer lost.
 */
class CuttingProxy {
  cut: number;
  connections = 0;
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();

  private constructor(server: Server, cut: number) {
    this.#server = server;
    this.cut = cut;
  }

  static start(upstreamPort: number, cut: number): Promise<CuttingProxy> {
    let proxy: CuttingProxy;
    const listener = createServer((client) => {
      proxy.connections++;
      const cutThis = proxy.cut > 0;
      if (cutThis) proxy.cut--;
      const upstream = connect(upstreamPort, "127.0.0.1");
      proxy.#track(client, upstream);
      client.on("data", (chunk) => upstream.write(chunk));
      upstream.on("data", (chunk) => {
        if (cutThis) {
          client.destroy();
          upstream.destroy();
        } else {
          client.write(chunk);
        }
      });
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
      client.on("error", () => upstream.destroy());
      upstream.on("error", () => client.destroy());
    });
    proxy = new CuttingProxy(listener, cut);
    return new Promise((resolve) => {
      listener.listen(0, "127.0.0.1", () => resolve(proxy));
    });
  }

  get url(): string {
    const address = this.#server.address();
    if (address === null || typeof address === "string") throw new Error("not listening");
    return `http://127.0.0.1:${address.port}`;
  }

  #track(...sockets: Socket[]) {
    for (const socket of sockets) {
      this.#sockets.add(socket);
      socket.on("close", () => this.#sockets.delete(socket));
    }
  }

  close(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}

function clientFor(url: string, options: { retryFor?: number } = {}) {
  return new TallyClient({ baseUrl: url, ...options });
}

/** The counter's history as `type amount` strings, oldest first. */
async function history(name: string): Promise<string[]> {
  const page = await clientFor(server.url).getHistory(name, { limit: 100 });
  return page.entries.reverse().map((entry) => `${entry.type} ${entry.amount ?? entry.value}`);
}

describe("writes with idempotency keys", () => {
  it("count once and get the first answer when sent twice with the same key", async () => {
    const client = clientFor(server.url);
    const first = await client.increment("same-key", 3, { idempotencyKey: "same-key-1" });
    const again = await client.increment("same-key", 3, { idempotencyKey: "same-key-1" });
    expect(JSON.stringify(again)).toBe(JSON.stringify(first));
    expect(await client.getValue("same-key")).toEqual({ value: 3, version: 1 });
    // Without a key of its own, each call is another write.
    await client.increment("same-key", 3);
    await client.increment("same-key", 3);
    expect(await client.getValue("same-key")).toEqual({ value: 9, version: 3 });
  });

  it("are sent again after a lost answer and count once", async () => {
    const proxy = await CuttingProxy.start(server.port, 2);
    try {
      const client = clientFor(proxy.url);
      const update = await client.increment("lost-answer", 5);
      expect(update).toMatchObject({ value: 5, previousValue: 0, version: 1 });
      // Two cut connections, then the one that got the first answer back.
      expect(proxy.connections).toBe(3);
      expect(await history("lost-answer")).toEqual(["increment 5"]);
      const reset = await client.reset("lost-answer");
      expect(reset).toMatchObject({ value: 0, version: 2 });
    } finally {
      await proxy.close();
    }
  });

  it("stop being sent again when the caller aborts, rejecting with the reason", async () => {
    const proxy = await CuttingProxy.start(server.port, Infinity);
    try {
      let attempts = 0;
      const counting: typeof fetch = (input, init) => {
        attempts++;
        return fetch(input, init);
      };
      const client = new TallyClient({ baseUrl: proxy.url, fetch: counting });
      const controller = new AbortController();
      const reason = new Error("the user gave up");
      const answer = client.increment("aborted", 1, { signal: controller.signal });
      answer.catch(() => {});
      await until(() => attempts >= 2);
      controller.abort(reason);
      expect(await answer.catch((error: unknown) => error)).toBe(reason);
      const sent = attempts;
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      expect(attempts).toBe(sent);
      // Applied once (the first attempt reached the server), however often it was sent.
      expect(await history("aborted")).toEqual(["increment 1"]);
    } finally {
      await proxy.close();
    }
  });

  it("refuse a key reused for another operation, without sending it again", async () => {
    let requests = 0;
    const counting: typeof fetch = (input, init) => {
      requests++;
      return fetch(input, init);
    };
    const client = new TallyClient({ baseUrl: server.url, fetch: counting });
    await client.increment("reused", 1, { idempotencyKey: "reused-1" });
    const error = await client
      .increment("reused", 2, { idempotencyKey: "reused-1" })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TallyError);
    expect(error).toMatchObject({ status: 422, code: "idempotency_key_reused", temporary: false });
    expect(requests).toBe(2);
    expect(await client.getValue("reused")).toEqual({ value: 1, version: 1 });
  });
});

/** Resolves once `done()` holds, checking every 10 ms for up to 10 s. */
async function until(done: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!done()) {
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe("writes with expectedVersion (compare-and-set)", () => {
  it("apply at the expected version and are refused at another, with the counter's version", async () => {
    const client = new TallyClient({
      baseUrl: server.url,
      WebSocket: new SocketCount().WebSocket,
      lingerMs: 100,
    });
    const created = await client.setValue("cas-stock", 5, { expectedVersion: 0 });
    expect([created.value, created.version]).toEqual([5, 1]);
    const stale = await client.decrement("cas-stock", 1, { expectedVersion: 0 }).catch((e) => e);
    expect(stale).toBeInstanceOf(TallyError);
    expect([stale.status, stale.code, stale.currentVersion, stale.temporary]).toEqual([
      409,
      "version_conflict",
      1,
      false,
    ]);
    // The same over the socket's call command.
    const taken = await client.connection.call("decrement", {
      name: "cas-stock",
      expectedVersion: 1,
    });
    expect(taken.value).toBe(4);
    const late = await client.connection
      .call("decrement", { name: "cas-stock", expectedVersion: 1 })
      .catch((e) => e);
    expect([late.code, late.currentVersion]).toEqual(["version_conflict", 2]);
    expect(await client.getValue("cas-stock")).toEqual({ value: 4, version: 2 });
  });
});
