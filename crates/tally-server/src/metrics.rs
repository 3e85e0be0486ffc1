//! What the server counts, served at `GET /metrics` in Prometheus text format.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tally_proto::{ErrorCode, OpKind};

/// Labels an operation by its type.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OperationLabels {
    operation: &'static str,
}

/// Labels an error by its code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ErrorLabels {
    code: &'static str,
}

/// Labels a refused connection by the limit it hit.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LimitLabels {
    limit: &'static str,
}

/// Labels a socket call by how it ended: `ok`, or the error code it was answered with.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CallLabels {
    outcome: &'static str,
}

/// Labels a WebSocket close by its code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CloseLabels {
    code: u16,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

fn batch_histogram() -> Histogram {
    // 1 to 4096 operations.
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// Every metric, registered once. Cloning the handles inside is cheap (they are `Arc`s).
pub struct Metrics {
    registry: Registry,
    pub(crate) connections_open: Gauge,
    pub(crate) connections_refused: Family<LimitLabels, Counter>,
    pub(crate) websockets_open: Gauge,
    pub(crate) watchers: Gauge,
    pub(crate) counters_in_memory: Gauge,
    /// Counters the registry holds (a live actor, or watchers), set when metrics are read.
    pub(crate) counters_held: Gauge,
    pub(crate) counter_loads: Counter,
    pub(crate) batch_conflicts: Counter,
    pub(crate) remote_changes: Counter,
    pub(crate) counter_hibernations: Counter,
    /// Counters removed by `counter.delete` on this node.
    pub(crate) counter_deletes: Counter,
    pub(crate) operations: Family<OperationLabels, Counter>,
    pub(crate) operation_seconds: Family<OperationLabels, Histogram>,
    /// Each kind's two series, looked up in the families on its first operation only: a
    /// lookup takes the family's lock and hashes the labels, once per committed operation.
    /// Indexed by `kind as usize` (`KINDS_ARE_INDEXES` checks that this fits).
    operation_series: [OnceLock<(Counter, Histogram)>; OpKind::ALL.len()],
    pub(crate) batch_operations: Histogram,
    pub(crate) errors: Family<ErrorLabels, Counter>,
    pub(crate) websocket_closes: Family<CloseLabels, Counter>,
    /// Write-rate buckets held (principals that wrote in the last few seconds).
    pub(crate) rate_buckets: Gauge,
    /// Open version-2 sockets (`/ws`).
    pub(crate) sessions_open: Gauge,
    /// Subscriptions held by version-2 sockets.
    pub(crate) subscriptions: Gauge,
    /// Calls answered over version-2 sockets, by outcome.
    pub(crate) socket_calls: Family<CallLabels, Counter>,
    /// Lagging subscriptions caught up from history.
    pub(crate) catch_ups: Counter,
    /// Subscriptions started over with a `resync` snapshot push.
    pub(crate) resyncs: Counter,
    /// 1 while the store takes writes, 0 while it does not (as `/readyz` last found).
    pub(crate) store_ready: Gauge,
    /// 1 once the store stopped taking writes after a failed fsync, until a restart.
    pub(crate) store_stopped: Gauge,
    /// Replays from history running now (resumes and catch-ups).
    pub(crate) replays_running: Gauge,
    /// Replays not started because a bound was reached, by bound.
    pub(crate) replays_refused: Family<LimitLabels, Counter>,
    /// Bytes of updates sent by replays.
    pub(crate) replay_bytes: Counter,
    /// Times a replay waited for `--replay-bytes-per-second`.
    pub(crate) replay_waits: Counter,
    /// Sockets watching the server's figures (`watchServer`), at most one per socket.
    pub(crate) server_watchers: Gauge,
}

/// Every operation kind's discriminant is its position in `OpKind::ALL`.
const KINDS_ARE_INDEXES: () = {
    let mut index = 0;
    while index < OpKind::ALL.len() {
        assert!(OpKind::ALL[index] as usize == index);
        index += 1;
    }
};

impl Metrics {
    /// Registers every metric under the `tally_` prefix, with the store's own.
    pub(crate) fn with_store(store: &dyn crate::store::Store) -> Self {
        let mut metrics = Self::new();
        store.register_metrics(&mut metrics.registry);
        metrics
    }

    /// Registers every metric under the `tally_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tally");
        let metrics = Self {
            connections_open: Gauge::default(),
            connections_refused: Family::default(),
            websockets_open: Gauge::default(),
            watchers: Gauge::default(),
            counters_in_memory: Gauge::default(),
            counters_held: Gauge::default(),
            counter_loads: Counter::default(),
            batch_conflicts: Counter::default(),
            remote_changes: Counter::default(),
            counter_hibernations: Counter::default(),
            counter_deletes: Counter::default(),
            operations: Family::default(),
            operation_seconds: Family::new_with_constructor(latency_histogram),
            operation_series: Default::default(),
            batch_operations: batch_histogram(),
            errors: Family::default(),
            websocket_closes: Family::default(),
            rate_buckets: Gauge::default(),
            sessions_open: Gauge::default(),
            subscriptions: Gauge::default(),
            socket_calls: Family::default(),
            catch_ups: Counter::default(),
            resyncs: Counter::default(),
            store_ready: Gauge::default(),
            store_stopped: Gauge::default(),
            replays_running: Gauge::default(),
            replays_refused: Family::default(),
            replay_bytes: Counter::default(),
            replay_waits: Counter::default(),
            server_watchers: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections_open",
            "Open TCP connections (HTTP and WebSocket)",
            metrics.connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once because a limit was reached, by limit (total, per_ip)",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "websockets_open",
            "Open WebSocket connections",
            metrics.websockets_open.clone(),
        );
        registry.register(
            "watchers",
            "WebSockets subscribed to a counter",
            metrics.watchers.clone(),
        );
        registry.register(
            "counters_in_memory",
            "Counters with a live actor (not hibernated)",
            metrics.counters_in_memory.clone(),
        );
        registry.register(
            "counters_held",
            "Counters the server holds in memory: with a live actor, or watched (a read of a counter with neither holds nothing)",
            metrics.counters_held.clone(),
        );
        registry.register(
            "counter_loads",
            "Counters loaded from storage into memory",
            metrics.counter_loads.clone(),
        );
        registry.register(
            "batch_conflicts",
            "Batches another node's commit got ahead of, sent again (a cluster only)",
            metrics.batch_conflicts.clone(),
        );
        registry.register(
            "remote_changes",
            "Notifications of other nodes' commits taken by this node (a cluster only)",
            metrics.remote_changes.clone(),
        );
        registry.register(
            "counter_hibernations",
            "Counters that left memory after --idle-timeout",
            metrics.counter_hibernations.clone(),
        );
        registry.register(
            "counter_deletes",
            "Counters removed by counter.delete on this node",
            metrics.counter_deletes.clone(),
        );
        registry.register(
            "operations",
            "Operations committed, by type",
            metrics.operations.clone(),
        );
        registry.register(
            "operation_duration_seconds",
            "Time from an operation reaching its counter to its answer (commit included), by type",
            metrics.operation_seconds.clone(),
        );
        registry.register(
            "batch_operations",
            "Operations of one counter committed together in one batch",
            metrics.batch_operations.clone(),
        );
        registry.register("errors", "Errors answered, by code", metrics.errors.clone());
        registry.register(
            "websocket_closes",
            "WebSockets closed by the server, by close code",
            metrics.websocket_closes.clone(),
        );
        registry.register(
            "rate_buckets",
            "Write-rate buckets held: principals that wrote in the last few seconds (with --write-rate)",
            metrics.rate_buckets.clone(),
        );
        registry.register(
            "sessions_open",
            "Open version-2 sockets (GET /ws), also counted in websockets_open",
            metrics.sessions_open.clone(),
        );
        registry.register(
            "subscriptions",
            "Subscriptions held by version-2 sockets",
            metrics.subscriptions.clone(),
        );
        registry.register(
            "socket_calls",
            "Calls answered over version-2 sockets, by outcome (ok, or the error code)",
            metrics.socket_calls.clone(),
        );
        registry.register(
            "subscription_catch_ups",
            "Version-2 subscriptions that lagged past the ring and were caught up from history",
            metrics.catch_ups.clone(),
        );
        registry.register(
            "subscription_resyncs",
            "Version-2 subscriptions started over with a resync snapshot (history no longer reached)",
            metrics.resyncs.clone(),
        );
        registry.register(
            "store_ready",
            "1 while the store takes writes, 0 while it does not (what GET /readyz answers)",
            metrics.store_ready.clone(),
        );
        registry.register(
            "store_stopped",
            "1 once the store stopped taking writes after a failed fsync, until the server restarts",
            metrics.store_stopped.clone(),
        );
        registry.register(
            "replays_running",
            "Replays from history running now (resumes with since, and version-2 catch-ups)",
            metrics.replays_running.clone(),
        );
        registry.register(
            "replays_refused",
            "Replays answered a resync snapshot instead because a bound was reached, by bound (total, per_address)",
            metrics.replays_refused.clone(),
        );
        registry.register(
            "replay_bytes",
            "Bytes of updates sent by replays from history",
            metrics.replay_bytes.clone(),
        );
        registry.register(
            "replay_waits",
            "Times a replay waited to stay within --replay-bytes-per-second",
            metrics.replay_waits.clone(),
        );
        registry.register(
            "server_watchers",
            "Version-2 sockets watching the server's figures (watchServer, the admin page), counted once a second",
            metrics.server_watchers.clone(),
        );
        Self { registry, ..metrics }
    }

    /// Records what the store's readiness was found to be.
    pub(crate) fn store_readiness(&self, readiness: &crate::store::Readiness) {
        self.store_ready.set(i64::from(readiness.is_ready()));
        self.store_stopped.set(i64::from(matches!(readiness, crate::store::Readiness::Stopped(_))));
    }

    /// Counts a replay refused by `limit`.
    pub(crate) fn replay_refused(&self, limit: &'static str) {
        self.replays_refused.get_or_create(&LimitLabels { limit }).inc();
    }

    /// Counts a committed operation and how long it took.
    pub(crate) fn operation(&self, kind: OpKind, seconds: f64) {
        let () = KINDS_ARE_INDEXES;
        let (count, duration) = self.operation_series[kind as usize].get_or_init(|| {
            let labels = OperationLabels { operation: kind.as_str() };
            let count = self.operations.get_or_create(&labels).clone();
            (count, self.operation_seconds.get_or_create(&labels).clone())
        });
        count.inc();
        duration.observe(seconds);
    }

    /// Counts an error answered with `code`.
    pub(crate) fn error(&self, code: ErrorCode) {
        self.errors.get_or_create(&ErrorLabels { code: code.as_str() }).inc();
    }

    /// Counts a connection refused by `limit`.
    pub(crate) fn connection_refused(&self, limit: &'static str) {
        self.connections_refused.get_or_create(&LimitLabels { limit }).inc();
    }

    /// Counts a socket call answered with `outcome`: `ok`, or an error code.
    pub(crate) fn socket_call(&self, outcome: &'static str) {
        self.socket_calls.get_or_create(&CallLabels { outcome }).inc();
    }

    /// Counts a socket closed by the server with `code`.
    pub(crate) fn websocket_closed(&self, code: u16) {
        self.websocket_closes.get_or_create(&CloseLabels { code }).inc();
    }

    /// Every metric in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
