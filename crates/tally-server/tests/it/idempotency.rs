//! Idempotency keys over the RPC against a real server: a retry gets the first answer byte for
//! byte and counts once, also when twenty copies race; a key used for another body is refused;
//! keys are scoped per principal and per counter; a key on a read or a malformed key is
//! refused before anything is done.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::HeaderValue;
use serde_json::{Value, json};
use tally_server::access::{AuthConfig, JwtConfig};
use tally_server::{Config, SqliteOptions};

use crate::harness::{TestServer, test_config};

const SECRET: &[u8] = b"a test secret of at least thirty-two bytes!";

/// `POST /rpc/counter.<procedure>` with `body` and an `Idempotency-Key`, as `token`'s
/// principal if given; the status and the answer as sent.
async fn post(
    server: &TestServer,
    procedure: &str,
    body: &Value,
    key: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(server.url(&format!("/rpc/counter.{procedure}")))
        .header("content-type", "application/json")
        // From bytes, so that a key that is not ASCII reaches the server as sent.
        .header("idempotency-key", HeaderValue::from_bytes(key.as_bytes()).expect("header value"))
        .body(body.to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    (response.status().as_u16(), response.text().await.expect("body"))
}

/// Like `post`, but the answer must be 200.
async fn keyed(server: &TestServer, procedure: &str, body: Value, key: &str) -> String {
    let (status, text) = post(server, procedure, &body, key, None).await;
    assert_eq!(status, 200, "{procedure} {body} with key {key}: {text}");
    text
}

fn code(text: &str) -> String {
    let answer: Value = serde_json::from_str(text).expect("JSON");
    answer["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_retry_with_the_same_key_gets_the_identical_answer_and_counts_once() {
    let server = TestServer::start().await;
    let first = keyed(&server, "increment", json!({"name": "likes", "amount": 5}), "k-1").await;
    // Something else happens in between: the retry still answers the state it made.
    server.increment("likes", 1).await;
    let retry = keyed(&server, "increment", json!({"name": "likes", "amount": 5}), "k-1").await;
    assert_eq!(retry, first, "byte for byte");
    assert_eq!(server.value("likes").await, (6, 2));

    for (procedure, body) in [
        ("decrement", json!({"name": "likes", "amount": 2})),
        ("setValue", json!({"name": "likes", "value": 40})),
        ("reset", json!({"name": "likes"})),
    ] {
        let first = keyed(&server, procedure, body.clone(), procedure).await;
        let retry = keyed(&server, procedure, body, procedure).await;
        assert_eq!(retry, first, "{procedure}");
    }
    assert_eq!(server.value("likes").await, (0, 5));
    server.stop().await;
}

#[tokio::test]
async fn the_same_key_with_another_body_is_refused_422_and_changes_nothing() {
    let server = TestServer::start().await;
    keyed(&server, "increment", json!({"name": "likes", "amount": 5}), "k-1").await;
    for (procedure, body) in [
        ("increment", json!({"name": "likes", "amount": 6})),
        ("decrement", json!({"name": "likes", "amount": 5})),
        ("setValue", json!({"name": "likes", "value": 5})),
    ] {
        let (status, text) = post(&server, procedure, &body, "k-1", None).await;
        assert_eq!((status, code(&text)), (422, "idempotency_key_reused".into()), "{text}");
        assert!(text.contains("nothing was stored"), "{text}");
    }
    assert_eq!(server.value("likes").await, (5, 1));
    let history = server.ok("getHistory", json!({"name": "likes"})).await;
    assert_eq!(history["entries"].as_array().map(Vec::len), Some(1));
    server.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_duplicates_count_once_and_all_get_the_same_answer() {
    let server = TestServer::start().await;
    let body = json!({"name": "hot", "amount": 3});
    let answers = futures_util::future::join_all(
        (0..20).map(|_| post(&server, "increment", &body, "one-click", None)),
    )
    .await;
    let first = &answers[0];
    assert_eq!(first.0, 200, "{}", first.1);
    for answer in &answers {
        assert_eq!(answer, first);
    }
    assert_eq!(server.value("hot").await, (3, 1));
    server.stop().await;
}

fn token(sub: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let claims = json!({"sub": sub, "iat": now, "exp": now + 3600,
                        "tally": {"grants": ["*=read,increment"]}});
    let key = EncodingKey::from_secret(SECRET).expect("key");
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("sign")
}

#[tokio::test]
async fn keys_are_scoped_per_principal_and_per_counter() {
    let mut jwt = JwtConfig::default();
    jwt.add_secret(SECRET).expect("secret");
    jwt.leeway = Duration::from_secs(1);
    let auth = AuthConfig { jwt, ..AuthConfig::default() };
    let server =
        TestServer::start_with(Config { auth, ..test_config() }, SqliteOptions::default()).await;
    let (alice, bob) = (token("alice"), token("bob"));
    let increment = |name: &str| json!({"name": name, "amount": 1});

    let (_, alice_first) = post(&server, "increment", &increment("a"), "k", Some(&alice)).await;
    let (status, bob_first) = post(&server, "increment", &increment("a"), "k", Some(&bob)).await;
    assert_eq!(status, 200, "{bob_first}");
    assert_ne!(bob_first, alice_first, "bob's key is his own");
    let (status, other_counter) =
        post(&server, "increment", &increment("b"), "k", Some(&alice)).await;
    assert_eq!(status, 200, "{other_counter}");
    let (_, alice_retry) = post(&server, "increment", &increment("a"), "k", Some(&alice)).await;
    assert_eq!(alice_retry, alice_first);

    // A key on a read is refused, so read without one.
    let read = |name: &'static str| {
        let request = reqwest::Client::new()
            .post(server.url("/rpc/counter.getValue"))
            .header("content-type", "application/json")
            .bearer_auth(&alice)
            .body(json!({"name": name}).to_string());
        async move { request.send().await.expect("read").json::<Value>().await.expect("JSON") }
    };
    assert_eq!(read("a").await["value"], 2);
    assert_eq!(read("b").await["value"], 1);
    server.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_on_a_read_or_a_malformed_key_is_refused_400() {
    let server = TestServer::start().await;
    for procedure in ["getValue", "getMetadata", "getHistory", "getPresence"] {
        let (status, text) = post(&server, procedure, &json!({"name": "likes"}), "k", None).await;
        assert_eq!((status, code(&text)), (400, "invalid_field".into()), "{procedure}: {text}");
    }
    let long = "k".repeat(129);
    for bad in ["two words", long.as_str(), "é"] {
        let (status, text) =
            post(&server, "increment", &json!({"name": "likes", "amount": 1}), bad, None).await;
        assert_eq!((status, code(&text)), (400, "invalid_idempotency_key".into()), "{text}");
        assert!(text.contains("printable ASCII"), "{text}");
    }
    assert_eq!(server.value("likes").await, (0, 0));
    server.stop().await;
}
