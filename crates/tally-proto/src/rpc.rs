//! The RPC procedures (`POST /rpc/counter.<procedure>` and `POST /rpc/key.<procedure>`): raw request bodies as sent, and the
//! validated [`Request`] the server acts on.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Number;

use crate::error::{ErrorCode, ProtocolError};
use crate::grant::{Action, Grant};
use crate::keys::{KeyCreateBody, KeyNameBody, check_key_name};
use crate::limits::{
    HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX, LIST_PAGE_DEFAULT, LIST_PAGE_MAX, MAX_SAFE_INTEGER,
    NAME_MAX_BYTES,
};
use crate::message::OpKind;
use crate::name::{CounterName, NAME_RULE};

/// The ten counter procedures and the three key procedures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Procedure {
    /// `counter.increment`
    Increment,
    /// `counter.decrement`
    Decrement,
    /// `counter.setValue`
    SetValue,
    /// `counter.reset`
    Reset,
    /// `counter.getValue`
    GetValue,
    /// `counter.getMetadata`
    GetMetadata,
    /// `counter.getHistory`
    GetHistory,
    /// `counter.getPresence`
    GetPresence,
    /// `counter.list`: the counters the principal may read, by name prefix, in pages.
    List,
    /// `counter.delete` (admin on the counter): removes its value, history and idempotency
    /// keys; a later write starts it afresh at version 1, under a new epoch.
    Delete,
    /// `key.create` (admin on every counter)
    KeyCreate,
    /// `key.list` (admin on every counter)
    KeyList,
    /// `key.revoke` (admin on every counter)
    KeyRevoke,
}

impl Procedure {
    /// Every procedure, in documentation order.
    pub const ALL: [Procedure; 13] = [
        Procedure::Increment,
        Procedure::Decrement,
        Procedure::SetValue,
        Procedure::Reset,
        Procedure::GetValue,
        Procedure::GetMetadata,
        Procedure::GetHistory,
        Procedure::GetPresence,
        Procedure::List,
        Procedure::Delete,
        Procedure::KeyCreate,
        Procedure::KeyList,
        Procedure::KeyRevoke,
    ];

    /// The action a principal needs for this procedure: on the named counter, or for the key
    /// procedures `admin` on every counter.
    pub fn action(self) -> Action {
        match self {
            Procedure::Increment => Action::Increment,
            Procedure::Decrement => Action::Decrement,
            Procedure::SetValue => Action::Set,
            Procedure::Reset => Action::Reset,
            Procedure::GetValue
            | Procedure::GetMetadata
            | Procedure::GetHistory
            | Procedure::GetPresence
            | Procedure::List => Action::Read,
            Procedure::Delete => Action::Admin,
            Procedure::KeyCreate | Procedure::KeyList | Procedure::KeyRevoke => Action::Admin,
        }
    }

