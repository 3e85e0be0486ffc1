//! What travels as JSON: the answers to RPCs, and the WebSocket messages in both directions.
//!
//! Server to client: [`Update`] (type `increment`, `decrement`, `setValue` or `reset`),
//! [`Snapshot`], [`Resumed`], [`Pong`] and [`WsError`], together [`ServerMessage`].
//! Client to server: [`ClientMessage`].

use serde::{Deserialize, Serialize};

use crate::bounds::Bounds;
use crate::epoch::Epoch;
use crate::error::{ErrorCode, ProtocolError, duration_ms};
use crate::grant::Action;

/// The four operations that change a counter, as named on the wire.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OpKind {
    /// Add an amount.
    Increment,
    /// Subtract an amount.
    Decrement,
    /// Replace the value.
    SetValue,
    /// Set the value to 0.
    Reset,
}

impl OpKind {
    /// Every kind, in documentation order.
    pub const ALL: [OpKind; 4] =
        [OpKind::Increment, OpKind::Decrement, OpKind::SetValue, OpKind::Reset];

    /// The name on the wire (also the `type` of an [`Update`]).
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Increment => "increment",
            OpKind::Decrement => "decrement",
            OpKind::SetValue => "setValue",
            OpKind::Reset => "reset",
        }
    }

    /// The kind named `name` on the wire.
    pub fn from_name(name: &str) -> Option<Self> {
        OpKind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// A counter's metadata, as in the seed. A counter never written has `id`, `createdAt` and
/// `updatedAt` null, value 0 and operation count 0.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// The storage id, assigned on the first write.
    pub id: Option<i64>,
    /// The counter's name.
    pub name: String,
    /// The current value.
    pub value: i64,
    /// When the first write was committed (RFC 3339 UTC with milliseconds).
    pub created_at: Option<String>,
    /// When the latest write was committed.
    pub updated_at: Option<String>,
    /// How many operations were applied; equal to the counter's version.
    pub operation_count: u64,
    /// How many operations were committed in the last minute (all nodes' together; at most
    /// 10 000 are counted): only in `getMetadata`'s answer, never in updates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_last_minute: Option<u64>,
    /// The counter's bounds (`counter.configure`; `min` and `max` null and `clamp` false when
    /// it has none): only in the answers of `getMetadata` and `configure`, never in updates,
    /// whose bytes are built from the history entry alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<Bounds>,
}

/// One applied operation, answered to its writer and broadcast to every watcher, byte for byte
/// the same JSON.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Update {
    /// Which operation.
    #[serde(rename = "type")]
    pub kind: OpKind,
    /// The value after it.
    pub value: i64,
    /// The value before it.
    pub previous_value: i64,
    /// The counter's version after it: 1 for the first operation, then 2, 3, …
    pub version: u64,
    /// The counter's metadata after it.
    pub metadata: Metadata,
    /// When it was committed (RFC 3339 UTC with milliseconds).
    pub timestamp: String,
    /// True when the write would have crossed one of the counter's bounds and its clamp mode
    /// stopped it at the bound: `value` is the bound, not what the operation asked (absent
    /// otherwise).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clamped: bool,
    /// Who made it (a token's subject, `key:NAME`, or `anonymous`); sent only to principals
    /// with `admin` on the counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The counter's state when a watch starts (or must start over, with `resync`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// The current value.
    pub value: i64,
    /// The current version (0 for a counter never written).
    pub version: u64,
    /// The current metadata.
    pub metadata: Metadata,
    /// When the snapshot was taken.
    pub timestamp: String,
    /// True when the client asked to resume with `since` but the history could not fill the gap
    /// (too old, or ahead of the counter): replace local state with this one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resync: bool,
    /// What the socket's principal may do to this counter, so that a page can disable what
    /// would be refused (for example `["read", "increment"]`).
    #[serde(default)]
    pub can: Vec<Action>,
    /// The database's epoch: a resume names it beside `since`, so that a resume against
    /// another database (replaced, or restored from a backup) is answered with a resync.
    /// `None` only from a server older than epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
}

/// Sent first on a resumed watch (`?since=V`): the updates after `since` up to `version`
/// follow, then live ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resumed {
    /// The version the client asked to resume after.
    pub since: u64,
    /// The counter's version when the replay was taken; updates `since + 1..=version` follow.
    pub version: u64,
    /// The database's epoch (see [`Snapshot::epoch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
}

