//! `tally export` and `tally import`: every counter with the history its store kept, as JSON
//! Lines (the shapes are `tally_proto::export`; docs/EXPORT.md), read from or written to either
//! store. This is how data moves from SQLite to PostgreSQL and back.
//!
//! An export reads the database directly, beside a server that goes on writing, in one read
//! transaction: a SQLite read transaction on a read-only connection of its own (WAL gives it
//! the database as of one commit), or a PostgreSQL `REPEATABLE READ READ ONLY` transaction
//! (one snapshot). So the file is the database at one commit, holding every write answered
//! before the export began. Rows stream through in id and version order, one counter in
//! memory at a time.
//!
//! An import writes into an empty database in one transaction: every line is read and checked
//! (`ExportedCounter::check`, and the timestamps here) before the commit, and any fault rolls
//! everything back, so a database is either imported whole or left as it was. The imported
//! database gets a new epoch: it is another history than the exported one, and a client that
//! resumes against it must start over from a snapshot (PROTOCOL.md §5.2.1).
//!
//! Idempotency records and API keys are not exported (docs/EXPORT.md says why).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use futures_util::{TryStreamExt, pin_mut};
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use tally_proto::export::{ExportHeader, ExportedCounter, ExportedEntry, FORMAT, FORMAT_VERSION};
use tally_proto::{Bounds, CounterName, Epoch, OpKind};

use super::{BackupError, HistoryRecord, files, postgres, sqlite, sqlite_backup};
use crate::clock;

/// The longest line an import reads, so a file without newlines cannot make it hold an
/// unbounded buffer. A counter line is about 130 bytes per history entry: this is room for two
/// million entries, twenty times the default `--history-limit`.
pub const MAX_LINE_BYTES: usize = 256 << 20;

/// How long an export's SQLite connection waits for a writer's lock on the WAL index.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters and their history rows, in id then version order; a counter without history comes
/// with one row of NULLs, refused unless it was configured but never written (version 0).
const EXPORT_ROWS: &str = "
SELECT c.id, c.name, c.value, c.version, c.created_at_ms, c.updated_at_ms,
       h.version, h.kind, h.amount, h.previous_value, h.value, h.at_ms, h.by,
       c.min_value, c.max_value, c.clamp
FROM counters c LEFT JOIN history h ON h.counter_id = c.id
ORDER BY c.id, h.version";

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// Counter lines written.
    pub counters: u64,
    /// History entries in them.
    pub entries: u64,
    /// The exported database's epoch (in the header).
    pub source_epoch: Epoch,
}

/// What an import stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// Counters stored.
    pub counters: u64,
    /// History entries stored.
    pub entries: u64,
    /// The imported database's new epoch.
    pub epoch: Epoch,
}

/// Why an export did not complete. What was written before the fault is not an export: the
/// caller removes or discards it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// There is no SQLite database at the path.
    #[error("there is no database at {0}")]
    Missing(PathBuf),
    /// The database is not one this Tally exports.
    #[error("{database} cannot be exported: {reason}")]
    Foreign {
        /// The file, or the URL without its password.
        database: String,
        /// Why, in words.
        reason: String,
    },
    /// Reading the database failed.
    #[error("reading {database} failed: {reason}")]
    Read {
        /// The file, or the URL without its password.
        database: String,
        /// What the database said.
        reason: String,
    },
    /// A stored counter breaks the rules an import checks, so its export could not be
    /// imported; the database needs repair first.
    #[error("counter {name:?} as stored cannot be exported: {reason}")]
    Damaged {
        /// The counter.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The output could not be written.
    #[error("cannot write the export: {0}")]
    Write(#[source] io::Error),
}

/// Why an import did not happen. Nothing was stored: the transaction was rolled back, and a
/// SQLite file the import created is removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The input could not be read.
    #[error("cannot read the export: {0}")]
    Read(#[source] io::Error),
    /// A line is not what `tally export` writes.
    #[error("line {line}: {reason}")]
    Line {
        /// The line's number, from 1 (the header).
        line: u64,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// The file ends before the counters its header announces.
    #[error(
        "the export ends after {found} counter line(s) but its header announces {expected}: the file is incomplete"
    )]
    Truncated {
        /// Counter lines read.
        found: u64,
        /// Counter lines announced.
        expected: u64,
    },
    /// The target holds counters already.
    #[error(
        "{database} already holds {counters} counter(s); import only into an empty database (a new SQLite file, or a PostgreSQL database no counter was written to)"
    )]
    NotEmpty {
        /// The file, or the URL without its password.
        database: String,
        /// How many it holds.
        counters: u64,
    },
    /// The target cannot be opened, or is in use.
    #[error("cannot import into {database}: {reason}")]
    Open {
        /// The file, or the URL without its password.
        database: String,
        /// Why, in words.
        reason: String,
    },
    /// Writing the target failed.
    #[error("writing {database} failed: {reason}")]
    Write {
        /// The file, or the URL without its password.
        database: String,
        /// What the database said.
        reason: String,
    },
}

