//! One socket, many counters: a [`Connection`] holds one version-2 socket (`GET /ws`) with any
//! number of [`Subscription`]s, each a [`Stream`] of [`SubscriptionEvent`]s, and answers
//! [`Connection::call`]s over the same socket.
//!
//! It keeps the client's reconnect rules (docs/PROTOCOL.md, "Client reconnect rules"; they
//! live in `reconnect.rs` as a state machine): full-jitter backoff, the server's advised delay,
//! resuming each subscription after the last version it delivered, dropping what is not newer,
//! starting one subscription over on a gap, and replacing the token in band before it expires.
//! Calls that were on their way when a connection was lost are sent again on the next one, with
//! the same idempotency key, so a write counts once. A client of several servers (the nodes of
//! one cluster) makes each reconnect to the next URL of its list, round robin, and resumes
//! there.

mod driver;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tally_proto::socket::SocketAuthenticated;
use tally_proto::{
    CounterName, Epoch, ErrorCode, HistoryPage, IdempotencyKey, Metadata, OpKind, Presence,
    Procedure, ProtocolError, Snapshot, Update, ValueAnswer,
};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::backoff::Backoff;
use crate::client::socket_refusal;
use crate::error::ClientError;
use crate::reconnect::Rules;
use crate::token::Credentials;
use crate::write::{WRITE_BACKOFF, Write, new_key, undecided};

use self::driver::{Answer, Driver, Request};

/// How a [`Connection`] behaves: the reconnect rules' numbers (docs/PROTOCOL.md, "Client
/// reconnect rules"). The defaults are the ones every Tally client ships with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnectionOptions {
    /// Delays between failed attempts (3 s doubling to 60 s, full jitter).
    pub backoff: Backoff,
    /// A connection established this long resets the backoff (10 s).
    pub min_uptime: Duration,
    /// How long a new connection may take to deliver its first frame (10 s).
    pub connect_timeout: Duration,
    /// How often a quiet connection is checked: pinged after one silent interval, replaced
    /// after the next (30 s).
    pub ping_interval: Duration,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        let rules = Rules::default();
        Self {
            backoff: rules.backoff,
            min_uptime: rules.min_uptime,
            connect_timeout: rules.connect_timeout,
            ping_interval: rules.ping_interval,
        }
    }
}

impl ConnectionOptions {
    fn rules(&self) -> Rules {
        Rules {
            backoff: self.backoff,
            min_uptime: self.min_uptime,
            connect_timeout: self.connect_timeout,
            ping_interval: self.ping_interval,
            ..Rules::default()
        }
    }
}

/// What one subscription asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscribeOptions {
    /// Resume after this version instead of starting with a snapshot.
    pub since: Option<u64>,
    /// The database epoch `since` belongs to (a snapshot's or `resumed`'s `epoch`, kept with
    /// the version): if the server's database is another one (replaced, or restored from a
    /// backup), the resume is answered with a resync snapshot instead of another history's
    /// updates. Without it, `since` is taken on trust.
    pub epoch: Option<Epoch>,
    /// Only updates of these types (all when `None`). Delivered versions then jump over the
    /// filtered ones, which is not taken as a gap.
    pub types: Option<Vec<OpKind>>,
    /// At most this many updates a second (0 < N ≤ 1000), each the latest state, delivered as
    /// [`SubscriptionEvent::Conflated`]; the last state always arrives.
    pub max_rate: Option<f64>,
    /// Also deliver [`SubscriptionEvent::Presence`] when the counter's watchers change (at most
    /// once a second).
    pub presence: bool,
}

