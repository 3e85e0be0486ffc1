//! Unit tests of the version-2 session over an in-memory transport, with paused time.
//!
//! The session runs against a real `AppState` (a real SQLite file, real actors), but its socket
//! is a pair of channels, and the test polls the session's future itself: a session that is
//! not polled is a socket that is not being served, which is how a subscription is made to lag.
//!
//! Time stands still unless a test advances it: storage commits on a thread of its own, and
//! paused time would otherwise leap to the next timer whenever the runtime waits for a commit.
//! A watchdog (a blocking task, which keeps tokio from advancing time on its own) fails a test
//! that waits for nothing for 60 real seconds.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{Sink, Stream};
use serde_json::{Value, json};
use tally_proto::socket::Frame;
use tally_proto::{CounterName, Op, Presence, close};
use tempfile::TempDir;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::PollSender;

use crate::config::Config;
use crate::framing::Published;
use crate::state::AppState;
use crate::store::{SqliteOptions, SqliteStore};

/// The server side of an in-memory socket. It answers Ping frames with Pong frames, as a live
/// peer's WebSocket library does.
struct ChannelTransport {
    /// To the test client, stamped with when the session sent each message.
    outgoing: PollSender<(Instant, Message)>,
    incoming: mpsc::Receiver<Result<Message, axum::Error>>,
    /// Into `incoming`, for the Pong answers.
    loopback: mpsc::Sender<Result<Message, axum::Error>>,
}

impl Sink<Message> for ChannelTransport {
    type Error = axum::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.outgoing.poll_reserve(cx).map_err(axum::Error::new)
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), Self::Error> {
        if let Message::Ping(payload) = &message {
            let _ = self.loopback.try_send(Ok(Message::Pong(payload.clone())));
        }
        self.outgoing.send_item((Instant::now(), message)).map_err(axum::Error::new)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.outgoing.close();
        Poll::Ready(Ok(()))
    }
}

impl Stream for ChannelTransport {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx)
    }
}

/// A server state over a fresh SQLite file, and the watchdog.
struct Harness {
    state: AppState,
    _dir: TempDir,
    /// Dropped with the harness, which ends the watchdog at once.
    _stop_watchdog: std::sync::mpsc::Sender<()>,
    /// Turns true when the watchdog fires.
    watchdog: watch::Receiver<bool>,
}

fn config() -> Config {
    Config { ping_interval: Duration::from_secs(30), ..Config::default() }
}

async fn harness(config: Config) -> Harness {
    harness_with(config, SqliteOptions::default()).await
}

async fn harness_with(config: Config, options: SqliteOptions) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("tally.db"), options).expect("open store");
    let state = AppState::new(Arc::new(store), config, &[]);
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (fire, watchdog) = watch::channel(false);
    // While this blocking task runs, tokio does not advance paused time by itself.
    tokio::task::spawn_blocking(move || {
        if stopped.recv_timeout(Duration::from_secs(60))
            == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        {
            let _ = fire.send(true);
        }
    });
    Harness { state, _dir: dir, _stop_watchdog: stop, watchdog }
}

fn name(text: &str) -> CounterName {
    CounterName::parse(text).expect("a valid name")
}

impl Harness {
    /// A socket whose outgoing channel holds `capacity` messages.
    fn connect_with(&self, capacity: usize) -> Socket {
        let (to_server, incoming) = mpsc::channel(1024);
        let (outgoing, from_server) = mpsc::channel(capacity);
        let transport = ChannelTransport {
            outgoing: PollSender::new(outgoing),
            incoming,
            loopback: to_server.clone(),
        };
        let principal = Arc::new(self.state.access.anonymous(None));
        let session = super::serve(self.state.clone(), transport, None, Box::new(Ok(principal)));
        Socket {
            session: Some(Box::pin(session)),
            to_server,
            from_server,
            watchdog: self.watchdog.clone(),
        }
    }

    fn connect(&self) -> Socket {
        self.connect_with(100_000)
    }

    /// Commits an increment by `amount`, as an RPC would.
    async fn increment(&self, counter: &str, amount: i64) -> Arc<Published> {
        let by: Arc<str> = Arc::from("tester");
        let op = Op::Increment(amount);
        self.state.registry.apply(&name(counter), op, None, &by, None).await.expect("committed")
    }

