//! The socket protocol, version 2 (`GET /ws`), as the benchmark speaks it: commands are written
//! by tally-proto's [`Command`] and replies read by its [`Frame`], except on the hot paths, where
//! a frame's kind, id or version is read from its first bytes (with [`Frame::from_json`] as the
//! fallback for anything else), so the benchmark measures the server more than its own parsing.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use indicatif::ProgressBar;
use serde_json::{Map, Value};
use tally_proto::socket::{Call, Command, CommandKind, Frame, Subscribe};
use tally_proto::{CounterName, IdempotencyKey, Procedure};
use tokio_tungstenite::tungstenite::Message;

use crate::watchers::{Socket, connect_to};

/// Opens a version-2 socket (from the next loopback source address, as every watcher does).
pub(crate) async fn connect(server: SocketAddr) -> anyhow::Result<Socket> {
    connect_to(server, "/ws").await
}

/// Whether the server speaks version 2: a build from before it answers `/ws` with 404.
pub(crate) async fn supported(server: SocketAddr) -> bool {
    connect(server).await.is_ok()
}

/// A `subscribe` command as JSON.
pub(crate) fn subscribe_command(
    id: u64,
    name: &str,
    max_rate: Option<f64>,
    presence: bool,
) -> anyhow::Result<String> {
    let name = CounterName::parse(name).map_err(|error| anyhow::anyhow!("{}", error.message))?;
    let subscribe = Subscribe { name, since: None, epoch: None, types: None, max_rate, presence };
    Ok(Command { id, kind: CommandKind::Subscribe(subscribe) }.to_json())
}

/// Sends one text message and flushes it.
pub(crate) async fn send(socket: &mut Socket, text: String) -> anyhow::Result<()> {
    socket.send(Message::text(text)).await.context("sending a command")
}

/// Reads until the reply to command `id` (pushes before it are skipped) and returns it.
pub(crate) async fn reply(socket: &mut Socket, id: u64) -> anyhow::Result<Frame> {
    while let Some(message) = socket.next().await {
        let Message::Text(text) = message.context("reading a reply")? else { continue };
        let frame = Frame::from_json(&text)
            .with_context(|| format!("the server sent a frame that is not version 2: {text}"))?;
        if frame.reply_id() == Some(id) {
            return Ok(frame);
        }
    }
    bail!("the socket closed before the reply to command {id}")
}

/// Subscribes to `name` and waits for the snapshot; returns its version.
pub(crate) async fn subscribe(
    socket: &mut Socket,
    id: u64,
    name: &str,
    max_rate: Option<f64>,
    presence: bool,
) -> anyhow::Result<u64> {
    send(socket, subscribe_command(id, name, max_rate, presence)?).await?;
    match reply(socket, id).await? {
        Frame::Snapshot { snapshot, .. } => Ok(snapshot.version),
        other => bail!("subscribe {name} was answered {}", other.to_json()),
    }
}

/// Subscribes one socket to every counter of `names`, up to `window` commands in flight; a
/// `rate_limited` refusal is sent again, under a fresh id, after the delay the server asks for.
pub(crate) async fn subscribe_all(
    socket: &mut Socket,
    names: &[String],
    window: usize,
) -> anyhow::Result<()> {
    let mut next = 0;
    let mut next_id = 1_u64;
    // Command id → the index of its name.
    let mut in_flight = std::collections::HashMap::new();
    let mut retries = Vec::new();
    while next < names.len() || !in_flight.is_empty() || !retries.is_empty() {
        while in_flight.len() < window {
            let index = match retries.pop() {
                Some(index) => index,
                None if next < names.len() => {
                    next += 1;
                    next - 1
                }
                None => break,
            };
            socket
                .feed(Message::text(subscribe_command(next_id, &names[index], None, false)?))
                .await
                .context("sending a subscribe")?;
            in_flight.insert(next_id, index);
            next_id += 1;
        }
        socket.flush().await.context("sending subscribes")?;
        let Some(message) = socket.next().await else {
            bail!("the socket closed with {} subscribes unanswered", in_flight.len())
        };
        let Message::Text(text) = message.context("reading a subscribe's reply")? else {
            continue;
        };
        let frame = Frame::from_json(&text)
            .with_context(|| format!("the server sent a frame that is not version 2: {text}"))?;
        let Some(index) = frame.reply_id().and_then(|id| in_flight.remove(&id)) else {
            continue;
        };
        match frame {
            Frame::Snapshot { .. } => {}
            Frame::Error { error, .. } if error.code == "rate_limited" => {
                let pause = error.retry_after_ms.unwrap_or(100);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                retries.push(index);
            }
            other => bail!("subscribe {} was answered {}", names[index], other.to_json()),
        }
    }
    Ok(())
}

