//! Durable storage of counters and their history, behind one interface.
//!
//! The server talks to a [`Store`]; [`SqliteStore`] is the embedded default and a PostgreSQL
//! store will sit beside it. Only this module speaks SQL.
//!
//! Writes arrive as [`AppendBatch`]es: one or more operations on one counter that are committed
//! together. A store may (and the SQLite store does) commit the batches of many counters in one
//! transaction, so that one fsync covers every write that was waiting (group commit).
//!
//! # Idempotency records
//! An operation sent with an idempotency key is stored with an [`IdempotencyRecord`]: the key,
//! its principal, and the committed operation in full, written in the same transaction as the
//! operation's history row. A retry with the key is answered from it, byte for byte, even after
//! `--history-limit` trimmed the history row away. The store is never asked about a key on the
//! write path: the counter's actor remembers its counter's records, loaded with the counter by
//! [`Store::load`]. The actor also says, with each batch, which records it stopped remembering
//! (past `--idempotency-keys`), and the store forgets records older than the idempotency window
//! by itself, so storage holds about `--idempotency-keys` records per counter at most, and none
//! older than the window for long.
//!
//! # Errors
//! A [`StoreError`] keeps its kind up to the wire: a version [`Conflict`](StoreError::Conflict)
//! (a server bug), storage [`Unavailable`](StoreError::Unavailable) (I/O, full disk, busy), the
//! store [`Closed`](StoreError::Closed) (shutting down), or a [`Backend`](StoreError::Backend)
//! failure. A failed group commit hands one `Arc<StoreError>` to every batch in it.
//!
//! # Readiness
//! Each store keeps its write health ([`Store::readiness`], `health.rs`): the outcome of its
//! latest commit, a probe when that is stale, and whether it [stopped](StoreError::Stopped)
//! for good after a failed fsync. `GET /readyz` and `tally_store_ready` report it.

mod export;
pub mod files;
mod health;
pub mod postgres;
mod sqlite;
mod sqlite_backup;
mod stats;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use tally_proto::{Bounds, CounterName, Epoch, IdempotencyKey, Op, OpKind};

pub use export::{
    ExportError, ExportSummary, ImportError, ImportSummary, MAX_LINE_BYTES, export_postgres,
    export_sqlite, import_postgres, import_sqlite,
};
pub use health::Readiness;
pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::{SqliteOptions, SqliteStore};
pub use sqlite_backup::{BackupError, BackupSummary, backup, restore};

/// Why `name` was not created at a quota: `quota` (a flag) is `limit` and storage holds
/// `found` (in `unit`).
pub(crate) fn quota_exceeded(
    name: &CounterName,
    quota: &str,
    limit: u64,
    found: u64,
    unit: &str,
) -> StoreError {
    StoreError::QuotaExceeded(format!(
        "counter {:?} was not created: this server holds {found} {unit}, and its {quota} quota is {limit}; writes to existing counters still work, and nothing was stored",
        name.as_str()
    ))
}
pub use stats::StoreMetrics;

/// Limits on what storage may hold (`--max-counters`, `--max-database-size`): at a quota, a
/// batch that would create a counter is refused with [`StoreError::QuotaExceeded`]; batches on
/// existing counters are not, so those keep working. Both off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quotas {
    /// Counters stored at most.
    pub max_counters: Option<u64>,
    /// Bytes the database may reach before no new counter is created (SQLite: the database
    /// file's pages; PostgreSQL: `pg_database_size`).
    pub max_database_bytes: Option<u64>,
}

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
    /// When the latest operation was committed, in milliseconds since the Unix epoch (for a
    /// counter configured but never written, when it was configured).
    pub updated_at_ms: i64,
    /// The counter's own epoch ([`tally_proto::Epoch::bits`]) when its name was ever deleted
    /// (table `counter_epochs`, read by a LEFT JOIN in the same query); `None` means the
    /// database's epoch. Not read by [`Store::list`], which has no use for it.
    pub epoch: Option<u64>,
    /// Its bounds (`counter.configure`).
    pub bounds: Bounds,
    /// How many times its bounds were configured: the batches built under one set of bounds
    /// are stored only while the row still has them (see [`BatchRules`]).
    pub rules_version: u64,
}

/// What [`Store::delete`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteOutcome {
    /// Whether a stored counter was removed (`false`: none was stored, and nothing changed).
    pub deleted: bool,
    /// The version it had; 0 when none was stored.
    pub version: u64,
    /// The name's epoch from now on: a fresh random one when a counter was removed (kept in
    /// `counter_epochs`, so a later write starts a history under it), else the name's epoch as
    /// it was (`None`: the database's).
    pub epoch: Option<u64>,
}

