//! The `tally` command: parses flags, then runs the server or talks to one.

mod commands;
mod export;
mod keys;
mod output;
mod serve;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use tally_client::Write;

use crate::commands::{
    CliError, ConfigureArgs, HistoryArgs, KeyArg, ListArgs, VersionArg, WatchArgs,
};

/// Tally: live counters. Change a named counter over HTTP; everyone watching it sees the change
/// live, in order, with nothing lost.
#[derive(Debug, Parser)]
#[command(name = "tally", version, about, long_about = None, after_help = EXIT_CODES)]
struct Cli {
    /// The Tally server to talk to; for a cluster (several `tally serve` on one database),
    /// its nodes, comma-separated (`--url http://a:8094,http://b:8094`, or the flag repeated).
    /// Calls and watches start on the first and move on to the next when one cannot be
    /// reached; a watch resumes there with no gap.
    #[arg(
        long,
        global = true,
        env = "TALLY_URL",
        default_value = "http://127.0.0.1:8094",
        value_name = "URL[,URL...]",
        value_delimiter = ','
    )]
    url: Vec<String>,

    /// Print JSON for scripts (one object per line) instead of text for people.
    #[arg(long, global = true)]
    json: bool,

    /// The credential to send to the server: a JWT (see `tally token`) or an API key
    /// (`tally_…`, see `tally key create`). Prefer TALLY_TOKEN: a flag's value shows in `ps`.
    #[arg(long, global = true, env = "TALLY_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    token: Option<String>,

    /// Also trust the CA certificate(s) in this PEM file, for an https:// server with a
    /// self-signed or private certificate.
    #[arg(long, global = true, env = "TALLY_CA_CERT", value_name = "PEM")]
    ca_cert: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit codes: 0 success (also when the reader of the output goes away), \