    /// The path segment after `/rpc/`, e.g. `counter.increment`.
    pub fn path_name(self) -> &'static str {
        match self {
            Procedure::Increment => "counter.increment",
            Procedure::Decrement => "counter.decrement",
            Procedure::SetValue => "counter.setValue",
            Procedure::Reset => "counter.reset",
            Procedure::GetValue => "counter.getValue",
            Procedure::GetMetadata => "counter.getMetadata",
            Procedure::GetHistory => "counter.getHistory",
            Procedure::GetPresence => "counter.getPresence",
            Procedure::List => "counter.list",
            Procedure::Delete => "counter.delete",
            Procedure::KeyCreate => "key.create",
            Procedure::KeyList => "key.list",
            Procedure::KeyRevoke => "key.revoke",
        }
    }

    /// Every error code an RPC to this procedure may be answered with, besides those of the
    /// HTTP layer that any path may get (`method_not_allowed`, `origin_not_allowed`).
    pub fn error_codes(self) -> Vec<ErrorCode> {
        let mut codes = vec![
            ErrorCode::BadJson,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::InvalidField,
            ErrorCode::InvalidName,
            ErrorCode::PayloadTooLarge,
            ErrorCode::RequestTimeout,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
            ErrorCode::Unauthenticated,
            ErrorCode::TokenExpired,
            ErrorCode::Forbidden,
        ];
        if matches!(
            self,
            Procedure::Increment | Procedure::Decrement | Procedure::SetValue | Procedure::Reset
        ) {
            codes.extend([
                ErrorCode::RateLimited,
                ErrorCode::InvalidIdempotencyKey,
                ErrorCode::IdempotencyKeyReused,
                ErrorCode::StoreStopped,
                ErrorCode::QuotaExceeded,
            ]);
        }
        match self {
            Procedure::Increment | Procedure::Decrement => {
                codes.extend([
                    ErrorCode::InvalidAmount,
                    ErrorCode::OutOfRange,
                    ErrorCode::VersionConflict,
                ]);
            }
            Procedure::SetValue => {
                codes.extend([ErrorCode::OutOfRange, ErrorCode::VersionConflict]);
            }
            Procedure::GetHistory | Procedure::List => codes.push(ErrorCode::InvalidLimit),
            Procedure::Reset
            | Procedure::GetValue
            | Procedure::GetMetadata
            | Procedure::GetPresence => {}
            Procedure::KeyCreate => codes.extend([
                ErrorCode::InvalidGrant,
                ErrorCode::KeyExists,
                ErrorCode::StoreStopped,
            ]),
            Procedure::KeyList => {}
            Procedure::Delete => codes.push(ErrorCode::StoreStopped),
            Procedure::KeyRevoke => codes.extend([ErrorCode::UnknownKey, ErrorCode::StoreStopped]),
        }
        codes
    }

    /// Whether the procedure changes a counter (and so takes an idempotency key).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Procedure::Increment | Procedure::Decrement | Procedure::SetValue | Procedure::Reset
        )
    }

    /// Whether the procedure may be sent as a socket `call`: every counter procedure; the key
    /// procedures are RPC-only (the first key may be made only by a local program).
    pub fn callable_over_socket(self) -> bool {
        !matches!(self, Procedure::KeyCreate | Procedure::KeyList | Procedure::KeyRevoke)
    }

    /// The procedure whose path segment is `segment`.
    ///
    /// # Errors
    /// `unknown_procedure`, listing the known ones.
    pub fn from_path(segment: &str) -> Result<Self, ProtocolError> {
        Procedure::ALL.into_iter().find(|p| p.path_name() == segment).ok_or_else(|| {
            let known: Vec<&str> = Procedure::ALL.iter().map(|p| p.path_name()).collect();
            ProtocolError::new(
                ErrorCode::UnknownProcedure,
                format!("unknown procedure {segment:?}; known procedures: {}", known.join(", ")),
            )
        })
    }
}

/// Body of `increment` and `decrement`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AmountBody {
    /// The counter.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::name::name_schema"))]
    pub name: String,
    /// An integer >= 1; 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<i64>", range(min = 1, max = MAX_SAFE_INTEGER))
    )]
    pub amount: Option<Number>,
    /// Apply only if the counter is at this version (0: never written); otherwise
    /// `version_conflict` and nothing is stored.
    #[serde(default, rename = "expectedVersion", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<u64>", range(min = 0, max = MAX_SAFE_INTEGER))
    )]
    pub expected_version: Option<Number>,
}

/// Body of `setValue`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SetValueBody {
    /// The counter.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::name::name_schema"))]
    pub name: String,
    /// The new value, within ±(2^53 − 1).
    #[cfg_attr(
        feature = "schema",
        schemars(with = "i64", range(min = -MAX_SAFE_INTEGER, max = MAX_SAFE_INTEGER))
    )]
    pub value: Number,
    /// Set only if the counter is at this version (0: never written); otherwise
    /// `version_conflict` and nothing is stored: compare-and-set.
    #[serde(default, rename = "expectedVersion", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<u64>", range(min = 0, max = MAX_SAFE_INTEGER))
    )]
    pub expected_version: Option<Number>,
}

/// Body of `reset`, `getValue`, `getMetadata`, `getPresence` and `delete`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NameBody {
    /// The counter.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::name::name_schema"))]
    pub name: String,
}

/// Body of `getHistory`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HistoryBody {
    /// The counter.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::name::name_schema"))]
    pub name: String,
    /// How many entries, 1..=1000; 50 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<u32>", range(min = 1, max = HISTORY_PAGE_MAX)))]
    pub limit: Option<Number>,
    /// Only entries with a version below this one (the `next` of the previous page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<u64>", range(min = 1)))]
    pub before: Option<Number>,
}