/// What a subscription reports, in order.
#[derive(Debug)]
#[non_exhaustive]
pub enum SubscriptionEvent {
    /// The counter's whole state: the first answer, or (`snapshot.resync`) a start over when a
    /// resume could not be served. Replace local state.
    Snapshot(Snapshot),
    /// A resume is being served: the updates after `since` up to `version` follow.
    Resumed {
        /// The last version delivered before the reconnect.
        since: u64,
        /// The counter's version when the resume started.
        version: u64,
        /// The database's epoch, to keep with the versions.
        epoch: Option<Epoch>,
    },
    /// One change, in version order, each exactly once across reconnects.
    Update(Update),
    /// The latest state of a subscription with `max_rate`: versions jump by design.
    Conflated(Update),
    /// How many watch the counter (a subscription with `presence`).
    Presence(Presence),
    /// The socket now acts as this principal (a fresh token sent in band was accepted).
    Authenticated(SocketAuthenticated),
    /// The socket was lost; the subscription resumes by itself after `retry_in`.
    Disconnected {
        /// Why, in words.
        reason: String,
        /// How long until the next attempt.
        retry_in: Duration,
    },
    /// The subscription is over; the stream ends after this.
    Ended(Ended),
}

/// Why a subscription ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum Ended {
    /// The server ended it while the socket goes on (lost permission, for example).
    Unsubscribed {
        /// The error code, such as `forbidden`.
        code: String,
        /// Why, in words.
        reason: String,
    },
    /// The server refused it for good (`forbidden`, `invalid_name`, `too_many_subscriptions`,
    /// …), or the name is invalid.
    Refused(ClientError),
    /// The connection stopped for good (4501, 4503, an upgrade refused, …).
    Stopped(ClientError),
}

impl Ended {
    /// The end as an error.
    pub fn into_error(self) -> ClientError {
        match self {
            Ended::Refused(error) | Ended::Stopped(error) => error,
            Ended::Unsubscribed { code, reason } if code == "forbidden" => {
                ClientError::Forbidden { message: reason }
            }
            Ended::Unsubscribed { code, reason } => {
                let status = ErrorCode::ALL
                    .iter()
                    .find(|known| known.as_str() == code)
                    .map_or(0, |known| known.http_status());
                ClientError::Rejected { status, code, message: reason, temporary: false }
            }
        }
    }
}

/// What happens to the socket itself (see [`Connection::events`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// A connection is established: its first frame arrived.
    Connected,
    /// The connection was lost; the next attempt is in `retry_in`.
    Disconnected {
        /// Why, in words.
        reason: String,
        /// How long until the next attempt.
        retry_in: Duration,
    },
    /// The socket now acts as this principal.
    Authenticated(SocketAuthenticated),
    /// The connection gave up for good; every subscription ended with the error.
    Stopped {
        /// The error, in words.
        reason: String,
    },
}

/// One socket to a server (`GET /ws`, protocol version 2) with many subscriptions and calls.
/// Cheap to clone; the socket closes once every clone and every [`Subscription`] is dropped.
///
/// ```no_run
/// # async fn example() -> Result<(), tally_client::ClientError> {
/// use futures_util::StreamExt;
/// use tally_client::{Client, SubscriptionEvent};
///
/// let client = Client::new("http://127.0.0.1:8094")?;
/// let connection = client.connect();
/// let mut likes = connection.subscribe("likes");
/// let mut seats = connection.subscribe("seats");
/// connection.increment("likes", 1).await?;
/// while let Some(event) = likes.next().await {
///     if let SubscriptionEvent::Update(update) = event {
///         println!("likes: {}", update.value);
///     }
/// }
/// # drop(seats);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Connection {
    /// To the task that owns the socket.
    requests: mpsc::UnboundedSender<Request>,
    /// The socket's own events, for [`Connection::events`].
    events: broadcast::Sender<ConnectionEvent>,
    /// A listener made before the task started, for the first call of [`Connection::events`],
    /// so that it misses nothing (not even a failure of the very first attempt).
    first_events: Arc<std::sync::Mutex<Option<broadcast::Receiver<ConnectionEvent>>>>,
    /// The servers' base URLs, for errors (joined with `, ` when there are several).
    base: Arc<str>,
    /// The servers' base URLs, in order.
    bases: Arc<[String]>,
    /// The index in `bases` of the current (or last) attempt, kept by the task.
    current: Arc<AtomicUsize>,
    /// How long a call waits for its answer, across reconnects.
    retry_for: Duration,
    /// Tells a dropped subscription from a newer one of the same counter.
    serials: Arc<AtomicU64>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("base", &self.base).finish_non_exhaustive()
    }
}

