//! The WebSocket side: `GET /ws/counter/{name}[?since=V]`, one task per socket.
//!
//! A socket first gets a snapshot (or, resuming with `since`, a `resumed` marker and the missed
//! updates from history), then every update of the counter as its actor broadcasts it. The
//! broadcast channel is the socket's bounded queue: a watcher that falls more than
//! `--watch-buffer` updates behind, or whose send stalls for `--send-timeout`, is closed with
//! 4000 and resumes with `since`, so a slow watcher never slows anyone else.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tally_proto::limits::MAX_CLIENT_MESSAGE_BYTES;
use tally_proto::{
    Action, Authenticated, ClientMessage, CounterName, ErrorCode, Pong, ProtocolError, Resumed,
    ServerMessage, WatchQuery, WsError, close,
};
use tokio::time::{Instant, MissedTickBehavior, Sleep, timeout};

use crate::access::Principal;
use crate::clock;
use crate::counter::{ApplyError, CounterState};
use crate::framing::Published;
use crate::state::AppState;
use crate::store::HistoryRecord;
use crate::topic::{Read, Subscription, User, next_socket_id};

/// The read buffer tungstenite allocates per socket up front (128 KiB by default), and the most
/// one read takes. Clients send only small messages (a ping is 15 bytes, 21 framed; a control
/// frame at most 131); a larger one, up to the 4 KiB limit, grows the buffer and takes a few
/// more reads. 512 bytes instead of 4 KiB took the server's memory per idle watcher from about
/// 9.2 KB to about 5.4 KB at 10 000 watchers, and 128 instead of 512 saved about 0.4 KB more
/// (docs/BENCHMARKS.md).
const READ_BUFFER_BYTES: usize = 128;
/// Updates are written once this much is buffered, or at the end of each burst (we flush).
const WRITE_BUFFER_BYTES: usize = 8 * 1024;
/// Past this, a socket's write buffer refuses more (only reached when writes keep failing).
const MAX_WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// How many queued updates one wake-up writes before flushing.
const MAX_BURST: usize = 64;
/// How many history entries a resume reads and sends at a time.
const REPLAY_PAGE: u64 = 500;
/// How long a close frame may take to leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The most bytes of a close frame's reason (RFC 6455: 125 for the payload, 2 of them the code).
const MAX_CLOSE_REASON_BYTES: usize = 123;

/// Validates the request, then upgrades it to a socket watched by a task on the tracker.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    extensions: axum::http::Extensions,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    // WebSockets have no CORS: without this check any web page could watch any counter.
    if let Err(error) = state.access.check_origin(&headers) {
        return state.error_response(&error);
    }
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
    let since = match WatchQuery::parse(query.as_deref()) {
        Ok(query) => query.since,
        Err(error) => return state.error_response(&error),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    // Credentials are decided now but answered after the upgrade, as close codes: a browser
    // cannot read the status of a refused upgrade, and would retry it forever.
    let peer = crate::accept::client_ip(&extensions);
    let start = Box::new(match headers.get(header::AUTHORIZATION) {
        // A socket never writes, so its anonymous principal needs no address of its own.
        None => Ok(state.access.anonymous_watcher()),
        Some(_) => state.access.authenticate(&headers, peer).map(Arc::new),
    });
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(MAX_CLIENT_MESSAGE_BYTES)
        .max_frame_size(MAX_CLIENT_MESSAGE_BYTES)
        .on_upgrade(move |socket| {
            let sockets = state.sockets.clone();
            sockets.track_future(serve(state, socket, name, since, start))
        })
        .into_response()
}

/// Why a session ended.
enum End {
    /// Close with this code and reason.
    Close(u16, String),
    /// The peer is gone: just drop the connection.
    Drop,
    /// A send stalled for `--send-timeout`: the peer stopped reading, so a close frame could not
    /// get through either; counted as a 4000 close and dropped.
    Stalled,
}

