//! `tally serve`: flags of the server, then `tally_server::run`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tally_proto::Grant;
use tally_server::access::{AuthConfig, JwtConfig, jwt::MAX_LEEWAY};
use tally_server::{
    Config, PostgresOptions, PostgresStore, SqliteOptions, SqliteStore, StaticFile, Store, WebPage,
};
use tokio::net::TcpListener;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address and port to listen on (port 0 picks a free one).
    #[arg(long, env = "TALLY_LISTEN", default_value = "127.0.0.1:8094", value_name = "ADDR:PORT")]
    listen: String,

    /// Where counters are stored: a SQLite file, created if missing (a `.lock` file sits beside
    /// it), or a PostgreSQL URL (`postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`), which any
    /// number of nodes may share (docs/CLUSTER.md). Give a URL with a password through
    /// TALLY_DATABASE rather than as a flag, which `ps` shows.
    #[arg(long, env = "TALLY_DATABASE", default_value = "tally.db", value_name = "PATH|URL")]
    pub(crate) database: String,

    /// PostgreSQL only: connections each node keeps for reads (loads, history, keys); the
    /// writer has one more of its own, and the notifications one more.
    #[arg(long, env = "TALLY_DATABASE_POOL", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000), value_name = "N")]
    database_pool: u32,

    /// PostgreSQL only: the URL to LISTEN for other nodes' changes on, when --database goes
    /// through a transaction-mode pooler (PgBouncer), which cannot hold a LISTEN: point this
    /// straight at PostgreSQL. Defaults to --database.
    #[arg(long, env = "TALLY_NOTIFY_DATABASE", value_name = "URL")]
    notify_database: Option<String>,

    /// A counter nobody touched for this long leaves memory; its watchers stay connected.
    #[arg(long, env = "TALLY_IDLE_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration, value_name = "DURATION")]
    idle_timeout: Duration,

    /// Each interval, ping every WebSocket that sent nothing during it; close one (4001) that
    /// stays silent through the next interval too.
    #[arg(long, env = "TALLY_PING_INTERVAL", default_value = "30s", value_parser = parse_positive_duration, value_name = "DURATION")]
    ping_interval: Duration,

    /// How many of the most recent operations to keep per counter (for getHistory and resume).
    #[arg(long, env = "TALLY_HISTORY_LIMIT", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    history_limit: u64,

    /// How many updates a watcher may fall behind before it is closed with 4000 (then it
    /// resumes from history).
    #[arg(long, env = "TALLY_WATCH_BUFFER", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000), value_name = "N")]
    watch_buffer: u32,

    /// How long a send to a watcher may stall before its connection is dropped as too slow (the
    /// client sees it end without a close frame and resumes with `since`).
    #[arg(long, env = "TALLY_SEND_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration, value_name = "DURATION")]
    send_timeout: Duration,

    /// On SIGINT/SIGTERM, how long to wait for requests and sockets to finish.
    #[arg(long, env = "TALLY_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    shutdown_grace: Duration,

    /// A web origin whose pages may use this server besides its own, e.g.
    /// http://localhost:5173 (repeat the flag, or separate with commas; * allows any).
    #[arg(
        long = "allow-origin",
        env = "TALLY_ALLOW_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    allow_origins: Vec<String>,

    /// Connections (HTTP and WebSocket) held at most; more are closed at once.
    #[arg(long, env = "TALLY_MAX_CONNECTIONS", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    max_connections: u32,

    /// Connections one client address may hold at most (behind a proxy, all its clients share
    /// one address: raise this there).
    #[arg(long, env = "TALLY_MAX_CONNECTIONS_PER_IP", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    max_connections_per_ip: u32,

    /// How long a connection may take to send a request's headers (a silent or trickling
    /// client is dropped after it).
    #[arg(long, env = "TALLY_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration, value_name = "DURATION")]
    header_timeout: Duration,

    /// How long a client may take to send an RPC's body (answered 408 after it, nothing done).
    #[arg(long, env = "TALLY_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration, value_name = "DURATION")]
    request_timeout: Duration,

    /// Watchers one counter may have at most (more are answered 503 too_many_watchers).
    #[arg(long, env = "TALLY_MAX_WATCHERS_PER_COUNTER", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    max_watchers_per_counter: u32,

    /// Replays from history running at once at most: resumes with since (and version-2 catch-ups);
    /// a resume past it waits for a place up to --send-timeout (a version-2 socket's resumes, all
    /// together), then is closed 1013 with a reconnect delay (version 1) or gets a resync snapshot
    /// (version 2).
    #[arg(long, env = "TALLY_MAX_REPLAYS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    max_replays: u32,

    /// Replays running at once for one client address at most (IPv6 by /64); past it, as for
    /// --max-replays.
    #[arg(long, env = "TALLY_MAX_REPLAYS_PER_ADDRESS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    max_replays_per_address: u32,

    /// Bytes of updates all replays together send per second at most (0: no bound).
    #[arg(long, env = "TALLY_REPLAY_BYTES_PER_SECOND", default_value_t = 32 * 1024 * 1024, value_name = "BYTES")]
    replay_bytes_per_second: u32,

    /// Messages a WebSocket client may send per second (past it: close 1008).
    #[arg(long, env = "TALLY_MAX_MESSAGES_PER_SECOND", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    max_messages_per_second: u32,

    /// How long an idempotency key is remembered after its write committed: a retry with the
    /// key within it is answered the first answer; after it, the write is applied again.
    #[arg(long, env = "TALLY_IDEMPOTENCY_WINDOW", default_value = "24h", value_parser = parse_positive_duration, value_name = "DURATION")]
    idempotency_window: Duration,

    /// Idempotency keys remembered per counter at most, the newest; an older key is forgotten
    /// before --idempotency-window ends.
    #[arg(long, env = "TALLY_IDEMPOTENCY_KEYS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000), value_name = "N")]
    idempotency_keys: u32,

    /// Counters the database may hold at most: at it, a write that would create a counter is
    /// refused 507 quota_exceeded, while writes to existing counters keep working. Off unless
    /// given.
    #[arg(long, env = "TALLY_MAX_COUNTERS", value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    max_counters: Option<u64>,

    /// Bytes the database may reach (a whole number, e.g. 1073741824 for 1 GiB): from then on a
    /// write that would create a counter is refused 507 quota_exceeded, while writes to
    /// existing counters keep working (their history is trimmed by --history-limit). Off
    /// unless given.
    #[arg(long, env = "TALLY_MAX_DATABASE_SIZE", value_parser = clap::value_parser!(u64).range(1..), value_name = "BYTES")]
    max_database_size: Option<u64>,

    /// Serve HTTPS and WSS with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(long, env = "TALLY_TLS_CERT", requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, env = "TALLY_TLS_KEY", requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<PathBuf>,

    /// Accept JWTs signed with HS256/384/512 by the secret in this file (its content, trailing
    /// whitespace trimmed; at least 32 bytes; a PEM or JSON key is refused). TALLY_JWT_SECRET
    /// may hold the secret itself instead (never as a flag value, which `ps` shows).
    #[arg(long, env = "TALLY_JWT_SECRET_FILE", value_name = "PATH", help_heading = "Access")]
    jwt_secret_file: Option<PathBuf>,

    /// Accept JWTs signed by this PEM public key: RSA (RS*, PS*), EC (ES256, ES384) or Ed25519
    /// (EdDSA). Repeat for several.
    #[arg(
        long,
        env = "TALLY_JWT_PUBLIC_KEY",
        value_delimiter = ',',
        value_name = "PEM",
        help_heading = "Access"
    )]
    jwt_public_key: Vec<PathBuf>,

    /// Accept JWTs signed by the keys of this JWKS file ({"keys": [...]}); a token whose `kid`
    /// names one of them is checked with that key alone, and `use: enc` keys are skipped.
    #[arg(long, env = "TALLY_JWT_JWKS", value_name = "PATH", help_heading = "Access")]
    jwt_jwks: Option<PathBuf>,

    /// Require this `aud` in every JWT (repeat to accept several).
    #[arg(
        long,
        env = "TALLY_JWT_AUDIENCE",
        value_delimiter = ',',
        value_name = "AUD",
        help_heading = "Access"
    )]
    jwt_audience: Vec<String>,

    /// Require this `iss` in every JWT (repeat to accept several).
    #[arg(
        long,
        env = "TALLY_JWT_ISSUER",
        value_delimiter = ',',
        value_name = "ISS",
        help_heading = "Access"
    )]
    jwt_issuer: Vec<String>,

    /// Clock skew allowed on a JWT's exp, nbf and iat.
    #[arg(long, env = "TALLY_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION", help_heading = "Access")]
    jwt_leeway: Duration,

    /// What requests without credentials may do, as grants: PATTERN=ACTION[<=CAP],... e.g.
    /// 'public:*=read' (repeat for several). Giving it turns auth on.
    #[arg(long, env = "TALLY_ANONYMOUS", value_delimiter = ';', value_name = "GRANT", value_parser = parse_grant, help_heading = "Access")]
    anonymous: Option<Vec<Grant>>,

    /// A host name this server answers to besides localhost and IP addresses (what clients put
    /// in the URL; repeat for several). Other Host headers are refused (DNS rebinding).
    #[arg(
        long = "public-host",
        env = "TALLY_PUBLIC_HOSTS",
        value_delimiter = ',',
        value_name = "NAME",
        help_heading = "Access"
    )]
    public_hosts: Vec<String>,

    /// Serve everyone everything on a non-loopback address with no auth configured. Without
    /// this the server refuses to start there.
    #[arg(long, env = "TALLY_INSECURE_OPEN", help_heading = "Access")]
    insecure_open: bool,

    /// Writes per second each principal may make (anonymous ones per address, IPv6 per /64);
    /// 0 for no limit. Past it: 429 with Retry-After.
    #[arg(
        long,
        env = "TALLY_WRITE_RATE",
        default_value_t = 0,
        value_name = "N",
        help_heading = "Access"
    )]
    write_rate: u32,

    /// Writes a principal may make at once before --write-rate applies (at least the rate).
    #[arg(
        long,
        env = "TALLY_WRITE_BURST",
        default_value_t = 0,
        value_name = "N",
        help_heading = "Access"
    )]
    write_burst: u32,

    /// How long a WebSocket without credentials, on a counter anonymous may not read, may take
    /// to send its auth message (then 4501).
    #[arg(long, env = "TALLY_AUTH_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration, value_name = "DURATION", help_heading = "Access")]
    auth_timeout: Duration,

    /// Subscriptions one /ws socket may hold at most (more: too_many_subscriptions).
    #[arg(long, env = "TALLY_MAX_SUBSCRIPTIONS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000), value_name = "N", help_heading = "Sockets")]
    max_subscriptions: u32,

    /// Calls one /ws socket may have waiting for their answers at most (more:
    /// too_many_in_flight).
    #[arg(long, env = "TALLY_MAX_IN_FLIGHT", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000), value_name = "N", help_heading = "Sockets")]
    max_in_flight: u32,

    /// Commands one /ws socket may send per second (more: rate_limited with retryAfterMs; the
    /// socket stays).
    #[arg(long, env = "TALLY_MAX_COMMANDS_PER_SECOND", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..), value_name = "N", help_heading = "Sockets")]
    max_commands_per_second: u32,

    /// On shutdown and load refusals, tell each socket to reconnect after a delay chosen at
    /// random up to this, so that clients come back spread out (0s: at once).
    #[arg(long, env = "TALLY_RECONNECT_SPREAD", default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION", help_heading = "Sockets")]
    reconnect_spread: Duration,
}

