/**
 * A live subscription to one counter: a WebSocket that keeps itself alive, reconnects with
 * backoff, resumes after the last version it saw, authenticates in band and refreshes its token
 * before it expires, and exposes its state as immutable snapshots (suited to React's
 * `useSyncExternalStore`, or to any other framework).
 */

import { inspectToken } from "./auth.js";
import { Backoff, type BackoffOptions } from "./backoff.js";
import {
  CloseCode,
  isUpdate,
  nameProblem,
  parseServerMessage,
  shouldReconnect,
  type Action,
  type ClientMessage,
  type ErrorCode,
  type Metadata,
  type ServerMessage,
  type SnapshotMessage,
  type Update,
} from "./protocol.js";
import type { TallyClient, WebSocketConstructor } from "./rpc.js";

/** Where the connection is. A disabled subscription is `disconnected`. */
export type ConnectionStatus = "connecting" | "connected" | "disconnected";

/** Why the last connection ended or could not be made. */
export class TallyWatchError extends Error {
  override readonly name = "TallyWatchError";
  /** The WebSocket close code, or null when the socket could not even be created. */
  readonly closeCode: number | null;
  /** True when the subscription will try again by itself. */
  readonly willRetry: boolean;
  /**
   * The refusal as an error code, for the access-control closes: `unauthenticated` (4501: a new
   * credential is needed), `token_expired` (4502, when `getToken` had no fresh token), `forbidden`
   * (4503); null otherwise.
   */
  readonly code: ErrorCode | null;

  constructor(
    message: string,
    closeCode: number | null,
    willRetry: boolean,
    options: { code?: ErrorCode | null; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.closeCode = closeCode;
    this.willRetry = willRetry;
    this.code = options.code ?? authCode(closeCode);
  }
}

/** The error code of an access-control close, or null. */
function authCode(closeCode: number | null): ErrorCode | null {
  switch (closeCode) {
    case CloseCode.UNAUTHENTICATED:
      return "unauthenticated";
    case CloseCode.TOKEN_EXPIRED:
      return "token_expired";
    case CloseCode.FORBIDDEN:
      return "forbidden";
    default:
      return null;
  }
}

/** One subscription's state. Each change makes a new object, so `===` tells whether it changed. */
export interface SubscriptionState {
  readonly name: string;
  readonly enabled: boolean;
  readonly status: ConnectionStatus;
  /** The counter's value, or null until the first snapshot. */
  readonly value: number | null;
  /** The last version applied, or null until the first snapshot. */
  readonly version: number | null;
  readonly metadata: Metadata | null;
  /** The last Update applied. */
  readonly update: Update | null;
  /** When the last applied Update was committed (its `timestamp`). */
  readonly lastUpdate: Date | null;
  /** Why the last connection ended or failed; cleared when a connection is synced again. */
  readonly error: TallyWatchError | null;
  /** When the next reconnect attempt is due (epoch ms), while one is scheduled. */
  readonly retryAt: number | null;
  /**
   * What this connection's principal may do to the counter, from the latest `snapshot` or
   * `authenticated` message; null until one came (or from a server without access control).
   */
  readonly can: readonly Action[] | null;
  /**
   * Whom the current (or last) connection acts as, as the client reads its credential (see
   * `TallyClient.principal`); null before the first connection.
   */
  readonly principal: string | null;
}

/** Tunes a subscription. Times are in milliseconds. */
export interface SubscriptionOptions {
  /** Connect at once (true by default); see `enable` and `disable`. */
  enabled?: boolean;
  /** How often to send the keep-alive ping; the seed's 30 s by default. */
  pingInterval?: number;
  /** Reconnect delays; see `Backoff`. */
  backoff?: BackoffOptions;
  /** How long a connection must stay up before the backoff starts again from its minimum (10 s). */
  minUptime?: number;
  /**
   * Resume after this version on the first connection, instead of starting with a snapshot
   * (for a client that kept the state itself). `value` stays null until the first update.
   */
  since?: number;
  /** How long a new connection may take to deliver its first message before it is retried (10 s). */
  connectTimeout?: number;
  /**
   * Reconnect at once when the browser comes back online or a hidden tab becomes visible
   * (true by default; does nothing outside a browser).
   */
  reconnectOnResume?: boolean;
  /** The source of randomness for backoff jitter; `Math.random` by default (tests fix it). */
  random?: () => number;
}

/** What a subscription announces besides state changes. */
export interface SubscriptionEvents {
  /** A snapshot replaced the state (`resync` says a resume could not be served). */
  snapshot: (snapshot: SnapshotMessage) => void;
  /** An Update newer than the state was applied: live, or replayed after a reconnect. */
  update: (update: Update) => void;
}

type Listener = () => void;

const DEFAULT_PING_INTERVAL = 30_000;
const DEFAULT_MIN_UPTIME = 10_000;
const DEFAULT_CONNECT_TIMEOUT = 10_000;

/** A live subscription to one counter. Create it with `new CounterSubscription(client, name)`. */
export class CounterSubscription {
  readonly client: TallyClient;
  readonly name: string;

