// CounterSubscription, a view over the client's one socket, with fake timers and a scripted
// socket speaking version 2: its states, applying and dropping updates, resume with `since`,
// keep-alive pings, backoff and its reset, close codes, a gap, the connection toggle,
// reconnecting when the browser comes back, presence and pending writes in its state.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Backoff } from "../src/backoff.js";
import type { ReconnectRules } from "../src/reconnect.js";
import { TallyClient } from "../src/rpc.js";
import { CounterSubscription, type SubscriptionOptions } from "../src/subscription.js";
import { FakeSocket } from "./fake-socket.js";
import { lastSent, sent, snapshotReply, updatePush } from "./v2-frames.js";

/** A fresh client (so a fresh connection) whose jitter always picks the ceiling. */
function clientWith(reconnect: Partial<ReconnectRules> = {}) {
  return new TallyClient({
    baseUrl: "http://tally.test:8094",
    fetch: () => Promise.reject(new Error("no RPC in unit tests")),
    WebSocket: FakeSocket as unknown as typeof WebSocket,
    random: () => 1,
    reconnect,
  });
}

/** A subscription on its own client; the socket is opened by `open`. */
function watch(name = "likes", options: SubscriptionOptions = {}, client = clientWith()) {
  return new CounterSubscription(client, name, options);
}

/** Opens the newest socket and returns the id of its last subscribe. */
function open(): number {
  FakeSocket.last.open();
  return lastSent(FakeSocket.last, "subscribe").id;
}

/** Opens the newest socket and answers the subscribe of `name` with a snapshot. */
function synced(name: string, value: number, version: number): FakeSocket {
  const id = open();
  FakeSocket.last.receive(snapshotReply(id, name, value, version));
  return FakeSocket.last;
}

beforeEach(() => {
  vi.useFakeTimers();
  FakeSocket.reset();
});

afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

describe("Backoff", () => {
  it("grows the ceiling by the factor up to the maximum", () => {
    const backoff = new Backoff({ min: 100, max: 1000, factor: 2 });
    expect([0, 1, 2, 3, 4, 5].map((n) => backoff.ceiling(n))).toEqual([
      100, 200, 400, 800, 1000, 1000,
    ]);
    expect(backoff.ceiling(10_000)).toBe(1000);
  });

  it("draws each delay between 0 and the ceiling (full jitter)", () => {
    expect(new Backoff({ min: 1000 }, () => 0).delay(3)).toBe(0);
    expect(new Backoff({ min: 1000 }, () => 0.5).delay(3)).toBe(4000);
    expect(new Backoff({ min: 1000 }, () => 1).delay(3)).toBe(8000);
    const random = new Backoff({ min: 3000, max: 60_000 });
    for (let attempt = 0; attempt < 12; attempt++) {
      const delay = random.delay(attempt);
      expect(delay).toBeGreaterThanOrEqual(0);
      expect(delay).toBeLessThanOrEqual(random.ceiling(attempt));
    }
  });

  it("defaults to the seed's 3 s minimum", () => {
    expect(new Backoff().ceiling(0)).toBe(3000);
  });
});

