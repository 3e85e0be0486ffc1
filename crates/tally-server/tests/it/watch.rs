//! Watching counters over WebSocket: snapshot, live updates, resume, ping, limits, shutdown.

use std::time::Duration;

use serde_json::json;
use tally_proto::{ServerMessage, close};
use tally_server::{Config, SqliteOptions};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Ended, TestServer, test_config};

#[tokio::test]
async fn one_watcher_gets_the_snapshot() {
    let server = TestServer::start().await;
    server.increment("snap", 5).await;
    let mut watcher = server.watch("snap").await;
    match watcher.next().await {
        ServerMessage::Snapshot(snapshot) => {
            assert_eq!((snapshot.value, snapshot.version, snapshot.resync), (5, 1, false));
            assert_eq!(snapshot.metadata.name, "snap");
            assert_eq!(snapshot.metadata.operation_count, 1);
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

#[tokio::test]
async fn three_watchers_get_every_update_byte_for_byte_as_answered() {
    let server = TestServer::start().await;
    let mut watchers = Vec::new();
    for _ in 0..3 {
        let mut watcher = server.watch("fan").await;
        assert!(matches!(watcher.next().await, ServerMessage::Snapshot(s) if s.version == 0));
        watchers.push(watcher);
    }
    let mut answers = Vec::new();
    answers.push(server.call_text("increment", json!({"name": "fan"})).await);
    answers.push(server.call_text("decrement", json!({"name": "fan", "amount": 4})).await);
    answers.push(server.call_text("setValue", json!({"name": "fan", "value": 9})).await);
    answers.push(server.call_text("reset", json!({"name": "fan"})).await);
    for watcher in &mut watchers {
        for (version, answer) in (1..).zip(&answers) {
            let (got_version, text) = watcher.next_update().await;
            assert_eq!(got_version, version);
            assert_eq!(&text, answer);
        }
    }
}

/// The seed's "rapid operations" check: 16 writers x 500 increments with 5 watchers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_concurrent_writes_reach_every_watcher_once_in_order() {
    const WRITERS: usize = 16;
    const EACH: usize = 500;
    const TOTAL: u64 = (WRITERS * EACH) as u64;
    let server = std::sync::Arc::new(TestServer::start().await);
    let mut watchers = Vec::new();
    for _ in 0..5 {
        let mut watcher = server.watch("rapid").await;
        watcher.next().await; // snapshot
        watchers.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            let mut last_value = 0;
            while (versions.len() as u64) < TOTAL {
                let text = watcher.next_text().await;
                let ServerMessage::Update(update) = ServerMessage::from_json(&text).expect("json")
                else {
                    panic!("expected an update: {text}");
                };
                versions.push(update.version);
                last_value = update.value;
            }
            (versions, last_value)
        }));
    }
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let server = std::sync::Arc::clone(&server);
        writers.push(tokio::spawn(async move {
            let mut sum = 0;
            for i in 0..EACH {
                let amount = (writer * EACH + i) as i64 % 7 + 1;
                let answer = server.increment("rapid", amount).await;
                assert_eq!(answer["type"], "increment");
                sum += amount;
            }
            sum
        }));
    }
    let mut expected_value = 0;
    for writer in writers {
        expected_value += writer.await.expect("writer");
    }
    let in_order: Vec<u64> = (1..=TOTAL).collect();
    for watcher in watchers {
        let (versions, last_value) = watcher.await.expect("watcher");
        assert!(versions == in_order, "a watcher saw versions out of order, duplicated or missing");
        assert_eq!(last_value, expected_value);
    }
    assert_eq!(server.value("rapid").await, (expected_value, TOTAL));
}

#[tokio::test]
async fn resume_replays_what_was_missed_then_goes_live() {
    let server = TestServer::start().await;
    let mut answers = Vec::new();
    for amount in 1..=5 {
        answers
            .push(server.call_text("increment", json!({"name": "resume", "amount": amount})).await);
    }
    let mut watcher = server.watch_since("resume", 2).await;
    match watcher.next().await {
        ServerMessage::Resumed(resumed) => assert_eq!((resumed.since, resumed.version), (2, 5)),
        other => panic!("expected resumed, got {other:?}"),
    }
    for (version, answer) in (3..=5).zip(&answers[2..]) {
        let (got, text) = watcher.next_update().await;
        assert_eq!(got, version);
        assert_eq!(&text, answer, "a replayed update is the update as first sent");
    }
    let live = server.call_text("increment", json!({"name": "resume"})).await;
    assert_eq!(watcher.next_update().await, (6, live));
}