fn parse_grant(text: &str) -> Result<Grant, String> {
    Grant::parse(text).map_err(|error| error.message)
}

/// A mistake in the command line or its files: `tally serve` exits 2 with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

/// The access settings from the flags, their files read.
fn auth_config(args: &ServeArgs) -> Result<AuthConfig, UsageError> {
    if args.jwt_leeway > MAX_LEEWAY {
        return Err(UsageError(format!(
            "--jwt-leeway {} is more than the {} s allowed: a larger leeway quietly stops tokens from expiring",
            humantime::format_duration(args.jwt_leeway),
            MAX_LEEWAY.as_secs()
        )));
    }
    let mut public_hosts = Vec::new();
    for host in &args.public_hosts {
        let name = host.strip_suffix('.').unwrap_or(host);
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid {
            return Err(UsageError(format!(
                "--public-host {host:?} is not a host name; give the name alone, without scheme or port (e.g. counters.example.com)"
            )));
        }
        public_hosts.push(name.to_ascii_lowercase());
    }
    let mut jwt = JwtConfig::default();
    jwt.audience.clone_from(&args.jwt_audience);
    jwt.issuer.clone_from(&args.jwt_issuer);
    jwt.leeway = args.jwt_leeway;
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path).map_err(|error| {
            UsageError(format!("cannot read the {what} {}: {error}", path.display()))
        })
    };
    let secret = match (&args.jwt_secret_file, std::env::var_os("TALLY_JWT_SECRET")) {
        (Some(path), _) => Some(read(path, "JWT secret file")?),
        (None, Some(secret)) => Some(secret.into_encoded_bytes()),
        (None, None) => None,
    };
    if let Some(secret) = secret {
        let trimmed = secret.trim_ascii_end();
        jwt.add_secret(trimmed).map_err(|error| UsageError(error.to_string()))?;
    }
    for path in &args.jwt_public_key {
        jwt.add_public_pem(&read(path, "JWT public key")?)
            .map_err(|error| UsageError(format!("{}: {error}", path.display())))?;
    }
    if let Some(path) = &args.jwt_jwks {
        let text = String::from_utf8(read(path, "JWKS file")?).map_err(|_| {
            UsageError(format!("{}: a JWKS file must be UTF-8 JSON", path.display()))
        })?;
        jwt.add_jwks(&text).map_err(|error| UsageError(format!("{}: {error}", path.display())))?;
    }
    Ok(AuthConfig {
        jwt,
        anonymous: args.anonymous.clone(),
        public_hosts,
        write_rate: args.write_rate,
        write_burst: args.write_burst,
        auth_timeout: args.auth_timeout,
    })
}