/// Body of `counter.list`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ListBody {
    /// Only counters whose name starts with this (0 to 128 counter-name characters); every
    /// counter when absent or empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "prefix_schema"))]
    pub prefix: Option<String>,
    /// Only counters whose name sorts after this one: the `next` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "optional_name_schema"))]
    pub after: Option<String>,
    /// How many counters at most, 1..=1000; 100 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<u32>", range(min = 1, max = LIST_PAGE_MAX)))]
    pub limit: Option<Number>,
}

#[cfg(feature = "schema")]
fn prefix_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["string", "null"],
        "maxLength": NAME_MAX_BYTES,
        "pattern": "^[A-Za-z0-9_.:-]*$",
    })
}

#[cfg(feature = "schema")]
fn optional_name_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = crate::name::name_schema(generator);
    schema.insert("type".into(), serde_json::json!(["string", "null"]));
    schema
}

/// A validated change to a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Add `amount` (>= 1).
    Increment(i64),
    /// Subtract `amount` (>= 1).
    Decrement(i64),
    /// Replace the value.
    SetValue(i64),
    /// Set the value to 0.
    Reset,
}

impl Op {
    /// The operation's kind.
    pub fn kind(self) -> OpKind {
        match self {
            Op::Increment(_) => OpKind::Increment,
            Op::Decrement(_) => OpKind::Decrement,
            Op::SetValue(_) => OpKind::SetValue,
            Op::Reset => OpKind::Reset,
        }
    }

    /// The amount recorded in history (increments and decrements only).
    pub fn amount(self) -> Option<i64> {
        match self {
            Op::Increment(amount) | Op::Decrement(amount) => Some(amount),
            Op::SetValue(_) | Op::Reset => None,
        }
    }

    /// The value after applying this operation to `current`.
    ///
    /// # Errors
    /// `out_of_range` when the result would leave ±(2^53 − 1).
    pub fn apply(self, current: i64) -> Result<i64, ProtocolError> {
        let next = match self {
            Op::Increment(amount) => current.checked_add(amount),
            Op::Decrement(amount) => current.checked_sub(amount),
            Op::SetValue(value) => Some(value),
            Op::Reset => Some(0),
        };
        match next {
            Some(value) if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&value) => Ok(value),
            _ => Err(ProtocolError::new(
                ErrorCode::OutOfRange,
                format!(
                    "{} would take the value from {current} outside the allowed range ±{MAX_SAFE_INTEGER} (2^53 - 1); nothing was stored",
                    self.kind().as_str()
                ),
            )),
        }
    }
}

/// A validated RPC request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// increment, decrement, setValue or reset.
    Apply {
        /// The counter.
        name: CounterName,
        /// What to do to it.
        op: Op,
        /// Only if the counter is at this version (`expectedVersion`; increment, decrement
        /// and setValue).
        expected_version: Option<u64>,
    },
    /// getValue.
    GetValue {
        /// The counter.
        name: CounterName,
    },
    /// getMetadata.
    GetMetadata {
        /// The counter.
        name: CounterName,
    },
    /// getPresence.
    GetPresence {
        /// The counter.
        name: CounterName,
    },
    /// getHistory.
    GetHistory {
        /// The counter.
        name: CounterName,
        /// How many entries (1..=1000).
        limit: u32,
        /// Only versions below this one.
        before: Option<u64>,
    },
    /// counter.list.
    List {
        /// Only names starting with this (empty: every name); checked against the name rule.
        prefix: String,
        /// Only names after this one.
        after: Option<CounterName>,
        /// How many counters at most (1..=1000).
        limit: u32,
    },
    /// counter.delete.
    Delete {
        /// The counter.
        name: CounterName,
    },
    /// key.create.
    KeyCreate {
        /// The key's name (checked against the key-name rule).
        name: String,
        /// Its grants, parsed.
        grants: Vec<Grant>,
    },
    /// key.list.
    KeyList,
    /// key.revoke.
    KeyRevoke {
        /// The key's name (checked against the key-name rule).
        name: String,
    },
}

impl Request {
    /// The counter the request is about, if it is about one.
    pub fn counter(&self) -> Option<&CounterName> {
        match self {
            Request::Apply { name, .. }
            | Request::GetValue { name }
            | Request::GetMetadata { name }
            | Request::GetPresence { name }
            | Request::GetHistory { name, .. }
            | Request::Delete { name } => Some(name),
            Request::List { .. }
            | Request::KeyCreate { .. }
            | Request::KeyList
            | Request::KeyRevoke { .. } => None,
        }
    }

