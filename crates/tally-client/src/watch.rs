//! A live watch of one counter: a thin wrapper over a [`Connection`] with one
//! [`Subscription`], for programs that follow a single counter. It reconnects by itself,
//! resumes with `since`, honours the server's advised delay and keeps its token fresh in band,
//! because the connection does.
//!
//! It is built on the version-2 socket rather than kept on v1 (`/ws/counter/{name}`) so that
//! there is one implementation of the reconnect rules and of the socket handling, not two
//! that can drift (as the Rust and TypeScript clients did).

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::Stream;
use tally_proto::socket::SocketAuthenticated;
use tally_proto::{Snapshot, Update};

use crate::backoff::Backoff;
use crate::client::Client;
use crate::connection::{ConnectionOptions, SubscribeOptions, Subscription, SubscriptionEvent};
use crate::error::ClientError;

/// How a watch behaves. The reconnect numbers are those of [`ConnectionOptions`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatchOptions {
    /// Resume after this version instead of starting with a snapshot.
    pub since: Option<u64>,
    /// Delays between reconnect attempts.
    pub backoff: Backoff,
    /// A connection established this long resets the backoff to its minimum.
    pub min_uptime: Duration,
    /// How long a new connection may take to deliver its first frame.
    pub connect_timeout: Duration,
    /// How often a quiet connection is checked: pinged after one silent interval, and replaced
    /// if the next one is silent too (a peer or network that vanished without closing).
    pub ping_interval: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        let connection = ConnectionOptions::default();
        Self {
            since: None,
            backoff: connection.backoff,
            min_uptime: connection.min_uptime,
            connect_timeout: connection.connect_timeout,
            ping_interval: connection.ping_interval,
        }
    }
}

impl WatchOptions {
    fn connection(&self) -> ConnectionOptions {
        ConnectionOptions {
            backoff: self.backoff,
            min_uptime: self.min_uptime,
            connect_timeout: self.connect_timeout,
            ping_interval: self.ping_interval,
        }
    }
}

/// What a watch reports, in order.
#[derive(Debug)]
#[non_exhaustive]
pub enum WatchEvent {
    /// A connection is established (first time or after a reconnect): its first answer, the
    /// snapshot or the resume, follows.
    Connected,
    /// The counter's whole state. `snapshot.resync` is true when a resume could not be served
    /// (history too short, or the counter is behind the version we had): replace local state.
    Snapshot(Snapshot),
    /// A resume is being served: the updates after `since` up to `version` follow.
    Resumed {
        /// The last version seen before the reconnect.
        since: u64,
        /// The counter's version when the resume started.
        version: u64,
    },
    /// One change, in version order, each exactly once across reconnects.
    Update(Update),
    /// The server accepted a fresh token sent over the open socket.
    Authenticated(SocketAuthenticated),
    /// The connection ended; the watch reconnects after `retry_in`.
    Disconnected {
        /// Why, in words.
        reason: String,
        /// How long until the next attempt.
        retry_in: Duration,
    },
    /// The watch cannot go on; the stream ends after this. The server refused it: for example
    /// [`ClientError::Unauthenticated`] (4501, or a refused upgrade or subscribe),
    /// [`ClientError::Forbidden`] (4503, or a refused subscribe), or an invalid counter name.
    Failed(ClientError),
}

/// A live watch of one counter: a [`Stream`] of [`WatchEvent`]s. Dropping it closes the socket.
pub struct Watch {
    /// The subscription; `None` once it ended.
    subscription: Option<Subscription>,
    /// A failure found before connecting (an invalid name).
    failed: Option<ClientError>,
    /// Whether `Connected` was reported for the current connection.
    connected: bool,
    /// The event that follows a `Connected` just reported.
    pending: Option<WatchEvent>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("subscription", &self.subscription).finish_non_exhaustive()
    }
}

impl Watch {
    pub(crate) fn start(client: &Client, name: &str, options: WatchOptions) -> Self {
        // An invalid name is refused here, as the server would, without opening a socket.
        if let Err(error) = tally_proto::CounterName::parse(name) {
            return Self {
                subscription: None,
                failed: Some(ClientError::Invalid(error)),
                connected: false,
                pending: None,
            };
        }
        let connection = client.connect_with(options.connection());
        let subscribe = SubscribeOptions { since: options.since, ..SubscribeOptions::default() };
        // The subscription keeps the connection's task alive on its own.
        let subscription = connection.subscribe_with(name, subscribe);
        Self { subscription: Some(subscription), failed: None, connected: false, pending: None }
    }
}

impl Stream for Watch {
    type Item = WatchEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        let this = self.get_mut();
        if let Some(event) = this.pending.take() {
            return Poll::Ready(Some(event));
        }
        if let Some(error) = this.failed.take() {
            return Poll::Ready(Some(WatchEvent::Failed(error)));
        }
        loop {
            let Some(subscription) = &mut this.subscription else { return Poll::Ready(None) };
            let Some(event) = ready!(Pin::new(subscription).poll_next(cx)) else {
                this.subscription = None;
                return Poll::Ready(None);
            };
            let event = match event {
                SubscriptionEvent::Snapshot(snapshot) => WatchEvent::Snapshot(snapshot),
                SubscriptionEvent::Resumed { since, version, .. } => {
                    WatchEvent::Resumed { since, version }
                }
                SubscriptionEvent::Update(update) | SubscriptionEvent::Conflated(update) => {
                    WatchEvent::Update(update)
                }
                SubscriptionEvent::Authenticated(authenticated) => {
                    WatchEvent::Authenticated(authenticated)
                }
                SubscriptionEvent::Disconnected { reason, retry_in } => {
                    this.connected = false;
                    WatchEvent::Disconnected { reason, retry_in }
                }
                SubscriptionEvent::Ended(ended) => {
                    this.subscription = None;
                    return Poll::Ready(Some(WatchEvent::Failed(ended.into_error())));
                }
                // A watch does not ask for presence.
                SubscriptionEvent::Presence(_) => continue,
            };
            if !this.connected
                && matches!(event, WatchEvent::Snapshot(_) | WatchEvent::Resumed { .. })
            {
                this.connected = true;
                this.pending = Some(event);
                return Poll::Ready(Some(WatchEvent::Connected));
            }
            return Poll::Ready(Some(event));
        }
    }
}
