//! The wire framing of committed changes: each update serialized once, for its writer's answer,
//! every watcher, and every later replay from history.
//!
//! The counter actor hands over a [`Published`] change as data; its JSON is made here, on first
//! use, by whoever needs it first (the writer's answer or the first watcher), and then shared.
//! Two framings live side by side:
//! - **v1** (`/ws/counter/{name}` and RPC answers): the update as the seed sends it;
//! - **v2** (`/ws`): the same object with the counter's `name` in front, so one socket can carry
//!   many counters. The name goes in the shared bytes, not into a copy per socket.
//!
//! Who made a change (`by`) is shown only to principals with `admin` on the counter, so the
//! shared bytes leave it out and the admins' bytes append it: the one field after the others,
//! spliced in once per update (not once per admin) rather than serialized again. A conflated v2 update (a `maxRate`
//! subscription's jump to the latest state) is also a copy, with `"conflated":true` appended.

use std::sync::{Arc, OnceLock};

use axum::extract::ws::Utf8Bytes;
use tally_proto::{CounterName, OpKind};
#[cfg(test)]
use tally_proto::{Metadata, ServerMessage, Update};

use crate::clock;
use crate::store::HistoryRecord;

/// A committed update: what it did, and its JSON in each framing, made on first use.
#[derive(Debug)]
pub struct Published {
    /// The counter, shared by the updates of a batch or replay page.
    name: Arc<CounterName>,
    /// Its storage id.
    id: i64,
    /// When the counter was created, formatted once per batch or replay page and shared.
    created_at: Arc<str>,
    /// What the operation did.
    entry: HistoryRecord,
    /// The update's v1 JSON, without `by`.
    v1: OnceLock<Utf8Bytes>,
    /// The update's v2 JSON (with `name`), without `by`.
    v2: OnceLock<Utf8Bytes>,
    /// The v1 JSON with `by`, for admins. Made once and shared like the others: with open
    /// access every watcher is an admin, and a copy each cost ~2 000 instructions and an
    /// allocation per watcher per update (callgrind).
    v1_by: OnceLock<Utf8Bytes>,
    /// The v2 JSON with `by`, for admins' subscriptions that are not conflated.
    v2_by: OnceLock<Utf8Bytes>,
}

impl Published {
    /// The update that `entry` made to counter `name` (storage id `id`, created at
    /// `created_at`). Live broadcasts and replays from history both come through here, so a
    /// replayed update is byte for byte the one first broadcast.
    pub(crate) fn new(
        name: Arc<CounterName>,
        id: i64,
        created_at: Arc<str>,
        entry: HistoryRecord,
    ) -> Self {
        Self {
            name,
            id,
            created_at,
            entry,
            v1: OnceLock::new(),
            v2: OnceLock::new(),
            v1_by: OnceLock::new(),
            v2_by: OnceLock::new(),
        }
    }

    /// The counter's version after the update.
    pub fn version(&self) -> u64 {
        self.entry.version
    }

    /// The operation's type.
    pub fn kind(&self) -> OpKind {
        self.entry.kind
    }

    /// The value after the update.
    pub fn value(&self) -> i64 {
        self.entry.value
    }

    /// The committed operation.
    pub fn entry(&self) -> &HistoryRecord {
        &self.entry
    }

    /// The counter.
    pub fn name(&self) -> &CounterName {
        &self.name
    }

    /// The counter's name, storage id and creation time, which every update of the counter
    /// shares: a catch-up from history builds its updates from them.
    pub(crate) fn origin(&self) -> (&Arc<CounterName>, i64, &Arc<str>) {
        (&self.name, self.id, &self.created_at)
    }

    /// The v1 JSON, shared: the RPC's answer and a v1 watcher's message.
    pub fn json(&self) -> &Utf8Bytes {
        self.v1.get_or_init(|| Utf8Bytes::from(self.v1_text(None)))
    }

    /// The v1 JSON for a principal who may (`admin`) or may not see who made the update. The
    /// admins' bytes are written whole rather than spliced into the shared ones (a write's
    /// answer is the one use of them when nobody watches, and the shared bytes are then never
    /// needed), once per update, and shared by every admin watching.
    pub fn json_for(&self, admin: bool) -> Utf8Bytes {
        match (&self.entry.by, admin) {
            (Some(by), true) => {
                self.v1_by.get_or_init(|| Utf8Bytes::from(self.v1_text(Some(by)))).clone()
            }
            _ => self.json().clone(),
        }
    }

