// Cases of the client's one socket that a review found broken, each kept as a test: an aborted
// write on its way still holds back the set/reset behind it and frees it when answered, no timer
// is left armed after a stop or an abort (a process exits once released), the writes a stop
// hands to HTTP keep their set/reset order, a later watch of a resumed counter is live, one
// handlers object watched twice counts twice, a socket whose token is no longer the one held
// refreshes at once, calls that are reads are bounded too, an unsubscribe refused for now is sent
// again, and a write of unknown fate is not sent again as another principal after a credential
// reset.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { unsignedToken } from "../../../test-support/tokens.js";
import { TallyConnectionError } from "../src/errors.js";
import { CounterSubscription } from "../src/subscription.js";
import type { WatchHandlers } from "../src/topic.js";
import { FakeSocket } from "./fake-socket.js";
import { clientWith, connect, settle } from "./scripted-client.js";
import { lastSent, resultReply, sent, snapshotReply, updatePush } from "./v2-frames.js";

const callNames = (socket: FakeSocket) =>
  sent(socket, "call").map((c) => `${c.procedure} ${c.name}`);

beforeEach(() => {
  vi.useFakeTimers();
  FakeSocket.reset();
});

afterEach(() => {
  vi.useRealTimers();
});

describe("an aborted write that is on its way", () => {
  it("rejects at once but holds the setValue behind it until its answer comes", async () => {
    const client = clientWith();
    client.connection.retain();
    const socket = connect();
    const controller = new AbortController();
    const first = client.increment("x", 1, { signal: controller.signal });
    const set = client.setValue("x", 5);
    expect(callNames(socket)).toEqual(["counter.increment x"]);
    const increment = lastSent(socket, "call");

    const reason = new Error("gave up");
    controller.abort(reason);
    expect(await first.catch((e: unknown) => e)).toBe(reason);
    // The server may still apply it: a setValue sent now could be overtaken by it.
    expect(callNames(socket)).toEqual(["counter.increment x"]);
    expect(client.connection.getState().pendingWrites).toBe(1);

    socket.receive(resultReply(increment.id, "x", 0, 1, 1));
    expect(callNames(socket)).toEqual(["counter.increment x", "counter.setValue x"]);
    socket.receive(resultReply(lastSent(socket, "call").id, "x", 1, 5, 2));
    expect((await set).version).toBe(2);
  });

  it("is not sent again after the socket drops", () => {
    const client = clientWith();
    client.connection.retain();
    const socket = connect();
    const controller = new AbortController();
    client.increment("x", 1, { signal: controller.signal }).catch(() => {});
    controller.abort();
    socket.serverClose(1006);
    vi.advanceTimersByTime(3000);
    connect();
    expect(sent(FakeSocket.last, "call")).toEqual([]);
  });
});