/// Protected mode: open (no auth configured) is allowed only on loopback, or on purpose.
const OPEN_REFUSED: &str = "refusing to serve without auth on a non-loopback address: anyone who reaches it could change or reset every counter. Configure tokens (--jwt-secret-file PATH, --jwt-public-key PEM or --jwt-jwks FILE; see docs/SECURITY.md), or grant anonymous clients only what they need (--anonymous 'public:*=read'), or pass --insecure-open to serve everyone everything on purpose";

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        Ok(_) => Err("must be more than zero, e.g. 30s or 500ms".into()),
        Err(error) => Err(format!("{error}; write a duration such as 30s or 500ms")),
    }
}

/// The page that `tally-web` embedded at build time, as the server serves it.
fn embedded_web_page() -> anyhow::Result<WebPage> {
    if let Some(reason) = tally_web::fallback_reason() {
        tracing::warn!(
            "{reason} / serves a page that says how to build it; the RPC and WebSocket API work \
             regardless"
        );
    }
    let files = tally_web::assets().iter().map(|asset| StaticFile {
        path: asset.path,
        content_type: asset.content_type,
        bytes: asset.bytes,
        gzip: asset.gzip,
    });
    // Only a broken build could make this fail: tally-web's build script writes the table.
    WebPage::new(files).context("the web page embedded in this binary is unusable")
}

