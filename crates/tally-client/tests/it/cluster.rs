//! A client of several servers (`Client::with_urls`), against real servers over real sockets:
//! a connection that loses its node comes up on the next URL and its subscriptions go on there;
//! RPCs move on from a URL that refuses connections, or answers a temporary `503`, but never
//! from a refusal.

use std::net::SocketAddr;
use std::time::Duration;

use tally_client::{
    Backoff, Client, ClientError, ConnectionEvent, ConnectionOptions, Subscription,
    SubscriptionEvent,
};
use tally_server::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{PATIENCE, next_event, serve_with};

/// Reconnects after 10 to 50 ms, so tests do not wait for the real backoff.
fn fast() -> ConnectionOptions {
    ConnectionOptions {
        backoff: Backoff {
            min: Duration::from_millis(10),
            max: Duration::from_millis(50),
            factor: 2.0,
        },
        ..ConnectionOptions::default()
    }
}

/// A server whose shutdown advises at most 100 ms before reconnecting (5 s by default).
fn quick_shutdown() -> Config {
    Config { reconnect_spread: Duration::from_millis(100), ..Config::default() }
}

/// An address on which nothing listens: connections to it are refused.
async fn refusing_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
    // The listener is dropped here, so the port refuses connections.
}

/// Reads `subscription` until its first snapshot, and answers its version.
async fn snapshot_version(subscription: &mut Subscription) -> u64 {
    loop {
        match next_event(subscription).await {
            SubscriptionEvent::Snapshot(snapshot) => return snapshot.version,
            SubscriptionEvent::Disconnected { .. } => {}
            other => panic!("{}: expected a snapshot, got {other:?}", subscription.name()),
        }
    }
}

