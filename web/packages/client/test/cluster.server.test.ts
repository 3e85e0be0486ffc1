// A client of several servers (`baseUrl: [a, b]`) against real `tally serve` processes (issue 14,
// losing a node): the socket that loses its node comes up on the next URL and its subscriptions
// go on there; a failover on one database resumes with no gap; HTTP calls move on from a URL
// that refuses connections, and never from a refusal.
import { createServer } from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { readMetric } from "../../../test-support/sockets.js";
import { TallyServer, tempDir } from "../../../test-support/server.js";
import { until } from "../../../test-support/until.js";
import { TallyClient, TallyError, type TallyClientOptions } from "../src/rpc.js";
import { CounterSubscription } from "../src/subscription.js";

const dir = tempDir();
/** Every server a test started, stopped at the end even when the test failed. */
const started: TallyServer[] = [];

afterAll(async () => {
  await Promise.all(started.map((server) => server.stop()));
  dir.remove();
});

/** A server on database `name` whose shutdown advises no delay (`--reconnect-spread 0s`). */
async function start(name: string, port?: number): Promise<TallyServer> {
  const server = await TallyServer.start(`${dir.path}/${name}.db`, {
    args: ["--reconnect-spread", "0s"],
    ...(port === undefined ? {} : { port }),
  });
  started.push(server);
  return server;
}

/** A loopback port on which nothing listens (it was free a moment ago). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      const port = address !== null && typeof address === "object" ? address.port : 0;
      probe.close(() => resolve(port));
    });
  });
}

/** The URLs of the WebSockets made through it, in order. */
class SocketLog {
  readonly urls: string[] = [];
  readonly WebSocket: typeof globalThis.WebSocket;

  constructor() {
    const urls = this.urls;
    class LoggedWebSocket extends WebSocket {
      constructor(url: string) {
        super(url);
        urls.push(url);
      }
    }
    this.WebSocket = LoggedWebSocket as unknown as typeof globalThis.WebSocket;
  }
}

function clientOf(baseUrl: string | string[], options: Partial<TallyClientOptions> = {}) {
  return new TallyClient({
    baseUrl,
    // Quick retries, so that a lost node is noticed within a second.
    reconnect: { backoffMinMs: 100, backoffMaxMs: 300 },
    lingerMs: 100,
    WebSocket: WebSocket as unknown as typeof globalThis.WebSocket,
    ...options,
  });
}

describe("a client of several servers", () => {
  it("moves its socket to the next URL when its node is lost, and goes on there", async () => {
    const a = await start("own-a");
    const b = await start("own-b");
    const log = new SocketLog();
    const client = clientOf([a.url, b.url], { WebSocket: log.WebSocket });
    const watching = new CounterSubscription(client, "node-loss");
    await until(watching, (s) => s.status === "connected" && s.version === 0);
    expect(log.urls).toEqual([`ws://127.0.0.1:${a.port}/ws`]);

    await a.stop();
    // Each node has its own database here: the subscription on b resumes after version 0 (or
    // starts over with b's snapshot), and b's write reaches it over b's socket.
    await until(watching, (s) => s.status === "connected" && log.urls.length > 1);
    expect(log.urls.at(-1)).toBe(`ws://127.0.0.1:${b.port}/ws`);
    expect(await readMetric(b.url, "tally_sessions_open")).toBe(1);
    await clientOf(b.url).increment("node-loss", 5);
    await until(watching, (s) => s.value === 5 && s.version === 1);
    watching.disable();
  });

  it("resumes on the next node of one database with no gap", async () => {
    const a = await start("shared");
    const portB = await freePort();
    const urls = [a.url, `http://127.0.0.1:${portB}`];
    const client = clientOf(urls);
    const watching = new CounterSubscription(client, "failover");
    const versions: number[] = [];
    watching.on("update", (update) => versions.push(update.version));
    await until(watching, (s) => s.status === "connected");
    await client.increment("failover", 1);
    await client.increment("failover", 1);
    await until(watching, (s) => s.version === 2);

    await a.stop();
    // The store's lock went with a, so b can open the same database.
    await start("shared", portB);
    // A client with no subscription writes over HTTP: a refuses connections, b applies them.
    const writer = clientOf(urls);
    for (let i = 0; i < 3; i++) await writer.increment("failover", 1);
    await until(watching, (s) => s.status === "connected" && s.version === 5 && s.value === 5);
    expect(versions).toEqual([1, 2, 3, 4, 5]);
    expect((await writer.getValue("failover")).version).toBe(5);
    watching.disable();
  });

  it("makes an HTTP call on the second URL when the first refuses connections", async () => {
    const server = await start("rpc");
    const client = clientOf([`http://127.0.0.1:${await freePort()}`, server.url]);
    const update = await client.increment("refused-first", 2);
    expect([update.value, update.version]).toEqual([2, 1]);
    const value = await clientOf([`http://127.0.0.1:${await freePort()}`, server.url]).getValue(
      "refused-first",
    );
    expect([value.value, value.version]).toEqual([2, 1]);
  });

  it("does not move on after a refusal: it is the cluster's answer", async () => {
    const a = await start("refusal-a");
    const b = await start("refusal-b");
    const client = clientOf([a.url, b.url]);
    const refusal = await client.increment("stays", 0).catch((error: unknown) => error);
    expect(refusal).toBeInstanceOf(TallyError);
    expect((refusal as TallyError).code).toBe("invalid_amount");
    await client.increment("stays", 1);
    expect((await clientOf(b.url).getValue("stays")).version).toBe(0);
    expect((await clientOf(a.url).getValue("stays")).version).toBe(1);
  });
});
