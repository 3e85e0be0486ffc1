//! Access control against a real server: one table of credentials × every procedure and the
//! watch, each asserting the status or close code, the error code, and that a refused request
//! changed nothing; then the DNS-rebinding Host, expiry and in-band refresh on a socket, who
//! made a change, the write rate, the key RPCs and the Ping-frame rate.
//!
//! The keys under `keys/` were made with openssl for these tests only.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tally_proto::{Grant, ServerMessage, close};
use tally_server::access::{AuthConfig, JwtConfig};
use tally_server::{Config, SqliteOptions};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::{PATIENCE, TestServer, test_config};

const SECRET: &[u8] = b"a test secret of at least thirty-two bytes!";
const RSA_PRIVATE: &[u8] = include_bytes!("keys/rsa-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("keys/rsa-public.pem");
const AUDIENCE: &str = "tally-test";
const ISSUER: &str = "issuer-test";
/// Every action but admin.
const ALL_WRITES: &str = "read,increment,decrement,set,reset";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

fn auth_config() -> AuthConfig {
    let mut jwt = JwtConfig::default();
    jwt.add_secret(SECRET).expect("secret");
    jwt.add_public_pem(RSA_PUBLIC).expect("rsa key");
    jwt.audience = vec![AUDIENCE.into()];
    jwt.issuer = vec![ISSUER.into()];
    jwt.leeway = Duration::from_secs(1);
    AuthConfig {
        jwt,
        anonymous: Some(Vec::new()),
        auth_timeout: Duration::from_millis(300),
        ..AuthConfig::default()
    }
}

async fn start(auth: AuthConfig) -> TestServer {
    TestServer::start_with(Config { auth, ..test_config() }, SqliteOptions::default()).await
}

/// Claims of a valid token for `sub` with `grants`, good for an hour.
fn claims(sub: &str, grants: &[&str]) -> Value {
    let now = now();
    json!({"sub": sub, "iat": now, "exp": now + 3600, "aud": AUDIENCE, "iss": ISSUER,
           "tally": {"grants": grants}})
}

fn hs256(claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET).expect("key"), claims)
}

fn sign(algorithm: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key).expect("sign")
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token whose header says `alg: none`, with no signature.
fn unsigned(claims: &Value) -> String {
    let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{}.", base64url(claims.to_string().as_bytes()))
}

/// An HS256 token whose "secret" is the server's RSA public key, the classic confusion attack.
fn hs256_with_rsa_public_key(claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(RSA_PUBLIC).expect("key"), claims)
}

/// What a request (or a watch) should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Allowed,
    /// HTTP status and error code; for a watch, the close code.
    Refused(u16, &'static str, u16),
}

const UNAUTHENTICATED: Expect = Expect::Refused(401, "unauthenticated", close::UNAUTHENTICATED);
const EXPIRED: Expect = Expect::Refused(401, "token_expired", close::TOKEN_EXPIRED);
const FORBIDDEN: Expect = Expect::Refused(403, "forbidden", close::FORBIDDEN);
const ALLOWED: Expect = Expect::Allowed;

/// The eight things a principal can ask of a counter.
#[derive(Debug, Clone, Copy)]
enum Ask {
    Increment,
    Decrement,
    SetValue,
    Reset,
    GetValue,
    GetMetadata,
    GetHistory,
    Watch,
}

const ASKS: [Ask; 8] = [
    Ask::Increment,
    Ask::Decrement,
    Ask::SetValue,
    Ask::Reset,
    Ask::GetValue,
    Ask::GetMetadata,
    Ask::GetHistory,
    Ask::Watch,
];

impl Ask {
    fn is_write(self) -> bool {
        matches!(self, Ask::Increment | Ask::Decrement | Ask::SetValue | Ask::Reset)
    }

