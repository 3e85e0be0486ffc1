//! What every WebSocket task shares, version 1 (`ws`, one counter) and version 2 (`session`,
//! many): the transport it talks over, the socket's buffers, credentials at the upgrade, the
//! keep-alive, the message-rate window, sends bounded by `--send-timeout`, and closing with a
//! reason, including the advised reconnect delay of shutdown and load refusals.
//!
//! A task talks to a [`Transport`], any `Sink` and `Stream` of WebSocket messages, rather than
//! to axum's `WebSocket` (centrifuge's transport split): the server hands it a real socket, and
//! unit tests an in-memory pair of channels, so the socket logic is tested without a network.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocketUpgrade};
use axum::http::{Extensions, HeaderMap, header};
use futures_util::task::AtomicWaker;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tally_proto::limits::MAX_CLIENT_MESSAGE_BYTES;
use tally_proto::{ErrorCode, ProtocolError, close};
use tokio::time::{Instant, Sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::access::Principal;
use crate::metrics::Metrics;
use crate::state::AppState;

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
/// How long a close frame may take to leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most bytes of a close frame's reason (RFC 6455: 125 for the payload, 2 of them the code).
const MAX_CLOSE_REASON_BYTES: usize = 123;

/// What a socket task talks over: WebSocket messages in both directions. axum's `WebSocket`
/// is one; the session's unit tests use channels.
pub(crate) trait Transport:
    Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>> + Unpin + Send
{
}

impl<T> Transport for T where
    T: Sink<Message, Error = axum::Error>
        + Stream<Item = Result<Message, axum::Error>>
        + Unpin
        + Send
{
}

/// The socket's buffers and the limits of what a client may send.
pub(crate) fn configure(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(MAX_CLIENT_MESSAGE_BYTES)
        .max_frame_size(MAX_CLIENT_MESSAGE_BYTES)
}

/// The principal of an upgrade's `Authorization` header, or `anonymous(peer)` without one.
/// Credentials are decided now but a refusal is answered after the upgrade, as a close code: a
/// browser cannot read the status of a refused upgrade, and would retry it forever. Boxed,
/// because the task keeps its arguments for its whole life.
pub(crate) fn upgrade_principal(
    state: &AppState,
    headers: &HeaderMap,
    extensions: &Extensions,
    anonymous: impl FnOnce(Option<IpAddr>) -> Arc<Principal>,
) -> Box<Result<Arc<Principal>, ProtocolError>> {
    let peer = crate::accept::client_ip(extensions);
    Box::new(match headers.get(header::AUTHORIZATION) {
        None => Ok(anonymous(peer)),
        Some(_) => state.access.authenticate(headers, peer).map(Arc::new),
    })
}

/// Why a socket task ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Close with this code and reason.
    Close(u16, String),
    /// The peer is gone: just drop the connection.
    Drop,
    /// A send stalled for `--send-timeout`: the peer stopped reading, so a close frame could not
    /// get through either; counted as a 4000 close and dropped.
    Stalled,
}

/// The close code of a refused credential: expired (get a fresh one) or not valid.
pub(crate) fn refusal_close_code(error: &ProtocolError) -> u16 {
    if error.code == ErrorCode::TokenExpired {
        close::TOKEN_EXPIRED
    } else {
        close::UNAUTHENTICATED
    }
}

/// The answer to a binary message.
pub(crate) fn binary_refused() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::BadJson,
        "binary messages are not accepted; send JSON text such as {\"type\":\"ping\"}",
    )
}

/// A delay chosen uniformly at random in `0..=spread`, in whole milliseconds: how long a client
/// should wait before reconnecting after a shutdown or a load refusal, so that the clients of
/// a restarting server come back spread over `--reconnect-spread` rather than all at once.
pub(crate) fn reconnect_delay(spread: Duration) -> u64 {
    let spread_ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
    let mut bytes = [0_u8; 8];
    // Without randomness (which does not happen on supported systems) every client gets the
    // middle of the range: still a valid delay.
    if getrandom::fill(&mut bytes).is_err() {
        return spread_ms / 2;
    }
    let random = u64::from_le_bytes(bytes);
    // The modulo bias is below 2^-40 for any spread a flag can give.
    random % spread_ms.saturating_add(1)
}

/// The phrase a close reason carries with an advised delay; clients read it back.
pub(crate) fn reconnect_phrase(after_ms: u64) -> String {
    format!("reconnect after {after_ms} ms")
}

