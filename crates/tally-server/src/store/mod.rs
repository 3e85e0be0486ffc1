//! Durable storage of counters and their history, behind one interface.
//!
//! The server talks to a [`Store`]; [`SqliteStore`] is the embedded default and a PostgreSQL
//! store will sit beside it. Only this module speaks SQL.
//!
//! Writes arrive as [`AppendBatch`]es: one or more operations on one counter that are committed
//! together. A store may (and the SQLite store does) commit the batches of many counters in one
//! transaction, so that one fsync covers every write that was waiting (group commit).

mod sqlite;
mod stats;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use tally_proto::{CounterName, OpKind};

pub use sqlite::{SqliteOptions, SqliteStore};
pub use stats::StoreMetrics;

/// A counter as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterRecord {
    /// The storage id.
    pub id: i64,
    /// The current value.
    pub value: i64,
    /// The number of operations applied so far.
    pub version: u64,
    /// When the first operation was committed, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// When the latest operation was committed, in milliseconds since the Unix epoch.
    pub updated_at_ms: i64,
}

/// One operation in a counter's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRecord {
    /// The counter's version after this operation.
    pub version: u64,
    /// Which operation.
    pub kind: OpKind,
    /// The amount of an increment or decrement.
    pub amount: Option<i64>,
    /// The value before.
    pub previous_value: i64,
    /// The value after.
    pub value: i64,
    /// When it was applied, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Who made it: a token's subject, `key:NAME` or `anonymous`; `None` for operations stored
    /// before Tally recorded it.
    pub by: Option<Arc<str>>,
}

/// An API key as stored: never the secret itself, only its SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The public part of the key, which finds it.
    pub id: String,
    /// Its name (unique, also among revoked keys).
    pub name: String,
    /// SHA-256 of the secret part.
    pub secret_hash: [u8; 32],
    /// Its grants, as written.
    pub grants: Vec<String>,
    /// When it was created, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<i64>,
}

/// Operations on one counter, to be committed together after the counter's `expected_version`.
#[derive(Debug, Clone)]
pub struct AppendBatch {
    /// The counter.
    pub name: CounterName,
    /// The version the stored counter must have now (0 for a counter never written); a store
    /// refuses the batch if it differs, so a bug can never write a gap or a fork.
    pub expected_version: u64,
    /// The operations, in version order, starting at `expected_version + 1`.
    pub entries: Vec<HistoryRecord>,
}

/// A queued batch: resolves once it is committed (to the counter's storage id) or has failed.
pub struct Committing {
    answer: tokio::sync::oneshot::Receiver<Result<i64, StoreError>>,
}

impl Committing {
    /// A batch answered on `answer`.
    pub fn new(answer: tokio::sync::oneshot::Receiver<Result<i64, StoreError>>) -> Self {
        Self { answer }
    }
}

impl std::future::Future for Committing {
    type Output = Result<i64, StoreError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        // A dropped sender means the store went away without answering.
        std::pin::Pin::new(&mut self.answer)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(StoreError::Closed)))
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened or prepared.
    #[error("cannot open the database at {path}: {reason}")]
    Open {
        /// Where.
        path: PathBuf,
        /// What went wrong, in words.
        reason: String,
    },
    /// The stored counter's version is not the one the batch was built on.
    #[error("counter {name} is at version {found} in storage, not {expected}: batch refused")]
    Conflict {
        /// The counter.
        name: String,
        /// The version the batch expected.
        expected: u64,
        /// The version found.
        found: u64,
    },
    /// A transaction could not be committed; nothing of it is stored.
    #[error("commit failed: {reason}")]
    WriteFailed {
        /// What the database said.
        reason: String,
    },
    /// An error from SQLite.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The store was closed (the server is shutting down).
    #[error("the store is closed")]
    Closed,
    /// An API key with this name exists already.
    #[error("an API key named {0:?} exists already")]
    KeyExists(String),
}

impl StoreError {
    /// What went wrong, in words, without repeating "commit failed" when this already is a
    /// failed commit (the reason is handed on to every operation of a failed batch).
    pub fn reason(&self) -> String {
        match self {
            StoreError::WriteFailed { reason } => reason.clone(),
            other => other.to_string(),
        }
    }
}

/// Durable storage of counters and their history.
///
/// Implementations are shared by every counter actor, so every method takes `&self`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The stored counter named `name`, or `None` if it was never written.
    ///
    /// # Errors
    /// When storage cannot be read.
    async fn load(&self, name: &CounterName) -> Result<Option<CounterRecord>, StoreError>;

    /// Queues `batch` to be committed durably (on disk, synced) after every batch queued before
    /// it, and returns as soon as it is queued. The returned [`Committing`] resolves to the
    /// counter's storage id once the batch is committed. A counter may have several batches
    /// queued at once (each built on the one before), so one fsync can cover all of them.
    ///
    /// # Errors
    /// When the store is closed. The commit itself fails with [`StoreError::Conflict`] when the
    /// stored version is not `batch.expected_version` (so every batch queued after a failed one
    /// fails too); any other error means nothing of the batch is stored.
    async fn append(&self, batch: AppendBatch) -> Result<Committing, StoreError>;

    /// Up to `limit` history entries of `name` with a version below `before` (all, if `None`),
    /// newest first.
    ///
    /// # Errors
    /// When storage cannot be read.
    async fn history(
        &self,
        name: &CounterName,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<HistoryRecord>, StoreError>;

    /// The history entries of `name` with versions in `after + 1..=up_to`, oldest first. Fewer
    /// are returned when older entries were trimmed (see `--history-limit`).
    ///
    /// # Errors
    /// When storage cannot be read.
    async fn history_range(
        &self,
        name: &CounterName,
        after: u64,
        up_to: u64,
    ) -> Result<Vec<HistoryRecord>, StoreError>;

    /// Every API key, revoked ones too, oldest first.
    ///
    /// # Errors
    /// When storage cannot be read.
    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError>;

    /// Stores a new API key durably.
    ///
    /// # Errors
    /// [`StoreError::KeyExists`] when a key of that name exists (revoked or not); any other
    /// error means nothing was stored.
    async fn create_key(&self, key: KeyRecord) -> Result<(), StoreError>;

    /// Marks the key named `name` revoked at `at_ms` (durably) and returns it, or `None` when
    /// there is no such key. Revoking a revoked key keeps its first revocation time.
    ///
    /// # Errors
    /// When storage fails; then nothing changed.
    async fn revoke_key(&self, name: &str, at_ms: i64) -> Result<Option<KeyRecord>, StoreError>;

    /// Finishes pending writes and releases the storage.
    async fn close(&self);

    /// Where the data lives, for people (a path or a URL without its password).
    fn describe(&self) -> String;

    /// Adds the store's own metrics (commits, their size and time) to `/metrics`.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}
}
