//! The client on a server with access control: tokens on RPCs and sockets, typed refusals,
//! tokens renewed before they expire (over the open socket, with no missed update) and after
//! the server says they expired (an RPC sent again, a socket reconnected with `since`), and
//! the API-key RPCs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tally_client::{Backoff, Client, ClientError, WatchEvent, WatchOptions};
use tally_server::Config;
use tally_server::access::AuthConfig;

use crate::support::{EndsSoon, Server, next, serve_with};

const SECRET: &[u8] = b"a-test-secret-of-more-than-32-bytes-for-hs256";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// An HS256 token for `sub` with `grants`, expiring at `exp` (seconds since the epoch).
fn jwt_until(sub: &str, grants: &[&str], exp: u64) -> String {
    let claims = serde_json::json!({
        "sub": sub, "iat": now(), "exp": exp, "tally": {"grants": grants},
    });
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET).expect("key");
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("sign")
}

fn jwt(sub: &str, grants: &[&str]) -> String {
    jwt_until(sub, grants, now() + 3600)
}

/// A server that verifies HS256 tokens with [`SECRET`], with no leeway (so a socket closes at
/// its token's `exp`) and a short wait for a socket's `auth` message.
async fn auth_server(dir: &std::path::Path) -> (Server, String) {
    let mut auth = AuthConfig { auth_timeout: Duration::from_millis(500), ..AuthConfig::default() };
    auth.jwt.add_secret(SECRET).expect("secret");
    auth.jwt.leeway = Duration::ZERO;
    let config = Config { auth, ..Config::default() };
    let (server, addr) = serve_with(dir, "127.0.0.1:0".parse().expect("addr"), config).await;
    (server, format!("http://{addr}"))
}

fn client_with(url: &str, token: &str) -> Client {
    Client::builder(url).token(token).build().expect("client")
}

fn fast() -> WatchOptions {
    let backoff =
        Backoff { min: Duration::from_millis(50), max: Duration::from_millis(200), factor: 2.0 };
    WatchOptions { backoff, ..WatchOptions::default() }
}

#[tokio::test]
async fn rpcs_carry_the_token_and_refusals_are_typed() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, url) = auth_server(dir.path()).await;
    let writer = client_with(&url, &jwt("alice", &["likes:*=read,increment<=1"]));
    assert_eq!(writer.increment("likes:1", 1).await.expect("increment").value, 1);

    match writer.increment("likes:1", 5).await {
        Err(ClientError::Forbidden { message }) => assert!(message.contains("cap"), "{message}"),
        other => panic!("expected forbidden, got {other:?}"),
    }
    let error = writer.reset("likes:1").await.expect_err("no reset grant");
    assert!(matches!(error, ClientError::Forbidden { .. }) && error.is_auth(), "{error:?}");
    assert_eq!(error.code(), Some("forbidden"));

    let anonymous = Client::new(&url).expect("client");
    match anonymous.get_value("likes:1").await {
        Err(ClientError::Unauthenticated { code, .. }) => assert_eq!(code, "unauthenticated"),
        other => panic!("expected unauthenticated, got {other:?}"),
    }
    let forged = Client::builder(&url)
        .token(format!("{}x", jwt("alice", &["*=admin"])))
        .build()
        .expect("client");
    let error = forged.get_value("likes:1").await.expect_err("bad signature");
    assert_eq!(error.code(), Some("unauthenticated"));
    // No token in an error or in Debug output.
    let token = jwt("alice", &["likes:*=read"]);
    let reader = client_with(&url, &token);
    let error = reader.increment("likes:1", 1).await.expect_err("read only");
    assert!(!format!("{error:?}{error}{reader:?}").contains(&token), "token leaked");
    assert_eq!(reader.get_value("likes:1").await.expect("read").value, 1);
    server.stop().await;
}

