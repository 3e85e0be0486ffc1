//! The version-2 socket: `GET /ws`, one socket for many counters (docs/PROTOCOL.md §10).
//!
//! One task per socket owns everything about it: its principal, its subscriptions (a slab,
//! keyed by the number its topics wake it with), the calls it has in flight and the due times
//! of conflated updates. It waits on all of them at once:
//! - the client's next command (`commands`), each answered with exactly one reply;
//! - the socket's wake list (`topic::Wakes`): a publish puts there the key of each
//!   subscription whose counter changed, so the task looks at those and only those, however
//!   many subscriptions the socket holds;
//! - the calls in flight, a `FuturesUnordered` bounded by `--max-in-flight`: a write waiting
//!   for its commit holds up neither pushes nor other commands;
//! - the conflation schedule, the ping tick, the token's expiry, and shutdown.
//!
//! A subscription that lags past its topic's ring is caught up from history by the task itself
//! (it knows the last version it dealt with); when history no longer reaches back, it starts
//! over with a `snapshot` push marked `resync`. Only a socket whose sends stall for
//! `--send-timeout` is dropped (counted as a 4000 close). Losing the right to read a counter
//! ends that subscription alone, with an `unsubscribed` push.
//!
//! The task talks to a [`Transport`], not to axum's socket, so that its unit tests (`tests.rs`)
//! drive it over in-memory channels with paused time.

