//! What moves word of committed changes between the nodes that share one store, beside the
//! [`Store`](crate::store::Store) that holds the changes themselves (centrifuge keeps its Broker
//! apart from its PresenceManager in the same way).
//!
//! A broker only says *that* a counter moved, and to which version; the node reads what
//! happened from the store's history, so a notification lost, merged or late can never put a
//! wrong update on the wire: the counter's actor publishes versions in order, with no gap, from
//! storage. When a broker may have missed something (its connection dropped), it says
//! [`Change::Everything`], and every counter this node watches is read again.
//!
//! On one node the broker is [`LocalBroker`], which has nothing to say: the node's own actors
//! publish their commits. In a cluster it is [`PostgresBroker`]: `LISTEN` on the database's
//! notification channels, fed by the `pg_notify` in each batch's own statement.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tally_proto::CounterName;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::StoreError;
use crate::store::postgres::{CHANGES_CHANNEL, KEYS_CHANNEL, connection_config, redact};

/// Word of a change made by some node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `name` was committed up to `version`.
    Counter {
        /// The counter.
        name: CounterName,
        /// Its version after the change.
        version: u64,
    },
    /// `name` was deleted (`counter.delete`) and given the epoch `epoch` (its bits): its
    /// watchers are unsubscribed and its state read again, unless this node knew it already
    /// (it is the node that deleted it).
    Deleted {
        /// The counter.
        name: CounterName,
        /// The name's new epoch, which tells this delete from any other.
        epoch: u64,
    },
    /// Notifications may have been missed: every counter in use must be read again.
    Everything,
    /// API keys were created or revoked.
    Keys,
}

/// Delivers word of other nodes' changes until `stop` is cancelled.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Sends each change on `changes` until `stop` is cancelled or nobody listens.
    async fn run(self: Box<Self>, changes: mpsc::UnboundedSender<Change>, stop: CancellationToken);
}

/// The broker of a single node: there are no other nodes to hear from.
pub struct LocalBroker;

#[async_trait]
impl Broker for LocalBroker {
    async fn run(
        self: Box<Self>,
        _changes: mpsc::UnboundedSender<Change>,
        stop: CancellationToken,
    ) {
        stop.cancelled().await;
    }
}

/// How long the broker waits before connecting again after losing its connection, at first;
/// the wait doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Listens on PostgreSQL's notification channels over a connection of its own.
///
/// `LISTEN` needs a session of its own for as long as it listens, which a transaction-mode
/// pooler (PgBouncer's `pool_mode = transaction`) cannot give: behind one, point
/// `--notify-database` straight at PostgreSQL (docs/CLUSTER.md).
pub struct PostgresBroker {
    config: tokio_postgres::Config,
    described: String,
}

impl PostgresBroker {
    /// A broker listening on the database at `url`.
    ///
    /// # Errors
    /// [`StoreError::Open`] when `url` is not a PostgreSQL URL.
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let mut config = connection_config(url)?;
        // Named apart from the store's connections, so an operator (or a test) can tell it in
        // pg_stat_activity.
        config.application_name("tally-listen");
        Ok(Self { config, described: redact(url) })
    }

    /// Listens until the connection ends (returning why) or `stop` is cancelled (`Ok`). After
    /// `LISTEN` succeeds it sends [`Change::Everything`], since whatever was committed while it
    /// was not listening was not heard.
    async fn listen_once(
        &self,
        changes: &mpsc::UnboundedSender<Change>,
        stop: &CancellationToken,
        listening: &mut bool,
    ) -> Result<(), String> {
        let (client, mut connection) =
            self.config.connect(tokio_postgres::NoTls).await.map_err(|error| error.to_string())?;
        // The connection yields the notifications; the client only sends `LISTEN`.
        let (notices, mut received) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(notification)) => {
                        if notices.send(Ok(notification)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        let _ = notices.send(Err(error.to_string()));
                        return;
                    }
                }
            }
            let _ = notices.send(Err("the server closed the connection".into()));
        });
        let outcome = async {
            client
                .batch_execute(&format!("LISTEN {CHANGES_CHANNEL}; LISTEN {KEYS_CHANNEL}"))
                .await
                .map_err(|error| error.to_string())?;
            *listening = true;
            tracing::info!(database = %self.described, "listening for other nodes' changes");
            let _ = changes.send(Change::Everything);
            let _ = changes.send(Change::Keys);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    notice = received.recv() => match notice {
                        Some(Ok(notification)) => {
                            if let Some(change) = parse(notification.channel(), notification.payload())
                                && changes.send(change).is_err()
                            {
                                return Ok(());
                            }
                        }
                        Some(Err(reason)) => return Err(reason),
                        None => return Err("the connection task ended".into()),
                    },
                }
            }
        }
        .await;
        driver.abort();
        outcome
    }
}

/// A notification as a change; `None` (and a log line) for one this version does not know.
fn parse(channel: &str, payload: &str) -> Option<Change> {
    if channel == KEYS_CHANNEL {
        return Some(Change::Keys);
    }
    // The name cannot hold a space (see tally_proto's name rules): `NAME VERSION` after a
    // batch, `NAME deleted EPOCH` after `Store::delete`.
    let mut parts = payload.split(' ');
    let change = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(name), Some("deleted"), Some(epoch), None) => CounterName::parse(name)
            .ok()
            .zip(tally_proto::Epoch::parse(epoch).ok())
            .map(|(name, epoch)| Change::Deleted { name, epoch: epoch.bits() }),
        (Some(name), Some(version), None, None) => CounterName::parse(name)
            .ok()
            .zip(version.parse().ok())
            .map(|(name, version)| Change::Counter { name, version }),
        _ => None,
    };
    if change.is_none() {
        tracing::warn!(channel, "ignored a notification this server cannot read");
    }
    change
}

#[async_trait]
impl Broker for PostgresBroker {
    async fn run(self: Box<Self>, changes: mpsc::UnboundedSender<Change>, stop: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        while !stop.is_cancelled() {
            let mut listening = false;
            match self.listen_once(&changes, &stop, &mut listening).await {
                Ok(()) => return,
                Err(reason) => {
                    if listening {
                        backoff = FIRST_BACKOFF;
                        tracing::warn!(database = %self.described, %reason, "lost the notification connection; listening again, then reading every watched counter");
                    } else {
                        tracing::warn!(database = %self.described, %reason, "cannot listen for other nodes' changes yet; retrying");
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_parse_into_changes() {
        assert_eq!(
            parse(CHANGES_CHANNEL, "likes 42"),
            Some(Change::Counter { name: CounterName::parse("likes").expect("name"), version: 42 })
        );
        assert_eq!(parse(KEYS_CHANNEL, "key-id"), Some(Change::Keys));
        assert_eq!(
            parse(CHANGES_CHANNEL, "likes deleted 00000000000000ff"),
            Some(Change::Deleted { name: CounterName::parse("likes").expect("name"), epoch: 255 })
        );
        assert_eq!(parse(CHANGES_CHANNEL, "likes deleted"), None);
        assert_eq!(parse(CHANGES_CHANNEL, "likes deleted nothex"), None);
        assert_eq!(parse(CHANGES_CHANNEL, "likes"), None);
        assert_eq!(parse(CHANGES_CHANNEL, "likes many"), None);
        assert_eq!(parse(CHANGES_CHANNEL, " 3"), None);
    }
}
