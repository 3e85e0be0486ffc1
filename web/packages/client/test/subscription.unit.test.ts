// The subscription's state machine, with fake timers and a scripted socket: connection states,
// applying and dropping updates, resume with `since`, keep-alive pings, backoff and its reset,
// close codes, the connection toggle, and reconnecting when the browser comes back.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { snapshot, update } from "../../../test-support/fixtures.js";
import { Backoff } from "../src/backoff.js";
import { TallyClient } from "../src/rpc.js";
import { CounterSubscription, type SubscriptionOptions } from "../src/subscription.js";
import { FakeSocket } from "./fake-socket.js";

const client = new TallyClient({
  baseUrl: "http://tally.test:8094",
  fetch: () => Promise.reject(new Error("no RPC in unit tests")),
  WebSocket: FakeSocket as unknown as typeof WebSocket,
});

/** A subscription whose jitter always picks the ceiling, so delays are predictable. */
function watch(name = "likes", options: SubscriptionOptions = {}) {
  return new CounterSubscription(client, name, { random: () => 1, ...options });
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
  it("connects, becomes connected on the snapshot and applies newer updates in order", () => {
    const likes = watch();
    expect(likes.getState().status).toBe("connecting");
    expect(FakeSocket.last.url).toBe("ws://tally.test:8094/ws/counter/likes");

    FakeSocket.last.receive(snapshot("likes", 40, 9));
    expect(likes.getState()).toMatchObject({ status: "connected", value: 40, version: 9 });

    const applied: number[] = [];
    likes.on("update", (u) => applied.push(u.version));
    FakeSocket.last.receive(update("likes", 40, 41, 10));
    FakeSocket.last.receive(update("likes", 41, 42, 11));
    expect(likes.getState()).toMatchObject({ value: 42, version: 11 });
    expect(likes.getState().lastUpdate?.toISOString()).toBe("2026-01-01T00:00:11.000Z");
    expect(applied).toEqual([10, 11]);
  });

  it("drops updates whose version is not newer", () => {
    const likes = watch();
    FakeSocket.last.receive(snapshot("likes", 5, 5));
    const applied: number[] = [];
    likes.on("update", (u) => applied.push(u.version));
    FakeSocket.last.receive(update("likes", 3, 4, 4));
    FakeSocket.last.receive(update("likes", 4, 5, 5));
    FakeSocket.last.receive(update("likes", 5, 6, 6));
    FakeSocket.last.receive(update("likes", 5, 6, 6));
    expect(applied).toEqual([6]);
    expect(likes.getState()).toMatchObject({ value: 6, version: 6 });
  });

  it("gives a new state object on each change and the same one otherwise", () => {
    const likes = watch();
    let notified = 0;
    likes.subscribe(() => notified++);
    const before = likes.getState();
    expect(likes.getState()).toBe(before);
    FakeSocket.last.receive(snapshot("likes", 1, 1));
    expect(likes.getState()).not.toBe(before);
    expect(notified).toBeGreaterThan(0);
  });

  it("resumes with since = the last version after a reconnectable close", () => {
    const likes = watch();
    FakeSocket.last.receive(snapshot("likes", 40, 9));
    FakeSocket.last.receive(update("likes", 40, 41, 10));

    FakeSocket.last.serverClose(1012, "server is restarting; reconnect with since");
    const state = likes.getState();
    expect(state.status).toBe("disconnected");
    expect(state.error?.closeCode).toBe(1012);
    expect(state.error?.willRetry).toBe(true);
    expect(state.error?.message).toContain("restarting");
    expect(state.value).toBe(41);

    // The seed's 3 s, as the ceiling of the first delay (the jitter here picks the ceiling).
    vi.advanceTimersByTime(2999);
    expect(FakeSocket.instances).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(FakeSocket.instances).toHaveLength(2);
    expect(FakeSocket.last.url).toBe("ws://tally.test:8094/ws/counter/likes?since=10");
    expect(likes.getState().status).toBe("connecting");

    FakeSocket.last.receive({ type: "resumed", since: 10, version: 12 });
    expect(likes.getState()).toMatchObject({ status: "connected", error: null });
    FakeSocket.last.receive(update("likes", 41, 42, 11));
    FakeSocket.last.receive(update("likes", 42, 43, 12));
    expect(likes.getState()).toMatchObject({ value: 43, version: 12 });
  });

  it("reconnects without since if no snapshot ever arrived, or with the since option", () => {
    watch("a");
    FakeSocket.last.serverClose(1006);
    vi.advanceTimersByTime(3000);
    expect(FakeSocket.last.url).toBe("ws://tally.test:8094/ws/counter/a");

    watch("b", { since: 7 });
    expect(FakeSocket.last.url).toBe("ws://tally.test:8094/ws/counter/b?since=7");
  });

  it("backs off exponentially while connections fail, and starts over after a stable one", () => {
    const likes = watch("likes", { backoff: { min: 1000, max: 5000 }, minUptime: 10_000 });
    const delays: number[] = [];
    for (let i = 0; i < 5; i++) {
      FakeSocket.last.serverClose(1006);
      const retryAt = likes.getState().retryAt;
      expect(retryAt).not.toBeNull();
      delays.push((retryAt ?? 0) - Date.now());
      vi.advanceTimersByTime(delays[i] ?? 0);
    }
    expect(delays).toEqual([1000, 2000, 4000, 5000, 5000]);

    // A connection that stays up for less than minUptime does not reset the backoff...
    FakeSocket.last.receive(snapshot("likes", 0, 0));
    vi.advanceTimersByTime(9_000);
    FakeSocket.last.serverClose(1006);
    expect((likes.getState().retryAt ?? 0) - Date.now()).toBe(5000);
    vi.advanceTimersByTime(5000);

    // ...one that stays up longer does.
    FakeSocket.last.receive(snapshot("likes", 0, 0));
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
    FakeSocket.last.receive(snapshot("likes", 1, 1));
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
    FakeSocket.last.receive(snapshot("likes", 1, 1));
    FakeSocket.last.serverClose(code);
    vi.advanceTimersByTime(3000);
    expect(FakeSocket.instances).toHaveLength(2);
    expect(FakeSocket.last.url).toContain("since=1");
  });

  it("pings every interval, and drops a connection whose ping got no answer", () => {
    const likes = watch("likes", { pingInterval: 30_000 });
    const socket = FakeSocket.last;
    socket.receive(snapshot("likes", 1, 1));

    vi.advanceTimersByTime(29_999);
    expect(socket.sent).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(socket.sent).toEqual(['{"type":"ping"}']);

    socket.receive({ type: "pong", timestamp: "2026-01-01T00:00:30.000Z" });
    vi.advanceTimersByTime(30_000);
    expect(socket.sent).toHaveLength(2);
    expect(socket.closedWith).toBeNull();

    // No answer to the second ping: at the next tick the socket is closed and resumed at once.
    vi.advanceTimersByTime(30_000);
    expect(socket.closedWith).toBe(1000);
    expect(likes.getState().error?.message).toContain("no answer to a ping");
    // The connection had been up longer than minUptime, so the backoff starts over.
    vi.advanceTimersByTime(2999);
    expect(FakeSocket.instances).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(FakeSocket.instances).toHaveLength(2);
    expect(FakeSocket.last.url).toContain("since=1");
  });

  it("resumes from what it has when a version is missing", () => {
    const likes = watch();
    const first = FakeSocket.last;
    first.receive(snapshot("likes", 1, 1));
    first.receive(update("likes", 3, 4, 4));
    expect(likes.getState().version).toBe(1);
    expect(first.closedWith).toBe(1000);
    vi.advanceTimersByTime(3000);
    expect(FakeSocket.instances).toHaveLength(2);
    expect(FakeSocket.last.url).toContain("since=1");
  });

  it("replaces its state with a resync snapshot, even an older one", () => {
    const likes = watch("likes", { since: 500 });
    FakeSocket.last.receive(snapshot("likes", 3, 3, true));
    expect(likes.getState()).toMatchObject({ status: "connected", value: 3, version: 3 });
  });

  it("disable closes the socket and stops retrying; enable resumes", () => {
    const likes = watch();
    FakeSocket.last.receive(snapshot("likes", 7, 7));
    likes.disable();
    expect(FakeSocket.last.closedWith).toBe(1000);
    expect(likes.getState()).toMatchObject({ enabled: false, status: "disconnected", value: 7 });
    vi.advanceTimersByTime(10 * 60_000);
    expect(FakeSocket.instances).toHaveLength(1);

    likes.enable();
    expect(FakeSocket.instances).toHaveLength(2);
    expect(FakeSocket.last.url).toContain("since=7");
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

    const likes = watch("likes", { backoff: { min: 60_000 } });
    FakeSocket.last.receive(snapshot("likes", 2, 2));
    FakeSocket.last.serverClose(1006);
    expect(FakeSocket.instances).toHaveLength(1);

    window.dispatchEvent(new Event("online"));
    expect(FakeSocket.instances).toHaveLength(2);
    expect(FakeSocket.last.url).toContain("since=2");

    FakeSocket.last.serverClose(1006);
    document.visibilityState = "hidden";
    document.dispatchEvent(new Event("visibilitychange"));
    expect(FakeSocket.instances).toHaveLength(2);
    document.visibilityState = "visible";
    document.dispatchEvent(new Event("visibilitychange"));
    expect(FakeSocket.instances).toHaveLength(3);

    // While connected, coming back does not open a second socket; when disabled, nothing at all.
    FakeSocket.last.receive({ type: "resumed", since: 2, version: 2 });
    window.dispatchEvent(new Event("online"));
    expect(FakeSocket.instances).toHaveLength(3);
    likes.disable();
    window.dispatchEvent(new Event("online"));
    expect(FakeSocket.instances).toHaveLength(3);
  });

  it("can be disabled while still connecting, and ignores events of a dropped socket", () => {
    const likes = watch();
    const first = FakeSocket.last;
    likes.disable();
    expect(first.closedWith).toBe(1000);

    // A listener that toggles during the "connecting" notification leaves one live socket.
    let toggled = false;
    likes.subscribe(() => {
      if (!toggled && likes.getState().status === "connecting") {
        toggled = true;
        likes.disable();
        likes.enable();
      }
    });
    likes.enable();
    const [stale, current] = FakeSocket.instances.slice(-2) as [FakeSocket, FakeSocket];
    stale.serverClose(1006);
    stale.receive(snapshot("likes", 99, 99));
    current.receive(snapshot("likes", 1, 1));
    expect(likes.getState()).toMatchObject({ status: "connected", value: 1, version: 1 });
    expect(current.closedWith).toBeNull();
  });

  it("retries a connection that never sends its first message", () => {
    const likes = watch("likes", { connectTimeout: 5_000 });
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
    FakeSocket.last.receive({ type: "resumed", since: 7, version: 9 });
    expect(likes.getState()).toMatchObject({ status: "connected", version: 7, value: null });
    FakeSocket.last.receive(update("likes", 7, 8, 8));
    expect(likes.getState()).toMatchObject({ version: 8, value: 8 });
  });

  it("forgets the last update when a snapshot replaces the state", () => {
    const likes = watch();
    FakeSocket.last.receive(snapshot("likes", 1, 1));
    FakeSocket.last.receive(update("likes", 1, 2, 2));
    expect(likes.getState().update?.version).toBe(2);
    FakeSocket.last.serverClose(1012);
    vi.advanceTimersByTime(3000);
    FakeSocket.last.receive(snapshot("likes", 0, 0, true));
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
    FakeSocket.last.receive(snapshot("likes", 1, 1));
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
    FakeSocket.last.receive(snapshot("likes", 1, 1));
    FakeSocket.last.receive(update("likes", 1, 2, 2));
    expect(seen).toEqual([2]);
    expect(likes.getState().version).toBe(2);
    expect(logged).toHaveBeenCalledTimes(1);
    logged.mockRestore();
  });
});
