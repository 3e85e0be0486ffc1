//! Presence shared through the cluster's PostgreSQL database.
//!
//! Two tables of the `tally` schema, made by the store's migrations: `presence_nodes` holds
//! each node's heartbeat (the database's clock, so the nodes' own clocks do not matter) and its
//! version, one more at each exchange; `presence` holds each node's counts per counter it
//! watches, each row with the node's version when it was written. Both are `UNLOGGED`: they are
//! rewritten every second, need no WAL, and a database that crashed comes back with them empty,
//! which the nodes notice at their next exchange (they send everything again).
//!
//! One statement per second per node, however many counters it watches (the counts travel as
//! arrays): it refreshes the node's heartbeat, writes the counts that changed, removes the
//! shares of nodes whose heartbeat expired (rows already locked by another node are skipped, so
//! sweeping nodes never wait for each other), and reads the other live nodes' sums, but only
//! for the counters whose rows changed since this node's last exchange (rows above the
//! versions it saw then), the counters it started watching, and all of them when the live
//! nodes are not those it saw (one came, left, expired or started over). A quiet cluster
//! then costs each node a few index lookups a second, not one per watched counter. A count that
//! drops to zero stays as a zero row for `ZEROS_KEPT`, so that others see it change; a node
//! that has not heard from the others for `FULL_AFTER` reads everything again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tally_proto::{CounterName, Presence};
use tokio::time::Instant;

use crate::topic::Topic;

use super::{
    EXPIRY, Exchanged, PresenceBackend, PresenceError, PresenceManager, SharedPresence,
    WatchedTopic,
};

/// How long a zero count is kept before its node deletes it.
const ZEROS_KEPT: Duration = Duration::from_secs(60);
/// A node that has not exchanged for this long reads every sum again: zero counts it never saw
/// may have been deleted meanwhile. Well within `ZEROS_KEPT`.
const FULL_AFTER: Duration = Duration::from_secs(20);

/// The exchange of one tick. `$1` the node; `$2..$4` its shares; `$5` the counters it watches;
/// `$6` the expiry and `$7` `ZEROS_KEPT` in milliseconds; `$8, $9` the other live nodes and
/// their versions as it saw them at its last exchange; `$10` whether to read every sum;
/// `$11` the counters it started watching since. Rows: kind 0, one, says whether the node's
/// heartbeat row had to be made (it is new, or its share expired and was swept) and whether
/// every sum was read; kind 1 the other live nodes and their versions; kind 2 the sums read.
const EXCHANGE: &str = "
WITH beat AS (
    UPDATE presence_nodes SET heartbeat_at = now(), version = version + 1
    WHERE node = $1 RETURNING version
), joined AS (
    INSERT INTO presence_nodes (node, heartbeat_at, version)
    SELECT $1, now(), 1 WHERE NOT EXISTS (SELECT FROM beat)
    RETURNING version
), mine AS (
    SELECT version FROM beat UNION ALL SELECT version FROM joined
), shared AS (
    INSERT INTO presence AS p (name, node, watchers, users, version, changed_at)
    SELECT s.name, $1, s.watchers, s.users, mine.version, now()
    FROM mine, unnest($2::text[], $3::bigint[], $4::bigint[]) AS s (name, watchers, users)
    ON CONFLICT (name, node) DO UPDATE
        SET watchers = excluded.watchers, users = excluded.users, version = excluded.version,
            changed_at = excluded.changed_at
), forgotten AS (
    DELETE FROM presence
    WHERE node = $1 AND watchers = 0 AND changed_at < now() - $7::bigint * interval '1 millisecond'
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
), live AS (
    SELECT node, version FROM presence_nodes
    WHERE node <> $1 AND heartbeat_at >= now() - $6::bigint * interval '1 millisecond'
), seen AS (
    SELECT * FROM unnest($8::text[], $9::bigint[]) AS k (node, version)
), everything AS (
    SELECT $10::bool
        OR EXISTS (
            SELECT FROM live LEFT JOIN seen USING (node)
            WHERE seen.node IS NULL OR live.version < seen.version
        )
        OR EXISTS (SELECT FROM seen LEFT JOIN live USING (node) WHERE live.node IS NULL)
        AS yes
), changed AS (
    SELECT p.name FROM seen JOIN presence p ON p.node = seen.node AND p.version > seen.version
), wanted AS (
    SELECT w.name FROM unnest($5::text[]) AS w (name)
    WHERE (SELECT yes FROM everything)
        OR w.name IN (SELECT name FROM changed)
        OR w.name IN (SELECT unnest($11::text[]))
)
SELECT 0::smallint, NULL::text, 0::bigint, 0::bigint,
    EXISTS (SELECT FROM joined), (SELECT yes FROM everything)
