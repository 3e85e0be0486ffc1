// `client.connection.watchServer` against a real `tally serve` that requires tokens: an admin's
// watch gets the server's figures once a second, and they count the writes made meanwhile; two
// watches share the socket's one `watchServer`; a token that is not an admin's is refused with
// the server's code; and a new credential is asked again on the next socket.
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { TallyServer, tempDir, type JwtServer } from "../../../test-support/server.js";
import { SocketCount } from "../../../test-support/sockets.js";
import type { ServerStats } from "../src/socket-frames.js";
import { TallyClient } from "../src/rpc.js";
import type { TallyWatchError } from "../src/watch-error.js";

const dir = tempDir();
let jwt: JwtServer;

beforeAll(async () => {
  jwt = await TallyServer.startWithJwt(dir.path);
});

afterAll(async () => {
  await jwt?.server.stop();
  dir.remove();
});

/** WebSockets made by the clients of this file. */
const sockets = new SocketCount();

function clientWith(getToken: () => string | null): TallyClient {
  return new TallyClient({
    WebSocket: sockets.WebSocket,
    baseUrl: jwt.server.url,
    getToken: async () => getToken(),
    lingerMs: 50,
  });
}

/** Resolves once `done()` holds, checking every 20 ms for up to 10 s. */
function until(done: () => boolean): Promise<void> {
  return vi.waitFor(() => expect(done()).toBe(true), { timeout: 10_000, interval: 20 });
}

describe("watchServer", () => {
  it("pushes an admin the server's figures, which count the writes made", async () => {
    const token = jwt.token({ sub: "root", grants: ["*=admin"] });
    const client = clientWith(() => token);
    const seen: ServerStats[] = [];
    const also: ServerStats[] = [];
    const stop = client.connection.watchServer({ stats: (stats) => seen.push(stats) });
    const stopToo = client.connection.watchServer({ stats: (stats) => also.push(stats) });
    await until(() => seen.length >= 1);
    expect(seen[0]?.ready).toBe(true);
    expect(seen[0]?.connections).toBeGreaterThanOrEqual(1);
    for (let i = 0; i < 50; i++) await client.increment("stats:a");
    await until(() => seen.some((stats) => stats.opsPerSecond > 0));
    expect(also.length).toBeGreaterThanOrEqual(1);
    expect(sockets.made).toBe(1);
    stop();
    stopToo();
  });

  it("refuses a token that is not an admin's, then serves the admin it signs in as", async () => {
    let token: string | null = jwt.token({ sub: "reader", grants: ["stats:*=read"] });
    const client = clientWith(() => token);
    const ended: TallyWatchError[] = [];
    const seen: ServerStats[] = [];
    const stop = client.connection.watchServer({
      stats: (stats) => seen.push(stats),
      ended: (error) => ended.push(error),
    });
    await until(() => ended.length === 1);
    expect(ended[0]?.code).toBe("forbidden");
    expect(ended[0]?.message).toContain("admin on every counter");
    expect(seen).toEqual([]);
    token = jwt.token({ sub: "root", grants: ["*=admin"] });
    client.resetToken();
    await until(() => seen.length >= 1);
    stop();
  });
});
