//! Error codes, the HTTP error body, and WebSocket close codes.
//!
//! Codes are stable strings: clients match on them, people read the message. Every code is
//! documented in docs/PROTOCOL.md.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Declares [`ErrorCode`] from one table, so that a new code is written once: its variant, its
/// wire name, its HTTP status, and whether it is temporary (the same request may succeed later).
macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $variant:ident = $wire:literal, $status:literal, $temporary:literal;)*) => {
        /// Why a request was refused, as a stable code.
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[doc = $doc])* #[serde(rename = $wire)] $variant,)*
        }

        impl ErrorCode {
            /// Every code, in documentation order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $wire,)* }
            }

            /// The HTTP status an RPC answers this code with.
            pub fn http_status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }

            /// Whether the same request may succeed if sent again later unchanged.
            pub fn is_temporary(self) -> bool {
                match self { $(ErrorCode::$variant => $temporary,)* }
            }
        }
    };
}

error_codes! {
    /// The body or message is not valid JSON.
    BadJson = "bad_json", 400, false;
    /// The request's content type is not `application/json`.
    UnsupportedMediaType = "unsupported_media_type", 415, false;
    /// No such RPC procedure.
    UnknownProcedure = "unknown_procedure", 404, false;
    /// The HTTP method is not allowed on this path.
    MethodNotAllowed = "method_not_allowed", 405, false;
    /// A browser request from a web origin the server does not allow (see `--allow-origin`).
    OriginNotAllowed = "origin_not_allowed", 403, false;
    /// The request's `Host` is not one this server answers to (a loopback name, an IP address,
    /// or a `--public-host`): refused before anything else, which closes DNS rebinding.
    HostNotAllowed = "host_not_allowed", 403, false;
    /// No credentials where the request needs some, or credentials that are not valid (a bad
    /// signature, a revoked API key, a malformed token).
    Unauthenticated = "unauthenticated", 401, false;
    /// The token's `exp` has passed: get a fresh token and send the request again.
    TokenExpired = "token_expired", 401, false;
    /// The principal holds no grant for this action on this counter, or the amount is over the
    /// grant's cap.
    Forbidden = "forbidden", 403, false;
    /// The principal wrote faster than `--write-rate` allows; wait `Retry-After` seconds.
    RateLimited = "rate_limited", 429, true;
    /// A field is missing, of the wrong type, or not known.
    InvalidField = "invalid_field", 400, false;
    /// The counter name breaks the naming rule.
    InvalidName = "invalid_name", 400, false;
    /// An amount that is not an integer >= 1.
    InvalidAmount = "invalid_amount", 400, false;
    /// A history `limit` outside 1..=1000.
    InvalidLimit = "invalid_limit", 400, false;
    /// A grant that breaks the grant syntax (`PATTERN=ACTION[<=CAP],...`).
    InvalidGrant = "invalid_grant", 400, false;
    /// No API key has that name.
    UnknownKey = "unknown_key", 404, false;
    /// An API key with that name already exists (revoked keys keep their names).
    KeyExists = "key_exists", 409, false;
    /// A value or result outside ±(2^53 − 1); nothing was stored.
    OutOfRange = "out_of_range", 422, false;
    /// A write with `expectedVersion` found the counter at another version (someone else
    /// wrote first); nothing was stored. The error's `currentVersion` says where it is: read
    /// it again, decide, and send the write with that version.
    VersionConflict = "version_conflict", 409, false;
    /// An idempotency key that breaks the key rule (1 to 128 printable ASCII characters).
    InvalidIdempotencyKey = "invalid_idempotency_key", 400, false;
    /// The idempotency key was already used by this principal on this counter for a different
    /// operation; nothing was stored. Use a new key for a new operation.
    IdempotencyKeyReused = "idempotency_key_reused", 422, false;
    /// The request body is over 64 KiB.
    PayloadTooLarge = "payload_too_large", 413, false;
    /// The request body took longer to arrive than the server allows (`--request-timeout`);
    /// nothing was done.
    RequestTimeout = "request_timeout", 408, false;
    /// A WebSocket message whose `type` the server does not know.
    UnknownMessageType = "unknown_message_type", 400, false;
    /// A `subscribe` to a counter the socket already subscribes to.
    AlreadySubscribed = "already_subscribed", 409, false;
    /// An `unsubscribe` of a counter the socket does not subscribe to.
    NotSubscribed = "not_subscribed", 404, false;
    /// The socket already holds as many subscriptions as the server allows
    /// (`--max-subscriptions`); unsubscribe from one first.
    TooManySubscriptions = "too_many_subscriptions", 429, false;
    /// The socket already has as many commands waiting for their replies as the server allows
    /// (`--max-in-flight`); send more once replies arrive.
    TooManyInFlight = "too_many_in_flight", 429, true;
    /// The counter already has as many watchers as the server allows; try again later.
    TooManyWatchers = "too_many_watchers", 503, true;
    /// Only in an `unsubscribed` push: the counter was deleted (`counter.delete`), so its
    /// subscription ended. Its history is gone; subscribe again without `since` to watch the
    /// counter start afresh at version 0.
    CounterDeleted = "counter_deleted", 410, false;
    /// A write that would create a counter while the server is at a quota (`--max-counters`,
    /// `--max-database-size`; the message says which, and its value); nothing was stored.
    /// Writes to existing counters still work.
    QuotaExceeded = "quota_exceeded", 507, false;
    /// The store stopped taking writes after a failed fsync, until the server is restarted
    /// (docs/RELIABILITY.md, "A failed fsync"); reads still work. Not temporary: the same write
    /// fails until someone restarts the server. The write that met the failed fsync may or may
    /// not be stored: send it again with its idempotency key after the restart.
    StoreStopped = "store_stopped", 503, false;
    /// The server cannot serve right now (storage fault, shutting down); try again later.
    Unavailable = "unavailable", 503, true;
    /// A fault inside the server; logged there.
    Internal = "internal", 500, true;
}

