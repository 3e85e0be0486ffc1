/**
 * Typed calls for the seven RPC procedures (PROTOCOL.md §3), over `fetch`, with the credential
 * of the client's `getToken` (PROTOCOL.md §9). Writes carry an idempotency key and are sent
 * again while their fate is unknown (write.ts).
 *
 * With several base URLs (the nodes of one cluster), a call goes to the URL that answered last; a
 * failure of the connection itself (refused, reset, no answer in time) moves this and later calls
 * on to the next URL, round robin, as the Rust client does (crates/tally-client/src/client.rs).
 * An answer never does, not even an error: every node reads the same storage, so a refusal is the
 * cluster's. The one exception is a temporary server fault (`503 unavailable`, `500 internal`: a
 * node shutting down or without its storage), which a write already treats as a fate unknown and
 * sends again with its key: that retry goes to the next node.
 */

import { Credentials, type GetToken } from "./auth.js";
import { TallyConnection } from "./connection.js";
import { TallyConnectionError, TallyError } from "./errors.js";

export { TallyConnectionError, TallyError };
import type {
  CounterList,
  DeleteAnswer,
  ErrorBody,
  HistoryPage,
  Metadata,
  Procedure,
  Procedures,
  Update,
  ValueAnswer,
} from "./protocol.js";
import { DEFAULT_RECONNECT_RULES, type ReconnectRules } from "./reconnect.js";
import {
  AttemptFailure,
  WRITE_RETRY_FOR,
  isWrite,
  keyForCall,
  retrying,
  undecidedNote,
} from "./write.js";

/** Options of one call. */
export interface CallOptions {
  /**
   * Stops the call: the request in flight is aborted, a write is not sent again, and the promise
   * rejects with `signal.reason`. A write aborted after it was sent may or may not have been
   * applied; send it again with the same `idempotencyKey` to apply it at most once.
   */
  signal?: AbortSignal;
}

/** Options of one write (increment, decrement, setValue, reset). */
export interface WriteOptions extends CallOptions {
  /**
   * The write's idempotency key (PROTOCOL.md §3.4): 1 to 128 printable ASCII characters. A
   * fresh random one by default. Pass your own for a write that must count once even when the
   * program making it runs again (a reloaded page, a retried job); a new operation needs a new key.
   */
  idempotencyKey?: string;
}

/** Options of a write that may depend on what was read (increment, decrement, setValue). */
export interface CompareOptions extends WriteOptions {
  /**
   * Apply the write only if the counter is at this version (0: never written), else it is
   * refused with a TallyError `version_conflict` whose `currentVersion` says where the counter
   * is, and nothing changes: compare-and-set, for stock left or seats taken.
   */
  expectedVersion?: number;
}

/** `body` with `expectedVersion` when the options give one. */
function compared<B extends object>(
  body: B,
  options?: CompareOptions,
): B & { expectedVersion?: number } {
  const expectedVersion = options?.expectedVersion;
  return expectedVersion === undefined ? body : { ...body, expectedVersion };
}

