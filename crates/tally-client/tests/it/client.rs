//! The client against a real server in the same process: typed calls, typed errors, and a watch
//! that survives a server restart with no gap and no duplicate.

use std::time::Duration;

use futures_util::StreamExt;
use tally_client::{Backoff, Bounds, Client, ClientError, OpKind, WatchEvent, WatchOptions, Write};

use crate::support::{next, serve};

#[tokio::test]
async fn typed_calls_and_typed_errors() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serve(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let client = Client::new(&format!("http://{addr}/")).expect("client");

    let update = client.increment("seats", 10).await.expect("increment");
    assert_eq!((update.kind, update.value, update.version), (OpKind::Increment, 10, 1));
    assert_eq!(client.decrement("seats", 3).await.expect("decrement").value, 7);
    assert_eq!(client.set_value("seats", -2).await.expect("set").previous_value, 7);
    assert_eq!(client.reset("seats").await.expect("reset").value, 0);
    let value = client.get_value("seats").await.expect("value");
    assert_eq!((value.value, value.version), (0, 4));
    assert_eq!(client.get_metadata("seats").await.expect("metadata").operation_count, 4);
    let page = client.get_history("seats", Some(3), None).await.expect("history");
    assert_eq!(page.entries.iter().map(|entry| entry.version).collect::<Vec<_>>(), vec![4, 3, 2]);
    assert_eq!(page.next, Some(2));

    match client.increment("bad name", 1).await {
        Err(ClientError::Rejected { status, code, message, temporary, .. }) => {
            assert_eq!((status, code.as_str(), temporary), (400, "invalid_name", false));
            assert!(message.contains("A-Z a-z 0-9"), "{message}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let error = client.set_value("seats", 1 << 60).await.expect_err("out of range");
    assert_eq!(error.code(), Some("out_of_range"));
    assert!(!error.is_connect());

    server.stop().await;
    let error = client.get_value("seats").await.expect_err("server is gone");
    assert!(error.is_connect(), "{error:?}");
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
}

#[test]
fn only_http_and_https_base_urls_are_accepted() {
    for url in ["ftp://example.com", "localhost:8094", "http://", "https://", "http://host/path"] {
        assert!(matches!(Client::new(url), Err(ClientError::InvalidUrl { .. })), "{url}");
    }
    assert_eq!(
        Client::new("http://127.0.0.1:8094/").expect("ok").base_url(),
        "http://127.0.0.1:8094"
    );
    assert_eq!(Client::new("https://example.com").expect("ok").base_url(), "https://example.com");
}

/// The watch reconnects by itself after a restart and resumes with `since`: the changes made
/// while it was away arrive once each, in order, then live ones.
/// Compare-and-set over the RPC and the socket: a write at the expected version applies, a
/// stale one is the typed `VersionConflict` with the counter's version, and changes nothing.
#[tokio::test]
async fn a_write_expecting_a_version_applies_or_says_where_the_counter_is() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serve(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let client = Client::new(&format!("http://{addr}/")).expect("client");
    let stocked = client.write(&Write::set_value("stock", 5).expecting_version(0)).await;
    assert_eq!(stocked.expect("created at version 0").version, 1);
    match client.write(&Write::decrement("stock", 1).expecting_version(0)).await {
        Err(ClientError::VersionConflict { current_version, message }) => {
            assert_eq!(current_version, 1);
            assert!(message.contains("not the expected 0"), "{message}");
        }
        other => panic!("expected a version conflict, got {other:?}"),
    }
    let connection = client.connect();
    let taken = connection.write(&Write::decrement("stock", 1).expecting_version(1)).await;
    assert_eq!(taken.expect("taken at version 1").value, 4);
    match connection.write(&Write::decrement("stock", 1).expecting_version(1)).await {
        Err(ClientError::VersionConflict { current_version: 2, .. }) => {}
        other => panic!("expected a version conflict at 2, got {other:?}"),
    }
    assert_eq!(client.get_value("stock").await.expect("value").value, 4);
    drop(connection);
    server.stop().await;
}

/// Bounds through the client: `configure` answers the metadata with them, a write past one is
/// the typed `OutOfBounds` with the bounds, and clamp mode's update says `clamped`.
#[tokio::test]
async fn configure_sets_bounds_that_refuse_or_clamp_writes() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serve(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let client = Client::new(&format!("http://{addr}/")).expect("client");
    let bounds = Bounds { min: Some(0), max: Some(3), clamp: false };
    let configured = client.configure("rooms", bounds).await.expect("configured");
    assert_eq!(configured.bounds, Some(bounds));
    client.write(&Write::increment("rooms", 3)).await.expect("fits");
    match client.write(&Write::increment("rooms", 1)).await {
        Err(ClientError::OutOfBounds { min: Some(0), max: Some(3), message }) => {
            assert!(message.contains("past its max 3"), "{message}");
        }
        other => panic!("expected out of bounds, got {other:?}"),
    }
    let connection = client.connect();
    match connection.write(&Write::increment("rooms", 1)).await {
        Err(ClientError::OutOfBounds { max: Some(3), .. }) => {}
        other => panic!("expected out of bounds over the socket, got {other:?}"),
    }
    drop(connection);
    match client.configure("rooms", Bounds { max: Some(2), ..bounds }).await {
        Err(ClientError::OutOfBounds { max: Some(2), .. }) => {}
        other => panic!("expected the value 3 to be outside max 2, got {other:?}"),
    }
    client.configure("rooms", Bounds { clamp: true, ..bounds }).await.expect("clamp mode");
    let clamped = client.write(&Write::decrement("rooms", 10)).await.expect("clamped");
    assert_eq!((clamped.value, clamped.clamped), (0, true));
    let metadata = client.get_metadata("rooms").await.expect("metadata");
    assert_eq!(metadata.bounds, Some(Bounds { clamp: true, ..bounds }));
    client.configure("rooms", Bounds::NONE).await.expect("cleared");
    assert_eq!(client.write(&Write::decrement("rooms", 10)).await.expect("unbounded").value, -10);
    server.stop().await;
}

#[tokio::test]
async fn list_pages_through_counters_by_prefix_and_list_all_follows_them() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serve(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let client = Client::new(&format!("http://{addr}/")).expect("client");
    for index in 0..5 {
        client.increment(&format!("likes:{index}"), index + 1).await.expect("increment");
    }
    client.increment("votes:1", 1).await.expect("increment");

    let first = client.list("likes:", None, Some(2)).await.expect("list");
    let names: Vec<&str> = first.counters.iter().map(|counter| counter.name.as_str()).collect();
    assert_eq!(names, ["likes:0", "likes:1"]);
    assert_eq!((first.counters[1].value, first.counters[1].version), (2, 1));
    assert_eq!(first.next.as_deref(), Some("likes:1"));
    let second = client.list("likes:", first.next.as_deref(), Some(2)).await.expect("list");
    assert_eq!(second.counters[0].name, "likes:2");

    let all = client.list_all("").await.expect("list all");
    let names: Vec<&str> = all.iter().map(|counter| counter.name.as_str()).collect();
    assert_eq!(names, ["likes:0", "likes:1", "likes:2", "likes:3", "likes:4", "votes:1"]);
    assert_eq!(client.list_all("votes:").await.expect("list all").len(), 1);

    match client.list("", None, Some(0)).await {
        Err(ClientError::Rejected { status, code, message, .. }) => {
            assert_eq!((status, code.as_str()), (400, "invalid_limit"));
            assert!(message.contains("1 to 1000"), "{message}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let error = client.list("bad prefix", None, None).await.expect_err("bad prefix");
    assert_eq!(error.code(), Some("invalid_field"));
    server.stop().await;
}

#[tokio::test]
async fn a_watch_survives_a_server_restart_with_no_gap_or_duplicate() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serve(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let client = Client::new(&format!("http://{addr}")).expect("client");
    client.increment("live", 1).await.expect("first write");

    let fast =
        Backoff { min: Duration::from_millis(50), max: Duration::from_millis(200), factor: 2.0 };
    let mut watch =
        client.watch_with("live", WatchOptions { backoff: fast, ..WatchOptions::default() });
    assert!(matches!(next(&mut watch).await, WatchEvent::Connected));
    assert!(
        matches!(next(&mut watch).await, WatchEvent::Snapshot(s) if s.version == 1 && !s.resync)
    );
    client.increment("live", 1).await.expect("write");
    assert!(matches!(next(&mut watch).await, WatchEvent::Update(u) if u.version == 2));

    server.stop().await;
    assert!(matches!(next(&mut watch).await, WatchEvent::Disconnected { .. }));
    // Back on the same address and database; changes happen before the watch is back.
    let (server, _) = serve(dir.path(), addr).await;
    for _ in 0..5 {
        client.increment("live", 1).await.expect("write after restart");
    }
    let mut versions = Vec::new();
    while versions.len() < 5 {
        match next(&mut watch).await {
            WatchEvent::Update(update) => versions.push(update.version),
            WatchEvent::Connected
            | WatchEvent::Resumed { .. }
            | WatchEvent::Disconnected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    client.increment("live", 1).await.expect("live write");
    loop {
        match next(&mut watch).await {
            WatchEvent::Update(update) => {
                versions.push(update.version);
                break;
            }
            WatchEvent::Connected | WatchEvent::Resumed { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(versions, vec![3, 4, 5, 6, 7, 8]);
    drop(watch);
    server.stop().await;
}

#[tokio::test]
async fn a_refused_watch_fails_and_ends() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serve(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let client = Client::new(&format!("http://{addr}")).expect("client");
    let mut watch = client.watch("no spaces allowed");
    match next(&mut watch).await {
        WatchEvent::Failed(error) => assert_eq!(error.code(), Some("invalid_name")),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(watch.next().await.is_none(), "the stream ends after Failed");
    server.stop().await;
}

/// A server that accepts the socket, answers the subscribe with a snapshot, then goes silent
/// without closing (a vanished peer): the watch pings, hears nothing, and reconnects.
#[tokio::test]
async fn a_silent_connection_is_replaced() {
    use futures_util::SinkExt;
    use tally_proto::socket::{Command, CommandKind, Frame};
    use tokio_tungstenite::tungstenite::Message;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let silent_server = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..2 {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut socket = tokio_tungstenite::accept_async(stream).await.expect("handshake");
            let subscribe = loop {
                let Some(Ok(Message::Text(text))) = socket.next().await else {
                    panic!("the client hung up before subscribing")
                };
                let command = Command::parse(&text).expect("a command");
                if let CommandKind::Subscribe(subscribe) = command.kind {
                    break (command.id, subscribe);
                }
            };
            let snapshot = tally_client::Snapshot {
                value: 0,
                version: 0,
                metadata: tally_client::Metadata {
                    id: None,
                    name: "quiet".into(),
                    value: 0,
                    created_at: None,
                    updated_at: None,
                    operation_count: 0,
                    ops_last_minute: None,
                    bounds: None,
                },
                timestamp: "2026-01-01T00:00:00.000Z".into(),
                resync: false,
                can: Vec::new(),
                epoch: None,
            };
            let reply = Frame::Snapshot {
                id: Some(subscribe.0),
                name: subscribe.1.name.as_str().into(),
                snapshot,
            };
            socket.send(Message::text(reply.to_json())).await.expect("snapshot");
            // Kept open and never read again: pings go unanswered.
            held.push(socket);
        }
        held
    });
    let client = Client::new(&format!("http://{addr}")).expect("client");
    let options = WatchOptions {
        ping_interval: Duration::from_millis(150),
        backoff: Backoff {
            min: Duration::from_millis(10),
            max: Duration::from_millis(10),
            factor: 1.0,
        },
        ..WatchOptions::default()
    };
    let mut watch = client.watch_with("quiet", options);
    assert!(matches!(next(&mut watch).await, WatchEvent::Connected));
    assert!(matches!(next(&mut watch).await, WatchEvent::Snapshot(_)));
    match next(&mut watch).await {
        WatchEvent::Disconnected { reason, .. } => {
            assert!(reason.contains("nothing heard"), "{reason}")
        }
        other => panic!("expected a disconnect, got {other:?}"),
    }
    assert!(matches!(next(&mut watch).await, WatchEvent::Connected));
    drop(watch);
    silent_server.abort();
}
