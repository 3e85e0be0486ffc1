//! Wall-clock time as the protocol writes it: milliseconds since the Unix epoch in storage,
//! RFC 3339 UTC with milliseconds on the wire.

use chrono::{DateTime, SecondsFormat, Utc};

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// `ms` as RFC 3339 UTC with milliseconds, e.g. `2025-01-15T12:00:00.000Z`.
pub(crate) fn format_ms(ms: i64) -> String {
    // Every i64 of milliseconds we store came from `now_ms`, well inside chrono's range; fall
    // back to the epoch rather than fail on a hand-edited row.
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_milliseconds() {
        assert_eq!(format_ms(1_736_942_400_000), "2025-01-15T12:00:00.000Z");
        assert_eq!(format_ms(1_736_942_401_007), "2025-01-15T12:00:01.007Z");
    }
}
