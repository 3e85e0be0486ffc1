/**
 * The types of every message of Tally's wire protocol, as docs/PROTOCOL.md describes them.
 *
 * Field names and shapes follow the server byte for byte; where the server may send something
 * newer than this client (an error code, a message type), the types leave room for it.
 *
 * The constants the server shares with clients (error codes, close codes, the name and
 * idempotency-key rules, the limits) are generated from `tally-proto` into
 * `generated/protocol-constants.ts`; this file only re-exports and uses them.
 */

import {
  CLOSE_CODES,
  ERROR_CODES,
  MAX_SAFE_INTEGER,
  NAME_MAX_BYTES,
  NAME_PATTERN,
  NO_RECONNECT_CLOSE_CODES,
  NO_RECONNECT_CLOSE_RANGE,
} from "./generated/protocol-constants.js";

export * from "./generated/protocol-constants.js";

/** The four operations that change a counter. */
export type OperationType = "increment" | "decrement" | "setValue" | "reset";

/**
 * What a grant may allow on a counter (PROTOCOL.md §9): `read` (getValue, getMetadata,
 * getHistory, watching), the four writes (`set` is setValue), and `admin` (everything, and seeing
 * who made each change).
 */
export type Action = "read" | "increment" | "decrement" | "set" | "reset" | "admin";

/** The actions that change a counter. */
export const WRITE_ACTIONS: readonly Action[] = ["increment", "decrement", "set", "reset"];

/**
 * Whether `can` (a snapshot's or an `authenticated` answer's) allows `action`; `admin` allows
 * everything.
 */
export function allows(can: readonly Action[], action: Action): boolean {
  return can.includes(action) || can.includes("admin");
}

/** A counter's descriptive state (PROTOCOL.md §3.2). `id` and the times are null before the first write. */
export interface Metadata {
  id: number | null;
  name: string;
  value: number;
  createdAt: string | null;
  updatedAt: string | null;
  /** The number of applied operations; always equal to the counter's version. */
  operationCount: number;
  /**
   * Operations committed in the last minute, all nodes together (at most 10 000 counted): only
   * in `getMetadata`'s answer, never in an update's metadata.
   */
  opsLastMinute?: number;
  /**
   * The counter's bounds (PROTOCOL.md §2, "Bounds"): only in the answers of `getMetadata` and
   * `configure`, never in an update's metadata.
   */
  bounds?: Bounds;
}

/**
 * A counter's bounds, set with `counter.configure`: writes that would take it below `min` or
 * above `max` (null: no such bound) are refused `out_of_bounds`, or, with `clamp`, increments and
 * decrements stop at the bound and their update says `clamped`.
 */
export interface Bounds {
  min: number | null;
  max: number | null;
  clamp: boolean;
}

/** The answer to every write, and the WebSocket message that announces it. */
export interface Update {
  type: OperationType;
  value: number;
  previousValue: number;
  version: number;
  metadata: Metadata;
  /** RFC 3339 UTC with milliseconds; operations of one batch share it, so order by version. */
  timestamp: string;
  /**
   * True when the counter's clamp mode stopped the operation at a bound: `value` is the bound,
   * not what the operation asked for. Absent otherwise.
   */
  clamped?: boolean;
  /**
   * Who made it (a token's subject, `key:NAME` or `anonymous`); present only for principals with
   * `admin` on the counter.
   */
  by?: string;
}

/** The answer to `counter.getValue`. */
export interface ValueAnswer {
  value: number;
  version: number;
}

/** One history item; `amount` is present for increment and decrement only. */
export interface Entry {
  version: number;
  type: OperationType;
  amount?: number;
  previousValue: number;
  value: number;
  timestamp: string;
  /** Who made it; present only for principals with `admin` on the counter (see `Update.by`). */
  by?: string;
}

/** The answer to `counter.getHistory`: entries newest first; `next` is present while older ones remain. */
export interface HistoryPage {
  entries: Entry[];
  next?: number;
}

/** One counter in the answer to `counter.list`. */
export interface ListedCounter {
  name: string;
  /** The committed value and version. */
  value: number;
  version: number;
  /** When the latest write was committed. */
  updatedAt: string;
  /** Subscriptions on the server that answered (in a cluster, each node counts its own). */
  watchers: number;
  /** The counter's bounds, when it has any. */
  bounds?: Bounds;
  /** The rate meter: operations committed in the last minute, as `getMetadata` counts them. */
  opsLastMinute: number;
}

/**
 * The answer to `counter.list`: the counters the principal may read, in name order; `next` is
 * present while more may follow (pass it as `after`). A page may hold fewer than `limit`.
 */
export interface CounterList {
  counters: ListedCounter[];
  next?: string;
}

/**
 * The answer to `counter.delete`: whether this call removed a stored counter, and the version it
 * had (0 and `deleted: false` when none was stored: deleting again is no error).
 */
export interface DeleteAnswer {
  name: string;
  deleted: boolean;
  version: number;
}