  #state: SubscriptionState;
  readonly #listeners = new Set<Listener>();
  readonly #events: { [K in keyof SubscriptionEvents]: Set<SubscriptionEvents[K]> } = {
    snapshot: new Set(),
    update: new Set(),
  };

  readonly #pingInterval: number;
  readonly #minUptime: number;
  readonly #connectTimeout: number;
  readonly #backoff: Backoff;
  readonly #reconnectOnResume: boolean;
  #since: number | null;

  #socket: WebSocket | null = null;
  /** When the current connection got its first message (it is synced from then on). */
  #syncedAt: number | null = null;
  #attempt = 0;
  #retryTimer: ReturnType<typeof setTimeout> | null = null;
  #connectTimer: ReturnType<typeof setTimeout> | null = null;
  #pingTimer: ReturnType<typeof setInterval> | null = null;
  #pingOutstanding = false;
  #receivedSincePing = false;
  #resumeListenersAttached = false;
  /** Bumped whenever a connection attempt starts or is abandoned, so a late token is dropped. */
  #attemptId = 0;
  /** The credential of the current connection (null: anonymous). */
  #token: string | null = null;
  /** A token the server said expired: if `getToken` gives it again, there is no fresh one. */
  #expiredToken: string | null | undefined = undefined;
  #refreshTimer: ReturnType<typeof setTimeout> | null = null;
  #stopCredentials: (() => void) | null = null;
  /** The credentials' generation the current connection's token came from. */
  #credentialGeneration = 0;

