//! The subcommands that talk to a server.

use std::fmt;

use futures_util::StreamExt;
use tally_client::{Client, ClientError, Update, WatchEvent, WatchOptions};
use tally_proto::limits::HISTORY_PAGE_MAX;
use tally_proto::{Resumed, ServerMessage};

use crate::output::{self, Printer};

/// Why a client command failed; each kind has its exit code.
#[derive(Debug)]
pub(crate) enum CliError {
    /// From the client library: refused (1), unreachable (3), or odd (1).
    Client(ClientError),
    /// Writing the output failed for another reason than a closed pipe.
    Output(std::io::Error),
    /// The reader of our output went away: not an error for a command line tool.
    BrokenPipe,
    /// A flag's value cannot be used (exit 2, like clap's own refusals).
    Usage(String),
}

impl CliError {
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(ClientError::Connect { .. }) => 3,
            CliError::Client(ClientError::InvalidUrl { .. }) | CliError::Usage(_) => 2,
            CliError::Client(_) | CliError::Output(_) => 1,
            CliError::BrokenPipe => 0,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Client(error @ ClientError::Connect { .. }) => {
                write!(f, "{error}; is `tally serve` running there? (set --url or TALLY_URL)")
            }
            CliError::Client(ClientError::Rejected { message, .. }) => f.write_str(message),
            CliError::Client(error @ ClientError::Unauthenticated { .. }) => {
                write!(f, "{error}; give a valid token with --token or TALLY_TOKEN")
            }
            CliError::Client(ClientError::RateLimited { message, .. }) => {
                write!(f, "rate limited: {message}")
            }
            CliError::Usage(message) => f.write_str(message),
            CliError::Client(error) => write!(f, "{error}"),
            CliError::Output(error) => write!(f, "cannot write the output: {error}"),
            CliError::BrokenPipe => f.write_str("output closed"),
        }
    }
}

impl From<ClientError> for CliError {
    fn from(error: ClientError) -> Self {
        CliError::Client(error)
    }
}

pub(crate) async fn get(client: &Client, out: &mut Printer, name: &str) -> Result<(), CliError> {
    let metadata = client.get_metadata(name).await?;
    if out.json {
        return out.json_line(&metadata);
    }
    for line in output::metadata_lines(&metadata) {
        out.line(&line)?;
    }
    Ok(())
}

pub(crate) fn apply(
    out: &mut Printer,
    result: Result<Update, ClientError>,
) -> Result<(), CliError> {
    let update = result?;
    if out.json { out.json_line(&update) } else { out.line(&output::update_line(&update)) }
}

/// Flags of `tally history`.
#[derive(Debug, clap::Args)]
pub(crate) struct HistoryArgs {
    /// The counter.
    name: String,
    /// How many entries per page (1 to 1000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=i64::from(HISTORY_PAGE_MAX)))]
    limit: u32,
    /// Only entries older than this version (the `next` of the previous page).
    #[arg(long, value_name = "VERSION")]
    before: Option<u64>,
    /// Every kept entry, page after page, instead of one page.
    #[arg(long)]
    all: bool,
}

pub(crate) async fn history(
    client: &Client,
    out: &mut Printer,
    args: &HistoryArgs,
) -> Result<(), CliError> {
    let mut before = args.before;
    let mut entries = Vec::new();
    loop {
        let page = client.get_history(&args.name, Some(args.limit), before).await?;
        if out.json {
            for entry in &page.entries {
                out.json_line(entry)?;
            }
        } else {
            entries.extend(page.entries);
        }
        match page.next {
            Some(next) if args.all => before = Some(next),
            next => {
                if out.json {
                    print_older_hint(&args.name, next);
                } else {
                    print_history(out, &args.name, &entries, next)?;
                }
                return Ok(());
            }
        }
    }
}

fn print_history(
    out: &mut Printer,
    name: &str,
    entries: &[tally_client::Entry],
    next: Option<u64>,
) -> Result<(), CliError> {
    if entries.is_empty() {
        return out.line(&format!("{name}: no history"));
    }
    for line in output::history_table(entries) {
        out.line(&line)?;
    }
    print_older_hint(name, next);
    Ok(())
}

/// Tells people (on stderr, so scripts reading stdout are not disturbed) how to get more.
fn print_older_hint(name: &str, next: Option<u64>) {
    if let Some(next) = next {
        eprintln!("(older entries: tally history {name} --before {next})");
    }
}

pub(crate) async fn watch(
    client: &Client,
    out: &mut Printer,
    name: &str,
    since: Option<u64>,
) -> Result<(), CliError> {
    let mut watch = client.watch_with(name, WatchOptions { since, ..WatchOptions::default() });
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // Until the first connection succeeds, an unreachable server is an error like for every
    // other command; after that, the watch rides out restarts.
    let mut connected_once = false;
    loop {
        let event = tokio::select! {
            event = watch.next() => event,
            _ = &mut ctrl_c => return Ok(()),
        };
        let Some(event) = event else { return Ok(()) };
        match event {
            WatchEvent::Connected => {
                connected_once = true;
                eprintln!("connected to {}", client.base_url());
            }
            WatchEvent::Snapshot(snapshot) => {
                if out.json {
                    out.line(&ServerMessage::Snapshot(snapshot).to_json())?;
                } else {
                    let note = if snapshot.resync {
                        "  (resynced: changes in between were too old to replay)"
                    } else {
                        ""
                    };
                    out.line(&format!(
                        "{name}: {}  (version {}){note}",
                        snapshot.value, snapshot.version
                    ))?;
                }
            }
            WatchEvent::Resumed { since, version } => {
                if out.json {
                    out.line(&ServerMessage::Resumed(Resumed { since, version }).to_json())?;
                } else {
                    eprintln!("resumed after version {since}");
                }
            }
            WatchEvent::Update(update) => {
                if out.json {
                    out.line(&ServerMessage::Update(update).to_json())?;
                } else {
                    out.line(&output::watch_line(&update))?;
                }
            }
            WatchEvent::Disconnected { reason, .. } if !connected_once => {
                return Err(CliError::Client(ClientError::Connect {
                    url: client.base_url().to_owned(),
                    reason,
                }));
            }
            WatchEvent::Disconnected { reason, retry_in } => {
                eprintln!("disconnected: {reason}; retrying in {:.1}s", retry_in.as_secs_f64());
            }
            WatchEvent::Failed(error) => return Err(error.into()),
            _ => {}
        }
    }
}
