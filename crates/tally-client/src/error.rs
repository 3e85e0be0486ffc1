//! What can go wrong when talking to a Tally server.
//!
//! No variant ever holds a credential: tokens are kept apart (see `token.rs`) and never
//! written into an error, its `Debug` output or a log.

use std::time::Duration;

/// What a [`TokenSource`](crate::TokenSource) may fail with: any error, boxed.
pub type TokenSourceError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The base URL cannot be used.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate given to trust (see
    /// [`ClientBuilder::add_root_certificate_pem`](crate::ClientBuilder::add_root_certificate_pem))
    /// cannot be used.
    #[error("invalid CA certificate: {reason}")]
    InvalidCertificate {
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not be reached (not running, wrong address, network down, timeout,
    /// a TLS handshake that failed). The request may or may not have been applied if the
    /// connection broke mid-request.
    #[error("cannot reach the Tally server at {url}: {reason}")]
    Connect {
        /// The URL tried.
        url: String,
        /// What the network layer said.
        reason: String,
    },
    /// The server did not accept the credentials: none were sent where some are needed, or
    /// they are not valid (bad signature, revoked key, malformed), or the token expired and no
    /// fresh one came from the token source. Nothing was changed. RPC: `401 unauthenticated` or
    /// `401 token_expired`; watch: close 4501.
    #[error("not authenticated: {message} ({code})")]
    Unauthenticated {
        /// `unauthenticated` or `token_expired`.
        code: String,
        /// The server's words (they never contain the credential).
        message: String,
    },
    /// The credentials are valid, but their grants do not allow this action on this counter,
    /// or the amount is over the grant's cap. Nothing was changed. RPC: `403 forbidden`;
    /// watch: close 4503.
    #[error("forbidden: {message}")]
    Forbidden {
        /// The server's words: the counter and the missing action, or the cap.
        message: String,
    },
    /// The principal writes faster than the server allows (`429 rate_limited`). Nothing was
    /// changed; the same request may succeed after `retry_after`.
    #[error("rate limited: {message}")]
    RateLimited {
        /// The server's words.
        message: String,
        /// How long the server asks to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// A write's expected version was not the counter's (`version_conflict`, 409): someone
    /// else wrote first, and nothing was changed. Read it again, decide, and send the write
    /// with [`Write::expecting_version`](crate::Write::expecting_version)`(current_version)`
    /// if it still applies.
    #[error("{message} (version_conflict)")]
    VersionConflict {
        /// The counter's version when the write arrived.
        current_version: u64,
        /// The server's words.
        message: String,
    },
    /// A write would have left the counter outside its bounds (`out_of_bounds`, 409), or a
    /// [`Client::configure`](crate::Client::configure) asked for bounds that leave out the
    /// counter's value: nothing was changed. The message names the bound crossed.
    #[error("{message} (out_of_bounds)")]
    OutOfBounds {
        /// The counter's lower bound (or the asked one, for a configure), if any.
        min: Option<i64>,
        /// The counter's upper bound (or the asked one, for a configure), if any.
        max: Option<i64>,
        /// The server's words.
        message: String,
    },
    /// The server answered with another error: the request was refused and changed nothing.
    #[error("{message} ({code})")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The stable error code, e.g. `invalid_name`, `out_of_range`, `quota_exceeded` (507: a
        /// write that would create a counter at the server's quota) or `store_stopped` (503,
        /// not temporary: the server must be restarted; a write may or may not be stored, so
        /// send it again with its key afterwards).
        code: String,
        /// What was wrong and what is allowed.
        message: String,
        /// Whether the same request may succeed later.
        temporary: bool,
    },
    /// The token source failed to give a credential; nothing was sent.
    #[error("the token source failed: {0}")]
    TokenSource(#[source] TokenSourceError),
    /// The request breaks a protocol rule, found before sending it (e.g. a bad counter name).
    #[error("{}", .0.message)]
    Invalid(tally_proto::ProtocolError),
    /// The server answered something this client does not understand.
    #[error("unexpected answer from {url}: {reason}")]
    Protocol {
        /// The URL called.
        url: String,
        /// What was wrong with the answer.
        reason: String,
    },
}

impl ClientError {
    /// The protocol's error code, when the request was refused (by the server or before sending).
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Rejected { code, .. } | ClientError::Unauthenticated { code, .. } => {
                Some(code)
            }
            ClientError::Forbidden { .. } => Some("forbidden"),
            ClientError::VersionConflict { .. } => Some("version_conflict"),
            ClientError::RateLimited { .. } => Some("rate_limited"),
            ClientError::Invalid(error) => Some(error.code.as_str()),
            _ => None,
        }
    }

    /// Whether the server could not be reached at all.
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Connect { .. })
    }

    /// Whether the server refused for lack of valid credentials or grants (401 or 403, close
    /// 4501 or 4503): sending the same request again with the same credentials will not help.
    pub fn is_auth(&self) -> bool {
        matches!(self, ClientError::Unauthenticated { .. } | ClientError::Forbidden { .. })
    }
}

/// A copy of `error`, for handing one failure to many waiters (every subscription and call of
/// a connection that stopped). `ClientError` is not `Clone` because a token source may fail
/// with any error; the copy of that one keeps its words.
pub(crate) fn duplicate(error: &ClientError) -> ClientError {
    match error {
        ClientError::InvalidUrl { url, reason } => {
            ClientError::InvalidUrl { url: url.clone(), reason: reason.clone() }
        }
        ClientError::InvalidCertificate { reason } => {
            ClientError::InvalidCertificate { reason: reason.clone() }
        }
        ClientError::Connect { url, reason } => {
            ClientError::Connect { url: url.clone(), reason: reason.clone() }
        }
        ClientError::Unauthenticated { code, message } => {
            ClientError::Unauthenticated { code: code.clone(), message: message.clone() }
        }
        ClientError::Forbidden { message } => ClientError::Forbidden { message: message.clone() },
        ClientError::VersionConflict { current_version, message } => ClientError::VersionConflict {
            current_version: *current_version,
            message: message.clone(),
        },
        ClientError::OutOfBounds { min, max, message } => {
            ClientError::OutOfBounds { min: *min, max: *max, message: message.clone() }
        }
        ClientError::RateLimited { message, retry_after } => {
            ClientError::RateLimited { message: message.clone(), retry_after: *retry_after }
        }
        ClientError::Rejected { status, code, message, temporary } => ClientError::Rejected {
            status: *status,
            code: code.clone(),
            message: message.clone(),
            temporary: *temporary,
        },
        ClientError::TokenSource(source) => ClientError::TokenSource(source.to_string().into()),
        ClientError::Invalid(error) => ClientError::Invalid(error.clone()),
        ClientError::Protocol { url, reason } => {
            ClientError::Protocol { url: url.clone(), reason: reason.clone() }
        }
    }
}
