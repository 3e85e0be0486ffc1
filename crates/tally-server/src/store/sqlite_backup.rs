//! `tally backup`: an online copy of a SQLite database, consistent, checked, and under an epoch
//! of its own.
//!
//! The copy is made with `VACUUM INTO` on a read-only connection of its own: in WAL mode that
//! is one read transaction, so the copy is the database as of one commit, taken beside a server
//! that goes on writing (the server's lock file is not needed, and not taken). Every write
//! answered before the backup started was committed before that read began, so it is in the
//! copy. The copy is then opened, checked with `PRAGMA integrity_check`, given a new epoch
//! (PROTOCOL.md §5.2.1: once restored it is another history than the live database's, which
//! goes on), synced to disk, and only then reported done; a failed backup removes its file.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use tally_proto::Epoch;

use super::files;
use super::sqlite::{APPLICATION_ID, EPOCH_SCHEMA_VERSION, SCHEMA_VERSION};

/// What a backup copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// The counters in the copy.
    pub counters: u64,
    /// The copy's size in bytes.
    pub bytes: u64,
    /// The live database's epoch; `None` for a database older than epochs (one is made when
    /// it is next served).
    pub source_epoch: Option<Epoch>,
    /// The copy's new epoch; `None` likewise (the copy gets one when it is first served).
    pub epoch: Option<Epoch>,
}

/// Why a backup was not made. Nothing is left at the output path.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// There is no database to back up.
    #[error("there is no database at {0}")]
    Missing(PathBuf),
    /// The file is not a Tally database, or one of a newer Tally.
    #[error("{path} cannot be backed up: {reason}")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// Why, in words.
        reason: String,
    },
    /// The output exists already: a backup (or a restore) never overwrites a file.
    #[error(
        "{0} exists already; a backup or restore never overwrites a file, so name a new one (or move the old one away)"
    )]
    Exists(PathBuf),
    /// The output could not be made or synced.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The output.
        path: PathBuf,
        /// What the file system said.
        source: io::Error,
    },
    /// SQLite failed while reading the database or writing the copy.
    #[error("the copy failed: {0}")]
    Copy(#[from] rusqlite::Error),
    /// The copy does not pass `PRAGMA integrity_check`.
    #[error("the copy failed its integrity check ({0}); it was removed")]
    Corrupt(String),
}

/// Copies the SQLite database at `database` to the new file `out`, online (see the module
/// documentation).
///
/// # Errors
/// A [`BackupError`] saying what was wrong; `out` is then left absent.
pub fn backup(database: &Path, out: &Path) -> Result<BackupSummary, BackupError> {
    if !database.is_file() {
        return Err(BackupError::Missing(database.to_owned()));
    }
    let source_epoch = check_source(database)?;
    // Made here, empty and readable by its owner only, so that `VACUUM INTO` (which accepts an
    // empty file) never writes a copy others can read, and an existing file is never touched.
    create_empty(out)?;
    let result = copy(database, out, source_epoch.clone());
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}

/// Restores the backup `backup_file` as the new database `database`: a copy made as
/// [`backup`] makes one, so it is checked and gets an epoch of its own, at every restore. Two
/// restores of one backup are two histories from the same point: served one after the other at
/// one address, clients resuming from the first must resync against the second, which a plain
/// file copy (keeping the backup's epoch) would not tell them.
///
/// # Errors
/// A [`BackupError`]; `database` must not exist, nor its `-wal` and `-shm` files (SQLite would
/// apply an old write-ahead log to the restored file).
pub fn restore(backup_file: &Path, database: &Path) -> Result<BackupSummary, BackupError> {
    for suffix in ["-wal", "-shm"] {
        let mut leftover = database.as_os_str().to_owned();
        leftover.push(suffix);
        let leftover = PathBuf::from(leftover);
        if leftover.exists() {
            return Err(BackupError::Exists(leftover));
        }
    }
    backup(backup_file, database)
}

/// Checks the file is Tally's, of a schema this build knows; answers its epoch.
pub(super) fn check_source(database: &Path) -> Result<Option<Epoch>, BackupError> {
    let foreign = |reason: &str| BackupError::Foreign {
        path: database.to_owned(),
        reason: reason.to_owned(),
    };
    let conn = Connection::open_with_flags(
        database,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let application_id: i64 = conn
        .query_row("PRAGMA application_id", [], |row| row.get(0))
        .map_err(|_| foreign("it is not a SQLite database"))?;
    if application_id != APPLICATION_ID {
        return Err(foreign("it is not a Tally database (its application_id is not Tally's)"));
    }
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if !(1..=SCHEMA_VERSION).contains(&version) {
        return Err(foreign("it was written by a newer version of Tally"));
    }
    if version < EPOCH_SCHEMA_VERSION {
        return Ok(None);
    }
    let text: String = conn.query_row("SELECT epoch FROM meta", [], |row| row.get(0))?;
    Epoch::parse(&text)
        .map(Some)
        .map_err(|_| foreign("its epoch is damaged (meta.epoch is not 16 hexadecimal digits)"))
}

fn create_empty(out: &Path) -> Result<(), BackupError> {
    match files::create_new_private(out) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            Err(BackupError::Exists(out.to_owned()))
        }
        Err(source) => Err(BackupError::Write { path: out.to_owned(), source }),
    }
}

fn copy(
    database: &Path,
    out: &Path,
    source_epoch: Option<Epoch>,
) -> Result<BackupSummary, BackupError> {
    let write_error = |source: io::Error| BackupError::Write { path: out.to_owned(), source };
    {
        let source = Connection::open_with_flags(
            database,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Waits for a writer's lock on the WAL index rather than failing at once.
        source.busy_timeout(std::time::Duration::from_secs(5))?;
        let target = out.to_str().ok_or_else(|| {
            write_error(io::Error::new(io::ErrorKind::InvalidInput, "the path is not UTF-8"))
        })?;
        source.execute("VACUUM INTO ?1", [target])?;
    }
    let copy = Connection::open(out)?;
    let report: String = copy.query_row("PRAGMA integrity_check", [], |row| row.get(0))?;
    if report != "ok" {
        return Err(BackupError::Corrupt(report));
    }
    let epoch = match source_epoch {
        None => None,
        Some(_) => {
            let fresh: String =
                copy.query_row("SELECT lower(hex(randomblob(8)))", [], |row| row.get(0))?;
            copy.execute("UPDATE meta SET epoch = ?1", [&fresh])?;
            // The copy is another history: its new epoch covers every name, including those
            // deleted before (whose epochs the live database keeps), when the schema has them.
            let epochs: i64 = copy.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'counter_epochs'",
                [],
                |row| row.get(0),
            )?;
            if epochs > 0 {
                copy.execute("DELETE FROM counter_epochs", [])?;
            }
            Some(Epoch::parse(&fresh).map_err(|error| BackupError::Corrupt(error.message))?)
        }
    };
    let counters: i64 = copy.query_row("SELECT count(*) FROM counters", [], |row| row.get(0))?;
    drop(copy);
    // The copy is only a backup once it is on disk: the file, and its name in the folder.
    let file = File::open(out).map_err(write_error)?;
    files::sync_with_folder(&file, out).map_err(write_error)?;
    let bytes = file.metadata().map_err(write_error)?.len();
    Ok(BackupSummary {
        counters: u64::try_from(counters).unwrap_or_default(),
        bytes,
        source_epoch,
        epoch,
    })
}