/// Writes the SQLite database at `database` to `out` as an export, online (see the module
/// documentation).
///
/// # Errors
/// An [`ExportError`] saying what was wrong.
pub fn export_sqlite(database: &Path, out: &mut dyn Write) -> Result<ExportSummary, ExportError> {
    let shown = database.display().to_string();
    if !database.is_file() {
        return Err(ExportError::Missing(database.to_owned()));
    }
    let read_error = |error: rusqlite::Error| ExportError::Read {
        database: shown.clone(),
        reason: error.to_string(),
    };
    let source_epoch = match sqlite_backup::check_source(database) {
        Ok(Some(epoch)) => epoch,
        Ok(None) => {
            return Err(ExportError::Foreign {
                database: shown,
                reason: "its schema is older than epochs; serve it once with this tally (which migrates it), then export".into(),
            });
        }
        Err(BackupError::Foreign { reason, .. }) => {
            return Err(ExportError::Foreign { database: shown, reason });
        }
        Err(error) => return Err(ExportError::Read { database: shown, reason: error.to_string() }),
    };
    let conn = Connection::open_with_flags(
        database,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(read_error)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(read_error)?;
    // A deferred transaction: its first SELECT fixes the snapshot every later one reads.
    let transaction = conn.unchecked_transaction().map_err(read_error)?;
    let counters: u64 = transaction
        .query_row("SELECT count(*) FROM counters", [], |row| row.get(0))
        .map_err(read_error)?;
    let mut writer = LineWriter::start(out, &source_epoch, counters)?;
    let mut statement = transaction.prepare(EXPORT_ROWS).map_err(read_error)?;
    let mut rows = statement.query([]).map_err(read_error)?;
    while let Some(row) = rows.next().map_err(read_error)? {
        let counter = StoredCounter {
            id: row.get(0).map_err(read_error)?,
            name: row.get(1).map_err(read_error)?,
            value: row.get(2).map_err(read_error)?,
            version: row.get(3).map_err(read_error)?,
            created_at_ms: row.get(4).map_err(read_error)?,
            updated_at_ms: row.get(5).map_err(read_error)?,
            bounds: Bounds {
                min: row.get(13).map_err(read_error)?,
                max: row.get(14).map_err(read_error)?,
                clamp: row.get(15).map_err(read_error)?,
            },
        };
        let entry = match row.get::<_, Option<i64>>(6).map_err(read_error)? {
            None => None,
            Some(version) => Some(StoredEntry {
                version,
                kind: row.get(7).map_err(read_error)?,
                amount: row.get(8).map_err(read_error)?,
                previous_value: row.get(9).map_err(read_error)?,
                value: row.get(10).map_err(read_error)?,
                at_ms: row.get(11).map_err(read_error)?,
                by: row.get(12).map_err(read_error)?,
            }),
        };
        writer.row(counter, entry)?;
    }
    drop(rows);
    drop(statement);
    let (counters, entries) = writer.finish(counters)?;
    // Read only: the end of the transaction only lets go of the snapshot.
    transaction.rollback().map_err(read_error)?;
    Ok(ExportSummary { counters, entries, source_epoch })
}

/// Writes the PostgreSQL database at `url` to `out` as an export, online, from one
/// `REPEATABLE READ READ ONLY` transaction.
///
/// # Errors
/// An [`ExportError`] saying what was wrong.
pub async fn export_postgres(url: &str, out: &mut dyn Write) -> Result<ExportSummary, ExportError> {
    let shown = postgres::redact(url);
    let read_error = |error: tokio_postgres::Error| ExportError::Read {
        database: shown.clone(),
        reason: postgres::describe_error(&error),
    };
    let config = postgres::connection_config(url).map_err(|error| ExportError::Foreign {
        database: shown.clone(),
        reason: error.to_string(),
    })?;
    let mut client = postgres::connect(&config).await.map_err(read_error)?;
    let transaction = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(read_error)?;
    let has_schema: bool = transaction
        .query_one("SELECT to_regclass('meta') IS NOT NULL", &[])
        .await
        .map_err(read_error)?
        .get(0);
    if !has_schema {
        return Err(ExportError::Foreign {
            database: shown,
            reason: "it holds no Tally schema (no node has served it, and `tally migrate` was not run on it)".into(),
        });
    }
    let epoch: String =
        transaction.query_one("SELECT epoch FROM meta", &[]).await.map_err(read_error)?.get(0);
    let source_epoch = Epoch::parse(&epoch).map_err(|error| ExportError::Foreign {
        database: shown.clone(),
        reason: format!("its epoch is damaged: {}", error.message),
    })?;
    let counters: i64 = transaction
        .query_one("SELECT count(*) FROM counters", &[])
        .await
        .map_err(read_error)?
        .get(0);
    let counters = u64::try_from(counters).unwrap_or_default();
    let mut writer = LineWriter::start(out, &source_epoch, counters)?;
    let rows =
        transaction.query_raw(EXPORT_ROWS, std::iter::empty::<i64>()).await.map_err(read_error)?;
    pin_mut!(rows);
    while let Some(row) = rows.try_next().await.map_err(read_error)? {
        let counter = StoredCounter {
            id: row.try_get(0).map_err(read_error)?,
            name: row.try_get(1).map_err(read_error)?,
            value: row.try_get(2).map_err(read_error)?,
            version: row.try_get(3).map_err(read_error)?,
            created_at_ms: row.try_get(4).map_err(read_error)?,
            updated_at_ms: row.try_get(5).map_err(read_error)?,
            bounds: Bounds {
                min: row.try_get(13).map_err(read_error)?,
                max: row.try_get(14).map_err(read_error)?,
                clamp: row.try_get(15).map_err(read_error)?,
            },
        };
        let entry = match row.try_get::<_, Option<i64>>(6).map_err(read_error)? {
            None => None,
            Some(version) => Some(StoredEntry {
                version,
                kind: row.try_get(7).map_err(read_error)?,
                amount: row.try_get(8).map_err(read_error)?,
                previous_value: row.try_get(9).map_err(read_error)?,
                value: row.try_get(10).map_err(read_error)?,
                at_ms: row.try_get(11).map_err(read_error)?,
                by: row.try_get(12).map_err(read_error)?,
            }),
        };
        writer.row(counter, entry)?;
    }
    let (counters, entries) = writer.finish(counters)?;
    transaction.rollback().await.map_err(read_error)?;
    Ok(ExportSummary { counters, entries, source_epoch })
}

/// Imports the export read from `input` into the SQLite database at `database`: a new file, or
/// an existing Tally database with no counters, that no server is using.
///
/// # Errors
/// An [`ImportError`] saying what was wrong; nothing was stored, and a file the import created
/// is removed again.
pub fn import_sqlite(
    database: &Path,
    input: &mut dyn BufRead,
) -> Result<ImportSummary, ImportError> {
    // The header first: a file that is not an export never creates a database.
    let mut reader = Reader::start(input)?;
    let shown = database.display().to_string();
    let open_error = |reason: String| ImportError::Open { database: shown.clone(), reason };
    // The server's lock, held until the end: a database a server is using is never imported
    // into, and no server starts on it until the import is done, nor while a failed import
    // removes what it made. The lock file itself stays: removing it would let a server and a
    // second import lock two different files of the same name.
    let lock = sqlite::take_lock(
        database,
        "a Tally server is using it; stop it, or import into a new file",
    )
    .map_err(open_error)?;
    let existed = database.exists();
    // The connection is closed when this returns, before the files are removed.
    let result = import_sqlite_locked(database, &mut reader);
    if result.is_err() && !existed {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = database.as_os_str().to_owned();
            path.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(path));
        }
    }
    drop(lock);
    result
}

