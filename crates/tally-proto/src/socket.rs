//! The socket protocol, version 2 (`GET /ws`): one socket, many counters.
//!
//! The client sends [`Command`]s, each with an `id`; every command gets exactly one reply with
//! that id: its result, or an `error`. The server also sends pushes, without an id: updates and
//! snapshots carrying the counter's name, `presence`, `unsubscribed` and `reconnect`. Every
//! shape the server sends is a [`Frame`]. docs/PROTOCOL.md §10 describes the whole exchange.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::epoch::{EPOCH_LEN, Epoch};
use crate::error::{ErrorCode, ProtocolError};
use crate::idempotency::IdempotencyKey;
use crate::limits::MAX_SAFE_INTEGER;
use crate::message::{OpKind, Pong, Presence, Resumed, Snapshot, Update, WsError};
use crate::name::CounterName;
use crate::rpc::Procedure;

/// The fastest conflated rate a subscription may ask for, in updates per second.
pub const MAX_RATE_LIMIT: f64 = 1000.0;

/// The command types, worded for error messages.
pub const COMMAND_TYPES: &str =
    "auth, subscribe, unsubscribe, call, ping, watchServer, unwatchServer";

/// A command from the client. Its `Debug` leaves out tokens.
#[derive(Clone, PartialEq)]
pub struct Command {
    /// Chosen by the client; the reply carries it back. A whole number within 0..=2^53 − 1.
    pub id: u64,
    /// What the command asks.
    pub kind: CommandKind,
}

/// What a [`Command`] asks.
#[derive(Clone, PartialEq)]
pub enum CommandKind {
    /// `auth {token}`: act as the token's principal from now on. Answered `authenticated`.
    Auth {
        /// A JWT or an API key.
        token: String,
    },
    /// `subscribe {name, since?, epoch?, types?, maxRate?, presence?}`: answered with a snapshot, or
    /// `resumed` followed by the replay.
    Subscribe(Subscribe),
    /// `unsubscribe {name}`: answered `unsubscribed`; nothing of that counter follows.
    Unsubscribe {
        /// The counter.
        name: CounterName,
    },
    /// `call {procedure, …body, idempotencyKey?}`: an RPC over the socket, answered `result`
    /// with the RPC's answer, a write only once it is committed.
    Call(Call),
    /// `ping`: answered `pong`.
    Ping,
    /// `watchServer`: the server's own figures (needs admin on every counter). Answered with a
    /// `serverStats` reply, then a `serverStats` push once a second until `unwatchServer`.
    WatchServer,
    /// `unwatchServer`: answered `serverUnwatched`; no `serverStats` push follows.
    UnwatchServer,
}

/// What a `subscribe` asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    /// The counter.
    pub name: CounterName,
    /// Resume after this version: `resumed` and the missed updates instead of a snapshot.
    pub since: Option<u64>,
    /// The epoch `since` belongs to (from the last snapshot or `resumed`): a resume against
    /// another epoch is answered with a resync snapshot.
    pub epoch: Option<Epoch>,
    /// Only updates of these types are delivered (all when `None`); the version still counts
    /// every operation, so delivered versions jump over the filtered ones.
    pub types: Option<Vec<OpKind>>,
    /// At most this many updates a second, each the latest state, marked `conflated`.
    pub max_rate: Option<f64>,
    /// Whether to get `presence` pushes for the counter.
    pub presence: bool,
}

/// An RPC sent over the socket.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Which procedure (any counter procedure; the key procedures are RPC-only).
    pub procedure: Procedure,
    /// The RPC body's fields, as sent beside `procedure`.
    pub body: Map<String, Value>,
    /// The write's idempotency key, if the client gave one.
    pub idempotency_key: Option<IdempotencyKey>,
}