#[tokio::test]
async fn an_rpc_refused_as_expired_is_sent_once_more_with_a_fresh_token() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, url) = auth_server(dir.path()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let client = Client::builder(&url)
        .token_source(move || {
            let call = counted.fetch_add(1, Ordering::SeqCst);
            // The first token is already expired; the next ones are good.
            let exp = if call == 0 { now() - 100 } else { now() + 3600 };
            async move { Ok::<_, std::io::Error>(jwt_until("alice", &["n=read,increment"], exp)) }
        })
        .build()
        .expect("client");
    let update = client.increment("n", 1).await.expect("retried with a fresh token");
    assert_eq!((update.value, update.version), (1, 1), "applied once");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    client.increment("n", 1).await.expect("the fresh token is kept");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A source that has nothing fresher: the refusal comes back, typed.
    let stale = client_with(&url, &jwt_until("alice", &["n=read"], now() - 100));
    match stale.get_value("n").await {
        Err(ClientError::Unauthenticated { code, .. }) => assert_eq!(code, "token_expired"),
        other => panic!("expected token_expired, got {other:?}"),
    }
    // A failing source is the source's error, and nothing is sent.
    let failing = Client::builder(&url)
        .token_source(|| async { Err::<String, _>(std::io::Error::other("backend down")) })
        .build()
        .expect("client");
    let error = failing.increment("n", 1).await.expect_err("no token");
    assert!(matches!(error, ClientError::TokenSource(_)), "{error:?}");
    assert!(error.to_string().contains("backend down"), "{error}");
    assert_eq!(client.get_value("n").await.expect("value").version, 2);
    server.stop().await;
}

/// Tokens of 3 s (so 2 to 3 s of life, `exp` being whole seconds): the watch sends each fresh
/// one over its socket before the last expires, and stays on one connection, seeing every
/// version once, while a writer keeps writing.
#[tokio::test]
async fn a_watch_renews_its_token_in_band_with_no_gap() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, url) = auth_server(dir.path()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let watcher = Client::builder(&url)
        .token_source(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(jwt_until("viewer", &["live=read"], now() + 3)) }
        })
        .build()
        .expect("client");
    let writer = client_with(&url, &jwt("writer", &["live=increment"]));
    let mut watch = watcher.watch_with("live", fast());
    assert!(matches!(next(&mut watch).await, WatchEvent::Connected));
    assert!(matches!(next(&mut watch).await, WatchEvent::Snapshot(s) if s.version == 0));

    let writing = tokio::spawn(async move {
        for _ in 0..50 {
            writer.increment("live", 1).await.expect("write");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut versions = Vec::new();
    let mut renewals = 0;
    while versions.len() < 50 {
        match next(&mut watch).await {
            WatchEvent::Update(update) => versions.push(update.version),
            WatchEvent::Authenticated(authenticated) => {
                assert_eq!(authenticated.principal, "viewer");
                assert!(authenticated.expires_at.is_some(), "a JWT's expiry is told");
                renewals += 1;
            }
            other => panic!("the watch must stay on its socket, got {other:?}"),
        }
    }
    writing.await.expect("writer");
    assert_eq!(versions, (1..=50).collect::<Vec<u64>>());
    assert!(renewals >= 2, "about 5 s of 3 s tokens: {renewals} renewals");
    // One fetch for the connection and one per renewal; the last renewal may have been fetched
    // and sent but not yet answered when the 50th version arrived.
    let fetches = calls.load(Ordering::SeqCst);
    assert!(
        (renewals + 1..=renewals + 2).contains(&fetches),
        "{fetches} fetches for {renewals} renewals: a fetch per renewal, no more"
    );
    drop(watch);
    server.stop().await;
}

/// A source that hands out the same token until it has expired (as a cache in front of a
/// backend may): the watch has nothing to renew with, the server closes with 4502 at expiry,
/// and the watch gets a fresh token and resumes with `since`, missing nothing.
#[tokio::test]
async fn after_4502_a_watch_reconnects_with_a_fresh_token_and_resumes() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, url) = auth_server(dir.path()).await;
    let first = jwt_until("viewer", &["gap=read"], now() + 2);
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let watcher = Client::builder(&url)
        .token_source(move || {
            let call = counted.fetch_add(1, Ordering::SeqCst);
            let token = if call < 2 { first.clone() } else { jwt("viewer", &["gap=read"]) };
            async move { Ok::<_, std::io::Error>(token) }
        })
        .build()
        .expect("client");
    let writer = client_with(&url, &jwt("writer", &["gap=increment"]));
    let mut watch = watcher.watch_with("gap", fast());
    assert!(matches!(next(&mut watch).await, WatchEvent::Connected));
    assert!(matches!(next(&mut watch).await, WatchEvent::Snapshot(_)));
    writer.increment("gap", 1).await.expect("write");

    let mut versions = Vec::new();
    let mut closed = None;
    loop {
        match next(&mut watch).await {
            WatchEvent::Update(update) => versions.push(update.version),
            WatchEvent::Disconnected { reason, retry_in } => {
                assert_eq!(retry_in, Duration::ZERO, "reconnects at once");
                closed = Some(reason);
                // Written while the watch is away: replayed after the resume.
                writer.increment("gap", 1).await.expect("write");
                writer.increment("gap", 1).await.expect("write");
            }
            WatchEvent::Connected => {}
            WatchEvent::Resumed { since, .. } => assert_eq!(since, 1),
            other => panic!("unexpected {other:?}"),
        }
        if versions.len() == 3 {
            break;
        }
    }
    let reason = closed.expect("the server closed the socket");
    assert!(reason.contains("4502"), "{reason}");
    assert_eq!(versions, vec![1, 2, 3]);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "first, same again at renewal, fresh after 4502");
    writer.increment("gap", 1).await.expect("live write");
    assert!(matches!(next(&mut watch).await, WatchEvent::Update(u) if u.version == 4));
    drop(watch);
    server.stop().await;
}

