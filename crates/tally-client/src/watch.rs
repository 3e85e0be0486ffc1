//! A live watch of one counter that reconnects by itself and resumes with `since`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use tally_proto::{ServerMessage, Snapshot, Update, close};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::backoff::Backoff;
use crate::client::rejected;
use crate::error::ClientError;

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
    /// The connection ended; the watch reconnects after `retry_in`.
    Disconnected {
        /// Why, in words.
        reason: String,
        /// How long until the next attempt.
        retry_in: Duration,
    },
    /// The watch cannot go on (the server refused it); the stream ends after this.
    Failed(ClientError),
}

/// A live watch of one counter: a [`Stream`] of [`WatchEvent`]s. Dropping it closes the socket.
pub struct Watch {
    events: mpsc::Receiver<WatchEvent>,
    task: JoinHandle<()>,
}

impl Watch {
    pub(crate) fn start(base: &str, name: &str, options: WatchOptions) -> Self {
        let (sender, events) = mpsc::channel(256);
        // Valid names need no escaping in a URL; an invalid one is refused here, as the server would.
        if let Err(error) = tally_proto::CounterName::parse(name) {
            let task = tokio::spawn(async move {
                let _ = sender.send(WatchEvent::Failed(ClientError::Invalid(error))).await;
            });
            return Self { events, task };
        }
        let ws_base = format!("ws://{}", base.trim_start_matches("http://"));
        let follower = Follower {
            url: format!("{ws_base}/ws/counter/{name}"),
            options,
            last_version: options.since,
            sender,
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
}

impl Follower {
    async fn run(mut self) {
        let mut attempt = 0_u32;
        loop {
            let connected_at = Instant::now();
            let reason = match self.connect_once().await {
                Ended::Retry(reason) => reason,
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
        let url = match self.last_version {
            Some(version) => format!("{}?since={version}", self.url),
            None => self.url.clone(),
        };
        let mut socket = match tokio_tungstenite::connect_async(&url).await {
            Ok((socket, _)) => socket,
            Err(tungstenite::Error::Http(response)) if response.status().is_client_error() => {
                let body = response.body().as_deref().unwrap_or_default();
                return Ended::Fail(rejected(&url, response.status().as_u16(), body));
            }
            Err(error) => return Ended::Retry(format!("cannot connect to {url}: {error}")),
        };
        if !self.emit(WatchEvent::Connected).await {
            return Ended::Abandoned;
        }
        loop {
            let silence_timeout = self.options.silence_timeout;
            let Ok(next) = tokio::time::timeout(silence_timeout, socket.next()).await else {
                return Ended::Retry(format!(
                    "nothing heard for {silence_timeout:?}; reconnecting"
                ));
            };
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
                    let said = format!("server closed the connection with {code} {reason}");
                    return if close::should_reconnect(code) {
                        Ended::Retry(said)
                    } else {
                        Ended::Fail(ClientError::Protocol { url, reason: said })
                    };
                }
                // Pings are answered by tungstenite as we read; nothing else is expected.
                _ => continue,
            };
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
                ServerMessage::Pong(_)
                | ServerMessage::Error(_)
                | ServerMessage::Authenticated(_) => {
                    continue;
                }
            };
            if !self.emit(event).await {
                return Ended::Abandoned;
            }
        }
    }

    async fn emit(&self, event: WatchEvent) -> bool {
        self.sender.send(event).await.is_ok()
    }
}
