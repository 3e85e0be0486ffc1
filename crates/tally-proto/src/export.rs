//! The file `tally export` writes and `tally import` reads: JSON Lines, a header line, then one
//! line per counter with the history the store kept (docs/EXPORT.md).
//!
//! Only the shapes and the rules a line must meet live here; reading and writing databases is
//! the server crate's `store::export`. Timestamps are RFC 3339 UTC text as on the wire; turning
//! them into storage's milliseconds needs a calendar, so the reader checks them.

use serde::{Deserialize, Serialize};

use crate::bounds::Bounds;
use crate::limits::MAX_SAFE_INTEGER;
use crate::message::OpKind;
use crate::name::CounterName;

/// The header's `format`: what the file is.
pub const FORMAT: &str = "tally-export";
/// The header's `version`: the shape of the lines below it. A reader refuses other versions
/// rather than guess.
pub const FORMAT_VERSION: u32 = 1;

/// The first line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportHeader {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`FORMAT_VERSION`] for files this version writes.
    pub version: u32,
    /// The exported database's epoch. An import does not take it: the imported database is
    /// another history and gets an epoch of its own (PROTOCOL.md §5.2.1).
    pub source_epoch: String,
    /// When the export's read transaction began (RFC 3339 UTC).
    pub exported_at: String,
    /// How many counter lines follow: an import refuses a file with fewer or more (a truncated
    /// copy).
    pub counters: u64,
}

/// One counter and the history the store kept of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportedCounter {
    /// The counter's name.
    pub name: String,
    /// Its value.
    pub value: i64,
    /// The number of operations applied to it (the last history entry's version).
    pub version: u64,
    /// When its first operation was committed (RFC 3339 UTC).
    pub created_at: String,
    /// When its latest operation was committed (RFC 3339 UTC).
    pub updated_at: String,
    /// Its kept operations, oldest first, ending at `version`; `--history-limit` may have
    /// trimmed the older ones, so the first need not be version 1. Empty for a counter
    /// configured but never written (version 0).
    pub history: Vec<ExportedEntry>,
    /// Its bounds (`counter.configure`), when it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<Bounds>,
}

/// One operation of a counter's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportedEntry {
    /// The counter's version after it.
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
    /// When it was committed (RFC 3339 UTC).
    pub at: String,
    /// Who made it (a token's subject, `key:NAME` or `anonymous`); absent for operations
    /// stored before Tally recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl ExportHeader {
    /// Checks the header is one this version reads.
    ///
    /// # Errors
    /// What is wrong, in words, and what is allowed.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format is {:?}; allowed: {FORMAT:?} (the first line `tally export` writes)",
                self.format
            ));
        }
        if self.version != FORMAT_VERSION {
            return Err(format!(
                "format version is {}; this tally reads version {FORMAT_VERSION} only",
                self.version
            ));
        }
        Ok(())
    }
}

impl ExportedCounter {
    /// Checks the line is a history Tally could have written: a valid name, values in the safe
    /// range, and entries with consecutive versions ending at `version`, each starting from
    /// the value the one before left and arriving where its operation says.
    ///
    /// # Errors
    /// What is wrong, in words, naming the entry's version where one is at fault.
    pub fn check(&self) -> Result<CounterName, String> {
        let name = CounterName::parse(&self.name).map_err(|error| error.message)?;
        in_range("value", self.value)?;
        if let Some(bounds) = self.bounds {
            if let (Some(min), Some(max)) = (bounds.min, bounds.max)
                && min > max
            {
                return Err(format!("bounds min {min} is above max {max}; allowed: min <= max"));
            }
            for (field, bound) in [("min", bounds.min), ("max", bounds.max)] {
                if let Some(bound) = bound {
                    in_range(&format!("bounds {field}"), bound)?;
                }
            }
            if !bounds.contains(self.value) {
                return Err(format!(
                    "value {} is outside its bounds ({}); allowed: a value within them",
                    self.value,
                    bounds.describe()
                ));
            }
        }
        if self.version == 0 {
            // A counter configured but never written (its bounds may have been cleared since):
            // its row holds the bounds and nothing else.
            if self.value == 0 && self.history.is_empty() {
                return Ok(name);
            }
            return Err("version is 0 with a value or history; allowed: 1 or more (a counter written), or 0 with value 0 and no history (a counter configured but never written)".into());
        }
        let Some(last) = self.history.last() else {
            return Err(format!(
                "history is empty; allowed: the kept operations, at least the latest (version {})",
                self.version
            ));
        };
        if last.version != self.version {
            return Err(format!(
                "the last history entry is version {} but the counter's version is {}; allowed: history ending at the counter's version",
                last.version, self.version
            ));
        }
        if last.value != self.value {
            return Err(format!(
                "the last history entry (version {}) leaves the value at {} but the counter's value is {}",
                last.version, last.value, self.value
            ));
        }
        let mut before: Option<&ExportedEntry> = None;
        for entry in &self.history {
            entry.check()?;
            match before {
                Some(previous) if entry.version != previous.version + 1 => {
                    return Err(format!(
                        "history jumps from version {} to {}; allowed: consecutive versions",
                        previous.version, entry.version
                    ));
                }
                Some(previous) if entry.previous_value != previous.value => {
                    return Err(format!(
                        "version {} starts from {} but version {} left {}; allowed: each entry's previousValue is the value before it",
                        entry.version, entry.previous_value, previous.version, previous.value
                    ));
                }
                None if entry.version == 1 && entry.previous_value != 0 => {
                    return Err(format!(
                        "version 1 starts from {}; allowed: 0 (every counter starts at 0)",
                        entry.previous_value
                    ));
                }
                _ => {}
            }
            before = Some(entry);
        }
        Ok(name)
    }
}

