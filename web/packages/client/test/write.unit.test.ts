// The write-retry rule with fake timers and a scripted `fetch`: the backoff schedule, when a write
// is sent again and when it is not, giving up after `retryFor` with the key named, and aborting.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { TallyClient, TallyConnectionError, TallyError } from "../src/rpc.js";
import {
  AttemptFailure,
  WRITE_BACKOFF,
  idempotencyKeyProblem,
  newIdempotencyKey,
  retrying,
} from "../src/write.js";

beforeEach(() => {
  vi.useFakeTimers();
});

afterEach(() => {
  vi.useRealTimers();
});

const unknown = () => new AttemptFailure("unknown", new Error("lost"));
const notSent = () => new AttemptFailure("notSent", new Error("refused"));
const tagged = (error: unknown, key: string) => new Error(`gave up on ${key}`, { cause: error });

/** Runs `retrying` with the largest jitter (each delay is its ceiling), noting when each attempt starts. */
function schedule(outcomes: (() => unknown)[], retryFor = 30_000, signal?: AbortSignal) {
  const started = Date.now();
  const times: number[] = [];
  const promise = retrying(
    "key-1",
    { retryFor, signal, random: () => 1 },
    async () => {
      times.push(Date.now() - started);
      const outcome = outcomes[Math.min(times.length - 1, outcomes.length - 1)];
      const result = outcome?.();
      if (result instanceof AttemptFailure) throw result;
      return result;
    },
    tagged,
  );
  // Handled here so that an expected rejection is not reported before the test awaits it.
  promise.catch(() => {});
  return { promise, times };
}

describe("retrying", () => {
  it("waits 250 ms doubling to 5 s between attempts and gives up within retryFor, naming the key", async () => {
    const { promise, times } = schedule([unknown]);
    await vi.runAllTimersAsync();
    const error = await promise.catch((e: unknown) => e);
    expect((error as Error).message).toBe("gave up on key-1");
    // Ceilings 250, 500, 1000, 2000, 4000, then 5000 each; the next would end past 30 s.
    expect(times).toEqual([0, 250, 750, 1750, 3750, 7750, 12750, 17750, 22750, 27750]);
    expect(WRITE_BACKOFF).toEqual({ min: 250, max: 5_000, factor: 2 });
  });

  it("keeps jittered delays within their ceilings", async () => {
    const started = Date.now();
    const times: number[] = [];
    const promise = retrying(
      "key",
      { retryFor: 60_000, random: () => 0.5 },
      async () => {
        times.push(Date.now() - started);
        if (times.length < 4) throw unknown();
        return "done";
      },
      tagged,
    );
    await vi.runAllTimersAsync();
    expect(await promise).toBe("done");
    expect(times).toEqual([0, 125, 375, 875]);
  });

  it("does not send again a first attempt that reached no server", async () => {
    const { promise, times } = schedule([notSent]);
    await vi.runAllTimersAsync();
    expect(((await promise.catch((e: unknown) => e)) as Error).message).toBe("refused");
    expect(times).toEqual([0]);
  });

  it("sends again through refused connections once the write may have been applied", async () => {
    const { promise, times } = schedule([unknown, notSent, notSent, () => "answer"]);
    await vi.runAllTimersAsync();
    expect(await promise).toBe("answer");
    expect(times).toEqual([0, 250, 750, 1750]);
  });

  it("does not send again after a final answer", async () => {
    const refusal = new Error("refused for good");
    const { promise, times } = schedule([unknown, () => new AttemptFailure("final", refusal)]);
    await vi.runAllTimersAsync();
    expect(await promise.catch((e: unknown) => e)).toBe(refusal);
    expect(times).toEqual([0, 250]);
  });

  it("stops at an abort during the delay and rejects with the abort reason", async () => {
    const controller = new AbortController();
    const { promise, times } = schedule([unknown], 30_000, controller.signal);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(times).toEqual([0, 250, 750]);
    const reason = new Error("the user left");
    controller.abort(reason);
    await vi.runAllTimersAsync();
    expect(await promise.catch((e: unknown) => e)).toBe(reason);
    expect(times).toEqual([0, 250, 750]);
  });
});

describe("idempotency keys", () => {
  it("are 32 random hex digits that follow the server's rule", () => {
    const first = newIdempotencyKey();
    expect(first).toMatch(/^[0-9a-f]{32}$/);
    expect(newIdempotencyKey()).not.toBe(first);
    expect(idempotencyKeyProblem(first)).toBeNull();
    expect(idempotencyKeyProblem("order-1234-like")).toBeNull();
    expect(idempotencyKeyProblem("")).toContain("1 to 128 printable ASCII characters");
    expect(idempotencyKeyProblem("has space")).not.toBeNull();
    expect(idempotencyKeyProblem("é")).not.toBeNull();
    expect(idempotencyKeyProblem("k".repeat(128))).toBeNull();
    expect(idempotencyKeyProblem("k".repeat(129))).not.toBeNull();
  });
});

/** A `fetch` that answers each call with the next of `answers` (a Response, or an error to throw). */
function scriptedFetch(answers: (() => Response | Error)[]) {
  const requests: { url: string; headers: Record<string, string>; body: string }[] = [];
  const fetch = vi.fn(async (url: string | URL | Request, init?: RequestInit) => {
    requests.push({
      url: String(url),
      headers: { ...(init?.headers as Record<string, string>) },
      body: String(init?.body),
    });
    const answer = answers[Math.min(requests.length - 1, answers.length - 1)]?.();
    if (answer instanceof Error) throw answer;
    if (!answer) throw new Error("no answer scripted");
    return answer;
  });
  return { fetch: fetch as unknown as typeof globalThis.fetch, requests };
}

