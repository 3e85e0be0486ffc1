//! Latency summaries.

use std::time::Duration;

use hdrhistogram::Histogram;

/// A latency histogram in microseconds, 1 µs to 60 s.
pub(crate) fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; failure would be a programming error.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub(crate) fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, 60_000_000);
    // Clamped into the histogram's range above, so recording cannot fail.
    let _ = histogram.record(micros);
}

/// p50, p99 and max, in milliseconds.
pub(crate) fn percentiles_ms(histogram: &Histogram<u64>) -> (f64, f64, f64) {
    let ms = |micros: u64| micros as f64 / 1000.0;
    (
        ms(histogram.value_at_quantile(0.5)),
        ms(histogram.value_at_quantile(0.99)),
        ms(histogram.max()),
    )
}