impl std::fmt::Debug for Command {
    // A token must never reach a log, so it is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind: &dyn std::fmt::Debug = match &self.kind {
            CommandKind::Auth { .. } => &"Auth { token: <redacted> }",
            CommandKind::Subscribe(subscribe) => subscribe,
            CommandKind::Unsubscribe { name } => name,
            CommandKind::Call(call) => call,
            CommandKind::Ping => &"Ping",
            CommandKind::WatchServer => &"WatchServer",
            CommandKind::UnwatchServer => &"UnwatchServer",
        };
        f.debug_struct("Command").field("id", &self.id).field("kind", kind).finish()
    }
}

/// A command the server could not read: the error to reply with, and the id to reply to when
/// the command had a readable one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCommand {
    /// The command's id, if it had a valid one.
    pub id: Option<u64>,
    /// What was wrong and what is allowed.
    pub error: ProtocolError,
}

impl Command {
    /// Reads a command.
    ///
    /// # Errors
    /// `bad_json` for text that is not JSON; `invalid_field` for a missing `id` or `type`, or a
    /// field of the wrong type; `unknown_message_type`; the RPC's own codes for a `call` whose
    /// procedure is unknown (`unknown_procedure`) or whose key is not valid
    /// (`invalid_idempotency_key`); `invalid_name` for a counter name. The body of a `call` is
    /// checked by the server, as the RPC's body is.
    pub fn parse(text: &str) -> Result<Self, BadCommand> {
        let value: Value = serde_json::from_str(text).map_err(|error| BadCommand {
            id: None,
            error: ProtocolError::new(
                ErrorCode::BadJson,
                format!(
                    "message is not valid JSON ({error}); send a JSON object such as {{\"id\":1,\"type\":\"ping\"}}"
                ),
            ),
        })?;
        let Value::Object(mut fields) = value else {
            return Err(BadCommand { id: None, error: invalid("a command must be a JSON object") });
        };
        let id = match fields.remove("id") {
            Some(Value::Number(number)) => number
                .as_u64()
                .filter(|id| *id <= MAX_SAFE_INTEGER as u64)
                .ok_or_else(|| number.to_string()),
            Some(other) => Err(other.to_string()),
            None => Err("missing".to_owned()),
        };
        let id = id.map_err(|found| BadCommand {
            id: None,
            error: invalid(format!(
                "a command needs an \"id\", a whole number from 0 to 2^53 - 1, which its reply carries; found {found}"
            )),
        })?;
        let kind = parse_kind(&mut fields).map_err(|error| BadCommand { id: Some(id), error })?;
        Ok(Command { id, kind })
    }

    /// The command as JSON text, as a client sends it.
    pub fn to_json(&self) -> String {
        let mut fields = Map::new();
        fields.insert("id".into(), self.id.into());
        let tag = match &self.kind {
            CommandKind::Auth { token } => {
                fields.insert("token".into(), token.clone().into());
                "auth"
            }
            CommandKind::Subscribe(subscribe) => {
                fields.insert("name".into(), subscribe.name.as_str().into());
                if let Some(since) = subscribe.since {
                    fields.insert("since".into(), since.into());
                }
                if let Some(epoch) = &subscribe.epoch {
                    fields.insert("epoch".into(), epoch.as_str().into());
                }
                if let Some(types) = &subscribe.types {
                    let names = types.iter().map(|kind| Value::from(kind.as_str())).collect();
                    fields.insert("types".into(), Value::Array(names));
                }
                if let Some(rate) = subscribe.max_rate {
                    fields.insert("maxRate".into(), rate.into());
                }
                if subscribe.presence {
                    fields.insert("presence".into(), true.into());
                }
                "subscribe"
            }
            CommandKind::Unsubscribe { name } => {
                fields.insert("name".into(), name.as_str().into());
                "unsubscribe"
            }
            CommandKind::Call(call) => {
                for (field, value) in &call.body {
                    fields.insert(field.clone(), value.clone());
                }
                fields.insert("procedure".into(), call.procedure.path_name().into());
                if let Some(key) = &call.idempotency_key {
                    fields.insert("idempotencyKey".into(), key.as_str().into());
                }
                "call"
            }
            CommandKind::Ping => "ping",
            CommandKind::WatchServer => "watchServer",
            CommandKind::UnwatchServer => "unwatchServer",
        };
        fields.insert("type".into(), tag.into());
        Value::Object(fields).to_string()
    }
}

