//! Wall-clock time as the protocol writes it: milliseconds since the Unix epoch in storage,
//! RFC 3339 UTC with milliseconds on the wire.

use chrono::{DateTime, SecondsFormat, Utc};

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// `ms` as RFC 3339 UTC with milliseconds, e.g. `2025-01-15T12:00:00.000Z`.
pub(crate) fn format_ms(ms: i64) -> String {
    let mut text = String::with_capacity(TIMESTAMP_LEN);
    push_ms(&mut text, ms);
    text
}

/// The length of a timestamp of years 0 to 9999, which is every one `now_ms` gives.
pub(crate) const TIMESTAMP_LEN: usize = "2025-01-15T12:00:00.000Z".len();

/// Appends `ms` as [`format_ms`] writes it. Every update's answer carries two timestamps, so
/// they are written here by hand: chrono's formatter goes through `fmt` and an allocation per
/// call, which was a tenth of the write path's instructions.
pub(crate) fn push_ms(text: &mut String, ms: i64) {
    const MS_PER_DAY: i64 = 86_400_000;
    let days = ms.div_euclid(MS_PER_DAY);
    let ms_of_day = ms.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        // Never from `now_ms`; only a hand-edited row gets here. chrono writes other years
        // (with a sign, or the epoch if out of its range) and is the reference.
        let formatted = DateTime::from_timestamp_millis(ms)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        text.push_str(&formatted);
        return;
    }
    let (hour, minute) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (second, milli) = (ms_of_day / 1000 % 60, ms_of_day % 1000);
    let mut buffer = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut value: i64| {
        for index in (at..at + width).rev() {
            // `value % 10` is a digit: the fields are non-negative and fit their widths.
            buffer[index] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, hour);
    put(14, 2, minute);
    put(17, 2, second);
    put(20, 3, milli);
    // Only ASCII digits and separators were written.
    text.push_str(std::str::from_utf8(&buffer).unwrap_or_default());
}

/// Year, month (1..=12) and day (1..=31) of `days` since 1970-01-01 in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_milliseconds() {
        assert_eq!(format_ms(1_736_942_400_000), "2025-01-15T12:00:00.000Z");
        assert_eq!(format_ms(1_736_942_401_007), "2025-01-15T12:00:01.007Z");
    }

    /// The hand-written formatter writes what chrono writes, across leap years, centuries,
    /// the epoch, and the years outside 0..=9999 it leaves to chrono.
    #[test]
    fn formats_as_chrono_does() {
        let chrono = |ms: i64| {
            DateTime::from_timestamp_millis(ms)
                .unwrap_or_default()
                .to_rfc3339_opts(SecondsFormat::Millis, true)
        };
        let mut samples = vec![0, -1, 1, 951_782_400_000, 4_107_542_399_999, -62_167_219_200_000];
        samples.extend([-62_167_219_200_001, 253_402_300_799_999, 253_402_300_800_000, i64::MAX]);
        // Every day of 1968..2104 at a varying time of day, and a spread of larger steps.
        let mut ms = -63_158_400_000;
        while ms < 4_260_000_000_000 {
            samples.push(ms);
            ms += 86_400_000 + 3_723_456;
        }
        let mut ms = -70_000_000_000_000_i64;
        while ms < 260_000_000_000_000 {
            samples.push(ms);
            ms += 987_654_321_987;
        }
        for ms in samples {
            assert_eq!(format_ms(ms), chrono(ms), "{ms}");
        }
    }
}