    /// Reads and validates the JSON `body` of `procedure`.
    ///
    /// # Errors
    /// `bad_json` for text that is not JSON; `invalid_field` for a missing, unknown or wrongly
    /// typed field; `invalid_name`, `invalid_amount`, `invalid_limit` and `out_of_range` for
    /// values outside what is allowed. Each message says what was wrong and what is allowed.
    pub fn parse(procedure: Procedure, body: &[u8]) -> Result<Self, ProtocolError> {
        Ok(match procedure {
            Procedure::Increment | Procedure::Decrement => {
                let raw: AmountBody = from_json(body)?;
                let name = CounterName::parse(&raw.name)?;
                let amount = match &raw.amount {
                    None => 1,
                    Some(number) => amount(number)?,
                };
                let op = if procedure == Procedure::Increment {
                    Op::Increment(amount)
                } else {
                    Op::Decrement(amount)
                };
                let expected_version = raw.expected_version.as_ref().map(version).transpose()?;
                Request::Apply { name, op, expected_version }
            }
            Procedure::SetValue => {
                let raw: SetValueBody = from_json(body)?;
                let name = CounterName::parse(&raw.name)?;
                let value = integer("value", &raw.value, ErrorCode::InvalidField)?;
                let expected_version = raw.expected_version.as_ref().map(version).transpose()?;
                Request::Apply { name, op: Op::SetValue(value), expected_version }
            }
            Procedure::Reset => {
                let raw: NameBody = from_json(body)?;
                let name = CounterName::parse(&raw.name)?;
                Request::Apply { name, op: Op::Reset, expected_version: None }
            }
            Procedure::GetValue => {
                let raw: NameBody = from_json(body)?;
                Request::GetValue { name: CounterName::parse(&raw.name)? }
            }
            Procedure::GetMetadata => {
                let raw: NameBody = from_json(body)?;
                Request::GetMetadata { name: CounterName::parse(&raw.name)? }
            }
            Procedure::GetPresence => {
                let raw: NameBody = from_json(body)?;
                Request::GetPresence { name: CounterName::parse(&raw.name)? }
            }
            Procedure::GetHistory => {
                let raw: HistoryBody = from_json(body)?;
                let name = CounterName::parse(&raw.name)?;
                let limit = match &raw.limit {
                    None => HISTORY_PAGE_DEFAULT,
                    Some(number) => page_limit(number, HISTORY_PAGE_MAX)?,
                };
                let before = match &raw.before {
                    None => None,
                    Some(number) => Some(before(number)?),
                };
                Request::GetHistory { name, limit, before }
            }
            Procedure::List => {
                let raw = list_body(from_json(body)?)?;
                let prefix = list_prefix(raw.prefix.unwrap_or_default())?;
                let after = match &raw.after {
                    None => None,
                    Some(after) => Some(CounterName::parse(after).map_err(|error| {
                        ProtocolError::new(
                            error.code,
                            format!("after must be a counter name (the `next` of the previous page): {}", error.message),
                        )
                    })?),
                };
                let limit = match &raw.limit {
                    None => LIST_PAGE_DEFAULT,
                    Some(number) => page_limit(number, LIST_PAGE_MAX)?,
                };
                Request::List { prefix, after, limit }
            }
            Procedure::Delete => {
                let raw: NameBody = from_json(body)?;
                Request::Delete { name: CounterName::parse(&raw.name)? }
            }
            Procedure::KeyCreate => {
                let raw: KeyCreateBody = from_json(body)?;
                check_key_name(&raw.name)?;
                Request::KeyCreate { name: raw.name, grants: Grant::parse_all(&raw.grants)? }
            }
            Procedure::KeyList => {
                // A map, not `EmptyBody`: serde would take `[]` for an empty struct too.
                let raw: serde_json::Map<String, serde_json::Value> = from_json(body)?;
                if let Some(field) = raw.keys().next() {
                    return Err(ProtocolError::new(
                        ErrorCode::InvalidField,
                        format!("key.list takes an empty object; unknown field {field:?}"),
                    ));
                }
                Request::KeyList
            }
            Procedure::KeyRevoke => {
                let raw: KeyNameBody = from_json(body)?;
                check_key_name(&raw.name)?;
                Request::KeyRevoke { name: raw.name }
            }
        })
    }
}

