//! Error codes, the HTTP error body, and WebSocket close codes.
//!
//! Codes are stable strings: clients match on them, people read the message. Every code is
//! documented in docs/PROTOCOL.md.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a request was refused, as a stable code.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The body or message is not valid JSON.
    BadJson,
    /// The request's content type is not `application/json`.
    UnsupportedMediaType,
    /// No such RPC procedure.
    UnknownProcedure,
    /// The HTTP method is not allowed on this path.
    MethodNotAllowed,
    /// A browser request from a web origin the server does not allow (see `--allow-origin`).
    OriginNotAllowed,
    /// A field is missing, of the wrong type, or not known.
    InvalidField,
    /// The counter name breaks the naming rule.
    InvalidName,
    /// An amount that is not an integer >= 1.
    InvalidAmount,
    /// A history `limit` outside 1..=1000.
    InvalidLimit,
    /// A value or result outside ±(2^53 − 1); nothing was stored.
    OutOfRange,
    /// The request body is over 64 KiB.
    PayloadTooLarge,
    /// The request body took longer to arrive than the server allows (`--request-timeout`);
    /// nothing was done.
    RequestTimeout,
    /// A WebSocket message whose `type` the server does not know.
    UnknownMessageType,
    /// The counter already has as many watchers as the server allows; try again later.
    TooManyWatchers,
    /// The server cannot serve right now (storage fault, shutting down); try again later.
    Unavailable,
    /// A fault inside the server; logged there.
    Internal,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::BadJson,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::UnknownProcedure,
        ErrorCode::MethodNotAllowed,
        ErrorCode::OriginNotAllowed,
        ErrorCode::InvalidField,
        ErrorCode::InvalidName,
        ErrorCode::InvalidAmount,
        ErrorCode::InvalidLimit,
        ErrorCode::OutOfRange,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RequestTimeout,
        ErrorCode::UnknownMessageType,
        ErrorCode::TooManyWatchers,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::UnknownProcedure => "unknown_procedure",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::OriginNotAllowed => "origin_not_allowed",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::InvalidAmount => "invalid_amount",
            ErrorCode::InvalidLimit => "invalid_limit",
            ErrorCode::OutOfRange => "out_of_range",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::UnknownMessageType => "unknown_message_type",
            ErrorCode::TooManyWatchers => "too_many_watchers",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status an RPC answers this code with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadJson
            | ErrorCode::InvalidField
            | ErrorCode::InvalidName
            | ErrorCode::InvalidAmount
            | ErrorCode::InvalidLimit
            | ErrorCode::UnknownMessageType => 400,
            ErrorCode::OriginNotAllowed => 403,
            ErrorCode::UnknownProcedure => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::OutOfRange => 422,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable | ErrorCode::TooManyWatchers => 503,
        }
    }

    /// Whether the same request may succeed if sent again later unchanged.
    pub fn is_temporary(self) -> bool {
        matches!(self, ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::TooManyWatchers)
    }

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
}

impl ProtocolError {
    /// A refusal with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
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
}

impl From<&ProtocolError> for ErrorBody {
    fn from(error: &ProtocolError) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: error.code.as_str().to_owned(),
                message: error.message.clone(),
                temporary: error.code.is_temporary(),
            },
        }
    }
}

/// WebSocket close codes the server uses.
///
/// 4000–4499 mean "reconnect, resuming with `since` = the last version you saw"; 4500–4999 mean
/// "do not reconnect without changing something". Standard codes keep their RFC 6455 meaning.
pub mod close {
    /// The server closed a socket it no longer needs, or the client asked to close.
    pub const NORMAL: u16 = 1000;
    /// A protocol violation by the client (for example a binary frame where text was expected).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The client sent more messages per second than the server allows.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// The client sent a message over 4 KiB.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// A fault inside the server; reconnecting later may help.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The server is restarting or shutting down: reconnect (with `since`) after a moment.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The watcher fell too far behind the counter's updates (its queue overflowed, or a send
    /// stalled): reconnect with `since` and the gap is replayed from history.
    pub const SLOW_CONSUMER: u16 = 4000;
    /// The peer stopped answering pings.
    pub const PING_TIMEOUT: u16 = 4001;

    /// Whether a client should reconnect after the server closed with `code`.
    pub fn should_reconnect(code: u16) -> bool {
        !matches!(code, NORMAL | PROTOCOL_ERROR | POLICY_VIOLATION | MESSAGE_TOO_BIG | 4500..=4999)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_wire_names() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn resume_codes_ask_for_reconnect() {
        assert!(close::should_reconnect(close::SLOW_CONSUMER));
        assert!(close::should_reconnect(close::SERVICE_RESTART));
        assert!(!close::should_reconnect(close::MESSAGE_TOO_BIG));
        assert!(!close::should_reconnect(4500));
    }
}
