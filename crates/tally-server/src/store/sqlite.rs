//! The embedded store: one SQLite file in WAL mode, written by one thread that commits
//! everything waiting in one transaction (group commit), read through a small pool of
//! read-only connections.
//!
//! `synchronous = FULL` makes every commit fsync the WAL, so an answered write survives power
//! loss; batching is what keeps that from capping throughput at the disk's fsync rate.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tally_proto::{Bounds, CounterName, Epoch, IdempotencyKey, OpKind};
use tokio::sync::{mpsc, oneshot};

use super::files;
use super::health::WriteHealth;
use super::{
    AppendBatch, CommitResult, Committing, CounterRecord, DeleteOutcome, HistoryRecord,
    IdempotencyRecord, KeyRecord, LoadedCounter, NAMES_END, NamedRecord, Quotas, Readiness,
    Retention, Store, StoreError, StoreMetrics, quota_exceeded,
};

/// Marks a SQLite file as Tally's ("TALY"), so that a foreign database is never written to.
pub(super) const APPLICATION_ID: i64 = 0x5441_4C59;
/// The schema version this code writes and reads; older files are migrated at open.
pub(super) const SCHEMA_VERSION: i64 = 6;
/// The first schema version with an epoch (the `meta` table).
pub(super) const EPOCH_SCHEMA_VERSION: i64 = 4;
/// How many appends one transaction takes at most, so one commit's latency stays bounded.
const MAX_APPENDS_PER_COMMIT: usize = 4096;
/// How many appends may wait for the writer before callers are made to wait.
const WRITER_QUEUE: usize = 8192;
/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How many idle read connections are kept open.
const MAX_IDLE_READERS: usize = 4;
/// How often the writer deletes idempotency records past the window, at most; each time it
/// deletes at most `SWEEP_ROWS` of them, so that a wave of expiring keys (a day after a burst)
/// is spread over many commits instead of stalling one.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
const SWEEP_ROWS: i64 = 1000;

const SCHEMA: &str = "
CREATE TABLE counters (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    value INTEGER NOT NULL,
    version INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE history (
    counter_id INTEGER NOT NULL REFERENCES counters (id),
    version INTEGER NOT NULL,
    kind TEXT NOT NULL,
    amount INTEGER,
    previous_value INTEGER NOT NULL,
    value INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (counter_id, version)
) WITHOUT ROWID;
";

/// Each step takes the schema from the version before it to the next: `MIGRATIONS[0]` from 1
/// to 2, and so on. Every step runs in the same transaction as the `user_version` it sets.
const MIGRATIONS: &[&str] = &[
    "
ALTER TABLE history ADD COLUMN by TEXT;
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    secret_hash BLOB NOT NULL,
    grants TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);
",
    "
CREATE TABLE idempotency (
    counter_id INTEGER NOT NULL REFERENCES counters (id),
    principal TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    kind TEXT NOT NULL,
    amount INTEGER,
    previous_value INTEGER NOT NULL,
    value INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (counter_id, principal, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_expiry ON idempotency (at_ms);
",
    // The database's epoch (see `Store::epoch`): 64 random bits as 16 lowercase hex digits.
    "
CREATE TABLE meta (epoch TEXT NOT NULL);
INSERT INTO meta (epoch) VALUES (lower(hex(randomblob(8))));
",
    // 5: a counter's bounds (`counter.configure`; NULL: no such bound), its clamp mode, and
    // how many times they were configured (see `BatchRules`).
    "
ALTER TABLE counters ADD COLUMN min_value INTEGER;
ALTER TABLE counters ADD COLUMN max_value INTEGER;
ALTER TABLE counters ADD COLUMN clamp INTEGER NOT NULL DEFAULT 0;
ALTER TABLE counters ADD COLUMN rules_version INTEGER NOT NULL DEFAULT 0;
",
    // 6: the epoch of each name that was ever deleted (`counter.delete`): its history starts
    // over at version 1, so a resume of the old history must be told apart. Kept after the
    // delete, and used again when the name is written again; a name without a row has the
    // database's epoch.
    "
CREATE TABLE counter_epochs (name TEXT PRIMARY KEY, epoch TEXT NOT NULL) WITHOUT ROWID;
",
];

/// How many of a counter's newest operations (at most `RECENT_SCAN`, ?3) are at or after
/// ?2: the rows by the primary key, backwards from the last version. The rate meter's one
/// statement, for `recent_operations` and `recent_operations_of` alike.
const RECENT_OPERATIONS: &str = "SELECT count(*) FROM (
    SELECT h.at_ms FROM history h
    WHERE h.counter_id = (SELECT id FROM counters WHERE name = ?1)
    ORDER BY h.version DESC LIMIT ?3
) WHERE at_ms >= ?2";

/// Settings of the SQLite store.
#[derive(Debug, Clone, Copy)]
pub struct SqliteOptions {
    /// How many of the most recent operations are kept per counter (at least 1).
    pub history_limit: u64,
    /// Idempotency records older than this are deleted by the writer (`--idempotency-window`;
    /// the server's `Config` has the same setting, for what the actors remember).
    pub idempotency_window: Duration,
    /// What the file may hold (`--max-counters`, `--max-database-size`).
    pub quotas: Quotas,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            history_limit: 10_000,
            idempotency_window: Duration::from_secs(24 * 3600),
            quotas: Quotas::default(),
        }
    }
}

/// What the writer thread needs to know besides its queue.
struct WriterSettings {
    history_limit: u64,
    idempotency_window: Duration,
    quotas: Quotas,
    /// How many counters the file holds, as of the last commit: counted once at open, then
    /// kept by the writer (the only one who inserts), so a quota check costs no count.
    counters: std::cell::Cell<u64>,
    /// Where the writer records each commit's outcome, and stops the store.
    health: Arc<WriteHealth>,
    /// Makes chosen commits fail as a failed fsync would; `None` outside this file's unit
    /// tests. A real failing fsync needs a faulty block device, which this machine cannot make
    /// (docs/RELIABILITY.md), so the tests replace this one step and nothing else.
    fault: Option<Fault>,
}

/// Called where a commit would run `COMMIT`; an error it returns is the commit's.
type Fault = Box<dyn Fn() -> Option<rusqlite::Error> + Send>;

