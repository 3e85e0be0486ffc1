/**
 * The client's reconnect rules as a pure state machine: events in, actions out, with no clock,
 * no randomness and no I/O, so that one file of scripted scenarios
 * (`protocol/reconnect-scenarios.json`) checks every rule here and in the Rust client alike.
 * docs/PROTOCOL.md §11 ("Client reconnect rules") says each rule and why.
 *
 * This is a port of `crates/tally-client/src/reconnect.rs` with the same semantics; the event
 * and action shapes are the scenario file's JSON, so a driver (and the scenario test) can feed
 * the file's events in and compare the actions out as they are.
 *
 * The machine never reads the time: it asks for timers (`timer`, `wait`, `later` actions) and is
 * told when they fire (`timer` and `due` events). A wait is given as bounds (`[minMs, maxMs]`);
 * the driver picks a uniform random delay within them, so the scenarios stay deterministic while
 * real clients get full jitter.
 *
 * What the machine owns: the phase of the connection, the backoff attempt, which of the server
 * URLs the next attempt goes to, each subscription's last delivered version (what a resume sends
 * as `since`), and whether an update is passed on, dropped, or shows a gap. What it does not:
 * sockets, tokens, calls, payloads.
 *
 * With several server URLs (the nodes of one cluster), each attempt goes to one of them (the
 * `connect` action's `url`, an index into the list): the first attempt to the first URL, and every
 * end of a connection or an attempt that calls for a reconnect moves on to the next one, round
 * robin, before the wait. So a lost node's clients come back on another node and resume there with
 * `since`, as they would on the same one.
 *
 * `TallyConnection` (connection.ts) drives it: the client's one socket, which every
 * `CounterSubscription` is a view over.
 */

import { Backoff } from "./backoff.js";
import { CloseCode, shouldReconnect } from "./protocol.js";

/**
 * The numbers the rules use, in milliseconds. The keys are those of the scenario file's `rules`
 * object, so the test can check that the file's numbers are the ones the client ships with.
 */
export interface ReconnectRules {
  /** The ceiling of the first wait after a failure. */
  backoffMinMs: number;
  /** The largest ceiling of a wait. */
  backoffMaxMs: number;
  /** How much the ceiling grows per failure in a row. */
  backoffFactor: number;
  /** A connection established this long resets the backoff to its first step. */
  minUptimeMs: number;
  /** How long from starting a connection to its first frame before it is abandoned. */
  connectTimeoutMs: number;
  /** How often a quiet connection is checked (pinged, then given up). */
  pingIntervalMs: number;
  /** The longest server-advised delay honoured; a longer one is cut to this. */
  maxAdvisedDelayMs: number;
  /** How soon to ask a failing token source again while the socket's token still works. */
  tokenRetryMs: number;
}

/** The one set of rules both clients ship with (the Rust client's `Rules::default`). */
export const DEFAULT_RECONNECT_RULES: Readonly<ReconnectRules> = Object.freeze({
  backoffMinMs: 3_000,
  backoffMaxMs: 60_000,
  backoffFactor: 2,
  minUptimeMs: 10_000,
  connectTimeoutMs: 10_000,
  pingIntervalMs: 30_000,
  maxAdvisedDelayMs: 300_000,
  tokenRetryMs: 1_000,
});

/** The timers of a connection. At most one of each kind is armed; arming one again replaces it. */
export type TimerKind =
  /** The end of a wait between attempts. */
  | "retry"
  /** The deadline for a new connection's first frame. */
  | "connectTimeout"
  /** The moment an established connection has stayed up for the minimum uptime. */
  | "minUptime"
  /** The liveness check of an established connection. */
  | "ping"
  /** The time to fetch a fresh token and send it over the open socket. */
  | "token";

/** Every timer kind, for drivers that keep one slot per kind. */
export const TIMER_KINDS: readonly TimerKind[] = [
  "retry",
  "connectTimeout",
  "minUptime",
  "ping",
  "token",
];

/**
 * What happened, as the driver tells the machine. Optional booleans default to `false`, an
 * optional `reason` to `""`, as in the scenario file.
 */
