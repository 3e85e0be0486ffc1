//! `counter.delete` against a real server (both stores): the counter's value, history and
//! idempotency records go, its watchers are told (a v2 `unsubscribed` push, a v1 close with
//! 4004), a later write starts it at version 1 under a new epoch, so a resume of the old
//! history gets a `resync`; only `admin` may delete, and refusals change nothing.

use serde_json::{Value, json};
use tally_proto::socket::Frame;
use tally_proto::{Epoch, ServerMessage, close};

use crate::harness::{Ended, TestServer, Watcher};

/// An increment of `name` by 1 with `key` as its Idempotency-Key; the answer's version.
async fn keyed_increment(server: &TestServer, name: &str, key: &str) -> u64 {
    let response = reqwest::Client::new()
        .post(server.url("/rpc/counter.increment"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(json!({"name": name}).to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.expect("JSON");
    answer["version"].as_u64().expect("version")
}

/// POSTs `counter.delete` with `body` and an optional bearer `credential`.
async fn delete(server: &TestServer, body: Value, credential: Option<&str>) -> (u16, Value) {
    let (status, answer, _) = crate::access::call(server, "delete", &body, credential).await;
    (status, answer)
}

/// A v1 watch of `name` and the epoch its snapshot names, with its version.
async fn watch_with_epoch(server: &TestServer, name: &str) -> (Watcher, Epoch, u64) {
    let mut watcher = server.watch(name).await;
    match watcher.next().await {
        ServerMessage::Snapshot(snapshot) => {
            let epoch = snapshot.epoch.expect("a snapshot names its epoch");
            (watcher, epoch, snapshot.version)
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

/// A v2 socket subscribed to `name` (its snapshot read).
async fn subscribed(server: &TestServer, name: &str) -> Watcher {
    let mut socket = server.socket().await;
    socket.send_text(&json!({"id": 1, "type": "subscribe", "name": name}).to_string()).await;
    match socket.next_frame().await {
        Frame::Snapshot { id: Some(1), .. } => socket,
        other => panic!("expected the snapshot, got {other:?}"),
    }
}

#[tokio::test]
async fn a_deleted_counter_is_gone_its_watchers_are_told_and_it_starts_again_at_version_1() {
    let server = TestServer::start().await;
    for _ in 0..4 {
        server.increment("doomed", 1).await;
    }
    assert_eq!(keyed_increment(&server, "doomed", "key-1").await, 5);
    server.increment("kept", 3).await;
    let (mut v1, old_epoch, version) = watch_with_epoch(&server, "doomed").await;
    assert_eq!(version, 5);
    let mut v2 = subscribed(&server, "doomed").await;

    let (status, answer) = delete(&server, json!({"name": "doomed"}), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"name": "doomed", "deleted": true, "version": 5}));

    match v2.next_frame().await {
        Frame::Unsubscribed { id: None, name, code, reason } => {
            assert_eq!((name.as_str(), code.as_deref()), ("doomed", Some("counter_deleted")));
            assert!(reason.is_some_and(|reason| reason.contains("doomed")));
        }
        other => panic!("expected the unsubscribed push, got {other:?}"),
    }
    assert_eq!(v1.ended().await, Ended::Closed(close::COUNTER_DELETED));

    // Nothing of it is left, and nothing of the other counter went.
    assert_eq!(server.value("doomed").await, (0, 0));
    let history = server.ok("getHistory", json!({"name": "doomed"})).await;
    assert_eq!(history["entries"], json!([]));
    assert_eq!(server.stored_rows("history").await, 1, "only kept's");
    assert_eq!(server.stored_rows("idempotency").await, 0);
    assert_eq!(server.stored_rows("counters").await, 1);
    assert_eq!(server.value("kept").await, (3, 1));
    let presence = server.ok("getPresence", json!({"name": "doomed"})).await;
    assert_eq!(presence["watchers"], 0, "its watchers were unsubscribed: {presence}");

    // The key used before counts again, and versions start at 1.
    assert_eq!(keyed_increment(&server, "doomed", "key-1").await, 1);
    assert_eq!(server.increment("doomed", 1).await["version"], 2);
    assert_eq!(server.value("doomed").await, (2, 2));

    // A resume of the old history (version 5 of the old epoch) gets a resync snapshot, on
    // both socket versions; a fresh watch names the new epoch.
    let url = format!("ws://{}/ws/counter/doomed?since=5&epoch={old_epoch}", server.addr);
    let mut resumed = Watcher::connect(&url).await;
    let new_epoch = match resumed.next().await {
        ServerMessage::Snapshot(snapshot) => {
            assert!(snapshot.resync, "a resync, not a replay");
            assert_eq!(snapshot.version, 2);
            snapshot.epoch.expect("epoch")
        }
        other => panic!("expected a resync snapshot, got {other:?}"),
    };
    assert_ne!(new_epoch, old_epoch, "the deleted counter starts under a new epoch");
    // Even at a version the new history has (1 < 2), the old epoch's since is not replayed.
    v2.send_text(
        &json!({"id": 2, "type": "subscribe", "name": "doomed", "since": 1, "epoch": old_epoch})
            .to_string(),
    )
    .await;
    match v2.next_frame().await {
        Frame::Snapshot { id: Some(2), snapshot, .. } => {
            assert!(snapshot.resync);
            assert_eq!((snapshot.version, snapshot.epoch), (2, Some(new_epoch.clone())));
        }
        other => panic!("expected a resync snapshot, got {other:?}"),
    }
    // The new epoch resumes as any epoch does, and survives a restart.
    let server = server.restart().await;
    let url = format!("ws://{}/ws/counter/doomed?since=1&epoch={new_epoch}", server.addr);
    let mut resumed = Watcher::connect(&url).await;
    match resumed.next().await {
        ServerMessage::Resumed(resumed) => {
            assert_eq!((resumed.since, resumed.version), (1, 2));
            assert_eq!(resumed.epoch, Some(new_epoch));
        }
        other => panic!("expected resumed, got {other:?}"),
    }
    assert_eq!(resumed.next_update().await.0, 2);
    // The other counter kept the database's epoch.
    let (_, kept_epoch, _) = watch_with_epoch(&server, "kept").await;
    assert_eq!(kept_epoch, old_epoch);
}

#[tokio::test]
async fn watchers_of_a_deleted_counter_that_watch_again_see_it_start_over() {
    let server = TestServer::start().await;
    server.increment("again", 7).await;
    let mut v2 = subscribed(&server, "again").await;
    assert_eq!(delete(&server, json!({"name": "again"}), None).await.0, 200);
    assert!(matches!(v2.next_frame().await, Frame::Unsubscribed { id: None, .. }));
    // Subscribing again: version 0, then the new history's updates from version 1.
    v2.send_text(&json!({"id": 3, "type": "subscribe", "name": "again"}).to_string()).await;
    match v2.next_frame().await {
        Frame::Snapshot { id: Some(3), snapshot, .. } => assert_eq!(snapshot.version, 0),
        other => panic!("expected the snapshot, got {other:?}"),
    }
    let mut v1 = server.watch("again").await;
    assert!(matches!(v1.next().await, ServerMessage::Snapshot(snapshot) if snapshot.version == 0));
    server.increment("again", 2).await;
    match v2.next_frame().await {
        Frame::Update { update, .. } => assert_eq!((update.version, update.value), (1, 2)),
        other => panic!("expected an update, got {other:?}"),
    }
    assert_eq!(v1.next_update().await.0, 1);
}

#[tokio::test]
async fn deleting_needs_admin_and_bad_or_refused_deletes_change_nothing() {
    let server = TestServer::start().await;
    server.increment("guarded", 4).await;
    let admin = crate::list::create_key(&server, "root", &["*=admin"], None).await;
    let writer = crate::list::create_key(
        &server,
        "writer",
        &["*=read", "*=increment", "*=set", "*=reset"],
        Some(&admin),
    )
    .await;

    let (status, answer) = delete(&server, json!({"name": "guarded"}), Some(&writer)).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("forbidden")), "{answer}");
    let (status, answer) = delete(&server, json!({"name": "guarded"}), None).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (401, Some("unauthenticated")));
    for (body, code) in [
        (json!({"name": "no spaces"}), "invalid_name"),
        (json!({"name": ""}), "invalid_name"),
        (json!({}), "invalid_field"),
        (json!({"name": "guarded", "force": true}), "invalid_field"),
    ] {
        let (status, answer) = delete(&server, body.clone(), Some(&admin)).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (400, Some(code)), "{body}");
        let message = answer["error"]["message"].as_str().expect("message");
        assert!(!message.is_empty());
    }
    let (_, value, _) =
        crate::access::call(&server, "getValue", &json!({"name": "guarded"}), Some(&admin)).await;
    assert_eq!(value, json!({"value": 4, "version": 1}), "nothing was deleted");

    // Deleting a counter that is not stored is no error: a retry of a delete is safe.
    let (status, answer) = delete(&server, json!({"name": "guarded"}), Some(&admin)).await;
    assert_eq!((status, answer), (200, json!({"name": "guarded", "deleted": true, "version": 1})));
    let (status, answer) = delete(&server, json!({"name": "guarded"}), Some(&admin)).await;
    assert_eq!((status, answer), (200, json!({"name": "guarded", "deleted": false, "version": 0})));
    let (status, answer) = delete(&server, json!({"name": "never"}), Some(&admin)).await;
    assert_eq!((status, answer), (200, json!({"name": "never", "deleted": false, "version": 0})));
}