describe("CounterSubscription", () => {
  it("connects, becomes connected on its snapshot and applies newer updates in order", () => {
    const likes = watch();
    expect(likes.getState().status).toBe("connecting");
    expect(FakeSocket.last.url).toBe("ws://tally.test:8094/ws");
    const id = open();
    expect(lastSent(FakeSocket.last, "subscribe")).toEqual({
      id,
      type: "subscribe",
      name: "likes",
    });
    expect(likes.getState().status).toBe("connecting");

    FakeSocket.last.receive(snapshotReply(id, "likes", 40, 9));
    expect(likes.getState()).toMatchObject({ status: "connected", value: 40, version: 9 });

    const applied: number[] = [];
    likes.on("update", (u) => applied.push(u.version));
    FakeSocket.last.receive(updatePush("likes", 40, 41, 10));
    FakeSocket.last.receive(updatePush("likes", 41, 42, 11));
    expect(likes.getState()).toMatchObject({ value: 42, version: 11 });
    expect(likes.getState().lastUpdate?.toISOString()).toBe("2026-01-01T00:00:11.000Z");
    expect(applied).toEqual([10, 11]);
    // The Update as the RPC answers it: without the push's `name`.
    expect(likes.getState().update).not.toHaveProperty("name");
  });

  it("drops updates whose version is not newer", () => {
    const likes = watch();
    const socket = synced("likes", 5, 5);
    const applied: number[] = [];
    likes.on("update", (u) => applied.push(u.version));
    socket.receive(updatePush("likes", 3, 4, 4));
    socket.receive(updatePush("likes", 4, 5, 5));
    socket.receive(updatePush("likes", 5, 6, 6));
    socket.receive(updatePush("likes", 5, 6, 6));
    expect(applied).toEqual([6]);
    expect(likes.getState()).toMatchObject({ value: 6, version: 6 });
  });

  it("gives a new state object on each change and the same one otherwise", () => {
    const likes = watch();
    let notified = 0;
    likes.subscribe(() => notified++);
    const before = likes.getState();
    expect(likes.getState()).toBe(before);
    synced("likes", 1, 1);
    expect(likes.getState()).not.toBe(before);
    expect(notified).toBeGreaterThan(0);
  });

  it("resumes with since = the last version after a reconnectable close", () => {
    const likes = watch();
    const socket = synced("likes", 40, 9);
    socket.receive(updatePush("likes", 40, 41, 10));

    socket.serverClose(1011, "history could not be read");
    const state = likes.getState();
    expect(state.status).toBe("disconnected");
    expect(state.error?.closeCode).toBe(1011);
    expect(state.error?.willRetry).toBe(true);
    expect(state.error?.message).toContain("could not serve");
    expect(state.value).toBe(41);

    vi.advanceTimersByTime(2999);
    expect(FakeSocket.instances).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(FakeSocket.instances).toHaveLength(2);
    expect(likes.getState().status).toBe("connecting");
    const id = open();
    expect(lastSent(FakeSocket.last, "subscribe")).toMatchObject({ name: "likes", since: 10 });

    FakeSocket.last.receive({ type: "resumed", id, name: "likes", since: 10, version: 12 });
    expect(likes.getState()).toMatchObject({ status: "connected", error: null });
    FakeSocket.last.receive(updatePush("likes", 41, 42, 11));
    FakeSocket.last.receive(updatePush("likes", 42, 43, 12));
    expect(likes.getState()).toMatchObject({ value: 43, version: 12 });
  });

  it("subscribes without since if no snapshot ever arrived, or with the since option", () => {
    watch("a");
    FakeSocket.last.serverClose(1006);
    vi.advanceTimersByTime(3000);
    open();
    expect(lastSent(FakeSocket.last, "subscribe")).not.toHaveProperty("since");

    watch("b", { since: 7 });
    open();
    expect(lastSent(FakeSocket.last, "subscribe")).toMatchObject({ name: "b", since: 7 });
  });

  it("sends types, maxRate and presence, and keeps presence in its state", () => {
    const likes = watch("likes", { types: ["reset"], maxRate: 2, presence: true });
    const id = open();
    expect(lastSent(FakeSocket.last, "subscribe")).toMatchObject({
      types: ["reset"],
      maxRate: 2,
      presence: true,
    });
    FakeSocket.last.receive(snapshotReply(id, "likes", 0, 0));
    expect(likes.getState().presence).toBeNull();
    FakeSocket.last.receive({ type: "presence", name: "likes", watchers: 3, users: 2 });
    expect(likes.getState().presence).toEqual({ watchers: 3, users: 2 });
    // A jump is not a gap with maxRate.
    FakeSocket.last.receive({ ...updatePush("likes", 0, 9, 9), conflated: true });
    expect(likes.getState()).toMatchObject({ value: 9, version: 9 });
    expect(likes.getState().update).not.toHaveProperty("conflated");
  });

  it("counts its counter's pending writes", async () => {
    const client = clientWith();
    const likes = watch("likes", {}, client);
    synced("likes", 0, 0);
    void client.increment("likes");
    void client.increment("likes");
    void client.increment("other");
    expect(likes.getState().pendingWrites).toBe(2);
    const [first] = sent(FakeSocket.last, "call");
    FakeSocket.last.receive({
      type: "result",
      id: first!.id,
      result: updatePush("likes", 0, 1, 1),
    });
    await vi.advanceTimersByTimeAsync(0);
    expect(likes.getState().pendingWrites).toBe(1);
  });

  it("backs off exponentially while connections fail, and starts over after a stable one", () => {
    const client = clientWith({ backoffMinMs: 1000, backoffMaxMs: 5000, minUptimeMs: 10_000 });
    const likes = watch("likes", {}, client);
    const delays: number[] = [];
    for (let i = 0; i < 5; i++) {
      FakeSocket.last.serverClose(1006);
      const retryAt = likes.getState().retryAt;
      expect(retryAt).not.toBeNull();
      delays.push((retryAt ?? 0) - Date.now());
      vi.advanceTimersByTime(delays[i] ?? 0);
    }
    expect(delays).toEqual([1000, 2000, 4000, 5000, 5000]);

    // A connection that stays up for less than the minimum uptime does not reset the backoff...
    synced("likes", 0, 0);
    vi.advanceTimersByTime(9_000);
    FakeSocket.last.serverClose(1006);
    expect((likes.getState().retryAt ?? 0) - Date.now()).toBe(5000);
    vi.advanceTimersByTime(5000);

    // ...one that stays up longer does.
    synced("likes", 0, 0);
    vi.advanceTimersByTime(10_000);
    FakeSocket.last.serverClose(1006);
    expect((likes.getState().retryAt ?? 0) - Date.now()).toBe(1000);
  });

  it.each([
    [1000, "closed with code 1000"],
    [1008, "too many messages"],
    [1009, "message too big"],
    [4500, "closed with code 4500"],
  ])("does not reconnect after close %i", (code, words) => {
    const likes = watch();
    synced("likes", 1, 1);
    FakeSocket.last.serverClose(code);
    const state = likes.getState();
    expect(state).toMatchObject({ status: "disconnected", retryAt: null });
    expect(state.error?.willRetry).toBe(false);
    expect(state.error?.message).toContain(words);
    vi.advanceTimersByTime(10 * 60_000);
    expect(FakeSocket.instances).toHaveLength(1);
  });

  it.each([1006, 1011, 1012, 4000, 4001])("reconnects after close %i", (code) => {
    watch();
    synced("likes", 1, 1);
    FakeSocket.last.serverClose(code);
    vi.advanceTimersByTime(3000);
    expect(FakeSocket.instances).toHaveLength(2);
    open();
    expect(lastSent(FakeSocket.last, "subscribe")).toMatchObject({ since: 1 });
  });

  it("pings a quiet connection, and drops one whose ping got no answer", () => {
    const likes = watch("likes", {}, clientWith({ pingIntervalMs: 30_000 }));
    const socket = synced("likes", 1, 1);

    // Nothing heard since it was established: the first check pings.
    vi.advanceTimersByTime(29_999);
    expect(sent(socket, "ping")).toHaveLength(0);
    vi.advanceTimersByTime(1);
    expect(sent(socket, "ping")).toHaveLength(1);
    socket.receive({ type: "pong", id: lastSent(socket, "ping").id, timestamp: "" });
    // The pong was heard: the next check sends nothing; the one after pings again.
    vi.advanceTimersByTime(30_000);
    expect(sent(socket, "ping")).toHaveLength(1);
    vi.advanceTimersByTime(30_000);
    expect(sent(socket, "ping")).toHaveLength(2);
    expect(socket.closedWith).toBeNull();

    // No answer to the second ping: at the next check the socket is given up.
    vi.advanceTimersByTime(30_000);
    expect(socket.closedWith).toBe(1000);
    expect(likes.getState().error?.message).toContain("no answer to a ping");
    vi.advanceTimersByTime(2999);
    expect(FakeSocket.instances).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(FakeSocket.instances).toHaveLength(2);
  });

  it("starts over from what it has when a version is missing, on the same socket", () => {
    const likes = watch();
    const socket = synced("likes", 1, 1);
    socket.receive(updatePush("likes", 3, 4, 4));
    expect(likes.getState().version).toBe(1);
    expect(socket.closedWith).toBeNull();
    expect(sent(socket).slice(-2)).toMatchObject([
      { type: "unsubscribe", name: "likes" },
      { type: "subscribe", name: "likes", since: 1 },
    ]);
  });

  it("replaces its state with a resync snapshot, even an older one", () => {
    const likes = watch("likes", { since: 500 });
    const id = open();
    FakeSocket.last.receive({ ...snapshotReply(id, "likes", 3, 3), resync: true });
    expect(likes.getState()).toMatchObject({ status: "connected", value: 3, version: 3 });
  });

  it("disable unsubscribes and the socket closes after the linger; enable resumes", () => {
    const likes = watch();
    const socket = synced("likes", 7, 7);
    likes.disable();
    expect(lastSent(socket, "unsubscribe")).toMatchObject({ name: "likes" });
    expect(likes.getState()).toMatchObject({ enabled: false, status: "disconnected", value: 7 });
    vi.advanceTimersByTime(1000);
    expect(socket.closedWith).toBe(1000);
    vi.advanceTimersByTime(10 * 60_000);
    expect(FakeSocket.instances).toHaveLength(1);

    likes.enable();
    expect(FakeSocket.instances).toHaveLength(2);
    open();
    expect(lastSent(FakeSocket.last, "subscribe")).toMatchObject({ since: 7 });
  });

  it("starts disabled when asked, and opens nothing until enabled", () => {
    const likes = watch("likes", { enabled: false });
    expect(likes.getState()).toMatchObject({ enabled: false, status: "disconnected" });
    expect(FakeSocket.instances).toHaveLength(0);
    likes.setEnabled(true);
    expect(FakeSocket.instances).toHaveLength(1);
  });

  it("refuses an invalid name in words, without opening a socket", () => {
    const bad = watch("no spaces please");
    expect(FakeSocket.instances).toHaveLength(0);
    expect(bad.getState().status).toBe("disconnected");
    expect(bad.getState().error?.message).toBe(
      'the counter name contains " "; only A-Z a-z 0-9 _ . : - are allowed',
    );
    expect(bad.getState().error?.willRetry).toBe(false);
  });

  it("reconnects at once when the browser comes back online or the tab becomes visible", () => {
    const window = new EventTarget();
    const document = Object.assign(new EventTarget(), { visibilityState: "visible" });
    vi.stubGlobal("window", window);
    vi.stubGlobal("document", document);

    const likes = watch("likes", {}, clientWith({ backoffMinMs: 60_000 }));
    synced("likes", 2, 2);
    FakeSocket.last.serverClose(1006);
    expect(FakeSocket.instances).toHaveLength(1);

    window.dispatchEvent(new Event("online"));
    expect(FakeSocket.instances).toHaveLength(2);
    FakeSocket.last.serverClose(1006);
    document.visibilityState = "hidden";
    document.dispatchEvent(new Event("visibilitychange"));
    expect(FakeSocket.instances).toHaveLength(2);
    document.visibilityState = "visible";
    document.dispatchEvent(new Event("visibilitychange"));
    expect(FakeSocket.instances).toHaveLength(3);

    // While connected, coming back does not open a second socket; when disabled, nothing at all.
    const id = open();
    FakeSocket.last.receive({ type: "resumed", id, name: "likes", since: 2, version: 2 });
    window.dispatchEvent(new Event("online"));
    expect(FakeSocket.instances).toHaveLength(3);
    likes.disable();
    vi.advanceTimersByTime(1000);
    window.dispatchEvent(new Event("online"));
    expect(FakeSocket.instances).toHaveLength(3);
  });

  it("can be disabled and enabled while connecting, leaving one subscription", () => {
    const likes = watch();
    likes.disable();
    likes.enable();
    const id = open();
    expect(FakeSocket.instances).toHaveLength(1);
    expect(sent(FakeSocket.last, "subscribe")).toHaveLength(1);
    FakeSocket.last.receive(snapshotReply(id, "likes", 1, 1));
    expect(likes.getState()).toMatchObject({ status: "connected", value: 1, version: 1 });
  });

  it("retries a connection that never sends its first frame", () => {
    const likes = watch("likes", {}, clientWith({ connectTimeoutMs: 5_000 }));
    vi.advanceTimersByTime(4_999);
    expect(FakeSocket.last.closedWith).toBeNull();
    vi.advanceTimersByTime(1);
    expect(FakeSocket.last.closedWith).toBe(1000);
    expect(likes.getState().error?.message).toContain("did not answer");
    vi.advanceTimersByTime(3_000);
    expect(FakeSocket.instances).toHaveLength(2);
  });

  it("takes the version from a resume started with the since option", () => {
    const likes = watch("likes", { since: 7 });
    const id = open();
    FakeSocket.last.receive({ type: "resumed", id, name: "likes", since: 7, version: 9 });
    expect(likes.getState()).toMatchObject({ status: "connected", version: 7, value: null });
    FakeSocket.last.receive(updatePush("likes", 7, 8, 8));
    expect(likes.getState()).toMatchObject({ version: 8, value: 8 });
  });

  it("forgets the last update when a snapshot replaces the state", () => {
    const likes = watch();
    const socket = synced("likes", 1, 1);
    socket.receive(updatePush("likes", 1, 2, 2));
    expect(likes.getState().update?.version).toBe(2);
    socket.serverClose(1012);
    vi.advanceTimersByTime(3000);
    const id = open();
    FakeSocket.last.receive({ ...snapshotReply(id, "likes", 0, 0), resync: true });
    expect(likes.getState()).toMatchObject({
      value: 0,
      version: 0,
      update: null,
      lastUpdate: null,
    });
  });

  it("does not come back on focus or online after a close that says not to", () => {
    const window = new EventTarget();
    const document = Object.assign(new EventTarget(), { visibilityState: "visible" });
    vi.stubGlobal("window", window);
    vi.stubGlobal("document", document);
    watch();
    synced("likes", 1, 1);
    FakeSocket.last.serverClose(1008);
    window.dispatchEvent(new Event("online"));
    document.dispatchEvent(new Event("visibilitychange"));
    expect(FakeSocket.instances).toHaveLength(1);
  });

  it("keeps going when a listener throws", () => {
    const likes = watch();
    const logged = vi.spyOn(console, "error").mockImplementation(() => {});
    likes.on("update", () => {
      throw new Error("listener bug");
    });
    const seen: number[] = [];
    likes.on("update", (u) => seen.push(u.version));
    const socket = synced("likes", 1, 1);
    socket.receive(updatePush("likes", 1, 2, 2));
    expect(seen).toEqual([2]);
    expect(likes.getState().version).toBe(2);
    expect(logged).toHaveBeenCalledTimes(1);
    logged.mockRestore();
  });
});
