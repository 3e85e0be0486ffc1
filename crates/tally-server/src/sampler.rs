//! The server's own figures for the admin page (`watchServer` on the version-2 socket): one
//! sampler per server reads the metrics once a second and publishes what it computed on a
//! `tokio::sync::watch` channel, which every socket that asked reads.
//!
//! The figures come from the text `/metrics` serves ([`Metrics::encode`]), parsed back: so
//! the page shows what Prometheus would scrape, from one source, and no write path pays for
//! a second set of counters. Rates are the change of a counter over the last second; the
//! percentiles and the mean commit time are over the last 10 seconds, from the change of the
//! histograms' cumulative buckets over that time (a percentile is the upper bound of the
//! bucket it falls in, as Prometheus's `histogram_quantile` would find before interpolating).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tally_proto::socket::ServerStats;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::metrics::Metrics;
use crate::state::AppState;

/// How often the figures are sampled and pushed.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);
/// How many samples back the percentiles and the mean commit time look: 10 seconds.
const WINDOW: usize = 10;

/// What the sampler publishes: `None` until its first sample.
pub(crate) type Feed = watch::Receiver<Option<Arc<ServerStats>>>;

/// The sampler's side of the channel, kept in [`AppState`] so sockets can subscribe.
pub(crate) struct StatsChannel {
    sender: watch::Sender<Option<Arc<ServerStats>>>,
}

impl StatsChannel {
    pub(crate) fn new() -> Self {
        Self { sender: watch::Sender::new(None) }
    }

    /// A receiver for one socket, which sees the latest sample and every later one.
    pub(crate) fn subscribe(&self) -> Feed {
        self.sender.subscribe()
    }

    /// How many sockets watch the server now.
    pub(crate) fn watchers(&self) -> usize {
        self.sender.receiver_count()
    }
}

/// Starts the sampler on `state` until `stop`.
pub(crate) fn spawn(state: &AppState, stop: CancellationToken) {
    let state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut readings: VecDeque<Reading> = VecDeque::with_capacity(WINDOW + 1);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let watchers = state.server_stats.watchers();
            state.metrics.server_watchers.set(i64::try_from(watchers).unwrap_or(i64::MAX));
            // Read even while nobody watches (about 0.1 ms a second), so that a new watcher's
            // first push already has its rates and percentiles.
            readings.push_back(Reading::take(&state.metrics));
            if readings.len() > WINDOW + 1 {
                readings.pop_front();
            }
            if watchers == 0 {
                // Nobody watches: the last sample is dropped rather than kept going stale, so
                // that the next watcher's reply is the figures of its own moment.
                if state.server_stats.sender.borrow().is_some() {
                    state.server_stats.sender.send_replace(None);
                }
                continue;
            }
            // Asked only while someone watches: it probes the store when nothing was
            // committed in the last half second.
            let readiness = state.readiness().await;
            let stats = compute(&readings, readiness);
            state.server_stats.sender.send_replace(Some(Arc::new(stats)));
        }
    });
}

/// The figures as they are now, without rates or percentiles (one reading gives none): the
/// reply to a `watchServer` before the sampler's first sample.
pub(crate) async fn now(state: &AppState) -> ServerStats {
    let readings: VecDeque<Reading> = [Reading::take(&state.metrics)].into();
    compute(&readings, state.readiness().await)
}

/// One reading of the metrics the figures need.
struct Reading {
    at: Instant,
    /// Sums over every label set, by series name.
    values: HashMap<String, f64>,
    /// Cumulative bucket counts summed over every label set, by series name, then by
    /// upper bound (as bits of a positive `f64`, which order as the numbers do).
    buckets: HashMap<String, BTreeMap<u64, f64>>,
}

const OPERATIONS: &str = "tally_operations_total";
const OPERATION_SECONDS: &str = "tally_operation_duration_seconds";
const TRANSACTIONS: &str = "tally_store_transactions_total";
const TRANSACTION_SECONDS: &str = "tally_store_transaction_seconds";
const TRANSACTION_COUNT: &str = "tally_store_transaction_seconds_count";
const TRANSACTION_SUM: &str = "tally_store_transaction_seconds_sum";