impl ErrorCode {
    /// Whether the fault is the client's (answered, not logged as a server error).
    pub fn is_client_fault(self) -> bool {
        self.http_status() < 500
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request: a code for programs and a message for people that says what was wrong
/// and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    /// The stable code.
    pub code: ErrorCode,
    /// What was wrong and what is allowed.
    pub message: String,
    /// How long to wait before trying again, when the server knows (`rate_limited`).
    pub retry_after: Option<std::time::Duration>,
    /// The counter's version, for `version_conflict`.
    pub current_version: Option<u64>,
}

impl ProtocolError {
    /// A refusal with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after: None, current_version: None }
    }

    /// The same refusal, telling the client to wait `delay` before trying again.
    #[must_use]
    pub fn with_retry_after(mut self, delay: std::time::Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }
}

/// The body of every HTTP error answer: `{"error": {"code", "message", "temporary"}}`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// The stable code, as text (a client may meet codes newer than itself).
    pub code: String,
    /// What was wrong and what is allowed.
    pub message: String,
    /// Whether sending the same request later may succeed.
    #[serde(default)]
    pub temporary: bool,
    /// How many milliseconds to wait before trying again, when the server knows
    /// (`rate_limited`; RPC answers also carry it as `Retry-After` in whole seconds).
    #[serde(default, rename = "retryAfterMs", skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The counter's version when a write's `expectedVersion` did not match it
    /// (`version_conflict`).
    #[serde(default, rename = "currentVersion", skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
}

impl From<&ProtocolError> for ErrorBody {
    fn from(error: &ProtocolError) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: error.code.as_str().to_owned(),
                message: error.message.clone(),
                temporary: error.code.is_temporary(),
                retry_after_ms: error.retry_after.map(duration_ms),
                current_version: error.current_version,
            },
        }
    }
}