/// A request to the writer thread.
enum WriterMessage {
    Append {
        batch: AppendBatch,
        respond_to: oneshot::Sender<CommitResult>,
    },
    /// Commit what is queued, then stop; answered once the thread is done with the file.
    Close {
        done: oneshot::Sender<()>,
    },
    /// A rare write of its own (API keys, readiness probes), run between two group commits;
    /// it answers its caller itself.
    Run {
        write: OwnWrite,
    },
    /// Removes a counter (`Store::delete`), between two group commits, in a transaction of
    /// its own; a message of its own because it changes the count of counters the writer keeps.
    Delete {
        name: CounterName,
        respond_to: oneshot::Sender<Result<DeleteOutcome, StoreError>>,
    },
}

/// A write that is not a batch of counter operations: given the connection, or why the store
/// takes no writes any more.
type OwnWrite = Box<dyn FnOnce(Result<&Connection, StoreError>) + Send>;

/// The embedded SQLite store.
pub struct SqliteStore {
    /// The database file.
    path: PathBuf,
    /// Queue of the single writer thread, which owns the only write connection.
    writer: mpsc::Sender<WriterMessage>,
    /// Read-only connections for history reads and loads, which WAL lets run beside the writer.
    readers: Arc<ReaderPool>,
    /// Commit statistics, fed by the writer thread.
    metrics: StoreMetrics,
    /// The database's epoch, read at open.
    epoch: Epoch,
    /// Write health, fed by the writer thread, for `/readyz`.
    health: Arc<WriteHealth>,
    /// Held for the store's life: an exclusive lock on `<database>.lock`, so that two servers
    /// never write one file (each would believe it alone orders the counters).
    _lock: File,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    ///
    /// # Errors
    /// [`StoreError::Open`] when the folder is missing or not writable, another Tally server
    /// holds the file, or the file is not a Tally database (corrupt, or another program's).
    pub fn open(path: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        Self::open_with(path, options, None)
    }

    /// [`SqliteStore::open`] with commits failing as `fault` says (unit tests only).
    fn open_with(
        path: &Path,
        options: SqliteOptions,
        fault: Option<Fault>,
    ) -> Result<Self, StoreError> {
        let open_error = |reason: String| StoreError::Open { path: path.to_owned(), reason };
        let lock = take_lock(path, "another Tally server is using it").map_err(open_error)?;

        // The database holds API key hashes and who changed what: create it readable by its
        // owner only. SQLite gives the `-wal` and `-shm` files it makes later the mode of the
        // database file, so creating this one `0600` covers them too. Chosen over setting the
        // umask around the open: the umask is the whole process's (other threads may create
        // files meanwhile), and the `-wal` is created at the first write, after any such
        // window. A file that exists keeps the mode its owner gave it.
        files::owner_only(File::options().create(true).truncate(false).write(true))
            .open(path)
            .map_err(|error| open_error(format!("cannot create the file: {error}")))?;
        let conn = Connection::open(path).map_err(|error| open_error(error.to_string()))?;
        prepare_writer(&conn).map_err(|error| open_error(describe_open_error(&error)))?;
        let epoch = read_epoch(&conn).map_err(open_error)?;
        let counters: u64 = conn
            .query_row("SELECT count(*) FROM counters", [], |row| row.get(0))
            .map_err(|error| open_error(describe_open_error(&error)))?;

        let (writer, inbox) = mpsc::channel(WRITER_QUEUE);
        let health = Arc::new(WriteHealth::default());
        let settings = WriterSettings {
            history_limit: options.history_limit.max(1),
            idempotency_window: options.idempotency_window,
            quotas: options.quotas,
            counters: std::cell::Cell::new(counters),
            health: Arc::clone(&health),
            fault,
        };
        let metrics = StoreMetrics::default();
        let writer_metrics = metrics.clone();
        thread::Builder::new()
            .name("tally-sqlite-writer".into())
            .spawn(move || run_writer(conn, inbox, &settings, &writer_metrics))
            .map_err(|error| open_error(format!("cannot start the writer thread: {error}")))?;

        Ok(Self {
            path: path.to_owned(),
            writer,
            metrics,
            health,
            readers: Arc::new(ReaderPool { path: path.to_owned(), idle: Mutex::new(Vec::new()) }),
            epoch,
            _lock: lock,
        })
    }

    /// Runs `write` on the writer thread in a transaction of its own (committed and synced
    /// before the answer), between two group commits.
    async fn write<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (respond_to, answer) = oneshot::channel();
        let health = Arc::clone(&self.health);
        let run = Box::new(move |conn: Result<&Connection, StoreError>| {
            let result = conn.and_then(|conn| {
                let tx = conn.unchecked_transaction()?;
                let value = write(&tx)?;
                tx.commit().map_err(|error| writer_error(error, &health))?;
                Ok(value)
            });
            let _ = respond_to.send(result);
        });
        self.writer
            .send(WriterMessage::Run { write: run })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || readers.with(read))
            .await
            .map_err(|_| StoreError::Closed)?
    }
}

/// `options`, creating a missing file readable and writable by its owner only (`0600`).
/// Takes the lock of the database at `path` (its `.lock` file, made `0600` if missing), which
/// the server holds while it serves the file and an import while it writes it; `in_use` says
/// what it means when someone else holds it. The lock is held until the file is dropped.
pub(super) fn take_lock(path: &Path, in_use: &str) -> Result<File, String> {
    let lock_path = lock_path(path);
    let lock = files::owner_only(File::options().create(true).truncate(false).write(true))
        .open(&lock_path)
        .map_err(|error| format!("cannot create the lock file {}: {error}", lock_path.display()))?;
    lock.try_lock().map_err(|_| format!("{in_use} (it holds {})", lock_path.display()))?;
    Ok(lock)
}

pub(super) fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".lock");
    path.with_file_name(name)
}

pub(super) fn describe_open_error(error: &rusqlite::Error) -> String {
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => {
            "the file is not a SQLite database (corrupt, or another program's file); move it away or choose another --database".into()
        }
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::PermissionDenied) => {
            format!("{error}; the file and its folder must be writable")
        }
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            format!("{error}; another program holds a lock on the file")
        }
        _ => error.to_string(),
    }
}