/// A timer for the principal's token expiry (plus the leeway), if it expires. Boxed, and only
/// for sockets whose token expires: most sockets never need one.
pub(crate) fn expiry_timer(state: &AppState, principal: &Principal) -> Option<Pin<Box<Sleep>>> {
    let expires_in = principal.expires_in(state.access.leeway())?;
    Some(Box::pin(tokio::time::sleep(expires_in)))
}

/// Waits for the expiry timer, or forever when there is none.
pub(crate) async fn until(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The server's shutdown as one socket task waits for it, polled on every wake-up of the task
/// but cheap to poll: a `cancelled()` future that is waiting locks the waiter list that every
/// socket's future shares at each poll (tokio's `Notify`), so polling it with each update made
/// each watcher take one process-wide lock per update. This polls it again only when the task's
/// waker changed (so the registered waker is always the task's) or the token was cancelled;
/// otherwise a poll is one atomic load.
pub(crate) struct ShutdownSignal<'a, F> {
    token: &'a CancellationToken,
    /// The token's `cancelled()` future.
    cancelled: Pin<&'a mut F>,
    /// The waker the `cancelled()` future last registered.
    registered: Option<Waker>,
}

impl<'a, F: Future<Output = ()>> ShutdownSignal<'a, F> {
    /// Waits for `token`, whose `cancelled()` future is `cancelled`.
    pub(crate) fn new(token: &'a CancellationToken, cancelled: Pin<&'a mut F>) -> Self {
        Self { token, cancelled, registered: None }
    }
}

impl<F: Future<Output = ()>> Future for ShutdownSignal<'_, F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let same_waker = this.registered.as_ref().is_some_and(|waker| waker.will_wake(cx.waker()));
        if same_waker && !this.token.is_cancelled() {
            return Poll::Pending;
        }
        let poll = this.cancelled.as_mut().poll(cx);
        if poll.is_pending() {
            this.registered = Some(cx.waker().clone());
        }
        poll
    }
}

/// The messages a client sent in the current one-second window.
#[derive(Debug)]
pub(crate) struct RateWindow {
    started: Instant,
    count: u32,
}

impl RateWindow {
    pub(crate) fn new() -> Self {
        Self { started: Instant::now(), count: 0 }
    }

    /// Counts one message against `limit` a second; over it, how long until the window ends.
    pub(crate) fn count(&mut self, limit: u32) -> Result<(), Duration> {
        let elapsed = self.started.elapsed();
        if elapsed >= Duration::from_secs(1) {
            self.started = Instant::now();
            self.count = 0;
        }
        self.count += 1;
        if self.count > limit {
            return Err(Duration::from_secs(1).saturating_sub(self.started.elapsed()));
        }
        Ok(())
    }
}

/// Whether a socket's read side was woken since it last said it had nothing to read: the
/// waker the transport's reads get, forwarding to the task's.
///
/// A socket task waits on its reads beside its updates, and `select!` polls every branch at
/// each wake-up: without this, each update polled the read side too, down through
/// tungstenite and the TCP stream to find nothing there, about 1 700 instructions per update
/// per watcher (callgrind). With it, a read is polled only after the transport woke it.
#[derive(Debug)]
struct ReadGate {
    /// Set by the transport's wake-ups (and after a read that found something, as more may be
    /// buffered); cleared by a poll.
    woken: AtomicBool,
    /// The task to wake.
    task: AtomicWaker,
}

impl Wake for ReadGate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// One socket's transport, with what every socket keeps about it: whether the peer is alive,
/// and how long a send may stall.
pub(crate) struct Link<T> {
    pub(crate) transport: T,
    /// Gates polls of the read side (see [`ReadGate`]).
    read_gate: Arc<ReadGate>,
    /// The waker made from `read_gate`, made once.
    read_waker: Waker,
    /// Whether the peer sent anything (a message, a ping or a pong) since the last ping tick.
    heard: bool,
    /// Whether a ping was sent and nothing has been heard since.
    ping_outstanding: bool,
    send_timeout: Duration,
}

impl<T: Transport> Link<T> {
    pub(crate) fn new(transport: T, send_timeout: Duration) -> Self {
        let read_gate =
            Arc::new(ReadGate { woken: AtomicBool::new(true), task: AtomicWaker::new() });
        let read_waker = Waker::from(Arc::clone(&read_gate));
        Self {
            transport,
            read_gate,
            read_waker,
            heard: false,
            ping_outstanding: false,
            send_timeout,
        }
    }