#[tokio::test]
async fn resume_at_the_current_version_only_goes_live() {
    let server = TestServer::start().await;
    server.increment("current", 1).await;
    let mut watcher = server.watch_since("current", 1).await;
    assert!(
        matches!(watcher.next().await, ServerMessage::Resumed(r) if r.since == 1 && r.version == 1)
    );
    server.increment("current", 1).await;
    assert_eq!(watcher.next_update().await.0, 2);
}

#[tokio::test]
async fn resume_too_old_or_ahead_gets_a_resync_snapshot() {
    let server = TestServer::start_with(
        test_config(),
        SqliteOptions { history_limit: 3, ..SqliteOptions::default() },
    )
    .await;
    for _ in 0..10 {
        server.increment("trimmed", 1).await;
    }
    // History keeps versions 8..=10: resuming after 2 or 6 needs older ones; 11 and 500 are
    // ahead of the counter.
    let mut resynced = Vec::new();
    for since in [2, 6, 11, 500] {
        let mut watcher = server.watch_since("trimmed", since).await;
        match watcher.next().await {
            ServerMessage::Snapshot(snapshot) => {
                assert!(snapshot.resync, "since={since}");
                assert_eq!((snapshot.value, snapshot.version), (10, 10), "since={since}");
            }
            other => panic!("since={since}: expected a resync snapshot, got {other:?}"),
        }
        resynced.push(watcher);
    }
    // After a resync, live updates follow.
    server.increment("trimmed", 1).await;
    for watcher in &mut resynced {
        assert_eq!(watcher.next_update().await.0, 11);
    }
    // Within the kept history (now 9..=11), a resume replays.
    let mut watcher = server.watch_since("trimmed", 8).await;
    assert!(
        matches!(watcher.next().await, ServerMessage::Resumed(r) if r.since == 8 && r.version == 11)
    );
    assert_eq!(watcher.next_update().await.0, 9);
}

#[tokio::test]
async fn ping_gets_pong_and_protocol_pings_are_answered() {
    let server = TestServer::start().await;
    let mut watcher = server.watch("ping").await;
    watcher.next().await;
    watcher.send_text(r#"{"type":"ping"}"#).await;
    assert!(
        matches!(watcher.next().await, ServerMessage::Pong(pong) if pong.timestamp.ends_with('Z'))
    );
    watcher.send(Message::Ping(b"hi".to_vec().into())).await;
    // tungstenite surfaces the pong; `next_text` skips it, so read the raw stream here.
    server.increment("ping", 1).await;
    assert_eq!(watcher.next_update().await.0, 1);
}

#[tokio::test]
async fn the_server_pings_quiet_peers_and_drops_silent_ones() {
    let config = Config { ping_interval: Duration::from_millis(200), ..test_config() };
    let server = TestServer::start_with(config, SqliteOptions::default()).await;
    // A client that answers pings (tungstenite does, while it is read) stays connected.
    let mut alive = server.watch("quiet").await;
    alive.next().await;
    let ((version, _), _) = tokio::join!(alive.next_update(), async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        server.increment("quiet", 1).await
    });
    assert_eq!(version, 1);
    // A raw TCP peer that completed the handshake but never answers is closed with 4001.
    let mut silent = crate::harness::SilentPeer::connect(server.addr, "/ws/counter/quiet").await;
    assert_eq!(silent.wait_for_close_code().await, Some(close::PING_TIMEOUT));
}

#[tokio::test]
async fn bad_messages_get_errors_and_the_socket_stays_usable() {
    let server = TestServer::start().await;
    let mut watcher = server.watch("errors").await;
    watcher.next().await;
    for (message, code) in [
        ("not json", "bad_json"),
        (r#"{"type":"jump"}"#, "unknown_message_type"),
        (r#"["ping"]"#, "invalid_field"),
    ] {
        watcher.send_text(message).await;
        match watcher.next().await {
            ServerMessage::Error(error) => {
                assert_eq!(error.code, code, "{message}");
                assert!(error.message.contains("ping"), "{}", error.message);
            }
            other => panic!("{message}: expected an error, got {other:?}"),
        }
    }
    watcher.send(Message::Binary(vec![1, 2, 3].into())).await;
    assert!(matches!(watcher.next().await, ServerMessage::Error(e) if e.code == "bad_json"));
    watcher.send_text(r#"{"type":"ping"}"#).await;
    assert!(matches!(watcher.next().await, ServerMessage::Pong(_)));
    assert_eq!(server.metric("tally_errors_total{code=\"unknown_message_type\"}").await, 1.0);
}

#[tokio::test]
async fn a_message_just_under_4_kib_is_still_read() {
    // The per-socket read buffer starts small and must grow for a message up to the limit.
    let server = TestServer::start().await;
    let mut watcher = server.watch("near").await;
    watcher.next().await;
    let near = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(4000));
    assert!(near.len() < 4096);
    watcher.send_text(&near).await;
    assert!(matches!(watcher.next().await, ServerMessage::Pong(_)));
}

#[tokio::test]
async fn a_message_over_4_kib_closes_with_1009() {
    let server = TestServer::start().await;
    let mut watcher = server.watch("big").await;
    watcher.next().await;
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(5000));
    watcher.send_text(&big).await;
    assert_eq!(watcher.ended().await, Ended::Closed(close::MESSAGE_TOO_BIG));
}

#[tokio::test]
async fn bad_watch_urls_are_refused_before_the_upgrade() {
    let server = TestServer::start().await;
    for (path, code) in [
        ("/ws/counter/bad%20name", "invalid_name"),
        ("/ws/counter/ok?since=-1", "invalid_field"),
        ("/ws/counter/ok?since=abc", "invalid_field"),
    ] {
        let url = format!("ws://{}{path}", server.addr);
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 400, "{path}");
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).to_string())
                    .unwrap_or_default();
                assert!(body.contains(code), "{path}: {body}");
            }
            other => panic!("{path}: expected an HTTP 400, got {:?}", other.map(|_| ())),
        }
    }
}

