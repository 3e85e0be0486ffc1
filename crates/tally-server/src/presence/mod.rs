//! Who watches each counter (presence), over every node that serves it.
//!
//! A counter's [`Topic`] counts the subscriptions of this node (`topic.rs`); a
//! [`PresenceManager`] decides what is announced from those counts, once a second, on the
//! registry's presence ticker. This is kept apart from the [`Broker`](crate::broker::Broker)
//! the way centrifuge keeps its PresenceManager apart from its Broker: the broker carries word
//! of commits, presence is counts that come and go, and the two need not live in one place.
//!
//! - [`LocalPresence`], for a node of its own (SQLite): the counts announced are the node's
//!   own, exactly as the topics count them.
//! - `SharedPresence` over a backend (the PostgreSQL one is [`postgres::PostgresPresence`]),
//!   for nodes sharing one database: each tick makes one exchange with the backend, which
//!   stores this node's heartbeat and the counts that changed since the last exchange, and
//!   answers, for the counters this node watches (those whose sums may have changed), the
//!   sums over the *other* nodes whose heartbeat is younger than [`EXPIRY`]. A topic then
//!   announces its own counts plus those. So a total is at most about a second old (plus the
//!   exchange), and the share of a node that died stops counting at most [`EXPIRY`] after its
//!   last heartbeat; a node that stops cleanly removes its share at once
//!   ([`PresenceManager::leave`]).
//!
//! `users` in a cluster is the sum of each node's distinct users: a principal watching one
//! counter through two nodes counts on each. Exact distinct users would mean sharing every
//! principal's name, for every counter, every second.

pub mod postgres;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tally_proto::{CounterName, Presence};
use tokio::time::Instant;

use crate::topic::Topic;

/// How long a node's share of presence counts after its last heartbeat: a node that died
/// stops counting this long after it last reached the database (docs/PROTOCOL.md, 10.5).
pub const EXPIRY: Duration = Duration::from_secs(10);

/// How long one exchange may take before the tick gives up on it (and counts it failed), so a
/// stalled database delays the node's own presence announcements by this much at most.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the shared presence could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The database cannot be used now (it is down, refused the statement, or was closed).
    #[error("the shared presence is unavailable: {0}")]
    Unavailable(String),
    /// The database did not answer in time.
    #[error("the shared presence did not answer within {0:?}")]
    TimedOut(Duration),
}

/// A counter watched on this node, as the presence ticker hands it over.
pub struct WatchedTopic {
    pub(crate) name: CounterName,
    pub(crate) topic: Arc<Topic>,
}

impl WatchedTopic {
    /// `topic`, the topic of counter `name`.
    pub(crate) fn new(name: CounterName, topic: Arc<Topic>) -> Self {
        Self { name, topic }
    }
}

/// Decides the presence a node announces.
#[async_trait]
pub trait PresenceManager: Send + Sync + 'static {
    /// Announces the presence of each watched counter that changed (see
    /// `Topic::tick_presence`); the registry calls it once a second with every counter that
    /// has a topic on this node.
    async fn tick(&self, watched: Vec<WatchedTopic>);

    /// What the other nodes count for `name` now, for a counter this node has no topic for
    /// (zero on a node of its own).
    ///
    /// # Errors
    /// When the shared counts cannot be read.
    async fn others(&self, name: &CounterName) -> Result<Presence, PresenceError>;

    /// Removes this node's share, as it stops; after it the manager shares nothing more.
    async fn leave(&self);
}

/// The presence of a node of its own: its topics' counts, announced as they are.
pub struct LocalPresence;

#[async_trait]
impl PresenceManager for LocalPresence {
    async fn tick(&self, watched: Vec<WatchedTopic>) {
        for watched in watched {
            watched.topic.tick_presence(None);
        }
    }

    async fn others(&self, _name: &CounterName) -> Result<Presence, PresenceError> {
        Ok(Presence::default())
    }

    async fn leave(&self) {}
}

/// What an exchange with the other nodes answered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Exchanged {
    /// The other live nodes' sums: for every watched counter they count when `complete`
    /// (absent: zero), else only for the counters whose sums may have changed since the last
    /// exchange that succeeded (absent: unchanged).
    pub(crate) others: HashMap<CounterName, Presence>,
    /// Whether `others` covers every watched counter.
    pub(crate) complete: bool,
    /// This node had no heartbeat stored: it is new, or its share had expired and was removed
    /// (it could not reach the database for longer than the expiry). Its counts must all be
    /// sent again.
    pub(crate) joined: bool,
}

/// Where nodes share their counts: one round trip per exchange.
#[async_trait]
pub(crate) trait PresenceBackend: Send + Sync + 'static {
    /// Stores this node's heartbeat and `shares` (a zero share: this node no longer counts any watcher of it), and
    /// answers the other live nodes' sums for the counters in `watched` (or for those of them
    /// whose sums may have changed since the last exchange that succeeded).
    async fn exchange(
        &self,
        shares: &[(CounterName, Presence)],
        watched: &[WatchedTopic],
    ) -> Result<Exchanged, PresenceError>;

    /// The other live nodes' sums for `name`.
    async fn others(&self, name: &CounterName) -> Result<Presence, PresenceError>;

    /// Removes this node's heartbeat and shares.
    async fn leave(&self) -> Result<(), PresenceError>;
}