#[tokio::main]
pub(crate) async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let auth = auth_config(args)?;
    let (store, broker) = open_store(args).await?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr().context("reading the bound address")?;
    // The same decision the server will make, from the same keys: is it open?
    let keys = store.keys().await.context("reading the API keys")?;
    let (open, access) = tally_server::access::summarize(&auth, &keys);
    let loopback = address.ip().is_loopback();
    if open && !loopback && !args.insecure_open {
        return Err(UsageError(OPEN_REFUSED.into()).into());
    }
    let scheme = if args.tls_cert.is_some() { "https" } else { "http" };
    tracing::info!(
        "tally {} listening on {scheme}://{address}, storing counters in {}",
        env!("CARGO_PKG_VERSION"),
        store.describe()
    );
    if open && loopback {
        tracing::info!("access {access}, which is allowed because it listens on loopback only");
    } else if open {
        tracing::warn!("access {access}, on a non-loopback address (--insecure-open)");
    } else {
        tracing::info!("access {access}");
    }
    let config = config_from(args, auth, Some(embedded_web_page()?));
    tracing::info!("web page at {scheme}://{address}/");
    tally_server::run_node(listener, store, broker, config, tally_server::shutdown_signal())
        .await
        .context("serving")?;
    tracing::info!("tally stopped");
    Ok(())
}

