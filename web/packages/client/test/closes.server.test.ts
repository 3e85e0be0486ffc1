// Closes that say the client itself sent something wrong (1002, 1007, 1009) stop the client's
// socket for good against a real `tally serve`: it does not reconnect to send the same thing
// again (issue 16; the shared reconnect scenarios hold the rule for every such code).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SocketCount } from "../../../test-support/sockets.js";
import { TallyServer, tempDir } from "../../../test-support/server.js";
import { TallyClient } from "../src/rpc.js";
import { CounterSubscription } from "../src/subscription.js";
import { until } from "../../../test-support/until.js";

const dir = tempDir();
let server: TallyServer;
const sockets = new SocketCount();

beforeAll(async () => {
  server = await TallyServer.start(`${dir.path}/tally.db`);
});

afterAll(async () => {
  await server?.stop();
  dir.remove();
});

describe("a message over the server's limit", () => {
  it("is closed with 1009 and the socket stops instead of reconnecting", async () => {
    const client = new TallyClient({
      baseUrl: server.url,
      WebSocket: sockets.WebSocket,
      reconnect: { backoffMinMs: 10, backoffMaxMs: 20 },
    });
    const subscription = new CounterSubscription(client, "limit");
    await until(subscription, (s) => s.status === "connected");
    expect(sockets.made).toBe(1);

    // A field the server would refuse anyway, only there to make the message 5 KB.
    const big = { name: "limit", pad: "x".repeat(5000) } as unknown as { name: string };
    const call = client.connection.call("getValue", big);
    await expect(call).rejects.toThrow();

    const state = client.connection.getState();
    expect(state.status).toBe("stopped");
    // Stopped, not waiting to retry: the machine decided, so no clock is needed to see it.
    expect(state.error?.closeCode).toBe(1009);
    expect(state.error?.willRetry).toBe(false);
    expect(state.error?.message).toContain("at most 4096 bytes");
    expect(state.retryAt).toBeNull();
    expect(sockets.made).toBe(1);
    subscription.disable();
  });
});