fn invalid(message: impl Into<String>) -> ProtocolError {
    ProtocolError::new(ErrorCode::InvalidField, message)
}

fn parse_kind(fields: &mut Map<String, Value>) -> Result<CommandKind, ProtocolError> {
    let tag = match fields.remove("type") {
        Some(Value::String(tag)) => tag,
        _ => {
            return Err(invalid(format!(
                "a command needs a string field \"type\"; known types: {COMMAND_TYPES}"
            )));
        }
    };
    let kind = match tag.as_str() {
        "ping" => CommandKind::Ping,
        "watchServer" => CommandKind::WatchServer,
        "unwatchServer" => CommandKind::UnwatchServer,
        "auth" => match fields.remove("token") {
            Some(Value::String(token)) => CommandKind::Auth { token },
            _ => {
                return Err(invalid(
                    "an auth command needs a string field \"token\" (a JWT or an API key)",
                ));
            }
        },
        "subscribe" => CommandKind::Subscribe(parse_subscribe(fields)?),
        "unsubscribe" => CommandKind::Unsubscribe { name: name_field(fields, "unsubscribe")? },
        "call" => {
            let procedure = match fields.remove("procedure") {
                Some(Value::String(procedure)) => Procedure::from_path(&procedure)?,
                _ => {
                    return Err(invalid(
                        "a call needs a string field \"procedure\", such as \"counter.increment\"",
                    ));
                }
            };
            if !procedure.callable_over_socket() {
                return Err(ProtocolError::new(
                    ErrorCode::UnknownProcedure,
                    format!(
                        "{} is not callable over the socket; the key procedures are RPC-only",
                        procedure.path_name()
                    ),
                ));
            }
            let idempotency_key = match fields.remove("idempotencyKey") {
                None | Some(Value::Null) => None,
                Some(Value::String(key)) => Some(IdempotencyKey::parse(&key)?),
                Some(_) => {
                    return Err(ProtocolError::new(
                        ErrorCode::InvalidIdempotencyKey,
                        "idempotencyKey must be a string",
                    ));
                }
            };
            if idempotency_key.is_some() && !procedure.is_write() {
                return Err(invalid(format!(
                    "{} does not change the counter, so it takes no idempotencyKey",
                    procedure.path_name()
                )));
            }
            return Ok(CommandKind::Call(Call {
                procedure,
                body: std::mem::take(fields),
                idempotency_key,
            }));
        }
        other => {
            return Err(ProtocolError::new(
                ErrorCode::UnknownMessageType,
                format!("unknown command type {other:?}; known types: {COMMAND_TYPES}"),
            ));
        }
    };
    if let Some(field) = fields.keys().next() {
        return Err(invalid(format!("unknown field {field:?} in a {tag} command")));
    }
    Ok(kind)
}

fn name_field(fields: &mut Map<String, Value>, tag: &str) -> Result<CounterName, ProtocolError> {
    match fields.remove("name") {
        Some(Value::String(name)) => CounterName::parse(&name),
        _ => Err(invalid(format!("a {tag} command needs a string field \"name\", the counter"))),
    }
}

