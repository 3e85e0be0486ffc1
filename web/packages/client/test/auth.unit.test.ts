// Credentials with fake timers, a scripted socket and a scripted fetch: the token is got before
// the first request, sent as `Authorization` on RPCs and as the first command on the socket,
// refreshed in band before it expires, got afresh after `token_expired` (RPC retried once) and
// after close 4502 (resumed with `since`); no reconnect after 4501 or 4503 or a credential
// refused in band; `can` from the snapshot; a token never in an error message.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { unsignedToken } from "../../../test-support/tokens.js";
import { inspectToken, TallyTokenError, type GetToken } from "../src/auth.js";
import { TallyClient, TallyError, type TallyClientOptions } from "../src/rpc.js";
import { CounterSubscription, type SubscriptionOptions } from "../src/subscription.js";
import { FakeSocket } from "./fake-socket.js";
import { lastSent, sent, snapshotReply, updatePush } from "./v2-frames.js";

/** A JWT for `sub` expiring `ttl` ms from now (fake time), with `n` to tell tokens apart. */
function jwt(sub: string, ttl: number, n = 0): string {
  return unsignedToken({ sub, exp: Math.floor((Date.now() + ttl) / 1000), n });
}

const API_KEY = `tally_abcdefghijkl${"s".repeat(43)}`;

/** Lets pending promises (getToken, fetch) settle without moving the clock. */
const settle = () => vi.advanceTimersByTimeAsync(0);

function clientWith(getToken: GetToken, options: Partial<TallyClientOptions> = {}) {
  return new TallyClient({
    baseUrl: "http://tally.test:8094",
    fetch: () => Promise.reject(new Error("no RPC here")),
    WebSocket: FakeSocket as unknown as typeof WebSocket,
    getToken,
    random: () => 1,
    ...options,
  });
}

function watch(client: TallyClient, options: SubscriptionOptions = {}) {
  return new CounterSubscription(client, "likes", options);
}

/** The commands sent on the newest socket but pings, without their ids. */
function commands(): unknown[] {
  return sent(FakeSocket.last)
    .filter((c) => c.type !== "ping")
    .map(({ id: _id, ...command }) => command);
}

/** Answers the newest socket's `auth` as accepted for `principal`. */
function authenticated(principal: string): void {
  const auth = lastSent(FakeSocket.last, "auth");
  FakeSocket.last.receive({ type: "authenticated", id: auth.id, principal });
}

/** Answers the newest socket's subscribe with a snapshot. */
function snapshotFor(value: number, version: number, can?: string[]): void {
  const id = lastSent(FakeSocket.last, "subscribe").id;
  FakeSocket.last.receive({
    ...snapshotReply(id, "likes", value, version),
    ...(can ? { can } : {}),
  });
}

/** Tokens handed out in order; the last one again once they run out. */
function tokens(...list: (string | null)[]) {
  let next = 0;
  return vi.fn(async () => list[Math.min(next++, list.length - 1)] ?? null);
}

beforeEach(() => {
  vi.useFakeTimers();
  vi.setSystemTime(new Date("2026-06-01T12:00:00.000Z"));
  FakeSocket.reset();
});

afterEach(() => {
  vi.useRealTimers();
});

describe("inspectToken", () => {
  it("reads a JWT's sub and exp, names API keys by their public id, and anonymous", () => {
    const token = unsignedToken({ sub: "alice", exp: 1_900_000_000 });
    expect(inspectToken(token)).toEqual({ principal: "alice", expiresAt: 1_900_000_000_000 });
    expect(inspectToken(API_KEY)).toEqual({ principal: "key:abcdefghijkl", expiresAt: null });
    expect(inspectToken(null)).toEqual({ principal: "anonymous", expiresAt: null });
    expect(inspectToken("not a token")).toEqual({ principal: "unreadable", expiresAt: null });
    // base64url, not base64: a payload with "-" and "_" in it.
    const odd = unsignedToken({ sub: "ü?>~", exp: 1 });
    expect(inspectToken(odd).principal).toBe("ü?>~");
  });
});