    async fn reset(&self, counter: &str) -> Arc<Published> {
        let by: Arc<str> = Arc::from("tester");
        self.state
            .registry
            .apply(&name(counter), Op::Reset, None, &by, None)
            .await
            .expect("committed")
    }
}

type SessionFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The client side of an in-memory socket, and the session's future, which runs only while the
/// client waits for something.
struct Socket {
    session: Option<SessionFuture>,
    to_server: mpsc::Sender<Result<Message, axum::Error>>,
    from_server: mpsc::Receiver<(Instant, Message)>,
    watchdog: watch::Receiver<bool>,
}

impl Socket {
    async fn send(&self, command: Value) {
        self.send_message(Message::Text(command.to_string().into())).await;
    }

    async fn send_message(&self, message: Message) {
        self.to_server.send(Ok(message)).await.expect("the session reads");
    }

    /// Runs the session until `until` completes.
    async fn drive<F: Future>(&mut self, until: F) -> F::Output {
        let session = self.session.as_mut().expect("the session is running");
        let watchdog = &mut self.watchdog;
        tokio::select! {
            biased;
            output = until => output,
            () = session.as_mut() => panic!("the session ended"),
            _ = watchdog.wait_for(|fired| *fired) => panic!("nothing happened for 60 s"),
        }
    }

    /// The next message the session sends, with when it sent it.
    async fn next_message(&mut self) -> (Instant, Message) {
        let session = self.session.as_mut().expect("the session is running");
        let (from_server, watchdog) = (&mut self.from_server, &mut self.watchdog);
        tokio::select! {
            biased;
            message = from_server.recv() => message.expect("the socket is open"),
            () = session.as_mut() => {
                self.session = None;
                from_server.try_recv().expect("a message before the session ended")
            }
            _ = watchdog.wait_for(|fired| *fired) => panic!("no message for 60 s"),
        }
    }