fn parse_subscribe(fields: &mut Map<String, Value>) -> Result<Subscribe, ProtocolError> {
    let name = name_field(fields, "subscribe")?;
    let since = match fields.remove("since") {
        None | Some(Value::Null) => None,
        Some(Value::Number(number)) if number.as_u64().is_some() => number.as_u64(),
        Some(other) => {
            return Err(invalid(format!(
                "since is {other}; allowed: a version, a whole number >= 0"
            )));
        }
    };
    let epoch = match fields.remove("epoch") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(Epoch::parse(&text)?),
        Some(other) => {
            return Err(invalid(format!(
                "epoch is {other}; allowed: a string of {EPOCH_LEN} lowercase hexadecimal digits"
            )));
        }
    };
    let types = match fields.remove("types") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut kinds = Vec::with_capacity(items.len());
            for item in items {
                let kind = item.as_str().and_then(OpKind::from_name).ok_or_else(|| {
                    invalid(format!(
                        "types holds {item}; allowed: increment, decrement, setValue, reset"
                    ))
                })?;
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
            Some(kinds)
        }
        Some(other) => {
            return Err(invalid(format!(
                "types is {other}; allowed: a non-empty array of update types (increment, decrement, setValue, reset)"
            )));
        }
    };
    let max_rate = match fields.remove("maxRate") {
        None | Some(Value::Null) => None,
        Some(Value::Number(number))
            if number.as_f64().is_some_and(|rate| rate > 0.0 && rate <= MAX_RATE_LIMIT) =>
        {
            number.as_f64()
        }
        Some(other) => {
            return Err(invalid(format!(
                "maxRate is {other}; allowed: updates per second, a number above 0 and at most {MAX_RATE_LIMIT}"
            )));
        }
    };
    let presence = match fields.remove("presence") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(presence)) => presence,
        Some(other) => return Err(invalid(format!("presence is {other}; allowed: true or false"))),
    };
    Ok(Subscribe { name, since, epoch, types, max_rate, presence })
}

/// The answer to an `auth` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SocketAuthenticated {
    /// Who the socket acts as: a token's subject, `key:NAME`, or `anonymous`.
    pub principal: String,
    /// When the token expires (RFC 3339 UTC); absent for API keys. Before then, send a fresh
    /// `auth`; past it (and the leeway) the socket is closed with 4502.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// The server's own figures, as a `serverStats` frame carries them: sampled once a second from
/// the metrics `/metrics` serves, by one sampler for the whole server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerStats {
    /// When the figures were sampled (RFC 3339 UTC with milliseconds).
    pub at: String,
    /// Open TCP connections (HTTP and WebSocket).
    pub connections: u64,
    /// Open WebSockets, both versions.
    pub websockets: u64,
    /// Counter subscriptions: version-1 sockets and version-2 subscriptions together.
    pub watchers: u64,
    /// Counters with a live actor.
    pub counters_in_memory: u64,
    /// Operations committed per second, over the last second.
    pub ops_per_second: f64,
    /// The 99th percentile of an operation's time from reaching its counter to its answer
    /// (commit included), in milliseconds, over the last 10 seconds; the upper bound of the
    /// histogram bucket it falls in. Absent when no operation was answered in that time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Transactions committed per second, over the last second (each one fsync).
    pub commits_per_second: f64,
    /// The mean time to write and sync one transaction, in milliseconds, over the last 10
    /// seconds: the commit with its fsync, which neither SQLite nor PostgreSQL times apart.
    /// Absent when nothing was committed in that time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_ms: Option<f64>,
    /// The 99th percentile of a commit's time (write and fsync), in milliseconds, over the
    /// last 10 seconds, as a bucket's upper bound; absent when nothing was committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_p99_ms: Option<f64>,
    /// Whether the store takes writes (what `GET /readyz` last found).
    pub ready: bool,
    /// Why not, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_reason: Option<String>,
}