describe("timers after release", () => {
  it("leaves none armed after a stop with a write waiting out a refusal", async () => {
    const fetch = vi.fn(async () => new Response(JSON.stringify({ value: 1 }), { status: 200 }));
    const client = clientWith({ fetch });
    const release = client.connection.retain();
    const socket = connect();
    const write = client.increment("x");
    socket.receive({
      type: "error",
      id: lastSent(socket, "call").id,
      code: "rate_limited",
      message: "slow down",
      temporary: true,
      retryAfterMs: 60_000,
    });
    socket.serverClose(1008);
    await write;
    release();
    vi.advanceTimersByTime(1000);
    expect(client.connection.getState().status).toBe("idle");
    expect(vi.getTimerCount()).toBe(0);
  });

  it("leaves none armed once everything is released and the linger is over", async () => {
    const exp = Math.floor(Date.now() / 1000) + 3600;
    const client = clientWith({ getToken: () => unsignedToken({ sub: "alice", exp }) });
    const unwatchLikes = client.connection.watch("likes", {}, {});
    const unwatchBusy = client.connection.watch("busy", {}, {});
    await settle();
    const socket = FakeSocket.last;
    socket.open();
    socket.receive({ type: "authenticated", id: lastSent(socket, "auth").id, principal: "alice" });
    const [likes, busy] = sent(socket, "subscribe");
    socket.receive(snapshotReply(likes!.id, "likes", 1, 1));
    // A subscribe to wait for (a `later` timer), a write waiting out a refusal, and the
    // connection's own timers (token, ping, minimum uptime) are all armed now.
    socket.receive({
      type: "error",
      id: busy!.id,
      code: "too_many_watchers",
      message: "busy",
      temporary: true,
      retryAfterMs: 30_000,
    });
    const write = client.increment("likes");
    socket.receive({
      type: "error",
      id: lastSent(socket, "call").id,
      code: "unavailable",
      message: "storage is down",
      temporary: true,
    });
    expect(vi.getTimerCount()).toBeGreaterThan(3);
    vi.advanceTimersByTime(5_000);
    socket.receive(resultReply(lastSent(socket, "call").id, "likes", 1, 2, 2));
    await write;
    unwatchLikes();
    unwatchBusy();
    vi.advanceTimersByTime(1000);
    expect(client.connection.getState().status).toBe("idle");
    expect(socket.closedWith).toBe(1000);
    expect(vi.getTimerCount()).toBe(0);
  });

  it("leaves none armed after aborting a write that waited out a refusal", async () => {
    const client = clientWith();
    const release = client.connection.retain();
    const socket = connect();
    const controller = new AbortController();
    const write = client.increment("x", 1, { signal: controller.signal }).catch(() => {});
    socket.receive({
      type: "error",
      id: lastSent(socket, "call").id,
      code: "rate_limited",
      message: "slow down",
      temporary: true,
      retryAfterMs: 60_000,
    });
    controller.abort();
    await write;
    release();
    vi.advanceTimersByTime(1000);
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe("a stop hands the waiting writes to HTTP", () => {
  it("in their set/reset order", async () => {
    const answers: ((response: Response) => void)[] = [];
    const bodies: string[] = [];
    const fetch = vi.fn((url: string | URL | Request, init?: RequestInit) => {
      bodies.push(`${String(url).split("counter.")[1]} ${String(init?.body)}`);
      return new Promise<Response>((resolve) => answers.push(resolve));
    });
    const client = clientWith({ fetch });
    client.connection.retain();
    const socket = connect();
    const writes = [client.increment("x"), client.setValue("x", 5), client.increment("x")];
    socket.serverClose(1008);
    await settle();
    expect(bodies).toEqual(['increment {"name":"x"}']);
    const ok = (version: number) =>
      new Response(JSON.stringify({ version }), { status: 200 }) as Response;
    answers[0]!(ok(1));
    await settle();
    expect(bodies.at(-1)).toBe('setValue {"name":"x","value":5}');
    expect(bodies).toHaveLength(2);
    answers[1]!(ok(2));
    await settle();
    expect(bodies.at(-1)).toBe('increment {"name":"x"}');
    answers[2]!(ok(3));
    expect(((await Promise.all(writes)) as { version: number }[]).map((u) => u.version)).toEqual([
      1, 2, 3,
    ]);
  });
});

describe("watches", () => {
  it("a later watch of a counter resumed with since is live at once", () => {
    const client = clientWith();
    const first = new CounterSubscription(client, "likes", { since: 5 });
    const socket = connect();
    const subscribe = lastSent(socket, "subscribe");
    socket.receive({ type: "resumed", id: subscribe.id, name: "likes", since: 5, version: 5 });
    expect(first.getState().status).toBe("connected");

    const second = new CounterSubscription(client, "likes");
    expect(second.getState()).toMatchObject({ status: "connected", version: 5 });
    socket.receive(updatePush("likes", 5, 6, 6));
    expect(second.getState()).toMatchObject({ value: 6, version: 6 });
  });

  it("one handlers object watched twice is two watches", () => {
    const connection = clientWith().connection;
    const seen: number[] = [];
    const handlers: WatchHandlers = { update: (u) => seen.push(u.version) };
    const unwatchFirst = connection.watch("likes", {}, handlers);
    const unwatchSecond = connection.watch("likes", {}, handlers);
    const socket = connect();
    socket.receive(snapshotReply(lastSent(socket, "subscribe").id, "likes", 1, 1));
    unwatchFirst();
    expect(sent(socket, "unsubscribe")).toEqual([]);
    socket.receive(updatePush("likes", 1, 2, 2));
    expect(seen).toEqual([2]);
    unwatchSecond();
    expect(sent(socket, "unsubscribe")).toHaveLength(1);
  });
});

describe("an unsubscribe refused for now", () => {
  it("is sent again after retryAfterMs, so that a later subscribe is not already_subscribed", () => {
    const connection = clientWith().connection;
    connection.retain();
    const unwatch = connection.watch("likes", {}, {});
    const socket = connect();
    socket.receive(snapshotReply(lastSent(socket, "subscribe").id, "likes", 1, 1));
    unwatch();
    socket.receive({
      type: "error",
      id: lastSent(socket, "unsubscribe").id,
      code: "rate_limited",
      message: "more than 1000 commands per second on this socket",
      temporary: true,
      retryAfterMs: 400,
    });
    vi.advanceTimersByTime(399);
    expect(sent(socket, "unsubscribe")).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(sent(socket, "unsubscribe").map((u) => u.name)).toEqual(["likes", "likes"]);
  });

  it("is not sent again on a new socket, which never had the subscription", () => {
    const connection = clientWith().connection;
    connection.retain();
    const unwatch = connection.watch("likes", {}, {});
    const socket = connect();
    socket.receive(snapshotReply(lastSent(socket, "subscribe").id, "likes", 1, 1));
    unwatch();
    socket.receive({
      type: "error",
      id: lastSent(socket, "unsubscribe").id,
      code: "rate_limited",
      message: "slow down",
      temporary: true,
      retryAfterMs: 400,
    });
    socket.serverClose(1006);
    vi.advanceTimersByTime(3000);
    connect();
    vi.advanceTimersByTime(1000);
    expect(sent(FakeSocket.last, "unsubscribe")).toEqual([]);
  });
});

describe("credentials", () => {
  it("refreshes at once a socket opened with a token that is no longer the one held", async () => {
    const exp = Math.floor(Date.now() / 1000) + 3600;
    const tokens = [1, 2].map((n) => unsignedToken({ sub: "alice", exp, n }));
    let calls = 0;
    const client = clientWith({ getToken: () => tokens[calls++] ?? null });
    client.connection.retain();
    await settle();
    // An HTTP answer said the token expired, and a fresh one was got before the socket opened.
    client.credentials.expired(tokens[0]!);
    expect(await client.credentials.token()).toBe(tokens[1]);
    const socket = FakeSocket.last;
    socket.open();
    const firstAuth = lastSent(socket, "auth");
    socket.receive({ type: "authenticated", id: firstAuth.id, principal: "alice" });
    await settle();
    expect(sent(socket, "auth").map((a) => a.token)).toEqual(tokens);
  });
});

describe("a credential reset", () => {
  it("does not send a write of unknown fate again as the new principal", async () => {
    const exp = Math.floor(Date.now() / 1000) + 3600;
    let user = "alice";
    const client = clientWith({ getToken: () => unsignedToken({ sub: user, exp }) });
    client.connection.retain();
    await settle();
    const first = FakeSocket.last;
    first.open();
    first.receive({ type: "authenticated", id: lastSent(first, "auth").id, principal: "alice" });
    const inFlight = client.increment("likes", 1, { idempotencyKey: "alice-click" });
    expect(lastSent(first, "call").idempotencyKey).toBe("alice-click");
    first.serverClose(1006);
    // Made while away, never sent: it goes as whoever is signed in when it is sent.
    const queued = client.increment("likes", 1, { idempotencyKey: "later-click" });

    user = "bob";
    client.resetToken();
    // For bob the key is a new one: sent again, the write could count twice.
    const refused = await inFlight.catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(TallyConnectionError);
    expect(refused).toMatchObject({ idempotencyKey: "alice-click" });
    expect((refused as Error).message).toContain("may or may not have been applied");
    await settle();
    const second = FakeSocket.last;
    expect(second).not.toBe(first);
    second.open();
    second.receive({ type: "authenticated", id: lastSent(second, "auth").id, principal: "bob" });
    expect(sent(second, "call").map((c) => c.idempotencyKey)).toEqual(["later-click"]);
    second.receive(resultReply(lastSent(second, "call").id, "likes", 0, 1, 1));
    expect((await queued).version).toBe(1);
    expect(client.connection.getState().pendingWrites).toBe(0);
  });
});

describe("a credential reset over HTTP", () => {
  it("does not send a write of unknown fate again as the new principal", async () => {
    const exp = Math.floor(Date.now() / 1000) + 3600;
    let user = "alice";
    const fetch = vi.fn(() => Promise.reject(new TypeError("fetch failed")));
    const client = clientWith({ fetch, getToken: () => unsignedToken({ sub: user, exp }) });
    const write = client.increment("likes", 1, { idempotencyKey: "alice-click" });
    write.catch(() => {});
    await settle();
    expect(fetch).toHaveBeenCalledTimes(1);
    user = "bob";
    client.resetToken();
    await vi.advanceTimersByTimeAsync(1000);
    const refused = await write.catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(TallyConnectionError);
    expect(refused).toMatchObject({ idempotencyKey: "alice-click" });
    expect(fetch).toHaveBeenCalledTimes(1);
  });
});

describe("bounds", () => {
  it("refuses a read over the socket past maxQueuedWrites calls waiting", async () => {
    const connection = clientWith({ maxQueuedWrites: 2 }).connection;
    const reads = [
      connection.call("getValue", { name: "a" }),
      connection.call("getValue", { name: "b" }),
    ];
    const refused = await connection.call("getValue", { name: "c" }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(TallyConnectionError);
    expect((refused as Error).message).toContain("2");
    const socket = connect();
    for (const call of sent(socket, "call")) {
      socket.receive({ type: "result", id: call.id, result: { value: 0, version: 0 } });
    }
    await Promise.all(reads);
  });
});
