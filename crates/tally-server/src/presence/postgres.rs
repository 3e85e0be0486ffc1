//! Presence shared through the cluster's PostgreSQL database.
//!
//! Two tables of the `tally` schema, made by the store's migrations: `presence_nodes` holds
//! each node's heartbeat (the database's clock, so the nodes' own clocks do not matter), and
//! `presence` each node's counts per counter, for the counters it watches. Both are `UNLOGGED`:
//! they are rewritten every second, need no WAL, and a database that crashed comes back with
//! them empty, which the nodes notice at their next exchange (they send everything again).
//!
//! One statement per second per node, however many counters it watches (the counts travel as
//! arrays): it refreshes the node's heartbeat, writes the counts that changed, removes the
//! shares of nodes whose heartbeat expired (rows already locked by another node are skipped, so
//! sweeping nodes never wait for each other), and reads the other live nodes' sums for the
//! counters this node watches.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tally_proto::{CounterName, Presence};

use super::{
    EXPIRY, Exchanged, PresenceBackend, PresenceError, PresenceManager, SharedPresence,
    WatchedTopic,
};

/// The exchange of one tick. `$1` the node, `$2..$4` its shares (a zero share deletes the
/// counter's row), `$5` the counters it watches, `$6` the expiry in milliseconds. The first row
/// says whether the node's heartbeat row had to be made (it is new, or its share expired and
/// was swept); the others are the other live nodes' sums.
const EXCHANGE: &str = "
WITH beat AS (
    UPDATE presence_nodes SET heartbeat_at = now() WHERE node = $1 RETURNING node
), joined AS (
    INSERT INTO presence_nodes (node, heartbeat_at)
    SELECT $1, now() WHERE NOT EXISTS (SELECT FROM beat)
    RETURNING node
), shared AS (
    INSERT INTO presence AS p (name, node, watchers, users)
    SELECT s.name, $1, s.watchers, s.users
    FROM unnest($2::text[], $3::bigint[], $4::bigint[]) AS s (name, watchers, users)
    WHERE s.watchers > 0
    ON CONFLICT (name, node) DO UPDATE SET watchers = excluded.watchers, users = excluded.users
), unshared AS (
    DELETE FROM presence p
    USING unnest($2::text[], $3::bigint[]) AS s (name, watchers)
    WHERE p.node = $1 AND p.name = s.name AND s.watchers = 0
), dead AS (
    DELETE FROM presence_nodes
    WHERE node IN (
        SELECT node FROM presence_nodes
        WHERE node <> $1 AND heartbeat_at < now() - $6::bigint * interval '1 millisecond'
        FOR UPDATE SKIP LOCKED
    )
    RETURNING node
), swept AS (
    DELETE FROM presence p USING dead WHERE p.node = dead.node
)
SELECT NULL::text, 0::bigint, 0::bigint, EXISTS (SELECT FROM joined)
UNION ALL
SELECT p.name, sum(p.watchers)::bigint, sum(p.users)::bigint, false
FROM unnest($5::text[]) AS w (name)
    JOIN presence p ON p.name = w.name
    JOIN presence_nodes n ON n.node = p.node
WHERE p.node <> $1 AND n.heartbeat_at >= now() - $6::bigint * interval '1 millisecond'
GROUP BY p.name";

/// The other live nodes' sums for one counter: `$1` the counter, `$2` this node, `$3` the
/// expiry in milliseconds.
const OTHERS: &str = "
SELECT coalesce(sum(p.watchers), 0)::bigint, coalesce(sum(p.users), 0)::bigint
FROM presence p JOIN presence_nodes n ON n.node = p.node
WHERE p.name = $1 AND p.node <> $2
    AND n.heartbeat_at >= now() - $3::bigint * interval '1 millisecond'";

/// A node's clean stop: `$1` the node.
const LEAVE: &str = "
WITH shares AS (DELETE FROM presence WHERE node = $1)
DELETE FROM presence_nodes WHERE node = $1";