/// Everything the server sends on a version-2 socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A push: an update of a subscribed counter. `conflated` marks the latest state of a
    /// `maxRate` subscription, which may jump over versions by design.
    Update {
        /// The counter.
        name: String,
        /// The update, as v1 sends it.
        update: Update,
        /// Whether this is a conflated update (a jump to the latest state).
        conflated: bool,
    },
    /// The reply to `subscribe` (with its id), or a push (without) when a subscription had to
    /// start over (`resync`).
    Snapshot {
        /// The subscribe's id; `None` for a push.
        id: Option<u64>,
        /// The counter.
        name: String,
        /// The state.
        snapshot: Snapshot,
    },
    /// The reply to a resuming `subscribe`: the updates `since + 1..=version` follow.
    Resumed {
        /// The subscribe's id.
        id: u64,
        /// The counter.
        name: String,
        /// What is replayed.
        resumed: Resumed,
    },
    /// The reply to a `call`: the RPC's answer.
    Result {
        /// The call's id.
        id: u64,
        /// The answer, exactly as the RPC answers it.
        result: Value,
    },
    /// A refused command (with its id), or a message that was not a command (without).
    Error {
        /// The command's id, when it had one.
        id: Option<u64>,
        /// What was wrong.
        error: WsError,
    },
    /// The reply to `auth`.
    Authenticated {
        /// The auth command's id.
        id: u64,
        /// Who the socket acts as now.
        authenticated: SocketAuthenticated,
    },
    /// The reply to `ping`.
    Pong {
        /// The ping's id.
        id: u64,
        /// The server's time.
        pong: Pong,
    },
    /// A push: how many watch a counter, when it changed (at most once a second).
    Presence {
        /// The counter.
        name: String,
        /// The counts.
        presence: Presence,
    },
    /// The reply to `unsubscribe` (with its id and no code), or a push (without an id) when the
    /// server ended one subscription while the socket goes on.
    Unsubscribed {
        /// The unsubscribe's id; `None` for a push.
        id: Option<u64>,
        /// The counter.
        name: String,
        /// Why the server ended it (an error code such as `forbidden`); `None` in a reply.
        code: Option<String>,
        /// Why, in words.
        reason: Option<String>,
    },
    /// The reply to `watchServer` (with its id), then a push (without) once a second.
    ServerStats {
        /// The watchServer's id; `None` for a push.
        id: Option<u64>,
        /// The figures.
        stats: ServerStats,
    },
    /// The reply to `unwatchServer` (with its id and no code), or a push (without an id) when
    /// the server ended the watch: the socket's principal, replaced by `auth`, may not watch.
    ServerUnwatched {
        /// The unwatchServer's id; `None` for a push.
        id: Option<u64>,
        /// Why the server ended it (an error code such as `forbidden`); `None` in a reply.
        code: Option<String>,
        /// Why, in words.
        reason: Option<String>,
    },
    /// A push just before the server closes the socket (shutdown, load): reconnect after
    /// `after_ms`, chosen at random over `--reconnect-spread` so that clients come back spread
    /// out.
    Reconnect {
        /// How long to wait before reconnecting, in milliseconds.
        after_ms: u64,
        /// Why.
        reason: String,
    },
}