UNION ALL
SELECT 1::smallint, node, version, 0::bigint, false, false FROM live
UNION ALL
SELECT 2::smallint, w.name, coalesce(sum(p.watchers), 0)::bigint, coalesce(sum(p.users), 0)::bigint,
    false, false
FROM wanted w LEFT JOIN (presence p JOIN live ON live.node = p.node) ON p.name = w.name
GROUP BY w.name";

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

/// What this node saw at its last exchange that succeeded.
#[derive(Default)]
struct Seen {
    /// The other live nodes, and their versions.
    nodes: Vec<String>,
    versions: Vec<i64>,
    /// The counters it watched, with their topics: a topic made since (even for a counter
    /// watched then, whose topic went and came back) knows nothing of the others yet. Weak
    /// references keep the topics' allocations, so a new topic never has an old one's address.
    watched: HashMap<CounterName, Weak<Topic>>,
    /// When.
    at: Option<Instant>,
}

/// This node's presence in the database, over the store's connection pool.
pub struct PostgresPresence {
    pool: Pool,
    /// A random id, new each time a node starts.
    node: String,
    expiry_ms: i64,
    /// Only the presence ticker exchanges, one tick at a time; never held across an `.await`.
    seen: Mutex<Seen>,
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
        Ok(Self { pool, node, expiry_ms: millis(expiry), seen: Mutex::new(Seen::default()) })
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

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    // Nothing panics while holding it; a poisoned one still holds consistent data.
    seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Column `index` of `row`, or why it could not be read (a schema this code does not expect).
fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    index: usize,
) -> Result<T, PresenceError> {
    row.try_get(index).map_err(|error| unavailable(&error))
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
        let watched_names: Vec<&str> =
            watched.iter().map(|watched| watched.name.as_ref()).collect();
        let (seen_nodes, seen_versions, everything, new) = {
            let seen = lock(&self.seen);
            let everything = seen.at.is_none_or(|at| at.elapsed() >= FULL_AFTER);
            let new: Vec<&str> = if everything {
                Vec::new()
            } else {
                watched
                    .iter()
                    .filter(|watched| {
                        seen.watched
                            .get(&watched.name)
                            .is_none_or(|topic| topic.as_ptr() != Arc::as_ptr(&watched.topic))
                    })
                    .map(|watched| watched.name.as_ref())
                    .collect()
            };
            (seen.nodes.clone(), seen.versions.clone(), everything, new)
        };
        let client = self.client().await?;
        let statement =
            client.prepare_cached(EXCHANGE).await.map_err(|error| unavailable(&error))?;
        let rows = client
            .query(
                &statement,
                &[
                    &self.node,
                    &names,
                    &watchers,
                    &users,
                    &watched_names,
                    &self.expiry_ms,
                    &millis(ZEROS_KEPT),
                    &seen_nodes,
                    &seen_versions,
                    &everything,
                    &new,
                ],
            )
            .await
            .map_err(|error| unavailable(&error))?;
        let mut exchanged = Exchanged::default();
        let mut live = Seen::default();
        for row in rows {
            let kind: i16 = column(&row, 0)?;
            match kind {
                0 => {
                    exchanged.joined = column(&row, 4)?;
                    exchanged.complete = column(&row, 5)?;
                }
                1 => {
                    live.nodes.push(column(&row, 1)?);
                    live.versions.push(column(&row, 2)?);
                }
                _ => {
                    let name: String = column(&row, 1)?;
                    // Only this node's well-formed names are asked for.
                    let Ok(name) = CounterName::parse(&name) else { continue };
                    let presence = Presence {
                        watchers: count(column(&row, 2)?),
                        users: count(column(&row, 3)?),
                    };
                    exchanged.others.insert(name, presence);
                }
            }
        }
        live.watched = watched
            .iter()
            .map(|watched| (watched.name.clone(), Arc::downgrade(&watched.topic)))
            .collect();
        live.at = Some(Instant::now());
        *lock(&self.seen) = live;
        Ok(exchanged)
    }

    async fn others(&self, name: &CounterName) -> Result<Presence, PresenceError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(OTHERS).await.map_err(|error| unavailable(&error))?;
        let row = client
            .query_one(&statement, &[&name.as_ref(), &self.node, &self.expiry_ms])
            .await
            .map_err(|error| unavailable(&error))?;
        Ok(Presence { watchers: count(column(&row, 0)?), users: count(column(&row, 1)?) })
    }

    async fn leave(&self) -> Result<(), PresenceError> {
        let client = self.client().await?;
        client.execute(LEAVE, &[&self.node]).await.map_err(|error| unavailable(&error))?;
        Ok(())
    }
}