#[tokio::test]
async fn close_4501_and_4503_end_a_watch_with_typed_errors() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, url) = auth_server(dir.path()).await;

    let other_counter = client_with(&url, &jwt("alice", &["mine=read"]));
    let mut watch = other_counter.watch_with("theirs", fast());
    let failure = loop {
        match next(&mut watch).await {
            WatchEvent::Failed(error) => break error,
            WatchEvent::Connected => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(matches!(failure, ClientError::Forbidden { .. }), "{failure:?}");
    assert!(watch.next_is_end().await, "no reconnect after 4503");

    let forged = client_with(&url, &format!("{}x", jwt("alice", &["*=read"])));
    let mut watch = forged.watch_with("theirs", fast());
    let failure = loop {
        match next(&mut watch).await {
            WatchEvent::Failed(error) => break error,
            WatchEvent::Connected => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(
        matches!(&failure, ClientError::Unauthenticated { code, .. } if code == "unauthenticated"),
        "{failure:?}"
    );
    assert!(watch.next_is_end().await, "no reconnect after 4501");

    // No credentials at all, and anonymous may not read: 4501 after --auth-timeout.
    let anonymous = Client::new(&url).expect("client");
    let mut watch = anonymous.watch_with("theirs", fast());
    let failure = loop {
        match next(&mut watch).await {
            WatchEvent::Failed(error) => break error,
            WatchEvent::Connected => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(matches!(failure, ClientError::Unauthenticated { .. }), "{failure:?}");
    server.stop().await;
}

#[tokio::test]
async fn api_keys_are_created_listed_and_revoked_and_stop_working_at_once() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, url) = auth_server(dir.path()).await;
    let admin = client_with(&url, &jwt("root", &["*=admin"]));
    let created = admin.create_key("backend", &["likes:*=read,increment"]).await.expect("create");
    assert!(created.key.starts_with("tally_"), "{}", created.key);
    assert_eq!(created.info.name, "backend");
    assert_eq!(created.info.grants, vec!["likes:*=read,increment".to_owned()]);
    assert!(created.info.revoked_at.is_none());

    let backend = client_with(&url, &created.key);
    assert_eq!(backend.increment("likes:9", 1).await.expect("key works").value, 1);
    let error = backend.reset("likes:9").await.expect_err("no reset grant");
    assert!(matches!(error, ClientError::Forbidden { .. }), "{error:?}");
    let error = backend.list_keys().await.expect_err("not an admin");
    assert!(error.is_auth(), "{error:?}");

    let error = admin.create_key("backend", &["x=read"]).await.expect_err("name taken");
    assert_eq!(error.code(), Some("key_exists"));
    let error = admin.create_key("bad name", &["x=read"]).await.expect_err("bad name");
    assert!(matches!(error, ClientError::Invalid(_)), "{error:?}");
    let error = admin.create_key("ok", &["x=fly"]).await.expect_err("bad grant");
    assert_eq!(error.code(), Some("invalid_grant"));

    let keys = admin.list_keys().await.expect("list");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].name, "backend");
    let revoked = admin.revoke_key("backend").await.expect("revoke");
    assert!(revoked.revoked_at.is_some());
    let error = backend.get_value("likes:9").await.expect_err("revoked");
    assert_eq!(error.code(), Some("unauthenticated"));
    assert!(admin.list_keys().await.expect("list")[0].revoked_at.is_some());
    let error = admin.revoke_key("nobody").await.expect_err("unknown");
    assert_eq!(error.code(), Some("unknown_key"));
    server.stop().await;
}
