//! The database's epoch: snapshots and resumes carry it, it survives a restart, and a resume
//! that names another database's epoch (the database was replaced, or restored from a backup)
//! gets a resync snapshot instead of the other history's updates. Run on SQLite (`it`) and on
//! PostgreSQL (`it_postgres`).

use serde_json::json;
use tally_proto::socket::Frame;
use tally_proto::{Epoch, ServerMessage};

use crate::harness::{TestServer, Watcher};

/// The epoch a fresh v1 watch of `name` is given in its snapshot.
async fn epoch_of(server: &TestServer, name: &str) -> Epoch {
    let mut watcher = server.watch(name).await;
    let epoch = match watcher.next().await {
        ServerMessage::Snapshot(snapshot) => snapshot.epoch.expect("a snapshot names its epoch"),
        other => panic!("expected a snapshot, got {other:?}"),
    };
    watcher.close().await;
    epoch
}

async fn increments(server: &TestServer, name: &str, count: usize) {
    for _ in 0..count {
        server.increment(name, 1).await;
    }
}

async fn watch_since(server: &TestServer, name: &str, since: u64, epoch: &Epoch) -> Watcher {
    Watcher::connect(&format!("ws://{}/ws/counter/{name}?since={since}&epoch={epoch}", server.addr))
        .await
}

/// A v2 socket's reply to `subscribe {name, since, epoch}`.
async fn subscribe_since(server: &TestServer, name: &str, since: u64, epoch: &Epoch) -> Frame {
    let mut socket = server.socket().await;
    let command =
        json!({"id": 1, "type": "subscribe", "name": name, "since": since, "epoch": epoch});
    socket.send_text(&command.to_string()).await;
    socket.next_frame().await
}

#[tokio::test]
async fn the_epoch_survives_a_restart_and_resumes_against_it_replay() {
    let server = TestServer::start().await;
    increments(&server, "kept", 3).await;
    let epoch = epoch_of(&server, "kept").await;
    let server = server.restart().await;
    assert_eq!(epoch_of(&server, "kept").await, epoch, "the same database keeps its epoch");
    increments(&server, "kept", 2).await;

    let mut watcher = watch_since(&server, "kept", 3, &epoch).await;
    match watcher.next().await {
        ServerMessage::Resumed(resumed) => {
            assert_eq!((resumed.since, resumed.version), (3, 5));
            assert_eq!(resumed.epoch.as_ref(), Some(&epoch), "resumed names the epoch");
        }
        other => panic!("expected resumed, got {other:?}"),
    }
    assert_eq!(watcher.next_update().await.0, 4);
    assert_eq!(watcher.next_update().await.0, 5);

    match subscribe_since(&server, "kept", 3, &epoch).await {
        Frame::Resumed { resumed, .. } => {
            assert_eq!((resumed.since, resumed.version, resumed.epoch), (3, 5, Some(epoch)));
        }
        other => panic!("expected resumed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_resume_against_a_replaced_database_gets_a_resync() {
    let server = TestServer::start().await;
    increments(&server, "replaced", 3).await;
    let old = epoch_of(&server, "replaced").await;

    // The database is replaced by another whose counter went further with other operations:
    // version 3 here is not the version 3 the client saw.
    let server = server.restart_on_a_new_database().await;
    server.increment("replaced", 100).await;
    for _ in 0..4 {
        server.increment("replaced", 1).await;
    }
    let new = epoch_of(&server, "replaced").await;
    assert_ne!(new, old, "a new database has a new epoch");

    let mut watcher = watch_since(&server, "replaced", 3, &old).await;
    match watcher.next().await {
        ServerMessage::Snapshot(snapshot) => {
            assert!(snapshot.resync, "a resume of another epoch is a resync");
            assert_eq!((snapshot.value, snapshot.version), (104, 5));
            assert_eq!(snapshot.epoch.as_ref(), Some(&new), "the resync names the new epoch");
        }
        other => panic!("expected a resync snapshot, got {other:?}"),
    }
    // Live updates follow the resync.
    server.increment("replaced", 1).await;
    assert_eq!(watcher.next_update().await.0, 6);

    match subscribe_since(&server, "replaced", 3, &old).await {
        Frame::Snapshot { id: Some(1), snapshot, .. } => {
            assert!(snapshot.resync);
            assert_eq!((snapshot.value, snapshot.version, snapshot.epoch), (105, 6, Some(new)));
        }
        other => panic!("expected a resync snapshot reply, got {other:?}"),
    }

    // Without an epoch, a resume is taken on trust, as from clients older than epochs.
    let mut trusting = server.watch_since("replaced", 3).await;
    assert!(matches!(trusting.next().await, ServerMessage::Resumed(r) if r.since == 3));
}

#[tokio::test]
async fn a_malformed_epoch_is_refused_in_words_and_changes_nothing() {
    let server = TestServer::start().await;
    let (status, body) = server.raw_get("/ws/counter/bad-epoch?since=0&epoch=NOT-HEX").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"invalid_field\""), "{body}");
    assert!(body.contains("16 lowercase hexadecimal digits"), "{body}");

    let mut socket = server.socket().await;
    let command =
        json!({"id": 7, "type": "subscribe", "name": "bad-epoch", "since": 0, "epoch": 12});
    socket.send_text(&command.to_string()).await;
    match socket.next_frame().await {
        Frame::Error { id: Some(7), error } => {
            assert_eq!(error.code, "invalid_field");
            assert!(error.message.contains("16 lowercase hexadecimal digits"), "{}", error.message);
        }
        other => panic!("expected an error reply, got {other:?}"),
    }
    assert_eq!(server.value("bad-epoch").await, (0, 0));
}
