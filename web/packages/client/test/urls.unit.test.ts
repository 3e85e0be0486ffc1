// A client of several base URLs with a scripted `fetch` and fake timers: which URL each attempt
// of an HTTP call goes to. It moves on after a connection-level failure (refused, lost answer) and
// a temporary 5xx, keeps a write's idempotency key across URLs, stays on the URL that worked, and
// never moves on after a refusal.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { TallyClient, TallyConnectionError, TallyError } from "../src/rpc.js";

beforeEach(() => {
  vi.useFakeTimers();
});

afterEach(() => {
  vi.useRealTimers();
});

const json = (status: number, body: unknown) =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
const update = { type: "increment", value: 1, previousValue: 0, version: 1 };
const value = { value: 1, version: 1 };
/** What Node's fetch throws when nothing listens: no connection, so nothing was sent. */
const refused = () =>
  new TypeError("fetch failed", {
    cause: Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }),
  });
/** What a browser's fetch throws for any network failure: the fate is unknown. */
const lost = () => new TypeError("Failed to fetch");
const unavailable = () =>
  json(503, { error: { code: "unavailable", message: "shutting down", temporary: true } });
const invalid = () =>
  json(400, { error: { code: "invalid_amount", message: "amount is 0", temporary: false } });

/** A `fetch` that answers by host: `script[host]` gives each request to it the next answer. */
function clusterFetch(script: Record<string, (() => Response | Error)[]>) {
  const requests: { host: string; path: string; key: string | undefined }[] = [];
  const fetch = vi.fn(async (url: string | URL | Request, init?: RequestInit) => {
    const parsed = new URL(String(url));
    const headers = { ...(init?.headers as Record<string, string>) };
    requests.push({ host: parsed.host, path: parsed.pathname, key: headers["Idempotency-Key"] });
    const answers = script[parsed.host] ?? [refused];
    const seen = requests.filter((request) => request.host === parsed.host).length;
    const answer = answers[Math.min(seen - 1, answers.length - 1)]?.();
    if (answer instanceof Error) throw answer;
    if (!answer) throw new Error("no answer scripted");
    return answer;
  });
  return { fetch: fetch as unknown as typeof globalThis.fetch, requests };
}

function clusterClient(script: Record<string, (() => Response | Error)[]>) {
  const { fetch, requests } = clusterFetch(script);
  const client = new TallyClient({
    baseUrl: ["http://a:1", "http://b:1/", "http://c:1"],
    fetch,
    random: () => 1,
  });
  return { client, requests, hosts: () => requests.map((request) => request.host) };
}

describe("a client of several base URLs", () => {
  it("keeps them in order without trailing slashes, and makes each one's socket URL", () => {
    const client = new TallyClient({ baseUrl: ["http://a:1/", "https://b:2"] });
    expect(client.baseUrls).toEqual(["http://a:1", "https://b:2"]);
    expect(client.baseUrl).toBe("http://a:1");
    expect(client.socketUrl()).toBe("ws://a:1/ws");
    expect(client.socketUrl(1)).toBe("wss://b:2/ws");
    expect(new TallyClient({ baseUrl: "http://one:1" }).baseUrls).toEqual(["http://one:1"]);
    expect(new TallyClient({ baseUrl: [] }).baseUrls).toEqual([""]);
  });

  it("sends a write that reached no server to the next URL at once, with its key, and stays there", async () => {
    const { client, requests, hosts } = clusterClient({
      "a:1": [refused],
      "b:1": [() => json(200, update)],
    });
    expect(await client.increment("likes")).toEqual(update);
    expect(hosts()).toEqual(["a:1", "b:1"]);
    expect(requests[1]?.key).toBe(requests[0]?.key);
    await client.increment("likes");
    await client.getValue("likes").catch(() => {});
    expect(hosts()).toEqual(["a:1", "b:1", "b:1", "b:1"]);
  });

  it("fails a write at once when no URL can be reached: nothing was sent anywhere", async () => {
    const { client, hosts } = clusterClient({});
    const error = await client.increment("likes").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TallyConnectionError);
    expect((error as TallyConnectionError).idempotencyKey).toBeNull();
    expect(hosts()).toEqual(["a:1", "b:1", "c:1"]);
  });

  it("sends a write of unknown fate (a lost answer, a 503) to the next URL after the backoff, with the same key", async () => {
    const { client, requests, hosts } = clusterClient({
      "a:1": [lost],
      "b:1": [unavailable],
      "c:1": [() => json(200, update)],
    });
    const answer = client.increment("likes", 1, { idempotencyKey: "order-1" });
    await vi.runAllTimersAsync();
    expect(await answer).toEqual(update);
    expect(hosts()).toEqual(["a:1", "b:1", "c:1"]);
    expect(requests.map((request) => request.key)).toEqual(["order-1", "order-1", "order-1"]);
  });

  it("does not move on after a refusal: it is the cluster's answer", async () => {
    const { client, hosts } = clusterClient({ "a:1": [invalid, () => json(200, update)] });
    const error = await client.increment("likes", 0).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TallyError);
    expect((error as TallyError).code).toBe("invalid_amount");
    expect(await client.increment("likes")).toEqual(update);
    expect(hosts()).toEqual(["a:1", "a:1"]);
  });

  it("tries a read once on each URL, moving on after any failure of the connection", async () => {
    const { client, hosts } = clusterClient({
      "a:1": [lost],
      "b:1": [refused],
      "c:1": [() => json(200, value)],
    });
    expect(await client.getValue("likes")).toEqual(value);
    expect(hosts()).toEqual(["a:1", "b:1", "c:1"]);

    const nowhere = clusterClient({ "a:1": [lost], "b:1": [unavailable], "c:1": [lost] });
    const error = await nowhere.client.getValue("likes").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TallyConnectionError);
    expect(nowhere.hosts()).toEqual(["a:1", "b:1", "c:1"]);
  });
});
