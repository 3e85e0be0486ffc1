//! The cluster's store: one PostgreSQL database shared by every node.
//!
//! Writes go through one writer task per node, which takes every batch queued by every counter
//! of the node and commits them in one transaction (group commit, as the SQLite store does).
//! Each batch is one statement: an upsert of the counter row that only succeeds at the version
//! the batch was built on, with its history rows, idempotency records and notification hanging
//! off it in the same statement. A batch another node got ahead of is refused with
//! [`StoreError::Conflict`] and changes nothing; its counter's actor reads the counter again and
//! sends the operations once more (compare-and-set with retry: ARCHITECTURE.md says why this
//! and not leases or a row lock per request). The statements of one group are pipelined on the
//! connection, so a group costs two round trips however many counters it holds.
//!
//! Reads (loads, history, keys) use a small pool of other connections.
//!
//! Every connection sets `synchronous_commit = on`, whatever the server's default, so an
//! answered write is on PostgreSQL's disk. Tables live in the schema `tally`, so Tally can share
//! a database with other programs; migrations are embedded and applied at open, under an
//! advisory lock, so nodes starting together apply each one once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tally_proto::{Bounds, CounterName, Epoch, IdempotencyKey, OpKind};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, NoTls, Row, Statement};

use super::health::WriteHealth;
use super::{
    AppendBatch, CommitResult, Committing, CounterRecord, DeleteOutcome, HistoryRecord,
    IdempotencyRecord, KeyRecord, LoadedCounter, NAMES_END, NamedRecord, Quotas, Readiness,
    Retention, Store, StoreError, StoreMetrics, quota_exceeded,
};

/// The channel every node listens on for committed changes: the payload is the counter's name,
/// a space, and its version after the batch; or after a delete, the name, ` deleted ` and the
/// name's new epoch.
pub const CHANGES_CHANNEL: &str = "tally_changes";
/// The channel that says the API keys changed (created or revoked on some node).
pub const KEYS_CHANNEL: &str = "tally_keys";
/// The schema Tally's tables live in.
const SCHEMA: &str = "tally";
/// Taken (for its transaction) while migrations run: "tally" in ASCII.
const MIGRATION_LOCK: i64 = 0x0074_616c_6c79;
/// How many batches one transaction takes at most, so one commit's latency stays bounded.
const MAX_APPENDS_PER_COMMIT: usize = 1024;
/// How many appends may wait for the writer before callers are made to wait.
const WRITER_QUEUE: usize = 8192;
/// How often the writer deletes idempotency records past the window, at most, and how many
/// each time (see the SQLite store).
const SWEEP_EVERY: Duration = Duration::from_secs(1);
const SWEEP_ROWS: i64 = 1000;
/// How long the writer waits before connecting again after losing its connection, at most.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

/// Each step takes the schema from the version before it to the next; step `i` makes version
/// `i + 1`. Every step runs in one transaction with the row that records it.
const MIGRATIONS: &[&str] = &[
    // 1: the counters, their history, API keys, idempotency records and the epoch.
    "
CREATE TABLE counters (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    value BIGINT NOT NULL,
    version BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE TABLE history (
    counter_id BIGINT NOT NULL REFERENCES counters (id),
    version BIGINT NOT NULL,
    kind TEXT NOT NULL,
    amount BIGINT,
    previous_value BIGINT NOT NULL,
    value BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    by TEXT,
    PRIMARY KEY (counter_id, version)
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    secret_hash BYTEA NOT NULL,
    grants TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);
CREATE TABLE idempotency (
    counter_id BIGINT NOT NULL REFERENCES counters (id),
    principal TEXT NOT NULL,
    key TEXT NOT NULL,
    version BIGINT NOT NULL,
    kind TEXT NOT NULL,
    amount BIGINT,
    previous_value BIGINT NOT NULL,
    value BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (counter_id, principal, key)
);
CREATE INDEX idempotency_expiry ON idempotency (at_ms);
CREATE TABLE meta (
    only_row BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    epoch TEXT NOT NULL
);
INSERT INTO meta (epoch) VALUES (substr(md5(random()::text || clock_timestamp()::text), 1, 16));
",
    // 2: presence shared between nodes (crate::presence::postgres): each node's heartbeat and
    // version (one more each exchange), and its counts per counter it watches, each row with
    // the node's version when it was written (zero counts stay a while, so that other nodes
    // see them change). Unlogged: rewritten every second and worthless after a crash, when the
    // nodes fill them again.
    "
CREATE UNLOGGED TABLE presence_nodes (
    node TEXT PRIMARY KEY,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    version BIGINT NOT NULL
);
CREATE UNLOGGED TABLE presence (
    name TEXT NOT NULL,
    node TEXT NOT NULL,
    watchers BIGINT NOT NULL,
    users BIGINT NOT NULL,
    version BIGINT NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (name, node)
);
CREATE INDEX presence_changes ON presence (node, version);
CREATE INDEX presence_zeros ON presence (node, changed_at) WHERE watchers = 0;
",
    // 3: counters in byte order, for `counter.list`'s prefix ranges: the UNIQUE index on
    // `name` sorts by the database's collation, which may be a locale's.
    "
CREATE INDEX counters_name_bytes ON counters (name COLLATE \"C\");
",
    // 4: a counter's bounds (`counter.configure`; NULL: no such bound), its clamp mode, and
    // how many times they were configured: every batch's upsert checks it beside the version,
    // so a node never stores writes checked against bounds another node replaced.
    "
ALTER TABLE counters
    ADD COLUMN min_value BIGINT,
    ADD COLUMN max_value BIGINT,
    ADD COLUMN clamp BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN rules_version BIGINT NOT NULL DEFAULT 0;
",
    // 5: the epoch of each name that was ever deleted (`counter.delete`; see the SQLite
    // store's migration 6).
    "
CREATE TABLE counter_epochs (name TEXT PRIMARY KEY, epoch TEXT NOT NULL);
",
];

/// Settings of the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// How many of the most recent operations are kept per counter (at least 1).
    pub history_limit: u64,
    /// Idempotency records older than this are deleted by the writer.
    pub idempotency_window: Duration,
    /// Connections for reads, at most (the writer has one more of its own).
    pub pool_size: usize,
    /// What the database may hold (`--max-counters`, `--max-database-size`), checked by each
    /// node on its own commits (a cluster may pass `--max-counters` by a few).
    pub quotas: Quotas,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            history_limit: 10_000,
            idempotency_window: Duration::from_secs(24 * 3600),
            pool_size: 8,
            quotas: Quotas::default(),
        }
    }
}