/// A delay in whole milliseconds, at least 1 for any delay above zero.
pub(crate) fn duration_ms(delay: std::time::Duration) -> u64 {
    u64::try_from(delay.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
}

/// Declares the close codes of [`close`] from one table, so that [`close::ALL`] lists every one
/// (the TypeScript client's copy is generated from it).
macro_rules! close_codes {
    ($($(#[doc = $doc:literal])* $name:ident = $code:literal;)*) => {
        $($(#[doc = $doc])* pub const $name: u16 = $code;)*

        /// Every close code by its name, in documentation order.
        pub const ALL: &[(&str, u16)] = &[$((stringify!($name), $name),)*];
    };
}

/// WebSocket close codes the server uses.
///
/// 4000–4499 mean "reconnect, resuming with `since` = the last version you saw"; 4500–4999 mean
/// "do not reconnect without changing something". Standard codes keep their RFC 6455 meaning.
pub mod close {
    use std::ops::RangeInclusive;

    close_codes! {
        /// The server closed a socket it no longer needs, or the client asked to close.
        NORMAL = 1000;
        /// A protocol violation by the client at the WebSocket level (RFC 6455): an unmasked
        /// frame, reserved bits set, an unknown opcode, a fragmented or oversized control frame,
        /// a continuation with nothing to continue.
        PROTOCOL_ERROR = 1002;
        /// A text message (or a close frame's reason) that is not valid UTF-8.
        INVALID_PAYLOAD = 1007;
        /// The client sent more messages per second than the server allows.
        POLICY_VIOLATION = 1008;
        /// The client sent a message over 4 KiB.
        MESSAGE_TOO_BIG = 1009;
        /// A fault inside the server; reconnecting later may help.
        INTERNAL_ERROR = 1011;
        /// The counter has as many watchers as the server allows (found after the socket's
        /// credentials arrived): reconnect later.
        TRY_AGAIN_LATER = 1013;
        /// The server is restarting or shutting down: reconnect (with `since`) after a moment.
        SERVICE_RESTART = 1012;
        /// The watcher fell too far behind the counter's updates (its queue overflowed, or a send
        /// stalled): reconnect with `since` and the gap is replayed from history.
        SLOW_CONSUMER = 4000;
        /// The peer stopped answering pings.
        PING_TIMEOUT = 4001;
        /// The counter was deleted (`counter.delete`): its history is gone. A client may
        /// reconnect, but without `since`: it then gets a snapshot of version 0 (with `since`
        /// and the old epoch it gets a `resync` snapshot anyway, since a deleted counter starts
        /// under a new epoch).
        COUNTER_DELETED = 4004;
        /// No credentials where the counter needs some (none came within `--auth-timeout`), or
        /// credentials that are not valid: do not reconnect without a new token.
        UNAUTHENTICATED = 4501;
        /// The socket's token expired: get a fresh token, then reconnect (resuming with `since`).
        TOKEN_EXPIRED = 4502;
        /// The principal may not watch this counter (or a fresh token no longer allows it): do not
        /// reconnect.
        FORBIDDEN = 4503;
    }

    /// The standard codes after which a client does not reconnect as it is.
    pub const NO_RECONNECT: &[u16] =
        &[NORMAL, PROTOCOL_ERROR, INVALID_PAYLOAD, POLICY_VIOLATION, MESSAGE_TOO_BIG];

    /// The application codes after which a client does not reconnect without changing something.
    pub const NO_RECONNECT_RANGE: RangeInclusive<u16> = 4500..=4999;

    /// Whether a client should reconnect after the server closed with `code`, as it is: not after
    /// [`NO_RECONNECT`] or [`NO_RECONNECT_RANGE`]. [`TOKEN_EXPIRED`] is not such a code:
    /// reconnecting needs a fresh token first.
    pub fn should_reconnect(code: u16) -> bool {
        !(NO_RECONNECT.contains(&code) || NO_RECONNECT_RANGE.contains(&code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_wire_names() {
        for &code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn resume_codes_ask_for_reconnect() {
        assert!(close::should_reconnect(close::SLOW_CONSUMER));
        assert!(close::should_reconnect(close::SERVICE_RESTART));
        assert!(!close::should_reconnect(close::MESSAGE_TOO_BIG));
        assert!(!close::should_reconnect(close::PROTOCOL_ERROR));
        assert!(!close::should_reconnect(close::INVALID_PAYLOAD));
        assert!(!close::should_reconnect(4500));
    }
}
