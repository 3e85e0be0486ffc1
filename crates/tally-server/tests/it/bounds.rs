//! Bounds (`counter.configure`, issue 16): a write that would leave a counter's bounds is
//! refused `409 out_of_bounds`, saying the bound and changing nothing, or, in clamp mode,
//! stopped at the bound and marked `"clamped": true` in its answer, its broadcast (both socket
//! versions) and its replay. Run on SQLite (`it`) and PostgreSQL (`it_postgres`).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tally_proto::socket::Frame;
use tally_proto::{Grant, ServerMessage};
use tally_server::access::{AuthConfig, JwtConfig};
use tally_server::{Config, SqliteOptions};

use crate::harness::{TestServer, test_config};

const SECRET: &[u8] = b"a bounds test secret, thirty-two bytes or more";

/// A token for `sub` with `grants`, good for an hour.
fn token(sub: &str, grants: &[&str]) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let claims = json!({"sub": sub, "iat": now, "exp": now + 3600, "tally": {"grants": grants}});
    let key = EncodingKey::from_secret(SECRET).expect("key");
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("sign")
}

/// A server where anonymous may read and write every counter but not configure one.
async fn start() -> TestServer {
    let mut jwt = JwtConfig::default();
    jwt.add_secret(SECRET).expect("secret");
    let anonymous = Grant::parse_all(&["*=read,increment,decrement,set,reset"]).expect("grant");
    let auth = AuthConfig { jwt, anonymous: Some(anonymous), ..AuthConfig::default() };
    TestServer::start_with(Config { auth, ..test_config() }, SqliteOptions::default()).await
}

/// `counter.configure` with `body`, as an admin of every counter.
async fn configure(server: &TestServer, body: Value) -> (u16, Value) {
    configure_as(server, body, &token("ops", &["*=admin"])).await
}

async fn configure_as(server: &TestServer, body: Value, credential: &str) -> (u16, Value) {
    let bearer = format!("Bearer {credential}");
    server.call_with("configure", body, &[("authorization", &bearer)]).await
}

#[track_caller]
fn assert_out_of_bounds(status: u16, answer: &Value, says: &str) {
    assert_eq!(status, 409, "{answer}");
    let error = &answer["error"];
    assert_eq!(error["code"], "out_of_bounds", "{answer}");
    assert_eq!(error["temporary"], false, "{answer}");
    let message = error["message"].as_str().expect("message");
    assert!(message.contains(says), "{message:?} should say {says:?}");
}

#[tokio::test]
async fn a_write_past_a_bound_is_refused_saying_the_bound_and_changes_nothing() {
    let server = start().await;
    let (status, configured) =
        configure(&server, json!({"name": "seats", "min": 0, "max": 10})).await;
    assert_eq!(status, 200, "{configured}");
    assert_eq!(configured["bounds"], json!({"min": 0, "max": 10, "clamp": false}));
    assert_eq!(
        (configured["value"].as_i64(), configured["operationCount"].as_u64()),
        (Some(0), Some(0))
    );

    let filled = server.ok("increment", json!({"name": "seats", "amount": 10})).await;
    assert_eq!((filled["value"].as_i64(), filled["version"].as_u64()), (Some(10), Some(1)));
    assert!(filled.get("clamped").is_none(), "{filled}");
    let (status, refused) = server.call("increment", json!({"name": "seats"})).await;
    assert_out_of_bounds(status, &refused, "past its max 10");
    assert_eq!(
        (refused["error"]["min"].as_i64(), refused["error"]["max"].as_i64()),
        (Some(0), Some(10))
    );
    assert_eq!(server.value("seats").await, (10, 1), "the refusal changed nothing");

    let (status, refused) = server.call("setValue", json!({"name": "seats", "value": 11})).await;
    assert_out_of_bounds(status, &refused, "past its max 10");
    server.ok("setValue", json!({"name": "seats", "value": 0})).await;
    let (status, refused) = server.call("decrement", json!({"name": "seats"})).await;
    assert_out_of_bounds(status, &refused, "past its min 0");
    assert_eq!(server.value("seats").await, (0, 2));
    let history = server.ok("getHistory", json!({"name": "seats"})).await;
    assert_eq!(history["entries"].as_array().map(Vec::len), Some(2), "{history}");

    // A socket call is refused alike, with the bounds as fields.
    let mut socket = server.socket().await;
    let call = json!({"id": 1, "type": "call", "procedure": "counter.decrement", "name": "seats"});
    socket.send_text(&call.to_string()).await;
    match socket.next_frame().await {
        Frame::Error { id: Some(1), error } => {
            assert_eq!(error.code, "out_of_bounds");
            assert_eq!((error.min, error.max), (Some(0), Some(10)));
        }
        other => panic!("expected the refusal, got {other:?}"),
    }
    assert_eq!(server.value("seats").await, (0, 2));
}