mod commands;
mod subscription;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::pin::pin;
use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::{Utf8Bytes, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tally_proto::socket::Frame;
use tally_proto::{Action, CounterName, ErrorCode, ProtocolError, WsError, close};
use tokio::time::{Instant, MissedTickBehavior};

use crate::access::Principal;
use crate::connection::{
    self, End, Link, RateWindow, ShutdownSignal, Transport, expiry_timer, reconnect_delay,
    reconnect_phrase, refusal_close_code, until,
};
use crate::framing::Published;
use crate::replay::{self, Origin, ReplayPermit};
use crate::state::AppState;
use crate::topic::{Read, Wakes, next_socket_id};

use subscription::{Offer, Schedule, Slot, Subscriptions, Watched};

/// How many updates of one subscription a look reads from its topic at a time.
const MAX_BURST: usize = 64;
/// How many bursts one look at a subscription sends before the others get their turn.
const MAX_BURSTS_PER_LOOK: usize = 16;

/// A call in flight: its command's id and, once it is done, its answer.
type CallFuture = BoxFuture<'static, (u64, Result<axum::body::Bytes, ProtocolError>)>;

/// Validates the request, then upgrades it to a socket served by a task on the tracker.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    extensions: axum::http::Extensions,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    // WebSockets have no CORS: without this check any web page could use the socket.
    if let Err(error) = state.access.check_origin(&headers) {
        return state.error_response(&error);
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let peer = crate::accept::client_ip(&extensions);
    // A socket may write (calls), so an anonymous one is limited by its address, as an RPC is.
    let start = connection::upgrade_principal(&state, &headers, &extensions, |peer| {
        Arc::new(state.access.anonymous(peer))
    });
    connection::configure(upgrade)
        .on_upgrade(move |socket| {
            let sockets = state.sockets.clone();
            sockets.track_future(serve(state, socket, peer, start))
        })
        .into_response()
}

/// One socket, from upgrade to close.
///
/// Not an `async fn`: one keeps each argument twice in its future, as passed and as moved into
/// the body, for the socket's whole life (the transport alone is 368 bytes). The session is
/// built first, and the future holds only it.
pub(crate) fn serve<T: Transport>(
    state: AppState,
    transport: T,
    peer: Option<IpAddr>,
    // Boxed by the caller: the upgrade callback that holds it stays in axum's upgrade future for
    // the socket's whole life, even once called.
    #[allow(clippy::boxed_local)] start: Box<Result<Arc<Principal>, ProtocolError>>,
) -> impl Future<Output = ()> + Send {
    let (principal, refused) = match *start {
        Ok(principal) => (principal, None),
        Err(error) => (Arc::new(state.access.anonymous(peer)), Some(error)),
    };
    let mut session = Session {
        link: Link::new(transport, state.config.send_timeout),
        access_generation: state.access.generation(),
        principal,
        peer,
        socket_id: next_socket_id(),
        subscriptions: Subscriptions::default(),
        wakes: Wakes::new(),
        woken: Vec::new(),
        burst: Vec::new(),
        calls: FuturesUnordered::new(),
        schedule: Schedule::default(),
        rate_window: RateWindow::new(),
        renewed: false,
        server_stats: None,
        replay_wait_left: state.config.send_timeout,
        state,
    };
    async move {
        let metrics = Arc::clone(&session.state.metrics);
        metrics.websockets_open.inc();
        metrics.sessions_open.inc();
        let end = if session.state.shutdown.is_cancelled() {
            session.reconnect("server is shutting down").await
        } else if let Some(error) = refused {
            End::Close(refusal_close_code(&error), error.message)
        } else {
            session.run().await
        };
        match end {
            End::Close(code, reason) => session.link.close(&metrics, code, reason).await,
            End::Stalled => metrics.websocket_closed(close::SLOW_CONSUMER),
            End::Drop => {}
        }
        session.leave_all();
        metrics.sessions_open.dec();
        metrics.websockets_open.dec();
    }
}

/// One version-2 socket's task state.
pub(crate) struct Session<T> {
    link: Link<T>,
    /// Who the socket acts as now.
    principal: Arc<Principal>,
    /// The client's address: an anonymous principal's write rate is counted by it.
    peer: Option<IpAddr>,
    /// Tells this socket apart in presence while it is anonymous.
    socket_id: u64,
    subscriptions: Subscriptions,
    /// Where the socket's topics put the keys of subscriptions whose counters changed.
    wakes: Arc<Wakes>,
    /// The keys taken from `wakes`, kept to reuse the allocation.
    woken: Vec<u32>,
    /// Updates read from a topic, kept to reuse the allocation.
    burst: Vec<Arc<Published>>,
    /// Calls waiting for their answers (at most `--max-in-flight`).
    calls: FuturesUnordered<CallFuture>,
    /// When conflated subscriptions may send their held updates.
    schedule: Schedule,
    /// The commands received in the current second.
    rate_window: RateWindow,
    /// The access generation the principal was last checked at.
    access_generation: u64,
    /// Set when a fresh token replaced the principal, so the expiry timer is set again.
    renewed: bool,
    /// The server's figures, while the socket watches them (`watchServer`): one receiver of
    /// the sampler's channel, so a socket costs the sampler nothing more than a count.
    server_stats: Option<crate::sampler::Feed>,
    /// How much longer this socket's resumes may wait, all together, for a place among the
    /// bounded replays; spent, a resume gets a `resync` snapshot at once.
    replay_wait_left: std::time::Duration,
    state: AppState,
}

impl<T: Transport> Session<T> {
    async fn run(&mut self) -> End {
        let ping_interval = self.state.config.ping_interval;
        let mut ping_timer =
            tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
        ping_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let shutdown = self.state.shutdown.clone();
        let cancelled = pin!(shutdown.cancelled());
        let mut shutdown_signal = ShutdownSignal::new(&shutdown, cancelled);
        let mut expiry = expiry_timer(&self.state, &self.principal);
        loop {
            // Not biased (but for shutdown): under load every source is ready at once, and
            // neither pushes nor commands may starve the other.
            let step = tokio::select! {
                () = &mut shutdown_signal => Err(Box::pin(self.stop("server is restarting")).await),
                incoming = self.link.recv() => Box::pin(self.on_incoming(incoming)).await,
                Some((id, answer)) = self.calls.next(), if !self.calls.is_empty() => {
                    Box::pin(self.on_call_done(id, answer)).await
                }
                () = self.wakes.take(&mut self.woken) => Box::pin(self.on_wakes()).await,
                () = self.schedule.next() => Box::pin(self.on_due()).await,
                () = next_sample(self.server_stats.as_mut()) => Box::pin(self.push_server_stats()).await,
                _ = ping_timer.tick() => Box::pin(self.on_ping_timer()).await,
                () = until(&mut expiry) => {
                    tracing::info!(principal = %self.principal.id, "socket closed: token expired");
                    Err(End::Close(
                        close::TOKEN_EXPIRED,
                        "the token expired; reconnect with a fresh one and resume with since".into(),
                    ))
                }
            };
            // Replies and pushes were queued; they leave together.
            if let Err(end) = step.and(self.link.flush().await) {
                return end;
            }
            if std::mem::take(&mut self.renewed) {
                expiry = expiry_timer(&self.state, &self.principal);
            }
        }
    }

    /// Shutdown: answers the calls in flight first (their writes are being committed; the
    /// counters stop only after the sockets), within half the shutdown grace, then tells the
    /// client when to come back.
    async fn stop(&mut self, why: &str) -> End {
        let grace = self.state.config.shutdown_grace / 2;
        let answered = tokio::time::timeout(grace, async {
            while let Some((id, answer)) = self.calls.next().await {
                self.on_call_done(id, answer).await?;
            }
            self.link.flush().await
        })
        .await;
        match answered {
            Ok(Err(end)) => end,
            Ok(Ok(())) | Err(_) => self.reconnect(why).await,
        }
    }

    /// Tells the client when to come back, for a socket the server stops serving: a
    /// `reconnect` push, then 1012 with the same delay in its reason.
    async fn reconnect(&mut self, why: &str) -> End {
        let after_ms = reconnect_delay(self.state.config.reconnect_spread);
        let push = Frame::Reconnect { after_ms, reason: why.to_owned() };
        let _ = self.link.send_text(Utf8Bytes::from(push.to_json())).await;
        End::Close(close::SERVICE_RESTART, format!("{why}; {}", reconnect_phrase(after_ms)))
    }

    /// Looks at each subscription whose counter changed.
    async fn on_wakes(&mut self) -> Result<(), End> {
        self.check_access().await?;
        let mut woken = std::mem::take(&mut self.woken);
        let now = Instant::now();
        for key in woken.drain(..) {
            let Some(watched) = self.subscriptions.get_mut(key) else { continue };
            // A conflated subscription woken before its slot waits for it, off the waiting
            // list: a hot counter then costs it a look per slot, not per write.
            if watched.wants_latest_only() && watched.subscription.is_due() {
                match watched.park(now) {
                    Slot::Schedule(at) => {
                        self.schedule.add(at, key);
                        continue;
                    }
                    Slot::Scheduled => continue,
                    Slot::Now => {}
                }
            }
            // A key may be stale (its subscription ended or was replaced): then it is not due.
            let due =
                self.subscriptions.get_mut(key).is_some_and(|watched| watched.subscription.rearm());
            if due {
                self.pump(key).await?;
            }
        }
        self.woken = woken;
        Ok(())
    }

    /// Sends subscription `key` what its topic published since it last looked (caught up from
    /// history when the ring no longer holds it), and its presence if that changed.
    async fn pump(&mut self, key: u32) -> Result<(), End> {
        for _ in 0..MAX_BURSTS_PER_LOOK {
            let Some(watched) = self.subscriptions.get_mut(key) else { return Ok(()) };
            let mut burst = std::mem::take(&mut self.burst);
            let read = watched.subscription.topic().read_after(watched.seen, MAX_BURST, &mut burst);
            let full = burst.len() == MAX_BURST;
            // The first version missing, if the ring jumped over versions this subscription
            // has not dealt with (lag, or storage moved past a failed commit).
            let mut missing = match read {
                Read::Lagged { oldest } => Some(oldest),
                Read::Ok => None,
                Read::Deleted => {
                    self.burst = burst;
                    let name = Arc::clone(&watched.name);
                    let error = ProtocolError::new(
                        tally_proto::ErrorCode::CounterDeleted,
                        format!(
                            "counter {name} was deleted, with its history; subscribe again without since to watch it start again at version 0"
                        ),
                    );
                    return self.end_subscription(key, &error).await;
                }
            };
            let now = Instant::now();
            let mut sent = Ok(());
            for update in burst.drain(..) {
                if update.version() != watched.seen + 1 {
                    missing = Some(update.version());
                    break;
                }
                sent = deliver(&mut self.link, &mut self.schedule, key, watched, update, now, None)
                    .await;
                if sent.is_err() {
                    break;
                }
            }
            burst.clear();
            self.burst = burst;
            sent?;
            if let Some(oldest) = missing {
                Box::pin(self.catch_up(key, oldest)).await?;
                continue;
            }
            if !full {
                return self.push_presence(key).await;
            }
        }
        // A topic publishing as fast as the socket sends: the others get a turn first.
        if let Some(watched) = self.subscriptions.get_mut(key) {
            watched.subscription.wake_again();
        }
        Ok(())
    }

    /// Pushes subscription `key`'s presence if the topic announced new counts.
    async fn push_presence(&mut self, key: u32) -> Result<(), End> {
        let Some(watched) = self.subscriptions.get_mut(key) else { return Ok(()) };
        let Some(presence) = watched.presence_to_push() else { return Ok(()) };
        let push = Frame::Presence { name: watched.name.to_string(), presence };
        self.link.feed(Utf8Bytes::from(push.to_json())).await
    }

    /// Delivers versions `seen + 1..oldest` of subscription `key` from history; starts it over
    /// with a `resync` snapshot when history no longer holds them.
    async fn catch_up(&mut self, key: u32, oldest: u64) -> Result<(), End> {
        let Some(watched) = self.subscriptions.get_mut(key) else { return Ok(()) };
        if watched.wants_latest_only() {
            // Conflated without filters: only the latest state matters, and it is in the ring.
            watched.seen = oldest - 1;
            return Ok(());
        }
        let Some(origin) = watched.subscription.topic().latest().map(|u| Origin::of_update(&u))
        else {
            return Ok(());
        };
        // Bounded like a resume's replay, but without waiting (the socket's other subscriptions
        // would wait too): past a bound, the subscription starts over instead.
        let Ok(permit) = self.state.replays.start(self.peer, std::time::Duration::ZERO).await
        else {
            return self.resync(key).await;
        };
        self.state.metrics.catch_ups.inc();
        let Some(watched) = self.subscriptions.get_mut(key) else { return Ok(()) };
        let mut cursor = watched.seen;
        while cursor + 1 < oldest {
            let up_to = (oldest - 1).min(cursor + replay::PAGE);
            match replay::page(&self.state, Some(&origin), cursor, up_to).await {
                Ok(Some(updates)) => {
                    let Some(watched) = self.subscriptions.get_mut(key) else { return Ok(()) };
                    let now = Instant::now();
                    for update in updates {
                        let update = Arc::new(update);
                        let permit = Some(&permit);
                        deliver(
                            &mut self.link,
                            &mut self.schedule,
                            key,
                            watched,
                            update,
                            now,
                            permit,
                        )
                        .await?;
                    }
                }
                Ok(None) => return self.resync(key).await,
                Err(error) => return self.end_subscription(key, &error).await,
            }
            cursor = up_to;
        }
        Ok(())
    }

    /// Starts subscription `key` over: a `snapshot` push marked `resync`, then live updates.
    async fn resync(&mut self, key: u32) -> Result<(), End> {
        let Some(watched) = self.subscriptions.get_mut(key) else { return Ok(()) };
        let name = Arc::clone(&watched.name);
        let counter = match self.state.registry.read(&name).await {
            Ok(counter) => counter,
            Err(error) => return self.end_subscription(key, &error.to_protocol()).await,
        };
        let Some(watched) = self.subscriptions.get_mut(key) else { return Ok(()) };
        self.state.metrics.resyncs.inc();
        watched.seen = counter.version;
        watched.drop_pending();
        let can = self.principal.permissions(&name).actions();
        let snapshot = counter.snapshot(&name, true, can, self.state.store.epoch());
        let push = Frame::Snapshot { id: None, name: name.to_string(), snapshot };
        self.link.feed(Utf8Bytes::from(push.to_json())).await
    }

    /// Ends subscription `key` because of `error`, with an `unsubscribed` push; the socket
    /// goes on.
    async fn end_subscription(&mut self, key: u32, error: &ProtocolError) -> Result<(), End> {
        let Some(name) = self.forget(key) else { return Ok(()) };
        self.state.metrics.error(error.code);
        let push = Frame::Unsubscribed {
            id: None,
            name: name.to_string(),
            code: Some(error.code.as_str().to_owned()),
            reason: Some(error.message.clone()),
        };
        self.link.feed(Utf8Bytes::from(push.to_json())).await
    }

    /// Ends subscription `key` (it leaves its topic) and forgets everything kept for it;
    /// answers the counter's name.
    fn forget(&mut self, key: u32) -> Option<Arc<CounterName>> {
        let watched = self.subscriptions.remove(key)?;
        if let Some(at) = watched.rate.as_ref().and_then(|rate| rate.scheduled) {
            self.schedule.remove(at, key);
        }
        let name = Arc::clone(&watched.name);
        drop(watched);
        self.state.metrics.subscriptions.dec();
        // The subscription is gone: the counter's slot may go too.
        self.state.registry.unwatch(&name);
        Some(name)
    }

    /// Leaves every topic, as the socket ends.
    fn leave_all(&mut self) {
        let names: Vec<_> = self.subscriptions.drain().map(|watched| watched.name).collect();
        for name in names {
            self.state.metrics.subscriptions.dec();
            // The subscription is dropped: the counter's slot may go too.
            self.state.registry.unwatch(&name);
        }
    }

    /// Sends the held updates of conflated subscriptions whose time came.
    async fn on_due(&mut self) -> Result<(), End> {
        self.check_access().await?;
        let now = Instant::now();
        for key in self.schedule.take_due(now) {
            let Some(watched) = self.subscriptions.get_mut(key) else { continue };
            let latest_only = watched.wants_latest_only();
            if let Some(text) = watched.due(now) {
                self.link.feed(text).await?;
            }
            if latest_only {
                // Parked until now, so presence changes waited for this slot too.
                self.push_presence(key).await?;
            }
        }
        Ok(())
    }

    async fn on_ping_timer(&mut self) -> Result<(), End> {
        self.check_access().await?;
        self.link.ping_tick().await
    }

    /// Checks the principal again if rights may have shrunk since it last did (auth turned on,
    /// a key revoked): called before every look at the subscriptions and at every ping tick,
    /// so that a counter the principal may no longer read is sent nothing more. Credentials
    /// that are no longer valid leave the socket anonymous; each subscription its principal
    /// may no longer read ends with an `unsubscribed` push, and the socket goes on.
    async fn check_access(&mut self) -> Result<(), End> {
        let generation = self.state.access.generation();
        if generation == self.access_generation {
            return Ok(());
        }
        self.access_generation = generation;
        let mut why = None;
        if let Err(error) = self.state.access.recheck(Arc::make_mut(&mut self.principal)) {
            self.principal = Arc::new(self.state.access.anonymous(self.peer));
            why = Some(error.message);
        }
        self.recheck_subscriptions(why.as_deref()).await
    }

    /// Ends the subscriptions the principal may no longer read (`why`: the reason, if the
    /// principal itself changed), and notes on the others whether it now sees `by`.
    async fn recheck_subscriptions(&mut self, why: Option<&str>) -> Result<(), End> {
        let mut lost = Vec::new();
        for key in self.subscriptions.keys() {
            let Some(watched) = self.subscriptions.get_mut(key) else { continue };
            let permissions = self.principal.permissions(&watched.name);
            if permissions.allows(Action::Read) {
                watched.admin = permissions.allows(Action::Admin);
            } else {
                lost.push((key, Arc::clone(&watched.name)));
            }
        }
        for (key, name) in lost {
            let principal = &self.principal;
            let code = if principal.credentialed {
                ErrorCode::Forbidden
            } else {
                ErrorCode::Unauthenticated
            };
            let message = match why {
                Some(why) => format!("{why}; {} may not read counter {name}", principal.id),
                None => format!("{} may no longer read counter {name}", principal.id),
            };
            tracing::info!(principal = %principal.id, counter = %name, "subscription ended: no read grant");
            self.end_subscription(key, &ProtocolError::new(code, message)).await?;
        }
        Ok(())
    }

    /// Queues an `error` reply (to command `id`, when it had one).
    async fn reply_error(&mut self, id: Option<u64>, error: &ProtocolError) -> Result<(), End> {
        self.state.metrics.error(error.code);
        let frame = Frame::Error { id, error: WsError::from(error) };
        self.link.feed(Utf8Bytes::from(frame.to_json())).await
    }
}

/// Waits for the sampler's next figures; never, without a watch (or once the sampler is gone).
async fn next_sample(feed: Option<&mut crate::sampler::Feed>) {
    if let Some(feed) = feed
        && feed.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// Offers `update` to subscription `key`, and sends (or schedules) what it asks; in a replay
/// from history (`replay`), what it sends first waits for the replays' bytes per second.
async fn deliver<T: Transport>(
    link: &mut Link<T>,
    schedule: &mut Schedule,
    key: u32,
    watched: &mut Watched,
    update: Arc<Published>,
    now: Instant,
    replay: Option<&ReplayPermit>,
) -> Result<(), End> {
    match watched.offer(update, now) {
        Offer::Nothing => Ok(()),
        Offer::Send(text) => replay::paced_feed(link, replay, text).await,
        Offer::Schedule(at) => {
            schedule.add(at, key);
            Ok(())
        }
    }
}