export type ReconnectEvent =
  /**
   * The connection is wanted (its first use). `credentials`: whether there is a token source to
   * refresh from; `urls`: how many server URLs there are to rotate through (1 when absent).
   */
  | { type: "start"; credentials?: boolean; urls?: number }
  /**
   * The application subscribes to a counter, from `since` if given. `jumps`: the subscription has
   * `types` or `maxRate`, so its delivered versions may jump by design.
   */
  | { type: "subscribe"; name: string; since?: number; epoch?: string; jumps?: boolean }
  /** The application ends a subscription. */
  | { type: "unsubscribe"; name: string }
  /**
   * The socket is open (the upgrade succeeded). `tokenRefreshMs`: when the socket's token should
   * be replaced in band, if it expires.
   */
  | { type: "opened"; tokenRefreshMs?: number }
  /** A frame arrived that is none of the ones below (a pong, a result, …): a sign of life. */
  | { type: "heard" }
  /**
   * A snapshot of `name`: the reply to its subscribe, or (`push`) a resync the server sent.
   * `epoch`: the database's, which a later resume names beside `since`.
   */
  | { type: "snapshot"; name: string; version: number; push?: boolean; epoch?: string }
  /** The reply to a resuming subscribe: the updates after `since` follow. */
  | { type: "resumed"; name: string; since: number; version: number; epoch?: string }
  /** An update of `name`; `conflated` ones jump by design. */
  | { type: "update"; name: string; version: number; conflated?: boolean }
  /** The server refused a subscribe; `temporary` ones are tried again. */
  | { type: "subscribeRefused"; name: string; temporary?: boolean; retryAfterMs?: number }
  /** The server ended a subscription (an `unsubscribed` push); the socket goes on. */
  | { type: "ended"; name: string }
  /** The application has not read subscription `name`, and its buffer is full: pause it. */
  | { type: "full"; name: string }
  /** The application read the paused subscription `name`'s buffer down: resume it. */
  | { type: "drained"; name: string }
  /** The v2 `reconnect{afterMs}` push, sent just before the server closes. */
  | { type: "advised"; afterMs: number }
  /** The server closed the socket with `code` and `reason`. */
  | { type: "closed"; code: number; reason?: string }
  /**
   * The connection failed or broke without a close frame (refused TCP connection, TLS failure,
   * reset, 1006).
   */
  | { type: "lost" }
  /**
   * The upgrade was answered with an HTTP error: `status`, and the body's `code` and
   * `temporary`.
   */
  | { type: "refused"; status: number; code: string; temporary?: boolean }
  /** A timer fired. */
  | { type: "timer"; timer: TimerKind }
  /** A subscription's retry wait (a `later` action) ended. */
  | { type: "due"; name: string }
  /**
   * The token source answered. `fresh`: it gave another token than the one in use;
   * `refreshMs`: when that one should be replaced, if it expires.
   */
  | { type: "tokenRefreshed"; fresh: boolean; refreshMs?: number }
  /** The token source failed. */
  | { type: "tokenFailed" }
  /** The environment says the network may be back (a browser's `online` event, a visible tab). */
  | { type: "wake" };

/** Why the machine gave up a connection itself. */
export type CloseWhy =
  /** No first frame within the connect timeout. */
  | "connectTimeout"
  /** Nothing heard for a whole ping interval after a ping. */
  | "silent";

/** Why the connection stops for good. */
export type StopKind =
  /** 4501, or an upgrade refused with `unauthenticated`: new credentials are needed. */
  | "unauthenticated"
  /** 4503, or an upgrade refused with `forbidden`. */
  | "forbidden"
  /** 4502 (or `token_expired`) with no way to get a fresh token. */
  | "tokenExpired"
  /** The upgrade was refused for good (an HTTP error that is not temporary). */
  | "refused"
  /** A close code that says not to reconnect (1000, 1002, 1007, 1008, 1009, 4500–4999). */
  | "closed";