/// A request to the writer task.
enum WriterMessage {
    Append {
        batch: AppendBatch,
        respond_to: oneshot::Sender<CommitResult>,
    },
    /// Commit what is queued, then stop.
    Close {
        done: oneshot::Sender<()>,
    },
    /// Remove a counter (`Store::delete`), after the group of the same round: through the
    /// writer, so that its count for the quotas stays right.
    Delete {
        name: CounterName,
        respond_to: oneshot::Sender<Result<DeleteOutcome, StoreError>>,
    },
}

/// The PostgreSQL store.
pub struct PostgresStore {
    /// For people: the URL without its password.
    described: String,
    pool: Pool,
    writer: mpsc::Sender<WriterMessage>,
    metrics: StoreMetrics,
    /// Write health, fed by the writer task, for `/readyz`.
    health: Arc<WriteHealth>,
    epoch: Epoch,
}

/// Parses a `postgres://` URL into a driver configuration that sets what Tally relies on:
/// durable commits and its own schema first on the search path.
///
/// # Errors
/// [`StoreError::Open`] when the URL is not one PostgreSQL's driver understands.
pub fn connection_config(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|error| StoreError::Open {
        path: redact(url).into(),
        reason: format!(
            "not a PostgreSQL URL ({error}); expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
        ),
    })?;
    let mut options = config.get_options().map(str::to_owned).unwrap_or_default();
    // Later `-c` settings win, so these hold whatever the URL's `options` say.
    options.push_str(&format!(
        " -c synchronous_commit=on -c search_path={SCHEMA} -c client_min_messages=warning"
    ));
    config.options(options.trim());
    if config.get_application_name().is_none() {
        config.application_name("tally");
    }
    Ok(config)
}

/// `url` without its password, for logs and messages.
pub fn redact(url: &str) -> String {
    // postgres://user:password@host/db → postgres://user:***@host/db
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((credentials, host)) = rest.rsplit_once('@') else { return url.to_owned() };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

impl PostgresStore {
    /// Connects to the database at `url`, applies the migrations it lacks and starts the
    /// writer.
    ///
    /// # Errors
    /// [`StoreError::Open`] when the database cannot be reached, its schema was written by a
    /// newer Tally, or a migration fails.
    pub async fn open(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        let config = connection_config(url)?;
        let described = redact(url);
        let open_error =
            |reason: String| StoreError::Open { path: described.clone().into(), reason };
        let client = connect(&config).await.map_err(|error| open_error(describe_error(&error)))?;
        migrate_with(&client).await.map_err(|error| open_error(error.to_string()))?;
        let epoch: String = client
            .query_one("SELECT epoch FROM meta", &[])
            .await
            .map_err(|error| open_error(describe_error(&error)))?
            .get(0);
        let epoch = Epoch::parse(&epoch).map_err(|error| {
            open_error(format!("the database's epoch is damaged: {}", error.message))
        })?;

        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .build()
            .map_err(|error| open_error(format!("cannot build the connection pool: {error}")))?;

        let (writer, inbox) = mpsc::channel(WRITER_QUEUE);
        let metrics = StoreMetrics::default();
        let health = Arc::new(WriteHealth::default());
        let task = WriterTask {
            health: Arc::clone(&health),
            quotas: options.quotas,
            config,
            client: Some(client),
            statements: None,
            history_limit: options.history_limit.max(1),
            idempotency_window: options.idempotency_window,
            metrics: metrics.clone(),
            quota_reading: None,
            last_sweep: None,
        };
        tokio::spawn(task.run(inbox));
        Ok(Self { described, pool, writer, metrics, health, epoch })
    }

    async fn reader(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|error| StoreError::Unavailable(Box::new(error)))
    }
}

/// Applies the migrations the database at `url` lacks, and returns how many it applied.
///
/// # Errors
/// [`StoreError::Open`] as for [`PostgresStore::open`].
pub async fn migrate(url: &str) -> Result<usize, StoreError> {
    let config = connection_config(url)?;
    let open_error = |reason: String| StoreError::Open { path: redact(url).into(), reason };
    let client = connect(&config).await.map_err(|error| open_error(describe_error(&error)))?;
    migrate_with(&client).await.map_err(|error| open_error(error.to_string()))
}

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
enum MigrationError {
    #[error("{}", describe_error(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error(
        "the database's Tally schema is at version {found}, newer than this Tally knows ({known}); run a newer tally"
    )]
    Newer { found: i64, known: i64 },
}

/// Brings the schema up to date, one migration per transaction, under an advisory lock held for
/// each transaction: a node that waited for the lock finds the migration applied.
async fn migrate_with(client: &Client) -> Result<usize, MigrationError> {
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {SCHEMA};
             CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations (version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ))
        .await
        .or_else(|error| {
            // Two nodes creating the schema at once: one of them loses the race, harmlessly.
            if error.code().is_some_and(|code| {
                *code == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
                    || *code == tokio_postgres::error::SqlState::DUPLICATE_SCHEMA
                    || *code == tokio_postgres::error::SqlState::DUPLICATE_TABLE
            }) {
                Ok(())
            } else {
                Err(error)
            }
        })?;
    let known = MIGRATIONS.len() as i64;
    let mut applied = 0;
    loop {
        client.simple_query("BEGIN").await?;
        let result = async {
            client.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
            let current: i64 = client
                .query_one(
                    &format!("SELECT coalesce(max(version), 0) FROM {SCHEMA}.schema_migrations"),
                    &[],
                )
                .await?
                .get(0);
            if current > known {
                return Err(MigrationError::Newer { found: current, known });
            }
            if current == known {
                return Ok(false);
            }
            let step = MIGRATIONS[current as usize];
            client.batch_execute(&format!("SET LOCAL search_path = {SCHEMA}")).await?;
            client.batch_execute(step).await?;
            client
                .execute(
                    &format!("INSERT INTO {SCHEMA}.schema_migrations (version) VALUES ($1)"),
                    &[&(current + 1)],
                )
                .await?;
            Ok(true)
        }
        .await;
        match result {
            Ok(more) => {
                client.simple_query("COMMIT").await?;
                if !more {
                    return Ok(applied);
                }
                applied += 1;
                tracing::info!(version = applied, "PostgreSQL schema migrated");
            }
            Err(error) => {
                let _ = client.simple_query("ROLLBACK").await;
                return Err(error);
            }
        }
    }
}