#[tokio::test]
async fn a_socket_call_deletes_as_the_rpc_does() {
    let server = TestServer::start().await;
    server.increment("called", 2).await;
    server.increment("called", 2).await;
    let mut socket = server.socket().await;
    let call = json!({"id": 9, "type": "call", "procedure": "counter.delete", "name": "called"});
    socket.send_text(&call.to_string()).await;
    match socket.next_frame().await {
        Frame::Result { id: 9, result } => {
            assert_eq!(result, json!({"name": "called", "deleted": true, "version": 2}))
        }
        other => panic!("expected the call's result, got {other:?}"),
    }
    let bad = json!({"id": 10, "type": "call", "procedure": "counter.delete", "name": "a b"});
    socket.send_text(&bad.to_string()).await;
    match socket.next_frame().await {
        Frame::Error { id: Some(10), error } => assert_eq!(error.code, "invalid_name"),
        other => panic!("expected the refusal, got {other:?}"),
    }
    assert_eq!(server.value("called").await, (0, 0));
    assert_eq!(server.metric("tally_counter_deletes_total").await, 1.0);
}

/// A deleted counter no longer counts toward `--max-counters`: at the quota, deleting one
/// makes room for a new one (the SQLite writer keeps the count; PostgreSQL counts the rows).
#[tokio::test]
async fn a_delete_makes_room_under_max_counters() {
    use tally_server::{Quotas, SqliteOptions};
    let quotas = Quotas { max_counters: Some(2), max_database_bytes: None };
    let options = SqliteOptions { quotas, ..SqliteOptions::default() };
    let server = TestServer::start_with(crate::harness::test_config(), options).await;
    server.increment("one", 1).await;
    server.increment("two", 1).await;
    let (status, answer) = server.call("increment", json!({"name": "three"})).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (507, Some("quota_exceeded")));
    assert_eq!(delete(&server, json!({"name": "one"}), None).await.0, 200);
    assert_eq!(server.increment("three", 1).await["version"], 1);
    let (status, _) = server.call("increment", json!({"name": "four"})).await;
    assert_eq!(status, 507, "the quota holds again");
    // Deleting a counter not stored frees nothing.
    assert_eq!(delete(&server, json!({"name": "one"}), None).await.1["deleted"], false);
    let (status, _) = server.call("increment", json!({"name": "four"})).await;
    assert_eq!(status, 507);
}