const json = (status: number, body: unknown) =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
const update = { type: "increment", value: 1, previousValue: 0, version: 1 };
const unavailable = () =>
  json(503, { error: { code: "unavailable", message: "storage is down", temporary: true } });
/** What a browser's fetch throws for any network failure: no cause, no code. */
const browserFailure = () => new TypeError("Failed to fetch");
/** What Node's fetch throws when nothing listens. */
const refused = () =>
  new TypeError("fetch failed", {
    cause: Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }),
  });

/** A client whose backoff jitter always picks the top of a range, so attempts are countable. */
function clientWith(answers: (() => Response | Error)[], retryFor?: number) {
  const { fetch, requests } = scriptedFetch(answers);
  const options = retryFor === undefined ? {} : { retryFor };
  const client = new TallyClient({ baseUrl: "http://tally", fetch, random: () => 1, ...options });
  return { client, requests };
}

describe("TallyClient writes", () => {
  it("send the same Idempotency-Key again after a lost answer and a 503", async () => {
    const { client, requests } = clientWith([browserFailure, unavailable, () => json(200, update)]);
    const answer = client.increment("likes", 2);
    await vi.runAllTimersAsync();
    expect(await answer).toEqual(update);
    expect(requests).toHaveLength(3);
    const key = requests[0]?.headers["Idempotency-Key"];
    expect(key).toMatch(/^[0-9a-f]{32}$/);
    for (const request of requests) {
      expect(request.headers["Idempotency-Key"]).toBe(key);
      expect(request.body).toBe('{"name":"likes","amount":2}');
    }
  });

  it("use the caller's key, and a new random one per write otherwise", async () => {
    const { client, requests } = clientWith([() => json(200, update)]);
    await client.reset("likes", { idempotencyKey: "order-1234" });
    await client.setValue("likes", 5);
    await client.setValue("likes", 5);
    expect(requests.map((r) => r.headers["Idempotency-Key"])[0]).toBe("order-1234");
    expect(requests[1]?.headers["Idempotency-Key"]).not.toBe(
      requests[2]?.headers["Idempotency-Key"],
    );
  });

  it("fail at once when the first attempt reached no server", async () => {
    const { client, requests } = clientWith([refused]);
    const error = await client.increment("likes").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TallyConnectionError);
    expect((error as TallyConnectionError).idempotencyKey).toBeNull();
    expect(requests).toHaveLength(1);
  });

  it("are not sent again after a refusal or a rate limit", async () => {
    const reused = () =>
      json(422, { error: { code: "idempotency_key_reused", message: "used", temporary: false } });
    const limited = () =>
      json(429, { error: { code: "rate_limited", message: "slow", temporary: true } });
    for (const answer of [reused, limited]) {
      const { client, requests } = clientWith([answer]);
      const error = await client.increment("likes").catch((e: unknown) => e);
      expect(error).toBeInstanceOf(TallyError);
      expect(requests).toHaveLength(1);
    }
  });

  it("give up after retryFor with an error that names the key", async () => {
    const { client, requests } = clientWith([browserFailure], 2_000);
    const answer = client.decrement("likes", 1, { idempotencyKey: "k-1" }).catch((e: unknown) => e);
    await vi.runAllTimersAsync();
    const error = (await answer) as TallyConnectionError;
    expect(error).toBeInstanceOf(TallyConnectionError);
    expect(error.idempotencyKey).toBe("k-1");
    expect(error.message).toContain("send it again with idempotency key k-1");
    expect(requests.length).toBeGreaterThan(1);
    expect(requests.length).toBeLessThan(6);
  });

  it("count an unanswered request as unknown after requestTimeout", async () => {
    let calls = 0;
    const fetch = (async (_url: string, init?: RequestInit) => {
      calls++;
      if (calls > 1) return json(200, update);
      // Hangs until aborted, like a request whose answer never comes.
      return new Promise<Response>((_resolve, reject) => {
        init?.signal?.addEventListener("abort", () => reject(init.signal?.reason));
      });
    }) as unknown as typeof globalThis.fetch;
    const client = new TallyClient({ baseUrl: "http://tally", fetch, requestTimeout: 1_000 });
    const answer = client.increment("likes");
    await vi.runAllTimersAsync();
    expect(await answer).toEqual(update);
    expect(calls).toBe(2);
  });

  it("reject with the abort reason and are not sent after an abort", async () => {
    const { client, requests } = clientWith([browserFailure]);
    const controller = new AbortController();
    const answer = client.increment("likes", 1, { signal: controller.signal });
    answer.catch(() => {});
    await vi.advanceTimersByTimeAsync(1_000);
    const sent = requests.length;
    expect(sent).toBeGreaterThan(1);
    controller.abort("stop");
    await vi.runAllTimersAsync();
    expect(await answer.catch((e: unknown) => e)).toBe("stop");
    expect(requests).toHaveLength(sent);
    expect(await client.reset("x", { signal: controller.signal }).catch((e: unknown) => e)).toBe(
      "stop",
    );
    expect(requests).toHaveLength(sent);
  });
});

describe("TallyClient reads", () => {
  it("carry no key, are sent once, and refuse one", async () => {
    const { client, requests } = clientWith([browserFailure]);
    expect(await client.getValue("likes").catch((e: unknown) => e)).toBeInstanceOf(
      TallyConnectionError,
    );
    expect(requests).toHaveLength(1);
    expect(requests[0]?.headers["Idempotency-Key"]).toBeUndefined();
    const misuse = client.call("getValue", { name: "likes" }, { idempotencyKey: "k" });
    await expect(misuse).rejects.toThrow(TypeError);
  });
});
