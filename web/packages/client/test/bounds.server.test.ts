// `client.configure` against a real `tally serve` process: bounds that refuse a write with a
// typed `out_of_bounds` TallyError carrying them (over HTTP and over the socket), clamp mode's
// `clamped` update, the bounds in `getMetadata`, and a non-admin refused.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TallyServer, tempDir, type JwtServer } from "../../../test-support/server.js";
import { TallyClient, TallyError } from "../src/rpc.js";

const dir = tempDir();
let jwt: JwtServer;
let admin: TallyClient;

beforeAll(async () => {
  jwt = await TallyServer.startWithJwt(dir.path);
  const token = jwt.token({ sub: "root", grants: ["*=admin"] });
  admin = new TallyClient({ baseUrl: jwt.server.url, getToken: () => token });
});

afterAll(async () => {
  await jwt?.server.stop();
  dir.remove();
});

async function refusal(promise: Promise<unknown>): Promise<TallyError> {
  const error = await promise.then(
    () => null,
    (error: unknown) => error,
  );
  expect(error).toBeInstanceOf(TallyError);
  return error as TallyError;
}

describe("client.configure", () => {
  it("sets bounds that refuse a write past them, saying the bounds", async () => {
    const configured = await admin.configure("ts-seats", { min: 0, max: 3 });
    expect(configured.bounds).toEqual({ min: 0, max: 3, clamp: false });
    await admin.increment("ts-seats", 3);
    const refused = await refusal(admin.increment("ts-seats"));
    expect(refused.code).toBe("out_of_bounds");
    expect(refused.status).toBe(409);
    expect([refused.min, refused.max]).toEqual([0, 3]);
    expect(refused.message).toContain("past its max 3");
    expect(await admin.getValue("ts-seats")).toEqual({ value: 3, version: 1 });

    const tooLow = await refusal(admin.configure("ts-seats", { max: 2 }));
    expect([tooLow.code, tooLow.max]).toEqual(["out_of_bounds", 2]);
    const crossed = await refusal(admin.configure("ts-seats", { min: 5, max: 1 }));
    expect(crossed.code).toBe("invalid_field");
  });

  it("refuses over the socket with the bounds too", async () => {
    await admin.configure("ts-socket", { min: 0 });
    // A retained connection (a live watch) sends writes over the socket.
    const stop = admin.connection.watch("ts-socket", {}, {});
    try {
      const refused = await refusal(admin.decrement("ts-socket"));
      expect([refused.code, refused.min, refused.max]).toEqual(["out_of_bounds", 0, null]);
    } finally {
      stop();
    }
  });

  it("clamps in clamp mode and says so in the update", async () => {
    await admin.setValue("ts-cap", 8);
    await admin.configure("ts-cap", { min: 0, max: 10, clamp: true });
    const clamped = await admin.increment("ts-cap", 5);
    expect([clamped.value, clamped.clamped]).toEqual([10, true]);
    const within = await admin.decrement("ts-cap");
    expect(within.clamped).toBeUndefined();
    const metadata = await admin.getMetadata("ts-cap");
    expect(metadata.bounds).toEqual({ min: 0, max: 10, clamp: true });
    const cleared = await admin.configure("ts-cap");
    expect(cleared.bounds).toEqual({ min: null, max: null, clamp: false });
  });

  it("is refused to a principal without admin", async () => {
    const token = jwt.token({ sub: "writer", grants: ["ts-*=read,increment"] });
    const writer = new TallyClient({ baseUrl: jwt.server.url, getToken: () => token });
    const refused = await refusal(writer.configure("ts-seats", { max: 100 }));
    expect(refused.code).toBe("forbidden");
    expect((await admin.getMetadata("ts-seats")).bounds?.max).toBe(3);
  });
});