impl ExportedEntry {
    /// Checks one entry on its own: its version, values, amount and the value its operation
    /// arrives at.
    fn check(&self) -> Result<(), String> {
        let at = |what: &str| format!("version {}: {what}", self.version);
        if self.version == 0 {
            return Err(at("versions start at 1"));
        }
        in_range("previousValue", self.previous_value).map_err(|error| at(&error))?;
        in_range("value", self.value).map_err(|error| at(&error))?;
        let expected = match (self.kind, self.amount) {
            (OpKind::Increment | OpKind::Decrement, Some(amount))
                if (1..=MAX_SAFE_INTEGER).contains(&amount) =>
            {
                if self.kind == OpKind::Increment {
                    self.previous_value.checked_add(amount)
                } else {
                    self.previous_value.checked_sub(amount)
                }
            }
            (OpKind::Increment | OpKind::Decrement, amount) => {
                return Err(at(&format!(
                    "{} has amount {amount:?}; allowed: a whole number from 1 to {MAX_SAFE_INTEGER}",
                    self.kind.as_str()
                )));
            }
            (OpKind::SetValue | OpKind::Reset, Some(_)) => {
                return Err(at(&format!(
                    "{} has an amount; allowed: amount only on increment and decrement",
                    self.kind.as_str()
                )));
            }
            (OpKind::SetValue, None) => Some(self.value),
            (OpKind::Reset, None) => Some(0),
        };
        // An increment or decrement that a clamping counter stopped at its bound went part of
        // the way (none, at the bound already): its value lies between the two.
        let stopped_short = |target: i64| {
            matches!(self.kind, OpKind::Increment | OpKind::Decrement)
                && self.previous_value.min(target) <= self.value
                && self.value <= self.previous_value.max(target)
        };
        if expected != Some(self.value) && !expected.is_some_and(stopped_short) {
            let operation = match self.amount {
                Some(amount) => format!("{} {amount}", self.kind.as_str()),
                None => self.kind.as_str().to_owned(),
            };
            return Err(at(&format!(
                "{operation} from {} cannot leave {}",
                self.previous_value, self.value
            )));
        }
        Ok(())
    }
}