/// The answer to a client's `{"type": "ping"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The server's time.
    pub timestamp: String,
}

/// A refused WebSocket message; the socket stays open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WsError {
    /// The stable code (see [`ErrorCode`]).
    pub code: String,
    /// What was wrong and what is allowed.
    pub message: String,
    /// Whether sending the same message later may succeed.
    #[serde(default)]
    pub temporary: bool,
    /// How many milliseconds to wait before trying again, when the server knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The counter's version, for `version_conflict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// The counter's lower bound, for `out_of_bounds` (absent: it has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    /// The counter's upper bound, for `out_of_bounds` (absent: it has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
}

impl From<&ProtocolError> for WsError {
    fn from(error: &ProtocolError) -> Self {
        WsError {
            code: error.code.as_str().to_owned(),
            message: error.message.clone(),
            temporary: error.code.is_temporary(),
            retry_after_ms: error.retry_after.map(duration_ms),
            current_version: error.current_version,
            min: error.bound_fields().0,
            max: error.bound_fields().1,
        }
    }
}

/// The answer to a client's `auth` message: the socket now acts as this principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authenticated {
    /// Who the socket acts as: a token's subject, `key:NAME`, or `anonymous`.
    pub principal: String,
    /// When the token expires (RFC 3339 UTC); absent for API keys, which do not. The socket is
    /// closed with 4502 then, unless a fresh `auth` arrives first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// What the principal may now do to the socket's counter.
    pub can: Vec<Action>,
}

/// Any message the server sends over a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// A counter operation (`type` is the operation's name).
    Update(Update),
    /// `type: "snapshot"`.
    Snapshot(Snapshot),
    /// `type: "resumed"`.
    Resumed(Resumed),
    /// `type: "pong"`.
    Pong(Pong),
    /// `type: "error"`.
    Error(WsError),
    /// `type: "authenticated"`.
    Authenticated(Authenticated),
}

/// Adds `"type": tag` in front of a message struct's own fields.
#[derive(Serialize)]
struct Tagged<'a, T> {
    #[serde(rename = "type")]
    tag: &'static str,
    #[serde(flatten)]
    inner: &'a T,
}

impl ServerMessage {
    /// The message as JSON text.
    pub fn to_json(&self) -> String {
        let result = match self {
            ServerMessage::Update(update) => serde_json::to_string(update),
            ServerMessage::Snapshot(inner) => {
                serde_json::to_string(&Tagged { tag: "snapshot", inner })
            }
            ServerMessage::Resumed(inner) => {
                serde_json::to_string(&Tagged { tag: "resumed", inner })
            }
            ServerMessage::Pong(inner) => serde_json::to_string(&Tagged { tag: "pong", inner }),
            ServerMessage::Error(inner) => serde_json::to_string(&Tagged { tag: "error", inner }),
            ServerMessage::Authenticated(inner) => {
                serde_json::to_string(&Tagged { tag: "authenticated", inner })
            }
        };
        // Serializing these plain structs (strings, integers, options) has no failure path.
        result.expect("server messages always serialize")
    }

    /// Reads a server message from JSON text.
    ///
    /// # Errors
    /// When the text is not JSON, has no string `type`, names an unknown type, or lacks a field.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        use serde::de::Error;
        /// Only the tag: the message itself is then read straight into its type, with no
        /// intermediate `serde_json::Value` tree (this runs for every message a watcher gets).
        #[derive(Deserialize)]
        struct Tag<'a> {
            #[serde(rename = "type", borrow)]
            tag: std::borrow::Cow<'a, str>,
        }
        let Tag { tag } = serde_json::from_str(text)?;
        Ok(match tag.as_ref() {
            "snapshot" => ServerMessage::Snapshot(serde_json::from_str(text)?),
            "resumed" => ServerMessage::Resumed(serde_json::from_str(text)?),
            "pong" => ServerMessage::Pong(serde_json::from_str(text)?),
            "error" => ServerMessage::Error(serde_json::from_str(text)?),
            "authenticated" => ServerMessage::Authenticated(serde_json::from_str(text)?),
            other if OpKind::from_name(other).is_some() => {
                ServerMessage::Update(serde_json::from_str(text)?)
            }
            other => {
                return Err(serde_json::Error::custom(format!("unknown message type {other:?}")));
            }
        })
    }
}

