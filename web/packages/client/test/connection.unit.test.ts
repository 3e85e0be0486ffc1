// The client's one socket with fake timers and a scripted socket: reference counting and the
// linger, subscribes and their resume with `since`, two watches of one counter, the write queue
// (order, bound, set/reset barriers, the same key again after a drop, temporary refusals, abort),
// pendingWrites, the browser's offline/online events, and the server's advised delay.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { TallyConnectionError, TallyError } from "../src/errors.js";
import type { Update } from "../src/protocol.js";
import { CounterSubscription } from "../src/subscription.js";
import { FakeSocket } from "./fake-socket.js";
import { clientWith, connect, settle } from "./scripted-client.js";
import { lastSent, resultReply, sent, snapshotReply, updatePush } from "./v2-frames.js";

beforeEach(() => {
  vi.useFakeTimers();
  FakeSocket.reset();
});

afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

describe("reference counting", () => {
  it("opens one socket at the first retain and closes it a linger after the last release", () => {
    const client = clientWith();
    const connection = client.connection;
    expect(client.connection).toBe(connection);
    expect(FakeSocket.instances).toHaveLength(0);

    const first = connection.retain();
    const second = connection.retain();
    expect(FakeSocket.instances).toHaveLength(1);
    expect(FakeSocket.last.url).toBe("ws://tally.test:8094/ws");
    connect();
    expect(connection.getState().status).toBe("connected");

    first();
    first(); // idempotent: the second retain still holds it
    second();
    vi.advanceTimersByTime(999);
    expect(FakeSocket.last.closedWith).toBeNull();
    // A remount within the linger reuses the socket.
    const again = connection.retain();
    vi.advanceTimersByTime(10_000);
    expect(FakeSocket.instances).toHaveLength(1);
    expect(FakeSocket.last.closedWith).toBeNull();

    again();
    vi.advanceTimersByTime(1000);
    expect(FakeSocket.last.closedWith).toBe(1000);
    expect(connection.getState().status).toBe("idle");
    connection.retain();
    expect(FakeSocket.instances).toHaveLength(2);
  });

  it("reuses the socket for a subscription remounted within the linger", () => {
    const client = clientWith();
    const mounted = new CounterSubscription(client, "likes");
    const socket = connect();
    socket.receive(snapshotReply(lastSent(socket, "subscribe").id, "likes", 4, 4));
    mounted.disable();
    expect(lastSent(socket, "unsubscribe")).toMatchObject({ name: "likes" });

    const remounted = new CounterSubscription(client, "likes");
    expect(FakeSocket.instances).toHaveLength(1);
    const subscribe = lastSent(socket, "subscribe");
    socket.receive(snapshotReply(subscribe.id, "likes", 4, 4));
    expect(remounted.getState()).toMatchObject({ status: "connected", value: 4 });
  });
});