impl Reading {
    fn take(metrics: &Metrics) -> Self {
        Self::parse(&metrics.encode(), Instant::now())
    }

    /// Reads the OpenMetrics text `text`: `name{labels} value` lines, `#` lines skipped.
    fn parse(text: &str, at: Instant) -> Self {
        let mut reading = Reading { at, values: HashMap::new(), buckets: HashMap::new() };
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels),
                None => (series, ""),
            };
            if let Some(histogram) = name.strip_suffix("_bucket") {
                let Some(bound) = label(labels, "le").and_then(|le| le.parse::<f64>().ok()) else {
                    continue;
                };
                // A name is allocated once per reading, not once per line of its series.
                if !reading.buckets.contains_key(histogram) {
                    reading.buckets.insert(histogram.to_owned(), BTreeMap::new());
                }
                if let Some(buckets) = reading.buckets.get_mut(histogram) {
                    *buckets.entry(bound.to_bits()).or_default() += value;
                }
            } else if let Some(total) = reading.values.get_mut(name) {
                *total += value;
            } else {
                reading.values.insert(name.to_owned(), value);
            }
        }
        reading
    }

    fn value(&self, name: &str) -> f64 {
        self.values.get(name).copied().unwrap_or(0.0)
    }
}

/// The value of label `key` in `key="value",…` (Tally's label values hold no quotes).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (found, value) = pair.split_once('=')?;
        (found == key).then(|| value.trim_end_matches('}').trim_matches('"'))
    })
}

/// The figures from the readings, oldest first; the last one is now.
fn compute(readings: &VecDeque<Reading>, readiness: tally_proto::Readiness) -> ServerStats {
    // The caller pushed a reading just before.
    let now = readings.back().expect("a reading was just taken");
    let last_second = readings.len().checked_sub(2).map(|index| &readings[index]);
    let window_start = readings.front().filter(|first| first.at < now.at);
    let rate = |name: &str| {
        last_second.map_or(0.0, |before| {
            let seconds = now.at.duration_since(before.at).as_secs_f64();
            if seconds > 0.0 {
                (now.value(name) - before.value(name)).max(0.0) / seconds
            } else {
                0.0
            }
        })
    };
    let p99_ms = |name: &str| window_start.and_then(|before| percentile(before, now, name, 0.99));
    let commit_ms = window_start.and_then(|before| {
        let count = now.value(TRANSACTION_COUNT) - before.value(TRANSACTION_COUNT);
        let sum = now.value(TRANSACTION_SUM) - before.value(TRANSACTION_SUM);
        (count > 0.0).then(|| round_ms(sum / count * 1000.0))
    });
    let gauge = |name: &str| now.value(name).max(0.0) as u64;
    ServerStats {
        at: clock::format_ms(clock::now_ms()),
        connections: gauge("tally_connections_open"),
        websockets: gauge("tally_websockets_open"),
        watchers: gauge("tally_watchers") + gauge("tally_subscriptions"),
        counters_in_memory: gauge("tally_counters_in_memory"),
        ops_per_second: round_ms(rate(OPERATIONS)),
        p99_ms: p99_ms(OPERATION_SECONDS),
        commits_per_second: round_ms(rate(TRANSACTIONS)),
        commit_ms,
        commit_p99_ms: p99_ms(TRANSACTION_SECONDS),
        ready: readiness.ready,
        ready_reason: readiness.reason,
    }
}