/// Opens one connection and drives it on a task of its own.
pub(super) async fn connect(
    config: &tokio_postgres::Config,
) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// A driver error in words, with PostgreSQL's own message when it sent one.
pub(super) fn describe_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

impl From<tokio_postgres::Error> for StoreError {
    /// Sorts PostgreSQL's errors into what the client is told: worth retrying later, or not.
    fn from(error: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        let temporary = match error.code() {
            // No code: the connection failed or closed (the server is away).
            None => true,
            Some(code) => {
                let class = &code.code()[..2];
                // 08: connection exception; 53: insufficient resources; 57: operator
                // intervention (shutdown, restart); 40: serialization failure or deadlock.
                matches!(class, "08" | "53" | "57" | "40")
                    || *code == SqlState::READ_ONLY_SQL_TRANSACTION
            }
        };
        if temporary {
            StoreError::Unavailable(Box::new(error))
        } else {
            StoreError::Backend(Box::new(error))
        }
    }
}

/// The writer's statements, prepared once per connection.
struct Statements {
    append: Statement,
    sweep: Statement,
}

/// One batch as one statement. `c` takes the counter row at the expected version and rules
/// version: `created` inserts it for a new counter, and only then (a batch built on version 5
/// of a counter another node deleted meanwhile must not create it at version 6), `updated`
/// moves an existing row (a counter configured but never written has one at version 0); both
/// see the statement's snapshot, so at most one of them takes the row. A batch without entries
/// (one that only configures the counter) keeps the row's value, version and update time.
/// When it finds another version it returns nothing, nothing after it
/// writes, and the statement answers the version it found instead of the id (as of the
/// statement's start, so after the batches before it in the transaction). Forgotten keys exclude the keys the batch remembers again (the upsert replaces
/// those), since one statement may not change a row twice.
const APPEND: &str = "
WITH created AS (
    INSERT INTO counters AS t (name, value, version, created_at_ms, updated_at_ms, min_value, max_value, clamp, rules_version)
    SELECT $1::text, $2::bigint, $3::bigint, $4::bigint, $5::bigint, $22::bigint, $23::bigint, $24::boolean, $25::bigint
    WHERE $6::bigint = 0 AND $26::bigint = 0
    ON CONFLICT (name) DO NOTHING
    RETURNING t.id
), updated AS (
    UPDATE counters t
    SET value = CASE WHEN $3::bigint = t.version THEN t.value ELSE $2::bigint END,
        version = $3::bigint,
        updated_at_ms = CASE WHEN $3::bigint = t.version THEN t.updated_at_ms ELSE $5::bigint END,
        min_value = $22::bigint, max_value = $23::bigint, clamp = $24::boolean,
        rules_version = $25::bigint
    WHERE t.name = $1 AND t.version = $6 AND t.rules_version = $26
    RETURNING t.id
), c AS (
    SELECT id FROM created UNION ALL SELECT id FROM updated
), inserted AS (
    INSERT INTO history (counter_id, version, kind, amount, previous_value, value, at_ms, by)
    SELECT c.id, e.version, e.kind, e.amount, e.previous_value, e.value, e.at_ms, e.by
    FROM c, unnest($7::bigint[], $8::text[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::text[])
        AS e (version, kind, amount, previous_value, value, at_ms, by)
    WHERE e.version > $14
), trimmed AS (
    DELETE FROM history h USING c WHERE h.counter_id = c.id AND h.version <= $14
), forgotten AS (
    DELETE FROM idempotency i USING c,
        unnest($15::text[], $16::text[], $17::bigint[]) AS f (principal, key, version)
    WHERE i.counter_id = c.id AND i.principal = f.principal AND i.key = f.key AND i.version = f.version
), remembered AS (
    INSERT INTO idempotency AS r (counter_id, principal, key, version, kind, amount, previous_value, value, at_ms)
    SELECT c.id, k.principal, k.key, e.version, e.kind, e.amount, e.previous_value, e.value, e.at_ms
    FROM c, unnest($18::text[], $19::text[], $20::bigint[]) AS k (principal, key, version)
    JOIN unnest($7::bigint[], $8::text[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[])
        AS e (version, kind, amount, previous_value, value, at_ms) ON e.version = k.version
    ON CONFLICT (counter_id, principal, key) DO UPDATE
        SET version = excluded.version, kind = excluded.kind, amount = excluded.amount,
            previous_value = excluded.previous_value, value = excluded.value, at_ms = excluded.at_ms
)
SELECT c.id, NULL::bigint AS found, pg_notify($21, $1 || ' ' || $3::text)::text FROM c
UNION ALL
SELECT NULL, t.version, NULL FROM counters t WHERE t.name = $1 AND NOT EXISTS (SELECT 1 FROM c)";

/// The parameters of [`APPEND`] for one batch, owned so the statement's future can borrow them.
struct AppendParams {
    name: String,
    value: i64,
    version: i64,
    created_at_ms: i64,
    updated_at_ms: i64,
    expected: i64,
    versions: Vec<i64>,
    kinds: Vec<&'static str>,
    amounts: Vec<Option<i64>>,
    previous_values: Vec<i64>,
    values: Vec<i64>,
    at_ms: Vec<i64>,
    by: Vec<Option<String>>,
    trim_up_to: i64,
    forget_principals: Vec<String>,
    forget_keys: Vec<String>,
    forget_versions: Vec<i64>,
    remember_principals: Vec<String>,
    remember_keys: Vec<String>,
    remember_versions: Vec<i64>,
    min: Option<i64>,
    max: Option<i64>,
    clamp: bool,
    rules_version: i64,
    expected_rules_version: i64,
}

/// Versions fit PostgreSQL's `BIGINT`: they count operations, far below 2^63.
fn sql_version(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

impl AppendParams {
    fn of(batch: &AppendBatch, history_limit: u64) -> Option<Self> {
        let rules = &batch.rules;
        // A batch that only configures the counter: value 0 and version 0 if it creates the
        // row, and the statement keeps an existing row's value, version and update time.
        let (value, version, created_at_ms, updated_at_ms) =
            match (batch.entries.first(), batch.entries.last()) {
                (Some(first), Some(last)) => (last.value, last.version, first.at_ms, last.at_ms),
                _ if rules.configure => (0, batch.expected_version, rules.at_ms, rules.at_ms),
                _ => return None,
            };
        let remembered: std::collections::HashSet<(&str, &str)> =
            batch.remember.iter().map(|key| (&*key.principal, key.key.as_str())).collect();
        let forget: Vec<_> = batch
            .forget
            .iter()
            .filter(|key| !remembered.contains(&(&*key.principal, key.key.as_str())))
            .collect();
        Some(Self {
            name: batch.name.to_string(),
            value,
            version: sql_version(version),
            created_at_ms,
            updated_at_ms,
            expected: sql_version(batch.expected_version),
            versions: batch.entries.iter().map(|entry| sql_version(entry.version)).collect(),
            kinds: batch.entries.iter().map(|entry| entry.kind.as_str()).collect(),
            amounts: batch.entries.iter().map(|entry| entry.amount).collect(),
            previous_values: batch.entries.iter().map(|entry| entry.previous_value).collect(),
            values: batch.entries.iter().map(|entry| entry.value).collect(),
            at_ms: batch.entries.iter().map(|entry| entry.at_ms).collect(),
            by: batch.entries.iter().map(|entry| entry.by.as_deref().map(str::to_owned)).collect(),
            trim_up_to: sql_version(version.saturating_sub(history_limit)),
            forget_principals: forget.iter().map(|key| key.principal.to_string()).collect(),
            forget_keys: forget.iter().map(|key| key.key.as_str().to_owned()).collect(),
            forget_versions: forget.iter().map(|key| sql_version(key.version)).collect(),
            remember_principals: batch
                .remember
                .iter()
                .map(|key| key.principal.to_string())
                .collect(),
            remember_keys: batch.remember.iter().map(|key| key.key.as_str().to_owned()).collect(),
            remember_versions: batch.remember.iter().map(|key| sql_version(key.version)).collect(),
            min: rules.bounds.min,
            max: rules.bounds.max,
            clamp: rules.bounds.clamp,
            rules_version: sql_version(rules.version_after()),
            expected_rules_version: sql_version(rules.expected_version),
        })
    }
}

/// The writer: one connection, one transaction per group of batches.
struct WriterTask {
    config: tokio_postgres::Config,
    /// `None` after the connection was lost, until the next group connects again.
    client: Option<Client>,
    statements: Option<Statements>,
    history_limit: u64,
    idempotency_window: Duration,
    metrics: StoreMetrics,
    /// Where each commit's outcome is recorded.
    health: Arc<WriteHealth>,
    quotas: Quotas,
    /// The size the quotas were last checked against.
    quota_reading: Option<QuotaReading>,
    last_sweep: Option<Instant>,
}

impl WriterTask {
    async fn run(mut self, mut inbox: mpsc::Receiver<WriterMessage>) {
        let mut appends = Vec::new();
        let mut deletes = Vec::new();
        let mut closing = None;
        while closing.is_none() {
            let Some(first) = inbox.recv().await else { break };
            let mut next = Some(first);
            while let Some(message) = next.take() {
                match message {
                    WriterMessage::Append { batch, respond_to } => {
                        appends.push((batch, respond_to))
                    }
                    WriterMessage::Close { done } => closing = Some(done),
                    WriterMessage::Delete { name, respond_to } => deletes.push((name, respond_to)),
                }
                if appends.len() < MAX_APPENDS_PER_COMMIT && closing.is_none() {
                    next = inbox.try_recv().ok();
                }
            }
            if appends.is_empty() {
                self.delete_all(&mut deletes).await;
                continue;
            }
            let started = Instant::now();
            let results = self.commit(appends.iter().map(|(batch, _)| batch).collect()).await;
            if results.iter().any(Result::is_ok) {
                let operations: usize = appends.iter().map(|(batch, _)| batch.entries.len()).sum();
                self.metrics.transactions.inc();
                self.metrics.transaction_operations.observe(operations as f64);
                self.metrics.transaction_seconds.observe(started.elapsed().as_secs_f64());
            }
            for ((_, respond_to), result) in appends.drain(..).zip(results) {
                let _ = respond_to.send(result);
            }
            self.delete_all(&mut deletes).await;
        }
        if let Some(done) = closing {
            let _ = done.send(());
        }
    }

    /// Runs the deletes taken this round, each in a statement (a transaction) of its own, and
    /// answers them.
    async fn delete_all(
        &mut self,
        deletes: &mut Vec<(CounterName, oneshot::Sender<Result<DeleteOutcome, StoreError>>)>,
    ) {
        for (name, respond_to) in deletes.drain(..) {
            let outcome = self.delete(&name).await;
            match &outcome {
                Ok(DeleteOutcome { deleted: true, .. }) => {
                    // Counted back between readings, as creations are counted forward.
                    if let Some(reading) = self.quota_reading.as_mut() {
                        reading.counters = reading.counters.saturating_sub(1);
                    }
                }
                // The connection may be half broken; start afresh next time. The delete may or
                // may not have happened: sent again, it answers `deleted: false` if it had.
                Err(StoreError::Unavailable(_) | StoreError::CommitUncertain(_)) => {
                    self.client = None;
                }
                _ => {}
            }
            let _ = respond_to.send(outcome);
        }
    }

    /// Removes counter `name` on the writer's connection ([`DELETE`]).
    async fn delete(&mut self, name: &CounterName) -> Result<DeleteOutcome, StoreError> {
        let (client, _) = self.ready().await?;
        let row = client.query_opt(DELETE, &[&name.as_str(), &CHANGES_CHANNEL]).await?;
        if let Some(row) = row {
            let version = u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0);
            let epoch = epoch_bits(row.try_get::<_, &str>(1)?)?;
            return Ok(DeleteOutcome { deleted: true, version, epoch: Some(epoch) });
        }
        let epoch = client
            .query_opt("SELECT epoch FROM counter_epochs WHERE name = $1", &[&name.as_str()])
            .await?;
        let epoch = epoch.map(|row| row.try_get::<_, String>(0)).transpose()?;
        let epoch = epoch.as_deref().map(epoch_bits).transpose()?;
        Ok(DeleteOutcome { deleted: false, version: 0, epoch })
    }

    /// The writer's connection, connecting (and preparing) again if it was lost.
    async fn ready(&mut self) -> Result<(&Client, &Statements), StoreError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            self.statements = None;
            let client = match connect(&self.config).await {
                Ok(client) => client,
                Err(error) => {
                    // Spread the retries of a database that is away; callers are answered now.
                    tokio::time::sleep(RECONNECT_BACKOFF).await;
                    // Whatever the code (a database that refuses connections says 55000, a
                    // dropped one 3D000): nothing was sent, and it may be back later.
                    return Err(StoreError::Unavailable(Box::new(error)));
                }
            };
            self.client = Some(client);
        }
        let Some(client) = self.client.as_ref() else { return Err(StoreError::Closed) };
        if self.statements.is_none() {
            let statements = Statements {
                append: client.prepare(APPEND).await?,
                sweep: client
                    .prepare(
                        "DELETE FROM idempotency WHERE ctid IN (SELECT ctid FROM idempotency WHERE at_ms < $1 ORDER BY at_ms LIMIT $2)",
                    )
                    .await?,
            };
            self.statements = Some(statements);
        }
        match (self.client.as_ref(), self.statements.as_ref()) {
            (Some(client), Some(statements)) => Ok((client, statements)),
            _ => Err(StoreError::Closed),
        }
    }

    /// Commits `batches` in one transaction. A batch refused on its own (another node moved its
    /// counter) is left out without harming the others; any other error fails the whole group,
    /// since the transaction is then aborted.
    async fn commit(&mut self, batches: Vec<&AppendBatch>) -> Vec<CommitResult> {
        let count = batches.len();
        let sweep = self.last_sweep.is_none_or(|last| last.elapsed() >= SWEEP_EVERY);
        let history_limit = self.history_limit;
        let cutoff = sweep.then(|| {
            let window_ms = i64::try_from(self.idempotency_window.as_millis()).unwrap_or(i64::MAX);
            crate::clock::now_ms().saturating_sub(window_ms)
        });
        let quotas = self.quotas;
        let mut quota_reading = self.quota_reading;
        let outcome = match self.ready().await {
            Ok((client, statements)) => {
                let refusals = quota_refusals(client, quotas, &batches, &mut quota_reading).await;
                let outcome = match refusals {
                    Ok(refusals) => {
                        let admitted: Vec<&AppendBatch> = batches
                            .iter()
                            .zip(&refusals)
                            .filter(|(_, refused)| refused.is_none())
                            .map(|(batch, _)| *batch)
                            .collect();
                        commit_group(client, statements, &admitted, history_limit)
                            .await
                            .map(|results| merge_refusals(refusals, results))
                    }
                    Err(error) => Err(StoreError::from(error)),
                };
                // Outside the group's transaction, so that two nodes sweeping the same rows
                // can never deadlock a group of writes; a sweep that fails is tried again next
                // time.
                if let (Ok(_), Some(cutoff)) = (&outcome, cutoff) {
                    match client.execute(&statements.sweep, &[&cutoff, &SWEEP_ROWS]).await {
                        Ok(_) => self.last_sweep = Some(Instant::now()),
                        Err(error) => tracing::debug!(%error, "idempotency sweep failed"),
                    }
                }
                outcome
            }
            Err(error) => Err(error),
        };
        self.quota_reading = quota_reading;
        match &outcome {
            Ok(_) => self.health.succeeded(),
            Err(error) => self.health.failed(error),
        }
        match outcome {
            Ok(results) => results,
            Err(error) => {
                if matches!(error, StoreError::Unavailable(_) | StoreError::CommitUncertain(_)) {
                    // The connection may be half broken; start afresh next time.
                    self.client = None;
                }
                let error = Arc::new(error);
                (0..count).map(|_| Err(Arc::clone(&error))).collect()
            }
        }
    }
}

