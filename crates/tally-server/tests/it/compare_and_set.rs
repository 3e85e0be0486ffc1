//! Compare-and-set: a write with `expectedVersion` is applied only at that version, else
//! refused `409 version_conflict` with the counter's `currentVersion`, changing nothing. What a
//! stock or seat counter needs when many clients decide from what they read. Run on SQLite
//! (`it`) and PostgreSQL (`it_postgres`).

use serde_json::{Value, json};
use tally_proto::socket::Frame;

use crate::harness::TestServer;

async fn post_keyed(server: &TestServer, procedure: &str, body: &Value, key: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url(&format!("/rpc/counter.{procedure}")))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

#[tokio::test]
async fn a_write_at_the_expected_version_applies_and_a_stale_one_changes_nothing() {
    let server = TestServer::start().await;
    // 0 is "never written": a counter can be created only once this way.
    let created =
        server.ok("setValue", json!({"name": "stock", "value": 10, "expectedVersion": 0})).await;
    assert_eq!((created["value"].as_i64(), created["version"].as_u64()), (Some(10), Some(1)));

    let (status, refused) =
        server.call("setValue", json!({"name": "stock", "value": 99, "expectedVersion": 0})).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "version_conflict");
    assert_eq!(refused["error"]["currentVersion"], 1, "{refused}");
    assert_eq!(refused["error"]["temporary"], false);
    let message = refused["error"]["message"].as_str().expect("message");
    assert!(message.contains("version 1, not the expected 0"), "{message}");

    let taken =
        server.ok("decrement", json!({"name": "stock", "amount": 3, "expectedVersion": 1})).await;
    assert_eq!((taken["value"].as_i64(), taken["version"].as_u64()), (Some(7), Some(2)));
    let (status, refused) =
        server.call("increment", json!({"name": "stock", "expectedVersion": 1})).await;
    assert_eq!((status, refused["error"]["currentVersion"].as_u64()), (409, Some(2)));

    assert_eq!(server.value("stock").await, (7, 2), "the refusals changed nothing");
    let history = server.ok("getHistory", json!({"name": "stock"})).await;
    assert_eq!(history["entries"].as_array().map(Vec::len), Some(2));

    let (status, bad) =
        server.call("setValue", json!({"name": "stock", "value": 1, "expectedVersion": -1})).await;
    assert_eq!((status, bad["error"]["code"].as_str()), (400, Some("invalid_field")));
    assert!(bad["error"]["message"].as_str().is_some_and(|m| m.contains("whole number >= 0")));
    assert_eq!(server.value("stock").await, (7, 2));
}

/// Twenty clients read version 1 and each tries to take the last seat with it: exactly one
/// wins, the others are told the version moved.
#[tokio::test]
async fn of_concurrent_writes_at_one_version_exactly_one_wins() {
    let server = TestServer::start().await;
    server.ok("setValue", json!({"name": "seats", "value": 1})).await;
    let attempts =
        (0..20).map(|_| server.call("decrement", json!({"name": "seats", "expectedVersion": 1})));
    let answers = futures_util::future::join_all(attempts).await;
    let won = answers.iter().filter(|(status, _)| *status == 200).count();
    let lost: Vec<_> = answers.iter().filter(|(status, _)| *status == 409).collect();
    assert_eq!(won, 1, "{answers:?}");
    assert_eq!(lost.len(), 19, "{answers:?}");
    assert!(lost.iter().all(|(_, body)| body["error"]["currentVersion"] == 2), "{lost:?}");
    assert_eq!(server.value("seats").await, (0, 2));
}

/// A keyed compare-and-set that was applied is answered its first answer again on a retry,
/// not a conflict with its own write.
#[tokio::test]
async fn a_retried_keyed_write_gets_its_first_answer_not_a_conflict() {
    let server = TestServer::start().await;
    let body = json!({"name": "cas-key", "value": 5, "expectedVersion": 0});
    let (status, first) = post_keyed(&server, "setValue", &body, "cas-1").await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = post_keyed(&server, "setValue", &body, "cas-1").await;
    assert_eq!((status, &again), (200, &first));
    assert_eq!(server.value("cas-key").await, (5, 1));
}

#[tokio::test]
async fn a_socket_call_is_refused_with_the_current_version_too() {
    let server = TestServer::start().await;
    server.increment("cas-socket", 1).await;
    let mut socket = server.socket().await;
    let call = json!({"id": 3, "type": "call", "procedure": "counter.setValue", "name": "cas-socket", "value": 9, "expectedVersion": 7});
    socket.send_text(&call.to_string()).await;
    match socket.next_frame().await {
        Frame::Error { id: Some(3), error } => {
            assert_eq!(error.code, "version_conflict");
            assert_eq!(error.current_version, Some(1));
        }
        other => panic!("expected the refusal, got {other:?}"),
    }
    let call = json!({"id": 4, "type": "call", "procedure": "counter.setValue", "name": "cas-socket", "value": 9, "expectedVersion": 1});
    socket.send_text(&call.to_string()).await;
    match socket.next_frame().await {
        Frame::Result { id: 4, result } => assert_eq!(result["version"], 2),
        other => panic!("expected the result, got {other:?}"),
    }
}