impl Connection {
    pub(crate) fn start(
        bases: &Arc<[String]>,
        credentials: Option<Arc<Credentials>>,
        tls: Arc<rustls::ClientConfig>,
        options: ConnectionOptions,
        retry_for: Duration,
    ) -> Self {
        let (requests, inbox) = mpsc::unbounded_channel();
        // Connection events are rare (a few per reconnect); a listener that falls this far
        // behind skips the oldest.
        let (events, first_events) = broadcast::channel(64);
        let urls = bases
            .iter()
            .map(|base| match base.strip_prefix("https://") {
                Some(rest) => format!("wss://{rest}/ws"),
                None => format!("ws://{}/ws", base.trim_start_matches("http://")),
            })
            .collect();
        let current = Arc::new(AtomicUsize::new(0));
        let driver = Driver::new(
            urls,
            Arc::clone(&current),
            credentials,
            tls,
            options.rules(),
            inbox,
            events.clone(),
        );
        tokio::spawn(driver.run());
        Self {
            requests,
            events,
            first_events: Arc::new(std::sync::Mutex::new(Some(first_events))),
            base: Arc::from(bases.join(", ")),
            bases: Arc::clone(bases),
            current,
            retry_for,
            serials: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The base URL of the server the socket is connected to, or of the current (or last)
    /// attempt while it is not: with several URLs, the one the last reconnect went to.
    pub fn server_url(&self) -> &str {
        let index = self.current.load(Ordering::Relaxed);
        self.bases.get(index).or_else(|| self.bases.first()).map_or("", String::as_str)
    }

    /// Follows counter `name`: a snapshot, then every update. See [`Self::subscribe_with`].
    pub fn subscribe(&self, name: &str) -> Subscription {
        self.subscribe_with(name, SubscribeOptions::default())
    }

    /// Follows counter `name` with `options`. One connection holds one subscription per
    /// counter; a second one of the same counter ends at once (`already_subscribed`). Dropping
    /// the [`Subscription`] unsubscribes.
    ///
    /// Up to 1024 events wait for the reader. A reader that falls that far behind is not
    /// waited for (the socket and the other subscriptions go on): its subscription is paused
    /// and resumed after the last version it delivered once the reader has caught up, so
    /// nothing is skipped. To follow a counter that changes faster than you read, ask for
    /// `max_rate`.
    pub fn subscribe_with(&self, name: &str, options: SubscribeOptions) -> Subscription {
        let serial = self.serials.fetch_add(1, Ordering::Relaxed);
        let (sender, events) = mpsc::channel(driver::SUBSCRIPTION_BUFFER);
        let subscription =
            Subscription { name: name.to_owned(), serial, events, requests: self.requests.clone() };
        let problem = match CounterName::parse(name) {
            Err(error) => Some(ClientError::Invalid(error)),
            Ok(_) if options.max_rate.is_some_and(|rate| !(rate > 0.0 && rate <= 1000.0)) => {
                Some(ClientError::Invalid(ProtocolError::new(
                    ErrorCode::InvalidField,
                    "maxRate must be above 0 and at most 1000 updates per second",
                )))
            }
            Ok(_) if options.types.as_ref().is_some_and(Vec::is_empty) => {
                Some(ClientError::Invalid(ProtocolError::new(
                    ErrorCode::InvalidField,
                    "types must hold at least one update type (or be None for all)",
                )))
            }
            Ok(name) => {
                let request = Request::Subscribe { name, serial, options, events: sender.clone() };
                self.requests.send(request).err().map(|_| gone())
            }
        };
        if let Some(error) = problem {
            // A new channel has room.
            let _ = sender.try_send(SubscriptionEvent::Ended(Ended::Refused(error)));
        }
        subscription
    }

    /// The socket's own events: connected, disconnected, stopped. The first call gives a
    /// listener that sees every event since the connection started; later calls, listeners
    /// that see the events from then on.
    pub fn events(&self) -> ConnectionEvents {
        // The lock is never held across an await, nor while anything can panic.
        let first = self.first_events.lock().ok().and_then(|mut first| first.take());
        ConnectionEvents { receiver: first.unwrap_or_else(|| self.events.subscribe()) }
    }

    /// Calls `procedure` (any counter procedure) with `body` (the RPC's body, a JSON object)
    /// over the socket; answers exactly what the RPC answers. A write gets a fresh idempotency
    /// key unless `body` holds one as `idempotencyKey`, is answered only once committed, and is
    /// sent again with the same key after a lost connection or a temporary refusal until it
    /// is answered (for up to [`ClientBuilder::retry_for`](crate::ClientBuilder::retry_for)),
    /// so it counts once.
    ///
    /// ```no_run
    /// # async fn example(connection: tally_client::Connection) -> Result<(), tally_client::ClientError> {
    /// use tally_proto::Procedure;
    /// let answer = connection
    ///     .call(Procedure::GetValue, serde_json::json!({"name": "likes"}))
    ///     .await?;
    /// println!("likes is {}", answer["value"]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// The RPC's refusals, typed as [`Client`](crate::Client)'s are;
    /// [`ClientError::Invalid`] for a body that is not an object, a bad `idempotencyKey`, or a
    /// key procedure (RPC-only); [`ClientError::Connect`] when no answer came in time (for a
    /// write, saying it may have been applied and naming its key); the connection's error when
    /// it stopped for good.
    pub async fn call(&self, procedure: Procedure, body: Value) -> Result<Value, ClientError> {
        let invalid =
            |code, message: String| ClientError::Invalid(ProtocolError::new(code, message));
        let Value::Object(mut body) = body else {
            return Err(invalid(
                ErrorCode::InvalidField,
                "the body of a call must be a JSON object, such as {\"name\":\"likes\"}".into(),
            ));
        };
        if !procedure.callable_over_socket() {
            return Err(invalid(
                ErrorCode::UnknownProcedure,
                format!("{} is RPC-only; call it with Client", procedure.path_name()),
            ));
        }
        let key = match body.remove("idempotencyKey") {
            None | Some(Value::Null) => procedure.is_write().then(new_key),
            Some(Value::String(key)) => {
                Some(IdempotencyKey::parse(&key).map_err(ClientError::Invalid)?)
            }
            Some(_) => {
                return Err(invalid(
                    ErrorCode::InvalidIdempotencyKey,
                    "idempotencyKey must be a string".into(),
                ));
            }
        };
        self.call_raw(procedure, body, key).await
    }

    /// Applies `write` over the socket with its idempotency key; see [`Self::call`] and
    /// [`Client::write`](crate::Client::write).
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn write(&self, write: &Write) -> Result<Update, ClientError> {
        let answer =
            self.call_raw(write.procedure, write.body.clone(), Some(write.key.clone())).await?;
        self.typed(answer)
    }

    /// Adds `amount` to counter `name` over the socket (a fresh key; see [`Self::write`]).
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn increment(&self, name: &str, amount: i64) -> Result<Update, ClientError> {
        self.write(&Write::increment(name, amount)).await
    }

    /// Subtracts `amount` from counter `name` over the socket.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn decrement(&self, name: &str, amount: i64) -> Result<Update, ClientError> {
        self.write(&Write::decrement(name, amount)).await
    }

    /// Sets counter `name` to `value` over the socket.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn set_value(&self, name: &str, value: i64) -> Result<Update, ClientError> {
        self.write(&Write::set_value(name, value)).await
    }