/// What the writer last read of the database's size, for the quotas: read again when over a
/// second old, since `count(*)` scans the whole table, and counted forward between readings
/// with the counters this node's groups create.
#[derive(Debug, Clone, Copy)]
struct QuotaReading {
    counters: u64,
    bytes: u64,
    at: Instant,
}

/// How old a [`QuotaReading`] may be before it is read again.
const QUOTA_READING_AGE: Duration = Duration::from_secs(1);

/// Which of `batches` would create a counter while the database is at a quota: refused (before
/// the group's transaction) with why, the others `None`. Only with a quota set, and only for
/// groups with batches built on version 0: those whose counter another node has created
/// meanwhile are not refused (they fail their compare-and-set and are sent again as writes to
/// an existing counter, which a quota never refuses). The count and size are at most a second
/// old ([`QuotaReading`]), so nodes creating counters at the same moment may together go past
/// `--max-counters` by up to a second's creations of each node.
async fn quota_refusals(
    client: &Client,
    quotas: Quotas,
    batches: &[&AppendBatch],
    reading: &mut Option<QuotaReading>,
) -> Result<Vec<Option<StoreError>>, tokio_postgres::Error> {
    // A counter configured but never written has a row already (and a rules version).
    let creates_counter =
        |batch: &AppendBatch| batch.expected_version == 0 && batch.rules.expected_version == 0;
    let creating: Vec<&str> = batches
        .iter()
        .filter(|batch| creates_counter(batch))
        .map(|batch| batch.name.as_str())
        .collect();
    if creating.is_empty() || quotas == Quotas::default() {
        return Ok(batches.iter().map(|_| None).collect());
    }
    let existing: Vec<String> = client
        .query("SELECT name FROM counters WHERE name = ANY($1)", &[&creating])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let current = match *reading {
        Some(last) if last.at.elapsed() < QUOTA_READING_AGE => last,
        _ => {
            let row = client
                .query_one(
                    "SELECT (SELECT count(*) FROM counters), pg_database_size(current_database())",
                    &[],
                )
                .await?;
            QuotaReading {
                counters: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
                bytes: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                at: Instant::now(),
            }
        }
    };
    let QuotaReading { mut counters, bytes, .. } = current;
    let refusals = batches
        .iter()
        .map(|batch| {
            if !creates_counter(batch) || existing.iter().any(|name| name == batch.name.as_str()) {
                return None;
            }
            if let Some(limit) = quotas.max_counters.filter(|&limit| counters >= limit) {
                return Some(quota_exceeded(
                    &batch.name,
                    "--max-counters",
                    limit,
                    counters,
                    "counters",
                ));
            }
            if let Some(limit) = quotas.max_database_bytes.filter(|&limit| bytes >= limit) {
                return Some(quota_exceeded(
                    &batch.name,
                    "--max-database-size",
                    limit,
                    bytes,
                    "bytes of database",
                ));
            }
            counters += 1;
            None
        })
        .collect();
    *reading = Some(QuotaReading { counters, ..current });
    Ok(refusals)
}

