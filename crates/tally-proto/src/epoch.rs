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

    /// The epoch whose 64 bits are `bits`: 16 lowercase hexadecimal digits, as every epoch.
    pub fn from_bits(bits: u64) -> Self {
        Self(format!("{bits:016x}").into())
    }

    /// The epoch's 64 bits, the inverse of [`Epoch::from_bits`]: a server keeps a counter's
    /// epoch in its state as a number, which copies without an allocation.
    pub fn bits(&self) -> u64 {
        // Parsed or made as 16 hexadecimal digits, so the conversion cannot fail.
        u64::from_str_radix(&self.0, 16).unwrap_or_default()
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
    fn an_epoch_and_its_bits_convert_both_ways() {
        let epoch = Epoch::parse("00000000000000ff").unwrap();
        assert_eq!(epoch.bits(), 255);
        assert_eq!(Epoch::from_bits(255), epoch);
        assert_eq!(Epoch::from_bits(u64::MAX).as_str(), "ffffffffffffffff");
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