/** What the driver must do, in the order given. */
export type ReconnectAction =
  /**
   * Open a socket (getting a token first when there are credentials) to server URL number `url`
   * (from 0); it is present only when there is more than one URL, and is 0 otherwise.
   */
  | { type: "connect"; url?: number }
  /** Drop the current socket or connection attempt. */
  | { type: "close"; why: CloseWhy }
  /**
   * The connection is lost: tell the application, wait a uniform random delay within
   * `[minMs, maxMs]`, then report the `retry` timer.
   */
  | { type: "wait"; minMs: number; maxMs: number }
  /** Arm `timer` to fire in `ms` (replacing one already armed). */
  | { type: "timer"; timer: TimerKind; ms: number }
  /** The connection is established (its first frame arrived): tell the application. */
  | { type: "connected" }
  /**
   * Send `subscribe{name, since?, epoch?}` (with the subscription's own options). `epoch` is the
   * one `since` belongs to, when known, and never sent without `since`. Each is absent, not
   * `undefined`, when there is none.
   */
  | { type: "subscribe"; name: string; since?: number; epoch?: string }
  /** Send `unsubscribe{name}`. */
  | { type: "unsubscribe"; name: string }
  /** Pass the snapshot or update just reported to the application. */
  | { type: "deliver"; name: string; version: number }
  /** Send `ping`. */
  | { type: "ping" }
  /** Ask the token source for a fresh token (then report `tokenRefreshed` or `tokenFailed`). */
  | { type: "refreshToken" }
  /** Send the fresh token over the open socket (`auth`). */
  | { type: "sendAuth" }
  /**
   * Try subscription `name` again after a uniform random delay within `[minMs, maxMs]`, then
   * report `due`.
   */
  | { type: "later"; name: string; minMs: number; maxMs: number }
  /** Subscription `name` is over (refused for good): tell the application. */
  | { type: "end"; name: string }
  /** Stop for good: end every subscription with the error. */
  | { type: "stop"; stop: StopKind };

/** Where the connection is. */
type Phase =
  /** Not started. */
  | "idle"
  /** Connecting: getting a token, TCP, TLS, upgrade. */
  | "connecting"
  /** The socket is open, no frame yet. */
  | "opening"
  /** A frame arrived on this socket. */
  | "established"
  /** Waiting for the `retry` timer. */
  | "waiting"
  /** Getting a fresh token before reconnecting (after 4502). */
  | "refreshing"
  /** Given up. */
  | "stopped";

/** Where one subscription is on the current connection. */
type SubState =
  /** Not sent on this connection yet (there is no open socket). */
  | "queued"
  /** Sent, waiting for its reply. */
  | "sent"
  /** Its reply came; pushes flow. */
  | "live"
  /** A gap was seen: unsubscribed and subscribed again; pushes are dropped until the reply. */
  | "resubscribing"
  /** Refused for now; waiting for `due`. */
  | "later"
  /** Its reader is behind: unsubscribed until `drained`, and kept so across reconnects. */
  | "paused";

interface Sub {
  /** The last version passed on (or given as the first `since`): what a resume sends. */
  since: number | undefined;
  /**
   * The epoch of the database `since` is a version of (from the last snapshot or `resumed`), sent
   * with it so that a resume against another database resyncs.
   */
  epoch: string | undefined;
  /** Versions may jump by design (`types`, `maxRate`). */
  jumps: boolean;
  state: SubState;
  /** Temporary refusals in a row, for this subscription's own backoff. */
  attempt: number;
}

/** The states in which the server has (or is about to have) the subscription. */
function isSubscribed(state: SubState): boolean {
  return state === "sent" || state === "live" || state === "resubscribing";
}

/**
 * The `subscribe` action that resumes `sub` from where it is: without a `since` key when there is
 * none, and without `epoch` when it is unknown or there is no `since` (as the JSON spells it).
 */
function subscribeAction(name: string, sub: Pick<Sub, "since" | "epoch">): ReconnectAction {
  const { since, epoch } = sub;
  if (since === undefined) return { type: "subscribe", name };
  return epoch === undefined
    ? { type: "subscribe", name, since }
    : { type: "subscribe", name, since, epoch };
}

/**
 * Orders names by Unicode code point, as Rust orders `String`s (by their UTF-8 bytes), so that
 * resumes go out in the same order from both clients. JavaScript's default sort compares UTF-16
 * code units, which puts characters above U+FFFF before U+E000–U+FFFF.
 */
export function compareNames(a: string, b: string): number {
  const left = a[Symbol.iterator]();
  const right = b[Symbol.iterator]();
  for (;;) {
    const l = left.next();
    const r = right.next();
    if (l.done || r.done) return l.done && r.done ? 0 : l.done ? -1 : 1;
    const lc = l.value.codePointAt(0) ?? 0;
    const rc = r.value.codePointAt(0) ?? 0;
    if (lc !== rc) return lc < rc ? -1 : 1;
  }
}