/// The `quantile` of histogram `name` over the observations made between `before` and `now`,
/// in milliseconds: the upper bound of the bucket where it falls (the largest finite bound
/// when it falls past them all); `None` without observations.
fn percentile(before: &Reading, now: &Reading, name: &str, quantile: f64) -> Option<f64> {
    let now_buckets = now.buckets.get(name)?;
    let before_buckets = before.buckets.get(name);
    let delta = |bits: &u64, count: f64| {
        count - before_buckets.and_then(|buckets| buckets.get(bits)).copied().unwrap_or(0.0)
    };
    let total = now_buckets.iter().next_back().map(|(bits, count)| delta(bits, *count))?;
    if total <= 0.0 {
        return None;
    }
    let largest_finite =
        now_buckets.keys().map(|bits| f64::from_bits(*bits)).rfind(|bound| bound.is_finite());
    let wanted = total * quantile;
    let bound = now_buckets
        .iter()
        .find(|(bits, count)| delta(bits, **count) >= wanted)
        .map(|(bits, _)| f64::from_bits(*bits))
        .filter(|bound| bound.is_finite())
        .or(largest_finite)?;
    Some(round_ms(bound * 1000.0))
}

/// Three decimals: the figures are for people, and floats print their noise otherwise.
fn round_ms(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# TYPE tally_operations counter
tally_operations_total{operation=\"increment\"} 10
tally_operations_total{operation=\"reset\"} 2
tally_operation_duration_seconds_bucket{le=\"0.001\",operation=\"increment\"} 10
tally_operation_duration_seconds_bucket{le=\"0.002\",operation=\"increment\"} 10
tally_operation_duration_seconds_bucket{le=\"+Inf\",operation=\"increment\"} 10
tally_connections_open 3
";

    const AFTER: &str = "\
tally_operations_total{operation=\"increment\"} 110
tally_operations_total{operation=\"reset\"} 2
tally_operation_duration_seconds_bucket{le=\"0.001\",operation=\"increment\"} 100
tally_operation_duration_seconds_bucket{le=\"0.002\",operation=\"increment\"} 109
tally_operation_duration_seconds_bucket{le=\"+Inf\",operation=\"increment\"} 110
tally_store_transaction_seconds_sum 0.5
tally_store_transaction_seconds_count 100
tally_connections_open 4
# EOF
";

    fn ready() -> tally_proto::Readiness {
        tally_proto::Readiness { ready: true, reason: None, restart_required: false }
    }

    #[test]
    fn rates_and_percentiles_come_from_the_change_between_readings() {
        let start = Instant::now();
        let readings: VecDeque<Reading> =
            [Reading::parse(BEFORE, start), Reading::parse(AFTER, start + Duration::from_secs(2))]
                .into();
        let stats = compute(&readings, ready());
        assert_eq!(stats.ops_per_second, 50.0, "{stats:?}");
        assert_eq!(stats.connections, 4, "{stats:?}");
        // 100 new observations: 90 under 1 ms, 9 more under 2 ms, one past them all; the
        // 99th falls in the 2 ms bucket.
        assert_eq!(stats.p99_ms, Some(2.0), "{stats:?}");
        assert_eq!(stats.commit_ms, Some(5.0), "{stats:?}");
        assert!(stats.ready);
    }

    #[test]
    fn one_reading_gives_no_rate_and_no_percentile() {
        let readings: VecDeque<Reading> = [Reading::parse(AFTER, Instant::now())].into();
        let stats = compute(&readings, ready());
        assert_eq!((stats.ops_per_second, stats.p99_ms, stats.commit_ms), (0.0, None, None));
        assert_eq!(stats.connections, 4);
    }

    #[test]
    fn the_real_metrics_text_parses() {
        let metrics = Metrics::new();
        metrics.operation(tally_proto::OpKind::Increment, 0.000_3);
        metrics.connections_open.set(2);
        let reading = Reading::take(&metrics);
        assert_eq!(reading.value(OPERATIONS), 1.0, "{}", metrics.encode());
        assert_eq!(reading.value("tally_connections_open"), 2.0);
        let buckets = &reading.buckets[OPERATION_SECONDS];
        assert_eq!(buckets.values().copied().fold(0.0, f64::max), 1.0);
    }
}