    /// The next frame (Ping frames, answered by the transport, are skipped), with its send time.
    async fn next_at(&mut self) -> (Instant, Frame) {
        loop {
            match self.next_message().await {
                (_, Message::Ping(_)) => continue,
                (at, Message::Text(text)) => {
                    let frame = Frame::from_json(&text)
                        .unwrap_or_else(|error| panic!("{error}: {}", text.as_str()));
                    return (at, frame);
                }
                (_, other) => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    async fn next(&mut self) -> Frame {
        self.next_at().await.1
    }

    /// The next frame as sent, as text.
    async fn next_text(&mut self) -> String {
        match self.next_message().await {
            (_, Message::Text(text)) => text.to_string(),
            (_, other) => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame, which must be an update of `counter`; its version.
    async fn next_update_of(&mut self, counter: &str) -> u64 {
        match self.next().await {
            Frame::Update { name, update, .. } if name == counter => update.version,
            other => panic!("expected an update of {counter}, got {other:?}"),
        }
    }

    /// Lets the session do what it has to do now (nothing that waits for storage).
    async fn run_a_while(&mut self) {
        self.drive(async {
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }

    /// Lets the session do what it has to do now, then says what it sent meanwhile, with
    /// when it sent each.
    async fn settle_at(&mut self) -> Vec<(Instant, Frame)> {
        self.run_a_while().await;
        let mut frames = Vec::new();
        while let Ok((at, message)) = self.from_server.try_recv() {
            if let Message::Text(text) = message {
                frames.push((at, Frame::from_json(&text).expect("a frame")));
            }
        }
        frames
    }

    /// A ping round trip: everything the session had to send before answering it, and the
    /// pong (which is checked).
    async fn sync(&mut self, id: u64) -> Vec<Frame> {
        self.send(json!({"id": id, "type": "ping"})).await;
        let mut before = Vec::new();
        loop {
            match self.next().await {
                Frame::Pong { id: got, .. } if got == id => return before,
                other => before.push(other),
            }
        }
    }

    async fn subscribe(&mut self, id: u64, fields: Value) -> Frame {
        let mut command = json!({"id": id, "type": "subscribe"});
        command
            .as_object_mut()
            .expect("object")
            .extend(fields.as_object().expect("object").clone());
        self.send(command).await;
        self.next().await
    }

    /// Waits for the session to end; the close frame it sent, if any.
    async fn closed(&mut self) -> Option<CloseFrame> {
        let Some(mut session) = self.session.take() else { return self.drain_close() };
        let mut close = None;
        loop {
            tokio::select! {
                biased;
                () = session.as_mut() => break,
                message = self.from_server.recv() => {
                    if let Some((_, Message::Close(frame))) = message {
                        // Answered, as a client does, so that the session ends at once.
                        let _ = self.to_server.send(Ok(Message::Close(None))).await;
                        close = frame;
                    }
                }
                _ = self.watchdog.wait_for(|fired| *fired) => panic!("the session did not end"),
            }
        }
        close.or_else(|| self.drain_close())
    }

    fn drain_close(&mut self) -> Option<CloseFrame> {
        while let Ok((_, message)) = self.from_server.try_recv() {
            if let Message::Close(frame) = message {
                return frame;
            }
        }
        None
    }
}

#[track_caller]
fn assert_error(frame: &Frame, id: u64, code: &str) {
    match frame {
        Frame::Error { id: Some(got), error } if *got == id && error.code == code => {}
        other => panic!("expected error {code} for command {id}, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn subscribe_answers_a_snapshot_then_live_updates_in_the_shared_bytes() {
    let harness = harness(config()).await;
    harness.increment("a", 5).await;
    let mut socket = harness.connect();
    match socket.subscribe(1, json!({"name": "a"})).await {
        Frame::Snapshot { id: Some(1), name, snapshot } => {
            assert_eq!((name.as_str(), snapshot.value, snapshot.version), ("a", 5, 1));
            assert!(!snapshot.resync);
        }
        other => panic!("expected the snapshot, got {other:?}"),
    }
    let published = harness.increment("a", 2).await;
    // An open server grants everything, admin included, so `by` is in the copy.
    assert_eq!(socket.next_text().await, published.v2_json_for(true, false).as_str());
}

#[tokio::test(start_paused = true)]
async fn subscribe_with_since_replays_history_then_goes_live_and_ahead_resyncs() {
    let harness = harness(config()).await;
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(harness.increment("r", 1).await);
    }
    let mut socket = harness.connect();
    match socket.subscribe(1, json!({"name": "r", "since": 2})).await {
        Frame::Resumed { id: 1, name, resumed } => {
            assert_eq!((name.as_str(), resumed.since, resumed.version), ("r", 2, 5));
        }
        other => panic!("expected resumed, got {other:?}"),
    }
    for published in &answers[2..] {
        let sent = published.v2_json_for(true, false);
        assert_eq!(socket.next_text().await, sent.as_str(), "byte for byte");
    }
    harness.increment("r", 1).await;
    assert_eq!(socket.next_update_of("r").await, 6);
    // A `since` ahead of the counter (its data was reset, say) starts over.
    match socket.subscribe(2, json!({"name": "other", "since": 9})).await {
        Frame::Snapshot { id: Some(2), snapshot, .. } => {
            assert!(snapshot.resync);
            assert_eq!(snapshot.version, 0);
        }
        other => panic!("expected a resync snapshot, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_lagging_subscription_is_caught_up_from_history_once_in_order_without_a_close() {
    let harness = harness(Config { watch_buffer: 4, ..config() }).await;
    let mut socket = harness.connect();
    assert!(matches!(socket.subscribe(1, json!({"name": "lag"})).await, Frame::Snapshot { .. }));
    assert!(matches!(socket.subscribe(2, json!({"name": "calm"})).await, Frame::Snapshot { .. }));
    // The session is not polled while 50 updates pass through a ring of 4.
    for _ in 0..50 {
        harness.increment("lag", 1).await;
    }
    harness.increment("calm", 1).await;
    let mut lagged = Vec::new();
    let mut calm = Vec::new();
    while lagged.len() < 50 || calm.is_empty() {
        match socket.next().await {
            Frame::Update { name, update, conflated: false } if name == "lag" => {
                lagged.push(update.version);
            }
            Frame::Update { name, update, .. } if name == "calm" => calm.push(update.version),
            other => panic!("expected updates, got {other:?}"),
        }
    }
    assert_eq!(lagged, (1..=50).collect::<Vec<_>>(), "every version once, in order");
    assert_eq!(calm, vec![1]);
    assert!(socket.sync(3).await.is_empty(), "nothing more, and the socket is open");
    harness.increment("lag", 1).await;
    assert_eq!(socket.next_update_of("lag").await, 51, "then live again");
}

#[tokio::test(start_paused = true)]
async fn a_subscription_lagging_past_history_starts_over_with_a_resync_snapshot() {
    let options = SqliteOptions { history_limit: 5, ..SqliteOptions::default() };
    let harness = harness_with(Config { watch_buffer: 4, ..config() }, options).await;
    let mut socket = harness.connect();
    assert!(matches!(socket.subscribe(1, json!({"name": "gone"})).await, Frame::Snapshot { .. }));
    for _ in 0..30 {
        harness.increment("gone", 1).await;
    }
    match socket.next().await {
        Frame::Snapshot { id: None, name, snapshot } => {
            assert_eq!((name.as_str(), snapshot.version, snapshot.resync), ("gone", 30, true));
        }
        other => panic!("expected a resync snapshot push, got {other:?}"),
    }
    assert!(socket.sync(2).await.is_empty());
    harness.increment("gone", 1).await;
    assert_eq!(socket.next_update_of("gone").await, 31);
}

#[tokio::test(start_paused = true)]
async fn conflation_sends_at_most_max_rate_each_the_latest_and_always_the_last_state() {
    let harness = harness(config()).await;
    let mut socket = harness.connect();
    let snapshot = socket.subscribe(1, json!({"name": "hot", "maxRate": 10})).await;
    assert!(matches!(snapshot, Frame::Snapshot { .. }));
    // 200 writes over 2 s: 100 a second, ten times the rate asked for.
    let start = Instant::now();
    let mut sent = Vec::new();
    for _ in 0..200 {
        harness.increment("hot", 1).await;
        sent.extend(socket.settle_at().await);
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    // The last state arrives once its time comes, though no write follows it.
    tokio::time::advance(Duration::from_millis(100)).await;
    sent.extend(socket.settle_at().await);
    let mut last_at: Option<Instant> = None;
    let mut last_version = 0;
    for (at, frame) in &sent {
        let Frame::Update { update, conflated: true, .. } = frame else {
            panic!("expected conflated updates, got {frame:?}")
        };
        assert!(update.version > last_version, "versions only go forward");
        last_version = update.version;
        if let Some(last_at) = last_at {
            assert!(*at - last_at >= Duration::from_millis(100), "at most 10 a second");
        }
        last_at = Some(*at);
    }
    assert_eq!(last_version, 200, "the last state is delivered");
    let elapsed = Instant::now() - start;
    assert!(sent.len() as u128 <= elapsed.as_millis() / 100 + 1, "{} sends", sent.len());
    assert!(sent.len() >= 15, "about ten a second: {}", sent.len());
}

#[tokio::test(start_paused = true)]
async fn a_conflated_subscription_waits_for_its_slot_off_the_topics_waiting_list() {
    let harness = harness(config()).await;
    let mut socket = harness.connect();
    let snapshot = socket.subscribe(1, json!({"name": "hot", "maxRate": 1})).await;
    assert!(matches!(snapshot, Frame::Snapshot { .. }));
    let topic = harness.state.registry.topic_of(&name("hot")).expect("a watched counter");
    // The first write goes out at once, and the subscription listens again.
    harness.increment("hot", 1).await;
    assert_eq!(socket.settle_at().await.len(), 1);
    assert_eq!(topic.waiting_listeners(), 1);
    // A write inside the slot parks it: the writes after it do not wake it at all.
    harness.increment("hot", 1).await;
    assert!(socket.settle_at().await.is_empty());
    assert_eq!(topic.waiting_listeners(), 0, "parked until its slot");
    for _ in 0..50 {
        harness.increment("hot", 1).await;
    }
    assert!(socket.settle_at().await.is_empty());
    assert_eq!(topic.waiting_listeners(), 0, "still parked");
    // At its slot it sends the latest state, once, and listens again.
    tokio::time::advance(Duration::from_secs(1)).await;
    let sent = socket.settle_at().await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    let Frame::Update { update, conflated: true, .. } = &sent[0].1 else {
        panic!("a conflated update, got {:?}", sent[0].1)
    };
    assert_eq!(update.version, 52);
    assert_eq!(topic.waiting_listeners(), 1);
}

#[tokio::test(start_paused = true)]
async fn presence_is_pushed_at_most_once_a_second_and_ends_at_the_true_counts() {
    let harness = harness(config()).await;
    harness.state.registry.spawn_presence_ticker();
    let mut watcher = harness.connect();
    match watcher.subscribe(1, json!({"name": "room", "presence": true})).await {
        Frame::Snapshot { .. } => {}
        other => panic!("expected the snapshot, got {other:?}"),
    }
    let first = watcher.next().await;
    assert!(matches!(first, Frame::Presence { presence: Presence { watchers: 1, users: 1 }, .. }));
    // Others come and go, several times a second, for three seconds; two stay.
    let mut others = Vec::new();
    let mut pushes = Vec::new();
    for round in 0..30_u64 {
        let mut other = harness.connect();
        assert!(matches!(
            other.subscribe(1, json!({"name": "room"})).await,
            Frame::Snapshot { .. }
        ));
        if round % 10 == 0 {
            others.push(other);
        } else {
            other.send_message(Message::Close(None)).await;
            assert!(other.closed().await.is_none());
        }
        tokio::time::advance(Duration::from_millis(100)).await;
        pushes.extend(watcher.settle_at().await);
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    pushes.extend(watcher.settle_at().await);
    assert!(pushes.len() >= 2, "changes were pushed: {pushes:?}");
    let mut last: Option<(Instant, Presence)> = None;
    for (at, frame) in pushes {
        let Frame::Presence { name, presence } = frame else { panic!("{frame:?}") };
        assert_eq!(name, "room");
        if let Some((last_at, _)) = last {
            assert!(at - last_at >= Duration::from_secs(1), "at most one push a second");
        }
        last = Some((at, presence));
    }
    // The watcher and the three that stayed, each anonymous socket a user of its own.
    let truth = Presence { watchers: 4, users: 4 };
    assert_eq!(last.map(|(_, presence)| presence), Some(truth));
    assert_eq!(harness.state.registry.presence(&name("room")), truth);
}

#[tokio::test(start_paused = true)]
async fn calls_beyond_max_in_flight_are_refused_and_the_others_answered_after_commit() {
    let harness = harness(Config { max_in_flight: 2, ..config() }).await;
    let mut socket = harness.connect();
    // Three calls arrive together: the first two are in flight when the third is read.
    for id in 1..=3 {
        socket
            .send(json!({"id": id, "type": "call", "procedure": "counter.increment", "name": "f"}))
            .await;
    }
    let mut results = Vec::new();
    for _ in 0..3 {
        match socket.next().await {
            Frame::Result { id, result } => results.push((id, result["version"].as_u64())),
            frame @ Frame::Error { .. } => assert_error(&frame, 3, "too_many_in_flight"),
            other => panic!("expected replies, got {other:?}"),
        }
    }
    results.sort_unstable();
    assert_eq!(results, vec![(1, Some(1)), (2, Some(2))]);
    // A write answered over the socket is committed: a read sees it at once.
    let counter = harness.state.registry.read(&name("f")).await.expect("read");
    assert_eq!((counter.value, counter.version), (2, 2));
    socket
        .send(json!({"id": 4, "type": "call", "procedure": "counter.getValue", "name": "f"}))
        .await;
    match socket.next().await {
        Frame::Result { id: 4, result } => assert_eq!(result, json!({"value": 2, "version": 2})),
        other => panic!("expected the value, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_write_call_answers_the_rpc_bytes_and_bad_calls_the_rpc_codes() {
    let harness = harness(config()).await;
    let mut socket = harness.connect();
    assert!(matches!(socket.subscribe(1, json!({"name": "w"})).await, Frame::Snapshot { .. }));
    socket
        .send(json!({"id": 2, "type": "call", "procedure": "counter.increment", "name": "w", "amount": 3}))
        .await;
    // The update push (sent as committed) and the answer (after commit), in either order.
    let (mut push, mut answer) = (None, None);
    while push.is_none() || answer.is_none() {
        let text = socket.next_text().await;
        match Frame::from_json(&text).expect("frame") {
            Frame::Update { .. } => push = Some(text),
            Frame::Result { id: 2, .. } => answer = Some(text),
            other => panic!("unexpected {other:?}"),
        }
    }
    let (push, answer) = (push.unwrap_or_default(), answer.unwrap_or_default());
    let rpc_answer = answer
        .strip_prefix("{\"type\":\"result\",\"id\":2,\"result\":")
        .and_then(|rest| rest.strip_suffix('}'))
        .expect("the result frame around the answer");
    // The RPC's answer is the v1 update; the push is the same with the name in front.
    assert_eq!(push, format!("{{\"name\":\"w\",{}", &rpc_answer[1..]));
    for (id, call, code) in [
        (3, json!({"procedure": "counter.increment", "name": "w", "amount": 0}), "invalid_amount"),
        (4, json!({"procedure": "counter.increment", "name": "bad name"}), "invalid_name"),
        (5, json!({"procedure": "counter.explode", "name": "w"}), "unknown_procedure"),
        (6, json!({"procedure": "key.list"}), "unknown_procedure"),
        (7, json!({"procedure": "counter.setValue", "name": "w", "value": 1.5}), "invalid_field"),
        (8, json!({"procedure": "counter.increment", "name": "w", "bogus": 1}), "invalid_field"),
    ] {
        let mut command = json!({"id": id, "type": "call"});
        command.as_object_mut().expect("object").extend(call.as_object().expect("object").clone());
        socket.send(command).await;
        assert_error(&socket.next().await, id, code);
    }
    assert!(socket.sync(9).await.is_empty(), "the socket stays usable");
}

#[tokio::test(start_paused = true)]
async fn commands_over_the_rate_are_refused_with_retry_after_and_the_socket_stays() {
    let harness = harness(Config { max_commands_per_second: 5, ..config() }).await;
    let mut socket = harness.connect();
    for id in 1..=7 {
        socket.send(json!({"id": id, "type": "ping"})).await;
    }
    for id in 1..=5 {
        assert!(matches!(socket.next().await, Frame::Pong { id: got, .. } if got == id));
    }
    for id in 6..=7 {
        match socket.next().await {
            Frame::Error { id: Some(got), error } if got == id => {
                assert_eq!(error.code, "rate_limited");
                assert!(error.temporary);
                assert_eq!(error.retry_after_ms, Some(1000), "the rest of the second");
            }
            other => panic!("expected rate_limited, got {other:?}"),
        }
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(socket.sync(8).await.is_empty(), "a new second, and the socket stayed");
}

#[tokio::test(start_paused = true)]
async fn a_transport_that_never_drains_is_dropped_after_the_send_timeout_alone() {
    let harness = harness(Config { send_timeout: Duration::from_secs(2), ..config() }).await;
    let mut stuck = harness.connect_with(2);
    assert!(matches!(stuck.subscribe(1, json!({"name": "s"})).await, Frame::Snapshot { .. }));
    let mut reader = harness.connect();
    assert!(matches!(reader.subscribe(1, json!({"name": "s"})).await, Frame::Snapshot { .. }));
    for _ in 0..10 {
        harness.increment("s", 1).await;
    }
    for version in 1..=10 {
        assert_eq!(reader.next_update_of("s").await, version);
    }
    // The stuck socket's two slots are filled, and nobody reads them.
    stuck.run_a_while().await;
    tokio::time::advance(Duration::from_millis(1900)).await;
    stuck.drive(tokio::task::yield_now()).await;
    assert!(stuck.session.is_some(), "not before the send timeout");
    tokio::time::advance(Duration::from_millis(200)).await;
    let session = stuck.session.take().expect("running");
    session.await;
    let metrics = harness.state.metrics.encode();
    assert!(metrics.contains("tally_websocket_closes_total{code=\"4000\"} 1"), "{metrics}");
    assert_eq!(harness.state.registry.watchers(&name("s")), 1, "the stuck one left");
    harness.increment("s", 1).await;
    assert_eq!(reader.next_update_of("s").await, 11, "the other socket is unaffected");
}

#[tokio::test(start_paused = true)]
async fn unsubscribe_stops_exactly_that_counter() {
    let harness = harness(config()).await;
    let mut socket = harness.connect();
    for (id, counter) in [(1, "u1"), (2, "u2")] {
        assert!(matches!(
            socket.subscribe(id, json!({"name": counter})).await,
            Frame::Snapshot { .. }
        ));
    }
    assert_error(&socket.subscribe(3, json!({"name": "u1"})).await, 3, "already_subscribed");
    socket.send(json!({"id": 4, "type": "unsubscribe", "name": "u1"})).await;
    match socket.next().await {
        Frame::Unsubscribed { id: Some(4), name, code: None, reason: None } => {
            assert_eq!(name, "u1")
        }
        other => panic!("expected the unsubscribed reply, got {other:?}"),
    }
    assert_eq!(harness.state.registry.watchers(&name("u1")), 0);
    harness.increment("u1", 1).await;
    harness.increment("u2", 1).await;
    assert_eq!(socket.next_update_of("u2").await, 1);
    assert!(socket.sync(5).await.is_empty(), "nothing of u1");
    socket.send(json!({"id": 6, "type": "unsubscribe", "name": "u1"})).await;
    assert_error(&socket.next().await, 6, "not_subscribed");
    // Subscribing again starts over, and the slot is reused.
    assert!(
        matches!(socket.subscribe(7, json!({"name": "u1"})).await, Frame::Snapshot { snapshot, .. } if snapshot.version == 1)
    );
    harness.increment("u1", 1).await;
    assert_eq!(socket.next_update_of("u1").await, 2);
}

#[tokio::test(start_paused = true)]
async fn a_types_filter_delivers_only_those_types_and_versions_jump() {
    let harness = harness(config()).await;
    let mut socket = harness.connect();
    let reply = socket.subscribe(1, json!({"name": "t", "types": ["reset"]})).await;
    assert!(matches!(reply, Frame::Snapshot { .. }));
    harness.increment("t", 1).await;
    harness.increment("t", 1).await;
    harness.reset("t").await;
    harness.increment("t", 1).await;
    harness.reset("t").await;
    assert_eq!(socket.next_update_of("t").await, 3);
    assert_eq!(socket.next_update_of("t").await, 5);
    assert!(socket.sync(2).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn limits_refuse_the_command_and_keep_the_socket() {
    let config = Config { max_subscriptions: 2, max_watchers_per_counter: 1, ..config() };
    let harness = harness(config).await;
    let mut socket = harness.connect();
    assert!(matches!(socket.subscribe(1, json!({"name": "l1"})).await, Frame::Snapshot { .. }));
    let mut other = harness.connect();
    match other.subscribe(1, json!({"name": "l1"})).await {
        Frame::Error { id: Some(1), error } => {
            assert_eq!(error.code, "too_many_watchers");
            assert!(error.temporary);
            let wait = error.retry_after_ms.expect("a spread retry delay");
            assert!((1..=5000).contains(&wait), "{wait}");
        }
        other => panic!("expected too_many_watchers, got {other:?}"),
    }
    assert!(matches!(socket.subscribe(2, json!({"name": "l2"})).await, Frame::Snapshot { .. }));
    assert_error(&socket.subscribe(3, json!({"name": "l3"})).await, 3, "too_many_subscriptions");
    socket.send(json!({"id": 4, "type": "jump"})).await;
    assert_error(&socket.next().await, 4, "unknown_message_type");
    socket.send_message(Message::Text("nope".into())).await;
    assert!(
        matches!(socket.next().await, Frame::Error { id: None, error } if error.code == "bad_json")
    );
    assert!(socket.sync(5).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn shutdown_pushes_reconnect_then_closes_1012_with_the_same_delay() {
    let harness = harness(config()).await;
    let mut socket = harness.connect();
    assert!(matches!(socket.subscribe(1, json!({"name": "down"})).await, Frame::Snapshot { .. }));
    harness.state.shutdown.cancel();
    let after_ms = match socket.next().await {
        Frame::Reconnect { after_ms, reason } => {
            assert!(reason.contains("restarting"), "{reason}");
            assert!(after_ms <= 5000);
            after_ms
        }
        other => panic!("expected the reconnect push, got {other:?}"),
    };
    let frame = socket.closed().await.expect("a close frame");
    assert_eq!(frame.code, close::SERVICE_RESTART);
    assert!(frame.reason.contains(&format!("reconnect after {after_ms} ms")), "{}", frame.reason);
    assert_eq!(harness.state.registry.watchers(&name("down")), 0);
}

#[tokio::test(start_paused = true)]
async fn losing_the_right_to_read_ends_the_subscription_and_the_socket_goes_on() {
    let harness = harness(config()).await;
    let mut socket = harness.connect();
    assert!(matches!(socket.subscribe(1, json!({"name": "p"})).await, Frame::Snapshot { .. }));
    // The first API key turns auth on: the open-mode rights of anonymous sockets end.
    harness.state.access.turn_auth_on();
    harness.increment("p", 1).await;
    match socket.next().await {
        Frame::Unsubscribed { id: None, name, code, reason } => {
            assert_eq!((name.as_str(), code.as_deref()), ("p", Some("unauthenticated")));
            assert!(reason.is_some_and(|reason| reason.contains("p")));
        }
        other => panic!("expected the unsubscribed push, got {other:?}"),
    }
    assert!(socket.sync(2).await.is_empty(), "no update of p, and the socket goes on");
    assert_eq!(harness.state.registry.watchers(&name("p")), 0);
    assert_error(&socket.subscribe(3, json!({"name": "p"})).await, 3, "unauthenticated");
}

#[tokio::test(start_paused = true)]
async fn a_call_after_rights_shrank_is_checked_with_the_rights_left() {
    let harness = harness(config()).await;
    let mut socket = harness.connect();
    assert!(socket.sync(1).await.is_empty());
    // No look at any subscription happens in between: the command itself checks again.
    harness.state.access.turn_auth_on();
    socket
        .send(json!({"id": 2, "type": "call", "procedure": "counter.increment", "name": "q"}))
        .await;
    assert_error(&socket.next().await, 2, "unauthenticated");
    let counter = harness.state.registry.read(&name("q")).await.expect("read");
    assert_eq!(counter.version, 0, "nothing was written");
}

#[tokio::test(start_paused = true)]
async fn shutdown_answers_the_calls_in_flight_before_it_closes() {
    let harness = harness(config()).await;
    let mut socket = harness.connect();
    assert!(socket.sync(1).await.is_empty());
    socket
        .send(json!({"id": 2, "type": "call", "procedure": "counter.increment", "name": "z"}))
        .await;
    socket.run_a_while().await;
    harness.state.shutdown.cancel();
    match socket.next().await {
        Frame::Result { id: 2, result } => assert_eq!(result["version"], 1),
        other => panic!("expected the call's result first, got {other:?}"),
    }
    assert!(matches!(socket.next().await, Frame::Reconnect { .. }));
    assert_eq!(socket.closed().await.map(|frame| frame.code), Some(close::SERVICE_RESTART));
}

#[tokio::test(start_paused = true)]
async fn a_thousand_subscriptions_are_served_by_looking_only_at_those_that_changed() {
    let harness = harness(config()).await;
    let mut socket = harness.connect();
    for id in 0..1000_u64 {
        let reply = socket.subscribe(id, json!({"name": format!("m{id}")})).await;
        assert!(matches!(reply, Frame::Snapshot { .. }), "{reply:?}");
    }
    let metrics = harness.state.metrics.encode();
    assert!(metrics.contains("tally_subscriptions 1000"), "{metrics}");
    for round in 1..=3 {
        for counter in ["m7", "m500", "m999"] {
            harness.increment(counter, 1).await;
        }
        let mut got: Vec<(String, u64)> = Vec::new();
        while got.len() < 3 {
            if let Frame::Update { name, update, .. } = socket.next().await {
                got.push((name, update.version));
            }
        }
        got.sort();
        let expected: Vec<(String, u64)> =
            ["m500", "m7", "m999"].iter().map(|name| ((*name).to_owned(), round)).collect();
        assert_eq!(got, expected);
    }
    // What one subscription keeps on the socket's side, roughly: its entry, its topic
    // listener, and its name in the index (docs/BENCHMARKS.md has measured figures).
    let entry = std::mem::size_of::<Option<super::subscription::Watched>>();
    assert!(entry <= 256, "{entry} bytes per subscription entry");
}