/// How the watchers of [`open_many`] subscribe.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Options {
    /// `maxRate`: conflated updates, at most this many a second.
    pub(crate) max_rate: Option<f64>,
    /// Presence pushes.
    pub(crate) presence: bool,
}

/// Opens `count` v2 sockets, each subscribed to one counter of `counters` named `prefix-N`
/// (socket i to counter i mod `counters`) and read to its snapshot, 64 handshakes at a time.
/// Returns each socket with its counter's index and the snapshot's version.
pub(crate) async fn open_many(
    server: SocketAddr,
    prefix: &str,
    counters: usize,
    count: usize,
    options: Options,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<(usize, u64, Socket)>> {
    let mut sockets = Vec::with_capacity(count);
    let mut pending = futures_util::stream::iter(0..count)
        .map(|index| {
            let counter = index % counters.max(1);
            let name = format!("{prefix}-{counter}");
            async move {
                let mut socket = connect(server).await?;
                let version =
                    subscribe(&mut socket, 1, &name, options.max_rate, options.presence).await?;
                anyhow::Ok((counter, version, socket))
            }
        })
        .buffer_unordered(64);
    while let Some(opened) = pending.next().await {
        sockets.push(opened?);
        progress.inc(1);
    }
    Ok(sockets)
}

/// Reads until the next update push; returns its version (`None` when the socket ends).
pub(crate) async fn next_update(socket: &mut Socket) -> Option<u64> {
    while let Some(Ok(message)) = socket.next().await {
        if let Message::Text(text) = message
            && let Glance::Update { version } = glance(&text)
        {
            return Some(version);
        }
    }
    None
}

/// What the first bytes of a frame say, for the hot paths.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Glance {
    /// An update push, with its version.
    Update { version: u64 },
    /// A reply to command `id`; `ok` unless it is an error.
    Reply { id: u64, ok: bool },
    /// A presence push.
    Presence { watchers: u64 },
    /// Anything else (a snapshot push, `unsubscribed`, `reconnect`, …).
    Other,
}