    /// The RPC and its body; amounts of 5 and a value of 100, over the caps of the cap row.
    fn rpc(self, name: &str) -> (&'static str, Value) {
        match self {
            Ask::Increment => ("increment", json!({"name": name, "amount": 5})),
            Ask::Decrement => ("decrement", json!({"name": name, "amount": 5})),
            Ask::SetValue => ("setValue", json!({"name": name, "value": 100})),
            Ask::Reset => ("reset", json!({"name": name})),
            Ask::GetValue => ("getValue", json!({"name": name})),
            Ask::GetMetadata => ("getMetadata", json!({"name": name})),
            Ask::GetHistory => ("getHistory", json!({"name": name})),
            Ask::Watch => unreachable!("a watch is no RPC"),
        }
    }
}

/// One row: a credential, the counter it asks about, and what reads, writes and watches get.
struct Row {
    label: &'static str,
    credential: Option<String>,
    counter: &'static str,
    reads: Expect,
    writes: Expect,
}

impl Row {
    fn expect(&self, ask: Ask) -> Expect {
        if ask.is_write() { self.writes } else { self.reads }
    }
}

/// POSTs an RPC with an optional bearer credential; the status, the JSON answer, the headers.
pub(crate) async fn call(
    server: &TestServer,
    procedure: &str,
    body: &Value,
    credential: Option<&str>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = reqwest::Client::new()
        .post(server.url(&format!("/rpc/counter.{procedure}")))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(credential) = credential {
        request = request.bearer_auth(credential);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null), headers)
}

