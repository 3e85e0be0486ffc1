//! A live watch of one counter that reconnects by itself and resumes with `since`, and keeps
//! its credentials fresh: a token about to expire is replaced over the open socket (an `auth`
//! message), so the watch goes on with no gap.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, Stream, StreamExt};
use tally_proto::{Authenticated, ClientMessage, ServerMessage, Snapshot, Update, close};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::backoff::Backoff;
use crate::client::rejected;
use crate::error::ClientError;
use crate::token::{Credentials, Token};

/// How long to wait before asking a failing token source again while the socket's token is
/// still valid.
const TOKEN_RETRY: Duration = Duration::from_secs(1);

/// How a watch behaves.
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// Resume after this version instead of starting with a snapshot.
    pub since: Option<u64>,
    /// Delays between reconnect attempts.
    pub backoff: Backoff,
    /// A connection that stayed up this long resets the backoff to its minimum.
    pub min_uptime: Duration,
    /// A connection on which nothing at all arrives for this long is taken as dead (a peer or
    /// network that vanished without closing) and replaced. The server pings a quiet client once
    /// per ping interval (30 s by default), so a healthy connection is never this silent.
    pub silence_timeout: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            since: None,
            backoff: Backoff::default(),
            min_uptime: Duration::from_secs(5),
            silence_timeout: Duration::from_secs(90),
        }
    }
}

/// What a watch reports, in order.
#[derive(Debug)]
#[non_exhaustive]
pub enum WatchEvent {
    /// A socket is open (first time or after a reconnect).
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
    /// The server accepted a fresh token sent over the open socket; `can` is what the
    /// principal may now do to the counter.
    Authenticated(Authenticated),
    /// The connection ended; the watch reconnects after `retry_in`.
    Disconnected {
        /// Why, in words.
        reason: String,
        /// How long until the next attempt.
        retry_in: Duration,
    },
    /// The watch cannot go on; the stream ends after this. The server refused it: for example
    /// [`ClientError::Unauthenticated`] (close 4501, or a refused upgrade),
    /// [`ClientError::Forbidden`] (close 4503), or an invalid counter name.
    Failed(ClientError),
}

/// A live watch of one counter: a [`Stream`] of [`WatchEvent`]s. Dropping it closes the socket.
pub struct Watch {
    events: mpsc::Receiver<WatchEvent>,
    task: JoinHandle<()>,
}

impl Watch {
    pub(crate) fn start(
        base: &str,
        credentials: Option<Arc<Credentials>>,
        tls: Arc<rustls::ClientConfig>,
        name: &str,
        options: WatchOptions,
    ) -> Self {
        let (sender, events) = mpsc::channel(256);
        // Valid names need no escaping in a URL; an invalid one is refused here, as the server would.
        if let Err(error) = tally_proto::CounterName::parse(name) {
            let task = tokio::spawn(async move {
                let _ = sender.send(WatchEvent::Failed(ClientError::Invalid(error))).await;
            });
            return Self { events, task };
        }
        let ws_base = match base.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => format!("ws://{}", base.trim_start_matches("http://")),
        };
        let follower = Follower {
            url: format!("{ws_base}/ws/counter/{name}"),
            options,
            last_version: options.since,
            sender,
            credentials,
            tls,
            expired: None,
        };
        Self { events, task: tokio::spawn(follower.run()) }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for Watch {
    type Item = WatchEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        self.events.poll_recv(cx)
    }
}

/// How one connection ended.
enum Ended {
    /// Reconnect, for this reason.
    Retry(String),
    /// The server closed with 4502: reconnect with a fresh token; at once if the connection
    /// had worked (`worked`), else after the usual backoff.
    Expired {
        /// Why, in words.
        reason: String,
        /// Whether anything arrived on the connection before it closed.
        worked: bool,
    },
    /// Stop for good.
    Fail(ClientError),
    /// Nobody listens to the events any more.
    Abandoned,
}

