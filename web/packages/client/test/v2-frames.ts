// Version-2 socket frames for the unit tests, as the server sends them (docs/PROTOCOL.md §10.4),
// built on the version-1 fixtures, and helpers to read what the client sent on a FakeSocket.
import { snapshot, update } from "../../../test-support/fixtures.js";
import type { FakeSocket } from "./fake-socket.js";

/** A command the client sent: its id, type and fields. */
export type Sent = { id: number; type: string } & Record<string, unknown>;

/** The commands sent on `socket`, of `type` if given. */
export function sent(socket: FakeSocket, type?: string): Sent[] {
  const all = socket.messages as Sent[];
  return type === undefined ? all : all.filter((command) => command.type === type);
}

/** The last command of `type` sent on `socket`. */
export function lastSent(socket: FakeSocket, type: string): Sent {
  const command = sent(socket, type).at(-1);
  if (command === undefined) throw new Error(`no ${type} was sent`);
  return command;
}

/** The reply to subscribe `id`: a snapshot of `name`. */
export function snapshotReply(id: number, name: string, value: number, version: number) {
  return { ...snapshot(name, value, version), id, name };
}

/** An update push of `name`. */
export function updatePush(name: string, previousValue: number, value: number, version: number) {
  return { name, ...update(name, previousValue, value, version) };
}

/** The reply to call `id`: the write's Update. */
export function resultReply(
  id: number,
  name: string,
  previousValue: number,
  value: number,
  version: number,
) {
  return { type: "result", id, result: update(name, previousValue, value, version) };
}