/** How to reach a server. */
export interface TallyClientOptions {
  /**
   * The server's base URL, such as `http://127.0.0.1:8094`, or the base URLs of the nodes of one
   * cluster (several `tally serve` on one database). Empty or absent means the page's own origin
   * (the page `tally serve` embeds); outside a browser it is required.
   *
   * With several, calls and the socket start on the first and move on to the next, round robin,
   * when they cannot reach the one in use: an HTTP call after a refused, reset or unanswered
   * connection (a write keeps its idempotency key, so it counts once on whichever node applies
   * it), the socket on every reconnect, resuming each subscription there with `since`.
   */
  baseUrl?: string | readonly string[];
  /** The `fetch` to use; the global one by default. */
  fetch?: typeof fetch;
  /** The `WebSocket` constructor for subscriptions; the global one by default. */
  WebSocket?: WebSocketConstructor;
  /**
   * Where credentials come from: returns a JWT, an API key, or null to act as `anonymous`.
   * Called before the first request, again shortly before a JWT expires (its `exp`), and after
   * the server said it expired (`token_expired`, close 4502). Without it, every request is
   * anonymous, which a server without access control lets do everything.
   */
  getToken?: GetToken;
  /** How long before a JWT's `exp` a fresh one is asked for (30 s; at most half its life). */
  tokenRefreshMargin?: number;
  /** How long one request may take before it counts as unanswered, in ms (30 s). */
  requestTimeout?: number;
  /** How long a write over HTTP whose fate is unknown is sent again with its key, in ms (30 s). */
  retryFor?: number;
  /**
   * The reconnect rules of the client's socket (`connection`), in ms; the defaults are
   * `DEFAULT_RECONNECT_RULES`, which every Tally client ships with.
   */
  reconnect?: Partial<ReconnectRules>;
  /** Numbers in `0..1` for the jitter of reconnect and retry delays; `Math.random` by default (tests fix it). */
  random?: () => number;
  /** How long the socket stays open after its last user let go, in ms (1 s), so a remount reuses it. */
  lingerMs?: number;
  /**
   * The most writes that may wait on the socket (queued while it reconnects, or on their way);
   * a write made past it is refused at once with `TallyConnectionError` and changes nothing
   * (1000). Reads made over the socket (`connection.call`) are bounded by it too: one is refused
   * when that many calls wait. A write whose caller aborts it while it is on its way no longer
   * counts, but a `setValue` or `reset` behind it still waits for its answer.
   */
  maxQueuedWrites?: number;
}

/** What a subscription needs of a WebSocket class: the standard browser API. */
export type WebSocketConstructor = new (url: string) => WebSocket;

const DEFAULT_TOKEN_REFRESH_MARGIN = 30_000;
const DEFAULT_REQUEST_TIMEOUT = 30_000;

/**
 * Error codes of Node.js (undici) that mean no connection was made, so a request was not sent.
 * Browsers do not say why a `fetch` failed: there every failure counts as an unknown fate.
 */
const NOT_CONNECTED_CODES = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "UND_ERR_CONNECT_TIMEOUT",
]);

/** A Tally server: typed RPC calls, and the URLs a subscription connects to. */
export class TallyClient {
  /** The base URL (the first, when there are several), without a trailing slash. */
  readonly baseUrl: string;
  /** Every base URL, in the order given, without trailing slashes; never empty. */
  readonly baseUrls: readonly string[];
  readonly WebSocket: WebSocketConstructor | undefined;
  /** The credential this client sends, and whom it names (see `getToken`). */
  readonly credentials: Credentials;
  readonly requestTimeout: number;
  readonly retryFor: number;
  readonly #fetch: typeof fetch;
  readonly #options: TallyClientOptions;
  #connection: TallyConnection | null = null;
  /** The index in `baseUrls` that HTTP calls go to: the one that worked last. */
  #current = 0;

  constructor(options: TallyClientOptions = {}) {
    this.#options = options;
    const given = options.baseUrl ?? "";
    const list = (typeof given === "string" ? [given] : [...given]).map((url) =>
      url.replace(/\/+$/, ""),
    );
    this.baseUrls = Object.freeze(list.length > 0 ? list : [""]);
    this.baseUrl = this.baseUrls[0] ?? "";
    const fetchImpl = options.fetch ?? globalThis.fetch;
    if (typeof fetchImpl !== "function") {
      throw new TypeError("no fetch is available here; pass one as options.fetch");
    }
    // Bound, so that browsers do not refuse it as an "illegal invocation" on another `this`.
    this.#fetch = fetchImpl.bind(globalThis);
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.credentials = new Credentials(
      options.getToken,
      options.tokenRefreshMargin ?? DEFAULT_TOKEN_REFRESH_MARGIN,
    );
    this.requestTimeout = options.requestTimeout ?? DEFAULT_REQUEST_TIMEOUT;
    this.retryFor = options.retryFor ?? WRITE_RETRY_FOR;
  }

