//! The API-key RPCs (`key.create`, `key.list`, `key.revoke`): their bodies and answers, and the
//! form of a key.
//!
//! A key is `tally_` followed by a 12-character id and a 43-character secret (base64url of 32
//! random bytes). The server keeps only the id and a SHA-256 hash of the secret, and compares
//! hashes in constant time.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, ProtocolError};

/// What every API key starts with; it tells a key from a JWT.
pub const KEY_PREFIX: &str = "tally_";

/// What a key's name may contain, worded for error messages.
pub const KEY_NAME_RULE: &str = "1 to 64 characters from A-Z a-z 0-9 _ . -";

/// The longest key name, in bytes.
pub const KEY_NAME_MAX_BYTES: usize = 64;

/// The characters of a key name as a regular expression (the length is checked apart).
pub const KEY_NAME_PATTERN: &str = "^[A-Za-z0-9_.-]+$";

/// The JSON schema of a key name: the rule [`check_key_name`] enforces.
#[cfg(feature = "schema")]
fn key_name_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": KEY_NAME_MAX_BYTES,
        "pattern": KEY_NAME_PATTERN,
    })
}

/// Body of `key.create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct KeyCreateBody {
    /// The key's name: who or what uses it (it is what history's `by` shows, as `key:NAME`).
    #[cfg_attr(feature = "schema", schemars(schema_with = "key_name_schema"))]
    pub name: String,
    /// The key's grants, each `PATTERN=ACTION[<=CAP],...` (see docs/SECURITY.md).
    pub grants: Vec<String>,
}

/// Body of `key.revoke`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct KeyNameBody {
    /// The key's name.
    #[cfg_attr(feature = "schema", schemars(schema_with = "key_name_schema"))]
    pub name: String,
}

/// Body of `key.list`: an empty object.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EmptyBody {}

/// A key as listed: everything but the secret, which is never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    /// The key's name.
    pub name: String,
    /// Its grants.
    pub grants: Vec<String>,
    /// When it was created (RFC 3339 UTC with milliseconds).
    pub created_at: String,
    /// When it was revoked; absent while it works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

/// The answer to `key.create`: the key itself, shown this once. Its `Debug` leaves the key out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct CreatedKey {
    /// The key: send it as `Authorization: Bearer KEY`. It cannot be shown again.
    pub key: String,
    /// The key as listed.
    #[serde(flatten)]
    pub info: KeyInfo,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey").field("key", &"<redacted>").field("info", &self.info).finish()
    }
}

/// The answer to `key.list`: every key, revoked ones too, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct KeyList {
    /// The keys.
    pub keys: Vec<KeyInfo>,
}

/// Checks a key's name against [`KEY_NAME_RULE`].
///
/// # Errors
/// `invalid_field`, saying what was wrong and what is allowed.
pub fn check_key_name(name: &str) -> Result<(), ProtocolError> {
    let ok = (1..=KEY_NAME_MAX_BYTES).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ProtocolError::new(
            ErrorCode::InvalidField,
            format!("key name {name:?} is not allowed; allowed: {KEY_NAME_RULE}"),
        ))
    }
}