fn from_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(body).map_err(|error| {
        use serde_json::error::Category;
        match error.classify() {
            Category::Data => ProtocolError::new(
                ErrorCode::InvalidField,
                format!("invalid request body: {error}"),
            ),
            Category::Syntax | Category::Eof | Category::Io => ProtocolError::new(
                ErrorCode::BadJson,
                format!("request body is not valid JSON: {error}"),
            ),
        }
    })
}

/// Reads a JSON number as a whole number within ±(2^53 − 1). An integral float such as `5.0`
/// is accepted, since some JSON encoders write whole numbers that way.
fn integer(field: &str, number: &Number, not_integer: ErrorCode) -> Result<i64, ProtocolError> {
    let out_of_range = || {
        ProtocolError::new(
            ErrorCode::OutOfRange,
            format!(
                "{field} {number} is outside the allowed range ±{MAX_SAFE_INTEGER} (2^53 - 1); nothing was stored"
            ),
        )
    };
    let whole = if let Some(whole) = number.as_i64() {
        whole
    } else if number.as_u64().is_some() {
        return Err(out_of_range());
    } else {
        let float = number.as_f64().unwrap_or(f64::NAN);
        if !float.is_finite() || float.fract() != 0.0 {
            return Err(ProtocolError::new(
                not_integer,
                format!("{field} {number} is not a whole number"),
            ));
        }
        if float.abs() > MAX_SAFE_INTEGER as f64 {
            return Err(out_of_range());
        }
        // In range and whole, so the cast is exact.
        float as i64
    };
    if !(-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&whole) {
        return Err(out_of_range());
    }
    Ok(whole)
}

fn amount(number: &Number) -> Result<i64, ProtocolError> {
    let rule = "amount must be a whole number >= 1";
    match integer("amount", number, ErrorCode::InvalidAmount) {
        Ok(amount) if amount >= 1 => Ok(amount),
        Ok(amount) => {
            Err(ProtocolError::new(ErrorCode::InvalidAmount, format!("amount is {amount}; {rule}")))
        }
        Err(error) if error.code == ErrorCode::OutOfRange => Err(error),
        Err(error) => {
            Err(ProtocolError::new(ErrorCode::InvalidAmount, format!("{}; {rule}", error.message)))
        }
    }
}

fn page_limit(number: &Number, max: u32) -> Result<u32, ProtocolError> {
    let invalid = || {
        ProtocolError::new(
            ErrorCode::InvalidLimit,
            format!("limit is {number}; allowed: a whole number from 1 to {max}"),
        )
    };
    let whole = integer("limit", number, ErrorCode::InvalidLimit).map_err(|_| invalid())?;
    u32::try_from(whole).ok().filter(|limit| (1..=max).contains(limit)).ok_or_else(invalid)
}

/// `counter.list`'s body, read field by field so that each wrong field is named with what it
/// allows (and an array is not taken for an object, as serde would for a struct of options).
fn list_body(value: serde_json::Value) -> Result<ListBody, ProtocolError> {
    use serde_json::Value;
    let invalid = |message: String| ProtocolError::new(ErrorCode::InvalidField, message);
    let Value::Object(fields) = value else {
        return Err(invalid(
            "counter.list takes a JSON object with the optional fields prefix, after and limit"
                .into(),
        ));
    };
    let mut body = ListBody::default();
    for (field, value) in fields {
        match (field.as_str(), value) {
            (_, Value::Null) if matches!(field.as_str(), "prefix" | "after" | "limit") => {}
            ("prefix", Value::String(text)) => body.prefix = Some(text),
            ("after", Value::String(text)) => body.after = Some(text),
            ("limit", Value::Number(number)) => body.limit = Some(number),
            ("prefix" | "after", other) => {
                return Err(invalid(format!("{field} is {other}; allowed: a string")));
            }
            ("limit", other) => {
                return Err(invalid(format!(
                    "limit is {other}; allowed: a whole number from 1 to {LIST_PAGE_MAX}"
                )));
            }
            _ => {
                return Err(invalid(format!(
                    "unknown field {field:?}; counter.list takes prefix, after and limit"
                )));
            }
        }
    }
    Ok(body)
}