fn import_sqlite_locked(
    database: &Path,
    reader: &mut Reader<'_>,
) -> Result<ImportSummary, ImportError> {
    let shown = database.display().to_string();
    let open_error = |reason: String| ImportError::Open { database: shown.clone(), reason };
    let write_error = |error: rusqlite::Error| ImportError::Write {
        database: shown.clone(),
        reason: error.to_string(),
    };
    files::owner_only(File::options().create(true).truncate(false).write(true))
        .open(database)
        .map_err(|error| open_error(format!("cannot create the file: {error}")))?;
    let mut conn = Connection::open(database)
        .map_err(|error| open_error(sqlite::describe_open_error(&error)))?;
    sqlite::prepare_writer(&conn)
        .map_err(|error| open_error(sqlite::describe_open_error(&error)))?;
    let transaction =
        conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(write_error)?;
    let existing: u64 = transaction
        .query_row("SELECT count(*) FROM counters", [], |row| row.get(0))
        .map_err(write_error)?;
    if existing > 0 {
        return Err(ImportError::NotEmpty { database: shown.clone(), counters: existing });
    }
    {
        let mut insert_counter = transaction
            .prepare(
                "INSERT INTO counters (name, value, version, created_at_ms, updated_at_ms, min_value, max_value, clamp, rules_version) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(write_error)?;
        let mut insert_entry = transaction
            .prepare(
                "INSERT INTO history (counter_id, version, kind, amount, previous_value, value, at_ms, by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(write_error)?;
        while let Some(counter) = reader.next_counter()? {
            insert_counter
                .execute(params![
                    counter.name.as_str(),
                    counter.value,
                    counter.version,
                    counter.created_at_ms,
                    counter.updated_at_ms,
                    counter.bounds.min,
                    counter.bounds.max,
                    counter.bounds.clamp,
                    counter.rules_version(),
                ])
                .map_err(write_error)?;
            let id = transaction.last_insert_rowid();
            for entry in &counter.history {
                insert_entry
                    .execute(params![
                        id,
                        entry.version,
                        entry.kind.as_str(),
                        entry.amount,
                        entry.previous_value,
                        entry.value,
                        entry.at_ms,
                        entry.by.as_deref(),
                    ])
                    .map_err(write_error)?;
            }
        }
    }
    reader.finish()?;
    // The new database epoch covers every name: the epochs of names deleted before (an empty
    // database may have some) belong to the history this import replaces.
    transaction.execute("DELETE FROM counter_epochs", []).map_err(write_error)?;
    let epoch: String = transaction
        .query_row("UPDATE meta SET epoch = lower(hex(randomblob(8))) RETURNING epoch", [], |row| {
            row.get(0)
        })
        .map_err(write_error)?;
    let epoch = Epoch::parse(&epoch)
        .map_err(|error| ImportError::Write { database: shown.clone(), reason: error.message })?;
    // `synchronous = FULL` (set by `prepare_writer`): the commit is on disk when it returns.
    transaction.commit().map_err(write_error)?;
    Ok(ImportSummary { counters: reader.counters, entries: reader.entries, epoch })
}

/// Imports the export read from `input` into the PostgreSQL database at `url`, which must hold
/// no counters and be served by no node. Its schema is created first if it has none, as
/// `tally migrate` does.
///
/// # Errors
/// An [`ImportError`] saying what was wrong; nothing was stored.
pub async fn import_postgres(
    url: &str,
    input: &mut dyn BufRead,
) -> Result<ImportSummary, ImportError> {
    let shown = postgres::redact(url);
    let mut reader = Reader::start(input)?;
    let open_error = |reason: String| ImportError::Open { database: shown.clone(), reason };
    let write_error = |error: tokio_postgres::Error| ImportError::Write {
        database: shown.clone(),
        reason: postgres::describe_error(&error),
    };
    postgres::migrate(url).await.map_err(|error| open_error(error.to_string()))?;
    let config = postgres::connection_config(url).map_err(|error| open_error(error.to_string()))?;
    let mut client = postgres::connect(&config)
        .await
        .map_err(|error| open_error(postgres::describe_error(&error)))?;
    let transaction = client.transaction().await.map_err(write_error)?;
    // No node may create a counter between the check below and the commit.
    transaction
        .batch_execute("LOCK TABLE counters IN EXCLUSIVE MODE")
        .await
        .map_err(write_error)?;
    // A serving node read the epoch at its start and would go on giving out the old one, and
    // would not see the imported counters' values it cached: every node listens for changes
    // on a connection named `tally-listen`, so none may be there.
    let serving: i64 = transaction
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tally-listen'",
            &[],
        )
        .await
        .map_err(write_error)?
        .get(0);
    if serving > 0 {
        return Err(open_error(format!(
            "{serving} tally serve node(s) are serving it; stop them, import, then start them"
        )));
    }
    let existing: i64 = transaction
        .query_one("SELECT count(*) FROM counters", &[])
        .await
        .map_err(write_error)?
        .get(0);
    if existing > 0 {
        return Err(ImportError::NotEmpty {
            database: shown.clone(),
            counters: u64::try_from(existing).unwrap_or_default(),
        });
    }
    // One statement, one round trip, per counter: its row and every history row.
    let insert = transaction
        .prepare(
            "WITH counter AS (
                 INSERT INTO counters (name, value, version, created_at_ms, updated_at_ms, min_value, max_value, clamp, rules_version)
                 VALUES ($1, $2, $3, $4, $5, $13, $14, $15, $16) RETURNING id
             )
             INSERT INTO history (counter_id, version, kind, amount, previous_value, value, at_ms, by)
             SELECT counter.id, entry.* FROM counter,
                 unnest($6::bigint[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::text[]) AS entry",
        )
        .await
        .map_err(write_error)?;
    while let Some(counter) = reader.next_counter()? {
        let history = &counter.history;
        let versions: Vec<i64> = history.iter().map(|entry| sql_int(entry.version)).collect();
        let kinds: Vec<&str> = history.iter().map(|entry| entry.kind.as_str()).collect();
        let amounts: Vec<Option<i64>> = history.iter().map(|entry| entry.amount).collect();
        let previous: Vec<i64> = history.iter().map(|entry| entry.previous_value).collect();
        let values: Vec<i64> = history.iter().map(|entry| entry.value).collect();
        let ats: Vec<i64> = history.iter().map(|entry| entry.at_ms).collect();
        let bys: Vec<Option<&str>> = history.iter().map(|entry| entry.by.as_deref()).collect();
        transaction
            .execute(
                &insert,
                &[
                    &counter.name.as_str(),
                    &counter.value,
                    &sql_int(counter.version),
                    &counter.created_at_ms,
                    &counter.updated_at_ms,
                    &versions,
                    &kinds,
                    &amounts,
                    &previous,
                    &values,
                    &ats,
                    &bys,
                    &counter.bounds.min,
                    &counter.bounds.max,
                    &counter.bounds.clamp,
                    &counter.rules_version(),
                ],
            )
            .await
            .map_err(write_error)?;
    }
    reader.finish()?;
    // As for SQLite: the new database epoch covers every name.
    transaction.execute("DELETE FROM counter_epochs", &[]).await.map_err(write_error)?;
    let epoch: String = transaction
        .query_one(
            "UPDATE meta SET epoch = substr(md5(random()::text || clock_timestamp()::text), 1, 16) RETURNING epoch",
            &[],
        )
        .await
        .map_err(write_error)?
        .get(0);
    let epoch = Epoch::parse(&epoch)
        .map_err(|error| ImportError::Write { database: shown.clone(), reason: error.message })?;
    transaction.commit().await.map_err(write_error)?;
    Ok(ImportSummary { counters: reader.counters, entries: reader.entries, epoch })
}

/// A version as PostgreSQL's BIGINT; versions checked by the reader are far below `i64::MAX`.
fn sql_int(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

/// A counter row as both stores hold it.
struct StoredCounter {
    id: i64,
    name: String,
    value: i64,
    version: i64,
    created_at_ms: i64,
    updated_at_ms: i64,
    bounds: Bounds,
}

/// A history row as both stores hold it.
struct StoredEntry {
    version: i64,
    kind: String,
    amount: Option<i64>,
    previous_value: i64,
    value: i64,
    at_ms: i64,
    by: Option<String>,
}

/// Turns the rows of [`EXPORT_ROWS`] into lines: a counter is written once a row of the next
/// one arrives, so one counter is held at a time.
struct LineWriter<'a> {
    out: &'a mut dyn Write,
    /// The counter being gathered, with its storage id.
    current: Option<(i64, ExportedCounter)>,
    counters: u64,
    entries: u64,
}

impl<'a> LineWriter<'a> {
    fn start(out: &'a mut dyn Write, epoch: &Epoch, counters: u64) -> Result<Self, ExportError> {
        let header = ExportHeader {
            format: FORMAT.to_owned(),
            version: FORMAT_VERSION,
            source_epoch: epoch.to_string(),
            exported_at: clock::format_ms(clock::now_ms()),
            counters,
        };
        let mut writer = Self { out, current: None, counters: 0, entries: 0 };
        writer.line(&header)?;
        Ok(writer)
    }

    fn row(
        &mut self,
        counter: StoredCounter,
        entry: Option<StoredEntry>,
    ) -> Result<(), ExportError> {
        if self.current.as_ref().is_none_or(|(id, _)| *id != counter.id) {
            self.flush()?;
            let version = u64::try_from(counter.version).map_err(|_| ExportError::Damaged {
                name: counter.name.clone(),
                reason: format!("its version is {}", counter.version),
            })?;
            let exported = ExportedCounter {
                name: counter.name,
                value: counter.value,
                version,
                created_at: clock::format_ms(counter.created_at_ms),
                updated_at: clock::format_ms(counter.updated_at_ms),
                history: Vec::new(),
                bounds: counter.bounds.is_set().then_some(counter.bounds),
            };
            self.current = Some((counter.id, exported));
        }
        let Some(entry) = entry else { return Ok(()) };
        let Some((_, exported)) = self.current.as_mut() else {
            unreachable!("set just above when absent")
        };
        let damaged = |reason: String| ExportError::Damaged { name: exported.name.clone(), reason };
        let kind = OpKind::from_name(&entry.kind).ok_or_else(|| {
            damaged(format!("version {} has an unknown operation {:?}", entry.version, entry.kind))
        })?;
        let version = u64::try_from(entry.version)
            .map_err(|_| damaged(format!("a history entry has version {}", entry.version)))?;
        exported.history.push(ExportedEntry {
            version,
            kind,
            amount: entry.amount,
            previous_value: entry.previous_value,
            value: entry.value,
            at: clock::format_ms(entry.at_ms),
            by: entry.by,
        });
        Ok(())
    }

    /// Checks and writes the gathered counter: an export that succeeds is one an import takes.
    fn flush(&mut self) -> Result<(), ExportError> {
        let Some((_, counter)) = self.current.take() else { return Ok(()) };
        counter
            .check()
            .map_err(|reason| ExportError::Damaged { name: counter.name.clone(), reason })?;
        self.counters += 1;
        self.entries += counter.history.len() as u64;
        self.line(&counter)
    }

    fn line<T: serde::Serialize>(&mut self, value: &T) -> Result<(), ExportError> {
        serde_json::to_writer(&mut *self.out, value)
            .map_err(|error| ExportError::Write(io::Error::other(error)))?;
        self.out.write_all(b"\n").map_err(ExportError::Write)
    }

    /// Writes the last counter and flushes the output; answers the counters and entries.
    fn finish(mut self, announced: u64) -> Result<(u64, u64), ExportError> {
        self.flush()?;
        self.out.flush().map_err(ExportError::Write)?;
        // The count and the rows come from one snapshot, so they agree; a mismatch would make
        // the file one that import refuses, so it is caught here instead.
        if self.counters != announced {
            return Err(ExportError::Read {
                database: "the database".into(),
                reason: format!(
                    "it counted {announced} counters but listed {}; the read was not one snapshot",
                    self.counters
                ),
            });
        }
        Ok((self.counters, self.entries))
    }
}

/// A counter line, checked and in storage's terms.
struct ImportedCounter {
    name: CounterName,
    value: i64,
    version: u64,
    created_at_ms: i64,
    updated_at_ms: i64,
    history: Vec<HistoryRecord>,
    bounds: Bounds,
}

impl ImportedCounter {
    /// The rules version an imported counter starts at: configured once if it has bounds.
    fn rules_version(&self) -> i64 {
        i64::from(self.bounds.is_set())
    }
}

/// Reads an export line by line, checking each.
struct Reader<'a> {
    input: &'a mut dyn BufRead,
    /// The line read last (its number from 1), without its newline.
    buffer: Vec<u8>,
    line: u64,
    header: ExportHeader,
    /// Each name read so far and its line, so a name given twice is refused naming both.
    seen: HashMap<CounterName, u64>,
    counters: u64,
    entries: u64,
}