/// Checks the file is Tally's (or empty), creates the schema, and sets durable WAL mode.
pub(super) fn prepare_writer(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let application_id: i64 = conn.query_row("PRAGMA application_id", [], |row| row.get(0))?;
    let objects: i64 =
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))?;
    if application_id == 0 && objects == 0 {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(SCHEMA)?;
        for migration in MIGRATIONS {
            tx.execute_batch(migration)?;
        }
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
    } else if application_id != APPLICATION_ID {
        return Err(foreign(
            "it is a SQLite database of another program (its application_id is not Tally's); Tally will not write to it",
        ));
    } else {
        let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if !(1..=SCHEMA_VERSION).contains(&version) {
            return Err(foreign(
                "it was written by a newer version of Tally (its schema version is unknown here)",
            ));
        }
        for (from, migration) in
            (version..SCHEMA_VERSION).zip(&MIGRATIONS[(version - 1) as usize..])
        {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(migration)?;
            tx.pragma_update(None, "user_version", from + 1)?;
            tx.commit()?;
        }
    }
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(foreign(
            "SQLite refused WAL mode for it (is it on a filesystem without shared memory?)",
        ));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

/// The epoch the schema was made with (migration 4).
fn read_epoch(conn: &Connection) -> Result<Epoch, String> {
    let text: String = conn
        .query_row("SELECT epoch FROM meta", [], |row| row.get(0))
        .map_err(|error| format!("cannot read the database's epoch: {error}"))?;
    Epoch::parse(&text)
        .map_err(|error| format!("the database's epoch is damaged: {}", error.message))
}

fn foreign(reason: &'static str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
        Some(reason.to_owned()),
    )
}

/// The writer thread: takes everything queued, commits it in one transaction, answers each.
fn run_writer(
    conn: Connection,
    mut inbox: mpsc::Receiver<WriterMessage>,
    settings: &WriterSettings,
    metrics: &StoreMetrics,
) {
    // `None` until the first group commit, which sweeps expired idempotency records at once.
    let mut last_sweep: Option<Instant> = None;
    let mut appends = Vec::new();
    let mut runs: Vec<OwnWrite> = Vec::new();
    let mut deletes = Vec::new();
    let mut closing = None;
    while closing.is_none() {
        // `None` means every sender is gone: nobody can append any more.
        let Some(first) = inbox.blocking_recv() else { break };
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                WriterMessage::Append { batch, respond_to } => appends.push((batch, respond_to)),
                WriterMessage::Close { done } => closing = Some(done),
                WriterMessage::Run { write } => runs.push(write),
                WriterMessage::Delete { name, respond_to } => deletes.push((name, respond_to)),
            }
            if appends.len() < MAX_APPENDS_PER_COMMIT && closing.is_none() {
                next = inbox.try_recv().ok();
            }
        }
        if !appends.is_empty() {
            let started = Instant::now();
            let sweep = last_sweep.is_none_or(|last| started - last >= SWEEP_EVERY);
            let expired_before = sweep.then(|| expiry_cutoff(settings.idempotency_window));
            let batches = appends.iter().map(|(batch, _)| batch);
            let results = commit(&conn, batches, settings, expired_before);
            if sweep {
                last_sweep = Some(started);
            }
            if results.iter().any(Result::is_ok) {
                let operations: usize = appends.iter().map(|(batch, _)| batch.entries.len()).sum();
                metrics.transactions.inc();
                metrics.transaction_operations.observe(operations as f64);
                metrics.transaction_seconds.observe(started.elapsed().as_secs_f64());
            }
            for ((_, respond_to), result) in appends.drain(..).zip(results) {
                // The caller may have gone away; the write is committed all the same.
                let _ = respond_to.send(result);
            }
        }
        for write in runs.drain(..) {
            match settings.health.stopped() {
                None => write(Ok(&conn)),
                Some(reason) => write(Err(StoreError::Stopped { reason, uncertain: false })),
            }
        }
        for (name, respond_to) in deletes.drain(..) {
            let outcome = match settings.health.stopped() {
                None => delete_counter(&conn, &name, settings),
                Some(reason) => Err(StoreError::Stopped { reason, uncertain: false }),
            };
            // The caller may have gone away; the delete is committed all the same.
            let _ = respond_to.send(outcome);
        }
    }
    drop(conn);
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Removes counter `name` (its history, idempotency records and row) and gives its name a
/// fresh epoch, in one transaction; a name not stored changes nothing.
fn delete_counter(
    conn: &Connection,
    name: &CounterName,
    settings: &WriterSettings,
) -> Result<DeleteOutcome, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let stored: Option<(i64, u64)> = tx
        .prepare_cached("SELECT id, version FROM counters WHERE name = ?1")?
        .query_row([name.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((id, version)) = stored else {
        let epoch: Option<String> = tx
            .prepare_cached("SELECT epoch FROM counter_epochs WHERE name = ?1")?
            .query_row([name.as_str()], |row| row.get(0))
            .optional()?;
        let epoch = epoch.as_deref().map(epoch_bits).transpose()?;
        return Ok(DeleteOutcome { deleted: false, version: 0, epoch });
    };
    tx.prepare_cached("DELETE FROM history WHERE counter_id = ?1")?.execute([id])?;
    tx.prepare_cached("DELETE FROM idempotency WHERE counter_id = ?1")?.execute([id])?;
    tx.prepare_cached("DELETE FROM counters WHERE id = ?1")?.execute([id])?;
    let epoch: String = tx
        .prepare_cached(
            "INSERT INTO counter_epochs (name, epoch) VALUES (?1, lower(hex(randomblob(8))))
             ON CONFLICT (name) DO UPDATE SET epoch = excluded.epoch RETURNING epoch",
        )?
        .query_row([name.as_str()], |row| row.get(0))?;
    let epoch = epoch_bits(&epoch)?;
    tx.commit().map_err(|error| writer_error(error, &settings.health))?;
    settings.counters.set(settings.counters.get().saturating_sub(1));
    Ok(DeleteOutcome { deleted: true, version, epoch: Some(epoch) })
}

/// The bits of an epoch read from `counter_epochs`; a damaged one is a storage failure.
fn epoch_bits(text: &str) -> Result<u64, rusqlite::Error> {
    Epoch::parse(text).map(|epoch| epoch.bits()).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("a counter's epoch is damaged: {}", error.message).into(),
        )
    })
}