  constructor(client: TallyClient, name: string, options: SubscriptionOptions = {}) {
    this.client = client;
    this.name = name;
    this.#pingInterval = Math.max(1, options.pingInterval ?? DEFAULT_PING_INTERVAL);
    this.#minUptime = Math.max(0, options.minUptime ?? DEFAULT_MIN_UPTIME);
    this.#connectTimeout = Math.max(1, options.connectTimeout ?? DEFAULT_CONNECT_TIMEOUT);
    this.#backoff = new Backoff(options.backoff, options.random);
    this.#reconnectOnResume = options.reconnectOnResume ?? true;
    this.#since = options.since ?? null;
    this.#state = {
      name,
      enabled: false,
      status: "disconnected",
      value: null,
      version: null,
      metadata: null,
      update: null,
      lastUpdate: null,
      error: null,
      retryAt: null,
      can: null,
      principal: null,
    };
    if (options.enabled ?? true) this.enable();
  }

  /** The current state; the same object until something changes. */
  getState = (): SubscriptionState => this.#state;

  /** Calls `listener` after every state change; returns the function that stops it. */
  subscribe = (listener: Listener): (() => void) => {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  };

  /** Calls `listener` on each `event`; returns the function that stops it. */
  on<K extends keyof SubscriptionEvents>(event: K, listener: SubscriptionEvents[K]): () => void {
    const listeners = this.#events[event] as Set<SubscriptionEvents[K]>;
    listeners.add(listener);
    return () => listeners.delete(listener);
  }

  /** Starts watching (the seed's connection toggle, on). Does nothing if already enabled. */
  enable(): void {
    if (this.#state.enabled) return;
    this.#attempt = 0;
    this.#setState({ enabled: true, error: null });
    this.#attachResumeListeners();
    this.#stopCredentials = this.client.credentials.subscribe(this.#onCredentials);
    this.#connect();
  }

  /** Stops watching and closes the socket; the state (value, version) is kept for `enable`. */
  disable(): void {
    if (!this.#state.enabled) return;
    this.#detachResumeListeners();
    this.#stopCredentials?.();
    this.#stopCredentials = null;
    this.#clearRetry();
    this.#dropSocket();
    this.#setState({ enabled: false, status: "disconnected", retryAt: null });
  }

  /** Enables or disables. */
  setEnabled(enabled: boolean): void {
    if (enabled) this.enable();
    else this.disable();
  }

  /**
   * Reconnects now if the subscription is enabled but not connected, skipping the backoff wait
   * (done by itself when the browser comes back online or the tab becomes visible).
   */
  reconnectNow(): void {
    if (!this.#state.enabled || this.#socket !== null) return;
    this.#clearRetry();
    this.#connect();
  }

  /**
   * The credential was reset (signing in or out): whatever this connection was allowed is no
   * longer known, so it starts over with the new one, resuming after the last version seen.
   */
  readonly #onCredentials = (): void => {
    const credentials = this.client.credentials;
    if (!this.#state.enabled || credentials.generation === this.#credentialGeneration) return;
    this.#dropSocket();
    this.#clearRetry();
    this.#attempt = 0;
    this.#expiredToken = undefined;
    // What the old credential allowed says nothing of the new one.
    this.#setState({ can: null });
    this.#connect();
  };

  /** Gets the credential (when the client has `getToken`), then opens the socket. */
  #connect(): void {
    const problem = nameProblem(this.name);
    if (problem !== null) {
      this.#fail(new TallyWatchError(problem, null, false));
      return;
    }
    const WebSocketClass = this.client.WebSocket;
    if (WebSocketClass === undefined) {
      const error = new TallyWatchError(
        "no WebSocket is available here; pass one as the client's WebSocket option",
        null,
        false,
      );
      this.#fail(error);
      return;
    }
    const credentials = this.client.credentials;
    const attemptId = ++this.#attemptId;
    this.#credentialGeneration = credentials.generation;
    if (!credentials.enabled) {
      this.#open(null, WebSocketClass);
      return;
    }
    this.#setState({ status: "connecting", retryAt: null });
    credentials.token().then(
      (token) => {
        if (attemptId !== this.#attemptId || !this.#state.enabled) return;
        if (token === this.#expiredToken) {
          // 4502 said this token expired, and getToken has nothing newer: a person must sign in
          // again (or the application's backend must issue a token), so do not loop.
          this.#fail(
            new TallyWatchError(
              "the token expired and getToken returned no fresh one",
              CloseCode.TOKEN_EXPIRED,
              false,
            ),
          );
          return;
        }
        this.#expiredToken = undefined;
        this.#open(token, WebSocketClass);
      },
      (error: unknown) => {
        if (attemptId !== this.#attemptId || !this.#state.enabled) return;
        const message = error instanceof Error ? error.message : String(error);
        this.#retry(new TallyWatchError(message, null, true, { cause: error }));
      },
    );
  }

  #open(token: string | null, WebSocketClass: WebSocketConstructor): void {
    const since = this.#state.version ?? this.#since ?? undefined;
    let socket: WebSocket;
    try {
      socket = new WebSocketClass(this.client.watchUrl(this.name, since));
    } catch (cause) {
      const reason = cause instanceof Error ? cause.message : String(cause);
      this.#fail(new TallyWatchError(`cannot open the WebSocket: ${reason}`, null, false));
      return;
    }
    // Handlers first, and each ignores a socket that is no longer the current one, so that a
    // listener reacting to the state change below cannot leave events of a dropped socket live.
    // A browser cannot set headers on a WebSocket, so the credential is the first message.
    socket.onopen = () => {
      if (this.#socket === socket && this.#token !== null) {
        this.#send(socket, { type: "auth", token: this.#token });
        this.#scheduleRefresh(socket);
      }
    };
    socket.onmessage = (event: MessageEvent) => {
      if (this.#socket === socket && typeof event.data === "string") this.#receive(event.data);
    };
    socket.onclose = (event: CloseEvent) => {
      if (this.#socket === socket) this.#closed(event.code, event.reason);
    };
    // An error is always followed by a close, which decides what happens next. The handler
    // stays even after the socket is dropped: Node's `ws` throws an error nobody listens to.
    socket.onerror = () => {};
    this.#socket = socket;
    this.#token = token;
    this.#syncedAt = null;
    this.#connectTimer = setTimeout(() => {
      this.#connectTimer = null;
      if (this.#socket !== socket || this.#syncedAt !== null) return;
      this.#retry(
        new TallyWatchError(
          `the server did not answer within ${this.#connectTimeout} ms; retrying`,
          null,
          true,
        ),
      );
    }, this.#connectTimeout);
    this.#setState({
      status: "connecting",
      retryAt: null,
      principal: this.client.credentials.enabled ? inspectToken(token).principal : "anonymous",
    });
  }

  /**
   * Asks for a fresh token shortly before the current one expires and sends it in band, so the
   * socket goes on without a gap. If none comes (getToken fails, or gives the same token), the
   * server closes with 4502 at expiry and the subscription reconnects with whatever it then gets.
   */
  #scheduleRefresh(socket: WebSocket): void {
    this.#clearRefresh();
    const refreshAt = this.client.credentials.refreshAt(this.#token);
    if (refreshAt === null) return;
    this.#refreshTimer = setTimeout(
      () => {
        this.#refreshTimer = null;
        const current = this.#token;
        this.client.credentials.renew(current).then(
          (fresh) => {
            if (this.#socket !== socket || fresh === current) return;
            if (fresh === null) {
              // Signed out: a socket cannot become anonymous in band, so it starts over.
              this.#retry(new TallyWatchError("the credential was withdrawn", null, true), true);
              return;
            }
            this.#token = fresh;
            this.#send(socket, { type: "auth", token: fresh });
            this.#setState({ principal: inspectToken(fresh).principal });
            this.#scheduleRefresh(socket);
          },
          () => {},
        );
      },
      Math.max(0, refreshAt - Date.now()),
    );
  }

  #clearRefresh(): void {
    if (this.#refreshTimer !== null) clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
  }

  #send(socket: WebSocket, message: ClientMessage): void {
    if (socket.readyState === 1) socket.send(JSON.stringify(message));
  }

  #receive(text: string): void {
    this.#receivedSincePing = true;
    const message = parseServerMessage(text);
    if (message === null) return;
    if (this.#syncedAt === null && isFirstMessage(message)) {
      this.#syncedAt = Date.now();
      this.#clearConnectTimer();
      this.#startPings();
      this.#setState({ status: "connected", error: null });
    }
    switch (message.type) {
      case "snapshot":
        this.#applySnapshot(message);
        return;
      case "resumed":
        // A first resume from the `since` option: the replay continues from that version.
        if (this.#state.version === null) this.#setState({ version: message.since });
        return;
      case "authenticated":
        // The answer to our token; a snapshot sent before it (anonymous may read) said what
        // anonymous may do, this says what the token may.
        this.#setState({ can: message.can });
        return;
      case "pong":
      case "error":
        // A refused fresh token (`unauthenticated`, `token_expired`) leaves the socket on its
        // current principal until that one expires (then 4502).
        return;
      default:
        if (isUpdate(message)) this.#applyUpdate(message);
    }
  }

  #applySnapshot(snapshot: SnapshotMessage): void {
    const updatedAt = snapshot.metadata.updatedAt;
    this.#setState({
      value: snapshot.value,
      version: snapshot.version,
      metadata: snapshot.metadata,
      // A resync may replace a state whose last update no longer exists.
      update: null,
      lastUpdate: updatedAt === null ? null : new Date(updatedAt),
      ...(snapshot.can === undefined ? {} : { can: snapshot.can }),
    });
    this.#emit("snapshot", snapshot);
  }

  #applyUpdate(update: Update): void {
    const current = this.#state.version;
    // Already applied: a replay overlapping what we had, or our own write seen twice.
    if (current !== null && update.version <= current) return;
    if (current !== null && update.version > current + 1) {
      // The server never skips a version on one connection; if it happens anyway, resume from
      // what we have rather than apply a state with a hole in its history.
      this.#retry(
        new TallyWatchError(
          `missed versions ${current + 1} to ${update.version - 1}; resuming`,
          null,
          true,
        ),
      );
      return;
    }
    this.#setState({
      value: update.value,
      version: update.version,
      metadata: update.metadata,
      update,
      lastUpdate: new Date(update.timestamp),
    });
    this.#emit("update", update);
  }

  #closed(code: number, reason: string): void {
    if (!this.#state.enabled) return;
    if (code === CloseCode.TOKEN_EXPIRED) {
      // Ask for a fresh token and resume with it: at once if this connection had been working,
      // with the backoff if it is failing again and again.
      const expired = this.#token;
      this.client.credentials.expired(expired);
      this.#expiredToken = expired;
      const error = new TallyWatchError(describeClose(code, reason), code, true);
      this.#retry(error, this.#syncedAt !== null);
      return;
    }
    const retry = shouldReconnect(code);
    const error = new TallyWatchError(describeClose(code, reason), code, retry);
    if (retry) {
      this.#retry(error);
    } else {
      this.#dropSocket();
      this.#fail(error);
    }
  }

  /**
   * Drops the current socket and schedules the next attempt: the backoff starts over if the
   * connection stayed up for `minUptime`, and grows otherwise.
   */
  #retry(error: TallyWatchError, immediately = false): void {
    const syncedAt = this.#syncedAt;
    this.#dropSocket();
    if (syncedAt !== null && Date.now() - syncedAt >= this.#minUptime) this.#attempt = 0;
    this.#scheduleRetry(error, immediately ? 0 : this.#backoff.delay(this.#attempt));
    this.#attempt += 1;
  }

  #scheduleRetry(error: TallyWatchError, delay: number): void {
    this.#clearRetry();
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      this.#connect();
    }, delay);
    this.#setState({ status: "disconnected", error, retryAt: Date.now() + delay });
  }

  #fail(error: TallyWatchError): void {
    this.#clearRetry();
    this.#setState({ status: "disconnected", error, retryAt: null });
  }

  /**
   * Each interval: if the ping sent at the previous tick got no answer (nothing at all arrived
   * since), the connection is dead although the browser has not noticed (a sleeping laptop, a
   * lost route), so it is dropped and resumed; otherwise another ping goes out.
   */
  #startPings(): void {
    this.#stopPings();
    this.#pingOutstanding = false;
    this.#pingTimer = setInterval(() => {
      const socket = this.#socket;
      if (socket === null) return;
      if (this.#pingOutstanding && !this.#receivedSincePing) {
        this.#retry(
          new TallyWatchError(
            `no answer to a ping for ${this.#pingInterval} ms; reconnecting`,
            null,
            true,
          ),
        );
        return;
      }
      this.#receivedSincePing = false;
      this.#pingOutstanding = true;
      socket.send(JSON.stringify({ type: "ping" }));
    }, this.#pingInterval);
  }

  #stopPings(): void {
    if (this.#pingTimer !== null) clearInterval(this.#pingTimer);
    this.#pingTimer = null;
  }

  /** Forgets the current socket (its events no longer reach us) and closes it. */
  #dropSocket(): void {
    this.#stopPings();
    this.#clearConnectTimer();
    this.#clearRefresh();
    // A token still on its way belongs to an attempt that is over.
    this.#attemptId += 1;
    const socket = this.#socket;
    this.#socket = null;
    this.#syncedAt = null;
    if (socket === null) return;
    socket.onopen = null;
    socket.onmessage = null;
    socket.onclose = null;
    if (socket.readyState === 0 || socket.readyState === 1) socket.close(CloseCode.NORMAL);
  }

  #clearConnectTimer(): void {
    if (this.#connectTimer !== null) clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
  }

  #clearRetry(): void {
    if (this.#retryTimer !== null) clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
  }

  readonly #onResume = (): void => {
    if (typeof document !== "undefined" && document.visibilityState === "hidden") return;
    // Only while a retry is scheduled: after a close that advises against reconnecting (1008,
    // 1009, …), focusing the tab must not bring the connection back.
    if (this.#retryTimer !== null) this.reconnectNow();
  };

  #attachResumeListeners(): void {
    if (!this.#reconnectOnResume || this.#resumeListenersAttached) return;
    if (typeof window === "undefined" || typeof document === "undefined") return;
    window.addEventListener("online", this.#onResume);
    document.addEventListener("visibilitychange", this.#onResume);
    this.#resumeListenersAttached = true;
  }

  #detachResumeListeners(): void {
    if (!this.#resumeListenersAttached) return;
    window.removeEventListener("online", this.#onResume);
    document.removeEventListener("visibilitychange", this.#onResume);
    this.#resumeListenersAttached = false;
  }

  #setState(change: Partial<SubscriptionState>): void {
    this.#state = { ...this.#state, ...change };
    for (const listener of this.#listeners) callSafely(listener);
  }

  #emit<K extends keyof SubscriptionEvents>(
    event: K,
    payload: Parameters<SubscriptionEvents[K]>[0],
  ): void {
    for (const listener of this.#events[event]) {
      callSafely(() => (listener as (payload: unknown) => void)(payload));
    }
  }
}

/**
 * Calls a user's listener; an exception it throws is logged but does not stop the other
 * listeners or the subscription's own bookkeeping.
 */
function callSafely(listener: () => void): void {
  try {
    listener();
  } catch (error) {
    console.error("a listener of a Tally subscription threw:", error);
  }
}

function isFirstMessage(message: ServerMessage): boolean {
  return message.type === "snapshot" || message.type === "resumed";
}

/** A close code and reason in words, for people. */
export function describeClose(code: number, reason: string): string {
  const why = reason ? `: ${reason}` : "";
  switch (code) {
    case CloseCode.ABNORMAL:
      return "the connection to the server was lost";
    case CloseCode.SERVICE_RESTART:
      return `the server is restarting${why}`;
    case CloseCode.SLOW_CONSUMER:
      return `this client fell behind the updates${why}`;
    case CloseCode.PING_TIMEOUT:
      return `the server heard nothing from this client${why}`;
    case CloseCode.POLICY_VIOLATION:
      return `the server closed the connection: too many messages${why}`;
    case CloseCode.MESSAGE_TOO_BIG:
      return `the server closed the connection: message too big${why}`;
    case CloseCode.INTERNAL_ERROR:
      return `the server could not serve this counter${why}`;
    case CloseCode.UNAUTHENTICATED:
      return `the server needs a valid token to watch this counter${why}`;
    case CloseCode.TOKEN_EXPIRED:
      return `the token expired${why}`;
    case CloseCode.FORBIDDEN:
      return `this token may not watch this counter${why}`;
    default:
      return `the connection closed with code ${code}${why}`;
  }
}