describe("RPC credentials", () => {
  function scriptedFetch(answers: { status: number; body: unknown; headers?: HeadersInit }[]) {
    const requests: { url: string; authorization: string | null }[] = [];
    const fetch = vi.fn(async (url: string | URL | Request, init?: RequestInit) => {
      const headers = new Headers(init?.headers);
      requests.push({ url: String(url), authorization: headers.get("Authorization") });
      const answer = answers[Math.min(requests.length - 1, answers.length - 1)];
      if (answer === undefined) throw new Error("no answer scripted");
      return new Response(JSON.stringify(answer.body), {
        status: answer.status,
        headers: answer.headers,
      });
    });
    return { fetch: fetch as unknown as typeof globalThis.fetch, requests };
  }

  const ok = { status: 200, body: { value: 1, version: 1 } };
  const expiredAnswer = {
    status: 401,
    body: { error: { code: "token_expired", message: "the token expired", temporary: false } },
  };

  it("gets the token before the first request and sends it as a bearer token", async () => {
    const token = jwt("alice", 3_600_000);
    const getToken = tokens(token);
    const { fetch, requests } = scriptedFetch([ok]);
    const client = clientWith(getToken, { fetch });
    expect(client.principal).toBeNull();
    await client.getValue("likes");
    await client.getValue("likes");
    expect(getToken).toHaveBeenCalledTimes(1);
    expect(requests.map((r) => r.authorization)).toEqual([`Bearer ${token}`, `Bearer ${token}`]);
    expect(client.principal).toBe("alice");
  });

  it("asks once for concurrent requests, and sends nothing for a null token", async () => {
    const getToken = tokens(null);
    const { fetch, requests } = scriptedFetch([ok]);
    const client = clientWith(getToken, { fetch });
    await Promise.all([client.getValue("a"), client.getValue("b"), client.getValue("c")]);
    expect(getToken).toHaveBeenCalledTimes(1);
    expect(requests.map((r) => r.authorization)).toEqual([null, null, null]);
    expect(client.principal).toBe("anonymous");
  });

  it("asks for a fresh token shortly before exp, and never again for an API key", async () => {
    const first = jwt("alice", 120_000, 1);
    const getToken = tokens(first, jwt("alice", 120_000, 2));
    const { fetch } = scriptedFetch([ok]);
    const client = clientWith(getToken, { fetch });
    await client.getValue("likes");
    // 30 s before exp by default.
    vi.setSystemTime(Date.now() + 89_000);
    await client.getValue("likes");
    expect(getToken).toHaveBeenCalledTimes(1);
    vi.setSystemTime(Date.now() + 1_000);
    await client.getValue("likes");
    expect(getToken).toHaveBeenCalledTimes(2);

    const keyed = tokens(API_KEY);
    const keyClient = clientWith(keyed, { fetch });
    await keyClient.getValue("likes");
    vi.setSystemTime(Date.now() + 365 * 86_400_000);
    await keyClient.getValue("likes");
    expect(keyed).toHaveBeenCalledTimes(1);
    expect(keyClient.principal).toBe("key:abcdefghijkl");
  });

  it("retries once with a fresh token after token_expired", async () => {
    const [stale, fresh] = [jwt("alice", 60_000, 1), jwt("alice", 3_600_000, 2)];
    const getToken = tokens(stale, fresh);
    const { fetch, requests } = scriptedFetch([expiredAnswer, ok]);
    const client = clientWith(getToken, { fetch });
    expect(await client.getValue("likes")).toEqual({ value: 1, version: 1 });
    expect(requests.map((r) => r.authorization)).toEqual([`Bearer ${stale}`, `Bearer ${fresh}`]);
    expect(getToken).toHaveBeenCalledTimes(2);
  });

  it("retries only once, and not at all when getToken has nothing fresh", async () => {
    const getToken = tokens(jwt("alice", 60_000, 1), jwt("alice", 60_000, 2));
    const twice = scriptedFetch([expiredAnswer]);
    const client = clientWith(getToken, { fetch: twice.fetch });
    const error = await client.increment("likes").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TallyError);
    expect(error).toMatchObject({ status: 401, code: "token_expired" });
    expect(twice.requests).toHaveLength(2);

    const same = scriptedFetch([expiredAnswer]);
    const stuck = clientWith(tokens(jwt("bob", 60_000)), { fetch: same.fetch });
    await expect(stuck.increment("likes")).rejects.toMatchObject({ code: "token_expired" });
    expect(same.requests).toHaveLength(1);
  });

  it("does not retry unauthenticated or forbidden", async () => {
    for (const code of ["unauthenticated", "forbidden"]) {
      const getToken = tokens(jwt("alice", 60_000, 1), jwt("alice", 60_000, 2));
      const status = code === "forbidden" ? 403 : 401;
      const { fetch, requests } = scriptedFetch([
        { status, body: { error: { code, message: "no", temporary: false } } },
      ]);
      const client = clientWith(getToken, { fetch });
      await expect(client.reset("likes")).rejects.toMatchObject({ status, code });
      expect(requests).toHaveLength(1);
      expect(getToken).toHaveBeenCalledTimes(1);
    }
  });

  it("reads the delay of rate_limited from the body, or else from Retry-After", async () => {
    const limited = (retryAfterMs?: number) => ({
      status: 429,
      headers: { "Retry-After": "2" },
      body: {
        error: { code: "rate_limited", message: "slow down", temporary: true, retryAfterMs },
      },
    });
    const fromBody = clientWith(tokens(null), { fetch: scriptedFetch([limited(150)]).fetch });
    await expect(fromBody.increment("likes")).rejects.toMatchObject({
      status: 429,
      code: "rate_limited",
      temporary: true,
      retryAfterMs: 150,
    });
    const fromHeader = clientWith(tokens(null), { fetch: scriptedFetch([limited()]).fetch });
    await expect(fromHeader.increment("likes")).rejects.toMatchObject({ retryAfterMs: 2000 });
  });

  it("wraps a failing getToken, and never puts a token in an error message", async () => {
    const failing = clientWith(() => Promise.reject(new Error("backend down")));
    const error = await failing.getValue("likes").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TallyTokenError);
    expect((error as Error).message).toBe("getToken failed: backend down");

    const token = jwt("alice", 60_000);
    const { fetch } = scriptedFetch([expiredAnswer]);
    const refused = await clientWith(tokens(token), { fetch })
      .getValue("likes")
      .catch((e: unknown) => e);
    expect(JSON.stringify(refused, Object.getOwnPropertyNames(refused))).not.toContain(token);
  });
});