  /**
   * The client's one socket (protocol version 2), shared by every subscription: made on first
   * use, the same object every time. It opens while something retains it (a watch, a call).
   */
  get connection(): TallyConnection {
    this.#connection ??= new TallyConnection(this, {
      rules: { ...DEFAULT_RECONNECT_RULES, ...this.#options.reconnect },
      random: this.#options.random ?? Math.random,
      lingerMs: this.#options.lingerMs ?? 1000,
      maxQueuedWrites: this.#options.maxQueuedWrites ?? 1000,
    });
    return this.#connection;
  }

  /**
   * Whom this client's requests act as: a JWT's `sub`, `key:ID` for an API key, `anonymous`; null
   * while `getToken` has not answered yet. Query keys include it, so two identities never share
   * cached data.
   */
  get principal(): string | null {
    return this.credentials.principal;
  }

  /**
   * Forgets the credential and asks `getToken` for a new one now: call it after the user signed
   * in or out. Subscriptions reconnect with the new credential.
   */
  resetToken(): void {
    this.credentials.reset();
  }

  /**
   * Adds `amount` (a whole number ≥ 1, default 1). Like every write, it carries an idempotency
   * key and is sent again with it while its fate is unknown (see `call`).
   */
  increment(name: string, amount?: number, options?: CompareOptions): Promise<Update> {
    const body = amount === undefined ? { name } : { name, amount };
    return this.call("increment", compared(body, options), options);
  }

  /** Subtracts `amount` (a whole number ≥ 1, default 1). */
  decrement(name: string, amount?: number, options?: CompareOptions): Promise<Update> {
    const body = amount === undefined ? { name } : { name, amount };
    return this.call("decrement", compared(body, options), options);
  }

  /** Sets the value; with `expectedVersion`, only if nobody wrote since that version. */
  setValue(name: string, value: number, options?: CompareOptions): Promise<Update> {
    return this.call("setValue", compared({ name, value }, options), options);
  }

  /** Sets the value to 0. */
  reset(name: string, options?: WriteOptions): Promise<Update> {
    return this.call("reset", { name }, options);
  }

  /** The committed value and version. */
  getValue(name: string, options?: CallOptions): Promise<ValueAnswer> {
    return this.call("getValue", { name }, options);
  }

  /** The counter's metadata. */
  getMetadata(name: string, options?: CallOptions): Promise<Metadata> {
    return this.call("getMetadata", { name }, options);
  }

  /** One page of history, newest first; pass `next` of a page as `before` for the one after. */
  getHistory(
    name: string,
    page: { limit?: number; before?: number } = {},
    options?: CallOptions,
  ): Promise<HistoryPage> {
    return this.call("getHistory", { name, ...page }, options);
  }

  /**
   * Replaces the bounds of counter `name` (needs `admin` on it, PROTOCOL.md §3.3): writes that
   * would take it below `min` or above `max` are then refused with a TallyError `out_of_bounds`
   * (whose `min` and `max` say the bounds), or, with `clamp`, increments and decrements stop at
   * the bound and their update says `clamped: true`. Bounds left out are none, so `{}` clears
   * them. Refused `out_of_bounds` when the counter's value lies outside them. Answers the
   * counter's metadata with `bounds`.
   */
  configure(
    name: string,
    bounds: { min?: number | null; max?: number | null; clamp?: boolean } = {},
    options?: CallOptions,
  ): Promise<Metadata> {
    return this.call("configure", { name, ...bounds }, options);
  }

  /**
   * One page of the counters this client may read, in name order: those whose name starts with
   * `prefix` (all when absent), after `after` (the `next` of the previous page), at most `limit`
   * (1 to 1000, default 100). A page may hold fewer than `limit` and still have a `next`.
   * `watchers` counts the answering server's subscriptions only.
   */
  list(
    page: { prefix?: string; after?: string; limit?: number } = {},
    options?: CallOptions,
  ): Promise<CounterList> {
    return this.call("list", page, options);
  }

  /**
   * Deletes counter `name` (needs `admin` on it): its value, history and idempotency keys go, its
   * subscriptions end (their state says `deleted`), and a later write starts it again at version
   * 1. Deleting a counter that is not stored answers `deleted: false`, so it is sent again like a
   * read when its fate is unknown.
   */
  deleteCounter(name: string, options?: CallOptions): Promise<DeleteAnswer> {
    return this.call("delete", { name }, options);
  }

  /**
   * Calls `procedure` with `request`; any of the typed methods above is this. With `getToken`, the
   * request carries `Authorization: Bearer …`; answered `401 token_expired`, it is sent once more
   * with a fresh token. A request unanswered after `requestTimeout` fails.
   *
   * A write (increment, decrement, setValue, reset) carries `Idempotency-Key` (`idempotencyKey`, or
   * a fresh random one) and is sent again with the same key while its fate is unknown: no answer
   * (a connection lost mid-request, a timeout, a server restarting) or a temporary server fault
   * (`503 unavailable`, `500 internal`), with backoff (250 ms doubling to 5 s, jittered), for up to
   * `retryFor` or until `signal` aborts. So it is applied at most once. A credential reset
   * (`resetToken`) after it was sent ends that: its key would be another principal's new key, so
   * it fails with the key named instead of being sent again as the new principal. A write whose first attempt
   * reached no server fails at once (Node.js only: a browser does not say why a `fetch` failed).
   *
   * @throws TallyError when the server refuses; TallyConnectionError when it cannot be reached
   * or does not answer Tally's protocol; TallyTokenError when `getToken` fails; `signal.reason`
   * when `signal` aborts; TypeError for an invalid `idempotencyKey`, or one given to a read.
   *
   * Where a write goes: while the client's `connection` is retained (a live subscription) and
   * not stopped, over the socket (`TallyConnection.call`): sent at once when connected, else
   * queued and sent in order when it connects, and sent again with the same key after a drop
   * until answered (no `retryFor` limit there; `signal` stops it). Otherwise (a script with no
   * subscription, or a connection stopped for good) over HTTP, as described above. Either way it
   * counts in `connection.getState().pendingWrites` until it settles.
   */
  async call<P extends Procedure>(
    procedure: P,
    request: Procedures[P]["request"],
    options: WriteOptions = {},
  ): Promise<Procedures[P]["answer"]> {
    if (!isWrite(procedure)) return await this.callOverHttp(procedure, request, options);
    const connection = this.connection;
    const status = connection.getState().status;
    if (connection.retained && status !== "stopped") {
      return await connection.call(procedure, request, options);
    }
    const name = (request as { name: string }).name;
    return await connection.track(name, this.callOverHttp(procedure, request, options));
  }

  /**
   * `call` over HTTP whatever the socket does: a write is sent again with its key while its
   * fate is unknown, for up to `retryFor` (see `call`).
   */
  async callOverHttp<P extends Procedure>(
    procedure: P,
    request: Procedures[P]["request"],
    options: WriteOptions = {},
  ): Promise<Procedures[P]["answer"]> {
    const { signal } = options;
    signal?.throwIfAborted();
    const body = JSON.stringify(request);
    const key = keyForCall(procedure, options.idempotencyKey);
    if (key === undefined) return this.#read<P>(procedure, body, signal);
    // A key belongs to one principal: sent again after a credential reset, as another one, a
    // write whose first attempt may have been applied could count twice.
    const generation = this.credentials.generation;
    let attempted = false;
    return retrying(
      key,
      {
        retryFor: this.retryFor,
        signal,
        ...(this.#options.random ? { random: this.#options.random } : {}),
      },
      () => {
        const index = this.#current;
        const base = this.baseUrls[index] ?? this.baseUrl;
        if (attempted && this.credentials.generation !== generation) {
          const url = `${base}/rpc/counter.${procedure}`;
          const reason = `the credential changed before the write to ${url} was answered, so it is not sent again as the new principal`;
          const error = new TallyConnectionError(url, reason, { idempotencyKey: key });
          return Promise.reject(new AttemptFailure("final", undecided(error, key)));
        }
        attempted = true;
        return this.#attempt<P>(base, procedure, body, key, signal).catch((failure: unknown) => {
          if (failure instanceof AttemptFailure && failure.fate !== "final")
            this.#moveOnFrom(index);
          throw failure;
        });
      },
      undecided,
      this.baseUrls.length,
    );
  }

  /**
   * A read: once on each URL at most, moving on when it reached no server or its fate is unknown
   * (a read changes nothing, so asking another node cannot do harm).
   */
  async #read<P extends Procedure>(
    procedure: P,
    body: string,
    signal: AbortSignal | undefined,
  ): Promise<Procedures[P]["answer"]> {
    for (let tried = 1; ; tried++) {
      const index = this.#current;
      const base = this.baseUrls[index] ?? this.baseUrl;
      try {
        return await this.#attempt<P>(base, procedure, body, null, signal);
      } catch (failure) {
        if (!(failure instanceof AttemptFailure) || failure.fate === "final") settled(failure);
        this.#moveOnFrom(index);
        if (tried >= this.baseUrls.length) settled(failure);
      }
    }
  }

  /**
   * Moves calls on from URL `index`, which could not be reached, to the next one. Only from
   * `index`: calls that failed on the same URL at once move them on once, not once each.
   */
  #moveOnFrom(index: number): void {
    if (this.#current === index) this.#current = (index + 1) % this.baseUrls.length;
  }

  /**
   * One request with the current token; after a `401 token_expired` answer, once more with a
   * fresh one (a refused request changed nothing, so sending it again cannot apply it twice).
   * Fails with an AttemptFailure.
   */
  async #attempt<P extends Procedure>(
    base: string,
    procedure: P,
    body: string,
    key: string | null,
    signal: AbortSignal | undefined,
  ): Promise<Procedures[P]["answer"]> {
    let token: string | null;
    try {
      token = await this.credentials.token();
    } catch (error) {
      throw new AttemptFailure("final", error);
    }
    try {
      return await this.#send<P>(base, procedure, body, token, key, signal);
    } catch (failure) {
      const error = failure instanceof AttemptFailure ? failure.error : failure;
      if (!(error instanceof TallyError && error.code === "token_expired")) throw failure;
      let fresh: string | null;
      try {
        this.credentials.expired(token);
        fresh = await this.credentials.token();
      } catch (tokenError) {
        throw new AttemptFailure("final", tokenError);
      }
      // Sending the same expired token again would be refused the same way.
      if (fresh === token) throw failure;
      return this.#send<P>(base, procedure, body, fresh, key, signal);
    }
  }

  /**
   * One POST to the server at `base`: the answer of a success, or an AttemptFailure saying how it
   * failed: not sent (no connection could be made), unknown (no answer in time, or a temporary
   * server fault), or final.
   */
  async #send<P extends Procedure>(
    base: string,
    procedure: P,
    body: string,
    token: string | null,
    key: string | null,
    signal: AbortSignal | undefined,
  ): Promise<Procedures[P]["answer"]> {
    const url = `${base}/rpc/counter.${procedure}`;
    const headers: Record<string, string> = { "Content-Type": "application/json" };
    if (token !== null) headers["Authorization"] = `Bearer ${token}`;
    if (key !== null) headers["Idempotency-Key"] = key;
    // One signal for the caller's abort and the timeout, which also covers reading the body.
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, this.requestTimeout);
    const onAbort = () => controller.abort(signal?.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    const failed = (cause: unknown, fate: "notSent" | "unknown", message: string) => {
      if (signal?.aborted) return new AttemptFailure("final", signal.reason);
      if (timedOut) {
        const reason = `the Tally server at ${url} did not answer within ${this.requestTimeout} ms`;
        return new AttemptFailure("unknown", new TallyConnectionError(url, reason, { cause }));
      }
      return new AttemptFailure(fate, new TallyConnectionError(url, message, { cause }));
    };
    let response: Response;
    let text: string;
    try {
      try {
        response = await this.#fetch(url, {
          method: "POST",
          headers,
          body,
          signal: controller.signal,
        });
      } catch (cause) {
        // A connection that could not be made carried nothing; any other failure may have come
        // after the server read the request.
        const fate = notConnected(cause) ? "notSent" : "unknown";
        throw failed(cause, fate, `cannot reach the Tally server at ${url}`);
      }
      try {
        text = await response.text();
      } catch (cause) {
        throw failed(cause, "unknown", `the connection to ${url} was lost during the answer`);
      }
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
    let answer: unknown;
    try {
      answer = JSON.parse(text);
    } catch {
      throw new AttemptFailure(
        "final",
        new TallyConnectionError(
          url,
          `the server at ${url} answered ${response.status} without a Tally JSON body`,
        ),
      );
    }
    if (response.ok) return answer as Procedures[P]["answer"];
    const error = (answer as Partial<ErrorBody> | null)?.error;
    if (error && typeof error.code === "string" && typeof error.message === "string") {
      const refusal = new TallyError(
        response.status,
        error.code,
        error.message,
        error.temporary === true,
        retryAfter(error.retryAfterMs, response.headers.get("Retry-After")),
        null,
        numberOrNull(error.currentVersion),
        { min: numberOrNull(error.min), max: numberOrNull(error.max) },
      );
      // A temporary server fault (503 unavailable while storage is down or the server shuts
      // down) says nothing of whether a write that raced it was applied.
      const serverFault = response.status >= 500 && refusal.temporary;
      throw new AttemptFailure(serverFault ? "unknown" : "final", refusal);
    }
    throw new AttemptFailure(
      "final",
      new TallyConnectionError(
        url,
        `the server at ${url} answered ${response.status} without a Tally error body`,
      ),
    );
  }

  /**
   * The URL of the socket (`/ws`, protocol version 2) of base URL number `index` (the first by
   * default), `ws:` or `wss:` as that base URL is.
   */
  socketUrl(index = 0): string {
    let base = this.baseUrls[index] ?? this.baseUrl;
    if (base === "") {
      const location = globalThis.location as Location | undefined;
      if (!location) {
        throw new TypeError("no baseUrl was given and there is no page location to default to");
      }
      base = location.origin;
    }
    const wsBase = base.replace(/^http(s?):\/\//i, (_match, secure: string) => `ws${secure}://`);
    return `${wsBase}/ws`;
  }
}

