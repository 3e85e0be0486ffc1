//! The subcommands that talk to a server.

use std::fmt;

use futures_util::StreamExt;
use futures_util::stream::select_all;
use tally_client::{
    Client, ClientError, ConnectionEvent, IdempotencyKey, OpKind, SubscribeOptions,
    SubscriptionEvent, Write,
};
use tally_proto::limits::{HISTORY_PAGE_MAX, LIST_PAGE_DEFAULT, LIST_PAGE_MAX};
use tally_proto::socket::Frame;
use tally_proto::{Epoch, Snapshot};

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

/// `tally delete NAME --yes`: what the server removed.
pub(crate) async fn delete(client: &Client, out: &mut Printer, name: &str) -> Result<(), CliError> {
    let deleted = client.delete(name).await?;
    if out.json {
        return out.json_line(&deleted);
    }
    if deleted.deleted {
        out.line(&format!("deleted {name} (it was at version {})", deleted.version))
    } else {
        out.line(&format!("{name} is not stored; nothing was deleted"))
    }
}

/// The idempotency key flag of every write.
#[derive(Debug, clap::Args)]
pub(crate) struct KeyArg {
    /// Send the write under this idempotency key (1 to 128 printable ASCII characters)
    /// instead of a fresh random one. Running the command again with the same key applies the
    /// write at most once (within the server's idempotency window), so a script may retry
    /// `tally incr` safely; the same key with another write is refused.
    #[arg(long, value_name = "KEY", value_parser = parse_key)]
    idempotency_key: Option<IdempotencyKey>,
}

impl KeyArg {
    /// `write` under the given key, if one was given.
    pub(crate) fn apply(self, write: Write) -> Write {
        match self.idempotency_key {
            Some(key) => write.with_key(key),
            None => write,
        }
    }
}

/// `--expect-version`, on the writes that take one.
#[derive(Debug, clap::Args)]
pub(crate) struct VersionArg {
    /// Apply the write only if the counter is at this version (0: never written), as read with
    /// `tally get`; otherwise it is refused (exit 1, version_conflict, saying the current
    /// version) and nothing changes: compare-and-set.
    #[arg(long, value_name = "VERSION")]
    expect_version: Option<u64>,
}

impl VersionArg {
    /// `write` expecting the given version, if one was given.
    pub(crate) fn apply(self, write: Write) -> Write {
        match self.expect_version {
            Some(version) => write.expecting_version(version),
            None => write,
        }
    }
}

fn parse_key(text: &str) -> Result<IdempotencyKey, String> {
    IdempotencyKey::parse(text).map_err(|error| error.message)
}

/// Applies `write` (sent again with its key while its fate is unknown) and prints the update.
pub(crate) async fn write(
    client: &Client,
    out: &mut Printer,
    write: Write,
) -> Result<(), CliError> {
    let update = client.write(&write).await?;
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

/// Flags of `tally list`.
#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// Only counters whose name starts with this (every counter when absent).
    prefix: Option<String>,
    /// How many counters per page (1 to 1000).
    #[arg(long, default_value_t = LIST_PAGE_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=i64::from(LIST_PAGE_MAX)))]
    limit: u32,
    /// Start after this counter name (the `next` of the previous page).
    #[arg(long, value_name = "NAME")]
    after: Option<String>,
    /// Every counter, page after page, instead of one page.
    #[arg(long)]
    all: bool,
}

/// `tally list`: the counters the credential may read, in name order.
pub(crate) async fn list(
    client: &Client,
    out: &mut Printer,
    args: &ListArgs,
) -> Result<(), CliError> {
    let prefix = args.prefix.as_deref().unwrap_or_default();
    let mut after = args.after.clone();
    let mut counters = Vec::new();
    loop {
        let page = client.list(prefix, after.as_deref(), Some(args.limit)).await?;
        if out.json {
            for counter in &page.counters {
                out.json_line(counter)?;
            }
        } else {
            counters.extend(page.counters);
        }
        match page.next {
            Some(next) if args.all => after = Some(next),
            next => {
                if !out.json {
                    if counters.is_empty() && next.is_none() {
                        let which = if prefix.is_empty() {
                            String::new()
                        } else {
                            format!(" named {prefix}…")
                        };
                        out.line(&format!("no counters{which}"))?;
                    } else {
                        for line in output::list_table(&counters) {
                            out.line(&line)?;
                        }
                    }
                }
                if let Some(next) = next {
                    // On stderr, so scripts reading stdout are not disturbed.
                    let prefix =
                        if prefix.is_empty() { String::new() } else { format!("{prefix} ") };
                    eprintln!("(more: tally list {prefix}--after {next}, or --all)");
                }
                return Ok(());
            }
        }
    }
}

/// Flags of `tally watch`.
#[derive(Debug, clap::Args)]
pub(crate) struct WatchArgs {
    /// The counters, one or more.
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
    /// Start after this version: replay the changes since then, then go live (one counter only).
    #[arg(long, value_name = "VERSION")]
    since: Option<u64>,
    /// The database epoch VERSION belongs to (the `epoch` of the snapshot or `resumed` it came
    /// with): if the server's database is another one, the watch starts over with a snapshot
    /// instead of replaying another history's changes.
    #[arg(long, value_name = "EPOCH", requires = "since", value_parser = parse_epoch)]
    epoch: Option<Epoch>,
    /// Also print how many watch each counter (watchers and distinct users) when it changes,
    /// at most once a second.
    #[arg(long)]
    presence: bool,
    /// Only changes of these types (comma-separated: increment, decrement, setValue, reset).
    /// Versions then jump over the others.
    #[arg(long, value_name = "TYPES", value_delimiter = ',', value_parser = parse_type)]
    types: Option<Vec<OpKind>>,
    /// At most this many changes a second per counter, each the latest state (0 < N <= 1000).
    #[arg(long, value_name = "N")]
    max_rate: Option<f64>,
}