/// A frame's fields after `type` and `id`, for (de)serializing every frame but updates.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<T> {
    #[serde(rename = "type")]
    tag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(flatten)]
    inner: T,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResultBody {
    result: Value,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UnsubscribedBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReconnectBody {
    after_ms: u64,
    reason: String,
}

fn envelope<T: Serialize>(tag: &str, id: Option<u64>, name: Option<&str>, inner: &T) -> String {
    let envelope = Envelope { tag: tag.to_owned(), id, name: name.map(str::to_owned), inner };
    // Plain data (strings, numbers, options, JSON values) always serializes.
    serde_json::to_string(&envelope).expect("socket frames always serialize")
}

impl Frame {
    /// The frame as JSON text. The server sends updates from shared bytes (see the server's
    /// framing module); this is the same shape.
    pub fn to_json(&self) -> String {
        match self {
            Frame::Update { name, update, conflated } => {
                let mut value = serde_json::to_value(update).unwrap_or(Value::Null);
                if let Value::Object(fields) = &mut value {
                    fields.insert("type".into(), update.kind.as_str().into());
                    fields.insert("name".into(), name.clone().into());
                    if *conflated {
                        fields.insert("conflated".into(), true.into());
                    }
                }
                value.to_string()
            }
            Frame::Snapshot { id, name, snapshot } => {
                envelope("snapshot", *id, Some(name), snapshot)
            }
            Frame::Resumed { id, name, resumed } => {
                envelope("resumed", Some(*id), Some(name), resumed)
            }
            Frame::Result { id, result } => {
                envelope("result", Some(*id), None, &ResultBody { result: result.clone() })
            }
            Frame::Error { id, error } => envelope("error", *id, None, error),
            Frame::Authenticated { id, authenticated } => {
                envelope("authenticated", Some(*id), None, authenticated)
            }
            Frame::Pong { id, pong } => envelope("pong", Some(*id), None, pong),
            Frame::Presence { name, presence } => envelope("presence", None, Some(name), presence),
            Frame::Unsubscribed { id, name, code, reason } => envelope(
                "unsubscribed",
                *id,
                Some(name),
                &UnsubscribedBody { code: code.clone(), reason: reason.clone() },
            ),
            Frame::ServerStats { id, stats } => envelope("serverStats", *id, None, stats),
            Frame::ServerUnwatched { id, code, reason } => envelope(
                "serverUnwatched",
                *id,
                None,
                &UnsubscribedBody { code: code.clone(), reason: reason.clone() },
            ),
            Frame::Reconnect { after_ms, reason } => envelope(
                "reconnect",
                None,
                None,
                &ReconnectBody { after_ms: *after_ms, reason: reason.clone() },
            ),
        }
    }

    /// Reads a frame from JSON text.
    ///
    /// # Errors
    /// When the text is not JSON, names an unknown type, or lacks a field.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        struct Head<'a> {
            #[serde(rename = "type", borrow)]
            tag: std::borrow::Cow<'a, str>,
            #[serde(default)]
            id: Option<u64>,
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            conflated: bool,
        }
        let Head { tag, id, name, conflated } = serde_json::from_str(text)?;
        let named = |name: Option<String>| {
            name.ok_or_else(|| serde_json::Error::custom(format!("a {tag} frame needs a name")))
        };
        let with_id = |id: Option<u64>| {
            id.ok_or_else(|| serde_json::Error::custom(format!("a {tag} frame needs an id")))
        };
        Ok(match tag.as_ref() {
            "snapshot" => {
                Frame::Snapshot { id, name: named(name)?, snapshot: serde_json::from_str(text)? }
            }
            "resumed" => Frame::Resumed {
                id: with_id(id)?,
                name: named(name)?,
                resumed: serde_json::from_str(text)?,
            },
            "result" => {
                let body: ResultBody = serde_json::from_str(text)?;
                Frame::Result { id: with_id(id)?, result: body.result }
            }
            "error" => Frame::Error { id, error: serde_json::from_str(text)? },
            "authenticated" => Frame::Authenticated {
                id: with_id(id)?,
                authenticated: serde_json::from_str(text)?,
            },
            "pong" => Frame::Pong { id: with_id(id)?, pong: serde_json::from_str(text)? },
            "presence" => {
                Frame::Presence { name: named(name)?, presence: serde_json::from_str(text)? }
            }
            "unsubscribed" => {
                let body: UnsubscribedBody = serde_json::from_str(text)?;
                Frame::Unsubscribed { id, name: named(name)?, code: body.code, reason: body.reason }
            }
            "serverStats" => Frame::ServerStats { id, stats: serde_json::from_str(text)? },
            "serverUnwatched" => {
                let body: UnsubscribedBody = serde_json::from_str(text)?;
                Frame::ServerUnwatched { id, code: body.code, reason: body.reason }
            }
            "reconnect" => {
                let body: ReconnectBody = serde_json::from_str(text)?;
                Frame::Reconnect { after_ms: body.after_ms, reason: body.reason }
            }
            other if OpKind::from_name(other).is_some() => {
                Frame::Update { name: named(name)?, update: serde_json::from_str(text)?, conflated }
            }
            other => {
                return Err(serde_json::Error::custom(format!("unknown frame type {other:?}")));
            }
        })
    }

    /// The id of the command this frame answers, if it is a reply.
    pub fn reply_id(&self) -> Option<u64> {
        match self {
            Frame::Snapshot { id, .. }
            | Frame::ServerStats { id, .. }
            | Frame::ServerUnwatched { id, .. }
            | Frame::Error { id, .. }
            | Frame::Unsubscribed { id, .. } => *id,
            Frame::Resumed { id, .. }
            | Frame::Result { id, .. }
            | Frame::Authenticated { id, .. }
            | Frame::Pong { id, .. } => Some(*id),
            Frame::Update { .. } | Frame::Presence { .. } | Frame::Reconnect { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Metadata;

    #[track_caller]
    fn bad(text: &str) -> BadCommand {
        Command::parse(text).unwrap_err()
    }

    #[test]
    fn commands_round_trip() {
        let commands = [
            CommandKind::Ping,
            CommandKind::WatchServer,
            CommandKind::UnwatchServer,
            CommandKind::Auth { token: "t".into() },
            CommandKind::Subscribe(Subscribe {
                name: CounterName::parse("likes").unwrap(),
                since: Some(4),
                epoch: Some(Epoch::parse("00000000deadbeef").unwrap()),
                types: Some(vec![OpKind::Increment, OpKind::Reset]),
                max_rate: Some(2.5),
                presence: true,
            }),
            CommandKind::Unsubscribe { name: CounterName::parse("likes").unwrap() },
            CommandKind::Call(Call {
                procedure: Procedure::Increment,
                body: serde_json::json!({"name": "likes", "amount": 2})
                    .as_object()
                    .unwrap()
                    .clone(),
                idempotency_key: Some(IdempotencyKey::parse("k-1").unwrap()),
            }),
        ];
        for (id, kind) in commands.into_iter().enumerate() {
            let command = Command { id: id as u64, kind };
            assert_eq!(Command::parse(&command.to_json()), Ok(command));
        }
    }

    #[test]
    fn bad_commands_say_what_is_allowed_and_keep_their_id() {
        assert_eq!(bad("nope").error.code, ErrorCode::BadJson);
        let no_id = bad(r#"{"type":"ping"}"#);
        assert_eq!((no_id.id, no_id.error.code), (None, ErrorCode::InvalidField));
        assert!(no_id.error.message.contains("\"id\""));
        assert_eq!(bad(r#"{"id":-1,"type":"ping"}"#).id, None);
        let unknown = bad(r#"{"id":7,"type":"jump"}"#);
        assert_eq!((unknown.id, unknown.error.code), (Some(7), ErrorCode::UnknownMessageType));
        assert!(unknown.error.message.contains("subscribe"));
        assert_eq!(bad(r#"{"id":1,"type":"subscribe"}"#).error.code, ErrorCode::InvalidField);
        assert_eq!(
            bad(r#"{"id":1,"type":"subscribe","name":"a b"}"#).error.code,
            ErrorCode::InvalidName
        );
        for field in [
            r#""since":-1"#,
            r#""epoch":"ABCDEF0123456789""#,
            r#""epoch":12"#,
            r#""types":[]"#,
            r#""types":["jump"]"#,
            r#""maxRate":0"#,
            r#""maxRate":1001"#,
            r#""presence":1"#,
            r#""extra":1"#,
        ] {
            let text = format!(r#"{{"id":1,"type":"subscribe","name":"a",{field}}}"#);
            assert_eq!(bad(&text).error.code, ErrorCode::InvalidField, "{text}");
        }
        let procedure = bad(r#"{"id":2,"type":"call","procedure":"counter.explode"}"#);
        assert_eq!(procedure.error.code, ErrorCode::UnknownProcedure);
        let key_rpc = bad(r#"{"id":2,"type":"call","procedure":"key.list"}"#);
        assert_eq!(key_rpc.error.code, ErrorCode::UnknownProcedure);
        let key = bad(r#"{"id":2,"type":"call","procedure":"counter.reset","idempotencyKey":""}"#);
        assert_eq!(key.error.code, ErrorCode::InvalidIdempotencyKey);
        let read_key = bad(
            r#"{"id":2,"type":"call","procedure":"counter.getValue","name":"a","idempotencyKey":"k"}"#,
        );
        assert_eq!(read_key.error.code, ErrorCode::InvalidField);
    }

    #[test]
    fn an_auth_command_never_prints_its_token() {
        let command = Command::parse(r#"{"id":1,"type":"auth","token":"secret-token"}"#).unwrap();
        assert!(!format!("{command:?}").contains("secret-token"));
    }

    #[test]
    fn frames_round_trip() {
        let metadata = Metadata {
            id: Some(1),
            name: "likes".into(),
            value: 3,
            created_at: None,
            updated_at: None,
            operation_count: 3,
            ops_last_minute: None,
            bounds: None,
        };
        let update = Update {
            kind: OpKind::Increment,
            value: 3,
            previous_value: 2,
            version: 3,
            metadata: metadata.clone(),
            timestamp: "t".into(),
            clamped: false,
            by: None,
        };
        let frames = [
            Frame::Update { name: "likes".into(), update, conflated: true },
            Frame::Snapshot {
                id: Some(1),
                name: "likes".into(),
                snapshot: Snapshot {
                    value: 3,
                    version: 3,
                    metadata,
                    timestamp: "t".into(),
                    resync: false,
                    can: vec![],
                    epoch: Some(Epoch::parse("0123456789abcdef").unwrap()),
                },
            },
            Frame::Resumed {
                id: 2,
                name: "likes".into(),
                resumed: Resumed { since: 1, version: 3, epoch: None },
            },
            Frame::Result { id: 3, result: serde_json::json!({"value": 1, "version": 2}) },
            Frame::Error {
                id: Some(4),
                error: WsError {
                    code: "forbidden".into(),
                    message: "m".into(),
                    temporary: false,
                    retry_after_ms: None,
                    current_version: None,
                    min: None,
                    max: None,
                },
            },
            Frame::Authenticated {
                id: 5,
                authenticated: SocketAuthenticated { principal: "al".into(), expires_at: None },
            },
            Frame::Pong { id: 6, pong: Pong { timestamp: "t".into() } },
            Frame::Presence { name: "likes".into(), presence: Presence { watchers: 2, users: 1 } },
            Frame::Unsubscribed {
                id: None,
                name: "likes".into(),
                code: Some("forbidden".into()),
                reason: Some("r".into()),
            },
            Frame::Unsubscribed { id: Some(7), name: "likes".into(), code: None, reason: None },
            Frame::Reconnect { after_ms: 1500, reason: "restart".into() },
            Frame::ServerStats { id: Some(8), stats: server_stats() },
            Frame::ServerStats { id: None, stats: ServerStats { p99_ms: None, ..server_stats() } },
            Frame::ServerUnwatched { id: Some(9), code: None, reason: None },
            Frame::ServerUnwatched {
                id: None,
                code: Some("forbidden".into()),
                reason: Some("r".into()),
            },
        ];
        for frame in frames {
            let text = frame.to_json();
            assert_eq!(Frame::from_json(&text).unwrap(), frame, "{text}");
        }
    }

    fn server_stats() -> ServerStats {
        ServerStats {
            at: "2026-12-04T03:00:00.000Z".into(),
            connections: 3,
            websockets: 2,
            watchers: 5,
            counters_in_memory: 4,
            ops_per_second: 12.5,
            p99_ms: Some(0.8),
            commits_per_second: 3.0,
            commit_ms: Some(0.4),
            commit_p99_ms: Some(1.6),
            ready: true,
            ready_reason: None,
        }
    }

    #[test]
    fn server_stats_frames_carry_their_figures_in_camel_case() {
        let push = Frame::ServerStats { id: None, stats: server_stats() }.to_json();
        let value: Value = serde_json::from_str(&push).unwrap();
        assert_eq!(value["type"], "serverStats", "{push}");
        assert!(value.get("id").is_none(), "{push}");
        assert_eq!(value["opsPerSecond"], 12.5, "{push}");
        assert_eq!(value["p99Ms"], 0.8, "{push}");
        assert_eq!(value["countersInMemory"], 4, "{push}");
        assert!(value.get("readyReason").is_none(), "{push}");
        let reply = Frame::ServerUnwatched { id: Some(9), code: None, reason: None }.to_json();
        assert_eq!(reply, r#"{"type":"serverUnwatched","id":9}"#);
        assert!(matches!(
            Command::parse(r#"{"id":1,"type":"watchServer","x":1}"#),
            Err(BadCommand { id: Some(1), .. })
        ));
    }
}