/// Commits every batch in one transaction. A batch refused on its own (a version conflict,
/// found before it writes anything) is left out without harming the others. Any other error
/// fails the whole group: SQLite may already have rolled the transaction back by itself (disk
/// full, I/O error), and going on would commit later batches one by one outside it while
/// reporting them as failed.
///
/// A commit that fails with an error meaning its data may not have reached the disk (a failed
/// fsync or write, [`lost_write`]) stops the store: this and every later batch is refused with
/// [`StoreError::Stopped`] without touching the file, until the server restarts.
fn commit<'a>(
    conn: &Connection,
    batches: impl ExactSizeIterator<Item = &'a AppendBatch>,
    settings: &WriterSettings,
    expired_before: Option<i64>,
) -> Vec<CommitResult> {
    let count = batches.len();
    let health = &settings.health;
    let outcome = match health.stopped() {
        Some(reason) => Err(StoreError::Stopped { reason, uncertain: false }),
        None => commit_group(conn, batches, settings, expired_before)
            .map_err(|error| writer_error(error, health)),
    };
    match outcome {
        Ok(results) => {
            health.succeeded();
            results
        }
        // One failure, kept whole (its kind decides what clients are told), shared by every
        // batch of the group.
        Err(error) => {
            health.failed(&error);
            let error = Arc::new(error);
            (0..count).map(|_| Err(Arc::clone(&error))).collect()
        }
    }
}

/// What a failed write of the writer thread is: [`StoreError::Stopped`] (and the store stopped)
/// when it may have lost data the disk was given, else what SQLite's error says.
fn writer_error(error: rusqlite::Error, health: &WriteHealth) -> StoreError {
    let Some(what) = lost_write(&error) else { return StoreError::from(error) };
    let reason = format!("{what} ({error})");
    tracing::error!(
        %reason,
        "a commit failed in a way that may have lost data the disk was given; the store takes no more writes until the server is restarted"
    );
    health.stop(reason.clone());
    StoreError::Stopped { reason, uncertain: true }
}

/// Whether `error` means that data given to the disk may not be on it: SQLite's I/O error
/// from an fsync (of the file or its folder) or a write. Then the kernel may have dropped the
/// dirty pages and marked them clean, so a later fsync that succeeds proves nothing about them
/// (PostgreSQL's "fsyncgate", 2018): the one safe answer is to stop. A full disk
/// (`SQLITE_FULL`) is not one: nothing was handed over, and writes resume when space returns.
fn lost_write(error: &rusqlite::Error) -> Option<&'static str> {
    use rusqlite::ffi;
    let rusqlite::Error::SqliteFailure(failure, _) = error else { return None };
    match failure.extended_code {
        ffi::SQLITE_IOERR_FSYNC => Some("a failed fsync"),
        ffi::SQLITE_IOERR_DIR_FSYNC => Some("a failed fsync of the database's folder"),
        ffi::SQLITE_IOERR_WRITE => Some("a failed write"),
        _ => None,
    }
}

/// Idempotency records committed before this time (ms since the epoch) are past `window`.
fn expiry_cutoff(window: Duration) -> i64 {
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    crate::clock::now_ms().saturating_sub(window_ms)
}

/// `BEGIN`, every batch, `COMMIT`, with the two statements prepared once: this runs for every
/// group commit, and rusqlite's `Transaction` would parse them again each time. No savepoint
/// per batch either: a conflict is found before its batch writes anything, and a savepoint
/// would make SQLite copy every page it touches into a sub-journal first.
fn commit_group<'a>(
    conn: &Connection,
    batches: impl ExactSizeIterator<Item = &'a AppendBatch>,
    settings: &WriterSettings,
    expired_before: Option<i64>,
) -> Result<Vec<CommitResult>, rusqlite::Error> {
    if !conn.is_autocommit() {
        // Only if a rollback after an earlier failure failed too: try again, or every group
        // from now on would fail with "cannot start a transaction within a transaction".
        conn.execute_batch("ROLLBACK")?;
    }
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let mut created = 0;
    let outcome = append_all(conn, batches, settings, &mut created).and_then(|results| {
        if let Some(cutoff) = expired_before {
            // Records of counters nobody writes any more are not forgotten by an actor: this
            // is what deletes them. One range of the index on `at_ms`: up to the cutoff, and
            // no further than the SWEEP_ROWS-th oldest record (with its ties); one seek when
            // none expired.
            conn.prepare_cached(
                "DELETE FROM idempotency WHERE at_ms < ?1 AND at_ms <= coalesce(
                 (SELECT at_ms FROM idempotency ORDER BY at_ms LIMIT 1 OFFSET ?2), ?1)",
            )?
            .execute(params![cutoff, SWEEP_ROWS - 1])?;
        }
        if let Some(error) = settings.fault.as_ref().and_then(|fault| fault()) {
            return Err(error);
        }
        conn.prepare_cached("COMMIT")?.execute([])?;
        settings.counters.set(settings.counters.get() + created);
        Ok(results)
    });
    if outcome.is_err() && !conn.is_autocommit() {
        // The error is what the callers get; a failed rollback leaves nothing more to say.
        let _ = conn.execute_batch("ROLLBACK");
    }
    outcome
}

fn append_all<'a>(
    conn: &Connection,
    batches: impl ExactSizeIterator<Item = &'a AppendBatch>,
    settings: &WriterSettings,
    created: &mut u64,
) -> Result<Vec<CommitResult>, rusqlite::Error> {
    let mut results = Vec::with_capacity(batches.len());
    for batch in batches {
        if conn.is_autocommit() {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                Some("the transaction was rolled back by SQLite".into()),
            ));
        }
        results.push(append_one(conn, batch, settings, created)?.map_err(Arc::new));
    }
    Ok(results)
}