#[tokio::test]
async fn reset_outside_the_bounds_is_refused_and_setvalue_is_even_in_clamp_mode() {
    let server = start().await;
    server.ok("setValue", json!({"name": "floor", "value": 7})).await;
    let (status, _) = configure(&server, json!({"name": "floor", "min": 5, "clamp": true})).await;
    assert_eq!(status, 200);
    let (status, refused) = server.call("reset", json!({"name": "floor"})).await;
    assert_out_of_bounds(status, &refused, "past its min 5");
    assert!(refused["error"].get("max").is_none(), "{refused}");
    let (status, refused) = server.call("setValue", json!({"name": "floor", "value": 2})).await;
    assert_out_of_bounds(status, &refused, "past its min 5");
    assert_eq!(server.value("floor").await, (7, 1));
}

#[tokio::test]
async fn clamp_mode_stops_at_the_bound_and_says_so_in_the_answer_the_updates_and_a_replay() {
    let server = start().await;
    server.ok("setValue", json!({"name": "cap", "value": 8})).await;
    let (status, configured) =
        configure(&server, json!({"name": "cap", "min": 0, "max": 10, "clamp": true})).await;
    assert_eq!((status, &configured["bounds"]["clamp"]), (200, &json!(true)), "{configured}");

    let mut v1 = server.watch("cap").await;
    assert!(matches!(v1.next().await, ServerMessage::Snapshot(_)));
    let mut v2 = server.socket().await;
    v2.send_text(&json!({"id": 1, "type": "subscribe", "name": "cap"}).to_string()).await;
    assert!(matches!(v2.next_frame().await, Frame::Snapshot { .. }));

    let answer = server.call_text("increment", json!({"name": "cap", "amount": 5})).await;
    let clamped: Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(clamped["value"], 10, "{clamped}");
    assert_eq!(clamped["previousValue"], 8, "{clamped}");
    assert_eq!(clamped["version"], 2, "{clamped}");
    assert_eq!(clamped["clamped"], true, "{clamped}");
    let (version, broadcast) = v1.next_update().await;
    assert_eq!((version, broadcast.as_str()), (2, answer.as_str()), "v1 gets the answer's bytes");
    match v2.next_frame().await {
        Frame::Update { name, update, .. } => {
            assert_eq!((name.as_str(), update.value, update.clamped), ("cap", 10, true));
        }
        other => panic!("expected the update, got {other:?}"),
    }

    // A decrement at the bound: value unchanged, version on, clamped.
    server.ok("setValue", json!({"name": "cap", "value": 0})).await;
    let floor = server.ok("decrement", json!({"name": "cap"})).await;
    assert_eq!((floor["value"].as_i64(), floor["version"].as_u64()), (Some(0), Some(4)));
    assert_eq!(floor["clamped"], true, "{floor}");
    // A write within the bounds is not marked.
    let within = server.ok("increment", json!({"name": "cap"})).await;
    assert!(within.get("clamped").is_none(), "{within}");

    // A resume replays the clamped update byte for byte.
    let mut resumed = server.watch_since("cap", 1).await;
    assert!(matches!(resumed.next().await, ServerMessage::Resumed(_)));
    let (version, replayed) = resumed.next_update().await;
    assert_eq!((version, replayed.as_str()), (2, answer.as_str()));
    let history = server.ok("getHistory", json!({"name": "cap", "limit": 4})).await;
    let oldest = &history["entries"][3];
    assert_eq!((&oldest["amount"], &oldest["value"]), (&json!(5), &json!(10)), "{history}");
}

