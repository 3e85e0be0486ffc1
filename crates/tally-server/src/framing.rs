//! The wire framing of committed changes: each update serialized once, for its writer's answer,
//! every watcher, and every later replay from history.
//!
//! Who made a change (`by`) is shown only to principals with `admin` on the counter, so the
//! shared bytes leave it out and an admin's copy appends it: the one field after the others,
//! spliced into a copy rather than serialized again.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use tally_proto::{CounterName, Metadata, ServerMessage, Update};

use crate::clock;
use crate::store::HistoryRecord;

/// An update as sent: its version, its JSON without `by` (serialized once and shared by every
/// watcher and the writer's answer), and who made it.
#[derive(Debug, Clone)]
pub struct Published {
    /// The counter's version after the update.
    pub version: u64,
    /// The update's JSON text, without `by`.
    pub json: Utf8Bytes,
    /// Who made it, for the copies that admins get.
    pub by: Option<Arc<str>>,
}

impl Published {
    /// Serializes the update that `entry` made to counter `name` (storage id `id`, created at
    /// `created_at`, already formatted: callers format it once per batch or replay, not per
    /// update). Live broadcasts and replays from history both come through here, so a
    /// replayed update is byte for byte the one first broadcast.
    pub(crate) fn new(
        name: &CounterName,
        id: i64,
        created_at: &str,
        entry: &HistoryRecord,
    ) -> Self {
        let timestamp = clock::format_ms(entry.at_ms);
        let update = Update {
            kind: entry.kind,
            value: entry.value,
            previous_value: entry.previous_value,
            version: entry.version,
            metadata: Metadata {
                id: Some(id),
                name: name.to_string(),
                value: entry.value,
                created_at: Some(created_at.to_owned()),
                updated_at: Some(timestamp.clone()),
                operation_count: entry.version,
            },
            timestamp,
            by: None,
        };
        let json = ServerMessage::Update(update).to_json();
        Self { version: entry.version, json: Utf8Bytes::from(json), by: entry.by.clone() }
    }

    /// The JSON for a principal who may (`admin`) or may not see who made the update.
    pub fn json_for(&self, admin: bool) -> Utf8Bytes {
        match (&self.by, admin) {
            (Some(by), true) => Utf8Bytes::from(with_by(&self.json, by)),
            _ => self.json.clone(),
        }
    }
}

/// `json` (an object, `by` being its last field when present) with `"by": by` added.
fn with_by(json: &str, by: &str) -> String {
    let body = json.strip_suffix('}').unwrap_or(json);
    // A string always serializes.
    let by = serde_json::to_string(by).unwrap_or_default();
    format!("{body},\"by\":{by}}}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_proto::OpKind;

    #[test]
    fn an_admin_copy_is_the_update_serialized_with_by() {
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
        let published = Published::new(&name, 7, "2025-01-15T12:00:00.000Z", &entry);
        assert!(!published.json.contains("by"), "{}", published.json);
        assert_eq!(published.json_for(false), published.json);
        let ServerMessage::Update(mut update) = ServerMessage::from_json(&published.json).unwrap()
        else {
            panic!("an update")
        };
        update.by = Some("al\"ice".into());
        assert_eq!(published.json_for(true).as_str(), ServerMessage::Update(update).to_json());
    }
}