/// Writes one batch, or refuses it with [`StoreError::Conflict`] (the inner error) before
/// writing anything. The outer error fails the whole group.
fn append_one(
    conn: &Connection,
    batch: &AppendBatch,
    settings: &WriterSettings,
    created: &mut u64,
) -> Result<Result<i64, StoreError>, rusqlite::Error> {
    let history_limit = settings.history_limit;
    let conflict = |found: u64| {
        Ok(Err(StoreError::Conflict {
            name: batch.name.to_string(),
            expected: batch.expected_version,
            found,
        }))
    };
    let rules = &batch.rules;
    // What the row holds after the batch: the last entry's value and version, or, for a batch
    // that only configures the counter, what it holds now (0 and 0 for a row it creates).
    let (value, version, created_at_ms, updated_at_ms) =
        match (batch.entries.first(), batch.entries.last()) {
            (Some(first), Some(last)) => (last.value, last.version, first.at_ms, last.at_ms),
            _ if rules.configure => (0, batch.expected_version, rules.at_ms, rules.at_ms),
            _ => return conflict(batch.expected_version),
        };
    let written = !batch.entries.is_empty();
    let (min, max, clamp) = (rules.bounds.min, rules.bounds.max, rules.bounds.clamp);
    if let (Some(id), true, false) = (batch.id, written, rules.configure) {
        // The hot path, a write to a known row: one UPDATE that also checks both versions, and
        // a lookup only when it refuses (the conflict's message names the version found).
        let updated = conn
            .prepare_cached(
                "UPDATE counters SET value = ?2, version = ?3, updated_at_ms = ?4 WHERE id = ?1 AND version = ?5 AND rules_version = ?6",
            )?
            .execute(params![
                id,
                value,
                version,
                updated_at_ms,
                batch.expected_version,
                rules.expected_version
            ])?;
        if updated == 0 {
            let found: Option<u64> = conn
                .prepare_cached("SELECT version FROM counters WHERE id = ?1")?
                .query_row([id], |row| row.get(0))
                .optional()?;
            return conflict(found.unwrap_or(0));
        }
        return append_history(conn, id, batch, history_limit);
    }
    let stored: Option<(i64, u64, u64)> = match batch.id {
        Some(id) => conn
            .prepare_cached("SELECT id, version, rules_version FROM counters WHERE id = ?1")?
            .query_row([id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .optional()?,
        None => conn
            .prepare_cached("SELECT id, version, rules_version FROM counters WHERE name = ?1")?
            .query_row([batch.name.as_str()], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .optional()?,
    };
    let id = match stored {
        None if batch.expected_version == 0 && rules.expected_version == 0 => {
            if let Some(refused) = over_quota(conn, batch, settings, *created)? {
                return Ok(Err(refused));
            }
            *created += 1;
            conn.prepare_cached(
                "INSERT INTO counters (name, value, version, created_at_ms, updated_at_ms, min_value, max_value, clamp, rules_version) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                batch.name.as_str(),
                value,
                version,
                created_at_ms,
                updated_at_ms,
                min,
                max,
                clamp,
                rules.version_after()
            ])?;
            conn.last_insert_rowid()
        }
        Some((id, found, found_rules))
            if found == batch.expected_version && found_rules == rules.expected_version =>
        {
            if written {
                conn.prepare_cached(
                    "UPDATE counters SET value = ?2, version = ?3, updated_at_ms = ?4 WHERE id = ?1",
                )?
                .execute(params![id, value, version, updated_at_ms])?;
            }
            if rules.configure {
                conn.prepare_cached(
                    "UPDATE counters SET min_value = ?2, max_value = ?3, clamp = ?4, rules_version = ?5 WHERE id = ?1",
                )?
                .execute(params![id, min, max, clamp, rules.version_after()])?;
            }
            id
        }
        // The rules moved under the batch (a bug on one node: only this counter's actor
        // configures it): a conflict at the version found, like any other.
        other => return conflict(other.map_or(0, |(_, found, _)| found)),
    };
    append_history(conn, id, batch, history_limit)
}

/// Why `batch`, which would create its counter, is refused at a quota (`None` when it is not):
/// before it writes anything, so the rest of its group is unharmed.
fn over_quota(
    conn: &Connection,
    batch: &AppendBatch,
    settings: &WriterSettings,
    created: u64,
) -> Result<Option<StoreError>, rusqlite::Error> {
    let quotas = settings.quotas;
    if let Some(limit) = quotas.max_counters {
        let counters = settings.counters.get() + created;
        if counters >= limit {
            return Ok(Some(quota_exceeded(
                &batch.name,
                "--max-counters",
                limit,
                counters,
                "counters",
            )));
        }
    }
    if let Some(limit) = quotas.max_database_bytes {
        // The file's pages as this transaction has them: two reads of the header, no I/O.
        let pages: u64 = conn.query_row("PRAGMA page_count", [], |row| row.get(0))?;
        let page_size: u64 = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
        let bytes = pages * page_size;
        if bytes >= limit {
            return Ok(Some(quota_exceeded(
                &batch.name,
                "--max-database-size",
                limit,
                bytes,
                "bytes of database",
            )));
        }
    }
    Ok(None)
}

/// Writes the history rows and idempotency records of `batch`, whose counter row (`id`) is
/// already updated.
fn append_history(
    conn: &Connection,
    id: i64,
    batch: &AppendBatch,
    history_limit: u64,
) -> Result<Result<i64, StoreError>, rusqlite::Error> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO history (counter_id, version, kind, amount, previous_value, value, at_ms, by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for entry in &batch.entries {
        insert.execute(params![
            id,
            entry.version,
            entry.kind.as_str(),
            entry.amount,
            entry.previous_value,
            entry.value,
            entry.at_ms,
            entry.by.as_deref(),
        ])?;
    }
    if let Some(last) = batch.entries.last().filter(|last| last.version > history_limit) {
        conn.prepare_cached("DELETE FROM history WHERE counter_id = ?1 AND version <= ?2")?
            .execute(params![id, last.version - history_limit])?;
    }
    write_idempotency(conn, id, batch)?;
    Ok(Ok(id))
}

/// Deletes the records the actor forgot, then stores the batch's own, in the batch's
/// transaction. Forgetting first, and only a record that still names the forgotten version,
/// lets a key used again after it was forgotten keep its new record.
fn write_idempotency(
    conn: &Connection,
    id: i64,
    batch: &AppendBatch,
) -> Result<(), rusqlite::Error> {
    if !batch.forget.is_empty() {
        let mut delete = conn.prepare_cached(
            "DELETE FROM idempotency WHERE counter_id = ?1 AND principal = ?2 AND key = ?3 AND version = ?4",
        )?;
        for forgotten in &batch.forget {
            delete.execute(params![
                id,
                &*forgotten.principal,
                forgotten.key.as_str(),
                forgotten.version
            ])?;
        }
    }
    if !batch.remember.is_empty() {
        let mut insert = conn.prepare_cached(
            "INSERT OR REPLACE INTO idempotency (counter_id, principal, key, version, kind, amount, previous_value, value, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for remembered in &batch.remember {
            // Entries are consecutive from `expected_version + 1`; a record naming a version
            // outside the batch is the caller's bug, refused rather than stored wrong.
            let entry = remembered
                .version
                .checked_sub(batch.expected_version + 1)
                .and_then(|index| batch.entries.get(usize::try_from(index).ok()?))
                .filter(|entry| entry.version == remembered.version)
                .ok_or_else(|| {
                    rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE),
                        Some(format!(
                            "idempotency key {:?} names version {}, which is not in the batch",
                            remembered.key, remembered.version
                        )),
                    )
                })?;
            insert.execute(params![
                id,
                &*remembered.principal,
                remembered.key.as_str(),
                entry.version,
                entry.kind.as_str(),
                entry.amount,
                entry.previous_value,
                entry.value,
                entry.at_ms,
            ])?;
        }
    }
    Ok(())
}