/// The answers of every batch: the refused ones' refusals, the others' `results` in order.
fn merge_refusals(
    refusals: Vec<Option<StoreError>>,
    results: Vec<CommitResult>,
) -> Vec<CommitResult> {
    let mut results = results.into_iter();
    refusals
        .into_iter()
        .map(|refused| match refused {
            Some(error) => Err(Arc::new(error)),
            // As many results as admitted batches; a missing one would be a bug, not stored.
            None => results.next().unwrap_or_else(|| Err(Arc::new(StoreError::Closed))),
        })
        .collect()
}

async fn commit_group(
    client: &Client,
    statements: &Statements,
    batches: &[&AppendBatch],
    history_limit: u64,
) -> Result<Vec<CommitResult>, StoreError> {
    // Every node locks the rows of a group in name order (a stable sort keeps one counter's
    // batches in queue order), so two nodes' groups can never wait for each other in a cycle.
    let mut order: Vec<usize> = (0..batches.len()).collect();
    order.sort_by(|&a, &b| batches[a].name.as_str().cmp(batches[b].name.as_str()));
    let params: Vec<Option<AppendParams>> =
        order.iter().map(|&index| AppendParams::of(batches[index], history_limit)).collect();
    // Pipelined: every statement is sent before the first answer is read.
    let begin = client.simple_query("BEGIN");
    let appends = params.iter().map(|params| async move {
        let Some(p) = params else { return Ok(None) };
        client
            .query_opt(
                &statements.append,
                &[
                    &p.name,
                    &p.value,
                    &p.version,
                    &p.created_at_ms,
                    &p.updated_at_ms,
                    &p.expected,
                    &p.versions,
                    &p.kinds,
                    &p.amounts,
                    &p.previous_values,
                    &p.values,
                    &p.at_ms,
                    &p.by,
                    &p.trim_up_to,
                    &p.forget_principals,
                    &p.forget_keys,
                    &p.forget_versions,
                    &p.remember_principals,
                    &p.remember_keys,
                    &p.remember_versions,
                    &CHANGES_CHANNEL,
                    &p.min,
                    &p.max,
                    &p.clamp,
                    &p.rules_version,
                    &p.expected_rules_version,
                ],
            )
            .await
            .map(|row| match row {
                Some(row) => match row.get::<_, Option<i64>>(0) {
                    Some(id) => Some(Ok(id)),
                    None => Some(Err(row.get::<_, Option<i64>>(1).unwrap_or(0))),
                },
                // The name is not stored and was not inserted: only a race can do that.
                None => Some(Err(0)),
            })
    });
    let (begun, rows) = tokio::join!(begin, futures_util::future::join_all(appends));
    // Per batch: its counter's id, or the version found instead of the expected one.
    let outcome: Result<Vec<Option<Result<i64, i64>>>, tokio_postgres::Error> =
        begun.and_then(|_| rows.into_iter().collect());
    let ids = match outcome {
        Ok(ids) => ids,
        Err(error) => {
            let _ = client.simple_query("ROLLBACK").await;
            return Err(StoreError::from(error));
        }
    };
    let mut results: Vec<Option<CommitResult>> = (0..batches.len()).map(|_| None).collect();
    for (&index, id) in order.iter().zip(ids) {
        let batch = batches[index];
        results[index] = Some(match id {
            Some(Ok(id)) => Ok(id),
            Some(Err(found)) => Err(Arc::new(StoreError::Conflict {
                name: batch.name.to_string(),
                expected: batch.expected_version,
                found: u64::try_from(found).unwrap_or(0),
            })),
            // An empty batch (never queued by an actor) stores nothing.
            None => Err(Arc::new(StoreError::Conflict {
                name: batch.name.to_string(),
                expected: batch.expected_version,
                found: batch.expected_version,
            })),
        });
    }
    // A COMMIT whose answer is lost with the connection may or may not have committed: the
    // batches are answered so, and an actor that reloads finds out which (idempotency keys
    // make a resent write count once). An answer that is an error means it did not commit.
    if let Err(error) = client.simple_query("COMMIT").await {
        return Err(if error.as_db_error().is_some() {
            StoreError::from(error)
        } else {
            StoreError::CommitUncertain(Box::new(error))
        });
    }
    Ok(results
        .into_iter()
        .map(|result| result.unwrap_or(Err(Arc::new(StoreError::Closed))))
        .collect())
}

