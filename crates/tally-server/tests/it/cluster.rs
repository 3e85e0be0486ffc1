//! Several nodes on one PostgreSQL database, in this process: one total order per counter
//! whatever mix of nodes the writers use, every watcher on every node sees every update once and
//! in order, and an idempotency key holds whichever node a retry reaches.

use std::sync::Arc;

use serde_json::{Value, json};
use tally_proto::ServerMessage;

use crate::harness::{PATIENCE, TestServer, Watcher, test_config};
use crate::postgres::TestDatabase;
use tally_server::SqliteOptions;

/// `count` nodes on one fresh database.
async fn cluster(count: usize) -> (Arc<TestDatabase>, Vec<TestServer>) {
    let database = Arc::new(TestDatabase::create().await);
    let mut nodes = Vec::new();
    for _ in 0..count {
        nodes.push(
            TestServer::start_node(test_config(), SqliteOptions::default(), Arc::clone(&database))
                .await,
        );
    }
    (database, nodes)
}

/// Reads `watcher`'s updates until version `last`, and returns every version it was sent.
async fn versions_until(watcher: &mut Watcher, last: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.last().copied().unwrap_or(0) < last {
        let (version, _) = watcher.next_update().await;
        seen.push(version);
    }
    seen
}

/// The snapshot a fresh watcher is sent first: its version.
async fn snapshot_version(watcher: &mut Watcher) -> u64 {
    match watcher.next().await {
        ServerMessage::Snapshot(snapshot) => snapshot.version,
        other => panic!("expected a snapshot first, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_keep_one_order_and_every_watcher_sees_every_version_once() {
    let (_database, nodes) = cluster(3).await;
    let nodes = Arc::new(nodes);
    // 5 watchers on each node, before any write.
    let mut watchers = Vec::new();
    for node in nodes.iter() {
        for _ in 0..5 {
            let mut watcher = node.watch("shared").await;
            assert_eq!(snapshot_version(&mut watcher).await, 0);
            watchers.push(watcher);
        }
    }

    // 8 writers spread over the nodes, each sending its increments one after another.
    const WRITES_PER_WRITER: i64 = 25;
    let mut writers = Vec::new();
    for writer in 0..8_usize {
        let nodes = Arc::clone(&nodes);
        writers.push(tokio::spawn(async move {
            let node = &nodes[writer % nodes.len()];
            let mut answered = 0;
            for step in 0..WRITES_PER_WRITER {
                let amount = (writer as i64 + 1) * 10 + step % 3;
                let (status, answer) =
                    node.call("increment", json!({"name": "shared", "amount": amount})).await;
                assert_eq!(status, 200, "writer {writer} on node {}: {answer}", writer % 3);
                answered += amount;
            }
            answered
        }));
    }
    let mut sum = 0;
    for writer in writers {
        sum += writer.await.expect("writer");
    }
    let total = 8 * WRITES_PER_WRITER as u64;

    for (index, watcher) in watchers.iter_mut().enumerate() {
        let seen = tokio::time::timeout(PATIENCE, versions_until(watcher, total))
            .await
            .unwrap_or_else(|_| panic!("watcher {index} did not reach version {total}"));
        let expected: Vec<u64> = (1..=total).collect();
        assert_eq!(seen, expected, "watcher {index} on node {}", index / 5);
    }
    for (index, node) in nodes.iter().enumerate() {
        assert_eq!(node.value("shared").await, (sum, total), "node {index}");
    }
    // The history is the one order: versions 1..=N, each value its previous plus its amount.
    let history = nodes[1].ok("getHistory", json!({"name": "shared", "limit": 1000})).await;
    let entries = history["entries"].as_array().expect("entries");
    assert_eq!(entries.len() as u64, total);
    for pair in entries.windows(2) {
        let (newer, older) = (&pair[0], &pair[1]);
        assert_eq!(newer["version"].as_u64(), older["version"].as_u64().map(|v| v + 1));
        assert_eq!(newer["previousValue"], older["value"], "{newer} follows {older}");
    }
}

/// `POST /rpc/counter.increment` with an idempotency key; the status and the answer.
async fn increment_with_key(node: &TestServer, name: &str, key: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(node.url("/rpc/counter.increment"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(json!({"name": name, "amount": 5}).to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, serde_json::from_str(&response.text().await.expect("body")).expect("JSON"))
}

#[tokio::test]
async fn a_retry_with_the_same_key_on_another_node_counts_once() {
    let (_database, nodes) = cluster(2).await;
    // The second node has the counter in memory before the first write, as a busy node would.
    assert_eq!(nodes[1].value("once").await, (0, 0));
    let (status, first) = increment_with_key(&nodes[0], "once", "retry-1").await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = increment_with_key(&nodes[1], "once", "retry-1").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, first, "the retry is answered the first write's update");
    assert_eq!(nodes[0].value("once").await, (5, 1));
    assert_eq!(nodes[1].value("once").await, (5, 1));
}

#[tokio::test]
async fn a_write_on_one_node_is_read_at_once_on_another() {
    let (_database, nodes) = cluster(2).await;
    for round in 1..=20_i64 {
        nodes[(round % 2) as usize].increment("fresh", 1).await;
        // No waiting for the notification: reads look at storage on a shared store.
        assert_eq!(nodes[((round + 1) % 2) as usize].value("fresh").await, (round, round as u64));
    }
}

#[tokio::test]
async fn a_resume_on_another_node_replays_what_was_missed() {
    let (_database, nodes) = cluster(2).await;
    for _ in 0..5 {
        nodes[0].increment("moved", 1).await;
    }
    // A watcher of node 0 saw version 2 (with node 0's epoch, the database's), then lost its
    // node; it resumes on node 1 naming that epoch, which every node of the database shares.
    let mut first = nodes[0].watch("moved").await;
    let epoch = match first.next().await {
        ServerMessage::Snapshot(snapshot) => snapshot.epoch.expect("an epoch"),
        other => panic!("expected a snapshot, got {other:?}"),
    };
    first.close().await;
    let url = format!("ws://{}/ws/counter/moved?since=2&epoch={epoch}", nodes[1].addr);
    let mut watcher = Watcher::connect(&url).await;
    match watcher.next().await {
        ServerMessage::Resumed(resumed) => assert_eq!(resumed.epoch, Some(epoch)),
        other => panic!("expected a resumed marker, got {other:?}"),
    }
    assert_eq!(versions_until(&mut watcher, 5).await, [3, 4, 5]);
    nodes[0].increment("moved", 1).await;
    assert_eq!(watcher.next_update().await.0, 6, "and live updates from the other node follow");
}

/// A v2 socket on `node` subscribed to `name`; the snapshot's version.
async fn subscribed(node: &TestServer, name: &str) -> (Watcher, u64) {
    let mut socket = node.socket().await;
    socket.send_text(&json!({"id": 1, "type": "subscribe", "name": name}).to_string()).await;
    match socket.next_frame().await {
        tally_proto::socket::Frame::Snapshot { id: Some(1), snapshot, .. } => {
            (socket, snapshot.version)
        }
        other => panic!("expected the snapshot, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_one_node_ends_the_watches_on_another_and_the_counter_starts_again_there() {
    use tally_proto::socket::Frame;
    let (_database, nodes) = cluster(2).await;
    for _ in 0..4 {
        nodes[0].increment("gone", 1).await;
    }
    // The key and the counter live in the second node's actor's memory too.
    let (status, keyed) = increment_with_key(&nodes[1], "gone", "before").await;
    assert_eq!((status, keyed["version"].as_u64()), (200, Some(5)), "{keyed}");
    let (mut v2, version) = subscribed(&nodes[1], "gone").await;
    assert_eq!(version, 5);
    let mut v1 = nodes[1].watch("gone").await;
    assert_eq!(snapshot_version(&mut v1).await, 5);

    let answer = nodes[0].ok("delete", json!({"name": "gone"})).await;
    assert_eq!(answer, json!({"name": "gone", "deleted": true, "version": 5}));
    // A watch on the deleting node right after its delete: its own notification, which comes
    // back to it, must not end this one.
    let (mut here, version) = subscribed(&nodes[0], "gone").await;
    assert_eq!(version, 0);

    match v2.next_frame().await {
        Frame::Unsubscribed { id: None, name, code, .. } => {
            assert_eq!((name.as_str(), code.as_deref()), ("gone", Some("counter_deleted")));
        }
        other => panic!("expected the unsubscribed push, got {other:?}"),
    }
    assert_eq!(
        v1.ended().await,
        crate::harness::Ended::Closed(tally_proto::close::COUNTER_DELETED)
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // The second node forgot the key with the counter: the same key counts again, at version 1.
    let (status, again) = increment_with_key(&nodes[1], "gone", "before").await;
    assert_eq!((status, again["version"].as_u64()), (200, Some(1)), "{again}");
    assert_eq!(nodes[0].increment("gone", 1).await["version"], 2);
    assert_eq!(nodes[1].value("gone").await, (6, 2));
    for expected in 1..=2 {
        match tokio::time::timeout(PATIENCE, here.next_frame()).await.expect("in time") {
            Frame::Update { update, .. } => assert_eq!(update.version, expected),
            other => panic!("expected update {expected}, got {other:?}"),
        }
    }
    let (mut watcher, version) = subscribed(&nodes[1], "gone").await;
    assert_eq!(version, 2);
    nodes[0].increment("gone", 1).await;
    match watcher.next_frame().await {
        Frame::Update { update, .. } => assert_eq!(update.version, 3),
        other => panic!("expected update 3, got {other:?}"),
    }
}