/// Read-only connections, opened on demand and kept for reuse. Written by hand: a pool crate
/// would pin the rusqlite version, and this needs no more than a locked stack.
struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn with<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(BUSY_TIMEOUT)?;
                conn
            }
        };
        let result = read(&conn);
        // A connection whose read failed may be in a bad state: let it close.
        if result.is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
        Ok(result?)
    }
}

/// A counter's row from its columns `id, value, version, created_at_ms, updated_at_ms,
/// min_value, max_value, clamp, rules_version`, the first at index `at`.
fn counter_row(row: &rusqlite::Row<'_>, at: usize) -> Result<CounterRecord, rusqlite::Error> {
    Ok(CounterRecord {
        id: row.get(at)?,
        value: row.get(at + 1)?,
        version: row.get(at + 2)?,
        created_at_ms: row.get(at + 3)?,
        updated_at_ms: row.get(at + 4)?,
        bounds: Bounds { min: row.get(at + 5)?, max: row.get(at + 6)?, clamp: row.get(at + 7)? },
        rules_version: row.get(at + 8)?,
        // Read beside the row where it is needed (`load_record`).
        epoch: None,
    })
}

fn history_row(row: &rusqlite::Row<'_>) -> Result<HistoryRecord, rusqlite::Error> {
    let kind: String = row.get(1)?;
    Ok(HistoryRecord {
        version: row.get(0)?,
        kind: OpKind::from_name(&kind).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Text,
                format!("unknown operation {kind:?}").into(),
            )
        })?,
        amount: row.get(2)?,
        previous_value: row.get(3)?,
        value: row.get(4)?,
        at_ms: row.get(5)?,
        by: row.get::<_, Option<String>>(6)?.map(Arc::from),
    })
}

/// An idempotency record from `version, kind, amount, previous_value, value, at_ms, principal,
/// key` (the history columns first, so `history_row` reads them).
fn idempotency_row(row: &rusqlite::Row<'_>) -> Result<IdempotencyRecord, rusqlite::Error> {
    let entry = history_row(row)?;
    let key: String = row.get(7)?;
    let key = IdempotencyKey::parse(&key).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(
            7,
            rusqlite::types::Type::Text,
            error.message.into(),
        )
    })?;
    Ok(IdempotencyRecord { key, entry })
}

fn key_row(row: &rusqlite::Row<'_>) -> Result<KeyRecord, rusqlite::Error> {
    let hash: Vec<u8> = row.get(2)?;
    let grants: String = row.get(3)?;
    let bad = |column: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Blob,
            format!("api_keys row has a malformed {what}").into(),
        )
    };
    Ok(KeyRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        secret_hash: hash.try_into().map_err(|_| bad(2, "secret hash"))?,
        grants: serde_json::from_str(&grants).map_err(|_| bad(3, "grant list"))?,
        created_at_ms: row.get(4)?,
        revoked_at_ms: row.get(5)?,
    })
}

const KEY_COLUMNS: &str = "id, name, secret_hash, grants, created_at_ms, revoked_at_ms";

#[async_trait]
impl Store for SqliteStore {
    async fn load(
        &self,
        name: &CounterName,
        retention: Retention,
    ) -> Result<Option<LoadedCounter>, StoreError> {
        let name = name.clone();
        self.read(move |conn| {
            // One read transaction, so the records match the counter's version.
            let tx = conn.unchecked_transaction()?;
            let record = tx
                .prepare_cached(
                    "SELECT c.id, c.value, c.version, c.created_at_ms, c.updated_at_ms, c.min_value, c.max_value, c.clamp, c.rules_version, e.epoch
                     FROM counters c LEFT JOIN counter_epochs e ON e.name = c.name WHERE c.name = ?1",
                )?
                .query_row([name.as_str()], |row| {
                    let mut record = counter_row(row, 0)?;
                    record.epoch =
                        row.get::<_, Option<String>>(9)?.as_deref().map(epoch_bits).transpose()?;
                    Ok(record)
                })
                .optional()?;
            let Some(record) = record else { return Ok(None) };
            let limit = i64::try_from(retention.limit).unwrap_or(i64::MAX);
            let mut idempotency: Vec<IdempotencyRecord> = tx
                .prepare_cached(
                    "SELECT version, kind, amount, previous_value, value, at_ms, principal, key
                     FROM idempotency WHERE counter_id = ?1 AND at_ms >= ?2
                     ORDER BY version DESC LIMIT ?3",
                )?
                .query_map(params![record.id, retention.since_ms, limit], idempotency_row)?
                .collect::<Result<_, _>>()?;
            idempotency.reverse();
            Ok(Some(LoadedCounter { record, idempotency }))
        })
        .await
    }

    async fn append(&self, batch: AppendBatch) -> Result<Committing, StoreError> {
        let (respond_to, answer) = oneshot::channel();
        // One queue, one writer thread: batches are committed in the order they were queued.
        self.writer
            .send(WriterMessage::Append { batch, respond_to })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(Committing::new(answer))
    }