/// Whether `--database` names PostgreSQL (a URL) rather than a SQLite file.
pub(crate) fn is_postgres_url(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

/// The store `--database` names, and the broker that goes with it: none for a SQLite file
/// (one node), PostgreSQL's notifications for a shared database.
async fn open_store(
    args: &ServeArgs,
) -> anyhow::Result<(Arc<dyn Store>, Box<dyn tally_server::Broker>)> {
    if is_postgres_url(&args.database) {
        let options = PostgresOptions {
            history_limit: args.history_limit,
            idempotency_window: args.idempotency_window,
            pool_size: args.database_pool as usize,
            quotas: quotas(args),
        };
        let store = PostgresStore::open(&args.database, options).await?;
        let notify = args.notify_database.as_deref().unwrap_or(&args.database);
        let broker = tally_server::PostgresBroker::new(notify)?;
        return Ok((Arc::new(store), Box::new(broker)));
    }
    if args.notify_database.is_some() {
        return Err(UsageError(
            "--notify-database is for a PostgreSQL --database (a postgres:// URL); a SQLite file has one node and nothing to listen to".into(),
        )
        .into());
    }
    let options = SqliteOptions {
        history_limit: args.history_limit,
        idempotency_window: args.idempotency_window,
        quotas: quotas(args),
    };
    let store = SqliteStore::open(std::path::Path::new(&args.database), options)?;
    Ok((Arc::new(store), Box::new(tally_server::LocalBroker)))
}

fn quotas(args: &ServeArgs) -> tally_server::Quotas {
    tally_server::Quotas {
        max_counters: args.max_counters,
        max_database_bytes: args.max_database_size,
    }
}

/// `tally migrate`: brings a PostgreSQL database's schema up to date and says what it did.
#[tokio::main]
pub(crate) async fn migrate(database: &str) -> std::process::ExitCode {
    if !is_postgres_url(database) {
        eprintln!(
            "error: --database must be a PostgreSQL URL (postgres://USER@HOST/DATABASE); a SQLite file is migrated by `tally serve` when it opens it"
        );
        return std::process::ExitCode::from(2);
    }
    match tally_server::store::postgres::migrate(database).await {
        Ok(0) => {
            println!(
                "{}: the schema is up to date",
                tally_server::store::postgres::redact(database)
            );
            std::process::ExitCode::SUCCESS
        }
        Ok(applied) => {
            println!(
                "{}: applied {applied} migration(s)",
                tally_server::store::postgres::redact(database)
            );
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `tally backup`: an online copy of a SQLite database (`tally_server::store::backup`).
pub(crate) fn backup(
    database: &str,
    out: &std::path::Path,
    printer: &mut crate::output::Printer,
) -> std::process::ExitCode {
    if is_postgres_url(database) {
        eprintln!(
            "error: --database is a PostgreSQL URL; back it up with pg_dump, and give a restored copy a new epoch before serving it (docs/CLUSTER.md)"
        );
        return std::process::ExitCode::from(2);
    }
    let copied = tally_server::store::backup(std::path::Path::new(database), out);
    let out = out.display().to_string();
    report_copy(copied, ("database", database), ("backup", &out), "backed up", printer)
}

/// `tally restore`: a backup copied to a new database under a new epoch
/// (`tally_server::store::restore`).
pub(crate) fn restore(
    backup: &std::path::Path,
    database: &str,
    printer: &mut crate::output::Printer,
) -> std::process::ExitCode {
    if is_postgres_url(database) {
        eprintln!(
            "error: --database is a PostgreSQL URL; restore a PostgreSQL dump with pg_restore, then give it a new epoch before serving it (docs/CLUSTER.md)"
        );
        return std::process::ExitCode::from(2);
    }
    let copied = tally_server::store::restore(backup, std::path::Path::new(database));
    let backup = backup.display().to_string();
    report_copy(copied, ("backup", &backup), ("database", database), "restored", printer)
}

/// Prints what a backup or a restore copied from `from` to `to`, each named by its JSON key
/// and its path.
fn report_copy(
    copied: Result<tally_server::store::BackupSummary, tally_server::store::BackupError>,
    (from_key, from): (&str, &str),
    (to_key, to): (&str, &str),
    verb: &str,
    printer: &mut crate::output::Printer,
) -> std::process::ExitCode {
    let summary = match copied {
        Ok(summary) => summary,
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shown = |epoch: &Option<tally_proto::Epoch>| {
        epoch.as_ref().map_or_else(|| "none yet".to_owned(), ToString::to_string)
    };
    let line = if printer.json {
        let mut line = serde_json::json!({
            "counters": summary.counters,
            "bytes": summary.bytes,
            "integrity": "ok",
            "epoch": summary.epoch.as_ref().map(ToString::to_string),
            "sourceEpoch": summary.source_epoch.as_ref().map(ToString::to_string),
        });
        line[from_key] = from.into();
        line[to_key] = to.into();
        line.to_string()
    } else {
        format!(
            "{verb} {from} to {to}: {} counters, {} bytes, integrity ok, epoch {} (the source's is {})",
            summary.counters,
            summary.bytes,
            shown(&summary.epoch),
            shown(&summary.source_epoch),
        )
    };
    match printer.line(&line) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) => std::process::ExitCode::FAILURE,
    }
}

/// The server's settings from the flags.
fn config_from(args: &ServeArgs, auth: AuthConfig, web_page: Option<WebPage>) -> Config {
    Config {
        idle_timeout: args.idle_timeout,
        ping_interval: args.ping_interval,
        watch_buffer: args.watch_buffer as usize,
        send_timeout: args.send_timeout,
        shutdown_grace: args.shutdown_grace,
        allowed_origins: args.allow_origins.clone(),
        max_connections: args.max_connections as usize,
        max_connections_per_ip: args.max_connections_per_ip as usize,
        header_timeout: args.header_timeout,
        request_timeout: args.request_timeout,
        max_watchers_per_counter: args.max_watchers_per_counter as usize,
        max_replays: args.max_replays as usize,
        max_replays_per_address: args.max_replays_per_address as usize,
        replay_bytes_per_second: args.replay_bytes_per_second,
        max_messages_per_second: args.max_messages_per_second,
        web_page,
        tls: args
            .tls_cert
            .clone()
            .zip(args.tls_key.clone())
            .map(|(cert_path, key_path)| tally_server::config::TlsFiles { cert_path, key_path }),
        auth,
        idempotency_window: args.idempotency_window,
        idempotency_keys: args.idempotency_keys as usize,
        max_subscriptions: args.max_subscriptions as usize,
        max_in_flight: args.max_in_flight as usize,
        max_commands_per_second: args.max_commands_per_second,
        reconnect_spread: args.reconnect_spread,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    /// The flags' defaults are written in clap's attributes and the server's in
    /// `Config::default()`: they must be the same, or `--help` would lie.
    #[test]
    fn flag_defaults_are_the_servers_defaults() {
        let args = Serve::try_parse_from(["serve"]).expect("no flags parse").args;
        let auth = auth_config(&args).expect("no files to read");
        let config = config_from(&args, auth, None);
        assert_eq!(format!("{config:?}"), format!("{:?}", Config::default()));
        assert_eq!(args.history_limit, SqliteOptions::default().history_limit);
        assert_eq!(args.idempotency_window, SqliteOptions::default().idempotency_window);
        assert_eq!(quotas(&args), SqliteOptions::default().quotas, "quotas are off by default");
    }
}