/// A delete among writes in flight takes one place in the counter's order: the writes before it
/// are the versions it removed (1..=D), the writes after it the new history's (1..=F), each
/// version once in each, and every write is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_among_concurrent_writes_splits_them_into_two_whole_histories() {
    const WRITERS: usize = 4;
    const WRITES: usize = 30;
    let server = std::sync::Arc::new(TestServer::start().await);
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let server = std::sync::Arc::clone(&server);
        writers.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for _ in 0..WRITES {
                versions.push(server.increment("busy", 1).await["version"].as_u64().expect("v"));
            }
            versions
        }));
    }
    while server.value("busy").await.1 < 20 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let (status, deleted) = delete(&server, json!({"name": "busy"}), None).await;
    assert_eq!((status, deleted["deleted"].as_bool()), (200, Some(true)), "{deleted}");
    let removed = deleted["version"].as_u64().expect("version");
    let mut answered = Vec::new();
    for writer in writers {
        answered.extend(writer.await.expect("writer"));
    }
    let (value, last) = server.value("busy").await;
    assert_eq!(value, last as i64, "every write after the delete counted once, from 0");
    assert_eq!(removed + last, (WRITERS * WRITES) as u64, "every write is in one history");
    let mut expected: Vec<u64> = (1..=removed).chain(1..=last).collect();
    expected.sort_unstable();
    answered.sort_unstable();
    assert_eq!(answered, expected, "each version once in each history");
    let history = server.ok("getHistory", json!({"name": "busy", "limit": 1000})).await;
    assert_eq!(history["entries"].as_array().expect("entries").len() as u64, last);
}

