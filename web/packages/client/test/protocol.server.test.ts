// The client against a real `tally serve` process: every RPC procedure and its answer shapes,
// the server's errors as typed errors, an unreachable server, and live subscriptions (on the
// client's one version-2 socket) that get every version exactly once across a server restart.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { TallyServer, tempDir } from "../../../test-support/server.js";
import {
  TallyClient,
  TallyConnectionError,
  TallyError,
  type TallyClientOptions,
} from "../src/rpc.js";
import { CounterSubscription } from "../src/subscription.js";
import { until } from "../../../test-support/until.js";
import type { Update } from "../src/protocol.js";

const dir = tempDir();
let server: TallyServer;
let client: TallyClient;

function clientFor(url: string, options: Partial<TallyClientOptions> = {}) {
  return new TallyClient({
    baseUrl: url,
    WebSocket: WebSocket as unknown as typeof globalThis.WebSocket,
    ...options,
  });
}

beforeAll(async () => {
  // Sockets told to come back at once when the server stops, so that the restart test's wait is
  // its backoff's.
  server = await TallyServer.start(`${dir.path}/tally.db`, { args: ["--reconnect-spread", "0s"] });
  client = clientFor(server.url);
});

afterAll(async () => {
  await server?.stop();
  dir.remove();
});

describe("RPC", () => {
  it("answers every procedure with the documented shapes", async () => {
    const name = "rpc-shapes";
    const zero = await client.getMetadata(name);
    expect(zero).toEqual({
      id: null,
      name,
      value: 0,
      createdAt: null,
      updatedAt: null,
      operationCount: 0,
      opsLastMinute: 0,
    });

    const first = await client.increment(name);
    expect(first).toMatchObject({ type: "increment", value: 1, previousValue: 0, version: 1 });
    expect(first.metadata).toMatchObject({ name, value: 1, operationCount: 1 });
    expect(first.metadata.updatedAt).toBe(first.timestamp);

    expect(await client.increment(name, 5)).toMatchObject({ value: 6, version: 2 });
    expect(await client.decrement(name, 2)).toMatchObject({ type: "decrement", value: 4 });
    expect(await client.decrement(name)).toMatchObject({ value: 3, version: 4 });
    expect(await client.setValue(name, -30)).toMatchObject({ type: "setValue", value: -30 });
    expect(await client.reset(name)).toMatchObject({ type: "reset", value: 0, previousValue: -30 });
    expect(await client.getValue(name)).toEqual({ value: 0, version: 6 });
    // The rate meter: the six writes just made.
    expect(await client.getMetadata(name)).toMatchObject({ operationCount: 6, opsLastMinute: 6 });

    const page = await client.getHistory(name, { limit: 4 });
    expect(page.entries.map((e) => [e.version, e.type, e.amount])).toEqual([
      [6, "reset", undefined],
      [5, "setValue", undefined],
      [4, "decrement", 1],
      [3, "decrement", 2],
    ]);
    expect(page.next).toBe(3);
    const rest = await client.getHistory(name, { limit: 4, before: page.next });
    expect(rest.entries.map((e) => e.version)).toEqual([2, 1]);
    expect(rest.next).toBeUndefined();
  });

  it("throws the server's refusals as TallyError with status, code and message", async () => {
    const refusal = (promise: Promise<unknown>) =>
      promise.then(
        () => expect.unreachable("the server accepted it"),
        (error: unknown) => {
          expect(error).toBeInstanceOf(TallyError);
          return error as TallyError;
        },
      );

    const badAmount = await refusal(client.increment("refusals", 0));
    expect(badAmount).toMatchObject({ status: 400, code: "invalid_amount", temporary: false });
    expect(badAmount.message).toBe("amount is 0; amount must be a whole number >= 1");

    const badName = await refusal(client.getValue("has space"));
    expect(badName).toMatchObject({ status: 400, code: "invalid_name" });

    await client.setValue("refusals", Number.MAX_SAFE_INTEGER);
    const overflow = await refusal(client.increment("refusals"));
    expect(overflow).toMatchObject({ status: 422, code: "out_of_range" });
    // A refused write changes nothing.
    expect(await client.getValue("refusals")).toEqual({
      value: Number.MAX_SAFE_INTEGER,
      version: 1,
    });

    const badLimit = await refusal(client.getHistory("refusals", { limit: 5000 }));
    expect(badLimit).toMatchObject({ status: 400, code: "invalid_limit" });
  });

  it("throws TallyConnectionError when nothing listens", async () => {
    const stopped = await TallyServer.start(`${dir.path}/stopped.db`);
    await stopped.stop();
    const error = await clientFor(stopped.url)
      .getValue("x")
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TallyConnectionError);
    expect((error as TallyConnectionError).message).toContain(stopped.url);
  });
});

describe("CounterSubscription against the server", () => {
  it("gets the snapshot, then every write of another client in order", async () => {
    await client.increment("live", 10);
    const live = new CounterSubscription(client, "live");
    const seen: Update[] = [];
    live.on("update", (u) => seen.push(u));
    await until(live, (s) => s.status === "connected");
    expect(live.getState()).toMatchObject({ value: 10, version: 1 });

    const writer = clientFor(server.url);
    const answers: Update[] = [];
    for (let i = 0; i < 20; i++) answers.push(await writer.increment("live"));
    await until(live, (s) => s.version === 21);
    expect(seen.map((u) => u.version)).toEqual(answers.map((a) => a.version));
    expect(live.getState().value).toBe(30);
    // The same Update the writer was answered, field for field.
    expect(seen[19]).toEqual(answers[19]);
    live.disable();
  });

  it("comes back after a restart and replays what happened meanwhile, each version once", async () => {
    const name = "restart";
    await client.increment(name);
    // A long first backoff, so that the writes below land while the subscription is away.
    const own = clientFor(server.url, { reconnect: { backoffMinMs: 4000 }, random: () => 1 });
    const watching = new CounterSubscription(own, name);
    const versions: number[] = [];
    watching.on("update", (u) => versions.push(u.version));
    await until(watching, (s) => s.status === "connected" && s.version === 1);

    const closes = new Set<number | null>();
    watching.subscribe(() => closes.add(watching.getState().error?.closeCode ?? null));
    await server.stop();
    await until(watching, (s) => s.status === "disconnected" && s.retryAt !== null);
    // The server's restart close, then (reconnecting at once, as advised) a refused attempt.
    expect([...closes]).toContain(1012);

    server = await server.restart();
    for (let i = 0; i < 5; i++) await client.increment(name);
    expect(watching.getState().status).toBe("disconnected");

    const back = await until(watching, (s) => s.status === "connected" && s.version === 6);
    expect(back.value).toBe(6);
    await client.increment(name);
    await until(watching, (s) => s.version === 7);
    expect(versions).toEqual([2, 3, 4, 5, 6, 7]);
    watching.disable();
  });

  it("replaces its state when the server cannot resume (resync)", async () => {
    await client.setValue("resync", 3);
    const ahead = new CounterSubscription(client, "resync", { since: 1000 });
    const state = await until(ahead, (s) => s.status === "connected" && s.version !== null);
    expect(state).toMatchObject({ value: 3, version: 1 });
    ahead.disable();
  });
});
