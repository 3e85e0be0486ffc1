//! Limits that keep one client from hurting the others: connections in total and per client
//! address, and deadlines for slow requests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tally_server::{Config, SqliteOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{PATIENCE, TestServer, Watcher, raw_get, sample, test_config};

/// A TCP connection to `server` from source address 127.0.0.`last`.
async fn connect_from(server: SocketAddr, last: u8) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), 0)).expect("bind");
    socket.connect(server).await.expect("connect")
}

/// Whether the server closes `stream` (without sending anything first) within PATIENCE.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut byte = [0_u8; 1];
    matches!(tokio::time::timeout(PATIENCE, stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
}

/// Whether `stream` is served: a health check gets an answer.
async fn served(stream: &mut TcpStream) -> bool {
    let request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut answer = vec![0_u8; 256];
    match tokio::time::timeout(PATIENCE, stream.read(&mut answer)).await {
        Ok(Ok(read)) if read > 0 => answer[..read].starts_with(b"HTTP/1.1 200"),
        _ => false,
    }
}

#[tokio::test]
async fn connections_per_client_address_are_limited_and_counted() {
    let config = Config { max_connections_per_ip: 3, ..test_config() };
    let server = TestServer::start_with(config, SqliteOptions::default()).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from(server.addr, 5).await;
        assert!(served(&mut stream).await);
        held.push(stream);
    }
    let mut fourth = connect_from(server.addr, 5).await;
    assert!(closed_by_server(&mut fourth).await, "a fourth connection from one address was kept");
    // Another address is not affected.
    assert!(served(&mut connect_from(server.addr, 6).await).await);
    assert_eq!(server.metric("tally_connections_refused_total{limit=\"per_ip\"}").await, 1.0);

    // A place frees when a connection closes.
    held.pop();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut again = connect_from(server.addr, 5).await;
        if served(&mut again).await {
            break;
        }
        assert!(Instant::now() < deadline, "the freed place was not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn websockets_count_until_they_close() {
    let config = Config { max_connections_per_ip: 2, ..test_config() };
    let server = TestServer::start_with(config, SqliteOptions::default()).await;
    let url = |name: &str| format!("ws://{}/ws/counter/{name}", server.addr);
    let mut first = Watcher::connect(&url("a")).await;
    first.next().await;
    let mut second = Watcher::connect(&url("b")).await;
    second.next().await;
    // Both upgraded connections still hold their places.
    let mut third = connect_from(server.addr, 1).await;
    assert!(closed_by_server(&mut third).await);
    // Seen from another address: the two sockets, and this request's own connection.
    let (status, metrics) = raw_get(connect_from(server.addr, 9).await, "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    assert_eq!(sample(&metrics, "tally_connections_open"), Some(3.0), "{metrics}");
}

#[tokio::test]
async fn the_total_number_of_connections_is_limited() {
    let config = Config { max_connections: 2, ..test_config() };
    let server = TestServer::start_with(config, SqliteOptions::default()).await;
    let mut one = connect_from(server.addr, 11).await;
    let mut two = connect_from(server.addr, 12).await;
    assert!(served(&mut one).await && served(&mut two).await);
    assert!(closed_by_server(&mut connect_from(server.addr, 13).await).await);
    drop((one, two));
    // Reading the metric needs a connection of its own, once the two places are free.
    let deadline = Instant::now() + PATIENCE;
    while server.metric_if_reachable("tally_connections_refused_total{limit=\"total\"}").await
        != Some(1.0)
    {
        assert!(Instant::now() < deadline, "the refusal was not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_client_that_sends_nothing_or_trickles_headers_is_dropped() {
    let config = Config { header_timeout: Duration::from_millis(300), ..test_config() };
    let server = TestServer::start_with(config, SqliteOptions::default()).await;
    let mut silent = connect_from(server.addr, 21).await;
    let started = Instant::now();
    assert!(closed_by_server(&mut silent).await, "a silent connection was kept");
    assert!(started.elapsed() >= Duration::from_millis(250), "dropped before the timeout");

    let mut trickling = connect_from(server.addr, 22).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut dropped = false;
    for byte in request {
        if trickling.write_all(&[*byte]).await.is_err() {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped || closed_by_server(&mut trickling).await, "a trickling client was served");
}

#[tokio::test]
async fn a_body_sent_byte_by_byte_gets_408_and_changes_nothing() {
    let config = Config { request_timeout: Duration::from_millis(300), ..test_config() };
    let server = TestServer::start_with(config, SqliteOptions::default()).await;
    let body = br#"{"name":"slow"}"#;
    let mut stream = connect_from(server.addr, 31).await;
    let head = format!(
        "POST /rpc/counter.increment HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let mut answer = Vec::new();
    for byte in body {
        let _ = stream.write_all(&[*byte]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut chunk = [0_u8; 1024];
        if let Ok(Ok(read)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut chunk)).await
        {
            answer.extend_from_slice(&chunk[..read]);
            if read == 0 || !answer.is_empty() {
                break;
            }
        }
    }
    if answer.is_empty() {
        let mut chunk = [0_u8; 1024];
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("an answer")
            .expect("read");
        answer.extend_from_slice(&chunk[..read]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert_eq!(server.value("slow").await, (0, 0));
}

#[tokio::test]
async fn watchers_per_counter_are_limited() {
    let config = Config { max_watchers_per_counter: 2, ..test_config() };
    let server = TestServer::start_with(config, SqliteOptions::default()).await;
    let url = |name: &str| format!("ws://{}/ws/counter/{name}", server.addr);
    let mut first = Watcher::connect(&url("busy")).await;
    first.next().await;
    let mut second = Watcher::connect(&url("busy")).await;
    second.next().await;
    match tokio_tungstenite::connect_async(url("busy")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            assert!(
                body.contains("too_many_watchers") && body.contains("\"temporary\":true"),
                "{body}"
            );
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    // Other counters are not affected, and a place frees when a watcher leaves.
    Watcher::connect(&url("quiet")).await.next().await;
    first.close().await;
    let deadline = Instant::now() + PATIENCE;
    while tokio_tungstenite::connect_async(url("busy")).await.is_err() {
        assert!(Instant::now() < deadline, "the freed place was not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.metric("tally_errors_total{code=\"too_many_watchers\"}").await, 1.0);
}

#[tokio::test]
async fn a_client_sending_too_many_messages_is_closed_with_1008() {
    let config = Config { max_messages_per_second: 5, ..test_config() };
    let server = TestServer::start_with(config, SqliteOptions::default()).await;
    let mut watcher = server.watch("chatty").await;
    watcher.next().await;
    for _ in 0..10 {
        watcher.send_text(r#"{"type":"ping"}"#).await;
    }
    // The first five are answered, then the socket is closed.
    assert_eq!(
        watcher.ended().await,
        crate::harness::Ended::Closed(tally_proto::close::POLICY_VIOLATION)
    );
    assert_eq!(server.metric("tally_websocket_closes_total{code=\"1008\"}").await, 1.0);
}

#[tokio::test]
async fn a_client_that_keeps_sending_still_gets_the_1008_close_frame() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let config = Config { max_messages_per_second: 5, ..test_config() };
    let server = TestServer::start_with(config, SqliteOptions::default()).await;
    let url = format!("ws://{}/ws/counter/flood", server.addr);
    let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    let (mut sink, mut stream) = socket.split();
    // Pings far past the limit, still being sent while the server closes: data it never read
    // must not turn its close into a connection reset, or the client would take it for a lost
    // network (1006) and reconnect.
    let flood = tokio::spawn(async move {
        for _ in 0..5_000 {
            if sink.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
                break;
            }
        }
    });
    let code = loop {
        match tokio::time::timeout(PATIENCE, stream.next()).await.expect("the socket ends in time")
        {
            Some(Ok(Message::Close(frame))) => break frame.map(|frame| u16::from(frame.code)),
            Some(Ok(_)) => continue,
            Some(Err(error)) => panic!("the connection failed instead of closing: {error}"),
            None => break None,
        }
    };
    assert_eq!(code, Some(tally_proto::close::POLICY_VIOLATION));
    // And the connection then ends cleanly, not with a reset.
    let _ = flood.await;
    while let Some(next) = tokio::time::timeout(PATIENCE, stream.next()).await.expect("ends") {
        assert!(next.is_ok(), "the connection was reset after the close frame: {next:?}");
    }
}

/// A counter `name` with `count` updates (increments by 1).
async fn written(server: &TestServer, name: &str, count: u64) -> Vec<String> {
    let mut answers = Vec::new();
    for _ in 0..count {
        answers.push(server.call_text("increment", serde_json::json!({"name": name})).await);
    }
    answers
}

/// A version-1 watcher of `name` resuming with `since=0`, from source address 127.0.0.`last`.
async fn resume_from(server: &TestServer, last: u8, name: &str) -> Watcher {
    let stream = connect_from(server.addr, last).await;
    Watcher::over(stream, &format!("ws://{}/ws/counter/{name}?since=0", server.addr)).await
}

/// Issue 16: a `since=0` resume is a request of a few hundred bytes answered with the whole
/// history; replays are bounded per client address: past the bound a version-1 resume waits for
/// a place up to `--send-timeout`, then is closed 1013 with a reconnect delay (so that a client
/// that never reads is gone within `--send-timeout`), while other addresses still get their
/// replay. The byte rate is made small here so that the first replay (about 10 KB at 4 KiB a
/// second) is still running when the others come and after the short send timeout.
#[tokio::test]
async fn issue_16_replays_are_bounded_per_address_and_past_it_are_told_to_come_back() {
    const UPDATES: u64 = 40;
    let config = Config {
        max_replays_per_address: 1,
        replay_bytes_per_second: 4096,
        send_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let server = TestServer::start_with(config, SqliteOptions::default()).await;
    let answers = written(&server, "long", UPDATES).await;

    let mut first = resume_from(&server, 1, "long").await;
    assert!(
        matches!(first.next().await, tally_proto::ServerMessage::Resumed(r) if r.version == UPDATES)
    );
    assert_eq!(first.next_update().await, (1, answers[0].clone()));
    assert_eq!(server.metric("tally_replays_running").await, 1.0);

    // The same address again, while the first replay runs: nothing replayed, closed 1013 after
    // the wait, with the delay to come back after in its reason.
    let stream = connect_from(server.addr, 1).await;
    let url = format!("ws://{}/ws/counter/long?since=0", server.addr);
    let (mut second, _) =
        tokio_tungstenite::client_async(url, stream).await.expect("the upgrade is answered");
    match tokio::time::timeout(PATIENCE, second.next()).await.expect("in time") {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), tally_proto::close::TRY_AGAIN_LATER);
            assert!(frame.reason.contains("--max-replays-per-address"), "{}", frame.reason);
            assert!(frame.reason.contains("reconnect"), "{}", frame.reason);
        }
        other => panic!("expected close 1013 and nothing before it, got {other:?}"),
    }
    assert_eq!(server.metric("tally_replays_refused_total{limit=\"per_address\"}").await, 1.0);
    let live = server.call_text("increment", serde_json::json!({"name": "long"})).await;

    // Another address is not refused for it.
    let mut other = resume_from(&server, 2, "long").await;
    assert!(
        matches!(other.next().await, tally_proto::ServerMessage::Resumed(r) if r.version == UPDATES + 1)
    );

    // The first replay goes on to the end, every update as first sent, then live.
    for (version, answer) in (2..).zip(&answers[1..]) {
        assert_eq!(first.next_update().await, (version, answer.clone()));
    }
    assert_eq!(first.next_update().await, (UPDATES + 1, live));
    for (version, answer) in (1..).zip(&answers) {
        assert_eq!(other.next_update().await, (version, answer.clone()));
    }
    // The byte rate made them wait; each place was given back at the end.
    assert!(server.metric("tally_replay_waits_total").await >= 1.0);
    server.wait_for_metric("tally_replays_running", 0.0).await;
    let mut again = resume_from(&server, 1, "long").await;
    assert!(matches!(again.next().await, tally_proto::ServerMessage::Resumed(_)));
}

/// Issue 16: replays are bounded in total too, whatever the address. A version-2 resume past
/// the bound waits for the running replay to end, then gets its own replay; one that finds no
/// place within `--send-timeout` gets a resync snapshot, and the socket goes on.
#[tokio::test]
async fn issue_16_replays_are_bounded_in_total_and_a_resume_waits_its_turn() {
    let config = Config { max_replays: 1, replay_bytes_per_second: 4096, ..test_config() };
    let server = TestServer::start_with(config, SqliteOptions::default()).await;
    let answers = written(&server, "total", 40).await;
    let mut first = resume_from(&server, 1, "total").await;
    assert!(matches!(first.next().await, tally_proto::ServerMessage::Resumed(_)));
    assert_eq!(first.next_update().await.0, 1);

    // From another address, while the only place is taken: it waits, and is replayed after.
    let stream = connect_from(server.addr, 3).await;
    let mut socket = Watcher::over(stream, &format!("ws://{}/ws", server.addr)).await;
    socket.send_text(r#"{"id":1,"type":"subscribe","name":"total","since":0}"#).await;
    for version in 2..=40 {
        assert_eq!(first.next_update().await.0, version);
    }
    let reply = socket.next_text().await;
    assert!(reply.contains(r#""type":"resumed""#), "expected resumed, got {reply}");
    for answer in &answers {
        let update = socket.next_text().await;
        // Version 2 names the counter first; the rest is the update as first answered.
        assert!(update.ends_with(&answer[1..]), "{update} is not {answer}");
    }
    assert_eq!(server.metric("tally_replays_refused_total{limit=\"total\"}").await, 0.0);
}

/// Issue 16: a resume that finds no place within `--send-timeout` gets a resync snapshot, on a
/// version-2 socket too, which goes on.
#[tokio::test]
async fn issue_16_a_version_2_resume_past_the_bound_resyncs_and_the_socket_goes_on() {
    let config = Config {
        max_replays: 1,
        replay_bytes_per_second: 4096,
        send_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let server = TestServer::start_with(config, SqliteOptions::default()).await;
    written(&server, "busy", 40).await;
    let mut first = resume_from(&server, 1, "busy").await;
    assert!(matches!(first.next().await, tally_proto::ServerMessage::Resumed(_)));
    assert_eq!(first.next_update().await.0, 1);

    let stream = connect_from(server.addr, 3).await;
    let mut socket = Watcher::over(stream, &format!("ws://{}/ws", server.addr)).await;
    socket.send_text(r#"{"id":1,"type":"subscribe","name":"busy","since":0}"#).await;
    let reply = socket.next_text().await;
    assert!(
        reply.contains(r#""type":"snapshot""#) && reply.contains(r#""resync":true"#),
        "expected a resync snapshot, got {reply}"
    );
    assert_eq!(server.metric("tally_replays_refused_total{limit=\"total\"}").await, 1.0);
    socket.send_text(r#"{"id":2,"type":"ping"}"#).await;
    assert!(socket.next_text().await.contains(r#""type":"pong""#));
}
