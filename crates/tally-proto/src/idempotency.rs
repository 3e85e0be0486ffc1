//! Idempotency keys: a client's name for one write, so that sending the write again (after a
//! timeout, a lost connection, a server restart) applies it at most once.
//!
//! A key is sent as the `Idempotency-Key` header of an RPC or the `idempotencyKey` field of a
//! socket `call`. The server keeps it with the write, per principal and counter, for the
//! idempotency window (see docs/PROTOCOL.md).

use std::fmt;
use std::sync::Arc;

use crate::error::{ErrorCode, ProtocolError};

/// The longest key, in bytes.
pub const IDEMPOTENCY_KEY_MAX_BYTES: usize = 128;

/// The key rule, worded for error messages and documentation.
pub const IDEMPOTENCY_KEY_RULE: &str =
    "1 to 128 printable ASCII characters (letters, digits and punctuation, no spaces)";

/// A checked idempotency key. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(Arc<str>);

impl IdempotencyKey {
    /// Checks `text` against the key rule.
    ///
    /// # Errors
    /// `invalid_idempotency_key`, saying what is allowed.
    pub fn parse(text: &str) -> Result<Self, ProtocolError> {
        let printable = text.bytes().all(|byte| byte.is_ascii_graphic());
        if text.is_empty() || text.len() > IDEMPOTENCY_KEY_MAX_BYTES || !printable {
            let shown: String = text.chars().take(40).collect();
            return Err(ProtocolError::new(
                ErrorCode::InvalidIdempotencyKey,
                format!(
                    "idempotency key {shown:?} is not allowed; allowed: {IDEMPOTENCY_KEY_RULE}"
                ),
            ));
        }
        Ok(Self(Arc::from(text)))
    }

    /// The key as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_rule() {
        assert_eq!(IdempotencyKey::parse("a1b2-c3:d4").unwrap().as_str(), "a1b2-c3:d4");
        assert!(IdempotencyKey::parse(&"k".repeat(128)).is_ok());
        for bad in ["", " ", "a b", "é", "tab\t", &"k".repeat(129)] {
            let error = IdempotencyKey::parse(bad).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidIdempotencyKey, "{bad:?}");
            assert!(error.message.contains("printable ASCII"), "{}", error.message);
        }
    }
}