/** The first message of a watch without `since`, or of a resume that could not be served (`resync`). */
export interface SnapshotMessage {
  type: "snapshot";
  value: number;
  version: number;
  metadata: Metadata;
  /** When the snapshot was taken (not when the counter last changed: that is `metadata.updatedAt`). */
  timestamp: string;
  /** True when a resume could not be served: replace all local state with this snapshot. */
  resync?: boolean;
  /**
   * What the socket's principal may do to this counter (absent from servers older than access
   * control, which allow everything).
   */
  can?: Action[];
  /**
   * The database's epoch (16 lowercase hex digits; absent from servers older than epochs): a
   * resume names it beside `since`, so that one against another database (replaced, or restored
   * from a backup) is answered with a resync instead of another history's updates.
   */
  epoch?: string;
}

/** A resume is served: the updates `since + 1 ..= version` follow. */
export interface ResumedMessage {
  type: "resumed";
  since: number;
  version: number;
  /** The database's epoch (see `SnapshotMessage.epoch`). */
  epoch?: string;
}

/** Error codes the server answers (PROTOCOL.md §6); newer servers may send others. */
export type KnownErrorCode = keyof typeof ERROR_CODES;

/** A known code, or one newer than this client (then rely on the status and `temporary`). */
export type ErrorCode = KnownErrorCode | (string & {});

/** The body of every RPC error and refused WebSocket upgrade. */
export interface ErrorBody {
  error: {
    code: ErrorCode;
    message: string;
    temporary: boolean;
    /** How long to wait before trying again (`rate_limited`; also the `Retry-After` header). */
    retryAfterMs?: number;
    /** The counter's version, when a write's `expectedVersion` was not it (`version_conflict`). */
    currentVersion?: number;
    /** The counter's bounds, when a write would have left them (`out_of_bounds`). */
    min?: number;
    max?: number;
  };
}

/** The RPC counter procedures this client calls, with their request bodies and answers. */
export interface Procedures {
  increment: {
    request: { name: string; amount?: number; expectedVersion?: number };
    answer: Update;
  };
  decrement: {
    request: { name: string; amount?: number; expectedVersion?: number };
    answer: Update;
  };
  setValue: { request: { name: string; value: number; expectedVersion?: number }; answer: Update };
  reset: { request: { name: string }; answer: Update };
  getValue: { request: { name: string }; answer: ValueAnswer };
  getMetadata: { request: { name: string }; answer: Metadata };
  getHistory: {
    request: { name: string; limit?: number; before?: number };
    answer: HistoryPage;
  };
  list: {
    request: { prefix?: string; after?: string; limit?: number };
    answer: CounterList;
  };
  delete: { request: { name: string }; answer: DeleteAnswer };
  configure: {
    request: { name: string; min?: number | null; max?: number | null; clamp?: boolean };
    answer: Metadata;
  };
}

/** The name of an RPC procedure (the `x` of `POST /rpc/counter.x`). */
export type Procedure = keyof Procedures;

/**
 * WebSocket close codes the server sends (PROTOCOL.md §7), and 1006, which only a client sees.
 * 4000–4499 mean "reconnect with `since`"; 4500–4999 mean "do not reconnect without a change".
 */
export const CloseCode = {
  ...CLOSE_CODES,
  /** No close frame at all: a lost network, or a stalled send the server dropped. */
  ABNORMAL: 1006,
} as const;

/**
 * Whether a client should reconnect after the server closed with `code` (PROTOCOL.md §7), as it
 * is: not after 1000, 1002, 1007, 1008, 1009 or 4500–4999, which need a change on the client's side
 * first. After 4502 (token expired) a subscription reconnects once it has a fresh token.
 */
export function shouldReconnect(code: number): boolean {
  return !(
    NO_RECONNECT_CLOSE_CODES.includes(code) ||
    (code >= NO_RECONNECT_CLOSE_RANGE.min && code <= NO_RECONNECT_CLOSE_RANGE.max)
  );
}

/** Every value, amount and result stays within ±(2^53 − 1). */
export const MAX_VALUE = MAX_SAFE_INTEGER;

/** Longest counter name, in bytes. */
export const MAX_NAME_BYTES = NAME_MAX_BYTES;

const NAME_REGEXP = new RegExp(NAME_PATTERN);

/**
 * Why `name` is not a valid counter name, in words, or null when it is valid.
 * The rule is the server's (`NAME_RULE`, `NAME_PATTERN`, `NAME_MAX_BYTES`); the wording is the page's.
 */
export function nameProblem(name: string): string | null {
  if (name.length === 0) {
    return `the counter name is empty; use 1 to ${MAX_NAME_BYTES} of the characters A-Z a-z 0-9 _ . : -`;
  }
  if (!NAME_REGEXP.test(name)) {
    const bad = [...name].find((ch) => !NAME_REGEXP.test(ch)) ?? "";
    return `the counter name contains ${JSON.stringify(bad)}; only A-Z a-z 0-9 _ . : - are allowed`;
  }
  // The pattern allows ASCII only, so here characters are bytes.
  if (name.length > MAX_NAME_BYTES) {
    return `the counter name is ${name.length} characters long; at most ${MAX_NAME_BYTES} are allowed`;
  }
  return null;
}