/// One socket, from upgrade to close.
async fn serve(
    state: AppState,
    socket: WebSocket,
    name: CounterName,
    since: Option<u64>,
    start: Box<Result<Arc<Principal>, ProtocolError>>,
) {
    state.metrics.websockets_open.inc();
    // Boxed until here: an argument stays in the socket's future for its whole life.
    let (principal, refused) = match *start {
        Ok(principal) => (principal, None),
        Err(error) => (state.access.anonymous_watcher(), Some(error)),
    };
    let mut session = Session {
        socket,
        name,
        last_version: 0,
        heard: false,
        ping_outstanding: false,
        rate_window: (Instant::now(), 0),
        admin: false,
        access_generation: state.access.generation(),
        renewed: false,
        principal,
        state: state.clone(),
    };
    let end = if state.shutdown.is_cancelled() {
        End::Close(close::SERVICE_RESTART, "server is shutting down".into())
    } else if let Some(error) = refused {
        End::Close(refusal_close_code(&error), error.message)
    } else if let Err(end) = Box::pin(session.admit()).await {
        end
    } else {
        let name = session.name.clone();
        let user = User::of(&session.principal, next_socket_id());
        match state.registry.watch(&name, user).await {
            Ok((counter, updates)) => {
                state.metrics.watchers.inc();
                let end = session.watch(&name, counter, updates, since).await;
                state.metrics.watchers.dec();
                // The receiver is gone now; the counter's channel may be too.
                state.registry.unwatch(&name);
                end
            }
            Err(ApplyError::ShuttingDown) => {
                End::Close(close::SERVICE_RESTART, "server is shutting down".into())
            }
            Err(error) => {
                let error = error.to_protocol();
                let _ = session.send_error(&error).await;
                End::Close(close::INTERNAL_ERROR, "cannot load the counter".into())
            }
        }
    };
    match end {
        End::Close(code, reason) => session.close(code, reason).await,
        End::Stalled => state.metrics.websocket_closed(close::SLOW_CONSUMER),
        End::Drop => {}
    }
    state.metrics.websockets_open.dec();
}