describe("watching", () => {
  it("subscribes on open, and resumes with since after a reconnect", () => {
    const client = clientWith();
    const seen: number[] = [];
    const unwatch = client.connection.watch(
      "likes",
      { presence: true, maxRate: 20 },
      {
        update: (u) => seen.push(u.version),
      },
    );
    const socket = FakeSocket.last;
    socket.open();
    const subscribe = lastSent(socket, "subscribe");
    expect(subscribe).toEqual({
      id: subscribe.id,
      type: "subscribe",
      name: "likes",
      maxRate: 20,
      presence: true,
    });
    socket.receive(snapshotReply(subscribe.id, "likes", 40, 9));
    socket.receive(updatePush("likes", 40, 41, 10));

    socket.serverClose(1006);
    expect(client.connection.getState()).toMatchObject({ status: "disconnected" });
    // The first backoff step's ceiling (the jitter picks the top here).
    vi.advanceTimersByTime(2999);
    expect(FakeSocket.instances).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(FakeSocket.instances).toHaveLength(2);
    FakeSocket.last.open();
    const resume = lastSent(FakeSocket.last, "subscribe");
    expect(resume).toMatchObject({ name: "likes", since: 10, maxRate: 20, presence: true });
    FakeSocket.last.receive({
      type: "resumed",
      id: resume.id,
      name: "likes",
      since: 10,
      version: 11,
    });
    FakeSocket.last.receive(updatePush("likes", 41, 42, 11));
    expect(seen).toEqual([10, 11]);
    unwatch();
  });

  it("shares one server subscription between two watches of a counter", () => {
    const connection = clientWith().connection;
    const firstSeen: number[] = [];
    const unwatchFirst = connection.watch(
      "likes",
      {},
      { update: (u) => firstSeen.push(u.version) },
    );
    const socket = connect();
    socket.receive(snapshotReply(lastSent(socket, "subscribe").id, "likes", 1, 1));
    socket.receive(updatePush("likes", 1, 2, 2));

    const snapshots: number[] = [];
    const secondSeen: number[] = [];
    const unwatchSecond = connection.watch(
      "likes",
      {},
      {
        snapshot: (s) => snapshots.push(s.value),
        update: (u) => secondSeen.push(u.version),
      },
    );
    expect(sent(socket, "subscribe")).toHaveLength(1);
    // The later watch starts from the state so far.
    expect(snapshots).toEqual([2]);
    socket.receive(updatePush("likes", 2, 3, 3));
    expect(firstSeen).toEqual([2, 3]);
    expect(secondSeen).toEqual([3]);

    unwatchFirst();
    expect(sent(socket, "unsubscribe")).toHaveLength(0);
    unwatchSecond();
    expect(sent(socket, "unsubscribe")).toHaveLength(1);
  });

  it("ends a watch the server refuses for good, and keeps the socket", () => {
    const connection = clientWith().connection;
    const ended: string[] = [];
    connection.watch("secret", {}, { ended: (e) => ended.push(`${e.code}: ${e.message}`) });
    const socket = connect();
    const subscribe = lastSent(socket, "subscribe");
    socket.receive({
      type: "error",
      id: subscribe.id,
      code: "forbidden",
      message: "anonymous may not read counter secret",
      temporary: false,
    });
    expect(ended).toEqual(["forbidden: anonymous may not read counter secret"]);
    expect(socket.closedWith).toBeNull();
    expect(connection.getState().status).toBe("connected");

    // A new watch of the counter (a remount, after signing in) asks again.
    const snapshots: number[] = [];
    connection.watch("secret", {}, { snapshot: (s) => snapshots.push(s.value) });
    const again = lastSent(socket, "subscribe");
    expect(again.id).not.toBe(subscribe.id);
    socket.receive(snapshotReply(again.id, "secret", 5, 5));
    expect(snapshots).toEqual([5]);
  });
});