1 the server refused the request or failed, 2 bad command line, 3 the server cannot be reached.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: the web page at /, HTTP RPC at /rpc/counter.{procedure}, WebSockets at
    /// /ws (many counters) and /ws/counter/{name} (one), Prometheus metrics at /metrics.
    Serve(Box<serve::ServeArgs>),
    /// Apply the PostgreSQL schema's migrations and exit (`serve` applies them too, at start;
    /// this is for deploys that migrate first). Safe beside running nodes: migrations take a
    /// lock, and each is applied once.
    Migrate {
        /// The PostgreSQL database (`postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`).
        #[arg(long, env = "TALLY_DATABASE", value_name = "URL")]
        database: String,
    },
    /// Copy a SQLite database to a new file while the server goes on writing: consistent (one
    /// commit's state, holding every write answered before the backup started), checked with
    /// SQLite's integrity check, synced, and under a new epoch, so that clients resuming
    /// against it once restored start over from a snapshot. Restore with `tally restore`.
    /// (PostgreSQL is backed up with pg_dump; docs/CLUSTER.md.)
    Backup {
        /// The new file to write (never overwritten).
        #[arg(value_name = "OUT")]
        out: std::path::PathBuf,
        /// The SQLite database, as for `serve`.
        #[arg(long, env = "TALLY_DATABASE", default_value = "tally.db", value_name = "PATH")]
        database: String,
    },
    /// Restore a backup as a new SQLite database: copied as `tally backup` copies (checked,
    /// synced), under a new epoch at every restore, so that clients of an earlier restore, or of
    /// the database the backup came from, start over from a snapshot. The database must not
    /// exist (nor its -wal and -shm files): stop the server and move the old one away first.
    Restore {
        /// The backup to restore (a file `tally backup` wrote).
        #[arg(value_name = "BACKUP")]
        backup: std::path::PathBuf,
        /// The new SQLite database, as for `serve`.
        #[arg(long, env = "TALLY_DATABASE", default_value = "tally.db", value_name = "PATH")]
        database: String,
    },
    /// Write every counter with the history the store kept (--history-limit) as JSON Lines:
    /// a header line with the format version and the database's epoch, then one line per
    /// counter (docs/EXPORT.md). Read online from one snapshot, beside a running server, so it
    /// holds every write answered before it began. With `tally import`, this moves data from
    /// SQLite to PostgreSQL and back. Idempotency records and API keys are not exported.
    Export(export::ExportArgs),
    /// Read what `tally export` wrote into an empty database, in one transaction: every line
    /// is checked (name, values in range, versions consecutive and values chained), and any
    /// fault names its line and imports nothing. The database gets a new epoch, so clients
    /// resuming against it start over from a snapshot.
    Import(export::ImportArgs),
    /// Show a counter's value and metadata.
    Get {
        /// The counter.
        name: String,
    },
    /// Add to a counter.
    ///
    /// Like every write, it carries an idempotency key and is sent again while its fate is
    /// unknown (a timeout, a lost connection, a restarting server), so it counts once.
    Incr {
        /// The counter.
        name: String,
        /// How much to add (a whole number >= 1).
        #[arg(default_value_t = 1)]
        amount: i64,
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        version: VersionArg,
    },
    /// Subtract from a counter.
    Decr {
        /// The counter.
        name: String,
        /// How much to subtract (a whole number >= 1).
        #[arg(default_value_t = 1)]
        amount: i64,
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        version: VersionArg,
    },
    /// Set a counter to a value.
    Set {
        /// The counter.
        name: String,
        /// The new value (within ±9007199254740991).
        #[arg(allow_negative_numbers = true)]
        value: i64,
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        version: VersionArg,
    },
    /// Set a counter to 0.
    Reset {
        /// The counter.
        name: String,
        #[command(flatten)]
        key: KeyArg,
    },
    /// Delete a counter (needs admin on it): its value, history and idempotency keys go, its
    /// watchers are unsubscribed, and a later write starts it again at version 1. There is no
    /// undo, so `--yes` is required. Deleting a counter that is not stored changes nothing and
    /// succeeds, so running it again is safe.
    Delete {
        /// The counter.
        name: String,
        /// Confirm the deletion (required: the command never asks).
        #[arg(long, required = true)]
        yes: bool,
    },
    /// List the counters you may read, in name order, with value, version, watchers (on the
    /// server answering), operations in the last minute and last change: one page (`--limit`,
    /// 100 by default), or `--all`.
    List(ListArgs),
    /// Set a counter's bounds (needs admin on it): writes that would take it below --min or
    /// above --max are refused (exit 1, out_of_bounds) and change nothing, or with --clamp
    /// increments and decrements stop at the bound. The bounds given replace the old ones
    /// whole: `tally configure NAME` alone clears them. Refused if the counter's value lies
    /// outside the new bounds; a counter never written is created at 0.
    Configure(ConfigureArgs),
    /// Show a counter's recent operations, newest first.
    History(HistoryArgs),
    /// Print each change of one or more counters live, one line each, until Ctrl-C. All of
    /// them share one socket, which reconnects by itself and resumes where each left off, so
    /// no change is missed or shown twice.
    Watch(WatchArgs),
    /// Print a signed token (an HS256 JWT) for a server started with --jwt-secret-file, for
    /// trying things out and for scripts.
    Token(token::TokenArgs),
    /// Create, list and revoke API keys (needs a token with the grant *=admin).
    #[command(subcommand)]
    Key(keys::KeyCommand),
    /// Print a shell completion script (e.g. `tally completions bash > /etc/bash_completion.d/tally`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            init_logging();
            return match serve::serve(&args) {
                Ok(()) => ExitCode::SUCCESS,
                // A mistake in the flags or their files, as clap's own exit with 2.
                Err(error) if error.is::<serve::UsageError>() => {
                    eprintln!("error: {error:#}");
                    ExitCode::from(2)
                }
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Migrate { database } => {
            init_logging();
            return serve::migrate(&database);
        }
        Command::Backup { out, database } => {
            return serve::backup(&database, &out, &mut output::Printer::new(cli.json));
        }
        Command::Restore { backup, database } => {
            return serve::restore(&backup, &database, &mut output::Printer::new(cli.json));
        }
        Command::Export(args) => {
            return export::export(&args, &mut output::Printer::new(cli.json));
        }
        Command::Import(args) => {
            return export::import(&args, &mut output::Printer::new(cli.json));
        }
        Command::Completions { shell } => {
            // Generated into memory first: clap_complete panics on a write error, and a closed
            // pipe (`| head`) must end quietly.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tally", &mut script);
            output::Printer::new(false).raw(&script)
        }
        Command::Token(args) => token::run(&args, &mut output::Printer::new(cli.json)),
        command => {
            let options = ClientOptions { urls: cli.url, token: cli.token, ca_cert: cli.ca_cert };
            run_client_command(&options, cli.json, command)
        }
    };
    match result {
        Ok(()) | Err(CliError::BrokenPipe) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// The global flags that say how to reach the server.
struct ClientOptions {
    /// The servers, in order (at least one: `--url` has a default).
    urls: Vec<String>,
    token: Option<String>,
    ca_cert: Option<PathBuf>,
}

impl ClientOptions {
    /// The client these flags describe.
    fn client(&self) -> Result<tally_client::Client, CliError> {
        let urls = self.urls.iter().map(|url| url.trim()).filter(|url| !url.is_empty());
        let mut builder = tally_client::Client::builder_with_urls(urls);
        if let Some(token) = self.token.as_deref().map(str::trim).filter(|token| !token.is_empty())
        {
            builder = builder.token(token);
        }
        if let Some(path) = &self.ca_cert {
            let pem = std::fs::read(path).map_err(|error| {
                CliError::Usage(format!("cannot read --ca-cert {}: {error}", path.display()))
            })?;
            builder = builder.add_root_certificate_pem(pem);
        }
        builder.build().map_err(|error| match error {
            tally_client::ClientError::InvalidCertificate { reason } => {
                let path = self.ca_cert.as_deref().unwrap_or(std::path::Path::new("?"));
                CliError::Usage(format!("--ca-cert {}: {reason}", path.display()))
            }
            error => CliError::Client(error),
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn run_client_command(
    options: &ClientOptions,
    json: bool,
    command: Command,
) -> Result<(), CliError> {
    let client = options.client()?;
    let mut out = output::Printer::new(json);
    match command {
        Command::Get { name } => commands::get(&client, &mut out, &name).await,
        Command::Incr { name, amount, key, version } => {
            let write = version.apply(key.apply(Write::increment(&name, amount)));
            commands::write(&client, &mut out, write).await
        }
        Command::Decr { name, amount, key, version } => {
            let write = version.apply(key.apply(Write::decrement(&name, amount)));
            commands::write(&client, &mut out, write).await
        }
        Command::Set { name, value, key, version } => {
            let write = version.apply(key.apply(Write::set_value(&name, value)));
            commands::write(&client, &mut out, write).await
        }
        Command::Reset { name, key } => {
            commands::write(&client, &mut out, key.apply(Write::reset(&name))).await
        }
        Command::Delete { name, yes: _ } => commands::delete(&client, &mut out, &name).await,
        Command::List(args) => commands::list(&client, &mut out, &args).await,
        Command::Configure(args) => commands::configure(&client, &mut out, &args).await,
        Command::History(args) => commands::history(&client, &mut out, &args).await,
        Command::Watch(args) => commands::watch(&client, &mut out, &args).await,
        Command::Key(command) => keys::run(&client, &mut out, command).await,
        Command::Serve(_)
        | Command::Migrate { .. }
        | Command::Backup { .. }
        | Command::Restore { .. }
        | Command::Export(_)
        | Command::Import(_)
        | Command::Completions { .. }
        | Command::Token(_) => {
            unreachable!("handled in main")
        }
    }
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