struct Session {
    socket: WebSocket,
    /// The counter watched.
    name: CounterName,
    /// The version of the last update sent; nothing at or below it is sent again.
    last_version: u64,
    /// Whether the peer sent anything (a message, a ping or a pong) since the last ping tick.
    heard: bool,
    /// Whether a ping was sent and nothing has been heard since.
    ping_outstanding: bool,
    /// The start of the current one-second window and the messages received in it.
    rate_window: (Instant, u32),
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

impl Session {
    async fn watch(
        &mut self,
        name: &CounterName,
        counter: CounterState,
        mut updates: Subscription,
        since: Option<u64>,
    ) -> End {
        // The first messages, the client's rare messages and the ping tick are boxed while they
        // run: their futures would otherwise widen every idle socket's future for good.
        if let Err(end) = Box::pin(self.start(name, counter, since)).await {
            return end;
        }
        let ping_interval = self.state.config.ping_interval;
        let mut ping_timer =
            tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
        ping_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let shutdown = self.state.shutdown.clone();
        // Made once: each `cancelled()` future registers with (and leaves) a notifier that every
        // socket shares, which per update per watcher would contend on one lock.
        let mut shutting_down = std::pin::pin!(shutdown.cancelled());
        // Boxed, and only for sockets whose token expires: most sockets never need one.
        let mut expiry = self.expiry_timer();
        loop {
            let step = tokio::select! {
                biased;
                () = &mut shutting_down => Err(End::Close(close::SERVICE_RESTART, "server is restarting; reconnect with since".into())),
                incoming = self.socket.recv() => Box::pin(self.on_incoming(incoming)).await,
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
                expiry = self.expiry_timer();
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

    /// A timer for the principal's token expiry (plus the leeway), if it expires.
    fn expiry_timer(&self) -> Option<Pin<Box<Sleep>>> {
        let expires_in = self.principal.expires_in(self.state.access.leeway())?;
        Some(Box::pin(tokio::time::sleep(expires_in)))
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
            let incoming = match tokio::time::timeout_at(deadline, self.socket.recv()).await {
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
                return Err(End::Close(
                    close::TRY_AGAIN_LATER,
                    format!(
                        "counter {} already has {limit} watchers, the most allowed; try again later",
                        self.name
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
        // A larger `exp` than the clock can format reads as the latest time it can, not 1970.
        let expires_at = self.principal.expires_at.map(|seconds| {
            let ms = i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
            clock::format_ms(ms.min(253_402_300_799_000))
        });
        let message = ServerMessage::Authenticated(Authenticated {
            principal: self.principal.id.to_string(),
            expires_at,
            can,
        });
        self.send(Utf8Bytes::from(message.to_json())).await
    }

    async fn send_pong(&mut self) -> Result<(), End> {
        let pong = ServerMessage::Pong(Pong { timestamp: clock::format_ms(clock::now_ms()) });
        self.send(Utf8Bytes::from(pong.to_json())).await
    }

    /// Sends the first messages: a snapshot, or for a resume the missed updates.
    async fn start(
        &mut self,
        name: &CounterName,
        counter: CounterState,
        since: Option<u64>,
    ) -> Result<(), End> {
        let resync = match since {
            None => false,
            Some(since) if since > counter.version => true,
            Some(since) => !self.replay(name, counter, since).await?,
        };
        if resync || since.is_none() {
            let can = self.principal.permissions(name).actions();
            let snapshot = ServerMessage::Snapshot(counter.snapshot(name, resync, can));
            self.feed(Utf8Bytes::from(snapshot.to_json())).await?;
        }
        self.last_version = counter.version;
        self.flush().await
    }

    /// Sends `resumed` and the updates after `since` up to the counter's version, reading
    /// history a page at a time; `false` (nothing sent) if history no longer reaches back.
    async fn replay(
        &mut self,
        name: &CounterName,
        counter: CounterState,
        since: u64,
    ) -> Result<bool, End> {
        let mut cursor = since;
        let mut first_page = true;
        // A counter with history has an id and a creation time; formatted once for all pages.
        let origin = counter
            .id
            .zip(counter.created_at_ms)
            .map(|(id, created_at_ms)| (id, Arc::<str>::from(clock::format_ms(created_at_ms))));
        while cursor < counter.version || first_page {
            let up_to = counter.version.min(cursor + REPLAY_PAGE);
            let records = if cursor < up_to {
                self.read_history(name, cursor, up_to).await?
            } else {
                Vec::new()
            };
            let complete = records.len() as u64 == up_to - cursor
                && records.first().is_none_or(|record| record.version == cursor + 1);
            if !complete {
                if first_page {
                    return Ok(false);
                }
                // Trimmed while we replayed: what was sent is good; resume for the rest.
                return Err(End::Close(
                    close::SLOW_CONSUMER,
                    format!("history moved during replay; reconnect with since={cursor}"),
                ));
            }
            if first_page {
                let resumed = ServerMessage::Resumed(Resumed { since, version: counter.version });
                self.feed(Utf8Bytes::from(resumed.to_json())).await?;
                first_page = false;
            }
            if let Some((id, created_at)) = &origin {
                let shared_name = Arc::new(name.clone());
                for record in records {
                    let published = Published::new(
                        Arc::clone(&shared_name),
                        *id,
                        Arc::clone(created_at),
                        record,
                    );
                    self.feed(published.json_for(self.admin)).await?;
                }
            }
            cursor = up_to;
        }
        Ok(true)
    }

    async fn read_history(
        &mut self,
        name: &CounterName,
        after: u64,
        up_to: u64,
    ) -> Result<Vec<HistoryRecord>, End> {
        match self.state.store.history_range(name, after, up_to).await {
            Ok(records) => Ok(records),
            Err(error) => {
                let error = ApplyError::from(error).to_protocol();
                let _ = self.send_error(&error).await;
                Err(End::Close(
                    close::INTERNAL_ERROR,
                    "cannot read history; reconnect later".into(),
                ))
            }
        }
    }

    /// One frame from the client, counted against the message rate (every frame but Close,
    /// Ping and Pong frames too: they cost the server a reply or a wake-up each).
    fn receive(&mut self, incoming: Option<Result<Message, axum::Error>>) -> Result<Message, End> {
        let message = match incoming {
            None => return Err(End::Drop),
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                return Err(if is_message_too_big(&error) {
                    End::Close(
                        close::MESSAGE_TOO_BIG,
                        format!("message over {MAX_CLIENT_MESSAGE_BYTES} bytes"),
                    )
                } else {
                    End::Drop
                });
            }
        };
        self.heard = true;
        self.ping_outstanding = false;
        if !matches!(message, Message::Close(_)) {
            self.count_message()?;
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
            Message::Close(_) => {
                // tungstenite queued the close reply; flushing sends it, completing the handshake.
                let _ = self.flush().await;
                Err(End::Drop)
            }
        }
    }

    /// Counts one client message against `--max-messages-per-second`.
    fn count_message(&mut self) -> Result<(), End> {
        let (started, count) = &mut self.rate_window;
        if started.elapsed() >= Duration::from_secs(1) {
            *started = Instant::now();
            *count = 0;
        }
        *count += 1;
        let limit = self.state.config.max_messages_per_second;
        if *count > limit {
            return Err(End::Close(
                close::POLICY_VIOLATION,
                format!("more than {limit} messages per second"),
            ));
        }
        Ok(())
    }

    /// Sends the updates published since the last one sent (up to `MAX_BURST`), then flushes
    /// once. The whole burst shares one `--send-timeout` deadline rather than a timer per
    /// message.
    async fn on_update(&mut self, updates: &Subscription) -> Result<(), End> {
        let send_timeout = self.state.config.send_timeout;
        timeout(send_timeout, self.send_burst(updates)).await.unwrap_or(Err(End::Stalled))
    }

    async fn send_burst(&mut self, updates: &Subscription) -> Result<(), End> {
        use futures_util::SinkExt;
        self.check_access()?;
        let mut burst = Vec::new();
        loop {
            burst.clear();
            if let Read::Lagged { oldest } =
                updates.topic().read_after(self.last_version, MAX_BURST, &mut burst)
            {
                return Err(End::Close(
                    close::SLOW_CONSUMER,
                    format!(
                        "fell {} updates behind; reconnect with since={}",
                        oldest - self.last_version - 1,
                        self.last_version
                    ),
                ));
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
                self.socket.feed(text).await.map_err(|_| End::Drop)?;
            }
            // A full burst may have left more behind it: flush, then go on.
            if burst.len() < MAX_BURST {
                break;
            }
            self.socket.flush().await.map_err(|_| End::Drop)?;
        }
        self.socket.flush().await.map_err(|_| End::Drop)
    }

    /// Once per ping interval: a peer heard from since the last tick is fine; a silent one is
    /// pinged; one still silent a whole interval after its ping is closed.
    async fn on_ping_timer(&mut self) -> Result<(), End> {
        self.check_access()?;
        if std::mem::take(&mut self.heard) {
            self.ping_outstanding = false;
            return Ok(());
        }
        if self.ping_outstanding {
            return Err(End::Close(close::PING_TIMEOUT, "no answer to pings".into()));
        }
        self.ping_outstanding = true;
        self.send_message(Message::Ping(Default::default())).await
    }

    async fn send_error(&mut self, error: &ProtocolError) -> Result<(), End> {
        self.state.metrics.error(error.code);
        let message = ServerMessage::Error(WsError::from(error));
        self.send(Utf8Bytes::from(message.to_json())).await
    }

    async fn send(&mut self, text: Utf8Bytes) -> Result<(), End> {
        self.send_message(Message::Text(text)).await
    }

    async fn send_message(&mut self, message: Message) -> Result<(), End> {
        let send_timeout = self.state.config.send_timeout;
        stalled_or_failed(timeout(send_timeout, self.socket.send(message)).await)
    }

    async fn feed(&mut self, text: Utf8Bytes) -> Result<(), End> {
        use futures_util::SinkExt;
        let send_timeout = self.state.config.send_timeout;
        stalled_or_failed(timeout(send_timeout, self.socket.feed(Message::Text(text))).await)
    }

    async fn flush(&mut self) -> Result<(), End> {
        use futures_util::SinkExt;
        let send_timeout = self.state.config.send_timeout;
        stalled_or_failed(timeout(send_timeout, self.socket.flush()).await)
    }

    /// Sends the close frame, then reads (and drops) what the client still sends until its own
    /// close frame arrives, within `CLOSE_TIMEOUT`: a TCP socket closed with unread data is
    /// reset by the kernel, and the client would see a lost connection (1006) instead of
    /// `code`, then reconnect where `code` says not to (1008 for a client that keeps flooding).
    async fn close(&mut self, code: u16, reason: String) {
        self.state.metrics.websocket_closed(code);
        let frame = CloseFrame { code, reason: Utf8Bytes::from(close_reason(reason)) };
        let _ = timeout(CLOSE_TIMEOUT, async {
            if self.socket.send(Message::Close(Some(frame))).await.is_ok() {
                while let Some(Ok(message)) = self.socket.recv().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            }
        })
        .await;
    }
}

/// Waits for the expiry timer, or forever when there is none.
async fn until(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The close code of a refused credential: expired (get a fresh one) or not valid.
fn refusal_close_code(error: &ProtocolError) -> u16 {
    if error.code == ErrorCode::TokenExpired {
        close::TOKEN_EXPIRED
    } else {
        close::UNAUTHENTICATED
    }
}

fn binary_refused() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::BadJson,
        "binary messages are not accepted; send JSON text such as {\"type\":\"ping\"}",
    )
}

/// `reason` cut to what a close frame holds, at a character boundary.
fn close_reason(mut reason: String) -> String {
    if reason.len() > MAX_CLOSE_REASON_BYTES {
        let mut end = MAX_CLOSE_REASON_BYTES - '…'.len_utf8();
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

/// A failed send means the peer is gone; a stalled one that it stopped reading.
fn stalled_or_failed(
    result: Result<Result<(), axum::Error>, tokio::time::error::Elapsed>,
) -> Result<(), End> {
    match result {
        Ok(sent) => sent.map_err(|_| End::Drop),
        Err(_) => Err(End::Stalled),
    }
}

fn is_message_too_big(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(tungstenite::Error::Capacity(_)) = current.downcast_ref::<tungstenite::Error>()
        {
            return true;
        }
        source = current.source();
    }
    false
}