impl<'a> Reader<'a> {
    /// Reads and checks the header.
    fn start(input: &'a mut dyn BufRead) -> Result<Self, ImportError> {
        let placeholder = ExportHeader {
            format: String::new(),
            version: 0,
            source_epoch: String::new(),
            exported_at: String::new(),
            counters: 0,
        };
        let mut reader = Self {
            input,
            buffer: Vec::new(),
            line: 0,
            header: placeholder,
            seen: HashMap::new(),
            counters: 0,
            entries: 0,
        };
        if !reader.next_line()? {
            return Err(ImportError::Line {
                line: 1,
                reason: "the input is empty; allowed: the output of `tally export` (a header line, then one line per counter)".into(),
            });
        }
        let header: ExportHeader = serde_json::from_slice(&reader.buffer).map_err(|error| {
            reader.error(format!("not an export header ({})", json_error(&error)))
        })?;
        header.check().map_err(|reason| reader.error(reason))?;
        Epoch::parse(&header.source_epoch).map_err(|error| reader.error(error.message))?;
        reader.header = header;
        Ok(reader)
    }

    /// Reads the next line into `buffer`; `false` at the end of the input.
    fn next_line(&mut self) -> Result<bool, ImportError> {
        self.buffer.clear();
        let limit = MAX_LINE_BYTES as u64 + 1;
        let read = (&mut *self.input)
            .take(limit)
            .read_until(b'\n', &mut self.buffer)
            .map_err(ImportError::Read)?;
        if read == 0 {
            return Ok(false);
        }
        self.line += 1;
        if self.buffer.last() == Some(&b'\n') {
            self.buffer.pop();
            if self.buffer.last() == Some(&b'\r') {
                self.buffer.pop();
            }
        } else if self.buffer.len() > MAX_LINE_BYTES {
            return Err(self.error(format!(
                "the line is longer than {MAX_LINE_BYTES} bytes, the most an import reads"
            )));
        }
        Ok(true)
    }