describe("writes over the socket", () => {
  it("queue while connecting, in order, up to maxQueuedWrites, and settle with the answers", async () => {
    const client = clientWith({ maxQueuedWrites: 3 });
    new CounterSubscription(client, "a");
    const answers = [client.increment("a", 1), client.increment("b", 2), client.decrement("a")];
    const refused = await client.increment("a").catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(TallyConnectionError);
    expect((refused as Error).message).toContain("queue is full");
    expect((refused as Error).message).toContain("3");
    expect(client.connection.getState().pendingWrites).toBe(3);
    expect(client.connection.pendingWritesFor("a")).toBe(2);

    const socket = FakeSocket.last;
    socket.open();
    const calls = sent(socket, "call");
    expect(calls.map((c) => [c.procedure, c.name, c.amount])).toEqual([
      ["counter.increment", "a", 1],
      ["counter.increment", "b", 2],
      ["counter.decrement", "a", undefined],
    ]);
    const keys = calls.map((c) => c.idempotencyKey);
    expect(new Set(keys).size).toBe(3);
    for (const key of keys) expect(key).toMatch(/^[0-9a-f]{32}$/);

    calls.forEach((call, i) => socket.receive(resultReply(call.id, "a", i, i + 1, i + 1)));
    const updates = await Promise.all(answers);
    expect(updates.map((u) => u.version)).toEqual([1, 2, 3]);
    expect(client.connection.getState().pendingWrites).toBe(0);
  });

  it("sends a write again with the same key after the socket drops before its answer", async () => {
    const client = clientWith();
    client.connection.retain();
    const socket = connect();
    const first = client.increment("likes", 1, { idempotencyKey: "click-1" });
    const firstCall = lastSent(socket, "call");
    expect(firstCall.idempotencyKey).toBe("click-1");

    socket.serverClose(1006);
    const second = client.increment("likes", 1, { idempotencyKey: "click-2" });
    expect(client.connection.getState().pendingWrites).toBe(2);
    vi.advanceTimersByTime(3000);
    const next = FakeSocket.last;
    expect(next).not.toBe(socket);
    next.open();
    const resent = sent(next, "call");
    // The unanswered one first, then the one made while away.
    expect(resent.map((c) => c.idempotencyKey)).toEqual(["click-1", "click-2"]);
    next.receive(resultReply(resent[0]!.id, "likes", 0, 1, 1));
    next.receive(resultReply(resent[1]!.id, "likes", 1, 2, 2));
    expect((await first).version).toBe(1);
    expect((await second).version).toBe(2);
  });

  it("hold later writes of a counter behind a setValue or reset, which waits for earlier ones", () => {
    const client = clientWith();
    client.connection.retain();
    const socket = connect();
    const names = () => sent(socket, "call").map((c) => `${c.procedure} ${c.name}`);
    void client.increment("x");
    void client.increment("x");
    void client.setValue("x", 5);
    void client.increment("x");
    void client.increment("y");
    void client.reset("y");
    expect(names()).toEqual(["counter.increment x", "counter.increment x", "counter.increment y"]);

    const [incX1, incX2, incY] = sent(socket, "call");
    socket.receive(resultReply(incX1!.id, "x", 0, 1, 1));
    expect(names()).toHaveLength(3);
    socket.receive(resultReply(incY!.id, "y", 0, 1, 1));
    expect(names().at(-1)).toBe("counter.reset y");
    socket.receive(resultReply(incX2!.id, "x", 1, 2, 2));
    expect(names().at(-1)).toBe("counter.setValue x");
    const setX = lastSent(socket, "call");
    socket.receive(resultReply(setX.id, "x", 2, 5, 3));
    expect(names().at(-1)).toBe("counter.increment x");
    expect(names()).toHaveLength(6);
  });

  it("keep the socket open while one waits, even after the last watch ended", async () => {
    const client = clientWith();
    const likes = new CounterSubscription(client, "likes");
    const socket = connect();
    socket.receive(snapshotReply(lastSent(socket, "subscribe").id, "likes", 0, 0));
    const answer = client.increment("likes");
    likes.disable();
    // Well past the linger (and short of the ping check of a quiet socket).
    vi.advanceTimersByTime(20_000);
    expect(socket.closedWith).toBeNull();
    socket.receive(resultReply(lastSent(socket, "call").id, "likes", 0, 1, 1));
    expect((await answer).version).toBe(1);
    vi.advanceTimersByTime(1000);
    expect(socket.closedWith).toBe(1000);
  });

  it("sends a temporarily refused write again with the same key after retryAfterMs", async () => {
    const client = clientWith();
    client.connection.retain();
    const socket = connect();
    const answer = client.increment("likes");
    const call = lastSent(socket, "call");
    socket.receive({
      type: "error",
      id: call.id,
      code: "rate_limited",
      message: "slow down",
      temporary: true,
      retryAfterMs: 400,
    });
    vi.advanceTimersByTime(399);
    expect(sent(socket, "call")).toHaveLength(1);
    vi.advanceTimersByTime(1);
    const again = lastSent(socket, "call");
    expect(again.idempotencyKey).toBe(call.idempotencyKey);
    socket.receive(resultReply(again.id, "likes", 0, 1, 1));
    expect((await answer).version).toBe(1);
  });

  it("rejects a refused write with the server's error, and an aborted one with the reason", async () => {
    const client = clientWith();
    client.connection.retain();
    const socket = connect();
    const refused = client.increment("likes", 0).catch((e: unknown) => e);
    socket.receive({
      type: "error",
      id: lastSent(socket, "call").id,
      code: "invalid_amount",
      message: "amount is 0; amount must be a whole number >= 1",
      temporary: false,
    });
    expect(await refused).toMatchObject({ status: 400, code: "invalid_amount" });
    expect(await refused).toBeInstanceOf(TallyError);

    socket.serverClose(1006);
    const controller = new AbortController();
    const aborted = client.increment("likes", 1, { signal: controller.signal });
    expect(client.connection.getState().pendingWrites).toBe(1);
    const reason = new Error("the user left");
    controller.abort(reason);
    expect(await aborted.catch((e: unknown) => e)).toBe(reason);
    expect(client.connection.getState().pendingWrites).toBe(0);
    vi.advanceTimersByTime(3000);
    FakeSocket.last.open();
    expect(sent(FakeSocket.last, "call")).toEqual([]);
  });

  it("go over HTTP while nothing retains the connection, and count in pendingWrites", async () => {
    let answer: (response: Response) => void = () => {};
    const fetch = vi.fn(() => new Promise<Response>((resolve) => (answer = resolve)));
    const client = clientWith({ fetch });
    const write = client.increment("likes");
    await settle();
    expect(fetch).toHaveBeenCalledTimes(1);
    expect(FakeSocket.instances).toHaveLength(0);
    expect(client.connection.getState().pendingWrites).toBe(1);
    expect(client.connection.pendingWritesFor("likes")).toBe(1);
    const update: Update = {
      type: "increment",
      value: 1,
      previousValue: 0,
      version: 1,
      metadata: {
        id: 1,
        name: "likes",
        value: 1,
        createdAt: null,
        updatedAt: null,
        operationCount: 1,
      },
      timestamp: "2026-01-01T00:00:00.000Z",
    };
    answer(new Response(JSON.stringify(update), { status: 200 }));
    expect(await write).toEqual(update);
    expect(client.connection.getState().pendingWrites).toBe(0);
  });
});

