//! `https` and `wss` against an in-process TLS server whose certificate is made at test time.

use std::net::SocketAddr;

use tally_client::{Client, ClientError, WatchEvent};
use tally_server::Config;
use tally_server::config::TlsFiles;

use crate::support::{next, serve_with};

/// A self-signed certificate for 127.0.0.1 and localhost, written to `dir`; answers the files
/// and the certificate's PEM.
pub(crate) fn certificate(dir: &std::path::Path) -> (TlsFiles, String) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("certificate");
    let cert_pem = generated.cert.pem();
    let files = TlsFiles { cert_path: dir.join("cert.pem"), key_path: dir.join("key.pem") };
    std::fs::write(&files.cert_path, &cert_pem).expect("write cert");
    std::fs::write(&files.key_path, generated.signing_key.serialize_pem()).expect("write key");
    (files, cert_pem)
}

async fn tls_server(dir: &std::path::Path) -> (crate::support::Server, SocketAddr, String) {
    let (files, cert_pem) = certificate(dir);
    let config = Config { tls: Some(files), ..Config::default() };
    let (server, addr) = serve_with(dir, "127.0.0.1:0".parse().expect("addr"), config).await;
    (server, addr, cert_pem)
}

#[tokio::test]
async fn rpcs_and_a_watch_over_https_and_wss_with_an_added_root() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr, cert_pem) = tls_server(dir.path()).await;
    let client = Client::builder(&format!("https://{addr}"))
        .add_root_certificate_pem(cert_pem)
        .build()
        .expect("client");
    assert_eq!(client.increment("secure", 2).await.expect("increment").value, 2);

    let mut watch = client.watch("secure");
    assert!(matches!(next(&mut watch).await, WatchEvent::Connected));
    match next(&mut watch).await {
        WatchEvent::Snapshot(snapshot) => assert_eq!((snapshot.value, snapshot.version), (2, 1)),
        other => panic!("expected a snapshot, got {other:?}"),
    }
    client.increment("secure", 1).await.expect("increment");
    match next(&mut watch).await {
        WatchEvent::Update(update) => assert_eq!((update.value, update.version), (3, 2)),
        other => panic!("expected an update, got {other:?}"),
    }
    let value = client.get_value("secure").await.expect("value");
    assert_eq!((value.value, value.version), (3, 2));
    drop(watch);
    server.stop().await;
}

#[tokio::test]
async fn an_untrusted_certificate_or_plain_http_to_a_tls_server_is_a_connect_error() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr, _) = tls_server(dir.path()).await;
    // Without the certificate among its roots, the client refuses the server.
    let untrusting = Client::new(&format!("https://{addr}")).expect("client");
    let error = untrusting.get_value("x").await.expect_err("untrusted");
    assert!(error.is_connect(), "{error:?}");
    assert!(error.to_string().to_lowercase().contains("certificate"), "{error}");
    let mut watch = untrusting.watch("x");
    match next(&mut watch).await {
        WatchEvent::Disconnected { reason, .. } => {
            assert!(reason.to_lowercase().contains("certificate"), "{reason}")
        }
        other => panic!("expected a failed connection, got {other:?}"),
    }
    // Plain HTTP to a TLS port gets no HTTP answer.
    let plain = Client::new(&format!("http://{addr}")).expect("client");
    assert!(plain.get_value("x").await.expect_err("plain").is_connect());
    server.stop().await;
}

#[test]
fn a_bad_root_certificate_is_refused_when_building() {
    let error = Client::builder("https://127.0.0.1:1")
        .add_root_certificate_pem("not a certificate")
        .build()
        .expect_err("bad PEM");
    assert!(matches!(error, ClientError::InvalidCertificate { .. }), "{error:?}");
}

#[tokio::test]
async fn bad_tls_files_stop_the_server_before_it_serves() {
    let dir = tempfile::tempdir().expect("dir");
    let (files, _) = certificate(dir.path());
    std::fs::write(
        &files.key_path,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .expect("spoil key");
    let store = tally_server::SqliteStore::open(
        &dir.path().join("tally.db"),
        tally_server::SqliteOptions::default(),
    )
    .expect("store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let config = Config { tls: Some(files.clone()), ..Config::default() };
    let error = tally_server::run(listener, std::sync::Arc::new(store), config, async {})
        .await
        .expect_err("bad key");
    let message = error.to_string();
    assert!(message.contains(&files.key_path.display().to_string()), "{message}");

    let missing = TlsFiles { cert_path: dir.path().join("nope.pem"), key_path: files.key_path };
    let store = tally_server::SqliteStore::open(
        &dir.path().join("tally2.db"),
        tally_server::SqliteOptions::default(),
    )
    .expect("store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let config = Config { tls: Some(missing), ..Config::default() };
    let error = tally_server::run(listener, std::sync::Arc::new(store), config, async {})
        .await
        .expect_err("missing cert");
    assert!(error.to_string().contains("nope.pem"), "{error}");
}
