//! Counter names: 1 to 128 bytes of `[A-Za-z0-9_.:-]`.

use std::fmt;

use crate::error::{ErrorCode, ProtocolError};
use crate::limits::NAME_MAX_BYTES;

/// What a counter name may contain, worded for error messages.
pub const NAME_RULE: &str = "1 to 128 characters from A-Z a-z 0-9 _ . : -";

/// The characters of a name as a regular expression (the length is checked apart).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9_.:-]+$";

/// The JSON schema of a counter name, for the OpenAPI description: the rule
/// [`CounterName::parse`] enforces (length in bytes and [`NAME_PATTERN`]).
#[cfg(feature = "schema")]
pub(crate) fn name_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": NAME_MAX_BYTES,
        "pattern": NAME_PATTERN,
    })
}

/// A validated counter name. Holding one proves the name is well formed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterName(String);

impl CounterName {
    /// Checks `name` against the naming rule.
    ///
    /// # Errors
    /// `invalid_name` when the name is empty, longer than 128 bytes, or has a character outside
    /// `[A-Za-z0-9_.:-]`; the message says which and what is allowed.
    pub fn parse(name: &str) -> Result<Self, ProtocolError> {
        if name.is_empty() {
            return Err(invalid(format!("counter name is empty; allowed: {NAME_RULE}")));
        }
        if name.len() > NAME_MAX_BYTES {
            return Err(invalid(format!(
                "counter name is {} bytes long; allowed: {NAME_RULE}",
                name.len()
            )));
        }
        if let Some(bad) = name.chars().find(|c| !is_name_char(*c)) {
            return Err(invalid(format!(
                "counter name {name:?} contains {bad:?}; allowed: {NAME_RULE}"
            )));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub(crate) fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

fn invalid(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::InvalidName, message)
}

impl fmt::Display for CounterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for CounterName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet_up_to_128_bytes() {
        for name in ["a", "likes:post-42", "A.b_c:D-9", &"x".repeat(128)] {
            assert_eq!(CounterName::parse(name).map(|n| n.to_string()), Ok(name.to_owned()));
        }
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters_with_the_rule() {
        for (name, says) in [
            ("", "is empty"),
            (&"x".repeat(129), "129 bytes"),
            ("a b", "' '"),
            ("caf\u{e9}", "'\u{e9}'"),
            ("a/b", "'/'"),
        ] {
            let error = CounterName::parse(name).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidName);
            assert!(error.message.contains(says), "{:?} should mention {says}", error.message);
            assert!(error.message.contains(NAME_RULE), "{:?}", error.message);
        }
    }
}