/** The error of a read's only attempt. */
function settled(failure: unknown): never {
  throw failure instanceof AttemptFailure ? failure.error : failure;
}

/** Whether a `fetch` failure says that no connection was made (Node.js's error codes). */
function notConnected(error: unknown): boolean {
  for (let cause = error, depth = 0; cause instanceof Error && depth < 4; depth++) {
    const { code, errors } = cause as Error & { code?: unknown; errors?: unknown };
    if (typeof code === "string" && NOT_CONNECTED_CODES.has(code)) return true;
    // Node's happy-eyeballs connect fails with an AggregateError of one error per address.
    if (Array.isArray(errors) && errors.length > 0 && errors.every((e) => notConnected(e))) {
      return true;
    }
    cause = cause.cause;
  }
  return false;
}

/** `error`, saying that the write may have been applied and which key applies it at most once. */
function undecided(error: unknown, key: string): unknown {
  const note = undecidedNote(key);
  if (error instanceof TallyConnectionError) {
    return new TallyConnectionError(error.url, `${error.message}; ${note}`, {
      cause: error.cause,
      idempotencyKey: key,
    });
  }
  if (error instanceof TallyError) {
    return new TallyError(
      error.status,
      error.code,
      `${error.message}; ${note}`,
      error.temporary,
      error.retryAfterMs,
      key,
      error.currentVersion,
      { min: error.min, max: error.max },
    );
  }
  return error;
}

/** `value` when it is a number, else null. */
function numberOrNull(value: unknown): number | null {
  return typeof value === "number" ? value : null;
}

/**
 * The delay a refusal asks for, in ms: the body's `retryAfterMs`, or else `Retry-After` (whole
 * seconds; the HTTP-date form is not used by Tally), or null.
 */
function retryAfter(bodyMs: unknown, header: string | null): number | null {
  if (typeof bodyMs === "number" && Number.isFinite(bodyMs) && bodyMs >= 0) return bodyMs;
  if (header !== null && /^\d+$/.test(header.trim())) return Number(header.trim()) * 1000;
  return null;
}