    /// Sets counter `name` to 0 over the socket.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn reset(&self, name: &str) -> Result<Update, ClientError> {
        self.write(&Write::reset(name)).await
    }

    /// The value and version of counter `name`, over the socket.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn get_value(&self, name: &str) -> Result<ValueAnswer, ClientError> {
        self.read(Procedure::GetValue, name).await
    }

    /// The metadata of counter `name`, over the socket.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn get_metadata(&self, name: &str) -> Result<Metadata, ClientError> {
        self.read(Procedure::GetMetadata, name).await
    }

    /// One page of counter `name`'s history (see
    /// [`Client::get_history`](crate::Client::get_history)), over the socket.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn get_history(
        &self,
        name: &str,
        limit: Option<u32>,
        before: Option<u64>,
    ) -> Result<HistoryPage, ClientError> {
        let mut body = Map::new();
        body.insert("name".into(), name.into());
        if let Some(limit) = limit {
            body.insert("limit".into(), limit.into());
        }
        if let Some(before) = before {
            body.insert("before".into(), before.into());
        }
        let answer = self.call_raw(Procedure::GetHistory, body, None).await?;
        self.typed(answer)
    }

    /// How many watch counter `name`, over the socket.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn get_presence(&self, name: &str) -> Result<Presence, ClientError> {
        self.read(Procedure::GetPresence, name).await
    }

    async fn read<T: DeserializeOwned>(
        &self,
        procedure: Procedure,
        name: &str,
    ) -> Result<T, ClientError> {
        let mut body = Map::new();
        body.insert("name".into(), name.into());
        let answer = self.call_raw(procedure, body, None).await?;
        self.typed(answer)
    }

    fn typed<T: DeserializeOwned>(&self, answer: Value) -> Result<T, ClientError> {
        serde_json::from_value(answer).map_err(|error| ClientError::Protocol {
            url: format!("{}/ws", self.base),
            reason: format!("a call's result does not have the expected shape: {error}"),
        })
    }

    /// Sends one call until it is answered: the task sends it again after a lost connection;
    /// here, a temporary refusal (`unavailable`, `too_many_in_flight`) is sent again after a
    /// backoff, with the same key. `rate_limited` is returned, as the RPC returns it.
    async fn call_raw(
        &self,
        procedure: Procedure,
        body: Map<String, Value>,
        key: Option<IdempotencyKey>,
    ) -> Result<Value, ClientError> {
        let deadline = tokio::time::Instant::now() + self.retry_for;
        let undecided = |error: ClientError| match &key {
            Some(key) => undecided(error, key),
            None => error,
        };
        let mut step = 0;
        loop {
            let (reply, answer) = oneshot::channel();
            let request = Request::Call { procedure, body: body.clone(), key: key.clone(), reply };
            self.requests.send(request).map_err(|_| gone())?;
            let answer = match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => return Err(gone()),
                Err(_) => {
                    // Dropping the receiver tells the task to forget the call.
                    return Err(undecided(ClientError::Connect {
                        url: self.base.to_string(),
                        reason: format!("no answer over the socket within {:?}", self.retry_for),
                    }));
                }
            };
            let refusal = match answer {
                Answer::Result(value) => return Ok(value),
                Answer::Stopped(error) => return Err(undecided(error)),
                Answer::Refused(refusal) => refusal,
            };
            if !refusal.temporary || refusal.code == ErrorCode::RateLimited.as_str() {
                return Err(socket_refusal(refusal));
            }
            let delay = WRITE_BACKOFF.delay(step);
            step += 1;
            if tokio::time::Instant::now() + delay >= deadline {
                return Err(undecided(socket_refusal(refusal)));
            }
            tokio::time::sleep(delay).await;
        }
    }
}