/// A stored counter with its name: one row of [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedRecord {
    /// The counter's name.
    pub name: CounterName,
    /// What is stored of it.
    pub record: CounterRecord,
}

/// Greater than every counter name, whose characters are all ASCII below `{`: the end of a
/// [`Store::list`] range that has no end of its own.
pub(crate) const NAMES_END: &str = "{";

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

impl HistoryRecord {
    /// Whether the operation was stopped at one of the counter's bounds (clamp mode): its
    /// value is not what the operation asks for from the value before it.
    pub fn clamped(&self) -> bool {
        tally_proto::bounds::is_clamped(self.kind, self.amount, self.previous_value, self.value)
    }

    /// The operation this entry applied: what a retry with the same idempotency key must ask
    /// for again (its fingerprint is the kind with the amount, or the value set).
    pub fn op(&self) -> Op {
        match self.kind {
            OpKind::Increment => Op::Increment(self.amount.unwrap_or_default()),
            OpKind::Decrement => Op::Decrement(self.amount.unwrap_or_default()),
            OpKind::SetValue => Op::SetValue(self.value),
            OpKind::Reset => Op::Reset,
        }
    }
}

/// A counter as loaded: the stored record and the idempotency records to remember.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedCounter {
    /// The stored counter.
    pub record: CounterRecord,
    /// Its idempotency records within the asked [`Retention`], oldest (lowest version) first.
    pub idempotency: Vec<IdempotencyRecord>,
}

/// A committed operation that carried an idempotency key: what a retry is answered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The key, unique per counter and principal (`entry.by`).
    pub key: IdempotencyKey,
    /// The operation as committed, with `by` set to the principal that sent it.
    pub entry: HistoryRecord,
}

/// Names one idempotency record of a batch's counter: to store with an entry of the batch, or
/// to forget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef {
    /// The principal that sent the key (the entry's `by`).
    pub principal: Arc<str>,
    /// The key.
    pub key: IdempotencyKey,
    /// The version of the operation it names.
    pub version: u64,
}

/// Which idempotency records [`Store::load`] brings back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Only records of operations committed at or after this time, in milliseconds since the
    /// Unix epoch (now minus `--idempotency-window`).
    pub since_ms: i64,
    /// At most this many, the newest (`--idempotency-keys`).
    pub limit: usize,
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
    /// The counter's storage id, when the caller knows it (from a load or an earlier commit):
    /// the store then finds the row by id instead of looking the name up. The version check
    /// below holds all the same.
    pub id: Option<i64>,
    /// The version the stored counter must have now (0 for a counter never written); a store
    /// refuses the batch if it differs, so a bug can never write a gap or a fork.
    pub expected_version: u64,
    /// The operations, in version order, starting at `expected_version + 1`.
    pub entries: Vec<HistoryRecord>,
    /// Idempotency records to store with entries of this batch, in the same transaction: each
    /// names an entry by its version, and the entry is the answer a retry gets.
    pub remember: Vec<KeyRef>,
    /// Idempotency records of this counter, committed earlier, to delete in the same
    /// transaction (the actor stopped remembering them). A record is deleted only if it still
    /// names that version, so a key used again after being forgotten keeps its new record.
    pub forget: Vec<KeyRef>,
    /// The rules the batch was built under, and new ones to store after its entries.
    pub rules: BatchRules,
}

/// The rules side of an [`AppendBatch`]: the batch is stored only if the counter's row is at
/// `expected_version` of its rules as well as at the batch's expected version, so a batch built
/// under bounds that another node changed meanwhile is refused as a conflict and built again
/// under the new ones. A batch that configures the counter (`configure`) stores `bounds` and
/// moves the rules version on by one; it may have no entries at all (then it creates the
/// counter's row at value 0 and version 0 if there is none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchRules {
    /// The rules version the stored counter must have now (0 for one never configured).
    pub expected_version: u64,
    /// The bounds the counter has after the batch: the ones its entries were checked against,
    /// or the new ones when `configure`.
    pub bounds: Bounds,
    /// Whether the batch stores new bounds.
    pub configure: bool,
    /// When the batch was built: a batch without entries that creates the counter's row
    /// creates it at this time.
    pub at_ms: i64,
}

impl BatchRules {
    /// The rules version after the batch.
    pub fn version_after(&self) -> u64 {
        self.expected_version + u64::from(self.configure)
    }
}

impl AppendBatch {
    /// A batch of `entries` after `expected_version`, with no idempotency records.
    pub fn new(name: CounterName, expected_version: u64, entries: Vec<HistoryRecord>) -> Self {
        Self {
            name,
            id: None,
            expected_version,
            entries,
            remember: Vec::new(),
            forget: Vec::new(),
            rules: BatchRules::default(),
        }
    }
}

