/**
 * Credentials: the token a client sends, got from the application's `getToken` callback, kept
 * until shortly before it expires, and the principal it names (for cache keys).
 *
 * Nothing here verifies a token: the server does. The client only reads a JWT's `sub` and `exp`
 * to know whom it speaks for and when to ask for a fresh one. A token is never logged and never
 * put in an error message.
 */

/**
 * Returns the credential to send: a JWT, an API key (`tally_…`), or null (or undefined) to act
 * as `anonymous`. Called before the first request, again shortly before the token expires, and
 * after the server said it expired.
 */
export type GetToken = () => Promise<string | null | undefined> | string | null | undefined;

/** The `getToken` callback failed; the cause is the callback's own error. */
export class TallyTokenError extends Error {
  override readonly name = "TallyTokenError";

  constructor(cause: unknown) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    super(`getToken failed: ${reason}`, { cause });
  }
}

/** What a client knows of a credential without verifying it. */
export interface TokenInfo {
  /**
   * Whom it names, for keeping apart what two identities see: a JWT's `sub`, `key:ID` for an API
   * key (ID is the key's public id, never its secret), `anonymous` without a credential, or
   * `unreadable` for a credential that is neither (the server will refuse it).
   */
  principal: string;
  /** When it expires (epoch ms), or null for API keys and tokens without `exp`. */
  expiresAt: number | null;
}

/** A JWT's claims this client reads. */
interface Claims {
  sub?: unknown;
  exp?: unknown;
}

const KEY_PREFIX = "tally_";
/** An API key is `tally_` + a 12-character id + a 43-character secret. */
const KEY_ID_LENGTH = 12;

/** Reads `token` (a JWT, an API key or null) without verifying it. */
export function inspectToken(token: string | null): TokenInfo {
  if (token === null) return { principal: "anonymous", expiresAt: null };
  if (token.startsWith(KEY_PREFIX)) {
    const id = token.slice(KEY_PREFIX.length, KEY_PREFIX.length + KEY_ID_LENGTH);
    return { principal: `key:${id}`, expiresAt: null };
  }
  const claims = jwtClaims(token);
  if (claims === null || typeof claims.sub !== "string") {
    return { principal: "unreadable", expiresAt: null };
  }
  const expiresAt = typeof claims.exp === "number" ? claims.exp * 1000 : null;
  return { principal: claims.sub, expiresAt };
}

/** The payload of a JWT (`header.payload.signature`, each base64url), or null. */
function jwtClaims(token: string): Claims | null {
  const parts = token.split(".");
  if (parts.length !== 3 || parts[1] === undefined) return null;
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, "="));
    const bytes = Uint8Array.from(binary, (ch) => ch.charCodeAt(0));
    const claims: unknown = JSON.parse(new TextDecoder().decode(bytes));
    return typeof claims === "object" && claims !== null ? (claims as Claims) : null;
  } catch {
    return null;
  }
}

/** A credential as held, with when to ask for the next one. */
interface Held {
  token: string | null;
  info: TokenInfo;
  /** From when (epoch ms) a fresh token is asked for; Infinity for credentials that never expire. */
  refreshAt: number;
}

type Listener = () => void;

/**
 * Holds one client's credential. One `getToken` call at a time: requests that need a token while
 * one is being fetched wait for that one.
 */
export class Credentials {
  readonly #getToken: GetToken | undefined;
  readonly #refreshMargin: number;
  #held: Held | null = null;
  #fetching: Promise<Held> | null = null;
  /** Bumped by `reset`, so that a fetch started before it is not kept after it. */
  #generation = 0;
  readonly #listeners = new Set<Listener>();

  constructor(getToken: GetToken | undefined, refreshMargin: number) {
    this.#getToken = getToken;
    this.#refreshMargin = Math.max(0, refreshMargin);
  }

  /** Bumped by each `reset`: a connection made with an older generation's token starts over. */
  get generation(): number {
    return this.#generation;
  }

