//! What can go wrong when talking to a Tally server.

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
    /// The server could not be reached (not running, wrong address, network down, timeout).
    /// The request may or may not have been applied if the connection broke mid-request.
    #[error("cannot reach the Tally server at {url}: {reason}")]
    Connect {
        /// The URL tried.
        url: String,
        /// What the network layer said.
        reason: String,
    },
    /// The server answered with an error: the request was refused and changed nothing.
    #[error("{message} ({code})")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The stable error code, e.g. `invalid_name` or `out_of_range`.
        code: String,
        /// What was wrong and what is allowed.
        message: String,
        /// Whether the same request may succeed later.
        temporary: bool,
    },
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
            ClientError::Rejected { code, .. } => Some(code),
            ClientError::Invalid(error) => Some(error.code.as_str()),
            _ => None,
        }
    }

    /// Whether the server could not be reached at all.
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Connect { .. })
    }
}
