// A client for the unit tests of the one socket: its sockets are FakeSockets the test scripts,
// its RPCs fail (nothing here may reach HTTP unnoticed), and its jitter always picks the top of a
// range, so waits are predictable. Used with vitest's fake timers.
import { vi } from "vitest";
import { TallyClient, type TallyClientOptions } from "../src/rpc.js";
import { FakeSocket } from "./fake-socket.js";
import { sent } from "./v2-frames.js";

export function clientWith(options: Partial<TallyClientOptions> = {}): TallyClient {
  return new TallyClient({
    baseUrl: "http://tally.test:8094",
    fetch: () => Promise.reject(new Error("no RPC in unit tests")),
    WebSocket: FakeSocket as unknown as typeof WebSocket,
    random: () => 1,
    ...options,
  });
}

/** Lets pending promises settle without moving the clock. */
export const settle = () => vi.advanceTimersByTimeAsync(0);

/** Opens the newest socket and answers its first command if it is a ping, so it is connected. */
export function connect(): FakeSocket {
  const socket = FakeSocket.last;
  socket.open();
  const first = sent(socket)[0];
  if (first?.type === "ping") socket.receive({ type: "pong", id: first.id, timestamp: "" });
  return socket;
}