/// A list's name prefix: what may begin a counter name, or nothing.
fn list_prefix(prefix: String) -> Result<String, ProtocolError> {
    let invalid = |what: String| {
        ProtocolError::new(
            ErrorCode::InvalidField,
            format!("prefix {what}; allowed: empty (every counter) or {NAME_RULE}"),
        )
    };
    if prefix.len() > NAME_MAX_BYTES {
        return Err(invalid(format!("is {} bytes long", prefix.len())));
    }
    if let Some(bad) = prefix.chars().find(|c| !crate::name::is_name_char(*c)) {
        return Err(invalid(format!("{prefix:?} contains {bad:?}")));
    }
    Ok(prefix)
}

/// An `expectedVersion`: a whole number from 0 to 2^53 - 1.
fn version(number: &Number) -> Result<u64, ProtocolError> {
    let invalid = || {
        ProtocolError::new(
            ErrorCode::InvalidField,
            format!(
                "expectedVersion is {number}; allowed: a version, a whole number >= 0 (0: a counter never written)"
            ),
        )
    };
    let whole =
        integer("expectedVersion", number, ErrorCode::InvalidField).map_err(|_| invalid())?;
    u64::try_from(whole).map_err(|_| invalid())
}

fn before(number: &Number) -> Result<u64, ProtocolError> {
    let invalid = || {
        ProtocolError::new(
            ErrorCode::InvalidField,
            format!(
                "before is {number}; allowed: a version, a whole number >= 1 (the `next` of the previous page)"
            ),
        )
    };
    let whole = integer("before", number, ErrorCode::InvalidField).map_err(|_| invalid())?;
    u64::try_from(whole).ok().filter(|before| *before >= 1).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(procedure: &str, body: &str, expect: &Result<Request, ErrorCode>) {
        let procedure = Procedure::from_path(procedure).unwrap();
        let got = Request::parse(procedure, body.as_bytes()).map_err(|error| error.code);
        assert_eq!(&got, expect, "{body}");
    }

    fn name(text: &str) -> CounterName {
        CounterName::parse(text).unwrap()
    }

    #[test]
    fn valid_requests() {
        let a = || name("a");
        check(
            "counter.increment",
            r#"{"name":"a"}"#,
            &Ok(Request::Apply { name: a(), op: Op::Increment(1), expected_version: None }),
        );
        check(
            "counter.increment",
            r#"{"name":"a","amount":5.0}"#,
            &Ok(Request::Apply { name: a(), op: Op::Increment(5), expected_version: None }),
        );
        check(
            "counter.decrement",
            r#"{"name":"a","amount":null}"#,
            &Ok(Request::Apply { name: a(), op: Op::Decrement(1), expected_version: None }),
        );
        check(
            "counter.setValue",
            r#"{"name":"a","value":-9007199254740991}"#,
            &Ok(Request::Apply {
                name: a(),
                op: Op::SetValue(-MAX_SAFE_INTEGER),
                expected_version: None,
            }),
        );
        check(
            "counter.reset",
            r#"{"name":"a"}"#,
            &Ok(Request::Apply { name: a(), op: Op::Reset, expected_version: None }),
        );
        check(
            "counter.setValue",
            r#"{"name":"a","value":5,"expectedVersion":3}"#,
            &Ok(Request::Apply { name: a(), op: Op::SetValue(5), expected_version: Some(3) }),
        );
        check(
            "counter.increment",
            r#"{"name":"a","expectedVersion":0}"#,
            &Ok(Request::Apply { name: a(), op: Op::Increment(1), expected_version: Some(0) }),
        );
        for bad in ["-1", "1.5", "\"3\"", "9007199254740992"] {
            let body = format!(r#"{{"name":"a","value":5,"expectedVersion":{bad}}}"#);
            check("counter.setValue", &body, &Err(ErrorCode::InvalidField));
        }
        // reset takes no expectedVersion (its body is the name alone).
        check(
            "counter.reset",
            r#"{"name":"a","expectedVersion":1}"#,
            &Err(ErrorCode::InvalidField),
        );
        check(
            "counter.getHistory",
            r#"{"name":"a"}"#,
            &Ok(Request::GetHistory { name: a(), limit: 50, before: None }),
        );
        check(
            "counter.getHistory",
            r#"{"name":"a","limit":1000,"before":7}"#,
            &Ok(Request::GetHistory { name: a(), limit: 1000, before: Some(7) }),
        );
        check(
            "counter.list",
            r#"{}"#,
            &Ok(Request::List { prefix: String::new(), after: None, limit: 100 }),
        );
        check(
            "counter.list",
            r#"{"prefix":"likes:","after":"likes:9","limit":1000}"#,
            &Ok(Request::List {
                prefix: "likes:".into(),
                after: Some(name("likes:9")),
                limit: 1000,
            }),
        );
        check(
            "counter.list",
            r#"{"prefix":null,"after":null,"limit":null}"#,
            &Ok(Request::List { prefix: String::new(), after: None, limit: 100 }),
        );
    }

    #[test]
    fn invalid_requests() {
        use ErrorCode::*;
        check("counter.increment", r#"{"name":"a""#, &Err(BadJson));
        check("counter.increment", r#"{}"#, &Err(InvalidField));
        check("counter.increment", r#"{"name":"a","amout":2}"#, &Err(InvalidField));
        check("counter.increment", r#"{"name":5}"#, &Err(InvalidField));
        check("counter.increment", r#"{"name":"a","amount":"2"}"#, &Err(InvalidField));
        check("counter.increment", r#"{"name":""}"#, &Err(InvalidName));
        check("counter.increment", r#"{"name":"a","amount":0}"#, &Err(InvalidAmount));
        check("counter.increment", r#"{"name":"a","amount":-3}"#, &Err(InvalidAmount));
        check("counter.increment", r#"{"name":"a","amount":1.5}"#, &Err(InvalidAmount));
        check("counter.increment", r#"{"name":"a","amount":9007199254740992}"#, &Err(OutOfRange));
        check("counter.increment", r#"{"name":"a","amount":1e300}"#, &Err(OutOfRange));
        check(
            "counter.increment",
            r#"{"name":"a","amount":18446744073709551615}"#,
            &Err(OutOfRange),
        );
        check("counter.setValue", r#"{"name":"a"}"#, &Err(InvalidField));
        check("counter.setValue", r#"{"name":"a","value":9007199254740992}"#, &Err(OutOfRange));
        check("counter.setValue", r#"{"name":"a","value":-9223372036854775808}"#, &Err(OutOfRange));
        check("counter.getHistory", r#"{"name":"a","limit":0}"#, &Err(InvalidLimit));
        check("counter.getHistory", r#"{"name":"a","limit":1001}"#, &Err(InvalidLimit));
        check("counter.getHistory", r#"{"name":"a","before":0}"#, &Err(InvalidField));
        check("counter.list", r#"{"limit":0}"#, &Err(InvalidLimit));
        check("counter.list", r#"{"limit":1001}"#, &Err(InvalidLimit));
        check("counter.list", r#"{"limit":"5"}"#, &Err(InvalidField));
        check("counter.list", r#"{"prefix":5}"#, &Err(InvalidField));
        check("counter.list", r#"{"prefix":"a b"}"#, &Err(InvalidField));
        check(
            "counter.list",
            &format!(r#"{{"prefix":"{}"}}"#, "x".repeat(129)),
            &Err(InvalidField),
        );
        check("counter.list", r#"{"after":""}"#, &Err(InvalidName));
        check("counter.list", r#"{"after":"a/b"}"#, &Err(InvalidName));
        check("counter.list", r#"{"perfix":"a"}"#, &Err(InvalidField));
        check("counter.list", r#"[]"#, &Err(InvalidField));
    }

    #[test]
    fn results_must_stay_safe() {
        assert_eq!(Op::Increment(1).apply(MAX_SAFE_INTEGER - 1), Ok(MAX_SAFE_INTEGER));
        assert_eq!(
            Op::Increment(1).apply(MAX_SAFE_INTEGER).unwrap_err().code,
            ErrorCode::OutOfRange
        );
        assert_eq!(
            Op::Decrement(2).apply(-MAX_SAFE_INTEGER + 1).unwrap_err().code,
            ErrorCode::OutOfRange
        );
        assert_eq!(Op::Reset.apply(12), Ok(0));
    }

    #[test]
    fn unknown_procedure_lists_the_known_ones() {
        let error = Procedure::from_path("counter.explode").unwrap_err();
        assert_eq!(error.code, ErrorCode::UnknownProcedure);
        assert!(error.message.contains("counter.getHistory"));
    }
}