/// This node's presence in the database, over the store's connection pool.
pub struct PostgresPresence {
    pool: Pool,
    /// A random id, new each time a node starts.
    node: String,
    expiry_ms: i64,
}

impl PostgresPresence {
    /// A node sharing presence through the database `pool` connects to, whose shares count for
    /// `expiry` after their node's last heartbeat.
    ///
    /// # Errors
    /// [`PresenceError::Unavailable`] when no random node id can be made.
    pub fn new(pool: Pool, expiry: Duration) -> Result<Self, PresenceError> {
        let mut bytes = [0_u8; 8];
        getrandom::fill(&mut bytes).map_err(|error| {
            PresenceError::Unavailable(format!("cannot make a random node id: {error}"))
        })?;
        let node = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        let expiry_ms = i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX);
        Ok(Self { pool, node, expiry_ms })
    }

    /// The node's id, as its rows carry it.
    pub fn node(&self) -> &str {
        &self.node
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, PresenceError> {
        self.pool.get().await.map_err(|error| PresenceError::Unavailable(error.to_string()))
    }
}

/// The presence manager of a node on the database `pool` connects to, with the documented
/// [`EXPIRY`].
///
/// # Errors
/// As for [`PostgresPresence::new`].
pub fn shared(pool: Pool) -> Result<Arc<dyn PresenceManager>, PresenceError> {
    let backend = PostgresPresence::new(pool, EXPIRY)?;
    tracing::info!(node = backend.node(), "sharing presence with the other nodes of the database");
    Ok(Arc::new(SharedPresence::new(backend, EXPIRY)))
}

/// A driver error in words, with PostgreSQL's own message when it sent one.
fn unavailable(error: &tokio_postgres::Error) -> PresenceError {
    PresenceError::Unavailable(match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    })
}

/// A count as PostgreSQL holds it.
fn sql_count(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// A count as read back (never negative: only this module writes them).
fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[async_trait]
impl PresenceBackend for PostgresPresence {
    async fn exchange(
        &self,
        shares: &[(CounterName, Presence)],
        watched: &[WatchedTopic],
    ) -> Result<Exchanged, PresenceError> {
        let names: Vec<&str> = shares.iter().map(|(name, _)| name.as_ref()).collect();
        let watchers: Vec<i64> =
            shares.iter().map(|(_, presence)| sql_count(presence.watchers)).collect();
        let users: Vec<i64> =
            shares.iter().map(|(_, presence)| sql_count(presence.users)).collect();
        let watched: Vec<&str> = watched.iter().map(|watched| watched.name.as_ref()).collect();
        let client = self.client().await?;
        let statement =
            client.prepare_cached(EXCHANGE).await.map_err(|error| unavailable(&error))?;
        let rows = client
            .query(&statement, &[&self.node, &names, &watchers, &users, &watched, &self.expiry_ms])
            .await
            .map_err(|error| unavailable(&error))?;
        let mut exchanged = Exchanged::default();
        for row in rows {
            let name: Option<String> = row.get(0);
            match name {
                None => exchanged.joined = row.get(3),
                Some(name) => {
                    // Only this node's well-formed names are asked for.
                    let Ok(name) = CounterName::parse(&name) else { continue };
                    let presence =
                        Presence { watchers: count(row.get(1)), users: count(row.get(2)) };
                    exchanged.others.insert(name, presence);
                }
            }
        }
        Ok(exchanged)
    }

    async fn others(&self, name: &CounterName) -> Result<Presence, PresenceError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(OTHERS).await.map_err(|error| unavailable(&error))?;
        let row = client
            .query_one(&statement, &[&name.as_ref(), &self.node, &self.expiry_ms])
            .await
            .map_err(|error| unavailable(&error))?;
        Ok(Presence { watchers: count(row.get(0)), users: count(row.get(1)) })
    }

    async fn leave(&self) -> Result<(), PresenceError> {
        let client = self.client().await?;
        client.execute(LEAVE, &[&self.node]).await.map_err(|error| unavailable(&error))?;
        Ok(())
    }
}
