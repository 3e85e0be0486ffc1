// `client.deleteCounter` against a real `tally serve` process: the counter's state goes, a
// subscription to it ends with its state saying `deleted` (and does not reconnect in a loop),
// enabling it again watches the counter start over at version 0, and only `admin` may delete.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SocketCount } from "../../../test-support/sockets.js";
import { TallyServer, tempDir, type JwtServer } from "../../../test-support/server.js";
import { until } from "../../../test-support/until.js";
import { TallyClient, TallyError } from "../src/rpc.js";
import { CounterSubscription } from "../src/subscription.js";

const dir = tempDir();
let jwt: JwtServer;
let admin: TallyClient;

beforeAll(async () => {
  jwt = await TallyServer.startWithJwt(dir.path);
  const token = jwt.token({ sub: "root", grants: ["*=admin"] });
  // Node.js 20 has no WebSocket of its own.
  admin = new TallyClient({
    baseUrl: jwt.server.url,
    getToken: () => token,
    WebSocket: new SocketCount().WebSocket,
  });
});

afterAll(async () => {
  await jwt?.server.stop();
  dir.remove();
});

describe("client.deleteCounter", () => {
  it("ends the counter's subscriptions as deleted and a new watch starts at version 0", async () => {
    for (let step = 0; step < 3; step += 1) await admin.increment("doomed");
    const watching = new CounterSubscription(admin, "doomed");
    await until(watching, (s) => s.status === "connected" && s.version === 3);

    expect(await admin.deleteCounter("doomed")).toEqual({
      name: "doomed",
      deleted: true,
      version: 3,
    });
    const ended = await until(watching, (s) => s.deleted);
    expect(ended.status).toBe("disconnected");
    expect(ended.error?.code).toBe("counter_deleted");
    expect(ended.retryAt).toBeNull();
    expect(await admin.getValue("doomed")).toEqual({ value: 0, version: 0 });
    // Deleting again is no error.
    expect(await admin.deleteCounter("doomed")).toEqual({
      name: "doomed",
      deleted: false,
      version: 0,
    });

    watching.disable();
    watching.enable();
    await admin.increment("doomed", 7);
    const again = await until(watching, (s) => s.status === "connected" && s.version === 1);
    expect(again).toMatchObject({ value: 7, deleted: false, error: null });
    watching.disable();
  });

  it("is refused without admin on the counter, and nothing is deleted", async () => {
    await admin.increment("guarded", 2);
    const token = jwt.token({ sub: "writer", grants: ["*=read,increment"] });
    const writer = new TallyClient({ baseUrl: jwt.server.url, getToken: () => token });
    const refusal = await writer.deleteCounter("guarded").catch((error: unknown) => error);
    expect(refusal).toBeInstanceOf(TallyError);
    expect(refusal).toMatchObject({ status: 403, code: "forbidden" });
    const invalid = await admin.deleteCounter("no spaces").catch((error: unknown) => error);
    expect(invalid).toMatchObject({ status: 400, code: "invalid_name" });
    expect(await admin.getValue("guarded")).toEqual({ value: 2, version: 1 });
  });
});
