//! The epoch of a database: which history a version belongs to.
//!
//! A version alone names a point in one counter's history only as long as the history is the
//! same one. A database replaced, or restored from a backup, can hold the same counter at the
//! same versions with other operations behind them; a client resuming there with `since`
//! would be sent another history's updates as if they followed its own. Every database has a
//! random epoch made with its schema (Centrifugo's offset + epoch), snapshots and `resumed`
//! carry it, and a resume that names another epoch is answered with a `resync` snapshot.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ErrorCode, ProtocolError};

/// How many characters an epoch has: 16 lowercase hexadecimal digits (64 random bits).
pub const EPOCH_LEN: usize = 16;

/// A database's epoch: 16 lowercase hexadecimal digits.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Box<str>);

impl Epoch {
    /// Checks `text` is an epoch.
    ///
    /// # Errors
    /// `invalid_field` saying what was found and what is allowed.
    pub fn parse(text: &str) -> Result<Self, ProtocolError> {
        let well_formed = text.len() == EPOCH_LEN
            && text.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        if well_formed {
            Ok(Self(text.into()))
        } else {
            Err(ProtocolError::new(
                ErrorCode::InvalidField,
                format!(
                    "epoch is {text:?}; allowed: {EPOCH_LEN} lowercase hexadecimal digits, as a snapshot or resumed gave it"
                ),
            ))
        }
    }

    /// The epoch as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({})", self.0)
    }
}

impl Serialize for Epoch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Epoch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Epoch::parse(&text).map_err(|error| serde::de::Error::custom(error.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_lowercase_hex_digits_are_an_epoch() {
        let epoch = Epoch::parse("0123456789abcdef").unwrap();
        assert_eq!(epoch.as_str(), "0123456789abcdef");
        assert_eq!(serde_json::to_string(&epoch).unwrap(), r#""0123456789abcdef""#);
        assert_eq!(serde_json::from_str::<Epoch>(r#""0123456789abcdef""#).unwrap(), epoch);
    }

    #[test]
    fn anything_else_is_refused_in_words() {
        for text in [
            "",
            "0123456789abcde",
            "0123456789abcdef0",
            "0123456789ABCDEF",
            "0123456789abcdeg",
            "é123456789abcde",
        ] {
            let error = Epoch::parse(text).expect_err(text);
            assert_eq!(error.code, ErrorCode::InvalidField, "{text}");
            assert!(
                error.message.contains("16 lowercase hexadecimal digits"),
                "{text}: {}",
                error.message
            );
        }
        assert!(serde_json::from_str::<Epoch>(r#""XYZ""#).is_err());
    }
}