describe("the environment and the server's advice", () => {
  it("drops the socket when the browser goes offline, and reconnects when it is back", () => {
    const window = new EventTarget();
    const document = Object.assign(new EventTarget(), { visibilityState: "visible" });
    vi.stubGlobal("window", window);
    vi.stubGlobal("document", document);
    const connection = clientWith().connection;
    connection.retain();
    const socket = connect();

    window.dispatchEvent(new Event("offline"));
    expect(socket.closedWith).toBe(1000);
    expect(connection.getState()).toMatchObject({ status: "disconnected" });
    expect(connection.getState().error?.message).toContain("offline");

    window.dispatchEvent(new Event("online"));
    expect(FakeSocket.instances).toHaveLength(2);
    expect(connection.getState().status).toBe("connecting");
  });

  it("waits the delay the server advised before reconnecting", () => {
    const connection = clientWith().connection;
    connection.retain();
    const socket = connect();
    socket.receive({ type: "reconnect", afterMs: 7000, reason: "server is restarting" });
    socket.serverClose(1012, "server is restarting; reconnect after 7000 ms");
    expect(connection.getState().retryAt).toBe(Date.now() + 7000);
    vi.advanceTimersByTime(6999);
    expect(FakeSocket.instances).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(FakeSocket.instances).toHaveLength(2);
  });

  it("stops for good after a close that says not to reconnect, and sends writes over HTTP", async () => {
    const refusal = { error: { code: "forbidden", message: "no", temporary: false } };
    const fetch = vi.fn(async () => new Response(JSON.stringify(refusal), { status: 403 }));
    const client = clientWith({ fetch });
    const connection = client.connection;
    connection.retain();
    const socket = connect();
    socket.serverClose(1008);
    expect(connection.getState()).toMatchObject({ status: "stopped", retryAt: null });
    expect(connection.getState().error?.willRetry).toBe(false);
    vi.advanceTimersByTime(10 * 60_000);
    expect(FakeSocket.instances).toHaveLength(1);
    expect(await client.increment("likes").catch((e: unknown) => e)).toMatchObject({
      code: "forbidden",
    });
    expect(fetch).toHaveBeenCalledTimes(1);
  });
});