/// The row of counter `name`, read on `client`.
async fn counter_record(
    client: &deadpool_postgres::ClientWrapper,
    name: &CounterName,
) -> Result<Option<CounterRecord>, StoreError> {
    let statement = client
        .prepare_cached(
            "SELECT c.id, c.value, c.version, c.created_at_ms, c.updated_at_ms, c.min_value, c.max_value, c.clamp, c.rules_version, e.epoch
             FROM counters c LEFT JOIN counter_epochs e ON e.name = c.name WHERE c.name = $1",
        )
        .await?;
    let Some(row) = client.query_opt(&statement, &[&name.as_str()]).await? else {
        return Ok(None);
    };
    let mut record = counter_row(&row, 0)?;
    record.epoch = row.try_get::<_, Option<String>>(9)?.as_deref().map(epoch_bits).transpose()?;
    Ok(Some(record))
}

/// A counter's row from its columns `id, value, version, created_at_ms, updated_at_ms,
/// min_value, max_value, clamp, rules_version`, the first at index `at`; its epoch is read
/// beside it where needed (`counter_record`).
fn counter_row(row: &Row, at: usize) -> Result<CounterRecord, StoreError> {
    Ok(CounterRecord {
        id: row.try_get(at)?,
        value: row.try_get(at + 1)?,
        version: u64::try_from(row.try_get::<_, i64>(at + 2)?).unwrap_or(0),
        created_at_ms: row.try_get(at + 3)?,
        updated_at_ms: row.try_get(at + 4)?,
        bounds: Bounds {
            min: row.try_get(at + 5)?,
            max: row.try_get(at + 6)?,
            clamp: row.try_get(at + 7)?,
        },
        rules_version: u64::try_from(row.try_get::<_, i64>(at + 8)?).unwrap_or(0),
        epoch: None,
    })
}