/// How a queued batch ended: the counter's storage id, or why nothing of it was stored. The
/// error is shared: a failed group commit gives the same one to every batch it held.
pub type CommitResult = Result<i64, Arc<StoreError>>;

/// A queued batch: resolves once it is committed (to the counter's storage id) or has failed.
pub struct Committing {
    answer: tokio::sync::oneshot::Receiver<CommitResult>,
}

impl Committing {
    /// A batch answered on `answer`.
    pub fn new(answer: tokio::sync::oneshot::Receiver<CommitResult>) -> Self {
        Self { answer }
    }
}

impl std::future::Future for Committing {
    type Output = CommitResult;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        // A dropped sender means the store went away without answering.
        std::pin::Pin::new(&mut self.answer)
            .poll(cx)
            .map(|answer| answer.unwrap_or_else(|_| Err(Arc::new(StoreError::Closed))))
    }
}

/// What a storage backend said, kept whole for logs.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed. Each kind becomes its own wire error (see
/// `ApplyError::to_protocol`), so clients are told what happened.
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
    /// The stored counter's version is not the one the batch was built on. Only this server
    /// writes its database (a lock file sees to it) and only a counter's actor writes the
    /// counter, so outside the batches queued behind a failed one this is a bug.
    #[error("counter {name} is at version {found} in storage, not {expected}: batch refused")]
    Conflict {
        /// The counter.
        name: String,
        /// The version the batch expected.
        expected: u64,
        /// The version found.
        found: u64,
    },
    /// Storage cannot be used right now: an I/O error, a full disk, a file busy or locked by
    /// another program. Nothing of the operation is stored; it may succeed later.
    #[error("storage is unavailable: {0}")]
    Unavailable(#[source] BackendError),
    /// The backend failed in a way waiting will not mend (a corrupt file, a broken
    /// constraint, a malformed row). Nothing of the operation is stored.
    #[error("storage failed: {0}")]
    Backend(#[source] BackendError),
    /// The connection to storage was lost while a commit was under way, so whether it was
    /// stored is unknown (a shared PostgreSQL store only: SQLite commits in this process). A
    /// retry with the same idempotency key counts once either way.
    #[error(
        "the connection to storage was lost while committing; the write may or may not be stored: {0}"
    )]
    CommitUncertain(#[source] BackendError),
    /// The store stopped taking writes until the server is restarted, because a commit failed
    /// in a way that means data may not have reached the disk (a failed fsync or write): the
    /// kernel may have dropped the unwritten pages, so no later successful fsync could prove
    /// anything (docs/RELIABILITY.md, "A failed fsync"). `uncertain` is true for the batches of
    /// the commit that failed, whose frames may still be found at the next start; later
    /// batches are refused before anything is written.
    #[error("the store stopped taking writes after {reason}; the server must be restarted")]
    Stopped {
        /// What failed, in words.
        reason: String,
        /// Whether this batch was in the commit that failed (so may or may not be stored).
        uncertain: bool,
    },
    /// The batch would create a counter while storage is at a [`Quotas`] limit; nothing of it
    /// was stored. The message names the counter, the quota and its value.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The store was closed (the server is shutting down).
    #[error("the store is closed")]
    Closed,
    /// An API key with this name exists already.
    #[error("an API key named {0:?} exists already")]
    KeyExists(String),
}

impl From<rusqlite::Error> for StoreError {
    /// Sorts SQLite's errors into what the client is told: worth retrying later, or not.
    fn from(error: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as Code;
        match error.sqlite_error_code() {
            Some(
                Code::DiskFull
                | Code::SystemIoFailure
                | Code::DatabaseBusy
                | Code::DatabaseLocked
                | Code::OutOfMemory
                | Code::CannotOpen
                | Code::FileLockingProtocolFailed
                | Code::ReadOnly,
            ) => StoreError::Unavailable(Box::new(error)),
            _ => StoreError::Backend(Box::new(error)),
        }
    }
}

/// The most operations [`Store::recent_operations`] looks at: a rate meter reads "at least
/// this many" beyond it (10 000 a minute is a counter written 166 times a second).
pub const RECENT_SCAN: i64 = 10_000;