    fn error(&self, reason: String) -> ImportError {
        ImportError::Line { line: self.line, reason }
    }

    /// The next counter, checked; `None` at the end of the input.
    fn next_counter(&mut self) -> Result<Option<ImportedCounter>, ImportError> {
        if !self.next_line()? {
            return Ok(None);
        }
        if self.counters == self.header.counters {
            return Err(self.error(format!(
                "the header announces {} counter line(s) and this is one more; allowed: the file as `tally export` wrote it",
                self.header.counters
            )));
        }
        let counter: ExportedCounter = serde_json::from_slice(&self.buffer)
            .map_err(|error| self.error(format!("not a counter line ({})", json_error(&error))))?;
        let name = counter
            .check()
            .map_err(|reason| self.error(format!("counter {:?}: {reason}", counter.name)))?;
        if let Some(first) = self.seen.get(&name) {
            return Err(self.error(format!(
                "counter {:?} is on line {first} already; allowed: each counter once",
                name.as_str()
            )));
        }
        let at = |field: &str, text: &str| {
            parse_ms(text).ok_or_else(|| {
                self.error(format!(
                    "counter {:?}: {field} is {text:?}; allowed: an RFC 3339 time such as 2025-01-15T12:00:00.000Z",
                    name.as_str()
                ))
            })
        };
        let created_at_ms = at("createdAt", &counter.created_at)?;
        let updated_at_ms = at("updatedAt", &counter.updated_at)?;
        let mut history = Vec::with_capacity(counter.history.len());
        for entry in counter.history {
            history.push(HistoryRecord {
                version: entry.version,
                kind: entry.kind,
                amount: entry.amount,
                previous_value: entry.previous_value,
                value: entry.value,
                at_ms: at(&format!("the at of version {}", entry.version), &entry.at)?,
                by: entry.by.map(Arc::from),
            });
        }
        self.seen.insert(name.clone(), self.line);
        self.counters += 1;
        self.entries += history.len() as u64;
        Ok(Some(ImportedCounter {
            name,
            value: counter.value,
            version: counter.version,
            created_at_ms,
            updated_at_ms,
            history,
            bounds: counter.bounds.unwrap_or_default(),
        }))
    }

