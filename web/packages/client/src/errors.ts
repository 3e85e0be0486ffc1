/**
 * The errors of calls: a refusal from the server (`TallyError`), and no usable answer at all
 * (`TallyConnectionError`), over HTTP and over the socket alike.
 */

import type { ErrorCode } from "./protocol.js";

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
  /**
   * Set when a write was given up on while its fate was unknown (the last answer was this
   * temporary error): the key to send it again with, so that it is applied at most once.
   */
  readonly idempotencyKey: string | null;
  /**
   * The counter's version, when a write's `expectedVersion` was not it (`version_conflict`):
   * read the counter again, decide, and send the write with this version if it still applies.
   */
  readonly currentVersion: number | null;
  /**
   * The counter's bounds when a write would have left them, or a `configure` asked for bounds
   * that leave out its value (`out_of_bounds`); null when there is no such bound (or another
   * code).
   */
  readonly min: number | null;
  readonly max: number | null;

  constructor(
    status: number,
    code: ErrorCode,
    message: string,
    temporary: boolean,
    retryAfterMs: number | null = null,
    idempotencyKey: string | null = null,
    currentVersion: number | null = null,
    bounds: { min?: number | null; max?: number | null } | null = null,
  ) {
    super(message);
    this.status = status;
    this.code = code;
    this.temporary = temporary;
    this.retryAfterMs = retryAfterMs;
    this.idempotencyKey = idempotencyKey;
    this.currentVersion = currentVersion;
    this.min = bounds?.min ?? null;
    this.max = bounds?.max ?? null;
  }
}

/**
 * The server could not be reached, did not answer in time, or answered something that is not
 * Tally's protocol. A write that fails this way after it may have reached the server was sent
 * again with its idempotency key for `retryFor`; then `idempotencyKey` is set and the message
 * says so: send it again with that key (or read the counter) to apply it at most once.
 */
export class TallyConnectionError extends Error {
  override readonly name = "TallyConnectionError";
  readonly url: string;
  /** The key of a write given up on while its fate was unknown; null otherwise. */
  readonly idempotencyKey: string | null;

  constructor(
    url: string,
    message: string,
    options?: { cause?: unknown; idempotencyKey?: string | null },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.url = url;
    this.idempotencyKey = options?.idempotencyKey ?? null;
  }
}