describe("CounterSubscription credentials", () => {
  it("gets the token before connecting and sends it as the first command", async () => {
    const token = jwt("alice", 3_600_000);
    const getToken = tokens(token);
    const likes = watch(clientWith(getToken));
    expect(likes.getState().status).toBe("connecting");
    expect(FakeSocket.instances).toHaveLength(0);
    await settle();
    expect(getToken).toHaveBeenCalledTimes(1);
    const socket = FakeSocket.last;
    // Never in the URL: URLs end up in logs.
    expect(socket.url).toBe("ws://tally.test:8094/ws");
    socket.open();
    expect(commands()).toEqual([
      { type: "auth", token },
      { type: "subscribe", name: "likes" },
    ]);
    authenticated("alice");
    expect(likes.getState().principal).toBe("alice");
  });

  it("sends no auth for an anonymous (null) token", async () => {
    const likes = watch(clientWith(tokens(null)));
    await settle();
    FakeSocket.last.open();
    expect(commands()).toEqual([{ type: "subscribe", name: "likes" }]);
    snapshotFor(1, 1, ["read"]);
    expect(likes.getState()).toMatchObject({
      status: "connected",
      can: ["read"],
      principal: "anonymous",
    });
  });

  it("sends writes only once the socket's credential is accepted", async () => {
    const client = clientWith(tokens(jwt("alice", 3_600_000)));
    watch(client);
    void client.increment("likes");
    await settle();
    FakeSocket.last.open();
    expect(sent(FakeSocket.last, "call")).toHaveLength(0);
    authenticated("alice");
    expect(sent(FakeSocket.last, "call")).toHaveLength(1);
  });

  it("refreshes the token in band before it expires, on the same socket", async () => {
    const [first, second, third] = [1, 2, 3].map((n) => jwt("alice", 120_000 * n, n));
    const getToken = tokens(first as string, second as string, third as string);
    const likes = watch(clientWith(getToken, { reconnect: { pingIntervalMs: 3_600_000 } }));
    await settle();
    const socket = FakeSocket.last;
    socket.open();
    authenticated("alice");
    snapshotFor(5, 5);

    // First refresh 30 s before the first token's exp (120 s).
    await vi.advanceTimersByTimeAsync(89_999);
    expect(getToken).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(sent(socket, "auth").map((c) => c.token)).toEqual([first, second]);
    authenticated("alice");
    // And again before the second one's exp (240 s from the start).
    await vi.advanceTimersByTimeAsync(120_000);
    expect(sent(socket, "auth")).toHaveLength(3);
    expect(FakeSocket.instances).toHaveLength(1);
    expect(socket.closedWith).toBeNull();
    socket.receive(updatePush("likes", 5, 6, 6));
    expect(likes.getState()).toMatchObject({ status: "connected", value: 6 });
  });

  it("refreshes even when its timer fires a moment before the clock says it is due", async () => {
    const getToken = tokens(jwt("alice", 10_000, 1), jwt("alice", 10_000, 2));
    watch(clientWith(getToken));
    await settle();
    FakeSocket.last.open();
    // Node's timers may fire a millisecond before Date.now() reaches their time.
    vi.setSystemTime(Date.now() - 5);
    await vi.advanceTimersByTimeAsync(5_000);
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(sent(FakeSocket.last, "auth")).toHaveLength(2);
  });

  it("refreshes a short-lived token halfway through its life", async () => {
    const getToken = tokens(jwt("alice", 10_000, 1), jwt("alice", 10_000, 2));
    watch(clientWith(getToken));
    await settle();
    FakeSocket.last.open();
    await vi.advanceTimersByTimeAsync(4_999);
    expect(getToken).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(sent(FakeSocket.last, "auth")).toHaveLength(2);
  });

  it("tries a failing token source again after 1 s while the socket's token still works", async () => {
    let calls = 0;
    const getToken = vi.fn(async () => {
      calls += 1;
      if (calls === 2) throw new Error("backend down");
      return jwt("alice", 10_000, calls);
    });
    watch(clientWith(getToken));
    await settle();
    FakeSocket.last.open();
    authenticated("alice");
    await vi.advanceTimersByTimeAsync(5_000);
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(sent(FakeSocket.last, "auth")).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(getToken).toHaveBeenCalledTimes(3);
    expect(sent(FakeSocket.last, "auth")).toHaveLength(2);
  });

  it("does not refresh an API key", async () => {
    const getToken = tokens(API_KEY);
    watch(clientWith(getToken));
    await settle();
    FakeSocket.last.open();
    authenticated("key:abcdefghijkl");
    snapshotFor(1, 1);
    await vi.advanceTimersByTimeAsync(3_600_000);
    expect(getToken).toHaveBeenCalledTimes(1);
  });

  it("reconnects at once with a fresh token after 4502, resuming with since", async () => {
    const [stale, fresh] = [jwt("alice", 60_000, 1), jwt("alice", 3_600_000, 2)];
    const getToken = tokens(stale, fresh);
    const likes = watch(clientWith(getToken, { tokenRefreshMargin: 0 }));
    await settle();
    FakeSocket.last.open();
    authenticated("alice");
    snapshotFor(7, 7);
    FakeSocket.last.serverClose(4502, "the token expired");
    expect(likes.getState().error).toMatchObject({
      closeCode: 4502,
      code: "token_expired",
      willRetry: true,
    });

    await settle();
    await settle();
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(FakeSocket.instances).toHaveLength(2);
    FakeSocket.last.open();
    expect(commands()).toEqual([
      { type: "auth", token: fresh },
      { type: "subscribe", name: "likes", since: 7 },
    ]);
    authenticated("alice");
    const id = lastSent(FakeSocket.last, "subscribe").id;
    FakeSocket.last.receive({ type: "resumed", id, name: "likes", since: 7, version: 7 });
    expect(likes.getState()).toMatchObject({ status: "connected", error: null, version: 7 });
  });

  it("stops after 4502 when getToken has no fresh token, until the token is reset", async () => {
    const stale = jwt("alice", 60_000, 1);
    const getToken = tokens(stale, stale, jwt("alice", 3_600_000, 2));
    const client = clientWith(getToken);
    const likes = watch(client);
    await settle();
    FakeSocket.last.open();
    authenticated("alice");
    snapshotFor(1, 1);
    FakeSocket.last.serverClose(4502);
    await settle();
    await settle();
    expect(likes.getState()).toMatchObject({ status: "disconnected", retryAt: null });
    expect(likes.getState().error).toMatchObject({ code: "token_expired", willRetry: false });
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    expect(FakeSocket.instances).toHaveLength(1);

    // Signing in again brings it back, resuming.
    client.resetToken();
    await settle();
    expect(FakeSocket.instances).toHaveLength(2);
    FakeSocket.last.open();
    expect(lastSent(FakeSocket.last, "subscribe")).toMatchObject({ since: 1 });
  });

  it.each([
    [4501, "unauthenticated", "needs a valid token"],
    [4503, "forbidden", "may not watch"],
  ])("does not reconnect after %i, and says %s", async (code, errorCode, words) => {
    const token = jwt("alice", 3_600_000);
    const getToken = tokens(token);
    const likes = watch(clientWith(getToken));
    await settle();
    FakeSocket.last.open();
    FakeSocket.last.serverClose(code);
    const { error } = likes.getState();
    expect(error).toMatchObject({ closeCode: code, code: errorCode, willRetry: false });
    expect(error?.message).toContain(words);
    expect(error?.message).not.toContain(token);
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    expect(FakeSocket.instances).toHaveLength(1);
    expect(getToken).toHaveBeenCalledTimes(1);
  });

  it("stops as after 4501 when the server refuses the credential in band", async () => {
    const likes = watch(clientWith(tokens("not-a-token")));
    await settle();
    FakeSocket.last.open();
    const auth = lastSent(FakeSocket.last, "auth");
    FakeSocket.last.receive({
      type: "error",
      id: auth.id,
      code: "unauthenticated",
      message: "the token is not valid",
      temporary: false,
    });
    expect(FakeSocket.last.closedWith).toBe(1000);
    expect(likes.getState().error).toMatchObject({
      closeCode: 4501,
      code: "unauthenticated",
      willRetry: false,
    });
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    expect(FakeSocket.instances).toHaveLength(1);
  });

  it("takes can from the snapshot, and keeps it across a resume", async () => {
    const likes = watch(clientWith(tokens(jwt("alice", 3_600_000))));
    await settle();
    FakeSocket.last.open();
    authenticated("alice");
    snapshotFor(1, 1, ["read", "reset"]);
    expect(likes.getState().can).toEqual(["read", "reset"]);

    // A resume carries no can: the last one stands.
    FakeSocket.last.serverClose(1011);
    await vi.advanceTimersByTimeAsync(3_000);
    FakeSocket.last.open();
    authenticated("alice");
    const id = lastSent(FakeSocket.last, "subscribe").id;
    FakeSocket.last.receive({ type: "resumed", id, name: "likes", since: 1, version: 1 });
    expect(likes.getState().can).toEqual(["read", "reset"]);
  });

  it("reconnects with the new credential when the token is reset", async () => {
    const getToken = tokens(jwt("alice", 3_600_000), jwt("bob", 3_600_000));
    const client = clientWith(getToken);
    const likes = watch(client);
    await settle();
    FakeSocket.last.open();
    authenticated("alice");
    snapshotFor(3, 3, ["admin"]);
    client.resetToken();
    expect(FakeSocket.instances[0]?.closedWith).toBe(1000);
    // Nothing is known of what the new credential may do until the server says.
    expect(likes.getState().can).toBeNull();
    await settle();
    expect(FakeSocket.instances).toHaveLength(2);
    FakeSocket.last.open();
    expect(lastSent(FakeSocket.last, "subscribe")).toMatchObject({ since: 3 });
    authenticated("bob");
    expect(likes.getState().principal).toBe("bob");
    expect(client.principal).toBe("bob");
  });

  it("retries with the backoff when getToken fails", async () => {
    let fail = true;
    const getToken = vi.fn(async () => {
      if (fail) throw new Error("backend down");
      return jwt("alice", 3_600_000);
    });
    const likes = watch(clientWith(getToken));
    await settle();
    expect(FakeSocket.instances).toHaveLength(0);
    expect(likes.getState().error).toMatchObject({
      message: "getToken failed: backend down",
      willRetry: true,
    });
    fail = false;
    await vi.advanceTimersByTimeAsync(3_000);
    expect(FakeSocket.instances).toHaveLength(1);
  });

  it("opens no socket for a token that arrives after the connection lingered out", async () => {
    let resolve: (token: string) => void = () => {};
    const likes = watch(clientWith(() => new Promise<string>((r) => (resolve = r))));
    likes.disable();
    await vi.advanceTimersByTimeAsync(1000);
    resolve(jwt("alice", 3_600_000));
    await settle();
    expect(FakeSocket.instances).toHaveLength(0);
  });
});