    async fn delete(&self, name: &CounterName) -> Result<DeleteOutcome, StoreError> {
        let (respond_to, answer) = oneshot::channel();
        let name = name.clone();
        self.writer
            .send(WriterMessage::Delete { name, respond_to })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn history(
        &self,
        name: &CounterName,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        let name = name.clone();
        let before = before.map_or(i64::MAX, |before| i64::try_from(before).unwrap_or(i64::MAX));
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT h.version, h.kind, h.amount, h.previous_value, h.value, h.at_ms, h.by
                 FROM history h JOIN counters c ON c.id = h.counter_id
                 WHERE c.name = ?1 AND h.version < ?2 ORDER BY h.version DESC LIMIT ?3",
            )?
            .query_map(params![name.as_str(), before, limit], history_row)?
            .collect()
        })
        .await
    }

    async fn history_range(
        &self,
        name: &CounterName,
        after: u64,
        up_to: u64,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        let name = name.clone();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT h.version, h.kind, h.amount, h.previous_value, h.value, h.at_ms, h.by
                 FROM history h JOIN counters c ON c.id = h.counter_id
                 WHERE c.name = ?1 AND h.version > ?2 AND h.version <= ?3 ORDER BY h.version ASC",
            )?
            .query_map(params![name.as_str(), after, up_to], history_row)?
            .collect()
        })
        .await
    }

    async fn recent_operations(
        &self,
        name: &CounterName,
        since_ms: i64,
    ) -> Result<u64, StoreError> {
        let name = name.clone();
        self.read(move |conn| {
            conn.prepare_cached(RECENT_OPERATIONS)?
                .query_row(params![name.as_str(), since_ms, super::RECENT_SCAN], |row| row.get(0))
        })
        .await
    }

    async fn recent_operations_of(
        &self,
        names: Vec<CounterName>,
        since_ms: i64,
    ) -> Result<Vec<u64>, StoreError> {
        self.read(move |conn| {
            // The statement of `recent_operations`, once per name on one connection: each is
            // an index range of at most `RECENT_SCAN` rows, and the page costs one hop to the
            // reader thread instead of one per counter.
            let mut statement = conn.prepare_cached(RECENT_OPERATIONS)?;
            names
                .iter()
                .map(|name| {
                    statement
                        .query_row(params![name.as_str(), since_ms, super::RECENT_SCAN], |row| {
                            row.get(0)
                        })
                })
                .collect()
        })
        .await
    }

    async fn list(
        &self,
        start: &str,
        end: Option<&str>,
        limit: u32,
    ) -> Result<Vec<NamedRecord>, StoreError> {
        let (start, end) = (start.to_owned(), end.unwrap_or(NAMES_END).to_owned());
        self.read(move |conn| {
            // `name` is UNIQUE, so its index (BINARY collation: byte order) serves the range
            // and the order; both bounds are parameters, never text spliced into a pattern.
            conn.prepare_cached(
                "SELECT name, id, value, version, created_at_ms, updated_at_ms, min_value, max_value, clamp, rules_version FROM counters
                 WHERE name >= ?1 AND name < ?2 ORDER BY name LIMIT ?3",
            )?
            .query_map(params![start, end, limit], |row| {
                let name: String = row.get(0)?;
                let name = CounterName::parse(&name).map_err(|error| {
                    rusqlite::Error::FromSqlConversionFailure(
                        0,
                        rusqlite::types::Type::Text,
                        Box::new(error),
                    )
                })?;
                Ok(NamedRecord { name, record: counter_row(row, 1)? })
            })?
            .collect()
        })
        .await
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at_ms, name"
            ))?
            .query_map([], key_row)?
            .collect()
        })
        .await
    }

    async fn create_key(&self, key: KeyRecord) -> Result<(), StoreError> {
        self.write(move |conn| {
            let grants = serde_json::to_string(&key.grants).unwrap_or_else(|_| "[]".into());
            let inserted = conn
                .prepare_cached(&format!("INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING"))?
                .execute(params![key.id, key.name, key.secret_hash.as_slice(), grants, key.created_at_ms, key.revoked_at_ms])?;
            if inserted == 0 {
                return Err(StoreError::KeyExists(key.name));
            }
            Ok(())
        })
        .await
    }

    async fn revoke_key(&self, name: &str, at_ms: i64) -> Result<Option<KeyRecord>, StoreError> {
        let name = name.to_owned();
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE api_keys SET revoked_at_ms = coalesce(revoked_at_ms, ?2) WHERE name = ?1",
            )?
            .execute(params![name, at_ms])?;
            Ok(conn
                .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE name = ?1"))?
                .query_row([name.as_str()], key_row)
                .optional()?)
        })
        .await
    }

    async fn close(&self) {
        let (done, finished) = oneshot::channel();
        if self.writer.send(WriterMessage::Close { done }).await.is_ok() {
            // An error means the thread already ended, which is what we wait for.
            let _ = finished.await;
        }
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    async fn readiness(&self) -> Readiness {
        if self.writer.is_closed() {
            return Readiness::Unavailable("the SQLite writer thread has stopped".into());
        }
        // The probe is a real write, synced like a commit: it rewrites the schema version with
        // its own value, which changes nothing but appends a page to the WAL, so it fails as a
        // commit would (disk full, I/O error). At most one per `FRESH`, only when asked, and
        // only when no commit said it first.
        let probe = self.write(|conn| {
            let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
            conn.pragma_update(None, "user_version", version)?;
            Ok(())
        });
        self.health.readiness(probe).await
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry);
    }
}

#[cfg(test)]
mod tests {
    //! A failed fsync, which only a faulty device causes for real: the commit step is the one
    //! part replaced (`Fault`); the file, SQLite and the writer thread are real.

    use std::sync::atomic::{AtomicU8, Ordering};

    use rusqlite::ffi;

    use super::*;
    use crate::counter::ApplyError;

    const NO_FAULT: u8 = 0;
    const FSYNC: u8 = 1;
    const FULL: u8 = 2;

    fn increment(expected_version: u64) -> AppendBatch {
        let name = CounterName::parse("c").expect("a valid name");
        let value = i64::try_from(expected_version).expect("small");
        let entry = HistoryRecord {
            version: expected_version + 1,
            kind: OpKind::Increment,
            amount: Some(1),
            previous_value: value,
            value: value + 1,
            at_ms: crate::clock::now_ms(),
            by: None,
        };
        AppendBatch::new(name, expected_version, vec![entry])
    }

    fn key() -> KeyRecord {
        KeyRecord {
            id: "id".into(),
            name: "k".into(),
            secret_hash: [0; 32],
            grants: vec![],
            created_at_ms: 0,
            revoked_at_ms: None,
        }
    }