/// The bits of an epoch read from `counter_epochs`; a damaged one is a storage failure.
fn epoch_bits(text: &str) -> Result<u64, StoreError> {
    Epoch::parse(text).map(|epoch| epoch.bits()).map_err(|error| {
        StoreError::Backend(format!("a counter's epoch is damaged: {}", error.message).into())
    })
}

/// Removes a counter with its history and idempotency records, gives its name a fresh epoch
/// and tells the other nodes (`NAME deleted EPOCH` on the changes channel), in one statement;
/// answers the version it had and the new epoch, or no row when it was not stored.
const DELETE: &str = "
WITH d AS (
    DELETE FROM counters WHERE name = $1 RETURNING id, version
), h AS (
    DELETE FROM history h USING d WHERE h.counter_id = d.id
), i AS (
    DELETE FROM idempotency i USING d WHERE i.counter_id = d.id
), e AS (
    INSERT INTO counter_epochs (name, epoch)
    SELECT $1, substr(md5(random()::text || clock_timestamp()::text), 1, 16) FROM d
    ON CONFLICT (name) DO UPDATE SET epoch = excluded.epoch
    RETURNING epoch
)
SELECT d.version, e.epoch, pg_notify($2, $1 || ' deleted ' || e.epoch)::text FROM d, e";

fn history_row(row: &Row) -> Result<HistoryRecord, StoreError> {
    let kind: String = row.try_get(1)?;
    Ok(HistoryRecord {
        version: u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0),
        kind: OpKind::from_name(&kind).ok_or_else(|| {
            StoreError::Backend(format!("history row has an unknown operation {kind:?}").into())
        })?,
        amount: row.try_get(2)?,
        previous_value: row.try_get(3)?,
        value: row.try_get(4)?,
        at_ms: row.try_get(5)?,
        by: row.try_get::<_, Option<String>>(6)?.map(Arc::from),
    })
}

fn key_row(row: &Row) -> Result<KeyRecord, StoreError> {
    let hash: Vec<u8> = row.try_get(2)?;
    let grants: String = row.try_get(3)?;
    let bad =
        |what: &str| StoreError::Backend(format!("api_keys row has a malformed {what}").into());
    Ok(KeyRecord {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        secret_hash: hash.try_into().map_err(|_| bad("secret hash"))?,
        grants: serde_json::from_str(&grants).map_err(|_| bad("grant list"))?,
        created_at_ms: row.try_get(4)?,
        revoked_at_ms: row.try_get(5)?,
    })
}

const KEY_COLUMNS: &str = "id, name, secret_hash, grants, created_at_ms, revoked_at_ms";
const HISTORY_COLUMNS: &str =
    "h.version, h.kind, h.amount, h.previous_value, h.value, h.at_ms, h.by";

#[async_trait]
impl Store for PostgresStore {
    async fn load_record(&self, name: &CounterName) -> Result<Option<CounterRecord>, StoreError> {
        counter_record(&*self.reader().await?, name).await
    }

    async fn load(
        &self,
        name: &CounterName,
        retention: Retention,
    ) -> Result<Option<LoadedCounter>, StoreError> {
        let client = self.reader().await?;
        let Some(record) = counter_record(&client, name).await? else { return Ok(None) };
        // Records up to the version read only, so they match the counter as loaded even when
        // another node commits in between.
        let limit = i64::try_from(retention.limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT version, kind, amount, previous_value, value, at_ms, principal, key
                         FROM idempotency WHERE counter_id = $1 AND at_ms >= $2 AND version <= $3
                         ORDER BY version DESC LIMIT $4",
                    )
                    .await?,
                &[&record.id, &retention.since_ms, &sql_version(record.version), &limit],
            )
            .await?;
        let mut idempotency = Vec::with_capacity(rows.len());
        for row in rows.iter().rev() {
            let mut entry = history_row(row)?;
            let principal: String = row.try_get(6)?;
            entry.by = Some(Arc::from(principal));
            let key: String = row.try_get(7)?;
            let key = IdempotencyKey::parse(&key)
                .map_err(|error| StoreError::Backend(error.message.into()))?;
            idempotency.push(IdempotencyRecord { key, entry });
        }
        Ok(Some(LoadedCounter { record, idempotency }))
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

    async fn append(&self, batch: AppendBatch) -> Result<Committing, StoreError> {
        let (respond_to, answer) = oneshot::channel();
        self.writer
            .send(WriterMessage::Append { batch, respond_to })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(Committing::new(answer))
    }

    async fn history(
        &self,
        name: &CounterName,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        let client = self.reader().await?;
        let before = before.map_or(i64::MAX, sql_version);
        let rows = client
            .query(
                &client
                    .prepare_cached(&format!(
                        "SELECT {HISTORY_COLUMNS} FROM history h JOIN counters c ON c.id = h.counter_id
                         WHERE c.name = $1 AND h.version < $2 ORDER BY h.version DESC LIMIT $3"
                    ))
                    .await?,
                &[&name.as_str(), &before, &i64::from(limit)],
            )
            .await?;
        rows.iter().map(history_row).collect()
    }

