//! The version-1 socket: `GET /ws/counter/{name}[?since=V]`, one task per socket, one counter.
//!
//! A socket first gets a snapshot (or, resuming with `since`, a `resumed` marker and the missed
//! updates from history), then every update of the counter as its actor publishes it. The
//! counter's topic is the socket's bounded queue: a watcher that falls more than
//! `--watch-buffer` updates behind, or whose send stalls for `--send-timeout`, is closed with
//! 4000 and resumes with `since`, so a slow watcher never slows anyone else. (The version-2
//! socket, `session`, catches a lagging subscription up by itself instead.) What both kinds of
//! socket share lives in `connection`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use axum::extract::rejection::PathRejection;
use axum::extract::ws::{Message, Utf8Bytes, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use tally_proto::name::NAME_RULE;
use tally_proto::{
    Action, Authenticated, ClientMessage, CounterName, ErrorCode, Pong, ProtocolError, Resumed,
    ServerMessage, WatchQuery, WsError, close,
};
use tokio::time::{Instant, MissedTickBehavior};

use crate::access::Principal;
use crate::clock;
use crate::connection::{
    self, End, Link, RateWindow, ShutdownSignal, Transport, binary_refused, expiry_timer,
    reconnect_delay, reconnect_phrase, refusal_close_code, until,
};
use crate::counter::{ApplyError, CounterState};
use crate::replay::{self, Origin, Start};
use crate::state::AppState;
use crate::topic::{Read, Subscription, User, next_socket_id};

/// How many queued updates one wake-up writes before flushing.
const MAX_BURST: usize = 64;

/// Validates the request, then upgrades it to a socket watched by a task on the tracker.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    extensions: axum::http::Extensions,
    name: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    // WebSockets have no CORS: without this check any web page could watch any counter.
    if let Err(error) = state.access.check_origin(&headers) {
        return state.error_response(&error);
    }
    // The rest of the path fails to decode only when its percent-encoding does not make UTF-8
    // (`%FF`); axum's own answer to that is plain text.
    let Ok(Path(name)) = name else {
        return state.error_response(&ProtocolError::new(
            ErrorCode::InvalidName,
            format!(
                "the counter name in the path is not percent-encoded UTF-8; allowed: {NAME_RULE}"
            ),
        ));
    };
    let name = match CounterName::parse(&name) {
        Ok(name) => name,
        Err(error) => return state.error_response(&error),
    };
    // Checked before the upgrade, so the client gets an HTTP answer; concurrent upgrades may
    // pass it together, so the limit holds to within a few.
    let limit = state.config.max_watchers_per_counter;
    if state.registry.watchers(&name) >= limit {
        return state.error_response(&ProtocolError::new(
            ErrorCode::TooManyWatchers,
            format!(
                "counter {name} already has {limit} watchers, the most allowed; try again later"
            ),
        ));
    }
    let query = match WatchQuery::parse(query.as_deref()) {
        Ok(query) => query,
        Err(error) => return state.error_response(&error),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    // The address bounds the socket's replay (`replay`); kept only by a resuming socket.
    let peer = crate::accept::client_ip(&extensions);
    // How it starts is decided once the counter's state (and so its epoch) is known.
    let epoch = query.epoch.as_ref().map(tally_proto::Epoch::bits);
    let resume = query.since.map(|since| Resume { since, peer, epoch });
    // A v1 socket never writes, so its anonymous principal needs no address of its own.
    let start = connection::upgrade_principal(&state, &headers, &extensions, |_| {
        state.access.anonymous_watcher()
    });
    connection::configure(upgrade)
        .on_upgrade(move |socket| {
            let sockets = state.sockets.clone();
            sockets.track_future(serve(state, socket, name, resume, start))
        })
        .into_response()
}

/// `/ws/counter` and `/ws/counter/`: a watch path without a counter name, refused with the
/// error body as any bad name is (after the origin check, as for a name).
pub(crate) async fn no_name(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Err(error) = state.access.check_origin(&headers) {
        return state.error_response(&error);
    }
    state.error_response(&ProtocolError::new(
        ErrorCode::InvalidName,
        format!("the watch path is /ws/counter/{{name}} and has no name; allowed: {NAME_RULE}"),
    ))
}

/// One socket, from upgrade to close.
///
/// Not an `async fn`: one keeps each argument twice in its future, as passed and as moved into
/// the body, for the socket's whole life (the transport alone is 368 bytes). The session is
/// built first, and the future holds only it.
fn serve<T: Transport>(
    state: AppState,
    socket: T,
    name: CounterName,
    resume: Option<Resume>,
    // Boxed by the caller: the upgrade callback that holds it stays in axum's upgrade future for
    // the socket's whole life, even once called.
    #[allow(clippy::boxed_local)] start: Box<Result<Arc<Principal>, ProtocolError>>,
) -> impl Future<Output = ()> + Send {
    let (principal, refused) = match *start {
        Ok(principal) => (principal, None),
        // Boxed: a refusal is rare, and the future keeps this for the socket's whole life.
        Err(error) => (state.access.anonymous_watcher(), Some(Box::new(error))),
    };
    let mut session = Session {
        link: Link::new(socket, state.config.send_timeout),
        name,
        last_version: 0,
        rate_window: RateWindow::new(),
        admin: false,
        access_generation: state.access.generation(),
        renewed: false,
        principal,
        state,
    };
    async move {
        session.state.metrics.websockets_open.inc();
        let end = if session.state.shutdown.is_cancelled() {
            shutting_down(&session.state, "server is shutting down")
        } else if let Some(error) = refused {
            End::Close(refusal_close_code(&error), error.message)
        } else if let Err(end) = Box::pin(session.admit()).await {
            end
        } else {
            session.watch_counter(resume).await
        };
        match end {
            End::Close(code, reason) => {
                session.link.close(&session.state.metrics, code, reason).await;
            }
            End::Stalled => session.state.metrics.websocket_closed(close::SLOW_CONSUMER),
            End::Drop => {}
        }
        session.state.metrics.websockets_open.dec();
    }
}

/// The close of a socket the server stops serving: 1012, with a reconnect delay chosen over
/// `--reconnect-spread` in its reason.
fn shutting_down(state: &AppState, why: &str) -> End {
    let after_ms = reconnect_delay(state.config.reconnect_spread);
    End::Close(close::SERVICE_RESTART, format!("{why}; {}", reconnect_phrase(after_ms)))
}

/// A resume: the version the client has, and its address, which bounds its replay.
#[derive(Debug, Clone, Copy)]
struct Resume {
    since: u64,
    peer: Option<std::net::IpAddr>,
    /// The epoch the client's version is of ([`tally_proto::Epoch::bits`]), if it said: when
    /// it is not the counter's (another database's, or the counter was deleted since), only
    /// a resync snapshot will do, whatever `since` is.
    epoch: Option<u64>,
}

struct Session<T> {
    link: Link<T>,
    /// The counter watched.
    name: CounterName,
    /// The version of the last update sent; nothing at or below it is sent again.
    last_version: u64,
    /// The messages received in the current second.
    rate_window: RateWindow,
    /// Whether the principal holds `admin` on the counter (and so sees `by`).
    admin: bool,
    /// The access generation the principal was last checked at.
    access_generation: u64,
    /// Set when a fresh token replaced the principal, so the expiry timer is set again.
    renewed: bool,
    /// Who the socket acts as; shared, so that anonymous sockets hold one pointer each.
    principal: Arc<Principal>,
    state: AppState,
}

impl<T: Transport> Session<T> {
    /// Subscribes to the counter and watches it until the socket ends.
    async fn watch_counter(&mut self, resume: Option<Resume>) -> End {
        let name = self.name.clone();
        let user = User::of(&self.principal, next_socket_id());
        // Taken apart in the `let`, so that the answer is not kept beside the watch's future.
        let (counter, updates) = match self.state.registry.watch(&name, user).await {
            Ok(watched) => watched,
            Err(ApplyError::ShuttingDown) => {
                return shutting_down(&self.state, "server is shutting down");
            }
            Err(error) => {
                let error = error.to_protocol();
                let _ = self.send_error(&error).await;
                return End::Close(close::INTERNAL_ERROR, "cannot load the counter".into());
            }
        };
        self.state.metrics.watchers.inc();
        let end = self.watch(&name, counter, updates, resume).await;
        self.state.metrics.watchers.dec();
        // The subscription is gone now; the counter's slot may be too.
        self.state.registry.unwatch(&name);
        end
    }

    async fn watch(
        &mut self,
        name: &CounterName,
        counter: CounterState,
        mut updates: Subscription,
        resume: Option<Resume>,
    ) -> End {
        // The first messages, the client's rare messages and the ping tick are boxed while they
        // run: their futures would otherwise widen every idle socket's future for good.
        if let Err(end) = Box::pin(self.start(name, counter, resume)).await {
            return end;
        }
        let ping_interval = self.state.config.ping_interval;
        let mut ping_timer =
            tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
        ping_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let shutdown = self.state.shutdown.clone();
        // Made once: each `cancelled()` future registers with (and leaves) a notifier that every
        // socket shares, which per update per watcher would contend on one lock.
        let cancelled = std::pin::pin!(shutdown.cancelled());
        let mut shutdown_signal = ShutdownSignal::new(&shutdown, cancelled);
        let mut expiry = expiry_timer(&self.state, &self.principal);
        loop {
            let step = tokio::select! {
                biased;
                () = &mut shutdown_signal => Err(shutting_down(&self.state, "server is restarting; reconnect with since")),
                incoming = self.link.recv() => Box::pin(self.on_incoming(incoming)).await,
                _ = updates.changed() => self.on_update(&updates).await,
                _ = ping_timer.tick() => Box::pin(self.on_ping_timer()).await,
                () = until(&mut expiry) => {
                    tracing::info!(principal = %self.principal.id, counter = %self.name, "watch closed: token expired");
                    Err(End::Close(
                        close::TOKEN_EXPIRED,
                        format!("the token expired; reconnect with a fresh one and since={}", self.last_version),
                    ))
                }
            };
            if let Err(end) = step {
                return end;
            }
            if std::mem::take(&mut self.renewed) {
                expiry = expiry_timer(&self.state, &self.principal);
            }
        }
    }

    /// Checks the principal again if rights may have shrunk since it last did (auth turned on,
    /// a key revoked), and ends the watch if it may no longer read: called before every burst
    /// of updates and at every ping tick, so a revoked key is sent nothing more.
    fn check_access(&mut self) -> Result<(), End> {
        let generation = self.state.access.generation();
        if generation == self.access_generation {
            return Ok(());
        }
        self.access_generation = generation;
        if let Err(error) = self.state.access.recheck(Arc::make_mut(&mut self.principal)) {
            return Err(End::Close(close::UNAUTHENTICATED, error.message));
        }
        let permissions = self.principal.permissions(&self.name);
        if !permissions.allows(Action::Read) {
            return Err(self.forbidden());
        }
        self.admin = permissions.allows(Action::Admin);
        Ok(())
    }

    /// Lets the socket watch its counter: at once when its principal may read it; otherwise,
    /// for a socket without credentials, once an `auth` message brings some within
    /// `--auth-timeout`.
    async fn admit(&mut self) -> Result<(), End> {
        let permissions = self.principal.permissions(&self.name);
        if permissions.allows(Action::Read) {
            self.admin = permissions.allows(Action::Admin);
            return Ok(());
        }
        if self.principal.credentialed {
            return Err(self.forbidden());
        }
        let deadline = Instant::now() + self.state.access.auth_timeout;
        loop {
            let incoming = match tokio::time::timeout_at(deadline, self.link.recv()).await {
                Ok(incoming) => incoming,
                Err(_) => {
                    tracing::info!(counter = %self.name, "watch refused: no credentials in time");
                    return Err(End::Close(
                        close::UNAUTHENTICATED,
                        format!(
                            "counter {} needs credentials: send {{\"type\":\"auth\",\"token\":…}} first (within {} s)",
                            self.name,
                            self.state.access.auth_timeout.as_secs()
                        ),
                    ));
                }
            };
            let Some(token) = self.answer(incoming).await? else { continue };
            let principal = match self.state.access.authenticate_token(&token) {
                Ok(principal) => principal,
                Err(error) => return Err(End::Close(refusal_close_code(&error), error.message)),
            };
            self.adopt(principal).await?;
            // Checked before the upgrade too, but sockets that waited for their credentials
            // were not counted then.
            let limit = self.state.config.max_watchers_per_counter;
            if self.state.registry.watchers(&self.name) >= limit {
                let after_ms = reconnect_delay(self.state.config.reconnect_spread);
                return Err(End::Close(
                    close::TRY_AGAIN_LATER,
                    format!(
                        "counter {} already has {limit} watchers, the most allowed; {}",
                        self.name,
                        reconnect_phrase(after_ms)
                    ),
                ));
            }
            return Ok(());
        }
    }

    /// Makes `principal` the socket's, if it may read the counter, and tells the client.
    async fn adopt(&mut self, principal: Principal) -> Result<(), End> {
        let permissions = principal.permissions(&self.name);
        self.principal = Arc::new(principal);
        if !permissions.allows(Action::Read) {
            return Err(self.forbidden());
        }
        self.admin = permissions.allows(Action::Admin);
        self.send_authenticated(permissions.actions()).await
    }

    fn forbidden(&self) -> End {
        tracing::info!(principal = %self.principal.id, counter = %self.name, "watch refused: no read grant");
        End::Close(
            close::FORBIDDEN,
            format!("{} may not read counter {}", self.principal.id, self.name),
        )
    }

    /// Replaces the principal with that of a fresh token, with no gap in updates; a token that
    /// no longer allows reading ends the socket, a bad one is answered and changes nothing.
    async fn reauthenticate(&mut self, token: &str) -> Result<(), End> {
        match self.state.access.authenticate_token(token) {
            Ok(principal) => {
                self.renewed = true;
                self.adopt(principal).await
            }
            Err(error) => self.send_error(&error).await,
        }
    }

    async fn send_authenticated(&mut self, can: Vec<Action>) -> Result<(), End> {
        let message = ServerMessage::Authenticated(Authenticated {
            principal: self.principal.id.to_string(),
            expires_at: expires_at(&self.principal),
            can,
        });
        self.link.send_text(Utf8Bytes::from(message.to_json())).await
    }

    async fn send_pong(&mut self) -> Result<(), End> {
        let pong = ServerMessage::Pong(Pong { timestamp: clock::format_ms(clock::now_ms()) });
        self.link.send_text(Utf8Bytes::from(pong.to_json())).await
    }

    /// Sends the first messages: a snapshot, or for a resume the missed updates.
    async fn start(
        &mut self,
        name: &CounterName,
        counter: CounterState,
        resume: Option<Resume>,
    ) -> Result<(), End> {
        let ours = counter.epoch(self.state.store.epoch());
        let resync = match resume {
            None => false,
            Some(resume) => {
                let theirs = resume.epoch.map(tally_proto::Epoch::from_bits);
                match Start::asked(Some(resume.since), theirs.as_ref(), &ours) {
                    Start::OtherEpoch => true,
                    Start::After(since) if since > counter.version => true,
                    Start::After(_) | Start::Snapshot => {
                        !self.replay(name, counter, resume).await?
                    }
                }
            }
        };
        if resync || resume.is_none() {
            let can = self.principal.permissions(name).actions();
            let epoch = self.state.store.epoch();
            let snapshot = ServerMessage::Snapshot(counter.snapshot(name, resync, can, epoch));
            self.link.feed(Utf8Bytes::from(snapshot.to_json())).await?;
        }
        self.last_version = counter.version;
        self.link.flush().await
    }

    /// Sends `resumed` and the updates after `since` up to the counter's version, reading
    /// history a page at a time; `false` (nothing sent) if history no longer reaches back, and
    /// the client gets a `resync` snapshot. A resume that finds no place in the bounds on
    /// replays (`replay::ReplayLimits`) within `--send-timeout` is closed 1013 with a
    /// reconnect delay. Nothing to replay needs no place.
    async fn replay(
        &mut self,
        name: &CounterName,
        counter: CounterState,
        resume: Resume,
    ) -> Result<bool, End> {
        let Resume { since, peer, .. } = resume;
        let wait = self.state.config.send_timeout;
        let permit = match self.state.replays.for_resume(since, counter.version, peer, wait).await {
            Ok(permit) => permit,
            // Only a resuming client comes here, so it reconnects anyway: told to come back
            // later, it resumes then without a gap, and a client that does not read (which a
            // small resync snapshot would leave open until the keep-alive) is gone within
            // `--send-timeout`.
            Err(refused) => {
                let after_ms = reconnect_delay(self.state.config.reconnect_spread);
                let bound = match refused {
                    replay::Refused::Total => "--max-replays",
                    replay::Refused::PerAddress => "--max-replays-per-address",
                };
                return Err(End::Close(
                    close::TRY_AGAIN_LATER,
                    format!(
                        "too many replays from history are running ({bound}); {}",
                        reconnect_phrase(after_ms)
                    ),
                ));
            }
        };
        let origin = Origin::of_state(name, &counter);
        let mut cursor = since;
        let mut first_page = true;
        loop {
            let up_to = counter.version.min(cursor + replay::PAGE);
            let page = replay::page(&self.state, origin.as_ref(), cursor, up_to).await;
            let updates = match page {
                Ok(Some(updates)) => updates,
                Ok(None) if first_page => return Ok(false),
                Ok(None) => {
                    // Trimmed while we replayed: what was sent is good; resume for the rest.
                    return Err(End::Close(
                        close::SLOW_CONSUMER,
                        format!("history moved during replay; reconnect with since={cursor}"),
                    ));
                }
                Err(error) => {
                    let _ = self.send_error(&error).await;
                    return Err(End::Close(
                        close::INTERNAL_ERROR,
                        "cannot read history; reconnect later".into(),
                    ));
                }
            };
            if first_page {
                let epoch = Some(counter.epoch(self.state.store.epoch()));
                let resumed =
                    ServerMessage::Resumed(Resumed { since, version: counter.version, epoch });
                self.link.feed(Utf8Bytes::from(resumed.to_json())).await?;
                first_page = false;
            }
            for published in updates {
                let json = published.json_for(self.admin);
                replay::paced_feed(&mut self.link, permit.as_ref(), json).await?;
            }
            cursor = up_to;
            if cursor >= counter.version {
                return Ok(true);
            }
        }
    }

    /// One frame from the client, counted against the message rate (every frame but Close,
    /// Ping and Pong frames too: they cost the server a reply or a wake-up each).
    fn receive(&mut self, incoming: Option<Result<Message, axum::Error>>) -> Result<Message, End> {
        let message = self.link.receive(incoming)?;
        if !matches!(message, Message::Close(_)) {
            let limit = self.state.config.max_messages_per_second;
            if self.rate_window.count(limit).is_err() {
                return Err(End::Close(
                    close::POLICY_VIOLATION,
                    format!("more than {limit} messages per second"),
                ));
            }
        }
        Ok(message)
    }

    async fn on_incoming(
        &mut self,
        incoming: Option<Result<Message, axum::Error>>,
    ) -> Result<(), End> {
        match self.answer(incoming).await? {
            Some(token) => self.reauthenticate(&token).await,
            None => Ok(()),
        }
    }

    /// Answers one frame from the client (pings, mistakes, its close) and hands back the token
    /// of an `auth` message, which what the socket is doing decides what to do with.
    async fn answer(
        &mut self,
        incoming: Option<Result<Message, axum::Error>>,
    ) -> Result<Option<String>, End> {
        match self.receive(incoming)? {
            Message::Text(text) => match ClientMessage::parse(&text) {
                Ok(ClientMessage::Ping) => self.send_pong().await.map(|()| None),
                Ok(ClientMessage::Auth { token }) => Ok(Some(token)),
                Err(error) => self.send_error(&error).await.map(|()| None),
            },
            Message::Binary(_) => self.send_error(&binary_refused()).await.map(|()| None),
            // tungstenite answers pings itself; pongs only tell us the peer is alive.
            Message::Ping(_) | Message::Pong(_) => Ok(None),
            Message::Close(_) => Err(self.link.closed_by_peer().await),
        }
    }

    /// Sends the updates published since the last one sent (up to `MAX_BURST`), then flushes
    /// once. The whole burst shares one `--send-timeout` deadline rather than a timer per
    /// message.
    async fn on_update(&mut self, updates: &Subscription) -> Result<(), End> {
        let send_timeout = self.state.config.send_timeout;
        let mut burst = std::pin::pin!(self.send_burst(updates));
        // Nearly every burst is written at once (the kernel's socket buffer takes it): the
        // deadline's timer is made only for one that has to wait, not once per update.
        if let Poll::Ready(sent) = poll_once(burst.as_mut()).await {
            return sent;
        }
        // Boxed: a `Timeout` here would widen every idle socket's future by its size.
        let mut deadline = Box::pin(tokio::time::sleep(send_timeout));
        std::future::poll_fn(|cx| match burst.as_mut().poll(cx) {
            Poll::Ready(sent) => Poll::Ready(sent),
            Poll::Pending => deadline.as_mut().poll(cx).map(|()| Err(End::Stalled)),
        })
        .await
    }

    async fn send_burst(&mut self, updates: &Subscription) -> Result<(), End> {
        self.check_access()?;
        let socket = &mut self.link.transport;
        // The usual wake-up brings exactly the next update: sent without a burst to collect.
        if updates.topic().version() == self.last_version + 1
            && let Some(published) = updates.topic().latest()
            && published.version() == self.last_version + 1
        {
            self.last_version = published.version();
            let text = Message::Text(published.json_for(self.admin));
            drop(published);
            socket.feed(text).await.map_err(|_| End::Drop)?;
            return socket.flush().await.map_err(|_| End::Drop);
        }
        let mut burst = Vec::new();
        loop {
            burst.clear();
            match updates.topic().read_after(self.last_version, MAX_BURST, &mut burst) {
                Read::Ok => {}
                Read::Lagged { oldest } => {
                    return Err(End::Close(
                        close::SLOW_CONSUMER,
                        format!(
                            "fell {} updates behind; reconnect with since={}",
                            oldest - self.last_version - 1,
                            self.last_version
                        ),
                    ));
                }
                Read::Deleted => {
                    self.state.metrics.error(ErrorCode::CounterDeleted);
                    return Err(End::Close(
                        close::COUNTER_DELETED,
                        format!(
                            "counter {} was deleted; reconnect without since to watch it start again at version 0",
                            self.name
                        ),
                    ));
                }
            }
            for published in &burst {
                if published.version() != self.last_version + 1 {
                    // Storage moved past versions this socket never saw (a commit reported as
                    // failed that reached the disk anyway): never skip silently.
                    return Err(End::Close(
                        close::SLOW_CONSUMER,
                        format!("missed updates; reconnect with since={}", self.last_version),
                    ));
                }
                self.last_version = published.version();
                let text = Message::Text(published.json_for(self.admin));
                socket.feed(text).await.map_err(|_| End::Drop)?;
            }
            // A full burst may have left more behind it: flush, then go on.
            if burst.len() < MAX_BURST {
                break;
            }
            socket.flush().await.map_err(|_| End::Drop)?;
        }
        socket.flush().await.map_err(|_| End::Drop)
    }

    async fn on_ping_timer(&mut self) -> Result<(), End> {
        self.check_access()?;
        self.link.ping_tick().await
    }

    async fn send_error(&mut self, error: &ProtocolError) -> Result<(), End> {
        self.state.metrics.error(error.code);
        let message = ServerMessage::Error(WsError::from(error));
        self.link.send_text(Utf8Bytes::from(message.to_json())).await
    }
}

/// Polls `future` once: its output if it is ready now.
async fn poll_once<F: Future + Unpin>(mut future: F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut future).poll(cx))).await
}

/// When a principal's token expires, as sent in `authenticated`; `None` for keys and anonymous.
pub(crate) fn expires_at(principal: &Principal) -> Option<String> {
    // A larger `exp` than the clock can format reads as the latest time it can, not 1970.
    principal.expires_at.map(|seconds| {
        let ms = i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        clock::format_ms(ms.min(253_402_300_799_000))
    })
}
