// The version-2 socket's subscription options and in-band credentials against a real
// `tally serve`: a `types` filter delivers only the listed updates (versions jump over the
// others, which is not a gap), `maxRate` conflates a burst into a few updates that jump and ends
// with the last state, and a socket with short-lived JWTs refreshes them in band across several
// lifetimes with no reconnect, its subscription and its writes going on.
import { mkdirSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { SocketCount } from "../../../test-support/sockets.js";
import { TallyServer, tempDir, type JwtServer } from "../../../test-support/server.js";
import { until } from "../../../test-support/until.js";
import type { Update } from "../src/protocol.js";
import { TallyClient, type TallyClientOptions } from "../src/rpc.js";
import { CounterSubscription } from "../src/subscription.js";

const dir = tempDir();
let server: TallyServer;
let jwt: JwtServer;

/** WebSockets the clients of this file made, to tell a reconnect from none. */
const sockets = new SocketCount();

function clientFor(baseUrl: string, options: Partial<TallyClientOptions> = {}) {
  return new TallyClient({
    baseUrl,
    WebSocket: sockets.WebSocket,
    lingerMs: 100,
    ...options,
  });
}

beforeAll(async () => {
  server = await TallyServer.start(`${dir.path}/plain.db`);
  mkdirSync(`${dir.path}/jwt`);
  // No leeway: a token not replaced in band by its `exp` closes the socket with 4502.
  jwt = await TallyServer.startWithJwt(`${dir.path}/jwt`, { args: ["--jwt-leeway", "0s"] });
});

afterAll(async () => {
  await server?.stop();
  await jwt?.server.stop();
  dir.remove();
});

describe("subscription options over the socket", () => {
  it("types: only the listed updates arrive, and the versions between are not a gap", async () => {
    const client = clientFor(server.url);
    const watching = new CounterSubscription(client, "typed", { types: ["setValue", "reset"] });
    const seen: string[] = [];
    watching.on("update", (u) => seen.push(`${u.type} ${u.value} v${u.version}`));
    await until(watching, (s) => s.status === "connected");
    const before = sockets.made;

    const writer = clientFor(server.url);
    await writer.increment("typed");
    await writer.increment("typed");
    await writer.setValue("typed", 10);
    await writer.increment("typed", 3);
    await writer.reset("typed");
    await writer.increment("typed");
    await writer.setValue("typed", 7);
    await until(watching, (s) => s.version === 7);
    expect(seen).toEqual(["setValue 10 v3", "reset 0 v5", "setValue 7 v7"]);
    expect(watching.getState()).toMatchObject({ value: 7, status: "connected", error: null });
    // A jump taken for a gap would have made the client resubscribe, not reconnect; neither
    // happened: the same socket, and no update twice.
    expect(sockets.made).toBe(before);
    watching.disable();
  });

  it("maxRate: a burst comes as a few conflated updates that jump, ending with the last state", async () => {
    const client = clientFor(server.url);
    const updates: (Update & { conflated?: boolean })[] = [];
    const unwatch = client.connection.watch(
      "conflated",
      { maxRate: 2 },
      { update: (u) => updates.push(u) },
    );
    const watching = new CounterSubscription(client, "conflated", { maxRate: 2 });
    await until(watching, (s) => s.status === "connected");

    const writer = clientFor(server.url);
    for (let i = 0; i < 30; i++) await writer.increment("conflated");
    const stoppedAt = Date.now();
    // The last state leaves the server within 1/R s of the last write.
    await until(watching, (s) => s.version === 30 && s.value === 30, 5_000);
    expect(Date.now() - stoppedAt).toBeLessThan(2_000);

    expect(updates.length).toBeGreaterThan(0);
    expect(updates.length).toBeLessThan(30);
    expect(updates.every((u) => u.conflated === true)).toBe(true);
    const versions = updates.map((u) => u.version);
    expect(versions).toEqual([...versions].sort((a, b) => a - b));
    expect(new Set(versions).size).toBe(versions.length);
    expect(versions.some((v, i) => i > 0 && v - (versions[i - 1] as number) > 1)).toBe(true);
    expect(updates.at(-1)).toMatchObject({ version: 30, value: 30 });
    // Each is the counter's state at that version.
    for (const update of updates) expect(update.value).toBe(update.version);
    unwatch();
    watching.disable();
  });
});

describe("in-band token refresh", () => {
  it("keeps one socket and its subscription across several lifetimes of a short-lived JWT", async () => {
    const grants = ["inband:*=read,increment"];
    const getToken = vi.fn(() => jwt.token({ sub: "brief", grants, ttlSeconds: 3 }));
    // Writes must go over the socket: an HTTP request fails the test.
    const fetch = vi.fn(() => Promise.reject(new Error("this write went over HTTP")));
    const client = clientFor(jwt.server.url, { getToken, fetch });
    const before = sockets.made;
    const watching = new CounterSubscription(client, "inband:a");
    const statuses = new Set<string>();
    watching.subscribe(() => statuses.add(watching.getState().status));
    const versions: number[] = [];
    watching.on("update", (u) => versions.push(u.version));
    await until(watching, (s) => s.status === "connected" && s.principal === "brief");
    statuses.clear();

    // About ten seconds: more than three lifetimes of the token, each refreshed before its end.
    const writes = 20;
    for (let i = 0; i < writes; i++) {
      const answer = await client.increment("inband:a");
      expect(answer.version).toBe(i + 1);
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    await until(watching, (s) => s.version === writes);
    expect(versions).toEqual(Array.from({ length: writes }, (_, i) => i + 1));
    expect(sockets.made - before).toBe(1);
    expect(getToken.mock.calls.length).toBeGreaterThanOrEqual(4);
    expect(fetch).not.toHaveBeenCalled();
    expect([...statuses]).toEqual(["connected"]);
    expect(watching.getState()).toMatchObject({ status: "connected", error: null });
    watching.disable();
  }, 30_000);
});