/// Any message a client sends over a WebSocket. Its `Debug` leaves out tokens.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// `{"type": "ping"}`: the seed's keep-alive; answered with a [`Pong`].
    Ping,
    /// `{"type": "auth", "token": "..."}`: act as the token's principal from now on (the first
    /// message of a browser, which cannot set headers on a WebSocket; later, a fresh token
    /// before the current one expires). Answered with [`Authenticated`] or an error.
    Auth {
        /// A JWT or an API key.
        token: String,
    },
}

impl std::fmt::Debug for ClientMessage {
    // A token must never reach a log, so it is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientMessage::Ping => f.write_str("Ping"),
            ClientMessage::Auth { .. } => f.write_str("Auth { token: <redacted> }"),
        }
    }
}

/// The message types a client may send, worded for error messages.
pub const CLIENT_MESSAGE_TYPES: &str = "ping, auth";

impl ClientMessage {
    /// The message as JSON text, as a client sends it.
    pub fn to_json(&self) -> String {
        match self {
            ClientMessage::Ping => r#"{"type":"ping"}"#.to_owned(),
            ClientMessage::Auth { token } => {
                serde_json::json!({"type": "auth", "token": token}).to_string()
            }
        }
    }

    /// Reads a client message.
    ///
    /// # Errors
    /// `bad_json` when the text is not JSON; `invalid_field` when it is not an object with a
    /// string `type`; `unknown_message_type` for a type the server does not know.
    pub fn parse(text: &str) -> Result<Self, ProtocolError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|error| {
            ProtocolError::new(
                ErrorCode::BadJson,
                format!("message is not valid JSON ({error}); send a JSON object such as {{\"type\":\"ping\"}}"),
            )
        })?;
        let Some(tag) = value.get("type").and_then(|t| t.as_str()) else {
            return Err(ProtocolError::new(
                ErrorCode::InvalidField,
                format!(
                    "message must be a JSON object with a string field \"type\"; known types: {CLIENT_MESSAGE_TYPES}"
                ),
            ));
        };
        match tag {
            "ping" => Ok(ClientMessage::Ping),
            "auth" => match value.get("token").and_then(|token| token.as_str()) {
                Some(token) => Ok(ClientMessage::Auth { token: token.to_owned() }),
                None => Err(ProtocolError::new(
                    ErrorCode::InvalidField,
                    "an auth message needs a string field \"token\" (a JWT or an API key)",
                )),
            },
            other => Err(ProtocolError::new(
                ErrorCode::UnknownMessageType,
                format!("unknown message type {other:?}; known types: {CLIENT_MESSAGE_TYPES}"),
            )),
        }
    }
}

/// How many watch a counter now: the answer to `getPresence`, and (with the counter's name) the
/// `presence` push of the socket protocol.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Presence {
    /// Subscriptions to the counter, over every socket (v1 watches included).
    pub watchers: u64,
    /// Distinct principals among them; every anonymous socket counts as a user of its own.
    pub users: u64,
}

/// The answer to `getValue`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueAnswer {
    /// The current value.
    pub value: i64,
    /// The current version.
    pub version: u64,
}

/// The answer of `GET /readyz`: whether the server can store writes now (PROTOCOL.md §1.3).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// True when the store takes writes (answered `200`); false otherwise (`503`).
    pub ready: bool,
    /// Why it does not, for people; absent when ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// True when the store stopped taking writes for good (after a failed fsync) and only a
    /// restart of the server brings it back; false when it may mend by itself.
    #[serde(default)]
    pub restart_required: bool,
}

