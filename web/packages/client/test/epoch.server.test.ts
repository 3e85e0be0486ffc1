// The database's epoch against a real `tally serve`: a subscription that resumes after its
// server came back on another database (the file replaced, as by restoring an older backup) is
// sent a resync snapshot of the new database, instead of updates that would continue another
// history from the version it had.
import { rmSync } from "node:fs";
import { afterAll, describe, expect, it } from "vitest";
import { SocketCount } from "../../../test-support/sockets.js";
import { TallyServer, tempDir } from "../../../test-support/server.js";
import { until } from "../../../test-support/until.js";
import type { SnapshotMessage, Update } from "../src/protocol.js";
import { TallyClient } from "../src/rpc.js";
import { CounterSubscription } from "../src/subscription.js";

const dir = tempDir();
const database = `${dir.path}/tally.db`;
const servers: TallyServer[] = [];

afterAll(async () => {
  await Promise.all(servers.map((server) => server.stop()));
  dir.remove();
});

describe("a resume against a replaced database", () => {
  it("gets a resync snapshot of the new database, not the other history's updates", async () => {
    const first = await TallyServer.start(database, { args: ["--reconnect-spread", "0s"] });
    servers.push(first);
    const client = new TallyClient({
      baseUrl: first.url,
      WebSocket: new SocketCount().WebSocket,
      reconnect: { backoffMinMs: 200, backoffMaxMs: 500 },
    });
    await client.increment("replaced", 1);
    await client.increment("replaced", 1);
    const watching = new CounterSubscription(client, "replaced");
    const snapshots: SnapshotMessage[] = [];
    const updates: Update[] = [];
    watching.on("snapshot", (snapshot) => snapshots.push(snapshot));
    watching.on("update", (update) => updates.push(update));
    await until(watching, (s) => s.status === "connected" && s.version === 2);
    const oldEpoch = snapshots[0]?.epoch;
    expect(oldEpoch).toMatch(/^[0-9a-f]{16}$/);

    await first.stop();
    for (const file of ["tally.db", "tally.db-wal", "tally.db-shm"]) {
      rmSync(`${dir.path}/${file}`, { force: true });
    }
    // The new database's history is written first, on another port, so that the subscription
    // meets it at version 4 when it comes back: the versions it had exist there too.
    const elsewhere = await TallyServer.start(database);
    const other = new TallyClient({ baseUrl: elsewhere.url });
    for (const amount of [50, 1, 1, 1]) await other.increment("replaced", amount);
    await elsewhere.stop();
    const second = await TallyServer.start(database, {
      port: first.port,
      args: ["--reconnect-spread", "0s"],
    });
    servers.push(second);

    await until(watching, (s) => s.status === "connected" && s.version === 4 && s.value === 53);
    expect(snapshots).toHaveLength(2);
    const resync = snapshots[1];
    expect(resync?.resync).toBe(true);
    expect(resync?.epoch).toMatch(/^[0-9a-f]{16}$/);
    expect(resync?.epoch).not.toBe(oldEpoch);
    expect(updates, "no update of the other history was applied").toEqual([]);
    watching.disable();
  });
});