fn in_range(field: &str, value: i64) -> Result<(), String> {
    if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{field} is {value}; allowed: -{MAX_SAFE_INTEGER} to {MAX_SAFE_INTEGER} (what JavaScript holds exactly)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: u64, kind: OpKind, amount: Option<i64>, from: i64, to: i64) -> ExportedEntry {
        ExportedEntry {
            version,
            kind,
            amount,
            previous_value: from,
            value: to,
            at: "2026-12-03T12:00:00.000Z".into(),
            by: None,
        }
    }

    fn counter(history: Vec<ExportedEntry>) -> ExportedCounter {
        let last = history.last().cloned().expect("an entry");
        ExportedCounter {
            name: "stock".into(),
            value: last.value,
            version: last.version,
            created_at: "2026-12-03T12:00:00.000Z".into(),
            updated_at: "2026-12-03T12:00:00.000Z".into(),
            history,
            bounds: None,
        }
    }

    #[test]
    fn bounds_hold_the_value_and_a_configured_counter_may_have_no_history() {
        let bounds = Bounds { min: Some(0), max: Some(10), clamp: true };
        // A clamped increment: asked for 5 from 8, stopped at 10.
        let mut clamped = counter(vec![
            entry(1, OpKind::SetValue, None, 0, 8),
            entry(2, OpKind::Increment, Some(5), 8, 10),
        ]);
        clamped.bounds = Some(bounds);
        assert!(clamped.check().is_ok(), "{:?}", clamped.check());
        clamped.bounds = Some(Bounds { max: Some(9), ..bounds });
        assert!(clamped.check().unwrap_err().contains("outside its bounds"));
        let configured = ExportedCounter {
            value: 0,
            version: 0,
            history: Vec::new(),
            bounds: Some(bounds),
            ..counter(vec![entry(1, OpKind::Reset, None, 0, 0)])
        };
        assert!(configured.check().is_ok(), "{:?}", configured.check());
        let cleared = ExportedCounter { bounds: None, ..configured.clone() };
        assert!(cleared.check().is_ok(), "bounds cleared before any write: {:?}", cleared.check());
        let valued = ExportedCounter { value: 1, bounds: None, ..configured };
        assert!(valued.check().unwrap_err().contains("version is 0"));
    }

    #[test]
    fn a_chained_history_passes_even_when_trimmed() {
        let full = counter(vec![
            entry(1, OpKind::Increment, Some(5), 0, 5),
            entry(2, OpKind::Decrement, Some(2), 5, 3),
            entry(3, OpKind::SetValue, None, 3, 40),
            entry(4, OpKind::Reset, None, 40, 0),
        ]);
        assert_eq!(full.check().map(|name| name.as_str().to_owned()), Ok("stock".into()));
        let trimmed = counter(full.history[2..].to_vec());
        assert!(trimmed.check().is_ok());
    }

    #[test]
    fn a_broken_history_is_refused_saying_where() {
        let cases = [
            (
                vec![
                    entry(1, OpKind::Increment, Some(1), 0, 1),
                    entry(3, OpKind::Reset, None, 1, 0),
                ],
                "history jumps from version 1 to 3",
            ),
            (
                vec![
                    entry(1, OpKind::Increment, Some(1), 0, 1),
                    entry(2, OpKind::Reset, None, 7, 0),
                ],
                "version 2 starts from 7 but version 1 left 1",
            ),
            (
                vec![entry(1, OpKind::Increment, Some(1), 0, 2)],
                "version 1: increment 1 from 0 cannot leave 2",
            ),
            (vec![entry(1, OpKind::Increment, None, 0, 0)], "version 1: increment has amount None"),
            (vec![entry(1, OpKind::SetValue, None, 3, 3)], "version 1 starts from 3"),
        ];
        for (history, expected) in cases {
            let error = counter(history).check().expect_err("refused");
            assert!(error.contains(expected), "{error:?} should say {expected:?}");
        }
        let mut wrong_value = counter(vec![entry(1, OpKind::Increment, Some(1), 0, 1)]);
        wrong_value.value = 2;
        assert!(wrong_value.check().expect_err("refused").contains("counter's value is 2"));
        let mut bad_name = wrong_value.clone();
        bad_name.name = "no spaces".into();
        assert!(bad_name.check().expect_err("refused").contains("allowed"));
    }

    #[test]
    fn the_line_shape_is_camel_case_with_type_and_at() {
        let line = serde_json::to_value(counter(vec![entry(1, OpKind::Increment, Some(1), 0, 1)]))
            .expect("json");
        assert_eq!(line["createdAt"], "2026-12-03T12:00:00.000Z");
        assert_eq!(line["history"][0]["type"], "increment");
        assert_eq!(line["history"][0]["previousValue"], 0);
        assert!(line["history"][0].get("by").is_none());
        let unknown = r#"{"format":"tally-export","version":1,"sourceEpoch":"0123456789abcdef","exportedAt":"x","counters":0,"extra":1}"#;
        assert!(serde_json::from_str::<ExportHeader>(unknown).is_err());
    }
}