    /// Checks the input held every counter its header announced.
    fn finish(&self) -> Result<(), ImportError> {
        if self.counters == self.header.counters {
            Ok(())
        } else {
            Err(ImportError::Truncated { found: self.counters, expected: self.header.counters })
        }
    }
}

/// `text` (RFC 3339) in milliseconds since the Unix epoch.
fn parse_ms(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text).ok().map(|time| time.timestamp_millis())
}

/// serde_json's message without its "at line 1": the reader numbers lines itself.
fn json_error(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let message = text.rsplit_once(" at line ").map_or(text.as_str(), |(message, _)| message);
    format!("{message}, at column {}", error.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import(text: &str) -> Result<ImportSummary, ImportError> {
        let folder = tempfile::tempdir().expect("folder");
        let database = folder.path().join("t.db");
        let result = import_sqlite(&database, &mut text.as_bytes());
        if result.is_err() {
            // Its lock file may stay: removing it could let two processes lock two files.
            assert!(!database.exists(), "a failed import leaves no database behind");
        }
        result
    }

    const HEADER: &str = r#"{"format":"tally-export","version":1,"sourceEpoch":"0123456789abcdef","exportedAt":"2026-12-03T12:00:00.000Z","counters":1}"#;
    const COUNTER: &str = r#"{"name":"a","value":2,"version":2,"createdAt":"2026-12-03T12:00:00.000Z","updatedAt":"2026-12-03T12:00:01.000Z","history":[{"version":1,"type":"increment","amount":1,"previousValue":0,"value":1,"at":"2026-12-03T12:00:00.000Z"},{"version":2,"type":"increment","amount":1,"previousValue":1,"value":2,"at":"2026-12-03T12:00:01.000Z","by":"anonymous"}]}"#;

    /// Bounds travel with their counter, also on a counter configured but never written.
    #[test]
    fn bounds_are_exported_and_imported_with_their_counters() {
        let header = HEADER.replace(r#""counters":1"#, r#""counters":2"#);
        let bounded =
            COUNTER.replace(r#""history""#, r#""bounds":{"min":0,"max":5,"clamp":true},"history""#);
        let configured = r#"{"name":"b","value":0,"version":0,"createdAt":"2026-12-03T12:00:00.000Z","updatedAt":"2026-12-03T12:00:00.000Z","history":[],"bounds":{"min":null,"max":3,"clamp":false}}"#;
        let folder = tempfile::tempdir().expect("folder");
        let database = folder.path().join("t.db");
        let text = format!("{header}\n{bounded}\n{configured}\n");
        let imported = import_sqlite(&database, &mut text.as_bytes()).expect("imported");
        assert_eq!((imported.counters, imported.entries), (2, 2));
        let mut out = Vec::new();
        export_sqlite(&database, &mut out).expect("exported");
        let lines: Vec<String> =
            String::from_utf8(out).expect("utf-8").lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 3);
        let exported: ExportedCounter = serde_json::from_str(&lines[1]).expect("counter");
        assert_eq!(exported.bounds, Some(Bounds { min: Some(0), max: Some(5), clamp: true }));
        let exported: ExportedCounter = serde_json::from_str(&lines[2]).expect("counter");
        assert_eq!((exported.version, exported.bounds.and_then(|b| b.max)), (0, Some(3)));

        let outside = COUNTER.replace(r#""history""#, r#""bounds":{"max":1},"history""#);
        let refused = import(&format!("{HEADER}\n{outside}\n")).unwrap_err();
        assert!(refused.to_string().contains("outside its bounds"), "{refused}");
    }

    #[test]
    fn a_good_file_imports_and_exports_back_the_same_lines() {
        let folder = tempfile::tempdir().expect("folder");
        let database = folder.path().join("t.db");
        let imported = import_sqlite(&database, &mut format!("{HEADER}\n{COUNTER}\n").as_bytes())
            .expect("imported");
        assert_eq!((imported.counters, imported.entries), (1, 2));
        assert_ne!(imported.epoch.as_str(), "0123456789abcdef", "a new epoch");
        let mut out = Vec::new();
        let exported = export_sqlite(&database, &mut out).expect("exported");
        assert_eq!(exported.source_epoch, imported.epoch);
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1], COUNTER, "the counter line comes back byte for byte");
    }

    #[test]
    fn bad_files_name_the_line_and_what_is_wrong() {
        let gap = COUNTER
            .replace(r#""version":2,"type""#, r#""version":3,"type""#)
            .replace(r#""version":2,"createdAt""#, r#""version":3,"createdAt""#);
        let cases = [
            (String::new(), "line 1: the input is empty"),
            ("{}\n".to_owned(), "line 1: not an export header (missing field `format`"),
            (HEADER.replace("tally-export", "csv"), "line 1: format is \"csv\""),
            (format!("{HEADER}\n{{\"name\":\n"), "line 2: not a counter line (EOF while parsing"),
            (
                format!("{HEADER}\n{gap}\n"),
                "line 2: counter \"a\": history jumps from version 1 to 3",
            ),
            (format!("{HEADER}\n"), "ends after 0 counter line(s) but its header announces 1"),
            (
                format!("{HEADER}\n{COUNTER}\n{COUNTER}\n"),
                "line 3: the header announces 1 counter line(s)",
            ),
            (
                format!(
                    "{}\n{COUNTER}\n{COUNTER}\n",
                    HEADER.replace("\"counters\":1", "\"counters\":2")
                ),
                "line 3: counter \"a\" is on line 2 already",
            ),
            (
                format!(
                    "{HEADER}\n{}\n",
                    COUNTER
                        .replace("2026-12-03T12:00:01.000Z\",\"history", "yesterday\",\"history")
                ),
                "updatedAt is \"yesterday\"",
            ),
        ];
        for (text, expected) in cases {
            let error = import(&text).expect_err("refused").to_string();
            assert!(error.contains(expected), "{error:?} should say {expected:?}");
        }
    }

    #[test]
    fn a_database_with_counters_is_not_imported_into() {
        let folder = tempfile::tempdir().expect("folder");
        let database = folder.path().join("t.db");
        let text = format!("{HEADER}\n{COUNTER}\n");
        import_sqlite(&database, &mut text.as_bytes()).expect("imported");
        let error = import_sqlite(&database, &mut text.as_bytes()).expect_err("refused");
        assert!(matches!(error, ImportError::NotEmpty { counters: 1, .. }), "{error}");
        assert!(database.exists(), "a database that was there stays");
    }
}