/// Reads what a frame is. Updates are recognised by their first field, `"name"` (the server's
/// shared v2 bytes start so), and replies by `{"type":"result","id":` (as `Frame::to_json`
/// writes them); any other frame is parsed in full.
pub(crate) fn glance(text: &str) -> Glance {
    if text.starts_with(r#"{"name":"#) {
        // An update's first `"version":` is its own (its metadata has `operationCount`), and
        // a counter's name holds no quotes, so the name cannot hide one.
        if let Some(version) = number_after(text, r#""version":"#) {
            return Glance::Update { version };
        }
    } else if let Some(rest) = text.strip_prefix(r#"{"type":"result","id":"#) {
        if let Some(id) = leading_number(rest) {
            return Glance::Reply { id, ok: true };
        }
    } else if let Some(rest) = text.strip_prefix(r#"{"type":"error","id":"#)
        && let Some(id) = leading_number(rest)
    {
        return Glance::Reply { id, ok: false };
    }
    match Frame::from_json(text) {
        Ok(Frame::Update { update, .. }) => Glance::Update { version: update.version },
        Ok(Frame::Presence { presence, .. }) => Glance::Presence { watchers: presence.watchers },
        Ok(Frame::Error { id: Some(id), .. }) => Glance::Reply { id, ok: false },
        Ok(frame @ (Frame::Result { .. } | Frame::Snapshot { id: Some(_), .. })) => {
            Glance::Reply { id: frame.reply_id().unwrap_or_default(), ok: true }
        }
        _ => Glance::Other,
    }
}

/// The `id` of a command as the benchmark writes it (for the reference echo, which sends the
/// command back): a call's body holds no `"id"` field of its own.
pub(crate) fn command_id(text: &str) -> Option<u64> {
    number_after(text, r#""id":"#)
}

fn number_after(text: &str, field: &str) -> Option<u64> {
    leading_number(&text[text.find(field)? + field.len()..])
}

fn leading_number(text: &str) -> Option<u64> {
    let end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    text[..end].parse().ok()
}

/// A `call` command written once by [`Command::to_json`] and then only filled in with each
/// call's id (and idempotency key), so that the benchmark's loop does no JSON work: the HTTP
/// side's bodies are built before the clock starts too.
pub(crate) struct CallTemplate {
    pieces: Vec<Piece>,
}

enum Piece {
    Text(String),
    Id,
    Key,
}

/// Stand-ins written into the template where each call's id and key go: the largest id the
/// protocol allows and a key no body holds.
const ID_MARK: &str = "9007199254740991";
const KEY_MARK: &str = "bench-key-mark-5d1f";

impl CallTemplate {
    /// A call of `procedure` with `body`; with `keyed`, every call carries an idempotency key.
    pub(crate) fn new(procedure: Procedure, body: Map<String, Value>, keyed: bool) -> Self {
        let idempotency_key = keyed.then(|| {
            // A constant of the allowed characters and length.
            IdempotencyKey::parse(KEY_MARK).expect("the key stand-in is a valid key")
        });
        let call = Call { procedure, body, idempotency_key };
        let id = ID_MARK.parse().unwrap_or_default();
        let text = Command { id, kind: CommandKind::Call(call) }.to_json();
        let mut pieces = Vec::new();
        let mut rest = text.as_str();
        loop {
            let id_at = rest.find(&format!("\"id\":{ID_MARK}")).map(|at| at + 5);
            let key_at = rest.find(KEY_MARK);
            let (at, piece, length) = match (id_at, key_at) {
                (Some(id), Some(key)) if key < id => (key, Piece::Key, KEY_MARK.len()),
                (Some(id), _) => (id, Piece::Id, ID_MARK.len()),
                (None, Some(key)) => (key, Piece::Key, KEY_MARK.len()),
                (None, None) => break,
            };
            pieces.push(Piece::Text(rest[..at].to_owned()));
            pieces.push(piece);
            rest = &rest[at + length..];
        }
        pieces.push(Piece::Text(rest.to_owned()));
        Self { pieces }
    }

    /// Whether every call carries an idempotency key.
    pub(crate) fn keyed(&self) -> bool {
        self.pieces.iter().any(|piece| matches!(piece, Piece::Key))
    }

    /// The command for call `id` with idempotency key `key` (ignored unless the template is
    /// keyed).
    pub(crate) fn render(&self, id: u64, key: &str) -> String {
        use std::fmt::Write;
        let mut text = String::with_capacity(128);
        for piece in &self.pieces {
            match piece {
                Piece::Text(part) => text.push_str(part),
                // Writing to a String cannot fail.
                Piece::Id => drop(write!(text, "{id}")),
                Piece::Key => text.push_str(key),
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn increment(name: &str) -> Map<String, Value> {
        let mut body = Map::new();
        body.insert("name".into(), name.into());
        body
    }

    #[test]
    fn a_rendered_call_is_the_command_tally_proto_writes() {
        for keyed in [false, true] {
            let template = CallTemplate::new(Procedure::Increment, increment("hot-1"), keyed);
            let text = template.render(42, "c3-42");
            let command = Command::parse(&text).expect("a valid command");
            let expected = Command {
                id: 42,
                kind: CommandKind::Call(Call {
                    procedure: Procedure::Increment,
                    body: increment("hot-1"),
                    idempotency_key: keyed.then(|| IdempotencyKey::parse("c3-42").unwrap()),
                }),
            };
            assert_eq!(command, expected, "{text}");
        }
    }

    #[test]
    fn an_echoed_call_gives_its_id() {
        let template = CallTemplate::new(Procedure::Increment, increment("hot-1"), true);
        assert_eq!(command_id(&template.render(77, "k-77")), Some(77));
    }

    #[test]
    fn glances_read_updates_replies_and_presence() {
        let update = r#"{"name":"a","type":"increment","value":3,"previousValue":2,"version":17,"metadata":{"id":1,"name":"a","value":3,"createdAt":null,"updatedAt":null,"operationCount":17},"timestamp":"t"}"#;
        assert_eq!(glance(update), Glance::Update { version: 17 });
        let result = r#"{"type":"result","id":9,"result":{"value":1,"version":2}}"#;
        assert_eq!(glance(result), Glance::Reply { id: 9, ok: true });
        let error = r#"{"type":"error","id":4,"code":"rate_limited","message":"m","temporary":true,"retryAfterMs":5}"#;
        assert_eq!(glance(error), Glance::Reply { id: 4, ok: false });
        let presence = Frame::Presence {
            name: "a".into(),
            presence: tally_proto::Presence { watchers: 12, users: 3 },
        };
        assert_eq!(glance(&presence.to_json()), Glance::Presence { watchers: 12 });
        // The same reply with its fields in another order is still read, the slow way.
        let reordered = r#"{"id":9,"type":"result","result":{"value":1}}"#;
        assert_eq!(glance(reordered), Glance::Reply { id: 9, ok: true });
        assert_eq!(glance(r#"{"type":"reconnect","afterMs":5,"reason":"r"}"#), Glance::Other);
    }
}