/// The task behind a [`Watch`].
struct Follower {
    url: String,
    options: WatchOptions,
    /// The version of the last snapshot or update passed on; resumes start after it.
    last_version: Option<u64>,
    sender: mpsc::Sender<WatchEvent>,
    /// Where tokens come from (shared with the client); `None` sends none.
    credentials: Option<Arc<Credentials>>,
    tls: Arc<rustls::ClientConfig>,
    /// The token the server closed a socket for with 4502: the next connection renews it.
    expired: Option<Token>,
}

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

impl Follower {
    async fn run(mut self) {
        let mut attempt = 0_u32;
        loop {
            let connected_at = Instant::now();
            let reason = match self.connect_once().await {
                Ended::Retry(reason) => reason,
                Ended::Expired { reason, worked: true } => {
                    let event = WatchEvent::Disconnected { reason, retry_in: Duration::ZERO };
                    if self.sender.send(event).await.is_err() {
                        return;
                    }
                    attempt = 0;
                    continue;
                }
                Ended::Expired { reason, worked: false } => reason,
                Ended::Fail(error) => {
                    let _ = self.sender.send(WatchEvent::Failed(error)).await;
                    return;
                }
                Ended::Abandoned => return,
            };
            if connected_at.elapsed() >= self.options.min_uptime {
                attempt = 0;
            }
            let retry_in = self.options.backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            if self.sender.send(WatchEvent::Disconnected { reason, retry_in }).await.is_err() {
                return;
            }
            tokio::time::sleep(retry_in).await;
        }
    }