/// Presence shared by nodes through a [`PresenceBackend`].
pub(crate) struct SharedPresence<B> {
    backend: B,
    /// How long a share counts after its node's last heartbeat; this node keeps counting the
    /// others' last known sums for as long after its own last exchange.
    expiry: Duration,
    /// Taken by each tick and by `leave`, so that leaving waits for an exchange in flight and
    /// no exchange follows it.
    state: tokio::sync::Mutex<State>,
}

/// What a `SharedPresence` remembers from one tick to the next.
#[derive(Default)]
struct State {
    /// What the backend holds of this node's counts, as far as this node knows, with the tick
    /// that last saw each counter watched here.
    stored: HashMap<CounterName, Stored>,
    /// Ticks so far.
    ticks: u64,
    /// Send every watched counter's counts at the next tick, changed or not: the backend's copy
    /// is in doubt (an exchange failed, or this node's share was removed).
    send_all: bool,
    /// When an exchange last succeeded.
    heard_at: Option<Instant>,
    /// Whether the last exchange failed (failures are logged when they start and end).
    failing: bool,
    /// Set by `leave`.
    left: bool,
}

#[derive(Clone, Copy)]
struct Stored {
    presence: Presence,
    seen: u64,
}

impl<B: PresenceBackend> SharedPresence<B> {
    /// Presence shared through `backend`, whose shares count for `expiry` after a heartbeat.
    pub(crate) fn new(backend: B, expiry: Duration) -> Self {
        Self { backend, expiry, state: tokio::sync::Mutex::new(State::default()) }
    }

    /// The counts to send: each watched counter whose counts differ from the stored ones (all
    /// of them when `send_all`), and a zero for each stored counter not watched here any more.
    fn shares(state: &mut State, watched: &[WatchedTopic]) -> Vec<(CounterName, Presence)> {
        let tick = state.ticks;
        let send_all = std::mem::take(&mut state.send_all);
        let mut shares = Vec::new();
        for watched in watched {
            // Taken every tick, so that a change is seen once.
            let changed = watched.topic.take_share_changed();
            let stored = state.stored.get_mut(&watched.name).map(|stored| {
                stored.seen = tick;
                stored.presence
            });
            if changed || send_all {
                let local = watched.topic.local_presence();
                if send_all || local != stored.unwrap_or_default() {
                    shares.push((watched.name.clone(), local));
                }
            }
        }
        for (name, stored) in &state.stored {
            if stored.seen != tick {
                shares.push((name.clone(), Presence::default()));
            }
        }
        shares
    }
}

#[async_trait]
impl<B: PresenceBackend> PresenceManager for SharedPresence<B> {
    async fn tick(&self, watched: Vec<WatchedTopic>) {
        let mut state = self.state.lock().await;
        if state.left {
            return;
        }
        state.ticks += 1;
        let shares = Self::shares(&mut state, &watched);
        let exchanged =
            tokio::time::timeout(EXCHANGE_TIMEOUT, self.backend.exchange(&shares, &watched))
                .await
                .unwrap_or(Err(PresenceError::TimedOut(EXCHANGE_TIMEOUT)));
        let now = Instant::now();
        match exchanged {
            Ok(exchanged) => {
                let tick = state.ticks;
                for (name, presence) in shares {
                    if presence.watchers == 0 {
                        state.stored.remove(&name);
                    } else {
                        state.stored.insert(name, Stored { presence, seen: tick });
                    }
                }
                if exchanged.joined && state.heard_at.is_some() {
                    tracing::warn!(
                        "this node's presence was gone from the database (it expired while the node could not reach it for over {:?}, or the database restarted); sharing all of it again",
                        self.expiry
                    );
                    state.send_all = true;
                }
                if std::mem::take(&mut state.failing) {
                    tracing::info!("sharing presence with the other nodes again");
                }
                state.heard_at = Some(now);
                for watched in &watched {
                    let others = match exchanged.others.get(&watched.name) {
                        Some(others) => Some(*others),
                        None if exchanged.complete => Some(Presence::default()),
                        None => None,
                    };
                    watched.topic.tick_presence(others);
                }
            }
            Err(error) => {
                state.send_all = true;
                if !std::mem::replace(&mut state.failing, true) {
                    tracing::warn!(%error, "cannot share presence with the other nodes; announcing their last known counts until they expire");
                }
                // The others stop counting this node `expiry` after its last heartbeat; it
                // stops counting them as long after it last heard from them.
                let fresh = state.heard_at.is_some_and(|at| now.duration_since(at) < self.expiry);
                let others = if fresh { None } else { Some(Presence::default()) };
                for watched in &watched {
                    watched.topic.tick_presence(others);
                }
            }
        }
    }

    async fn others(&self, name: &CounterName) -> Result<Presence, PresenceError> {
        tokio::time::timeout(EXCHANGE_TIMEOUT, self.backend.others(name))
            .await
            .unwrap_or(Err(PresenceError::TimedOut(EXCHANGE_TIMEOUT)))
    }

    async fn leave(&self) {
        let mut state = self.state.lock().await;
        if std::mem::replace(&mut state.left, true) {
            return;
        }
        let left = tokio::time::timeout(EXCHANGE_TIMEOUT, self.backend.leave())
            .await
            .unwrap_or(Err(PresenceError::TimedOut(EXCHANGE_TIMEOUT)));
        if let Err(error) = left {
            tracing::warn!(%error, "cannot remove this node's presence; the other nodes stop counting it within {:?}", self.expiry);
        }
    }
}

#[cfg(test)]
mod tests;