/** The largest `u64`, the Rust machine's bound on an advised delay it can read. */
const U64_MAX = (1n << 64n) - 1n;

/**
 * The delay in a close reason that says `reconnect after N ms`, or `undefined` if it says no
 * such thing. A number too large for the Rust client's `u64` is not read either, so that both
 * clients read the same reasons.
 */
export function advisedIn(reason: string): number | undefined {
  const mark = "reconnect after ";
  const at = reason.indexOf(mark);
  if (at < 0) return undefined;
  const rest = reason.slice(at + mark.length);
  const digits = /^[0-9]+/.exec(rest)?.[0];
  if (digits === undefined || !rest.slice(digits.length).trimStart().startsWith("ms")) {
    return undefined;
  }
  const ms = BigInt(digits);
  // Past 2^53 the number is not exact, but any such delay is cut to the longest honoured one.
  return ms > U64_MAX ? undefined : Number(ms);
}

/**
 * The reconnect rules of one connection and its subscriptions.
 *
 * ```ts
 * const machine = new ReconnectMachine();
 * machine.handle({ type: "start" }); // [{type: "connect"}, {type: "timer", timer: "connectTimeout", ms: 10000}]
 * ```
 */
export class ReconnectMachine {
  readonly #rules: Readonly<ReconnectRules>;
  /** Only its ceilings are used: the machine draws no random numbers. */
  readonly #backoff: Backoff;
  #phase: Phase = "idle";
  /** Whether a token source can give fresh tokens. */
  #credentials = false;
  /** How many server URLs there are (at least 1). */
  #urls = 1;
  /** The index of the URL the next (or current) attempt goes to. */
  #url = 0;
  /** Failed attempts in a row: the backoff step of the next wait. */
  #attempt = 0;
  /** The delay the server advised (a `reconnect` push) for the coming reconnect. */
  #advised: number | undefined = undefined;
  /** Whether the next reconnect must get a fresh token first (after 4502). */
  #refreshFirst = false;
  /** Whether the connection that ended had been established (for 4502: reconnect at once). */
  #wasEstablished = false;
  /** Whether anything arrived since the last ping tick. */
  #heard = false;
  /** Whether a ping is out, unanswered. */
  #pingOut = false;
  /** Whether a token fetch for the open socket is under way. */
  #refreshingInBand = false;
  /**
   * Subscriptions by name. A `Map` keeps insertion order, so a resume sorts the names (see
   * `compareNames`) to send them in name order, as the Rust machine's `BTreeMap` does and the
   * scenarios spell out.
   */
  readonly #subs = new Map<string, Sub>();