    /// The update as `serde_json` writes `ServerMessage::Update` (with `by` when given), byte
    /// for byte (a test holds it to that), written by hand into one allocation: this runs for
    /// every write, and serde's derived serializer with its growing buffer and the owned
    /// strings of `Update` cost several times more.
    fn v1_text(&self, by: Option<&str>) -> String {
        use std::fmt::Write;
        let entry = &self.entry;
        let name = self.name.as_str();
        let by_len = by.map_or(0, |by| by.len() + 10);
        let mut text = String::with_capacity(
            230 + name.len() + self.created_at.len() + 2 * clock::TIMESTAMP_LEN + by_len,
        );
        // Writing to a `String` cannot fail.
        let _ = write!(
            text,
            "{{\"type\":\"{}\",\"value\":{},\"previousValue\":{},\"version\":{},\"metadata\":{{\"id\":{},\"name\":",
            entry.kind.as_str(),
            entry.value,
            entry.previous_value,
            entry.version,
            self.id,
        );
        push_json_string(&mut text, name);
        let _ = write!(text, ",\"value\":{},\"createdAt\":", entry.value);
        push_json_string(&mut text, &self.created_at);
        text.push_str(",\"updatedAt\":\"");
        let timestamp_at = text.len();
        clock::push_ms(&mut text, entry.at_ms);
        let timestamp_end = text.len();
        let _ = write!(text, "\",\"operationCount\":{}}},\"timestamp\":\"", entry.version);
        // The same timestamp again: copied, not formatted twice.
        text.extend_from_within(timestamp_at..timestamp_end);
        text.push('"');
        // Derived from the entry itself, so a replay from history says it again.
        if entry.clamped() {
            text.push_str(",\"clamped\":true");
        }
        if let Some(by) = by {
            text.push_str(",\"by\":");
            push_json_string(&mut text, by);
        }
        text.push('}');
        text
    }

    /// The v2 JSON, shared: `{"name":…,` followed by the v1 object's fields.
    pub fn v2_json(&self) -> &Utf8Bytes {
        self.v2.get_or_init(|| {
            let v1 = self.json();
            let mut text = String::with_capacity(v1.len() + self.name.as_str().len() + 10);
            text.push_str("{\"name\":");
            push_json_string(&mut text, self.name.as_str());
            text.push(',');
            text.push_str(&v1[1..]);
            Utf8Bytes::from(text)
        })
    }

    /// The v2 JSON for one subscription: with `by` for admins, and marked `conflated` for a
    /// `maxRate` subscription's jump to the latest state.
    pub fn v2_json_for(&self, admin: bool, conflated: bool) -> Utf8Bytes {
        let shared = match self.entry.by.as_deref().filter(|_| admin) {
            Some(by) => self
                .v2_by
                .get_or_init(|| Utf8Bytes::from(append(self.v2_json(), "by", &json_string(by)))),
            None => self.v2_json(),
        };
        if conflated {
            Utf8Bytes::from(append(shared, "conflated", "true"))
        } else {
            shared.clone()
        }
    }

    /// The update as a value: what `v1_text` writes by hand (tests only).
    #[cfg(test)]
    fn update(&self) -> Update {
        let entry = &self.entry;
        let timestamp = clock::format_ms(entry.at_ms);
        Update {
            kind: entry.kind,
            value: entry.value,
            previous_value: entry.previous_value,
            version: entry.version,
            metadata: Metadata {
                id: Some(self.id),
                name: self.name.to_string(),
                value: entry.value,
                created_at: Some(self.created_at.to_string()),
                updated_at: Some(timestamp.clone()),
                operation_count: entry.version,
                ops_last_minute: None,
                bounds: None,
            },
            timestamp,
            clamped: entry.clamped(),
            by: None,
        }
    }
}

/// The version-2 reply to call `id`: `{"type":"result","id":…,"result":…}` around the RPC's
/// answer bytes as they are, so that a call's result is byte for byte the RPC's answer (and
/// a write's, the update every watcher gets).
pub(crate) fn result_frame(id: u64, answer: &[u8]) -> Utf8Bytes {
    match std::str::from_utf8(answer) {
        Ok(answer) => {
            Utf8Bytes::from(format!("{{\"type\":\"result\",\"id\":{id},\"result\":{answer}}}"))
        }
        // Answers are serialized JSON, always UTF-8; should one not be, it goes as a value.
        Err(_) => {
            let result = serde_json::from_slice(answer).unwrap_or(serde_json::Value::Null);
            Utf8Bytes::from(tally_proto::socket::Frame::Result { id, result }.to_json())
        }
    }
}

/// `json` (an object) with `"field": value` (already JSON) added as its last field.
fn append(json: &str, field: &str, value: &str) -> String {
    let body = json.strip_suffix('}').unwrap_or(json);
    format!("{body},\"{field}\":{value}}}")
}

