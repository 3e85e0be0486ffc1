// `client.list` against a real `tally serve` process: pages in name order that cover every
// counter once, the prefix filter, a token that may read `likes:*` only, and refusals as typed
// errors.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TallyServer, tempDir, type JwtServer } from "../../../test-support/server.js";
import { TallyClient, TallyError } from "../src/rpc.js";
import type { ListedCounter } from "../src/protocol.js";

const dir = tempDir();
let jwt: JwtServer;
let admin: TallyClient;

beforeAll(async () => {
  jwt = await TallyServer.startWithJwt(dir.path);
  const token = jwt.token({ sub: "root", grants: ["*=admin"] });
  admin = new TallyClient({ baseUrl: jwt.server.url, getToken: () => token });
  for (let index = 0; index < 12; index += 1) {
    await admin.increment(`likes:${String(index).padStart(2, "0")}`, index + 1);
  }
  for (const name of ["a:1", "m:1", "votes:1", "zz"]) await admin.increment(name);
});

afterAll(async () => {
  await jwt?.server.stop();
  dir.remove();
});

async function everyPage(client: TallyClient, prefix: string, limit: number) {
  const listed: ListedCounter[] = [];
  let after: string | undefined;
  for (;;) {
    const page = await client.list({ prefix, limit, ...(after ? { after } : {}) });
    expect(page.counters.length).toBeLessThanOrEqual(limit);
    listed.push(...page.counters);
    if (page.next === undefined) return listed;
    after = page.next;
  }
}

describe("client.list", () => {
  it("pages through every counter once, in name order, with its state", async () => {
    const listed = await everyPage(admin, "", 5);
    const names = listed.map((counter) => counter.name);
    expect(names).toEqual([...names].sort());
    expect(new Set(names).size).toBe(16);
    expect(listed.find((counter) => counter.name === "likes:03")).toMatchObject({
      value: 4,
      version: 1,
      watchers: 0,
    });
    expect(Date.parse(listed[0]!.updatedAt)).not.toBeNaN();
    const first = await admin.list({ limit: 2 });
    expect(first.counters.map((counter) => counter.name)).toEqual(["a:1", "likes:00"]);
    expect(first.next).toBe("likes:00");
  });

  it("keeps only names with the prefix", async () => {
    const likes = await everyPage(admin, "likes:", 100);
    expect(likes).toHaveLength(12);
    expect((await admin.list({ prefix: "votes" })).counters.map((c) => c.name)).toEqual([
      "votes:1",
    ]);
  });

  it("shows a token only what it may read", async () => {
    const token = jwt.token({ sub: "fan", grants: ["likes:*=read"] });
    const fan = new TallyClient({ baseUrl: jwt.server.url, getToken: () => token });
    const listed = await everyPage(fan, "", 3);
    expect(listed.map((counter) => counter.name)).toEqual(
      Array.from({ length: 12 }, (_, index) => `likes:${String(index).padStart(2, "0")}`),
    );
  });

  it("refuses bad input as typed errors", async () => {
    for (const [page, code] of [
      [{ limit: 0 }, "invalid_limit"],
      [{ limit: 1001 }, "invalid_limit"],
      [{ prefix: "a b" }, "invalid_field"],
      [{ after: "" }, "invalid_name"],
    ] as const) {
      const error = await admin.list(page).catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(TallyError);
      expect(error).toMatchObject({ status: 400, code });
    }
  });
});