/// Waits for the connection's next `Connected`, within [`PATIENCE`] in all (a connection that
/// keeps failing reports a `Disconnected` every few milliseconds).
async fn connected(events: &mut tally_client::ConnectionEvents) {
    let waiting = async {
        loop {
            match events.next().await.expect("events go on") {
                ConnectionEvent::Connected => return,
                ConnectionEvent::Stopped { reason } => panic!("the connection stopped: {reason}"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, waiting).await.expect("connected in time");
}

/// Issue 14: losing a node. A connection to two servers (each with its own database here) is
/// up on the first; that one stops; the connection comes up on the second, subscribes there
/// again, and a write made on the second reaches it.
#[tokio::test]
async fn issue_14_a_connection_that_loses_its_node_goes_on_on_the_next_url() {
    let (dir_a, dir_b) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let any = "127.0.0.1:0".parse().expect("addr");
    let (server_a, addr_a) = serve_with(dir_a.path(), any, quick_shutdown()).await;
    let (server_b, addr_b) = serve_with(dir_b.path(), any, quick_shutdown()).await;
    let (url_a, url_b) = (format!("http://{addr_a}"), format!("http://{addr_b}"));
    let cluster = Client::with_urls([&url_a, &url_b]).expect("client");
    let only_b = Client::new(&url_b).expect("client of b");

    let connection = cluster.connect_with(fast());
    let mut events = connection.events();
    let mut subscription = connection.subscribe("node-loss");
    assert_eq!(snapshot_version(&mut subscription).await, 0);
    assert_eq!(connection.server_url(), url_a, "the first attempt goes to the first URL");

    server_a.stop().await;
    connected(&mut events).await;
    connected(&mut events).await;
    assert_eq!(connection.server_url(), url_b, "the reconnect went to the next URL");
    // On b, the subscription is made again: resumed after version 0, or started over with a
    // snapshot by a server that can tell its storage from a's.
    loop {
        match next_event(&mut subscription).await {
            SubscriptionEvent::Disconnected { .. } => {}
            SubscriptionEvent::Resumed { since, .. } => {
                assert_eq!(since, 0);
                break;
            }
            SubscriptionEvent::Snapshot(snapshot) => {
                assert_eq!(snapshot.version, 0);
                break;
            }
            other => panic!("expected the subscription on b, got {other:?}"),
        }
    }
    only_b.increment("node-loss", 5).await.expect("a write on b");
    match next_event(&mut subscription).await {
        SubscriptionEvent::Update(update) => {
            assert_eq!((update.version, update.value), (1, 5), "b's write, over b's socket");
        }
        other => panic!("expected b's update, got {other:?}"),
    }
    // Calls over the socket go to b too.
    assert_eq!(connection.get_value("node-loss").await.expect("value").value, 5);
    drop((subscription, connection));
    server_b.stop().await;
}

/// Issue 14, with one database as a cluster has: node a stops, node b takes over the same
/// storage, writes go on through b while the connection is away, and the connection resumes on
/// b after the last version it delivered: every version once, in order, no gap.
#[tokio::test]
async fn issue_14_a_failover_resumes_on_the_next_node_with_no_gap() {
    let dir = tempfile::tempdir().expect("dir");
    let any = "127.0.0.1:0".parse().expect("addr");
    let (server_a, addr_a) = serve_with(dir.path(), any, quick_shutdown()).await;
    let addr_b = refusing_addr().await;
    let url_b = format!("http://{addr_b}");
    let cluster = Client::with_urls([format!("http://{addr_a}"), url_b.clone()]).expect("client");
    cluster.increment("failover", 1).await.expect("write on a");
    cluster.increment("failover", 1).await.expect("write on a");

    let connection = cluster.connect_with(fast());
    let mut subscription = connection.subscribe("failover");
    assert_eq!(snapshot_version(&mut subscription).await, 2);

    // The store's lock goes with a, so b can open the same database.
    server_a.stop().await;
    let (server_b, _) = serve_with(dir.path(), addr_b, quick_shutdown()).await;
    // a refuses connections now: each write moves on to b, and counts once.
    for _ in 0..3 {
        cluster.increment("failover", 1).await.expect("write through b");
    }

    let mut versions = Vec::new();
    let mut resumed = None;
    // Within PATIENCE in all: a connection that keeps failing reports a disconnect every few ms.
    let reading = async {
        while versions.len() < 3 {
            match next_event(&mut subscription).await {
                SubscriptionEvent::Update(update) => versions.push(update.version),
                SubscriptionEvent::Resumed { since, .. } => resumed = Some(since),
                SubscriptionEvent::Disconnected { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    tokio::time::timeout(PATIENCE, reading).await.expect("the resume on b in time");
    assert_eq!(resumed, Some(2), "resumed after what it had");
    assert_eq!(versions, vec![3, 4, 5]);
    assert_eq!(connection.server_url(), url_b);
    let value = cluster.get_value("failover").await.expect("value");
    assert_eq!((value.value, value.version), (5, 5), "every write counted once");
    drop((subscription, connection));
    server_b.stop().await;
}

/// An RPC whose first URL refuses connections is made on the second, reads and writes alike;
/// the next calls go straight there. A client none of whose URLs can be reached fails at once
/// for a write (nothing was sent anywhere), as a client of one server does.
#[tokio::test]
async fn rpcs_move_on_from_a_url_that_refuses_connections() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) =
        serve_with(dir.path(), "127.0.0.1:0".parse().expect("addr"), Config::default()).await;
    let dead = refusing_addr().await;
    let cluster =
        Client::with_urls([format!("http://{dead}"), format!("http://{addr}")]).expect("client");

    let update = cluster.increment("refused-first", 2).await.expect("a write, made on the second");
    assert_eq!((update.value, update.version), (2, 1));
    let value = cluster.get_value("refused-first").await.expect("a read, on the second");
    assert_eq!((value.value, value.version), (2, 1), "the write counted once");
    let fresh =
        Client::with_urls([format!("http://{dead}"), format!("http://{addr}")]).expect("client");
    assert_eq!(fresh.get_metadata("refused-first").await.expect("metadata").value, 2);

    let nowhere =
        Client::with_urls([format!("http://{dead}"), format!("http://{}", refusing_addr().await)])
            .expect("client");
    let started = tokio::time::Instant::now();
    let error = nowhere.increment("refused-first", 1).await.expect_err("no server");
    assert!(matches!(error, ClientError::Connect { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5), "failed at once, not after retries");
    let error = nowhere.get_value("refused-first").await.expect_err("no server");
    assert!(matches!(error, ClientError::Connect { .. }), "{error}");
    server.stop().await;
}

/// A refusal is an answer: the call fails with it and is not sent to another node, and later
/// calls stay on the same URL.
#[tokio::test]
async fn a_refusal_does_not_move_to_the_next_url() {
    let (dir_a, dir_b) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let any = "127.0.0.1:0".parse().expect("addr");
    let (server_a, addr_a) = serve_with(dir_a.path(), any, Config::default()).await;
    let (server_b, addr_b) = serve_with(dir_b.path(), any, Config::default()).await;
    let cluster = Client::with_urls([format!("http://{addr_a}"), format!("http://{addr_b}")])
        .expect("client");
    let only_b = Client::new(&format!("http://{addr_b}")).expect("client of b");

    let error = cluster.increment("stays", 0).await.expect_err("amount 0 is refused");
    assert_eq!(error.code(), Some("invalid_amount"), "{error}");
    let error = cluster.get_history("stays", Some(5000), None).await.expect_err("limit too big");
    assert_eq!(error.code(), Some("invalid_limit"), "{error}");
    cluster.increment("stays", 1).await.expect("write");
    assert_eq!(only_b.get_value("stays").await.expect("value").version, 0, "nothing went to b");
    assert_eq!(cluster.get_value("stays").await.expect("value").version, 1, "a has it");
    server_a.stop().await;
    server_b.stop().await;
}

/// A node that answers `503 unavailable` (shutting down, or without its storage): a write's
/// fate is unknown, so it is sent again, with its key, to the next node; a read moves on too.
#[tokio::test]
async fn a_temporary_503_sends_the_call_to_the_next_url() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) =
        serve_with(dir.path(), "127.0.0.1:0".parse().expect("addr"), Config::default()).await;
    let unavailable = UnavailableServer::start().await;
    let cluster =
        Client::with_urls([format!("http://{}", unavailable.addr), format!("http://{addr}")])
            .expect("client");

    let update = cluster.increment("after-503", 3).await.expect("the retry on the next node");
    assert_eq!((update.value, update.version), (3, 1));
    let fresh =
        Client::with_urls([format!("http://{}", unavailable.addr), format!("http://{addr}")])
            .expect("client");
    let value = fresh.get_value("after-503").await.expect("a read moves on too");
    assert_eq!((value.value, value.version), (3, 1), "counted once");
    server.stop().await;
}

/// A fake node that answers every request with `503 unavailable` (temporary), as a Tally
/// server does while it shuts down or cannot reach its storage.
struct UnavailableServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl UnavailableServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    // The whole request is read first: closing a socket with unread bytes
                    // resets it, and the client might then never see the answer.
                    read_request(&mut socket).await;
                    let body = r#"{"error":{"code":"unavailable","message":"the server is shutting down","temporary":true}}"#;
                    let answer = format!(
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self { addr, task }
    }
}

/// Reads one HTTP request: its head, then as many body bytes as its `content-length` says.
async fn read_request(socket: &mut tokio::net::TcpStream) {
    let mut request = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        if let Some(end) = request.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                return;
            }
        }
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => request.extend_from_slice(&buffer[..read]),
        }
    }
}

impl Drop for UnavailableServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