/// A conflated subscription (`maxRate`) waiting for its next slot, off its topic's waiting
/// list, is told of the delete too: when its slot comes it finds the topic ended.
#[tokio::test]
async fn a_conflated_subscription_waiting_for_its_slot_is_told_of_the_delete() {
    let server = TestServer::start().await;
    server.increment("rated", 1).await;
    let mut socket = server.socket().await;
    let subscribe = json!({"id": 1, "type": "subscribe", "name": "rated", "maxRate": 1});
    socket.send_text(&subscribe.to_string()).await;
    assert!(matches!(socket.next_frame().await, Frame::Snapshot { id: Some(1), .. }));
    // The first update goes at once and the next waits for the subscription's next slot.
    server.increment("rated", 1).await;
    server.increment("rated", 1).await;
    assert_eq!(delete(&server, json!({"name": "rated"}), None).await.0, 200);
    loop {
        match socket.next_frame().await {
            Frame::Update { .. } => continue,
            Frame::Unsubscribed { id: None, code, .. } => {
                assert_eq!(code.as_deref(), Some("counter_deleted"));
                break;
            }
            other => panic!("expected updates, then the end, got {other:?}"),
        }
    }
    let presence = server.ok("getPresence", json!({"name": "rated"})).await;
    assert_eq!(presence["watchers"], 0, "{presence}");
}

/// A counter that hibernated while watched is deleted all the same: its watchers, who hold its
/// topic in the registry's slot without an actor, are told, and later watchers start afresh.
#[tokio::test]
async fn a_hibernated_watched_counter_is_deleted_and_its_watchers_are_told() {
    use std::time::Duration;
    let config = tally_server::Config {
        idle_timeout: Duration::from_millis(100),
        ..crate::harness::test_config()
    };
    let server = TestServer::start_with(config, tally_server::SqliteOptions::default()).await;
    server.increment("sleepy", 3).await;
    let mut v2 = subscribed(&server, "sleepy").await;
    let mut v1 = server.watch("sleepy").await;
    assert!(matches!(v1.next().await, ServerMessage::Snapshot(_)));
    server.wait_for_metric("tally_counter_hibernations_total", 1.0).await;
    assert_eq!(delete(&server, json!({"name": "sleepy"}), None).await.1["version"], 1);
    assert!(matches!(v2.next_frame().await, Frame::Unsubscribed { id: None, .. }));
    assert_eq!(v1.ended().await, Ended::Closed(close::COUNTER_DELETED));
    let mut fresh = server.watch("sleepy").await;
    assert!(
        matches!(fresh.next().await, ServerMessage::Snapshot(snapshot) if snapshot.version == 0)
    );
    server.increment("sleepy", 1).await;
    assert_eq!(fresh.next_update().await.0, 1);
}
