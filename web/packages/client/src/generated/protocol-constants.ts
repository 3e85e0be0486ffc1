// Generated from crates/tally-proto by `TALLY_BLESS=1 cargo test -p tally-proto --lib typescript`: do not edit.
// `cargo test` fails while this file differs from what tally-proto renders.

/** Every error code: its HTTP status and whether it is temporary (tally-proto's `ErrorCode`). */
export const ERROR_CODES = {
  "bad_json": { status: 400, temporary: false },
  "unsupported_media_type": { status: 415, temporary: false },
  "unknown_procedure": { status: 404, temporary: false },
  "method_not_allowed": { status: 405, temporary: false },
  "origin_not_allowed": { status: 403, temporary: false },
  "host_not_allowed": { status: 403, temporary: false },
  "unauthenticated": { status: 401, temporary: false },
  "token_expired": { status: 401, temporary: false },
  "forbidden": { status: 403, temporary: false },
  "rate_limited": { status: 429, temporary: true },
  "invalid_field": { status: 400, temporary: false },
  "invalid_name": { status: 400, temporary: false },
  "invalid_amount": { status: 400, temporary: false },
  "invalid_limit": { status: 400, temporary: false },
  "invalid_grant": { status: 400, temporary: false },
  "unknown_key": { status: 404, temporary: false },
  "key_exists": { status: 409, temporary: false },
  "out_of_range": { status: 422, temporary: false },
  "version_conflict": { status: 409, temporary: false },
  "invalid_idempotency_key": { status: 400, temporary: false },
  "idempotency_key_reused": { status: 422, temporary: false },
  "payload_too_large": { status: 413, temporary: false },
  "request_timeout": { status: 408, temporary: false },
  "unknown_message_type": { status: 400, temporary: false },
  "already_subscribed": { status: 409, temporary: false },
  "not_subscribed": { status: 404, temporary: false },
  "too_many_subscriptions": { status: 429, temporary: false },
  "too_many_in_flight": { status: 429, temporary: true },
  "too_many_watchers": { status: 503, temporary: true },
  "counter_deleted": { status: 410, temporary: false },
  "quota_exceeded": { status: 507, temporary: false },
  "store_stopped": { status: 503, temporary: false },
  "unavailable": { status: 503, temporary: true },
  "internal": { status: 500, temporary: true },
} as const;

/** WebSocket close codes the server sends (tally-proto's `close`). */
export const CLOSE_CODES = {
  NORMAL: 1000,
  PROTOCOL_ERROR: 1002,
  INVALID_PAYLOAD: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  TRY_AGAIN_LATER: 1013,
  SERVICE_RESTART: 1012,
  SLOW_CONSUMER: 4000,
  PING_TIMEOUT: 4001,
  COUNTER_DELETED: 4004,
  UNAUTHENTICATED: 4501,
  TOKEN_EXPIRED: 4502,
  FORBIDDEN: 4503,
} as const;

/** Standard close codes after which a client does not reconnect as it is. */
export const NO_RECONNECT_CLOSE_CODES: readonly number[] = [1000, 1002, 1007, 1008, 1009];

/** Close codes (inclusive) after which a client does not reconnect without changing something. */
export const NO_RECONNECT_CLOSE_RANGE = { min: 4500, max: 4999 } as const;

/** Every value, amount and result stays within ±MAX_SAFE_INTEGER (2^53 − 1). */
export const MAX_SAFE_INTEGER = 9007199254740991;

/** The longest counter name, in bytes. */
export const NAME_MAX_BYTES = 128;

/** The largest RPC request body, in bytes (answered with 413 above it). */
export const MAX_REQUEST_BODY_BYTES = 65536;

/** The largest WebSocket message a client may send, in bytes (closed with 1009 above it). */
export const MAX_CLIENT_MESSAGE_BYTES = 4096;

/** The largest `limit` of `getHistory`. */
export const HISTORY_PAGE_MAX = 1000;

/** `getHistory`'s `limit` when the request has none. */
export const HISTORY_PAGE_DEFAULT = 50;

/** The largest `limit` of `counter.list`. */
export const LIST_PAGE_MAX = 1000;

/** `counter.list`'s `limit` when the request has none. */
export const LIST_PAGE_DEFAULT = 100;

/** The longest idempotency key, in bytes. */
export const IDEMPOTENCY_KEY_MAX_BYTES = 128;

/** The characters of a counter name, as a regular expression (the length is checked apart). */
export const NAME_PATTERN = "^[A-Za-z0-9_.:-]+$";

/** What a counter name may contain, worded for error messages. */
export const NAME_RULE = "1 to 128 characters from A-Z a-z 0-9 _ . : -";

/** The characters of an idempotency key, as a regular expression (the length is checked apart). */
export const IDEMPOTENCY_KEY_PATTERN = "^[\\x21-\\x7e]+$";

/** The idempotency-key rule, worded for error messages. */
export const IDEMPOTENCY_KEY_RULE = "1 to 128 printable ASCII characters (letters, digits and punctuation, no spaces)";

/** The fastest conflated rate (`maxRate`) a subscription may ask for, in updates per second. */
export const MAX_RATE_LIMIT = 1000;