    async fn connect_once(&mut self) -> Ended {
        let token = match (&self.credentials, self.expired.take()) {
            (None, _) => None,
            (Some(credentials), stale) => {
                let fetched = match stale {
                    Some(stale) => credentials.renew(&stale).await,
                    None => credentials.get().await,
                };
                match fetched {
                    Ok(token) => Some(token),
                    Err(error) => return Ended::Retry(format!("cannot get a token: {error}")),
                }
            }
        };
        let url = match self.last_version {
            Some(version) => format!("{}?since={version}", self.url),
            None => self.url.clone(),
        };
        let mut request = match url.as_str().into_client_request() {
            Ok(request) => request,
            Err(error) => {
                return Ended::Fail(ClientError::InvalidUrl { url, reason: error.to_string() });
            }
        };
        if let Some(token) = &token {
            match HeaderValue::from_str(&token.header_value()) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    request.headers_mut().insert(AUTHORIZATION, value);
                }
                Err(_) => {
                    return Ended::Fail(ClientError::TokenSource(
                        "the token is not a valid HTTP header value".into(),
                    ));
                }
            }
        }
        let connector = Connector::Rustls(Arc::clone(&self.tls));
        let connected =
            tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector))
                .await;
        let socket = match connected {
            Ok((socket, _)) => socket,
            Err(tungstenite::Error::Http(response)) if response.status().is_client_error() => {
                let body = response.body().as_deref().unwrap_or_default();
                return Ended::Fail(rejected(&url, response.status().as_u16(), body, None));
            }
            Err(error) => return Ended::Retry(format!("cannot connect to {url}: {error}")),
        };
        if !self.emit(WatchEvent::Connected).await {
            return Ended::Abandoned;
        }
        self.follow(socket, url, token).await
    }

    /// Reads one open socket until it ends, replacing its token in band before it expires.
    async fn follow(&mut self, mut socket: Socket, url: String, token: Option<Token>) -> Ended {
        let silence_timeout = self.options.silence_timeout;
        let mut last_heard = tokio::time::Instant::now();
        let mut worked = false;
        // The token the server knows this socket by, and when to replace it.
        let mut socket_token = token;
        let mut refresh_at = socket_token.as_ref().and_then(Token::refresh_at).map(deadline);
        loop {
            let refresh = async {
                match refresh_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                next = socket.next() => next,
                () = tokio::time::sleep_until(last_heard + silence_timeout) => {
                    return Ended::Retry(format!(
                        "nothing heard for {silence_timeout:?}; reconnecting"
                    ));
                }
                () = refresh => {
                    refresh_at = None;
                    let Some(credentials) = &self.credentials else { continue };
                    match credentials.get().await {
                        Ok(fresh) if socket_token.as_ref().is_none_or(|old| !fresh.same_as(old)) => {
                            let auth = ClientMessage::Auth { token: fresh.secret().to_owned() };
                            if let Err(error) = socket.send(Message::text(auth.to_json())).await {
                                return Ended::Retry(format!("connection lost: {error}"));
                            }
                            refresh_at = fresh.refresh_at().map(deadline);
                            socket_token = Some(fresh);
                        }
                        // Nothing fresher yet: the server closes with 4502 at expiry, and the
                        // reconnect asks the source again.
                        Ok(_) => {}
                        Err(_) => refresh_at = Some(tokio::time::Instant::now() + TOKEN_RETRY),
                    }
                    continue;
                }
            };
            last_heard = tokio::time::Instant::now();
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(error)) => return Ended::Retry(format!("connection lost: {error}")),
                None => return Ended::Retry("connection lost".into()),
            };
            let text = match message {
                Message::Text(text) => text,
                Message::Close(frame) => {
                    let (code, reason) = frame.map_or((1005, String::new()), |frame| {
                        (u16::from(frame.code), frame.reason.to_string())
                    });
                    return self.closed(code, reason, url, socket_token, worked);
                }
                // Pings are answered by tungstenite as we read; nothing else is expected.
                _ => continue,
            };
            worked = true;
            // Messages of types newer than this client are skipped.
            let Ok(message) = ServerMessage::from_json(&text) else { continue };
            let event = match message {
                ServerMessage::Snapshot(snapshot) => {
                    self.last_version = Some(snapshot.version);
                    WatchEvent::Snapshot(snapshot)
                }
                ServerMessage::Resumed(resumed) => {
                    WatchEvent::Resumed { since: resumed.since, version: resumed.version }
                }
                ServerMessage::Update(update) => match self.last_version {
                    Some(last) if update.version <= last => continue,
                    Some(last) if update.version != last + 1 => {
                        return Ended::Retry(format!(
                            "missed versions {}..{}; resuming",
                            last + 1,
                            update.version
                        ));
                    }
                    _ => {
                        self.last_version = Some(update.version);
                        WatchEvent::Update(update)
                    }
                },
                ServerMessage::Authenticated(authenticated) => {
                    WatchEvent::Authenticated(authenticated)
                }
                // A refused fresh token leaves the socket on its current one until it expires
                // (then 4502 and a reconnect with another fresh token).
                ServerMessage::Pong(_) | ServerMessage::Error(_) => continue,
            };
            if !self.emit(event).await {
                return Ended::Abandoned;
            }
        }
    }

    /// What a close frame with `code` means for the watch (PROTOCOL §7 and §9.5).
    fn closed(
        &mut self,
        code: u16,
        reason: String,
        url: String,
        socket_token: Option<Token>,
        worked: bool,
    ) -> Ended {
        let said = format!("server closed the connection with {code} {reason}");
        let message = if reason.is_empty() { said.clone() } else { reason };
        match code {
            close::UNAUTHENTICATED => Ended::Fail(ClientError::Unauthenticated {
                code: "unauthenticated".into(),
                message,
            }),
            close::FORBIDDEN => Ended::Fail(ClientError::Forbidden { message }),
            close::TOKEN_EXPIRED if socket_token.is_some() => {
                self.expired = socket_token;
                Ended::Expired { reason: said, worked }
            }
            close::TOKEN_EXPIRED => {
                Ended::Fail(ClientError::Unauthenticated { code: "token_expired".into(), message })
            }
            code if close::should_reconnect(code) => Ended::Retry(said),
            _ => Ended::Fail(ClientError::Protocol { url, reason: said }),
        }
    }

    async fn emit(&self, event: WatchEvent) -> bool {
        self.sender.send(event).await.is_ok()
    }
}

/// The monotonic instant of wall-clock time `at` (now if it has passed).
fn deadline(at: SystemTime) -> tokio::time::Instant {
    tokio::time::Instant::now() + at.duration_since(SystemTime::now()).unwrap_or_default()
}
