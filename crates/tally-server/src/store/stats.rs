//! What a store counts about its commits, for `/metrics`: how well group commit works.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Commit statistics. Clones share the same series.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// Transactions committed (each one fsync).
    pub transactions: Counter,
    /// Operations per transaction, all counters together.
    pub transaction_operations: Histogram,
    /// Time to write and sync one transaction.
    pub transaction_seconds: Histogram,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            transactions: Counter::default(),
            // 1 to about 16 000 operations.
            transaction_operations: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            // 20 µs to about 0.6 s.
            transaction_seconds: Histogram::new(exponential_buckets(0.000_02, 2.0, 16)),
        }
    }
}

impl StoreMetrics {
    /// Registers the series under `store_`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "store_transactions",
            "Transactions committed and synced (one fsync each)",
            self.transactions.clone(),
        );
        registry.register(
            "store_transaction_operations",
            "Operations in one committed transaction, all counters together (group commit)",
            self.transaction_operations.clone(),
        );
        registry.register(
            "store_transaction_seconds",
            "Time to write and sync one transaction",
            self.transaction_seconds.clone(),
        );
    }
}