    /// The next frame from the peer; `None` once it is gone.
    pub(crate) async fn recv(&mut self) -> Option<Result<Message, axum::Error>> {
        std::future::poll_fn(|cx| {
            // Registered before looking, so a wake-up after the look wakes the task again.
            self.read_gate.task.register(cx.waker());
            if !self.read_gate.woken.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            let mut read_cx = Context::from_waker(&self.read_waker);
            let polled = self.transport.poll_next_unpin(&mut read_cx);
            if polled.is_ready() {
                // More frames may be buffered already, with no wake-up to come for them.
                self.read_gate.woken.store(true, Ordering::Release);
            }
            polled
        })
        .await
    }

    /// One frame from the client: a message, or why the socket ends (the peer left, or sent a
    /// message over the limit). Any frame is a sign of life.
    pub(crate) fn receive(
        &mut self,
        incoming: Option<Result<Message, axum::Error>>,
    ) -> Result<Message, End> {
        let message = match incoming {
            None => return Err(End::Drop),
            Some(Ok(message)) => message,
            Some(Err(error)) => return Err(violation(&error).unwrap_or(End::Drop)),
        };
        self.heard = true;
        self.ping_outstanding = false;
        Ok(message)
    }

    /// The peer's close frame arrived: tungstenite queued the reply, and flushing sends it,
    /// completing the handshake. The socket then ends.
    pub(crate) async fn closed_by_peer(&mut self) -> End {
        let _ = self.flush().await;
        End::Drop
    }

    /// Once per ping interval: a peer heard from since the last tick is fine; a silent one is
    /// pinged; one still silent a whole interval after its ping is closed.
    pub(crate) async fn ping_tick(&mut self) -> Result<(), End> {
        if std::mem::take(&mut self.heard) {
            self.ping_outstanding = false;
            return Ok(());
        }
        if self.ping_outstanding {
            return Err(End::Close(close::PING_TIMEOUT, "no answer to pings".into()));
        }
        self.ping_outstanding = true;
        self.send(Message::Ping(Default::default())).await
    }

    /// Sends one message at once.
    pub(crate) async fn send(&mut self, message: Message) -> Result<(), End> {
        stalled_or_failed(timeout(self.send_timeout, self.transport.send(message)).await)
    }

    /// Sends one text message at once.
    pub(crate) async fn send_text(&mut self, text: Utf8Bytes) -> Result<(), End> {
        self.send(Message::Text(text)).await
    }

    /// Queues one text message; it leaves at the next flush (or once the buffer is full).
    pub(crate) async fn feed(&mut self, text: Utf8Bytes) -> Result<(), End> {
        stalled_or_failed(
            timeout(self.send_timeout, self.transport.feed(Message::Text(text))).await,
        )
    }

    /// Sends what was queued.
    pub(crate) async fn flush(&mut self) -> Result<(), End> {
        stalled_or_failed(timeout(self.send_timeout, self.transport.flush()).await)
    }

    /// Sends the close frame, then reads (and drops) what the client still sends until its own
    /// close frame arrives, within `CLOSE_TIMEOUT`: a TCP socket closed with unread data is
    /// reset by the kernel, and the client would see a lost connection (1006) instead of
    /// `code`, then reconnect where `code` says not to (1008 for a client that keeps flooding).
    pub(crate) async fn close(&mut self, metrics: &Metrics, code: u16, reason: String) {
        metrics.websocket_closed(code);
        let frame = CloseFrame { code, reason: Utf8Bytes::from(close_reason(reason)) };
        let _ = timeout(CLOSE_TIMEOUT, async {
            if self.transport.send(Message::Close(Some(frame))).await.is_ok() {
                while let Some(Ok(message)) = self.transport.next().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            }
        })
        .await;
    }
}

