/**
 * Typed calls for the seven RPC procedures (PROTOCOL.md §3), over `fetch`, with the credential
 * of the client's `getToken` (PROTOCOL.md §9).
 */

import { Credentials, type GetToken } from "./auth.js";
import type {
  ErrorBody,
  ErrorCode,
  HistoryPage,
  Metadata,
  Procedure,
  Procedures,
  Update,
  ValueAnswer,
} from "./protocol.js";

/** The server refused a request; `code` and `message` are the server's own. */
export class TallyError extends Error {
  override readonly name = "TallyError";
  /** The HTTP status of the answer. */
  readonly status: number;
  /** The server's stable error code (PROTOCOL.md §6). */
  readonly code: ErrorCode;
  /** True when sending the same request again later, unchanged, may succeed. */
  readonly temporary: boolean;
  /**
   * How long to wait before sending it again, when the server said (`rate_limited`: the body's
   * `retryAfterMs`, or else the `Retry-After` header); null otherwise.
   */
  readonly retryAfterMs: number | null;

  constructor(
    status: number,
    code: ErrorCode,
    message: string,
    temporary: boolean,
    retryAfterMs: number | null = null,
  ) {
    super(message);
    this.status = status;
    this.code = code;
    this.temporary = temporary;
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * The server could not be reached, or answered something that is not Tally's protocol.
 * A write that fails this way may or may not have been applied: read the counter before retrying.
 */
export class TallyConnectionError extends Error {
  override readonly name = "TallyConnectionError";
  readonly url: string;

  constructor(url: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.url = url;
  }
}

/** How to reach a server. */
export interface TallyClientOptions {
  /**
   * The server's base URL, such as `http://127.0.0.1:8094`. Empty or absent means the page's own
   * origin (the page `tally serve` embeds); outside a browser it is required.
   */
  baseUrl?: string;
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
}

/** What a subscription needs of a WebSocket class: the standard browser API. */
export type WebSocketConstructor = new (url: string) => WebSocket;

const DEFAULT_TOKEN_REFRESH_MARGIN = 30_000;

/** A Tally server: typed RPC calls, and the URLs a subscription connects to. */
export class TallyClient {
  readonly baseUrl: string;
  readonly WebSocket: WebSocketConstructor | undefined;
  /** The credential this client sends, and whom it names (see `getToken`). */
  readonly credentials: Credentials;
  readonly #fetch: typeof fetch;

  constructor(options: TallyClientOptions = {}) {
    this.baseUrl = (options.baseUrl ?? "").replace(/\/+$/, "");
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

  /** Adds `amount` (a whole number ≥ 1, default 1). */
  increment(name: string, amount?: number): Promise<Update> {
    return this.call("increment", amount === undefined ? { name } : { name, amount });
  }

  /** Subtracts `amount` (a whole number ≥ 1, default 1). */
  decrement(name: string, amount?: number): Promise<Update> {
    return this.call("decrement", amount === undefined ? { name } : { name, amount });
  }

  /** Sets the value. */
  setValue(name: string, value: number): Promise<Update> {
    return this.call("setValue", { name, value });
  }

  /** Sets the value to 0. */
  reset(name: string): Promise<Update> {
    return this.call("reset", { name });
  }

  /** The committed value and version. */
  getValue(name: string): Promise<ValueAnswer> {
    return this.call("getValue", { name });
  }

  /** The counter's metadata. */
  getMetadata(name: string): Promise<Metadata> {
    return this.call("getMetadata", { name });
  }

  /** One page of history, newest first; pass `next` of a page as `before` for the one after. */
  getHistory(name: string, page: { limit?: number; before?: number } = {}): Promise<HistoryPage> {
    return this.call("getHistory", { name, ...page });
  }

  /**
   * Calls `procedure` with `request`; any of the typed methods above is this. With `getToken`, the
   * request carries `Authorization: Bearer …`; answered `401 token_expired`, it is sent once more
   * with a fresh token.
   *
   * @throws TallyError when the server refuses; TallyConnectionError when it cannot be reached
   * or does not answer Tally's protocol; TallyTokenError when `getToken` fails.
   */
  async call<P extends Procedure>(
    procedure: P,
    request: Procedures[P]["request"],
  ): Promise<Procedures[P]["answer"]> {
    const body = JSON.stringify(request);
    const token = await this.credentials.token();
    try {
      return await this.#send<P>(procedure, body, token);
    } catch (error) {
      if (!(error instanceof TallyError && error.code === "token_expired")) throw error;
      this.credentials.expired(token);
      const fresh = await this.credentials.token();
      // Sending the same expired token again would be refused the same way.
      if (fresh === token) throw error;
      return this.#send<P>(procedure, body, fresh);
    }
  }

  async #send<P extends Procedure>(
    procedure: P,
    body: string,
    token: string | null,
  ): Promise<Procedures[P]["answer"]> {
    const url = `${this.baseUrl}/rpc/counter.${procedure}`;
    const headers: Record<string, string> = { "Content-Type": "application/json" };
    if (token !== null) headers["Authorization"] = `Bearer ${token}`;
    let response: Response;
    try {
      response = await this.#fetch(url, { method: "POST", headers, body });
    } catch (cause) {
      throw new TallyConnectionError(url, `cannot reach the Tally server at ${url}`, { cause });
    }
    const text = await response.text().catch(() => "");
    let answer: unknown;
    try {
      answer = JSON.parse(text);
    } catch {
      throw new TallyConnectionError(
        url,
        `the server at ${url} answered ${response.status} without a Tally JSON body`,
      );
    }
    if (response.ok) return answer as Procedures[P]["answer"];
    const error = (answer as Partial<ErrorBody> | null)?.error;
    if (error && typeof error.code === "string" && typeof error.message === "string") {
      throw new TallyError(
        response.status,
        error.code,
        error.message,
        error.temporary === true,
        retryAfter(error.retryAfterMs, response.headers.get("Retry-After")),
      );
    }
    throw new TallyConnectionError(
      url,
      `the server at ${url} answered ${response.status} without a Tally error body`,
    );
  }

  /** The WebSocket URL that watches `name`, resuming after version `since` if given. */
  watchUrl(name: string, since?: number): string {
    let base = this.baseUrl;
    if (base === "") {
      const location = globalThis.location as Location | undefined;
      if (!location) {
        throw new TypeError("no baseUrl was given and there is no page location to default to");
      }
      base = location.origin;
    }
    const wsBase = base.replace(/^http(s?):\/\//i, (_match, secure: string) => `ws${secure}://`);
    const query = since === undefined ? "" : `?since=${since}`;
    return `${wsBase}/ws/counter/${encodeURIComponent(name)}${query}`;
  }
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