/// The error of a connection whose task is gone (its runtime shut down).
fn gone() -> ClientError {
    ClientError::Protocol {
        url: "/ws".into(),
        reason: "the connection's task has ended (its runtime shut down)".into(),
    }
}

/// The events of one subscription, as a [`Stream`]; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    name: String,
    /// Tells the task which subscription of this counter is being dropped.
    serial: u64,
    events: mpsc::Receiver<SubscriptionEvent>,
    /// Keeps the connection's task alive, and unsubscribes on drop.
    requests: mpsc::UnboundedSender<Request>,
}

impl Subscription {
    /// The counter it follows.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Stream for Subscription {
    type Item = SubscriptionEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The task may be gone already; then there is nothing to unsubscribe from.
        let _ = self.requests.send(Request::Unsubscribe {
            name: std::mem::take(&mut self.name),
            serial: self.serial,
        });
    }
}

/// A listener of a connection's own events (see [`Connection::events`]).
#[derive(Debug)]
pub struct ConnectionEvents {
    receiver: broadcast::Receiver<ConnectionEvent>,
}

impl ConnectionEvents {
    /// The next event; `None` once the connection's task has ended. A listener that fell
    /// behind skips the events it missed.
    pub async fn next(&mut self) -> Option<ConnectionEvent> {
        loop {
            match self.receiver.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
