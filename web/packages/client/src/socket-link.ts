/**
 * The one WebSocket a connection has at a time: opening it, sending commands with fresh ids, and
 * remembering what each command other than a call was, so that its reply can be told apart
 * (replies carry only the id, PROTOCOL.md §10.2). It does not read frames or decide anything;
 * connection.ts does. Once the socket is dropped its events reach nobody, so a late frame of an
 * old socket can never be taken for one of the new socket's.
 */

import { CloseCode } from "./protocol.js";
import type { SocketCommand } from "./socket-frames.js";

/** A command other than a call on its way, by id. */
export type Flight =
  | { kind: "subscribe"; name: string }
  | { kind: "unsubscribe"; name: string }
  | { kind: "ping" }
  | { kind: "watchServer" }
  | { kind: "unwatchServer" }
  /** `first`: the credential of a new socket (a refusal means it is not valid). */
  | { kind: "auth"; first: boolean };

/** What the current socket reports. */
export interface LinkEvents {
  opened(): void;
  /** A text message; binary ones are not part of the protocol and are ignored. */
  message(text: string): void;
  /** It closed (or failed): the caller drops it and decides what comes next. */
  closed(code: number, reason: string): void;
}

export class SocketLink {
  #socket: WebSocket | null = null;
  /** Ids never repeat within a connection, so a reply is never matched to the wrong command. */
  #nextId = 1;
  readonly #flights = new Map<number, Flight>();

  /** Whether there is a socket (opening or open). */
  get present(): boolean {
    return this.#socket !== null;
  }

  /**
   * Opens a socket to `url` in place of none, reporting its events to `events` while it is the
   * current one. Throws what the WebSocket constructor throws (a malformed URL, say).
   */
  open(WebSocketClass: new (url: string) => WebSocket, url: string, events: LinkEvents): void {
    const socket = new WebSocketClass(url);
    this.#socket = socket;
    socket.onopen = () => {
      if (this.#socket === socket) events.opened();
    };
    socket.onmessage = (event: MessageEvent) => {
      if (this.#socket === socket && typeof event.data === "string") events.message(event.data);
    };
    socket.onclose = (event: CloseEvent) => {
      if (this.#socket === socket) events.closed(event.code, event.reason);
    };
    // A close always follows an error, and decides what happens next. The handler stays even
    // after the socket is dropped: Node's `ws` throws an error nobody listens to.
    socket.onerror = () => {};
  }

  /**
   * Sends `command` with a fresh id on the open socket and remembers `flight` for its reply;
   * returns the id, or null when no socket is open.
   */
  send(command: SocketCommand, flight: Flight | null): number | null {
    const socket = this.#socket;
    if (socket === null || socket.readyState !== 1) return null;
    const id = this.#nextId++;
    socket.send(JSON.stringify({ id, ...command }));
    if (flight !== null) this.#flights.set(id, flight);
    return id;
  }

  /** What command `id` was (if it was not a call), forgetting it: its one reply came. */
  take(id: number | undefined): Flight | undefined {
    if (id === undefined) return undefined;
    const flight = this.#flights.get(id);
    this.#flights.delete(id);
    return flight;
  }

  /** Forgets the socket and what was on its way, and closes it. */
  drop(): void {
    this.#flights.clear();
    const socket = this.#socket;
    this.#socket = null;
    if (socket === null) return;
    socket.onopen = null;
    socket.onmessage = null;
    socket.onclose = null;
    if (socket.readyState === 0 || socket.readyState === 1) socket.close(CloseCode.NORMAL);
  }
}