#[tokio::test]
async fn configure_refuses_bounds_that_leave_out_the_value_or_cross_and_a_non_admin() {
    let server = start().await;
    server.ok("setValue", json!({"name": "stock", "value": 12})).await;
    let (status, refused) = configure(&server, json!({"name": "stock", "max": 10})).await;
    assert_out_of_bounds(status, &refused, "is at 12, outside the asked max 10");
    assert_eq!(refused["error"]["max"], 10, "{refused}");

    let (status, bad) = configure(&server, json!({"name": "stock", "min": 5, "max": 1})).await;
    assert_eq!((status, bad["error"]["code"].as_str()), (400, Some("invalid_field")), "{bad}");
    assert!(bad["error"]["message"].as_str().is_some_and(|m| m.contains("min <= max")), "{bad}");
    let (status, bad) = configure(&server, json!({"name": "stock", "max": "10"})).await;
    assert_eq!((status, bad["error"]["code"].as_str()), (400, Some("invalid_field")), "{bad}");

    let writer = token("writer", &["stock=read,increment,decrement,set,reset"]);
    let (status, forbidden) =
        configure_as(&server, json!({"name": "stock", "max": 20}), &writer).await;
    assert_eq!(
        (status, forbidden["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{forbidden}"
    );
    let (status, forbidden) = server.call("configure", json!({"name": "stock", "max": 20})).await;
    assert_eq!(status, 401, "anonymous may write but not configure: {forbidden}");
    assert_eq!(forbidden["error"]["code"], "unauthenticated", "{forbidden}");

    let metadata = server.ok("getMetadata", json!({"name": "stock"})).await;
    assert_eq!(metadata["bounds"], json!({"min": null, "max": null, "clamp": false}), "{metadata}");
    assert_eq!(server.value("stock").await, (12, 1), "nothing changed");
    // Still unbounded: the refusals stored no rule.
    server.ok("increment", json!({"name": "stock", "amount": 100})).await;
}

#[tokio::test]
async fn bounds_show_in_metadata_and_the_list_survive_a_restart_and_clear_with_a_bare_configure() {
    let server = start().await;
    // Configuring a counter never written creates it at 0, version 0.
    let (status, configured) =
        configure(&server, json!({"name": "fresh", "min": -5, "max": 5})).await;
    assert_eq!(status, 200, "{configured}");
    assert_eq!(configured["operationCount"], 0, "{configured}");
    let (status, refused) = configure(&server, json!({"name": "above-zero", "min": 1})).await;
    assert_out_of_bounds(status, &refused, "is at 0");

    let listed = server.ok("list", json!({"prefix": "fresh"})).await;
    assert_eq!(
        listed["counters"][0]["bounds"],
        json!({"min": -5, "max": 5, "clamp": false}),
        "{listed}"
    );
    assert_eq!(listed["counters"][0]["version"], 0, "{listed}");
    assert_eq!(server.ok("list", json!({"prefix": "above"})).await["counters"], json!([]));

    // The restarted server runs without auth (the harness's config): anonymous configures.
    let server = server.restart().await;
    let metadata = server.ok("getMetadata", json!({"name": "fresh"})).await;
    assert_eq!(metadata["bounds"], json!({"min": -5, "max": 5, "clamp": false}), "{metadata}");
    let (status, refused) = server.call("increment", json!({"name": "fresh", "amount": 6})).await;
    assert_out_of_bounds(status, &refused, "past its max 5");
    let first = server.ok("increment", json!({"name": "fresh", "amount": 5})).await;
    assert_eq!((first["value"].as_i64(), first["version"].as_u64()), (Some(5), Some(1)));

    let (status, cleared) = server.call("configure", json!({"name": "fresh"})).await;
    assert_eq!(
        (status, &cleared["bounds"]),
        (200, &json!({"min": null, "max": null, "clamp": false}))
    );
    assert_eq!(server.ok("increment", json!({"name": "fresh"})).await["value"], 6);
    let listed = server.ok("list", json!({"prefix": "fresh"})).await;
    assert!(listed["counters"][0].get("bounds").is_none(), "{listed}");
}

/// A configure ordered between writes sent at once: those before it are checked against the
/// old bounds, those after against the new, and every answer agrees with the history.
#[tokio::test]
async fn a_configure_among_pending_writes_applies_from_its_place_on() {
    // Open mode: anonymous may configure.
    let server = TestServer::start().await;
    let mut socket = server.socket().await;
    for id in 1..=3 {
        let call =
            json!({"id": id, "type": "call", "procedure": "counter.increment", "name": "burst"});
        socket.send_text(&call.to_string()).await;
    }
    let configure = json!({"id": 4, "type": "call", "procedure": "counter.configure", "name": "burst", "max": 4});
    socket.send_text(&configure.to_string()).await;
    for id in 5..=7 {
        let call =
            json!({"id": id, "type": "call", "procedure": "counter.increment", "name": "burst"});
        socket.send_text(&call.to_string()).await;
    }
    let (mut applied, mut refused) = (0, 0);
    for _ in 0..7 {
        match socket.next_frame().await {
            Frame::Result { id: 4, result } => assert_eq!(result["bounds"]["max"], 4, "{result}"),
            Frame::Result { .. } => applied += 1,
            Frame::Error { error, .. } => {
                assert_eq!(error.code, "out_of_bounds", "{error:?}");
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Three went in before it, one fits after.
    assert_eq!((applied, refused), (4, 2));
    assert_eq!(server.value("burst").await, (4, 4));
}

/// A configure that creates a counter counts against `--max-counters` like a first write, and
/// its counter, once created, takes writes at the quota as any existing one does.
#[tokio::test]
async fn a_configure_that_creates_a_counter_counts_against_max_counters() {
    let quotas = tally_server::Quotas { max_counters: Some(1), max_database_bytes: None };
    let options = SqliteOptions { quotas, ..SqliteOptions::default() };
    let server = TestServer::start_with(test_config(), options).await;
    let (status, configured) = server.call("configure", json!({"name": "one", "max": 5})).await;
    assert_eq!(status, 200, "{configured}");
    let (status, refused) = server.call("configure", json!({"name": "two", "max": 5})).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (507, Some("quota_exceeded")),
        "{refused}"
    );
    assert_eq!(server.ok("list", json!({})).await["counters"].as_array().map(Vec::len), Some(1));
    // The configured counter exists: its first write is no new counter.
    assert_eq!(server.increment("one", 5).await["value"], 5);
    let (status, _) = server.call("configure", json!({"name": "one", "max": 9})).await;
    assert_eq!(status, 200);
}