/// One entry of a counter's history.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The counter's version after this operation.
    pub version: u64,
    /// Which operation.
    #[serde(rename = "type")]
    pub kind: OpKind,
    /// The amount of an increment or decrement; absent for setValue and reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    /// The value before it.
    pub previous_value: i64,
    /// The value after it.
    pub value: i64,
    /// When it was committed.
    pub timestamp: String,
    /// Who made it; shown only to principals with `admin` on the counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The answer to `getHistory`: newest first.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The entries, newest first.
    pub entries: Vec<Entry>,
    /// Present while older entries remain: pass it as `before` to get the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// One counter in the answer to `counter.list`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedCounter {
    /// The counter's name.
    pub name: String,
    /// The committed value.
    pub value: i64,
    /// The committed version.
    pub version: u64,
    /// When the latest write was committed (RFC 3339 UTC with milliseconds).
    pub updated_at: String,
    /// Subscriptions to the counter on the node that answered (in a cluster, each node counts
    /// its own; `getPresence` counts every node's).
    pub watchers: u64,
    /// The counter's bounds, when it has any (`counter.configure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<Bounds>,
    /// The rate meter: operations committed in the last minute, as `getMetadata`'s
    /// `opsLastMinute` counts them (at most 10 000 are looked at).
    pub ops_last_minute: u64,
}

/// The answer to `counter.list`: counters in name order.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterList {
    /// The counters, in name order (byte order).
    pub counters: Vec<ListedCounter>,
    /// Present while more counters may follow: pass it as `after` to get the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The answer to `counter.delete`. Deleting a counter that is not stored is no error (a
/// retry of a delete that was answered is one), so `deleted` says whether this call removed it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// The counter.
    pub name: String,
    /// Whether the counter was stored and this call removed it.
    pub deleted: bool,
    /// The version it had when it was removed; 0 when it was not stored.
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> Metadata {
        Metadata {
            id: Some(1),
            name: "likes".into(),
            value: 42,
            created_at: Some("2025-01-15T12:00:00.000Z".into()),
            updated_at: Some("2025-01-15T12:00:01.000Z".into()),
            operation_count: 10,
            ops_last_minute: None,
            bounds: None,
        }
    }

    #[test]
    fn update_has_the_seed_shape_plus_version() {
        let update = Update {
            kind: OpKind::Increment,
            value: 42,
            previous_value: 41,
            version: 10,
            metadata: metadata(),
            timestamp: "2025-01-15T12:00:01.000Z".into(),
            clamped: false,
            by: None,
        };
        let json: serde_json::Value =
            serde_json::from_str(&ServerMessage::Update(update.clone()).to_json()).unwrap();
        assert_eq!(json["type"], "increment");
        assert_eq!(json["previousValue"], 41);
        assert_eq!(json["metadata"]["operationCount"], 10);
        assert_eq!(json["metadata"]["createdAt"], "2025-01-15T12:00:00.000Z");
        let back = ServerMessage::from_json(&json.to_string()).unwrap();
        assert_eq!(back, ServerMessage::Update(update));
    }

    #[test]
    fn snapshot_is_tagged_and_resync_only_when_set() {
        let snapshot = Snapshot {
            value: 1,
            version: 1,
            metadata: metadata(),
            timestamp: "t".into(),
            resync: false,
            can: vec![Action::Read],
            epoch: Some(Epoch::parse("0123456789abcdef").unwrap()),
        };
        let text = ServerMessage::Snapshot(snapshot.clone()).to_json();
        assert!(text.starts_with(r#"{"type":"snapshot","#), "{text}");
        assert!(!text.contains("resync"), "{text}");
        assert!(text.contains(r#""epoch":"0123456789abcdef""#), "{text}");
        assert_eq!(ServerMessage::from_json(&text).unwrap(), ServerMessage::Snapshot(snapshot));
    }

    #[test]
    fn an_auth_message_never_prints_its_token() {
        let message = ClientMessage::parse(r#"{"type":"auth","token":"secret-token"}"#).unwrap();
        assert_eq!(message, ClientMessage::Auth { token: "secret-token".into() });
        assert!(!format!("{message:?}").contains("secret-token"));
    }

    #[test]
    fn client_messages_are_checked() {
        assert_eq!(ClientMessage::parse(r#"{"type":"ping"}"#), Ok(ClientMessage::Ping));
        let auth = ClientMessage::Auth { token: "a.b.c".into() };
        assert_eq!(ClientMessage::parse(&auth.to_json()), Ok(auth));
        assert_eq!(ClientMessage::parse("nope").unwrap_err().code, ErrorCode::BadJson);
        assert_eq!(ClientMessage::parse("[1]").unwrap_err().code, ErrorCode::InvalidField);
        let unknown = ClientMessage::parse(r#"{"type":"jump"}"#).unwrap_err();
        assert_eq!(unknown.code, ErrorCode::UnknownMessageType);
        assert!(unknown.message.contains("ping"));
    }
}