    async fn history_range(
        &self,
        name: &CounterName,
        after: u64,
        up_to: u64,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        let client = self.reader().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(&format!(
                        "SELECT {HISTORY_COLUMNS} FROM history h JOIN counters c ON c.id = h.counter_id
                         WHERE c.name = $1 AND h.version > $2 AND h.version <= $3 ORDER BY h.version ASC"
                    ))
                    .await?,
                &[&name.as_str(), &sql_version(after), &sql_version(up_to)],
            )
            .await?;
        rows.iter().map(history_row).collect()
    }

    async fn recent_operations(
        &self,
        name: &CounterName,
        since_ms: i64,
    ) -> Result<u64, StoreError> {
        let client = self.reader().await?;
        // The newest rows by the primary key, backwards from the last version.
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT count(*) FROM (
                             SELECT h.at_ms FROM history h
                             WHERE h.counter_id = (SELECT id FROM counters WHERE name = $1)
                             ORDER BY h.version DESC LIMIT $3
                         ) recent WHERE at_ms >= $2",
                    )
                    .await?,
                &[&name.as_str(), &since_ms, &super::RECENT_SCAN],
            )
            .await?;
        let count: i64 = row.get(0);
        Ok(u64::try_from(count).unwrap_or_default())
    }

    async fn recent_operations_of(
        &self,
        names: Vec<CounterName>,
        since_ms: i64,
    ) -> Result<Vec<u64>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.reader().await?;
        // One statement for the page: each name's newest rows by the primary key, as in
        // `recent_operations`, numbered so the answer keeps the page's order.
        let texts: Vec<&str> = names.iter().map(CounterName::as_str).collect();
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT n.ord, (
                             SELECT count(*) FROM (
                                 SELECT h.at_ms FROM history h
                                 WHERE h.counter_id = c.id
                                 ORDER BY h.version DESC LIMIT $3
                             ) recent WHERE at_ms >= $2
                         )
                         FROM unnest($1::text[]) WITH ORDINALITY AS n(name, ord)
                         JOIN counters c ON c.name = n.name",
                    )
                    .await?,
                &[&texts, &since_ms, &super::RECENT_SCAN],
            )
            .await?;
        let mut counts = vec![0; names.len()];
        for row in rows {
            let (ordinal, count): (i64, i64) = (row.get(0), row.get(1));
            let index = usize::try_from(ordinal - 1).unwrap_or(usize::MAX);
            if let Some(slot) = counts.get_mut(index) {
                *slot = u64::try_from(count).unwrap_or_default();
            }
        }
        Ok(counts)
    }

    async fn list(
        &self,
        start: &str,
        end: Option<&str>,
        limit: u32,
    ) -> Result<Vec<NamedRecord>, StoreError> {
        let client = self.reader().await?;
        // `COLLATE "C"` compares bytes, as SQLite does, whatever the database's collation (a
        // locale's would sort `:` and `-` by other rules and break the prefix range); the
        // index `counters_name_bytes` (migration 3) serves exactly this expression.
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT name, id, value, version, created_at_ms, updated_at_ms, min_value, max_value, clamp, rules_version FROM counters
                         WHERE name COLLATE \"C\" >= $1 AND name COLLATE \"C\" < $2
                         ORDER BY name COLLATE \"C\" LIMIT $3",
                    )
                    .await?,
                &[&start, &end.unwrap_or(NAMES_END), &i64::from(limit)],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let name: String = row.try_get(0)?;
                let name = CounterName::parse(&name).map_err(|error| {
                    StoreError::Backend(format!("stored counter name {name:?}: {error}").into())
                })?;
                Ok(NamedRecord { name, record: counter_row(row, 1)? })
            })
            .collect()
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let client = self.reader().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(&format!(
                        "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at_ms, name"
                    ))
                    .await?,
                &[],
            )
            .await?;
        rows.iter().map(key_row).collect()
    }

    async fn create_key(&self, key: KeyRecord) -> Result<(), StoreError> {
        let client = self.reader().await?;
        let grants = serde_json::to_string(&key.grants).unwrap_or_else(|_| "[]".into());
        // One statement: the key and the notification that tells the other nodes, committed
        // together.
        let inserted = client
            .query(
                &client
                    .prepare_cached(&format!(
                        "WITH k AS (INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)
                         ON CONFLICT DO NOTHING RETURNING id)
                         SELECT pg_notify($7, id)::text FROM k"
                    ))
                    .await?,
                &[
                    &key.id,
                    &key.name,
                    &key.secret_hash.as_slice(),
                    &grants,
                    &key.created_at_ms,
                    &key.revoked_at_ms,
                    &KEYS_CHANNEL,
                ],
            )
            .await?;
        if inserted.is_empty() {
            return Err(StoreError::KeyExists(key.name));
        }
        Ok(())
    }

    async fn revoke_key(&self, name: &str, at_ms: i64) -> Result<Option<KeyRecord>, StoreError> {
        let client = self.reader().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(&format!(
                        "WITH k AS (UPDATE api_keys SET revoked_at_ms = coalesce(revoked_at_ms, $2)
                         WHERE name = $1 RETURNING {KEY_COLUMNS})
                         SELECT k.*, pg_notify($3, k.id)::text FROM k"
                    ))
                    .await?,
                &[&name, &at_ms, &KEYS_CHANNEL],
            )
            .await?;
        row.as_ref().map(key_row).transpose()
    }

    async fn close(&self) {
        let (done, finished) = oneshot::channel();
        if self.writer.send(WriterMessage::Close { done }).await.is_ok() {
            let _ = finished.await;
        }
        self.pool.close();
    }

    fn describe(&self) -> String {
        self.described.clone()
    }

    fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    async fn readiness(&self) -> Readiness {
        if self.writer.is_closed() {
            return Readiness::Unavailable("the PostgreSQL writer task has stopped".into());
        }
        // The probe: a connection from the pool (a database that went away, refuses
        // connections or is unreachable fails here) and whether it takes writes at all.
        let probe = async {
            let client = self.reader().await?;
            let read_only: bool = client
                .query_one(
                    "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'",
                    &[],
                )
                .await?
                .get(0);
            if read_only {
                return Err(StoreError::Unavailable(
                    "PostgreSQL takes no writes here: it is a standby, or its transactions are read-only by default".into(),
                ));
            }
            Ok(())
        };
        self.health.readiness(probe).await
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry);
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn shared_presence(&self) -> Option<Arc<dyn crate::presence::PresenceManager>> {
        match crate::presence::postgres::shared(self.pool.clone()) {
            Ok(presence) => Some(presence),
            Err(error) => {
                tracing::error!(%error, "cannot share presence; this node announces only its own");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password() {
        assert_eq!(
            redact("postgres://tally:s3cret@db:5432/tally"),
            "postgres://tally:***@db:5432/tally"
        );
        assert_eq!(redact("postgres://tally@db/tally"), "postgres://tally@db/tally");
        assert_eq!(redact("postgres://db/tally"), "postgres://db/tally");
    }

    #[test]
    fn the_urls_own_options_are_kept_and_tallys_settings_come_last() {
        let config =
            connection_config("postgres://tally@db/tally?options=-c%20statement_timeout%3D5s")
                .expect("a URL");
        let options = config.get_options().expect("options");
        assert!(options.starts_with("-c statement_timeout=5s"), "{options}");
        assert!(options.ends_with("-c client_min_messages=warning"), "{options}");
        assert!(options.contains("-c synchronous_commit=on"), "{options}");
    }

    #[test]
    fn a_malformed_url_says_what_is_expected() {
        let Err(StoreError::Open { reason, .. }) = connection_config("postgres://db:notaport/x")
        else {
            panic!("a bad port must be refused");
        };
        assert!(reason.contains("expected postgres://"), "{reason}");
    }
}
