//! Rate-limited log lines for storage failures: at most one line per kind per second, each
//! saying how many lines of its kind were left out since the one before.
//!
//! A full disk under load fails every commit, every request and every socket call; logging each
//! would write thousands of lines a second, fill the log's disk too and hide the first line,
//! the one that says what happened. Hand-written rather than a crate: it is a map of a few
//! windows (the kinds are fixed in the code, so it stays that small), and `tracing` has no
//! limiter of its own; `governor`, which the server uses for write rates, counts no suppressed
//! events.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How often a line of one kind is written at most.
const EVERY: Duration = Duration::from_secs(1);

/// What a line is about: where it is written, and the error's kind (a code, or "").
pub(crate) type Kind = (&'static str, &'static str);

/// The windows of every kind of line seen.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    /// Per kind: when its last line was written, and how many were left out since. A `std`
    /// mutex: held for one lookup, never across an await.
    windows: Mutex<HashMap<Kind, Window>>,
}

#[derive(Debug)]
struct Window {
    written_at: Instant,
    suppressed: u64,
}

impl LogLimit {
    /// Whether a line of `kind` may be written now: `Some(n)` with the number of its lines left
    /// out since the last one written (write it with the line), or `None` (leave it out; it is
    /// counted and reported with the next line of its kind).
    pub(crate) fn allow(&self, kind: Kind) -> Option<u64> {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match windows.get_mut(&kind) {
            Some(window) if now.duration_since(window.written_at) < EVERY => {
                window.suppressed += 1;
                None
            }
            Some(window) => {
                window.written_at = now;
                Some(std::mem::take(&mut window.suppressed))
            }
            None => {
                windows.insert(kind, Window { written_at: now, suppressed: 0 });
                Some(0)
            }
        }
    }
}

/// The server's limiter for storage-failure lines (one for the process: the kinds are the
/// code's, and the log is the process's).
pub(crate) fn storage() -> &'static LogLimit {
    static STORAGE: LazyLock<LogLimit> = LazyLock::new(LogLimit::default);
    &STORAGE
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: Kind = ("commit failed", "");

    #[tokio::test(start_paused = true)]
    async fn one_line_per_kind_per_second_with_the_count_of_those_left_out() {
        let limit = LogLimit::default();
        assert_eq!(limit.allow(COMMIT), Some(0), "the first line is written");
        for _ in 0..999 {
            assert_eq!(limit.allow(COMMIT), None, "within the second: left out");
        }
        // Another kind has its own window.
        assert_eq!(limit.allow(("request failed", "unavailable")), Some(0));
        assert_eq!(limit.allow(("request failed", "internal")), Some(0));

        tokio::time::advance(EVERY - Duration::from_millis(1)).await;
        assert_eq!(limit.allow(COMMIT), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(limit.allow(COMMIT), Some(1000), "says how many were left out");
        assert_eq!(limit.allow(COMMIT), None);

        // After a quiet spell, the next line is written at once, with what was left out.
        tokio::time::advance(EVERY * 10).await;
        assert_eq!(limit.allow(COMMIT), Some(1));
        tokio::time::advance(EVERY).await;
        assert_eq!(limit.allow(COMMIT), Some(0));
    }
}