#[tokio::test]
async fn a_watcher_that_never_reads_does_not_delay_the_others() {
    let config =
        Config { watch_buffer: 16, send_timeout: Duration::from_millis(500), ..test_config() };
    let server =
        std::sync::Arc::new(TestServer::start_with(config, SqliteOptions::default()).await);
    let name = "s".repeat(128); // long names make big updates, which fill socket buffers sooner
    let mut stuck =
        crate::harness::SilentPeer::connect(server.addr, &format!("/ws/counter/{name}")).await;
    let mut reader = server.watch(&name).await;
    reader.next().await;
    const UPDATES: u64 = 9600;
    let writer = {
        let server = std::sync::Arc::clone(&server);
        let name = name.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for _ in 0..16 {
                let server = std::sync::Arc::clone(&server);
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
        assert_eq!(reader.next_update().await.0, version);
    }
    writer.await.expect("writers");
    // The stuck watcher was cut loose as a slow consumer (closed with 4000, or dropped when
    // even the close could not get through); it is not holding anything up.
    server.wait_for_metric("tally_websocket_closes_total{code=\"4000\"}", 1.0).await;
    assert!(stuck.wait_for_close_code().await.is_none_or(|code| code == close::SLOW_CONSUMER));
}

#[tokio::test]
async fn shutdown_closes_watchers_with_1012() {
    let server = TestServer::start().await;
    let mut watchers = Vec::new();
    for name in ["x", "y"] {
        let mut watcher = server.watch(name).await;
        watcher.next().await;
        watchers.push(watcher);
    }
    let stopping = tokio::spawn(server.stop());
    for watcher in &mut watchers {
        assert_eq!(watcher.ended().await, Ended::Closed(close::SERVICE_RESTART));
    }
    stopping.await.expect("stopped");
}

#[tokio::test]
async fn many_counters_stay_isolated_for_watchers() {
    let server = TestServer::start().await;
    let mut a = server.watch("iso-a").await;
    let mut b = server.watch("iso-b").await;
    a.next().await;
    b.next().await;
    server.increment("iso-a", 1).await;
    server.increment("iso-b", 10).await;
    server.increment("iso-a", 2).await;
    let ServerMessage::Update(first) = a.next().await else { panic!() };
    let ServerMessage::Update(second) = a.next().await else { panic!() };
    assert_eq!((first.value, second.value), (1, 3));
    let ServerMessage::Update(only) = b.next().await else { panic!() };
    assert_eq!((only.value, only.version, only.metadata.name.as_str()), (10, 1, "iso-b"));
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_resume_is_replayed_page_by_page_in_order() {
    const WRITES: u64 = 1234;
    let server = std::sync::Arc::new(TestServer::start().await);
    let mut writers = Vec::new();
    for _ in 0..8 {
        let server = std::sync::Arc::clone(&server);
        writers.push(tokio::spawn(async move {
            for _ in 0..WRITES / 8 {
                server.increment("long", 1).await;
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let total = WRITES / 8 * 8;
    let mut watcher = server.watch_since("long", 0).await;
    assert!(
        matches!(watcher.next().await, ServerMessage::Resumed(r) if r.since == 0 && r.version == total)
    );
    for version in 1..=total {
        let ServerMessage::Update(update) = watcher.next().await else {
            panic!("expected update {version}")
        };
        assert_eq!((update.version, update.value), (version, version as i64));
    }
    server.increment("long", 1).await;
    assert_eq!(watcher.next_update().await.0, total + 1);
}