fn parse_epoch(text: &str) -> Result<Epoch, String> {
    Epoch::parse(text).map_err(|error| error.message)
}

fn parse_type(text: &str) -> Result<OpKind, String> {
    OpKind::from_name(text.trim()).ok_or_else(|| {
        format!("{text:?} is not an update type; allowed: increment, decrement, setValue, reset")
    })
}

pub(crate) async fn watch(
    client: &Client,
    out: &mut Printer,
    args: &WatchArgs,
) -> Result<(), CliError> {
    if args.since.is_some() && args.names.len() > 1 {
        return Err(CliError::Usage(
            "--since is a version of one counter; give it with a single counter name".into(),
        ));
    }
    // A counter named twice is watched once.
    let mut names: Vec<&String> = Vec::with_capacity(args.names.len());
    for name in &args.names {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let connection = client.connect();
    let mut connection_events = connection.events();
    let options = SubscribeOptions {
        since: args.since,
        epoch: args.epoch.clone(),
        types: args.types.clone(),
        max_rate: args.max_rate,
        presence: args.presence,
    };
    let mut subscriptions = select_all(names.iter().map(|name| {
        let subscription = connection.subscribe_with(name, options.clone());
        let name = (*name).clone();
        subscription.map(move |event| (name.clone(), event))
    }));
    // With one counter, text lines look as they always did; with more, each names its counter.
    let named = names.len() > 1;
    // Subscriptions not ended yet: when none is left, the last one's error ends the command.
    let mut live = names.len();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // Until the first connection succeeds, an unreachable server is an error like for every
    // other command (once every URL was tried, each attempt going to the next); after that,
    // the watch rides out restarts and lost nodes.
    let mut connected_once = false;
    let mut failed_attempts = 0;
    loop {
        let (name, event) = tokio::select! {
            event = connection_events.next() => {
                match event {
                    Some(ConnectionEvent::Connected) => {
                        connected_once = true;
                        eprintln!("connected to {}", connection.server_url());
                    }
                    Some(ConnectionEvent::Disconnected { reason, .. })
                        if !connected_once && failed_attempts + 1 >= client.base_urls().len() =>
                    {
                        return Err(CliError::Client(ClientError::Connect {
                            url: client.base_urls().join(", "),
                            reason,
                        }));
                    }
                    // The next attempt goes to the next URL.
                    Some(ConnectionEvent::Disconnected { .. }) if !connected_once => {
                        failed_attempts += 1;
                    }
                    Some(ConnectionEvent::Disconnected { reason, retry_in }) => {
                        eprintln!("disconnected: {reason}; retrying in {:.1}s", retry_in.as_secs_f64());
                    }
                    // A stop ends every subscription with the error, handled below.
                    _ => {}
                }
                continue;
            }
            item = subscriptions.next() => match item {
                Some(item) => item,
                None => return Ok(()),
            },
            _ = &mut ctrl_c => return Ok(()),
        };
        match event {
            SubscriptionEvent::Snapshot(snapshot) => print_snapshot(out, &name, snapshot)?,
            SubscriptionEvent::Resumed { since, version, epoch } => {
                if out.json {
                    // A reply, printed as a push: its command id means nothing to a reader.
                    let name = serde_json::Value::from(name);
                    let epoch = epoch.map(|epoch| format!(r#","epoch":"{epoch}""#));
                    let epoch = epoch.unwrap_or_default();
                    out.line(&format!(
                        r#"{{"type":"resumed","name":{name},"since":{since},"version":{version}{epoch}}}"#
                    ))?;
                } else if named {
                    eprintln!("{name}: resumed after version {since}");
                } else {
                    eprintln!("resumed after version {since}");
                }
            }
            SubscriptionEvent::Update(update) | SubscriptionEvent::Conflated(update)
                if !out.json =>
            {
                if named {
                    out.line(&output::named_watch_line(&name, &update))?;
                } else {
                    out.line(&output::watch_line(&update))?;
                }
            }
            SubscriptionEvent::Update(update) => {
                out.line(&Frame::Update { name, update, conflated: false }.to_json())?;
            }
            SubscriptionEvent::Conflated(update) => {
                out.line(&Frame::Update { name, update, conflated: true }.to_json())?;
            }
            SubscriptionEvent::Presence(presence) => {
                if out.json {
                    out.line(&Frame::Presence { name, presence }.to_json())?;
                } else {
                    out.line(&output::presence_line(&name, &presence))?;
                }
            }
            SubscriptionEvent::Ended(ended) => {
                let error = ended.into_error();
                live -= 1;
                if live == 0 {
                    return Err(error.into());
                }
                // The others go on; this one is reported.
                eprintln!("error: {name}: {}", CliError::Client(error));
            }
            _ => {}
        }
    }
}

fn print_snapshot(out: &mut Printer, name: &str, snapshot: Snapshot) -> Result<(), CliError> {
    if out.json {
        let frame = Frame::Snapshot { id: None, name: name.to_owned(), snapshot };
        return out.line(&frame.to_json());
    }
    let note = if snapshot.resync {
        "  (resynced: the changes in between could not be replayed)"
    } else {
        ""
    };
    out.line(&format!("{name}: {}  (version {}){note}", snapshot.value, snapshot.version))
}