/// Durable storage of counters and their history.
///
/// Implementations are shared by every counter actor, so every method takes `&self`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The stored counter named `name` with its idempotency records within `retention`, read
    /// together; `None` if it was never written.
    ///
    /// # Errors
    /// When storage cannot be read.
    async fn load(
        &self,
        name: &CounterName,
        retention: Retention,
    ) -> Result<Option<LoadedCounter>, StoreError>;

    /// The stored counter named `name` without its idempotency records; `None` if it was never
    /// written.
    ///
    /// # Errors
    /// When storage cannot be read.
    async fn load_record(&self, name: &CounterName) -> Result<Option<CounterRecord>, StoreError> {
        let none = Retention { since_ms: i64::MAX, limit: 0 };
        Ok(self.load(name, none).await?.map(|loaded| loaded.record))
    }

    /// Queues `batch` to be committed durably (on disk, synced) after every batch queued before
    /// it, and returns as soon as it is queued. The returned [`Committing`] resolves to the
    /// counter's storage id once the batch is committed. A counter may have several batches
    /// queued at once (each built on the one before), so one fsync can cover all of them. The
    /// batch's idempotency records (`remember`, `forget`) are written in the same transaction
    /// as its history: an operation and its key are stored together or not at all.
    ///
    /// # Errors
    /// When the store is closed. The commit itself fails with [`StoreError::Conflict`] when the
    /// stored version is not `batch.expected_version` (so every batch queued after a failed one
    /// fails too); any other error means nothing of the batch is stored.
    async fn append(&self, batch: AppendBatch) -> Result<Committing, StoreError>;

    /// Removes counter `name` durably, in one transaction: its row, its history and its
    /// idempotency records, and gives the name a fresh epoch (`counter_epochs`), so that a
    /// client resuming the old history gets a `resync`. Only the counter's actor calls it, once
    /// its batches in flight are answered, so no batch of this node is queued on either side
    /// of it; another node's batch built on the old version fails its version check (the
    /// counter is not stored, and a batch inserts a counter only at version 0). Removing a
    /// counter that is not stored changes nothing and is no error.
    ///
    /// # Errors
    /// When storage fails; then nothing changed.
    async fn delete(&self, name: &CounterName) -> Result<DeleteOutcome, StoreError>;

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

    /// How many of the newest [`RECENT_SCAN`] operations of `name` were committed at or after
    /// `since_ms` (milliseconds since the Unix epoch): the counter's rate meter
    /// (`getMetadata`'s `opsLastMinute`). Read from history, so it counts every node's writes
    /// and survives hibernation; bounded, so a hot counter costs one index range of at most
    /// [`RECENT_SCAN`] rows.
    ///
    /// # Errors
    /// When storage cannot be read.
    async fn recent_operations(&self, name: &CounterName, since_ms: i64)
    -> Result<u64, StoreError>;

    /// [`Store::recent_operations`] of each of `names`, in their order, read together (one
    /// read for a page of `counter.list`, rather than one round trip per counter); 0 for a
    /// name never written. The default asks for each in turn.
    ///
    /// # Errors
    /// When storage cannot be read.
    async fn recent_operations_of(
        &self,
        names: Vec<CounterName>,
        since_ms: i64,
    ) -> Result<Vec<u64>, StoreError> {
        let mut counts = Vec::with_capacity(names.len());
        for name in &names {
            counts.push(self.recent_operations(name, since_ms).await?);
        }
        Ok(counts)
    }

    /// Up to `limit` stored counters whose names fall in `start..end` (byte order; no end
    /// when `None`), in name order, with their committed state. An index range, so a page
    /// costs what it returns however many counters there are.
    ///
    /// # Errors
    /// When storage cannot be read.
    async fn list(
        &self,
        start: &str,
        end: Option<&str>,
        limit: u32,
    ) -> Result<Vec<NamedRecord>, StoreError>;

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

    /// The database's epoch: random, made with its schema, and the same for every node of a
    /// shared database. Snapshots and resumes carry it, so that a client resuming against
    /// another database (replaced, or restored from a backup) is sent a resync instead of
    /// another history's updates.
    fn epoch(&self) -> &Epoch;
    /// Whether the store can write now, for `GET /readyz`: the outcome of its latest commit
    /// when that is less than half a second old, else the outcome of a probe (so a store that
    /// sees no writes still notices within a second that it cannot write, and that it can
    /// again), or that it stopped for good after a failed fsync.
    async fn readiness(&self) -> Readiness {
        Readiness::Ready
    }

    /// Adds the store's own metrics (commits, their size and time) to `/metrics`.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}

    /// Whether other servers write the same storage (a cluster on one PostgreSQL database).
    /// Then a [`StoreError::Conflict`] is another node getting ahead, not a bug: the actor
    /// reads the counter again and sends its operations once more, and reads and watches
    /// look at storage rather than trust what the actor last saw.
    fn is_shared(&self) -> bool {
        false
    }

    /// Where the nodes sharing this store share their presence counts
    /// ([`crate::presence`]); `None` for a store of one node, whose presence is its own counts.
    fn shared_presence(&self) -> Option<Arc<dyn crate::presence::PresenceManager>> {
        None
    }
}
