// The client's credentials against a real `tally serve --jwt-secret-file`: bearer RPCs and their
// refusals (nothing changes), one retry with a fresh token after token_expired, sockets that
// authenticate in band and say what they may do, subscribes refused for who may not read and a
// refused credential without a reconnect, an in-band refresh that keeps a socket open with no
// missed update, a reconnect with a fresh token after 4502, `by` for admins only, and the write
// rate's 429 with its delay.
import { mkdirSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { SocketCount } from "../../../test-support/sockets.js";
import { TallyServer, tempDir, type JwtServer } from "../../../test-support/server.js";
import type { TestClaims } from "../../../test-support/tokens.js";
import { until } from "../../../test-support/until.js";
import type { GetToken } from "../src/auth.js";
import type { Update } from "../src/protocol.js";
import { TallyClient, TallyError } from "../src/rpc.js";
import { CounterSubscription } from "../src/subscription.js";

const dir = tempDir();
let jwt: JwtServer;

/** Sockets opened through the client, to tell a refresh in band from a reconnect. */
const sockets = new SocketCount();

function clientWith(getToken?: GetToken, options: { tokenRefreshMargin?: number } = {}) {
  return new TallyClient({
    baseUrl: jwt.server.url,
    WebSocket: sockets.WebSocket,
    getToken,
    ...options,
  });
}

/** A client acting as `claims`' subject with a long-lived token. */
function as(claims: TestClaims) {
  const token = jwt.token(claims);
  return clientWith(() => token);
}

const admin = () => as({ sub: "root", grants: ["*=admin"] });

async function refusal(promise: Promise<unknown>): Promise<TallyError> {
  const error = await promise.then(
    () => expect.unreachable("the server accepted it"),
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(TallyError);
  return error as TallyError;
}

beforeAll(async () => {
  jwt = await TallyServer.startWithJwt(dir.path, {
    anonymous: ["public:*=read"],
    // No leeway, so that short-lived tokens expire when their `exp` says; a short wait for the
    // first message of a socket without credentials.
    args: ["--jwt-leeway", "0s", "--auth-timeout", "1s"],
  });
});

afterAll(async () => {
  await jwt?.server.stop();
  dir.remove();
});

describe("RPC with tokens", () => {
  it("does what the grants allow, and refuses the rest without changing anything", async () => {
    const writer = as({ sub: "alice", grants: ["likes:*=read,increment<=1"] });
    expect(await writer.increment("likes:1")).toMatchObject({ value: 1, version: 1 });

    const overCap = await refusal(writer.increment("likes:1", 5));
    expect(overCap).toMatchObject({ status: 403, code: "forbidden" });
    const notGranted = await refusal(writer.reset("likes:1"));
    expect(notGranted).toMatchObject({ status: 403, code: "forbidden" });
    expect(notGranted.message).toContain("reset");

    const nobody = await refusal(clientWith().getValue("likes:1"));
    expect(nobody).toMatchObject({ status: 401, code: "unauthenticated" });
    const garbage = await refusal(clientWith(() => "not-a-token").getValue("likes:1"));
    expect(garbage).toMatchObject({ status: 401, code: "unauthenticated" });

    expect(await admin().getValue("likes:1")).toEqual({ value: 1, version: 1 });
    // Anonymous may read what --anonymous grants.
    expect(await clientWith().getValue("public:x")).toEqual({ value: 0, version: 0 });
  });

  it("gets a fresh token and sends the request again after token_expired", async () => {
    const tokens = [
      jwt.token({ sub: "alice", grants: ["retry=read,increment"], ttlSeconds: -60 }),
      jwt.token({ sub: "alice", grants: ["retry=read,increment"] }),
    ];
    const getToken = vi.fn(() => tokens.shift() ?? null);
    const client = clientWith(getToken);
    expect(await client.increment("retry")).toMatchObject({ value: 1, version: 1 });
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(await admin().getValue("retry")).toEqual({ value: 1, version: 1 });
  });

  it("answers too many writes with 429 and how long to wait", async () => {
    const own = `${dir.path}/rate`;
    mkdirSync(own);
    const limited = await TallyServer.startWithJwt(own, {
      args: ["--write-rate", "1", "--write-burst", "1"],
    });
    try {
      const token = limited.token({ sub: "hasty", grants: ["*=admin"] });
      const client = new TallyClient({ baseUrl: limited.server.url, getToken: () => token });
      await client.increment("rate");
      const error = await refusal(client.increment("rate"));
      expect(error).toMatchObject({ status: 429, code: "rate_limited", temporary: true });
      expect(error.retryAfterMs).toBeGreaterThan(0);
      expect(error.retryAfterMs).toBeLessThanOrEqual(1000);
    } finally {
      await limited.server.stop();
    }
  });
});

describe("subscriptions with tokens", () => {
  it("authenticate in band and say what they may do", async () => {
    const reader = new CounterSubscription(
      as({ sub: "reader", grants: ["watch:*=read"] }),
      "watch:a",
    );
    const state = await until(reader, (s) => s.status === "connected" && s.can !== null);
    expect(state.can).toEqual(["read"]);
    expect(state.principal).toBe("reader");

    const writer = new CounterSubscription(
      as({ sub: "writer", grants: ["watch:*=read,increment"] }),
      "watch:a",
    );
    await until(writer, (s) => s.status === "connected" && s.can?.includes("increment") === true);
    await writer.client.increment("watch:a");
    await until(reader, (s) => s.version === 1);
    reader.disable();
    writer.disable();
  });

  it("show who made a change to admins only", async () => {
    const seen = { admin: [] as Update[], reader: [] as Update[] };
    const asAdmin = new CounterSubscription(admin(), "by:a");
    const asReader = new CounterSubscription(as({ sub: "r", grants: ["by:*=read"] }), "by:a");
    asAdmin.on("update", (u) => seen.admin.push(u));
    asReader.on("update", (u) => seen.reader.push(u));
    await until(asAdmin, (s) => s.status === "connected");
    await until(asReader, (s) => s.status === "connected");
    await as({ sub: "alice", grants: ["by:*=increment"] }).increment("by:a");
    await until(asAdmin, (s) => s.version === 1);
    await until(asReader, (s) => s.version === 1);
    expect(seen.admin[0]?.by).toBe("alice");
    expect(seen.reader[0]).not.toHaveProperty("by");
    const history = await admin().getHistory("by:a");
    expect(history.entries[0]?.by).toBe("alice");
    asAdmin.disable();
    asReader.disable();
  });

  it("end when the socket's principal may not read the counter, without reconnecting", async () => {
    const before = sockets.made;
    // On version 2 a socket without credentials acts as anonymous; the subscribe is refused.
    const nobody = new CounterSubscription(clientWith(), "private:a");
    const unauthenticated = await until(nobody, (s) => s.error !== null);
    expect(unauthenticated.error).toMatchObject({ code: "unauthenticated", willRetry: false });
    expect(unauthenticated.status).toBe("disconnected");

    const other = new CounterSubscription(as({ sub: "o", grants: ["else:*=read"] }), "private:a");
    const forbidden = await until(other, (s) => s.error !== null);
    expect(forbidden.error).toMatchObject({ code: "forbidden", willRetry: false });

    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect(sockets.made - before).toBe(2);
    nobody.disable();
    other.disable();
  });

  it("stop as 4501 when the socket's credential is refused in band", async () => {
    const before = sockets.made;
    const client = clientWith(() => "not-a-token");
    const refused = new CounterSubscription(client, "public:a");
    const state = await until(refused, (s) => s.error !== null);
    expect(state.error).toMatchObject({
      closeCode: 4501,
      code: "unauthenticated",
      willRetry: false,
    });
    expect(client.connection.getState().status).toBe("stopped");
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(sockets.made - before).toBe(1);
    refused.disable();
  });

  it("refresh a short-lived token in band: one socket, no missed update", async () => {
    const grants = ["refresh:*=read"];
    const getToken = vi.fn(() => jwt.token({ sub: "short", grants, ttlSeconds: 3 }));
    const client = clientWith(getToken);
    const before = sockets.made;
    const watching = new CounterSubscription(client, "refresh:a");
    const versions: number[] = [];
    watching.on("update", (u) => versions.push(u.version));
    await until(watching, (s) => s.status === "connected");

    // Writes for longer than two lifetimes of the token; each refresh comes halfway through.
    const writer = admin();
    for (let i = 0; i < 14; i++) {
      await writer.increment("refresh:a");
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    await until(watching, (s) => s.version === 14);
    expect(versions).toEqual(Array.from({ length: 14 }, (_, i) => i + 1));
    expect(sockets.made - before).toBe(1);
    expect(getToken.mock.calls.length).toBeGreaterThanOrEqual(3);
    expect(watching.getState()).toMatchObject({ status: "connected", error: null });
    watching.disable();
  });

  it("reconnect with a fresh token after 4502, resuming with since", async () => {
    const grants = ["expiry:*=read"];
    const first = jwt.token({ sub: "late", grants, ttlSeconds: 2 });
    // The refresh halfway gets the same token (nothing fresh yet), so the socket expires.
    let calls = 0;
    const getToken = vi.fn(() => (++calls <= 2 ? first : jwt.token({ sub: "late", grants })));
    const watching = new CounterSubscription(clientWith(getToken), "expiry:a");
    const versions: number[] = [];
    watching.on("update", (u) => versions.push(u.version));
    await until(watching, (s) => s.status === "connected");
    const writer = admin();
    await writer.increment("expiry:a");

    const expired = await until(watching, (s) => s.error?.closeCode === 4502, 10_000);
    expect(expired.error).toMatchObject({ code: "token_expired", willRetry: true });
    // A write around the reconnect is replayed by the resume, or arrives live.
    await writer.increment("expiry:a");
    await until(watching, (s) => s.status === "connected" && s.version === 2);
    await writer.increment("expiry:a");
    await until(watching, (s) => s.version === 3);
    expect(versions).toEqual([1, 2, 3]);
    expect(getToken).toHaveBeenCalledTimes(3);
    watching.disable();
  });
});
