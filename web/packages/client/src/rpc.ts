/**
 * Typed calls for the seven RPC procedures (PROTOCOL.md §3), over `fetch`.
 */

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

  constructor(status: number, code: ErrorCode, message: string, temporary: boolean) {
    super(message);
    this.status = status;
    this.code = code;
    this.temporary = temporary;
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
}

/** What a subscription needs of a WebSocket class: the standard browser API. */
export type WebSocketConstructor = new (url: string) => WebSocket;

/** A Tally server: typed RPC calls, and the URLs a subscription connects to. */
export class TallyClient {
  readonly baseUrl: string;
  readonly WebSocket: WebSocketConstructor | undefined;
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

  /** Calls `procedure` with `request`; any of the typed methods above is this. */
  async call<P extends Procedure>(
    procedure: P,
    request: Procedures[P]["request"],
  ): Promise<Procedures[P]["answer"]> {
    const url = `${this.baseUrl}/rpc/counter.${procedure}`;
    let response: Response;
    try {
      response = await this.#fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(request),
      });
    } catch (cause) {
      throw new TallyConnectionError(url, `cannot reach the Tally server at ${url}`, { cause });
    }
    const text = await response.text().catch(() => "");
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      throw new TallyConnectionError(
        url,
        `the server at ${url} answered ${response.status} without a Tally JSON body`,
      );
    }
    if (response.ok) return body as Procedures[P]["answer"];
    const error = (body as Partial<ErrorBody> | null)?.error;
    if (error && typeof error.code === "string" && typeof error.message === "string") {
      throw new TallyError(response.status, error.code, error.message, error.temporary === true);
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
