//! Printing results: text for people by default, one JSON object per line with `--json`.

use std::io::Write;

use chrono::{DateTime, Local};
use serde::Serialize;
use tally_proto::{Entry, Metadata, OpKind, Presence, Update};

use crate::commands::CliError;

/// Writes lines to stdout; a reader that went away (`| head`) ends the command quietly.
pub(crate) struct Printer {
    pub(crate) json: bool,
}

impl Printer {
    pub(crate) fn new(json: bool) -> Self {
        Self { json }
    }

    /// Prints one line (flushed at once, so `watch` output streams through pipes).
    pub(crate) fn line(&mut self, text: &str) -> Result<(), CliError> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}").and_then(|()| stdout.flush()).map_err(|error| {
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                CliError::BrokenPipe
            } else {
                CliError::Output(error)
            }
        })
    }

    /// Writes `bytes` as they are.
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(bytes).and_then(|()| stdout.flush()).map_err(write_error)
    }

    /// Prints `value` as one line of JSON.
    pub(crate) fn json_line<T: Serialize>(&mut self, value: &T) -> Result<(), CliError> {
        let text = serde_json::to_string(value).map_err(|error| CliError::Output(error.into()))?;
        self.line(&text)
    }
}

fn write_error(error: std::io::Error) -> CliError {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        CliError::BrokenPipe
    } else {
        CliError::Output(error)
    }
}

/// A server timestamp in local time, e.g. `2026-11-25 21:04:05.123`; as given if unreadable.
pub(crate) fn local_time(timestamp: &str) -> String {
    DateTime::parse_from_rfc3339(timestamp).map_or_else(
        |_| timestamp.to_owned(),
        |time| time.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
    )
}

/// The time of day only, for live lines.
pub(crate) fn local_clock(timestamp: &str) -> String {
    DateTime::parse_from_rfc3339(timestamp).map_or_else(
        |_| timestamp.to_owned(),
        |time| time.with_timezone(&Local).format("%H:%M:%S%.3f").to_string(),
    )
}

/// What an operation did, e.g. `increment +5`, `decrement -2`, `setValue`, `reset`.
pub(crate) fn change(kind: OpKind, amount: Option<i64>) -> String {
    match (kind, amount) {
        (OpKind::Increment, Some(amount)) => format!("increment +{amount}"),
        (OpKind::Decrement, Some(amount)) => format!("decrement -{amount}"),
        (kind, _) => kind.as_str().to_owned(),
    }
}

/// `likes: 41 → 42  (increment +1, version 7)`
pub(crate) fn update_line(update: &Update) -> String {
    let amount = (update.value - update.previous_value).checked_abs();
    format!(
        "{}: {} → {}  ({}, version {}){}",
        update.metadata.name,
        update.previous_value,
        update.value,
        change(update.kind, amount),
        update.version,
        if update.clamped { "  clamped at a bound" } else { "" }
    )
}

/// The metadata of `get`, for people: the value, its version and times, and its bounds when it
/// has any.
pub(crate) fn metadata_lines(metadata: &Metadata) -> Vec<String> {
    let mut lines = value_lines(metadata);
    if let Some(bounds) = metadata.bounds.filter(|bounds| bounds.is_set()) {
        let mode =
            if bounds.clamp { "writes past one stop at it" } else { "writes past one are refused" };
        lines.push(format!("  bounds: {} ({mode})", bounds.describe()));
    }
    lines
}

fn value_lines(metadata: &Metadata) -> Vec<String> {
    match (&metadata.created_at, &metadata.updated_at) {
        (Some(created), Some(updated)) => vec![
            format!("{}: {}", metadata.name, metadata.value),
            format!(
                "  version {}, created {}, updated {}{}",
                metadata.operation_count,
                local_time(created),
                local_time(updated),
                metadata
                    .ops_last_minute
                    .map(|count| format!(", {count} in the last minute"))
                    .unwrap_or_default(),
            ),
        ],
        _ => vec![format!("{}: {}  (never written)", metadata.name, metadata.value)],
    }
}

/// History as an aligned table, newest first.
pub(crate) fn history_table(entries: &[Entry]) -> Vec<String> {
    let rows: Vec<[String; 4]> = entries
        .iter()
        .map(|entry| {
            [
                entry.version.to_string(),
                local_time(&entry.timestamp),
                change(entry.kind, entry.amount),
                format!("{} → {}", entry.previous_value, entry.value),
            ]
        })
        .collect();
    aligned(["VERSION", "TIME", "CHANGE", "VALUE"], &rows, true)
}

/// Listed counters as an aligned table, in name order.
pub(crate) fn list_table(counters: &[tally_client::ListedCounter]) -> Vec<String> {
    let rows: Vec<[String; 5]> = counters
        .iter()
        .map(|counter| {
            [
                counter.name.clone(),
                format!("{} (v{})", counter.value, counter.version),
                counter.watchers.to_string(),
                counter.ops_last_minute.to_string(),
                local_time(&counter.updated_at),
            ]
        })
        .collect();
    aligned(["NAME", "VALUE", "WATCHERS", "OPS/MIN", "UPDATED"], &rows, false)
}

/// `header` and `rows` as lines of columns two spaces apart, each as wide as its widest cell;
/// the first column right-aligned (numbers) when `numeric_first`, the last one unpadded.
pub(crate) fn aligned<const N: usize>(
    header: [&str; N],
    rows: &[[String; N]],
    numeric_first: bool,
) -> Vec<String> {
    let header = header.map(str::to_owned);
    let mut widths = [0; N];
    for row in std::iter::once(&header).chain(rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    std::iter::once(&header)
        .chain(rows)
        .map(|row| {
            let cells = row.iter().zip(widths).enumerate().map(|(column, (cell, width))| {
                if column + 1 == N {
                    cell.clone()
                } else if column == 0 && numeric_first {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            });
            cells.collect::<Vec<_>>().join("  ")
        })
        .collect()
}

/// A watched change of one of several counters: `21:04:05.123  likes  increment +2  0 → 2  (version 1)`.
pub(crate) fn named_watch_line(name: &str, update: &Update) -> String {
    let line = watch_line(update);
    match line.split_once("  ") {
        Some((clock, rest)) => format!("{clock}  {name}  {rest}"),
        None => format!("{name}  {line}"),
    }
}

/// How many watch a counter: `likes: 3 watchers, 2 users`.
pub(crate) fn presence_line(name: &str, presence: &Presence) -> String {
    let plural = |count: u64, word: &str| {
        if count == 1 { format!("{count} {word}") } else { format!("{count} {word}s") }
    };
    format!("{name}: {}, {}", plural(presence.watchers, "watcher"), plural(presence.users, "user"))
}

/// One live change for `watch`: `21:04:05.123  increment +1  41 → 42  (version 7)`
pub(crate) fn watch_line(update: &Update) -> String {
    let amount = (update.value - update.previous_value).checked_abs();
    format!(
        "{}  {}  {} → {}  (version {})",
        local_clock(&update.timestamp),
        change(update.kind, amount),
        update.previous_value,
        update.value,
        update.version
    )
}