/// The stored value and version of `name`, read with an admin token.
async fn state_of(server: &TestServer, name: &str) -> (i64, u64) {
    let admin = hs256(&claims("auditor", &["*=admin"]));
    let (status, answer, _) = call(server, "getValue", &json!({"name": name}), Some(&admin)).await;
    assert_eq!(status, 200, "{answer}");
    (answer["value"].as_i64().expect("value"), answer["version"].as_u64().expect("version"))
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/ws/counter/{name}` with the credential as an `Authorization` header.
async fn open_socket(server: &TestServer, name: &str, credential: Option<&str>) -> Socket {
    let mut request =
        format!("ws://{}/ws/counter/{name}", server.addr).into_client_request().expect("request");
    if let Some(credential) = credential {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {credential}").parse().expect("header"));
    }
    let (socket, _) = tokio_tungstenite::connect_async(request).await.expect("upgrade");
    socket
}

/// What a socket gets next: a message, or its close code.
#[allow(clippy::large_enum_variant)] // One at a time, in a test: its size does not matter.
enum Event {
    Message(ServerMessage),
    Closed(u16),
}

async fn next_event(socket: &mut Socket) -> Event {
    loop {
        let frame = tokio::time::timeout(PATIENCE, socket.next()).await.expect("an event in time");
        match frame {
            Some(Ok(Message::Text(text))) => {
                return Event::Message(ServerMessage::from_json(&text).expect("a server message"));
            }
            Some(Ok(Message::Close(frame))) => {
                return Event::Closed(frame.map_or(1005, |frame| u16::from(frame.code)));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Event::Closed(1006),
        }
    }
}

/// Asks `ask` as the row says, and checks the answer and (for a refusal) that nothing changed.
/// Returns whether the ask was a refusal.
async fn check(server: &TestServer, row: &Row, ask: Ask) -> bool {
    let before = state_of(server, row.counter).await;
    let expect = row.expect(ask);
    let context = format!("{} / {ask:?}", row.label);
    if let Ask::Watch = ask {
        let mut socket = open_socket(server, row.counter, row.credential.as_deref()).await;
        match (next_event(&mut socket).await, expect) {
            (Event::Message(ServerMessage::Snapshot(snapshot)), Expect::Allowed) => {
                assert_eq!(snapshot.version, before.1, "{context}");
            }
            (Event::Closed(code), Expect::Refused(_, _, close_code)) => {
                assert_eq!(code, close_code, "{context}");
            }
            (Event::Message(other), _) => panic!("{context}: got {other:?}, expected {expect:?}"),
            (Event::Closed(code), _) => panic!("{context}: closed {code}, expected {expect:?}"),
        }
    } else {
        let (procedure, body) = ask.rpc(row.counter);
        let (status, answer, headers) =
            call(server, procedure, &body, row.credential.as_deref()).await;
        match expect {
            Expect::Allowed => {
                assert_eq!(status, 200, "{context}: {answer}");
                if ask.is_write() {
                    let after = state_of(server, row.counter).await;
                    assert_eq!(after.1, before.1 + 1, "{context}: the write was not stored");
                }
            }
            Expect::Refused(expected_status, code, _) => {
                assert_eq!(status, expected_status, "{context}: {answer}");
                assert_eq!(answer["error"]["code"], code, "{context}: {answer}");
                if status == 401 {
                    let challenge = headers.get("www-authenticate").expect("a challenge");
                    assert!(challenge.to_str().unwrap_or_default().starts_with("Bearer"));
                }
                let message = answer["error"]["message"].as_str().unwrap_or_default();
                if let Some(credential) = &row.credential {
                    assert!(!message.contains(credential.as_str()), "{context}: token echoed");
                }
            }
        }
    }
    let refused = expect != Expect::Allowed;
    if refused {
        assert_eq!(
            state_of(server, row.counter).await,
            before,
            "{context}: a refusal changed the counter"
        );
    }
    refused
}

#[tokio::test]
async fn every_credential_against_every_procedure_and_the_watch() {
    let server = start(auth_config()).await;
    // A key made and revoked, through the admin RPCs.
    let admin = hs256(&claims("root", &["*=admin"]));
    let (status, created, _) = call_key(
        &server,
        "key.create",
        &json!({"name": "old-backend", "grants": [format!("likes:*={ALL_WRITES}")]}),
        &admin,
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let revoked_key = created["key"].as_str().expect("a key").to_owned();
    let (status, answer, _) =
        call_key(&server, "key.revoke", &json!({"name": "old-backend"}), &admin).await;
    assert_eq!(status, 200, "{answer}");
    let (_, created, _) = call_key(
        &server,
        "key.create",
        &json!({"name": "backend", "grants": [format!("likes:*={ALL_WRITES}")]}),
        &admin,
    )
    .await;
    let live_key = created["key"].as_str().expect("a key").to_owned();

    let writer = format!("likes:*={ALL_WRITES}");
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("rsa private key");
    let mut expired = claims("alice", &[&writer]);
    expired["exp"] = json!(now() - 120);
    expired["iat"] = json!(now() - 3600);
    let mut not_yet = claims("alice", &[&writer]);
    not_yet["nbf"] = json!(now() + 600);
    let mut wrong_aud = claims("alice", &[&writer]);
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = claims("alice", &[&writer]);
    wrong_iss["iss"] = json!("someone-else");
    let own = format!("user:{{sub}}:*={ALL_WRITES}");
    let other_secret =
        EncodingKey::from_secret(b"another secret, also thirty-two bytes long").expect("key");

    let rows = [
        Row {
            label: "no credentials",
            credential: None,
            counter: "likes:post",
            reads: UNAUTHENTICATED,
            writes: UNAUTHENTICATED,
        },
        Row {
            label: "malformed",
            credential: Some("not-a-jwt".into()),
            counter: "likes:post",
            reads: UNAUTHENTICATED,
            writes: UNAUTHENTICATED,
        },
        Row {
            label: "bad signature",
            credential: Some(sign(Algorithm::HS256, &other_secret, &claims("alice", &[&writer]))),
            counter: "likes:post",
            reads: UNAUTHENTICATED,
            writes: UNAUTHENTICATED,
        },
        Row {
            label: "alg none",
            credential: Some(unsigned(&claims("alice", &[&writer]))),
            counter: "likes:post",
            reads: UNAUTHENTICATED,
            writes: UNAUTHENTICATED,
        },
        Row {
            label: "HS256 signed with the RSA public key",
            credential: Some(hs256_with_rsa_public_key(&claims("alice", &[&writer]))),
            counter: "likes:post",
            reads: UNAUTHENTICATED,
            writes: UNAUTHENTICATED,
        },
        Row {
            label: "expired",
            credential: Some(hs256(&expired)),
            counter: "likes:post",
            reads: EXPIRED,
            writes: EXPIRED,
        },
        Row {
            label: "nbf in the future",
            credential: Some(hs256(&not_yet)),
            counter: "likes:post",
            reads: UNAUTHENTICATED,
            writes: UNAUTHENTICATED,
        },
        Row {
            label: "wrong aud",
            credential: Some(hs256(&wrong_aud)),
            counter: "likes:post",
            reads: UNAUTHENTICATED,
            writes: UNAUTHENTICATED,
        },
        Row {
            label: "wrong iss",
            credential: Some(hs256(&wrong_iss)),
            counter: "likes:post",
            reads: UNAUTHENTICATED,
            writes: UNAUTHENTICATED,
        },
        Row {
            label: "a grant for another name",
            credential: Some(hs256(&claims("alice", &[&format!("votes:*={ALL_WRITES}")]))),
            counter: "likes:post",
            reads: FORBIDDEN,
            writes: FORBIDDEN,
        },
        Row {
            label: "the right prefix, the wrong action",
            credential: Some(hs256(&claims("alice", &["likes:*=read"]))),
            counter: "likes:post",
            reads: ALLOWED,
            writes: FORBIDDEN,
        },
        Row {
            label: "an amount over the cap",
            credential: Some(hs256(&claims(
                "alice",
                &["likes:*=read,increment<=1,decrement<=1,set<=10"],
            ))),
            counter: "likes:post",
            reads: ALLOWED,
            writes: FORBIDDEN,
        },
        Row {
            label: "{sub} matching",
            credential: Some(hs256(&claims("alice", &[&own]))),
            counter: "user:alice:likes",
            reads: ALLOWED,
            writes: ALLOWED,
        },
        Row {
            label: "{sub} not matching",
            credential: Some(hs256(&claims("bob", &[&own]))),
            counter: "user:alice:likes",
            reads: FORBIDDEN,
            writes: FORBIDDEN,
        },
        Row {
            label: "a revoked API key",
            credential: Some(revoked_key),
            counter: "likes:post",
            reads: UNAUTHENTICATED,
            writes: UNAUTHENTICATED,
        },
        Row {
            label: "the right grant (HS256)",
            credential: Some(hs256(&claims("alice", &[&writer]))),
            counter: "likes:post",
            reads: ALLOWED,
            writes: ALLOWED,
        },
        Row {
            label: "the right grant (RS256)",
            credential: Some(sign(Algorithm::RS256, &rsa, &claims("carol", &[&writer]))),
            counter: "likes:post",
            reads: ALLOWED,
            writes: ALLOWED,
        },
        Row {
            label: "the right grant (API key)",
            credential: Some(live_key),
            counter: "likes:post",
            reads: ALLOWED,
            writes: ALLOWED,
        },
    ];
    let mut refusals = 0;
    let mut cases = 0;
    for row in &rows {
        for ask in ASKS {
            cases += 1;
            if check(&server, row, ask).await {
                refusals += 1;
            }
        }
    }
    assert_eq!(cases, 144);
    // Printed for the record: every refusal held, and nothing it refused was stored.
    println!("access matrix: {cases} cases, {refusals} refusals, 0 bypasses");
}

async fn call_key(
    server: &TestServer,
    procedure: &str,
    body: &Value,
    credential: &str,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let response = reqwest::Client::new()
        .post(server.url(&format!("/rpc/{procedure}")))
        .header("content-type", "application/json")
        .bearer_auth(credential)
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null), headers)
}

#[tokio::test]
async fn a_rebinding_host_is_refused_for_the_rpc_and_the_upgrade_and_changes_nothing() {
    // Open mode, as on a developer's machine: exactly what DNS rebinding goes after.
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    let response = client
        .post(server.url("/rpc/counter.reset"))
        .header("host", "evil.example:8094")
        .header("origin", "http://evil.example:8094")
        .header("content-type", "application/json")
        .body(r#"{"name":"likes"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "host_not_allowed", "{body}");
    let (status, text) = crate::harness::raw_get(
        tokio::net::TcpStream::connect(server.addr).await.expect("connect"),
        "/healthz",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let mut request =
        format!("ws://{}/ws/counter/likes", server.addr).into_client_request().expect("request");
    request.headers_mut().insert("host", "evil.example:8094".parse().expect("header"));
    request.headers_mut().insert("origin", "http://evil.example:8094".parse().expect("header"));
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 403);
        }
        other => panic!("the upgrade was not refused: {other:?}"),
    }
    assert_eq!(server.value("likes").await, (0, 0));
}

#[tokio::test]
async fn a_socket_is_closed_at_expiry_and_a_fresh_token_in_band_keeps_it_with_no_gap() {
    let mut auth = auth_config();
    auth.jwt.leeway = Duration::ZERO;
    let server = start(auth).await;
    let writer = hs256(&claims("writer", &[&format!("likes:*={ALL_WRITES}")]));
    let short = |seconds: u64| {
        let mut short = claims("viewer", &["likes:*=read"]);
        short["exp"] = json!(now() + seconds);
        hs256(&short)
    };

    // Without a refresh: closed with 4502 once the token expires.
    let mut lapsing = open_socket(&server, "likes:a", Some(&short(2))).await;
    assert!(matches!(next_event(&mut lapsing).await, Event::Message(ServerMessage::Snapshot(_))));
    // With a refresh in band before expiry: every update arrives, across the old expiry.
    let mut refreshed = open_socket(&server, "likes:a", None).await;
    refreshed
        .send(Message::text(json!({"type": "auth", "token": short(2)}).to_string()))
        .await
        .expect("send auth");
    let mut first = Vec::new();
    loop {
        match next_event(&mut refreshed).await {
            Event::Message(ServerMessage::Authenticated(authenticated)) => {
                assert_eq!(authenticated.principal, "viewer");
                assert!(authenticated.expires_at.is_some());
                first.push("authenticated");
            }
            Event::Message(ServerMessage::Snapshot(snapshot)) => {
                assert_eq!(snapshot.can, vec![tally_proto::Action::Read]);
                first.push("snapshot");
            }
            Event::Message(other) => panic!("unexpected {other:?}"),
            Event::Closed(code) => panic!("closed {code}"),
        }
        if first.len() == 2 {
            break;
        }
    }
    assert_eq!(first, ["authenticated", "snapshot"], "credentials come before any counter data");
    call(&server, "increment", &json!({"name": "likes:a"}), Some(&writer)).await;
    refreshed
        .send(Message::text(json!({"type": "auth", "token": short(3600)}).to_string()))
        .await
        .expect("send fresh auth");
    let mut versions = Vec::new();
    let mut renewed = false;
    while versions.is_empty() || !renewed {
        match next_event(&mut refreshed).await {
            Event::Message(ServerMessage::Update(update)) => versions.push(update.version),
            Event::Message(ServerMessage::Authenticated(_)) => renewed = true,
            Event::Message(other) => panic!("unexpected {other:?}"),
            Event::Closed(code) => panic!("closed {code}"),
        }
    }
    // The first token (2 s) lapses here; the refreshed socket must stay.
    match next_event(&mut lapsing).await {
        Event::Closed(code) => assert_eq!(code, close::TOKEN_EXPIRED),
        Event::Message(ServerMessage::Update(update)) => {
            assert_eq!(update.version, 1);
            assert!(matches!(next_event(&mut lapsing).await, Event::Closed(close::TOKEN_EXPIRED)));
        }
        Event::Message(other) => panic!("unexpected {other:?}"),
    }
    for _ in 0..2 {
        call(&server, "increment", &json!({"name": "likes:a"}), Some(&writer)).await;
    }
    while versions.len() < 3 {
        match next_event(&mut refreshed).await {
            Event::Message(ServerMessage::Update(update)) => versions.push(update.version),
            Event::Message(other) => panic!("unexpected {other:?}"),
            Event::Closed(code) => panic!("the refreshed socket closed with {code}"),
        }
    }
    assert_eq!(versions, [1, 2, 3]);
}

#[tokio::test]
async fn a_fresh_token_that_grants_less_ends_the_watch_and_a_bad_one_changes_nothing() {
    let server = start(auth_config()).await;
    let mut socket =
        open_socket(&server, "likes:b", Some(&hs256(&claims("viewer", &["likes:*=read"])))).await;
    assert!(matches!(next_event(&mut socket).await, Event::Message(ServerMessage::Snapshot(_))));
    socket.send(Message::text(r#"{"type":"auth","token":"garbage"}"#)).await.expect("send");
    match next_event(&mut socket).await {
        Event::Message(ServerMessage::Error(error)) => assert_eq!(error.code, "unauthenticated"),
        _ => panic!("a bad fresh token is answered with an error"),
    }
    let narrower = hs256(&claims("viewer", &["votes:*=read"]));
    socket
        .send(Message::text(json!({"type": "auth", "token": narrower}).to_string()))
        .await
        .expect("send");
    assert!(matches!(next_event(&mut socket).await, Event::Closed(close::FORBIDDEN)));
}

#[tokio::test]
async fn anonymous_grants_watch_at_once_and_only_admins_see_who_changed_what() {
    let mut auth = auth_config();
    auth.anonymous = Some(Grant::parse_all(&["public:*=read"]).expect("grant"));
    let server = start(auth).await;
    let mut anonymous = open_socket(&server, "public:votes", None).await;
    let Event::Message(ServerMessage::Snapshot(snapshot)) = next_event(&mut anonymous).await else {
        panic!("anonymous may read public counters at once");
    };
    assert_eq!(snapshot.can, vec![tally_proto::Action::Read]);
    let admin = hs256(&claims("root", &["*=admin"]));
    let mut audited = open_socket(&server, "public:votes", Some(&admin)).await;
    let Event::Message(ServerMessage::Snapshot(snapshot)) = next_event(&mut audited).await else {
        panic!("snapshot")
    };
    assert_eq!(snapshot.can.len(), 6, "admin can everything: {:?}", snapshot.can);

    let writer = hs256(&claims("alice", &[&format!("public:*={ALL_WRITES}")]));
    let (status, answer, _) =
        call(&server, "increment", &json!({"name": "public:votes"}), Some(&writer)).await;
    assert_eq!(status, 200);
    assert!(answer.get("by").is_none(), "the writer is no admin: {answer}");
    let Event::Message(ServerMessage::Update(seen)) = next_event(&mut anonymous).await else {
        panic!("update")
    };
    assert_eq!(seen.by, None);
    let Event::Message(ServerMessage::Update(seen)) = next_event(&mut audited).await else {
        panic!("update")
    };
    assert_eq!(seen.by.as_deref(), Some("alice"));
    let (_, page, _) =
        call(&server, "getHistory", &json!({"name": "public:votes"}), Some(&admin)).await;
    assert_eq!(page["entries"][0]["by"], "alice", "{page}");
    let (_, page, _) = call(&server, "getHistory", &json!({"name": "public:votes"}), None).await;
    assert!(page["entries"][0].get("by").is_none(), "{page}");
    // Anonymous may not write, and is told credentials would help.
    let (status, answer, _) =
        call(&server, "increment", &json!({"name": "public:votes"}), None).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (401, Some("unauthenticated")));
}

#[tokio::test]
async fn the_write_rate_answers_429_with_retry_after_and_spares_other_principals() {
    let mut auth = auth_config();
    auth.write_rate = 1;
    auth.write_burst = 3;
    let server = start(auth).await;
    let grant = format!("likes:*={ALL_WRITES}");
    let alice = hs256(&claims("alice", &[&grant]));
    let bob = hs256(&claims("bob", &[&grant]));
    for _ in 0..3 {
        let (status, answer, _) =
            call(&server, "increment", &json!({"name": "likes:r"}), Some(&alice)).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, answer, headers) =
        call(&server, "increment", &json!({"name": "likes:r"}), Some(&alice)).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"]["code"], "rate_limited");
    assert_eq!(answer["error"]["temporary"], true);
    assert!(answer["error"]["retryAfterMs"].as_u64().is_some_and(|ms| (1..=1000).contains(&ms)));
    let retry_after: u64 =
        headers["retry-after"].to_str().expect("text").parse().expect("whole seconds");
    assert!(retry_after >= 1);
    assert_eq!(state_of(&server, "likes:r").await, (3, 3), "the refused write changed nothing");
    let (status, _, _) = call(&server, "increment", &json!({"name": "likes:r"}), Some(&bob)).await;
    assert_eq!(status, 200, "another principal is not slowed");
    // Reads are not writes.
    let (status, _, _) = call(&server, "getValue", &json!({"name": "likes:r"}), Some(&alice)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn key_rpcs_need_global_admin_and_revocation_is_immediate() {
    let server = start(auth_config()).await;
    let admin = hs256(&claims("root", &["*=admin"]));
    let local_admin = hs256(&claims("mod", &["likes:*=admin"]));
    let body = json!({"name": "bot", "grants": ["likes:*=read,increment<=1"]});
    let (status, answer, _) = call_key(&server, "key.create", &body, &local_admin).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("forbidden")), "{answer}");
    let (status, created, _) = call_key(&server, "key.create", &body, &admin).await;
    assert_eq!(status, 200, "{created}");
    let key = created["key"].as_str().expect("key").to_owned();
    assert!(key.starts_with("tally_"));
    let (status, answer, _) = call_key(&server, "key.create", &body, &admin).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (409, Some("key_exists")));
    let bad = json!({"name": "bot2", "grants": ["likes:*=fly"]});
    let (status, answer, _) = call_key(&server, "key.create", &bad, &admin).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_grant")));

    let (status, answer, _) =
        call(&server, "increment", &json!({"name": "likes:k"}), Some(&key)).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer, _) =
        call(&server, "increment", &json!({"name": "likes:k", "amount": 2}), Some(&key)).await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]["message"].as_str().is_some_and(|m| m.contains("cap of 1")),
        "{answer}"
    );
    let (_, listed, _) = call_key(&server, "key.list", &json!({}), &admin).await;
    assert_eq!(listed["keys"][0]["name"], "bot");
    assert!(listed.to_string().find(&key[6..]).is_none(), "the secret is never listed");
    let (status, _, _) = call_key(&server, "key.revoke", &json!({"name": "bot"}), &admin).await;
    assert_eq!(status, 200);
    let (status, answer, _) =
        call(&server, "increment", &json!({"name": "likes:k"}), Some(&key)).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (401, Some("unauthenticated")));
    let (status, answer, _) =
        call_key(&server, "key.revoke", &json!({"name": "nobody"}), &admin).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (404, Some("unknown_key")));
    // The history of the key's write names it.
    let (_, page, _) = call(&server, "getHistory", &json!({"name": "likes:k"}), Some(&admin)).await;
    assert_eq!(page["entries"][0]["by"], "key:bot", "{page}");
}

#[tokio::test]
async fn the_first_api_key_turns_auth_on_and_metrics_then_need_admin() {
    let server = TestServer::start().await;
    assert_eq!(server.value("x").await, (0, 0), "open: anonymous may read");
    let (status, created, _) = call_key(
        &server,
        "key.create",
        &json!({"name": "ops", "grants": ["*=admin"]}),
        "ignored-in-open-mode",
    )
    .await;
    assert_eq!(status, 401, "a broken credential is refused even in open mode: {created}");
    let response = reqwest::Client::new()
        .post(server.url("/rpc/key.create"))
        .header("content-type", "application/json")
        .body(json!({"name": "ops", "grants": ["*=admin"]}).to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let created: Value = response.json().await.expect("json");
    let key = created["key"].as_str().expect("key").to_owned();
    let (status, answer, _) = call(&server, "getValue", &json!({"name": "x"}), None).await;
    assert_eq!(status, 401, "anonymous lost everything once a key exists: {answer}");
    let metrics = reqwest::Client::new().get(server.url("/metrics")).send().await.expect("get");
    assert_eq!(metrics.status().as_u16(), 401);
    let metrics = reqwest::Client::new()
        .get(server.url("/metrics"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("get");
    assert_eq!(metrics.status().as_u16(), 200);
}

#[tokio::test]
async fn ping_frames_count_against_the_message_rate() {
    let config = Config { max_messages_per_second: 20, ..test_config() };
    let server = TestServer::start_with(config, SqliteOptions::default()).await;
    let mut socket = open_socket(&server, "pinged", None).await;
    assert!(matches!(next_event(&mut socket).await, Event::Message(ServerMessage::Snapshot(_))));
    for _ in 0..200 {
        if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
            break;
        }
    }
    let code = loop {
        match next_event(&mut socket).await {
            Event::Closed(code) => break code,
            Event::Message(_) => {}
        }
    };
    assert_eq!(code, close::POLICY_VIOLATION);
}

/// Revocation is checked before each update is sent (and at each ping tick): the socket of a
/// revoked key gets nothing more, and is closed.
#[tokio::test]
async fn a_revoked_key_is_sent_nothing_more() {
    let server = start(auth_config()).await;
    let admin = hs256(&claims("root", &["*=admin"]));
    let body = json!({"name": "screen", "grants": ["likes:*=read"]});
    let (_, created, _) = call_key(&server, "key.create", &body, &admin).await;
    let key = created["key"].as_str().expect("key").to_owned();
    let mut socket = open_socket(&server, "likes:screen", Some(&key)).await;
    assert!(matches!(next_event(&mut socket).await, Event::Message(ServerMessage::Snapshot(_))));
    let (status, _, _) = call_key(&server, "key.revoke", &json!({"name": "screen"}), &admin).await;
    assert_eq!(status, 200);
    call(&server, "increment", &json!({"name": "likes:screen"}), Some(&admin)).await;
    assert!(matches!(next_event(&mut socket).await, Event::Closed(close::UNAUTHENTICATED)));
}

#[tokio::test]
async fn sockets_of_an_open_server_lose_open_rights_when_the_first_key_turns_auth_on() {
    let server = TestServer::start().await;
    let mut socket = open_socket(&server, "likes:open", None).await;
    assert!(matches!(next_event(&mut socket).await, Event::Message(ServerMessage::Snapshot(_))));
    // From a web page, the first key is refused: it would take the server over.
    let body = json!({"name": "ops", "grants": ["*=admin"]}).to_string();
    let refused = reqwest::Client::new()
        .post(server.url("/rpc/key.create"))
        .header("content-type", "application/json")
        .header("origin", format!("http://{}", server.addr))
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status().as_u16(), 403);
    let created = reqwest::Client::new()
        .post(server.url("/rpc/key.create"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(created.status().as_u16(), 200);
    let created: Value = created.json().await.expect("json");
    let key = created["key"].as_str().expect("key");
    call(&server, "increment", &json!({"name": "likes:open"}), Some(key)).await;
    assert!(matches!(next_event(&mut socket).await, Event::Closed(close::FORBIDDEN)));
}