/// `reason` cut to what a close frame holds, at a character boundary.
pub(crate) fn close_reason(mut reason: String) -> String {
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

/// The close a read error calls for (RFC 6455 section 7.4.1): 1009 for a message or frame over
/// the limit, 1007 for text that is not UTF-8, 1002 for any other breach of the protocol; `None`
/// when the peer is gone (an I/O error, a connection ended without a close frame), which leaves
/// nobody to tell.
///
/// tungstenite reports the breach and leaves its connection usable for writing (only the read
/// side of the stream ends), so the close frame still goes out; the rest of an oversized frame
/// is still unread, which the accept loop's lingering close drains (`accept`), so the close is
/// not turned into a reset.
fn violation(error: &axum::Error) -> Option<End> {
    use tungstenite::error::ProtocolError as Breach;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let error = loop {
        let current = source?;
        if let Some(error) = current.downcast_ref::<tungstenite::Error>() {
            break error;
        }
        source = current.source();
    };
    let (code, reason) = match error {
        tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong {
            size,
            ..
        }) => (
            close::MESSAGE_TOO_BIG,
            format!(
                "message of {size} bytes is over the limit; a client message may have at most {MAX_CLIENT_MESSAGE_BYTES} bytes"
            ),
        ),
        tungstenite::Error::Capacity(_) => (
            close::MESSAGE_TOO_BIG,
            format!("a client message may have at most {MAX_CLIENT_MESSAGE_BYTES} bytes"),
        ),
        tungstenite::Error::Utf8(_) => (
            close::INVALID_PAYLOAD,
            "a text message is not valid UTF-8; text messages must be UTF-8 JSON".to_owned(),
        ),
        // The peer left without a close frame: nobody to send one to.
        tungstenite::Error::Protocol(Breach::ResetWithoutClosingHandshake) => return None,
        tungstenite::Error::Protocol(breach) => {
            let what = match breach {
                Breach::UnmaskedFrameFromClient => "a client frame is not masked".to_owned(),
                Breach::NonZeroReservedBits => {
                    "reserved bits are set (no extension was negotiated)".to_owned()
                }
                Breach::FragmentedControlFrame => "a control frame is fragmented".to_owned(),
                Breach::ControlFrameTooBig => {
                    "a control frame has over 125 bytes of payload".to_owned()
                }
                Breach::UnknownControlFrameType(opcode)
                | Breach::UnknownDataFrameType(opcode)
                | Breach::InvalidOpcode(opcode) => format!("opcode {opcode} is reserved"),
                Breach::UnexpectedContinueFrame => {
                    "a continuation frame with no message to continue".to_owned()
                }
                Breach::ExpectedFragment(_) => {
                    "a new message before the fragmented one was finished".to_owned()
                }
                Breach::InvalidCloseSequence => "a close frame with a 1-byte payload".to_owned(),
                other => other.to_string(),
            };
            (close::PROTOCOL_ERROR, format!("protocol violation: {what}; see RFC 6455"))
        }
        _ => return None,
    };
    Some(End::Close(code, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_cover_the_spread() {
        let spread = Duration::from_millis(1000);
        let delays: Vec<u64> = (0..2000).map(|_| reconnect_delay(spread)).collect();
        assert!(delays.iter().all(|delay| *delay <= 1000));
        // Uniform over 0..=1000: each tenth of the range gets some of 2000 draws.
        for tenth in 0..10 {
            let low = tenth * 100;
            assert!(delays.iter().any(|delay| (low..low + 100).contains(delay)), "none in {low}..");
        }
        assert_eq!(reconnect_delay(Duration::ZERO), 0);
    }

    #[test]
    fn close_reasons_fit_a_close_frame() {
        let long = "é".repeat(100);
        let cut = close_reason(long);
        assert!(cut.len() <= MAX_CLOSE_REASON_BYTES && cut.ends_with('…'));
        assert_eq!(close_reason("short".into()), "short");
    }

    #[tokio::test]
    async fn the_shutdown_signal_wakes_its_task_on_cancel() {
        let token = CancellationToken::new();
        {
            let cancelled = std::pin::pin!(token.cancelled());
            let mut signal = std::pin::pin!(ShutdownSignal::new(&token, cancelled));
            let waker = futures_util::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            assert!(signal.as_mut().poll(&mut cx).is_pending());
            assert!(signal.as_mut().poll(&mut cx).is_pending(), "polled again, same waker");
        }
        let waiting = tokio::spawn({
            let token = token.clone();
            async move {
                let cancelled = std::pin::pin!(token.cancelled());
                let mut signal = ShutdownSignal::new(&token, cancelled);
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                // Woken by other sources in between, as a socket task is by its updates.
                loop {
                    tokio::select! {
                        () = &mut signal => return,
                        _ = tick.tick() => {}
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting task saw the shutdown")
            .expect("the waiting task did not panic");
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_window_says_how_long_to_wait() {
        let mut window = RateWindow::new();
        assert!(window.count(2).is_ok());
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(window.count(2).is_ok());
        assert_eq!(window.count(2), Err(Duration::from_millis(700)));
        tokio::time::advance(Duration::from_millis(700)).await;
        assert!(window.count(2).is_ok(), "a new window");
    }
}
