//! The `tally` command: parses flags, then runs the server or talks to one.

mod commands;
mod output;
mod serve;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::commands::{CliError, HistoryArgs};

/// Tally: live counters. Change a named counter over HTTP; everyone watching it sees the change
/// live, in order, with nothing lost.
#[derive(Debug, Parser)]
#[command(name = "tally", version, about, long_about = None, after_help = EXIT_CODES)]
struct Cli {
    /// The Tally server to talk to.
    #[arg(
        long,
        global = true,
        env = "TALLY_URL",
        default_value = "http://127.0.0.1:8094",
        value_name = "URL"
    )]
    url: String,

    /// Print JSON for scripts (one object per line) instead of text for people.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit codes: 0 success (also when the reader of the output goes away), \
1 the server refused the request or failed, 2 bad command line, 3 the server cannot be reached.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: the web page at /, HTTP RPC at /rpc/counter.{procedure}, WebSocket at
    /// /ws/counter/{name}, Prometheus metrics at /metrics.
    Serve(Box<serve::ServeArgs>),
    /// Show a counter's value and metadata.
    Get {
        /// The counter.
        name: String,
    },
    /// Add to a counter.
    Incr {
        /// The counter.
        name: String,
        /// How much to add (a whole number >= 1).
        #[arg(default_value_t = 1)]
        amount: i64,
    },
    /// Subtract from a counter.
    Decr {
        /// The counter.
        name: String,
        /// How much to subtract (a whole number >= 1).
        #[arg(default_value_t = 1)]
        amount: i64,
    },
    /// Set a counter to a value.
    Set {
        /// The counter.
        name: String,
        /// The new value (within ±9007199254740991).
        #[arg(allow_negative_numbers = true)]
        value: i64,
    },
    /// Set a counter to 0.
    Reset {
        /// The counter.
        name: String,
    },
    /// Show a counter's recent operations, newest first.
    History(HistoryArgs),
    /// Print each change of a counter live, one line each, until Ctrl-C. Reconnects by itself
    /// and resumes where it left off, so no change is missed or shown twice.
    Watch {
        /// The counter.
        name: String,
        /// Start after this version: replay the changes since then, then go live.
        #[arg(long, value_name = "VERSION")]
        since: Option<u64>,
    },
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
        Command::Completions { shell } => {
            // Generated into memory first: clap_complete panics on a write error, and a closed
            // pipe (`| head`) must end quietly.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tally", &mut script);
            output::Printer::new(false).raw(&script)
        }
        command => run_client_command(&cli.url, cli.json, command),
    };
    match result {
        Ok(()) | Err(CliError::BrokenPipe) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn run_client_command(url: &str, json: bool, command: Command) -> Result<(), CliError> {
    let client = tally_client::Client::new(url).map_err(CliError::Client)?;
    let mut out = output::Printer::new(json);
    match command {
        Command::Get { name } => commands::get(&client, &mut out, &name).await,
        Command::Incr { name, amount } => {
            commands::apply(&mut out, client.increment(&name, amount).await)
        }
        Command::Decr { name, amount } => {
            commands::apply(&mut out, client.decrement(&name, amount).await)
        }
        Command::Set { name, value } => {
            commands::apply(&mut out, client.set_value(&name, value).await)
        }
        Command::Reset { name } => commands::apply(&mut out, client.reset(&name).await),
        Command::History(args) => commands::history(&client, &mut out, &args).await,
        Command::Watch { name, since } => commands::watch(&client, &mut out, &name, since).await,
        Command::Serve(_) | Command::Completions { .. } => unreachable!("handled in main"),
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
