//! The version-2 socket (`GET /ws`) against a real server over real sockets: many counters on
//! one socket under concurrent writers, unsubscribe, calls, lag caught up from history, a
//! socket that never reads, presence under churn, filters, conflation, the reconnect delay
//! spread on shutdown, and losing the right to read one counter.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tally_proto::socket::Frame;
use tally_proto::{Grant, Presence, close};
use tally_server::access::{AuthConfig, JwtConfig};
use tally_server::{Config, Quotas, SqliteOptions};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::harness::{Ended, PATIENCE, SilentPeer, TestServer, test_config};

/// A version-2 client: commands with ids, and the frames that came before the one waited for.
struct Client {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read while looking for another (a reply), in order.
    pending: VecDeque<Frame>,
    next_id: u64,
}

impl Client {
    async fn connect(server: &TestServer) -> Self {
        Self::connect_as(server, None).await
    }

    async fn connect_as(server: &TestServer, credential: Option<&str>) -> Self {
        let mut request =
            format!("ws://{}/ws", server.addr).into_client_request().expect("request");
        if let Some(credential) = credential {
            let value = format!("Bearer {credential}").parse().expect("header");
            request.headers_mut().insert("authorization", value);
        }
        let (socket, _) = tokio_tungstenite::connect_async(request).await.expect("upgrade");
        Self { socket, pending: VecDeque::new(), next_id: 1 }
    }

    /// A client whose receive buffer is tiny, so that the server's sends fill the connection
    /// as soon as the client stops reading.
    async fn connect_small_buffer(server: &TestServer) -> Self {
        let tcp = tokio::net::TcpSocket::new_v4().expect("socket");
        tcp.set_recv_buffer_size(4096).expect("small receive buffer");
        let stream = tcp.connect(server.addr).await.expect("connect");
        let url = format!("ws://{}/ws", server.addr);
        let (socket, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .expect("upgrade");
        Self { socket, pending: VecDeque::new(), next_id: 1 }
    }

    /// Sends a command of `kind` with `fields`; its id.
    async fn send(&mut self, kind: &str, fields: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({"id": id, "type": kind});
        let command_fields = command.as_object_mut().expect("object");
        command_fields.extend(fields.as_object().expect("object").clone());
        let text = command.to_string();
        self.socket.send(Message::text(text)).await.expect("send");
        id
    }

    /// The next text frame as sent.
    async fn next_text(&mut self) -> String {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("a frame in time")
                .expect("socket open")
                .expect("frame");
            match message {
                Message::Text(text) => return text.to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected text, got {other:?}"),
            }
        }
    }

    async fn read(&mut self) -> Frame {
        let text = self.next_text().await;
        Frame::from_json(&text).unwrap_or_else(|error| panic!("{error}: {text}"))
    }

    /// The next frame (one read earlier first).
    async fn next(&mut self) -> Frame {
        match self.pending.pop_front() {
            Some(frame) => frame,
            None => self.read().await,
        }
    }

    /// The reply to command `id`; frames before it are kept for `next`.
    async fn reply(&mut self, id: u64) -> Frame {
        if let Some(at) = self.pending.iter().position(|frame| frame.reply_id() == Some(id)) {
            return self.pending.remove(at).expect("present");
        }
        loop {
            let frame = self.read().await;
            if frame.reply_id() == Some(id) {
                return frame;
            }
            self.pending.push_back(frame);
        }
    }

    /// Sends a command and waits for its reply.
    async fn ask(&mut self, kind: &str, fields: Value) -> Frame {
        let id = self.send(kind, fields).await;
        self.reply(id).await
    }

    async fn subscribe(&mut self, fields: Value) -> Frame {
        self.ask("subscribe", fields).await
    }

    /// A ping round trip: the frames that came before the pong.
    async fn sync(&mut self) -> Vec<Frame> {
        let id = self.send("ping", json!({})).await;
        let mut before: Vec<Frame> = self.pending.drain(..).collect();
        loop {
            let frame = self.read().await;
            if matches!(frame, Frame::Pong { id: got, .. } if got == id) {
                return before;
            }
            before.push(frame);
        }
    }