  /** Whether there is a `getToken` callback at all (without one, every request is anonymous). */
  get enabled(): boolean {
    return this.#getToken !== undefined;
  }

  /** The principal of the credential held, or null while none was got yet. */
  get principal(): string | null {
    if (this.#getToken === undefined) return "anonymous";
    return this.#held?.info.principal ?? null;
  }

  /**
   * The credential to send: the one held while it is not due for refresh, or a fresh one from
   * `getToken` (even one that is itself due already, rather than asking again at once).
   *
   * @throws TallyTokenError when `getToken` throws or rejects.
   */
  async token(): Promise<string | null> {
    if (this.#getToken === undefined) return null;
    const held = this.#held;
    if (held !== null && Date.now() < held.refreshAt) return held.token;
    return (await this.#fetch()).token;
  }

  /**
   * When (epoch ms) `token` is to be replaced by a fresh credential, or null if never: now when
   * another one is held already (one got after it, for an HTTP request say), so that a socket
   * opened with it moves on before it expires.
   */
  refreshAt(token: string | null): number | null {
    const held = this.#held;
    if (held === null) return null;
    if (held.token !== token) return Date.now();
    return held.refreshAt === Infinity ? null : held.refreshAt;
  }

  /**
   * A credential to replace `token` when it is due: `getToken`'s answer if `token` is still the
   * one held (asked even if the clock says it is a moment early: timers may fire early), or the
   * one held if it was replaced meanwhile.
   *
   * @throws TallyTokenError when `getToken` throws or rejects.
   */
  async renew(token: string | null): Promise<string | null> {
    if (this.#getToken === undefined) return null;
    if (this.#held !== null && this.#held.token !== token) return this.#held.token;
    return (await this.#fetch()).token;
  }

  /**
   * Forgets `token` if it is still the one held (the server said it expired), so that the next
   * `token()` asks `getToken` for a fresh one.
   */
  expired(token: string | null): void {
    if (this.#held !== null && this.#held.token === token) {
      this.#held = { ...this.#held, refreshAt: -Infinity };
    }
  }

  /**
   * Forgets the credential and asks for a new one now (after signing in or out); listeners hear
   * of it, and subscriptions reconnect with the new one.
   */
  reset(): void {
    if (this.#getToken === undefined) return;
    this.#generation += 1;
    this.#held = null;
    this.#fetching = null;
    this.#notify();
    // The principal becomes known again as soon as the new credential is got.
    this.#fetch().catch(() => {});
  }

  /** Calls `listener` when the principal changes or the credential was reset. */
  subscribe(listener: Listener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #fetch(): Promise<Held> {
    if (this.#fetching !== null) return this.#fetching;
    const getToken = this.#getToken as GetToken;
    const generation = this.#generation;
    const fetchedAt = Date.now();
    const fetching = (async () => {
      let token: string | null;
      try {
        token = (await getToken()) ?? null;
      } catch (cause) {
        throw new TallyTokenError(cause);
      }
      const info = inspectToken(token);
      const held: Held = { token, info, refreshAt: this.#refreshTime(info, fetchedAt) };
      if (generation === this.#generation) {
        const before = this.principal;
        this.#held = held;
        if (info.principal !== before) this.#notify();
      }
      return held;
    })();
    this.#fetching = fetching;
    const clear = () => {
      if (this.#fetching === fetching) this.#fetching = null;
    };
    fetching.then(clear, clear);
    return fetching;
  }

  /**
   * A token is refreshed `refreshMargin` before it expires, or halfway through its life when that
   * is shorter, so that a short-lived token is not refreshed on every request.
   */
  #refreshTime(info: TokenInfo, fetchedAt: number): number {
    if (info.expiresAt === null) return Infinity;
    const margin = Math.min(this.#refreshMargin, Math.max(0, (info.expiresAt - fetchedAt) / 2));
    return info.expiresAt - margin;
  }

  #notify(): void {
    for (const listener of this.#listeners) {
      try {
        listener();
      } catch (error) {
        console.error("a listener of Tally's credentials threw:", error);
      }
    }
  }
}
