//! `tally export` and `tally import`: flags and files around `tally_server::store`'s export and
//! import (docs/EXPORT.md).

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tally_server::store::{self, ExportError, ImportError};

use crate::output::Printer;
use crate::serve::is_postgres_url;

/// The flags of `tally export`.
#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// The new file to write (never overwritten; readable by its owner only); without it, the
    /// export goes to stdout and the summary to stderr.
    #[arg(value_name = "OUT")]
    out: Option<PathBuf>,
    /// The database to export: a SQLite file or a postgres:// URL, as for `serve`.
    #[arg(long, env = "TALLY_DATABASE", default_value = "tally.db", value_name = "PATH|URL")]
    database: String,
}

/// The flags of `tally import`.
#[derive(Debug, clap::Args)]
pub(crate) struct ImportArgs {
    /// The export to read (what `tally export` wrote); without it, stdin.
    #[arg(value_name = "IN")]
    input: Option<PathBuf>,
    /// The database to import into, which must hold no counters: a new SQLite file (created),
    /// or a postgres:// URL of a database no node is serving (its schema is created if missing).
    #[arg(long, env = "TALLY_DATABASE", default_value = "tally.db", value_name = "PATH|URL")]
    database: String,
}

/// Runs `tally export`.
pub(crate) fn export(args: &ExportArgs, printer: &mut Printer) -> ExitCode {
    let shown = shown(&args.database);
    let result = match &args.out {
        Some(out) => export_to_file(&args.database, out),
        None => {
            let mut stdout = BufWriter::new(io::stdout().lock());
            run_export(&args.database, &mut stdout).map_err(anyhow::Error::from)
        }
    };
    let summary = match result {
        Ok(summary) => summary,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let written = args.out.as_ref().map(|out| out.display().to_string());
    let line = if printer.json {
        serde_json::json!({
            "database": shown,
            "export": written,
            "counters": summary.counters,
            "entries": summary.entries,
            "sourceEpoch": summary.source_epoch.to_string(),
        })
        .to_string()
    } else {
        format!(
            "exported {shown} to {}: {} counters, {} history entries, epoch {}",
            written.as_deref().unwrap_or("stdout"),
            summary.counters,
            summary.entries,
            summary.source_epoch
        )
    };
    if args.out.is_none() {
        // Stdout holds the export itself.
        eprintln!("{line}");
        return ExitCode::SUCCESS;
    }
    finish(printer, &line)
}

/// Runs `tally import`.
pub(crate) fn import(args: &ImportArgs, printer: &mut Printer) -> ExitCode {
    let shown = shown(&args.database);
    let result = match &args.input {
        Some(path) => match File::open(path) {
            Ok(file) => run_import(&args.database, &mut BufReader::new(file)),
            Err(error) => {
                eprintln!("error: cannot read {}: {error}; nothing was imported", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => run_import(&args.database, &mut io::stdin().lock()),
    };
    let summary = match result {
        Ok(summary) => summary,
        Err(error) => {
            eprintln!("error: {error}; nothing was imported");
            return ExitCode::FAILURE;
        }
    };
    let line = if printer.json {
        serde_json::json!({
            "database": shown,
            "counters": summary.counters,
            "entries": summary.entries,
            "epoch": summary.epoch.to_string(),
        })
        .to_string()
    } else {
        format!(
            "imported {} counters and {} history entries into {shown}, under the new epoch {}",
            summary.counters, summary.entries, summary.epoch
        )
    };
    finish(printer, &line)
}

fn finish(printer: &mut Printer, line: &str) -> ExitCode {
    match printer.line(line) {
        Ok(()) | Err(crate::commands::CliError::BrokenPipe) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// The database for messages: a URL without its password.
fn shown(database: &str) -> String {
    if is_postgres_url(database) { store::postgres::redact(database) } else { database.to_owned() }
}

fn run_export(database: &str, out: &mut dyn Write) -> Result<store::ExportSummary, ExportError> {
    if is_postgres_url(database) {
        runtime().map_err(ExportError::Write)?.block_on(store::export_postgres(database, out))
    } else {
        store::export_sqlite(Path::new(database), out)
    }
}

fn run_import(
    database: &str,
    input: &mut dyn BufRead,
) -> Result<store::ImportSummary, ImportError> {
    if is_postgres_url(database) {
        runtime().map_err(ImportError::Read)?.block_on(store::import_postgres(database, input))
    } else {
        store::import_sqlite(Path::new(database), input)
    }
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// Exports into the new file `out`, synced; a failed export removes it.
fn export_to_file(database: &str, out: &Path) -> anyhow::Result<store::ExportSummary> {
    use anyhow::Context as _;
    // It holds who changed what: readable by its owner only, as the database is.
    let file = store::files::create_new_private(out).map_err(|error| {
        if error.kind() == io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} exists already; an export never overwrites a file, so name a new one",
                out.display()
            )
        } else {
            anyhow::anyhow!("cannot create {}: {error}", out.display())
        }
    })?;
    let result = (|| {
        let mut writer = BufWriter::new(&file);
        let summary = run_export(database, &mut writer)?;
        writer.flush().with_context(|| format!("cannot write {}", out.display()))?;
        drop(writer);
        // The file is only there once its name is on disk too.
        store::files::sync_with_folder(&file, out)
            .with_context(|| format!("cannot sync {}", out.display()))?;
        anyhow::Ok(summary)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}