fn json_string(text: &str) -> String {
    // A string always serializes.
    serde_json::to_string(text).unwrap_or_default()
}

/// Appends `text` as a JSON string, escaped as `serde_json` escapes it (which only escapes
/// control characters, `"` and `\\`); counter names and timestamps never need it.
fn push_json_string(out: &mut String, text: &str) {
    if text.bytes().any(|byte| byte < 0x20 || byte == b'"' || byte == b'\\') {
        out.push_str(&json_string(text));
    } else {
        out.push('"');
        out.push_str(text);
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_proto::socket::Frame;

    fn published() -> Published {
        let name = CounterName::parse("likes").unwrap();
        let entry = HistoryRecord {
            version: 3,
            kind: OpKind::Increment,
            amount: Some(2),
            previous_value: 1,
            value: 3,
            at_ms: 1_736_942_400_000,
            by: Some(Arc::from("al\"ice")),
        };
        Published::new(Arc::new(name), 7, Arc::from("2025-01-15T12:00:00.000Z"), entry)
    }

    #[test]
    fn an_admin_copy_is_the_update_serialized_with_by() {
        let published = published();
        assert!(!published.json().contains("by"), "{}", published.json());
        assert_eq!(&published.json_for(false), published.json());
        let ServerMessage::Update(mut update) = ServerMessage::from_json(published.json()).unwrap()
        else {
            panic!("an update")
        };
        update.by = Some("al\"ice".into());
        assert_eq!(published.json_for(true).as_str(), ServerMessage::Update(update).to_json());
        // Made once and shared by every admin, like the plain bytes.
        assert_eq!(published.json_for(true).as_ptr(), published.json_for(true).as_ptr());
        assert_eq!(
            published.v2_json_for(true, false).as_ptr(),
            published.v2_json_for(true, false).as_ptr()
        );
        assert!(published.v2_json_for(true, false).ends_with(",\"by\":\"al\\\"ice\"}"));
    }

    /// The hand-written v1 JSON is serde's, byte for byte, for every kind, with and without
    /// `by`, and with strings that need escaping.
    #[test]
    fn the_v1_json_is_what_serde_writes() {
        for (kind, amount, by) in [
            (OpKind::Increment, Some(2), Some("al\"ice\\\n")),
            (OpKind::Decrement, Some(1), Some("anonymous")),
            (OpKind::SetValue, None, None),
            (OpKind::Reset, None, Some("key:ops")),
        ] {
            let entry = HistoryRecord {
                version: u64::MAX,
                kind,
                amount,
                previous_value: i64::MIN,
                value: -7,
                at_ms: 1_736_942_401_007,
                by: by.map(Arc::from),
            };
            let name = Arc::new(CounterName::parse("a.b:c-d_e").unwrap());
            let published =
                Published::new(name, -3, Arc::from("2025-01-15T12:00:00.000Z\u{1}"), entry);
            let update = published.update();
            assert_eq!(published.json().as_str(), ServerMessage::Update(update.clone()).to_json());
            let with_by = Update { by: by.map(str::to_owned), ..update };
            assert_eq!(published.json_for(true).as_str(), ServerMessage::Update(with_by).to_json());
        }
    }

    #[test]
    fn a_result_frame_carries_the_answer_bytes_as_they_are() {
        let published = published();
        let frame = result_frame(12, published.json().as_bytes());
        assert!(frame.as_str().contains(published.json().as_str()));
        let Frame::Result { id: 12, result } = Frame::from_json(&frame).unwrap() else {
            panic!("a result: {frame}")
        };
        assert_eq!(result, serde_json::from_str::<serde_json::Value>(published.json()).unwrap());
    }

    #[test]
    fn v2_framing_is_v1_with_the_name_in_the_shared_bytes() {
        let published = published();
        let ServerMessage::Update(update) = ServerMessage::from_json(published.json()).unwrap()
        else {
            panic!("an update")
        };
        let plain = Frame::from_json(published.v2_json()).unwrap();
        assert_eq!(
            plain,
            Frame::Update { name: "likes".into(), update: update.clone(), conflated: false }
        );
        // The same bytes every time: made once, then shared.
        assert_eq!(published.v2_json().as_ptr(), published.v2_json().as_ptr());
        let Frame::Update { update: admin, conflated: true, .. } =
            Frame::from_json(&published.v2_json_for(true, true)).unwrap()
        else {
            panic!("a conflated update")
        };
        assert_eq!(admin.by.as_deref(), Some("al\"ice"));
        assert_eq!(Update { by: None, ..admin }, update);
    }
}
