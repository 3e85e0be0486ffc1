/**
 * The frames of socket protocol version 2 (`GET /ws`, docs/PROTOCOL.md §10): the commands a
 * client sends, each with an `id`, and the replies (carrying that `id`) and pushes (without one)
 * the server sends. The shapes are `tally_proto::socket::{Command, Frame}`.
 */

import type {
  ErrorCode,
  OperationType,
  Procedure,
  ResumedMessage,
  SnapshotMessage,
  Update,
} from "./protocol.js";

/** How one subscription asks to be served (PROTOCOL.md §10.3, `subscribe`). */
export interface SubscribeFields {
  /** Only updates of these types; delivered versions then jump over the others. */
  types?: OperationType[];
  /** At most this many updates a second (0 < R ≤ 1000), each the latest state (conflation). */
  maxRate?: number;
  /** Also get `presence` pushes: how many watch the counter. */
  presence?: boolean;
}

/** Everything a client sends on `/ws`, without its `id`. */
export type SocketCommand =
  | { type: "auth"; token: string }
  | ({ type: "subscribe"; name: string; since?: number; epoch?: string } & SubscribeFields)
  | { type: "unsubscribe"; name: string }
  | ({ type: "call"; procedure: `counter.${Procedure}`; idempotencyKey?: string } & Record<
      string,
      unknown
    >)
  | { type: "ping" }
  | { type: "watchServer" }
  | { type: "unwatchServer" };

/**
 * The server's own figures (`serverStats`, PROTOCOL.md §10.3 `watchServer`), sampled once a
 * second from its metrics. Rates are over the last second; percentiles and the mean commit
 * time over the last 10 seconds, absent when nothing happened in them.
 */
export interface ServerStats {
  /** When they were sampled (RFC 3339 UTC). */
  at: string;
  /** Open TCP connections (HTTP and WebSocket). */
  connections: number;
  /** Open WebSockets. */
  websockets: number;
  /** Counter subscriptions, both socket versions. */
  watchers: number;
  /** Counters with a live actor. */
  countersInMemory: number;
  opsPerSecond: number;
  /** The 99th percentile of an operation's time to its answer, commit included (ms). */
  p99Ms?: number;
  /** Transactions committed per second (one fsync each). */
  commitsPerSecond: number;
  /** The mean time to write and sync one transaction (ms), fsync included. */
  commitMs?: number;
  /** The 99th percentile of a commit's time (ms). */
  commitP99Ms?: number;
  /** Whether the store takes writes. */
  ready: boolean;
  /** Why not, when it does not. */
  readyReason?: string;
}

/** How many watch a counter: subscriptions over every socket, and distinct principals among them. */
export interface Presence {
  watchers: number;
  users: number;
}

/** Everything the server sends on `/ws` that this client reads. */
export type SocketFrame =
  | (SnapshotMessage & { id?: number; name: string })
  | (ResumedMessage & { id: number; name: string })
  | (Update & { name: string; conflated?: boolean })
  | ({ type: "presence"; name: string } & Presence)
  | { type: "unsubscribed"; id?: number; name: string; code?: string; reason?: string }
  | { type: "reconnect"; afterMs: number; reason?: string }
  | { type: "result"; id: number; result: unknown }
  | {
      type: "error";
      id?: number;
      code: ErrorCode;
      message: string;
      temporary?: boolean;
      retryAfterMs?: number;
      currentVersion?: number;
      min?: number;
      max?: number;
    }
  | { type: "authenticated"; id: number; principal: string; expiresAt?: string }
  | { type: "pong"; id: number; timestamp: string }
  | ({ type: "serverStats"; id?: number } & ServerStats)
  | { type: "serverUnwatched"; id?: number; code?: string; reason?: string };

const UPDATE_TYPES = new Set(["increment", "decrement", "setValue", "reset"]);

/** True for the four update pushes. */
export function isUpdateFrame(
  frame: SocketFrame,
): frame is Update & { name: string; conflated?: boolean } {
  return UPDATE_TYPES.has(frame.type);
}

/**
 * Reads one text message of `/ws`, or returns null when it is not a frame this client knows (a
 * newer server's: it is then only a sign of life). Checks what the client relies on to route a
 * frame (its `type`, `name`, `id`, versions), not every field.
 */
export function parseSocketFrame(text: string): SocketFrame | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof parsed !== "object" || parsed === null) return null;
  const frame = parsed as Record<string, unknown>;
  const named = typeof frame.name === "string";
  const hasId = typeof frame.id === "number";
  const versioned = typeof frame.version === "number" && typeof frame.value === "number";
  switch (frame.type) {
    case "snapshot":
      return named && versioned ? (parsed as SocketFrame) : null;
    case "increment":
    case "decrement":
    case "setValue":
    case "reset":
      return named && versioned ? (parsed as SocketFrame) : null;
    case "resumed":
      return named && hasId && typeof frame.since === "number" && typeof frame.version === "number"
        ? (parsed as SocketFrame)
        : null;
    case "presence":
      return named && typeof frame.watchers === "number" && typeof frame.users === "number"
        ? (parsed as SocketFrame)
        : null;
    case "unsubscribed":
      return named ? (parsed as SocketFrame) : null;
    case "reconnect":
      return typeof frame.afterMs === "number" ? (parsed as SocketFrame) : null;
    case "result":
    case "pong":
      return hasId ? (parsed as SocketFrame) : null;
    case "authenticated":
      return hasId && typeof frame.principal === "string" ? (parsed as SocketFrame) : null;
    case "error":
      return typeof frame.code === "string" ? (parsed as SocketFrame) : null;
    case "serverStats":
      return typeof frame.opsPerSecond === "number" && typeof frame.ready === "boolean"
        ? (parsed as SocketFrame)
        : null;
    case "serverUnwatched":
      return parsed as SocketFrame;
    default:
      return null;
  }
}