    /// Reads until the socket ends: the close code and reason.
    async fn closed(&mut self) -> (u16, String) {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("the socket ends in time");
            match message {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(Message::Text(text))) => {
                    self.pending.push_back(Frame::from_json(&text).expect("frame"));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (1006, String::new()),
            }
        }
    }

    async fn close(mut self) {
        let _ = self.socket.close(None).await;
        // Reads the server's close frame, completing the handshake.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(PATIENCE, self.socket.next()).await {}
    }
}

#[track_caller]
fn expect_snapshot(frame: &Frame) -> u64 {
    match frame {
        Frame::Snapshot { id: Some(_), snapshot, .. } => snapshot.version,
        other => panic!("expected a snapshot reply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_socket_on_500_counters_sees_each_version_once_in_order_under_8_writers() {
    const COUNTERS: usize = 500;
    const WRITERS: usize = 8;
    const EACH: usize = 500;
    let server = Arc::new(TestServer::start().await);
    let mut client = Client::connect(&server).await;
    // Subscribed all at once: 500 commands in a row, then their replies.
    let mut ids = Vec::new();
    for counter in 0..COUNTERS {
        ids.push(client.send("subscribe", json!({"name": format!("many-{counter}")})).await);
    }
    for id in ids {
        assert_eq!(expect_snapshot(&client.reply(id).await), 0);
    }
    assert_eq!(server.metric("tally_subscriptions").await, COUNTERS as f64);
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let server = Arc::clone(&server);
        writers.push(tokio::spawn(async move {
            let mut writes = vec![0_u64; COUNTERS];
            for i in 0..EACH {
                // Every writer reaches every part of the range, so counters get writes from
                // several writers at once.
                let counter = (i * 7 + writer * 61) % COUNTERS;
                server.increment(&format!("many-{counter}"), 1).await;
                writes[counter] += 1;
            }
            writes
        }));
    }
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for _ in 0..WRITERS * EACH {
        match client.next().await {
            Frame::Update { name, update, conflated: false } => {
                assert_eq!(update.value as u64, update.version, "{name}");
                seen.entry(name).or_default().push(update.version);
            }
            other => panic!("expected an update, got {other:?}"),
        }
    }
    let mut writes = vec![0_u64; COUNTERS];
    for writer in writers {
        for (counter, count) in writer.await.expect("writer").into_iter().enumerate() {
            writes[counter] += count;
        }
    }
    for (counter, count) in writes.into_iter().enumerate() {
        let name = format!("many-{counter}");
        let versions = seen.remove(&name).unwrap_or_default();
        assert_eq!(versions, (1..=count).collect::<Vec<_>>(), "{name}: once each, in order");
        assert_eq!(server.value(&name).await, (count as i64, count));
    }
    assert!(client.sync().await.is_empty(), "nothing more");
}

#[tokio::test]
async fn unsubscribe_stops_exactly_that_counter() {
    let server = TestServer::start().await;
    let mut client = Client::connect(&server).await;
    for name in ["keep", "drop"] {
        expect_snapshot(&client.subscribe(json!({"name": name})).await);
    }
    match client.ask("unsubscribe", json!({"name": "drop"})).await {
        Frame::Unsubscribed { id: Some(_), name, code: None, reason: None } => {
            assert_eq!(name, "drop")
        }
        other => panic!("expected the unsubscribed reply, got {other:?}"),
    }
    server.increment("drop", 1).await;
    server.increment("keep", 1).await;
    server.increment("drop", 1).await;
    match client.next().await {
        Frame::Update { name, update, .. } => {
            assert_eq!((name.as_str(), update.version), ("keep", 1))
        }
        other => panic!("expected keep's update, got {other:?}"),
    }
    assert!(client.sync().await.is_empty(), "nothing of drop");
    match client.ask("unsubscribe", json!({"name": "drop"})).await {
        Frame::Error { error, .. } => assert_eq!(error.code, "not_subscribed"),
        other => panic!("expected not_subscribed, got {other:?}"),
    }
}

#[tokio::test]
async fn calls_are_acked_after_commit_and_bad_calls_get_the_rpcs_errors() {
    let server = TestServer::start().await;
    let mut client = Client::connect(&server).await;
    for expected in 1..=3_i64 {
        let call = json!({"procedure": "counter.increment", "name": "acked", "amount": 2});
        match client.ask("call", call).await {
            Frame::Result { result, .. } => assert_eq!(result["version"], expected),
            other => panic!("expected a result, got {other:?}"),
        }
        // Acknowledged means committed: the RPC reads it at once.
        assert_eq!(server.value("acked").await, (2 * expected, expected as u64));
    }
    let value = client.ask("call", json!({"procedure": "counter.getValue", "name": "acked"})).await;
    assert!(
        matches!(value, Frame::Result { result, .. } if result == json!({"value": 6, "version": 3}))
    );
    // Each bad call is refused with the code and message the RPC answers for the same body.
    for (procedure, body) in [
        ("increment", json!({"name": "acked", "amount": 0})),
        ("increment", json!({"name": "acked", "amount": "2"})),
        ("increment", json!({"name": "bad name"})),
        ("increment", json!({"name": "acked", "extra": true})),
        ("setValue", json!({"name": "acked", "value": 1e300})),
        ("setValue", json!({"name": "acked"})),
        ("getHistory", json!({"name": "acked", "limit": 5000})),
        ("increment", json!({"name": "acked", "amount": 9_007_199_254_740_991_i64})),
    ] {
        let (status, rpc) = server.call(procedure, body.clone()).await;
        assert!(status >= 400, "{procedure} {body}: {rpc}");
        let mut call = body.clone();
        call["procedure"] = json!(format!("counter.{procedure}"));
        match client.ask("call", call).await {
            Frame::Error { id: Some(_), error } => {
                assert_eq!(error.code, rpc["error"]["code"], "{procedure} {body}");
                assert_eq!(error.message, rpc["error"]["message"], "{procedure} {body}");
            }
            other => panic!("{procedure} {body}: expected an error, got {other:?}"),
        }
    }
    assert_eq!(server.value("acked").await, (6, 3), "no refused call changed anything");
    assert!(client.sync().await.is_empty(), "the socket stays usable");
    assert_eq!(server.metric("tally_socket_calls_total{outcome=\"ok\"}").await, 4.0);
}

#[tokio::test]
async fn a_call_retried_with_its_idempotency_key_counts_once_and_gets_the_same_answer() {
    let server = TestServer::start().await;
    let mut client = Client::connect(&server).await;
    let call = json!({"procedure": "counter.increment", "name": "once", "amount": 5, "idempotencyKey": "click-1"});
    let mut answers = Vec::new();
    for _ in 0..2 {
        let id = client.send("call", call.clone()).await;
        let text = loop {
            let text = client.next_text().await;
            if Frame::from_json(&text).expect("frame").reply_id() == Some(id) {
                break text;
            }
        };
        answers.push(text.replacen(&format!("\"id\":{id}"), "\"id\":_", 1));
    }
    assert_eq!(answers[0], answers[1], "the retry gets the first answer, byte for byte");
    assert_eq!(server.value("once").await, (5, 1), "counted once");
    // The same key for another operation is refused, as over the RPC.
    let reused = json!({"procedure": "counter.increment", "name": "once", "amount": 6, "idempotencyKey": "click-1"});
    match client.ask("call", reused).await {
        Frame::Error { error, .. } => assert_eq!(error.code, "idempotency_key_reused"),
        other => panic!("expected idempotency_key_reused, got {other:?}"),
    }
    let read_key = json!({"procedure": "counter.getValue", "name": "once", "idempotencyKey": "k"});
    match client.ask("call", read_key).await {
        Frame::Error { error, .. } => assert_eq!(error.code, "invalid_field"),
        other => panic!("expected invalid_field, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_subscription_is_caught_up_from_history_without_a_close() {
    let config = Config { watch_buffer: 8, send_timeout: Duration::from_secs(30), ..test_config() };
    let server = Arc::new(TestServer::start_with(config, SqliteOptions::default()).await);
    let name = "l".repeat(128); // long names make big updates, which fill the connection sooner
    let mut client = Client::connect_small_buffer(&server).await;
    expect_snapshot(&client.subscribe(json!({"name": name})).await);
    // The client reads nothing while 9600 updates go by.
    const UPDATES: u64 = 9600;
    let mut writers = Vec::new();
    for _ in 0..8 {
        let server = Arc::clone(&server);
        let name = name.clone();
        writers.push(tokio::spawn(async move {
            for _ in 0..UPDATES / 8 {
                server.increment(&name, 1).await;
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    for version in 1..=UPDATES {
        match client.next().await {
            Frame::Update { update, conflated: false, .. } => assert_eq!(update.version, version),
            other => panic!("expected update {version}, got {other:?}"),
        }
    }
    assert!(client.sync().await.is_empty(), "not closed");
    assert!(
        server.metric("tally_subscription_catch_ups_total").await >= 1.0,
        "the subscription lagged and was caught up from history"
    );
    assert_eq!(server.metric("tally_websocket_closes_total{code=\"4000\"}").await, 0.0);
}

#[tokio::test]
async fn a_socket_that_never_reads_is_closed_and_another_on_the_counter_is_unaffected() {
    let config =
        Config { watch_buffer: 16, send_timeout: Duration::from_millis(500), ..test_config() };
    let server = Arc::new(TestServer::start_with(config, SqliteOptions::default()).await);
    let name = "n".repeat(128);
    let mut stuck = SilentPeer::connect(server.addr, "/ws").await;
    stuck.send_text(&json!({"id": 1, "type": "subscribe", "name": name}).to_string()).await;
    let mut reader = Client::connect(&server).await;
    expect_snapshot(&reader.subscribe(json!({"name": name})).await);
    const UPDATES: u64 = 9600;
    let writer = {
        let server = Arc::clone(&server);
        let name = name.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for _ in 0..16 {
                let server = Arc::clone(&server);
                let name = name.clone();
                tasks.push(tokio::spawn(async move {
                    for _ in 0..UPDATES / 16 {
                        server.increment(&name, 1).await;
                    }
                }));
            }
            for task in tasks {
                task.await.expect("writer");
            }
        })
    };
    for version in 1..=UPDATES {
        match reader.next().await {
            Frame::Update { update, .. } => assert_eq!(update.version, version),
            other => panic!("expected update {version}, got {other:?}"),
        }
    }
    writer.await.expect("writers");
    server.wait_for_metric("tally_websocket_closes_total{code=\"4000\"}", 1.0).await;
    assert!(stuck.wait_for_close_code().await.is_none_or(|code| code == close::SLOW_CONSUMER));
    assert!(reader.sync().await.is_empty(), "the reader goes on");
}

#[tokio::test]
async fn presence_under_churn_ends_at_the_true_numbers() {
    let server = TestServer::start().await;
    let mut watcher = Client::connect(&server).await;
    expect_snapshot(&watcher.subscribe(json!({"name": "room", "presence": true})).await);
    assert!(matches!(
        watcher.next().await,
        Frame::Presence { presence: Presence { watchers: 1, users: 1 }, .. }
    ));
    let mut stayed = Vec::new();
    for round in 0..30 {
        let mut other = Client::connect(&server).await;
        expect_snapshot(&other.subscribe(json!({"name": "room"})).await);
        if round % 6 == 0 {
            stayed.push(other);
        } else {
            other.close().await;
        }
    }
    // The watcher, the five that stayed, and a v1 watcher: each anonymous socket is a user.
    let mut v1 = server.watch("room").await;
    v1.next().await;
    let truth = Presence { watchers: 7, users: 7 };
    let deadline = Instant::now() + PATIENCE;
    let mut last_push_at = None;
    loop {
        assert!(Instant::now() < deadline, "presence never reached {truth:?}");
        match watcher.next().await {
            Frame::Presence { name, presence } => {
                assert_eq!(name, "room");
                let now = Instant::now();
                if let Some(last) = last_push_at {
                    // Pushes come from a once-a-second tick (with some scheduling slack).
                    assert!(now - last >= Duration::from_millis(800), "pushed too often");
                }
                last_push_at = Some(now);
                if presence == truth {
                    break;
                }
            }
            other => panic!("expected presence pushes, got {other:?}"),
        }
    }
    let answer = server.ok("getPresence", json!({"name": "room"})).await;
    assert_eq!(answer, json!({"watchers": 7, "users": 7}));
    // That was the last push: nothing changes any more.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(watcher.sync().await.is_empty());
}

#[tokio::test]
async fn a_types_filter_delivers_only_those_types() {
    let server = TestServer::start().await;
    let mut client = Client::connect(&server).await;
    expect_snapshot(
        &client.subscribe(json!({"name": "typed", "types": ["setValue", "reset"]})).await,
    );
    server.increment("typed", 1).await;
    server.ok("setValue", json!({"name": "typed", "value": 5})).await;
    server.increment("typed", 2).await;
    server.ok("reset", json!({"name": "typed"})).await;
    server.ok("decrement", json!({"name": "typed"})).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        match client.next().await {
            Frame::Update { update, .. } => got.push((update.kind.as_str(), update.version)),
            other => panic!("expected an update, got {other:?}"),
        }
    }
    assert_eq!(got, vec![("setValue", 2), ("reset", 4)]);
    assert!(client.sync().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflation_bounds_the_rate_and_delivers_the_final_state() {
    const RATE: f64 = 5.0;
    const WRITES: u64 = 800;
    let server = Arc::new(TestServer::start().await);
    let mut client = Client::connect(&server).await;
    expect_snapshot(&client.subscribe(json!({"name": "hot", "maxRate": RATE})).await);
    let start = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..8 {
        let server = Arc::clone(&server);
        writers.push(tokio::spawn(async move {
            for _ in 0..WRITES / 8 {
                server.increment("hot", 1).await;
            }
        }));
    }
    let mut received = 0;
    let mut last = 0;
    while last < WRITES {
        match client.next().await {
            Frame::Update { update, conflated: true, .. } => {
                assert!(update.version > last, "only forward");
                assert_eq!(update.value as u64, update.version);
                last = update.version;
                received += 1;
            }
            other => panic!("expected conflated updates, got {other:?}"),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    for writer in writers {
        writer.await.expect("writer");
    }
    // At most RATE a second (one at the start, then one per interval).
    assert!(f64::from(received) <= elapsed * RATE + 2.0, "{received} in {elapsed:.1} s");
    assert!(received < WRITES as u32 / 4, "conflated: {received} sends for {WRITES} writes");
    assert!(client.sync().await.is_empty(), "the final state was the last");
}

#[tokio::test]
async fn shutdown_spreads_the_advised_reconnect_delay_across_sockets() {
    let spread = Duration::from_secs(2);
    let config = Config { reconnect_spread: spread, ..test_config() };
    let server = TestServer::start_with(config, SqliteOptions::default()).await;
    let mut clients = Vec::new();
    for socket in 0..30 {
        let mut client = Client::connect(&server).await;
        expect_snapshot(&client.subscribe(json!({"name": format!("down-{socket}")})).await);
        clients.push(client);
    }
    let mut v1 = server.watch("down-0").await;
    v1.next().await;
    let stopping = tokio::spawn(server.stop());
    let mut delays = Vec::new();
    for client in &mut clients {
        let (code, reason) = client.closed().await;
        assert_eq!(code, close::SERVICE_RESTART);
        let Some(Frame::Reconnect { after_ms, .. }) = client.pending.pop_front() else {
            panic!("expected a reconnect push before the close")
        };
        assert!(reason.contains(&format!("reconnect after {after_ms} ms")), "{reason}");
        assert!(after_ms <= 2000);
        delays.push(after_ms);
    }
    assert!(v1.ended().await == Ended::Closed(close::SERVICE_RESTART));
    stopping.await.expect("stopped");
    delays.sort_unstable();
    let (low, high) = (delays[0], delays[delays.len() - 1]);
    assert!(high - low >= 1000, "the delays cover a good part of 0..=2000 ms: {delays:?}");
    delays.dedup();
    assert!(delays.len() >= 20, "not one value for everyone: {delays:?}");
}

#[tokio::test]
async fn a_v1_close_on_shutdown_carries_the_reconnect_delay_too() {
    let server = TestServer::start().await;
    let url = format!("ws://{}/ws/counter/v1down", server.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("upgrade");
    socket.next().await; // the snapshot
    let stopping = tokio::spawn(server.stop());
    let reason = loop {
        match tokio::time::timeout(PATIENCE, socket.next()).await.expect("in time") {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), close::SERVICE_RESTART);
                break frame.reason.to_string();
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let after_ms: u64 = reason
        .split("reconnect after ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(" ms"))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no delay in {reason:?}"));
    assert!(after_ms <= 5000);
    stopping.await.expect("stopped");
}

const SECRET: &[u8] = b"a test secret of at least thirty-two bytes!";

fn admin_token() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let claims =
        json!({"sub": "root", "iat": now, "exp": now + 3600, "tally": {"grants": ["*=admin"]}});
    let key = EncodingKey::from_secret(SECRET).expect("key");
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("sign")
}

async fn rpc(server: &TestServer, procedure: &str, body: &Value, credential: &str) -> Value {
    let response = reqwest::Client::new()
        .post(server.url(&format!("/rpc/{procedure}")))
        .header("content-type", "application/json")
        .bearer_auth(credential)
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200, "{procedure} {body}");
    response.json().await.expect("json")
}

/// A server that verifies HS256 tokens signed with `SECRET`, where anonymous has `anonymous`.
async fn start_with_jwt(anonymous: &str) -> TestServer {
    let mut jwt = JwtConfig::default();
    jwt.add_secret(SECRET).expect("secret");
    let auth = AuthConfig {
        jwt,
        anonymous: Some(Grant::parse_all(&[anonymous]).expect("grant")),
        ..AuthConfig::default()
    };
    TestServer::start_with(Config { auth, ..test_config() }, SqliteOptions::default()).await
}

#[tokio::test]
async fn losing_the_right_to_read_ends_that_subscription_and_the_socket_goes_on() {
    let server = start_with_jwt("public:*=read").await;
    let admin = admin_token();
    let body = json!({"name": "reader", "grants": ["private:*=read"]});
    let created = rpc(&server, "key.create", &body, &admin).await;
    let key = created["key"].as_str().expect("key").to_owned();
    let mut client = Client::connect_as(&server, Some(&key)).await;
    for name in ["private:x", "public:y"] {
        expect_snapshot(&client.subscribe(json!({"name": name})).await);
    }
    rpc(&server, "key.revoke", &json!({"name": "reader"}), &admin).await;
    for name in ["private:x", "public:y"] {
        rpc(&server, "counter.increment", &json!({"name": name}), &admin).await;
    }
    let mut ended = None;
    let mut updates = Vec::new();
    while ended.is_none() || updates.is_empty() {
        match client.next().await {
            Frame::Unsubscribed { id: None, name, code, reason } => {
                ended = Some((name, code, reason.unwrap_or_default()));
            }
            Frame::Update { name, .. } => updates.push(name),
            other => panic!("unexpected {other:?}"),
        }
    }
    let (name, code, reason) = ended.expect("an unsubscribed push");
    assert_eq!((name.as_str(), code.as_deref()), ("private:x", Some("unauthenticated")));
    assert!(reason.contains("revoked"), "{reason}");
    assert_eq!(updates, vec!["public:y"], "nothing more of private:x; public:y goes on");
    assert!(client.sync().await.is_empty(), "the socket goes on");
}

/// Issue 16: over the socket, a call that would create a counter at `--max-counters` gets the
/// RPC's error, `quota_exceeded`; the socket stays and calls on existing counters work.
#[tokio::test]
async fn issue_16_a_call_at_max_counters_is_refused_quota_exceeded_and_the_socket_stays() {
    let quotas = Quotas { max_counters: Some(1), max_database_bytes: None };
    let options = SqliteOptions { quotas, ..SqliteOptions::default() };
    let server = TestServer::start_with(test_config(), options).await;
    let mut client = Client::connect(&server).await;
    let create = |name: &str| json!({"procedure": "counter.increment", "name": name});
    assert!(matches!(client.ask("call", create("only")).await, Frame::Result { .. }));
    match client.ask("call", create("another")).await {
        Frame::Error { error, .. } => {
            assert_eq!(error.code, "quota_exceeded");
            assert!(!error.temporary);
            assert!(error.message.contains("--max-counters quota is 1"), "{}", error.message);
        }
        other => panic!("expected quota_exceeded, got {other:?}"),
    }
    match client.ask("call", create("only")).await {
        Frame::Result { result, .. } => assert_eq!(result["value"], 2),
        other => panic!("the existing counter refused a write: {other:?}"),
    }
}

/// Issue 16, the admin page: `watchServer` answers the server's own figures and pushes them
/// once a second; they move with the load (operations per second after writes), and only a
/// principal with admin on every counter may watch them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_16_watch_server_pushes_live_figures_to_admins_and_refuses_others() {
    let server = start_with_jwt("*=read").await;
    let admin = admin_token();

    // Refused: anonymous may read every counter but is not admin; a key with admin on some
    // counters only is not enough either. Nothing of the server is sent.
    let mut anonymous = Client::connect(&server).await;
    match anonymous.ask("watchServer", json!({})).await {
        Frame::Error { id: Some(_), error } => {
            assert_eq!(error.code, "unauthenticated", "{error:?}");
            assert!(error.message.contains("admin on every counter"), "{error:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let body = json!({"name": "partial", "grants": ["shop:*=admin"]});
    let key =
        rpc(&server, "key.create", &body, &admin).await["key"].as_str().expect("key").to_owned();
    let mut partial = Client::connect_as(&server, Some(&key)).await;
    match partial.ask("watchServer", json!({})).await {
        Frame::Error { id: Some(_), error } => assert_eq!(error.code, "forbidden", "{error:?}"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    let mut client = Client::connect_as(&server, Some(&admin)).await;
    let first = match client.ask("watchServer", json!({})).await {
        Frame::ServerStats { id: Some(_), stats } => stats,
        other => panic!("expected a serverStats reply, got {other:?}"),
    };
    assert!(first.connections >= 3, "three sockets are open: {first:?}");
    assert!(first.websockets >= 3, "{first:?}");
    assert!(first.ready, "{first:?}");
    match client.ask("watchServer", json!({})).await {
        Frame::Error { error, .. } => assert_eq!(error.code, "already_subscribed", "{error:?}"),
        other => panic!("one watch per socket, got {other:?}"),
    }

    // Writes while watching: a push within a few seconds counts them.
    let writer = {
        let admin = admin.clone();
        let url = server.url("/rpc/counter.increment");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for _ in 0..300 {
                let response = http
                    .post(&url)
                    .bearer_auth(&admin)
                    .json(&json!({"name": "busy"}))
                    .send()
                    .await
                    .expect("increment");
                assert_eq!(response.status().as_u16(), 200);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pushes = 0;
    let busy = loop {
        assert!(Instant::now() < deadline, "no push counted the writes ({pushes} pushes)");
        match client.next().await {
            Frame::ServerStats { id: None, stats } => {
                pushes += 1;
                if stats.ops_per_second > 0.0 {
                    break stats;
                }
            }
            other => panic!("expected serverStats pushes, got {other:?}"),
        }
    };
    writer.await.expect("writer");
    assert!(busy.p99_ms.is_some_and(|p99| p99 > 0.0), "{busy:?}");
    assert!(busy.commits_per_second > 0.0, "{busy:?}");
    assert!(busy.commit_ms.is_some_and(|ms| ms > 0.0), "{busy:?}");
    assert!(busy.ready && busy.ready_reason.is_none(), "{busy:?}");
    let metrics = reqwest::Client::new()
        .get(server.url("/metrics"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert_eq!(crate::harness::sample(&metrics, "tally_server_watchers"), Some(1.0), "counted");

    // Unwatched: the reply, then nothing more of the server.
    match client.ask("unwatchServer", json!({})).await {
        Frame::ServerUnwatched { .. } => {}
        other => panic!("expected serverUnwatched, got {other:?}"),
    }
    client.pending.retain(|frame| !matches!(frame, Frame::ServerStats { id: None, .. }));
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let after = client.sync().await;
    assert!(after.is_empty(), "no push after unwatchServer: {after:?}");
    match client.ask("unwatchServer", json!({})).await {
        Frame::Error { error, .. } => assert_eq!(error.code, "not_subscribed", "{error:?}"),
        other => panic!("expected not_subscribed, got {other:?}"),
    }

    // An admin key revoked while its socket watches: the watch ends with a push saying why,
    // and nothing of the server follows.
    let body = json!({"name": "watcher", "grants": ["*=admin"]});
    let key =
        rpc(&server, "key.create", &body, &admin).await["key"].as_str().expect("key").to_owned();
    let mut watcher = Client::connect_as(&server, Some(&key)).await;
    assert!(matches!(
        watcher.ask("watchServer", json!({})).await,
        Frame::ServerStats { id: Some(_), .. }
    ));
    rpc(&server, "key.revoke", &json!({"name": "watcher"}), &admin).await;
    let ended = loop {
        match watcher.next().await {
            Frame::ServerStats { id: None, .. } => continue,
            Frame::ServerUnwatched { id: None, code, reason } => break (code, reason),
            other => panic!("expected serverUnwatched, got {other:?}"),
        }
    };
    assert_eq!(ended.0.as_deref(), Some("unauthenticated"), "{ended:?}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let after = watcher.sync().await;
    assert!(after.is_empty(), "nothing after the watch ended: {after:?}");
}