    /// A store whose commits fail as `fault` says at the moment they would run.
    fn store_with(folder: &tempfile::TempDir, fault: &Arc<AtomicU8>) -> SqliteStore {
        let fault = Arc::clone(fault);
        let inject: Fault = Box::new(move || {
            let (code, message) = match fault.load(Ordering::SeqCst) {
                FSYNC => (ffi::SQLITE_IOERR_FSYNC, "disk I/O error (injected fsync failure)"),
                FULL => (ffi::SQLITE_FULL, "database or disk is full (injected)"),
                _ => return None,
            };
            Some(rusqlite::Error::SqliteFailure(ffi::Error::new(code), Some(message.into())))
        });
        let path = folder.path().join("tally.db");
        SqliteStore::open_with(&path, SqliteOptions::default(), Some(inject)).expect("open")
    }

    async fn commit(store: &SqliteStore, batch: AppendBatch) -> CommitResult {
        store.append(batch).await.expect("queued").await
    }

    #[tokio::test]
    async fn a_failed_fsync_stops_every_later_write_until_restart() {
        let folder = tempfile::tempdir().expect("folder");
        let fault = Arc::new(AtomicU8::new(NO_FAULT));
        let store = store_with(&folder, &fault);
        commit(&store, increment(0)).await.expect("stored");
        assert_eq!(store.readiness().await, Readiness::Ready);

        fault.store(FSYNC, Ordering::SeqCst);
        let error = commit(&store, increment(1)).await.expect_err("the fsync failed");
        assert!(
            matches!(&*error, StoreError::Stopped { uncertain: true, reason } if reason.contains("fsync")),
            "{error:?}"
        );
        let answer = ApplyError::Store(Arc::clone(&error)).to_protocol();
        assert_eq!(answer.code, tally_proto::ErrorCode::StoreStopped);
        assert!(!answer.code.is_temporary());
        assert!(answer.message.contains("may or may not be stored"), "{}", answer.message);
        assert!(answer.message.contains("restarted"), "{}", answer.message);

        // The disk seems fine again: it proves nothing, and the store still refuses, counter
        // writes and its own writes alike, without touching the file.
        fault.store(NO_FAULT, Ordering::SeqCst);
        let error = commit(&store, increment(1)).await.expect_err("stopped");
        assert!(matches!(&*error, StoreError::Stopped { uncertain: false, .. }), "{error:?}");
        let answer = ApplyError::Store(error).to_protocol();
        assert!(answer.message.contains("nothing was stored"), "{}", answer.message);
        let refused = store.create_key(key()).await.expect_err("stopped");
        assert!(matches!(refused, StoreError::Stopped { .. }), "{refused:?}");
        match store.readiness().await {
            Readiness::Stopped(reason) => assert!(reason.contains("fsync"), "{reason}"),
            other => panic!("not stopped: {other:?}"),
        }
        // Reads go on.
        let name = CounterName::parse("c").expect("a valid name");
        let stored = store.load_record(&name).await.expect("read").expect("stored");
        assert_eq!((stored.value, stored.version), (1, 1));
        store.close().await;
        drop(store);

        // A restart takes writes again.
        let store = store_with(&folder, &fault);
        assert_eq!(store.readiness().await, Readiness::Ready);
        commit(&store, increment(1)).await.expect("stored after the restart");
    }

    /// The same through the server's HTTP side: `/readyz`, the metrics and a refused write.
    #[tokio::test]
    async fn a_stopped_store_is_reported_by_readyz_the_metrics_and_every_write() {
        use tower::ServiceExt;

        let folder = tempfile::tempdir().expect("folder");
        let fault = Arc::new(AtomicU8::new(NO_FAULT));
        let store = Arc::new(store_with(&folder, &fault));
        let state = crate::state::AppState::new(store, crate::config::Config::default(), &[]);
        let router = crate::http::router(state);
        let get = |path: &str| {
            axum::http::Request::get(path)
                .header("host", "localhost")
                .body(axum::body::Body::empty())
                .expect("request")
        };
        let increment = || {
            axum::http::Request::post("/rpc/counter.increment")
                .header("host", "localhost")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(r#"{"name":"c"}"#))
                .expect("request")
        };
        let answer = |response: axum::response::Response| async move {
            let status = response.status().as_u16();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
            (status, String::from_utf8(body.to_vec()).expect("utf-8"))
        };

        assert_eq!(answer(router.clone().oneshot(increment()).await.expect("answer")).await.0, 200);
        fault.store(FSYNC, Ordering::SeqCst);
        let (status, body) =
            answer(router.clone().oneshot(increment()).await.expect("answer")).await;
        assert_eq!(status, 503, "{body}");
        assert!(
            body.contains(r#""code":"store_stopped""#) && body.contains(r#""temporary":false"#)
        );
        fault.store(NO_FAULT, Ordering::SeqCst);
        let (status, body) =
            answer(router.clone().oneshot(increment()).await.expect("answer")).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("store_stopped") && body.contains("nothing was stored"), "{body}");

        let (status, body) =
            answer(router.clone().oneshot(get("/readyz")).await.expect("answer")).await;
        assert_eq!(status, 503, "{body}");
        let readiness: tally_proto::Readiness = serde_json::from_str(&body).expect("readiness");
        assert!(!readiness.ready && readiness.restart_required, "{body}");
        assert!(readiness.reason.is_some_and(|reason| reason.contains("fsync")), "{body}");
        let (status, metrics) =
            answer(router.oneshot(get("/metrics")).await.expect("answer")).await;
        assert_eq!(status, 200);
        assert!(metrics.lines().any(|line| line == "tally_store_ready 0"), "{metrics}");
        assert!(metrics.lines().any(|line| line == "tally_store_stopped 1"), "{metrics}");
    }

    #[tokio::test]
    async fn a_full_disk_is_not_a_failed_fsync_and_mends_by_itself() {
        let folder = tempfile::tempdir().expect("folder");
        let fault = Arc::new(AtomicU8::new(FULL));
        let store = store_with(&folder, &fault);
        let error = commit(&store, increment(0)).await.expect_err("full");
        assert!(matches!(&*error, StoreError::Unavailable(_)), "{error:?}");
        assert!(
            matches!(store.readiness().await, Readiness::Unavailable(reason) if reason.contains("full"))
        );
        fault.store(NO_FAULT, Ordering::SeqCst);
        commit(&store, increment(0)).await.expect("stored once there is room");
        assert_eq!(store.readiness().await, Readiness::Ready);
    }
}