  constructor(rules: Readonly<ReconnectRules> = DEFAULT_RECONNECT_RULES) {
    this.#rules = { ...rules };
    this.#backoff = new Backoff({
      min: rules.backoffMinMs,
      max: rules.backoffMaxMs,
      factor: rules.backoffFactor,
    });
  }

  /** Handles `event` and returns what to do, in order (often nothing). */
  handle(event: ReconnectEvent): ReconnectAction[] {
    const out: ReconnectAction[] = [];
    if (this.#phase === "stopped") {
      // Nothing revives a stopped connection; a new subscription ends at once.
      if (event.type === "subscribe") out.push({ type: "end", name: event.name });
      return out;
    }
    switch (event.type) {
      case "start":
        this.#credentials = event.credentials ?? false;
        if (this.#phase === "idle") {
          this.#urls = Math.max(1, Math.floor(event.urls ?? 1));
          this.#connect(out);
        }
        break;
      case "subscribe": {
        const open = this.#isOpen();
        const sub: Sub = {
          since: event.since,
          epoch: event.epoch,
          jumps: event.jumps ?? false,
          state: open ? "sent" : "queued",
          attempt: 0,
        };
        this.#subs.set(event.name, sub);
        if (open) out.push(subscribeAction(event.name, sub));
        break;
      }
      case "unsubscribe": {
        const sub = this.#subs.get(event.name);
        this.#subs.delete(event.name);
        // Only what the server has (or will have) needs telling; a queued, later or paused
        // subscription is not on the socket.
        if (sub && this.#isOpen() && isSubscribed(sub.state)) {
          out.push({ type: "unsubscribe", name: event.name });
        }
        break;
      }
      case "opened":
        this.#opened(event.tokenRefreshMs, out);
        break;
      case "heard":
        this.#hear(out);
        break;
      case "snapshot": {
        this.#hear(out);
        const sub = this.#subs.get(event.name);
        if (!sub) break;
        if (((event.push ?? false) && sub.state === "resubscribing") || sub.state === "paused") {
          // From the subscription being replaced, or for a reader that is behind.
          break;
        }
        sub.since = event.version;
        sub.epoch = event.epoch;
        sub.state = "live";
        sub.attempt = 0;
        out.push({ type: "deliver", name: event.name, version: event.version });
        break;
      }
      case "resumed": {
        this.#hear(out);
        const sub = this.#subs.get(event.name);
        if (sub && sub.state !== "paused") {
          // Nothing is delivered: the updates after `since` follow as updates.
          sub.since ??= event.since;
          if (event.epoch !== undefined) sub.epoch = event.epoch;
          sub.state = "live";
          sub.attempt = 0;
        }
        break;
      }
      case "update":
        this.#hear(out);
        this.#update(event.name, event.version, event.conflated ?? false, out);
        break;
      case "subscribeRefused": {
        this.#hear(out);
        const sub = this.#subs.get(event.name);
        if (!sub) break;
        if (!(event.temporary ?? false)) {
          this.#subs.delete(event.name);
          out.push({ type: "end", name: event.name });
          break;
        }
        const [minMs, maxMs] =
          event.retryAfterMs === undefined
            ? [0, this.#ceiling(sub.attempt)]
            : [event.retryAfterMs, event.retryAfterMs];
        sub.attempt += 1;
        sub.state = "later";
        out.push({ type: "later", name: event.name, minMs, maxMs });
        break;
      }
      case "ended":
        this.#hear(out);
        this.#subs.delete(event.name);
        break;
      case "full": {
        const sub = this.#subs.get(event.name);
        if (!sub || sub.state === "paused") break;
        const subscribed = isSubscribed(sub.state);
        // Pausing costs the server nothing and the socket no stall; the resume starts after the
        // last version the reader was given, so nothing is skipped.
        sub.state = "paused";
        if (this.#isOpen() && subscribed) out.push({ type: "unsubscribe", name: event.name });
        break;
      }
      case "drained": {
        const sub = this.#subs.get(event.name);
        if (!sub || sub.state !== "paused") break;
        if (this.#isOpen()) {
          sub.state = "sent";
          out.push(subscribeAction(event.name, sub));
        } else {
          sub.state = "queued";
        }
        break;
      }
      case "advised":
        this.#hear(out);
        this.#advised = event.afterMs;
        break;
      case "closed":
        if (this.#isLive()) this.#closed(event.code, event.reason ?? "", out);
        break;
      case "lost":
        if (this.#isLive()) this.#lost(out);
        break;
      case "refused":
        this.#refused(event.code, event.temporary ?? false, out);
        break;
      case "timer":
        this.#timer(event.timer, out);
        break;
      case "due": {
        const sub = this.#subs.get(event.name);
        // Without an open socket the subscription goes out with the others when one opens.
        if (sub && sub.state === "later" && this.#isOpen()) {
          sub.state = "sent";
          out.push(subscribeAction(event.name, sub));
        }
        break;
      }
      case "tokenRefreshed":
        this.#tokenRefreshed(event.fresh, event.refreshMs, out);
        break;
      case "tokenFailed":
        if (this.#phase === "refreshing") {
          this.#phase = "waiting";
          this.#backoffWait(out);
        } else if (this.#isOpen() && this.#refreshingInBand) {
          this.#refreshingInBand = false;
          out.push({ type: "timer", timer: "token", ms: this.#rules.tokenRetryMs });
        }
        break;
      case "wake":
        if (this.#phase === "waiting") this.#retry(out);
        break;
      default: {
        // Every event type is handled above; a new one must be added there.
        const unknown: never = event;
        throw new TypeError(`unknown reconnect event ${JSON.stringify(unknown)}`);
      }
    }
    return out;
  }

  /** Whether a socket is open (subscribes can be sent). */
  #isOpen(): boolean {
    return this.#phase === "opening" || this.#phase === "established";
  }

  /** Whether there is a connection (or an attempt) that can end. */
  #isLive(): boolean {
    return this.#phase === "connecting" || this.#isOpen();
  }

  /** The backoff ceiling of `attempt`, in whole milliseconds as the Rust machine counts them. */
  #ceiling(attempt: number): number {
    return Math.floor(this.#backoff.ceiling(attempt));
  }

  #connect(out: ReconnectAction[]): void {
    this.#phase = "connecting";
    this.#advised = undefined;
    this.#wasEstablished = false;
    out.push(this.#urls > 1 ? { type: "connect", url: this.#url } : { type: "connect" });
    out.push({ type: "timer", timer: "connectTimeout", ms: this.#rules.connectTimeoutMs });
  }

  /** The end of a wait: connect, or get a fresh token first. */
  #retry(out: ReconnectAction[]): void {
    if (this.#refreshFirst && this.#credentials) {
      this.#phase = "refreshing";
      out.push({ type: "refreshToken" });
    } else {
      this.#connect(out);
    }
  }

  #opened(tokenRefreshMs: number | undefined, out: ReconnectAction[]): void {
    if (this.#phase !== "connecting") return;
    this.#phase = "opening";
    this.#refreshingInBand = false;
    if (this.#subs.size === 0) {
      // Something must come back to establish the connection.
      out.push({ type: "ping" });
    }
    for (const name of [...this.#subs.keys()].sort(compareNames)) {
      const sub = this.#subs.get(name);
      if (sub && sub.state !== "paused") {
        sub.state = "sent";
        out.push(subscribeAction(name, sub));
      }
    }
    if (tokenRefreshMs !== undefined) {
      out.push({ type: "timer", timer: "token", ms: tokenRefreshMs });
    }
  }

  /** A frame arrived: a sign of life, and the first one establishes the connection. */
  #hear(out: ReconnectAction[]): void {
    this.#heard = true;
    if (this.#phase === "opening") {
      this.#phase = "established";
      this.#wasEstablished = true;
      // The ping check measures from here.
      this.#heard = false;
      this.#pingOut = false;
      out.push({ type: "connected" });
      out.push({ type: "timer", timer: "minUptime", ms: this.#rules.minUptimeMs });
      out.push({ type: "timer", timer: "ping", ms: this.#rules.pingIntervalMs });
    }
  }

  #update(name: string, version: number, conflated: boolean, out: ReconnectAction[]): void {
    const sub = this.#subs.get(name);
    if (!sub || sub.state === "resubscribing" || sub.state === "paused") return;
    const last = sub.since;
    if (last !== undefined && version <= last) {
      // Already passed on: a replay overlapping what we had, or an own write seen twice.
      return;
    }
    if (last !== undefined && version !== last + 1 && !sub.jumps && !conflated) {
      // A hole in the history: start this subscription over from what we have rather than pass
      // on a state with a gap. The socket goes on.
      sub.state = "resubscribing";
      out.push({ type: "unsubscribe", name });
      out.push(subscribeAction(name, sub));
      return;
    }
    sub.since = version;
    out.push({ type: "deliver", name, version });
  }

  #timer(timer: TimerKind, out: ReconnectAction[]): void {
    // A timer of a phase that is over does nothing: the driver may not have cancelled it.
    switch (timer) {
      case "retry":
        if (this.#phase === "waiting") this.#retry(out);
        break;
      case "connectTimeout":
        if (this.#phase === "connecting" || this.#phase === "opening") {
          out.push({ type: "close", why: "connectTimeout" });
          this.#ended();
          this.#backoffWait(out);
        }
        break;
      case "minUptime":
        if (this.#phase === "established") this.#attempt = 0;
        break;
      case "ping":
        if (this.#phase !== "established") break;
        if (this.#heard) {
          this.#heard = false;
          this.#pingOut = false;
        } else if (this.#pingOut) {
          out.push({ type: "close", why: "silent" });
          this.#ended();
          this.#backoffWait(out);
          return;
        } else {
          this.#pingOut = true;
          out.push({ type: "ping" });
        }
        out.push({ type: "timer", timer: "ping", ms: this.#rules.pingIntervalMs });
        break;
      case "token":
        if (this.#isOpen() && !this.#refreshingInBand) {
          this.#refreshingInBand = true;
          out.push({ type: "refreshToken" });
        }
        break;
    }
  }

  #tokenRefreshed(fresh: boolean, refreshMs: number | undefined, out: ReconnectAction[]): void {
    if (this.#phase === "refreshing") {
      if (fresh) {
        this.#refreshFirst = false;
        this.#connect(out);
      } else {
        // The source has nothing newer than the token the server called expired: reconnecting
        // with it would only be refused again.
        this.#stop("tokenExpired", out);
      }
    } else if (this.#isOpen() && this.#refreshingInBand) {
      this.#refreshingInBand = false;
      if (fresh) {
        out.push({ type: "sendAuth" });
        if (refreshMs !== undefined) out.push({ type: "timer", timer: "token", ms: refreshMs });
      }
      // Nothing fresher yet: the server closes with 4502 at expiry, and the reconnect asks again.
    }
  }

  /**
   * Bookkeeping when a connection (or attempt) ends and a reconnect follows: the next attempt goes
   * to the next URL. The other nodes serve the same counters, so there is no reason to stay on one
   * that failed; round robin reaches every node in turn while the backoff grows as for one server.
   */
  #ended(): void {
    this.#phase = "waiting";
    this.#url = (this.#url + 1) % this.#urls;
    this.#refreshingInBand = false;
    for (const sub of this.#subs.values()) {
      if (sub.state !== "paused") sub.state = "queued";
    }
  }

  #closed(code: number, reason: string, out: ReconnectAction[]): void {
    switch (code) {
      case CloseCode.TOKEN_EXPIRED:
        if (!this.#credentials) {
          this.#stop("tokenExpired", out);
        } else {
          const atOnce = this.#wasEstablished;
          this.#ended();
          this.#refreshFirst = true;
          if (atOnce) {
            // The connection worked; only its token ran out.
            out.push({ type: "wait", minMs: 0, maxMs: 0 });
          } else {
            this.#backoffWait(out);
          }
        }
        return;
      case CloseCode.UNAUTHENTICATED:
        this.#stop("unauthenticated", out);
        return;
      case CloseCode.FORBIDDEN:
        this.#stop("forbidden", out);
        return;
    }
    if (!shouldReconnect(code)) {
      // Advice in the reason never makes a stopping close reconnect.
      this.#stop("closed", out);
      return;
    }
    const advised = advisedIn(reason);
    if (advised !== undefined) this.#advised = advised;
    this.#lost(out);
  }

  #refused(code: string, temporary: boolean, out: ReconnectAction[]): void {
    if (this.#phase !== "connecting") return;
    switch (code) {
      case "token_expired":
        // Handled like 4502 before establishment: a fresh token, after the backoff.
        if (this.#credentials) {
          this.#refreshFirst = true;
          this.#lost(out);
        } else {
          this.#stop("tokenExpired", out);
        }
        return;
      case "unauthenticated":
        this.#stop("unauthenticated", out);
        return;
      case "forbidden":
        this.#stop("forbidden", out);
        return;
      default:
        if (temporary) this.#lost(out);
        else this.#stop("refused", out);
    }
  }

  /**
   * A connection that ends in a way that calls for a reconnect: after the server's advised delay
   * if it gave one, else after the backoff.
   */
  #lost(out: ReconnectAction[]): void {
    const advised = this.#advised;
    this.#advised = undefined;
    this.#ended();
    if (advised === undefined) {
      this.#backoffWait(out);
      return;
    }
    // The server spread its clients itself; the advice is not a failure of ours, so the backoff
    // does not grow.
    const ms = Math.min(advised, this.#rules.maxAdvisedDelayMs);
    out.push({ type: "wait", minMs: ms, maxMs: ms });
  }

  /** A full-jitter wait at the current backoff step, which then grows. */
  #backoffWait(out: ReconnectAction[]): void {
    const maxMs = this.#ceiling(this.#attempt);
    this.#attempt += 1;
    out.push({ type: "wait", minMs: 0, maxMs });
  }

  #stop(stop: StopKind, out: ReconnectAction[]): void {
    this.#phase = "stopped";
    this.#subs.clear();
    out.push({ type: "stop", stop });
  }
}
