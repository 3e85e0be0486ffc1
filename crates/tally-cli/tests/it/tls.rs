//! `tally serve --tls-cert/--tls-key` with a certificate made at test time, and the client
//! subcommands over `https`/`wss` with `--ca-cert` (or TALLY_CA_CERT).

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::cli::{Watcher, command, json_lines, run_err, run_ok};
use crate::process::Tally;

/// A self-signed certificate for 127.0.0.1 and localhost in `dir`: (cert, key) paths.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).expect("write cert");
    std::fs::write(&key, generated.signing_key.serialize_pem()).expect("write key");
    (cert, key)
}

fn start_tls(dir: &Path) -> (Tally, PathBuf) {
    let (cert, key) = certificate(dir);
    let server = Tally::start(
        &dir.join("tally.db"),
        &["--tls-cert", &cert.display().to_string(), "--tls-key", &key.display().to_string()],
    );
    (server, cert)
}

#[tokio::test]
async fn get_incr_and_watch_over_https_with_ca_cert() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, cert) = start_tls(dir.path());
    let url = format!("https://{}", server.addr);
    let ca = cert.display().to_string();

    let line = run_ok(&url, &["--ca-cert", &ca, "incr", "tls", "5"]);
    assert!(line.starts_with("tls: 0 → 5"), "{line}");
    let mut watch = Watcher::start(&url, &["tls", "--json", "--ca-cert", &ca], None);
    let snapshot: serde_json::Value = serde_json::from_str(&watch.line()).expect("snapshot");
    assert_eq!(
        (snapshot["type"].clone(), snapshot["value"].clone()),
        (json!("snapshot"), json!(5))
    );

    // TALLY_CA_CERT stands in for the flag.
    let output = command()
        .env("TALLY_CA_CERT", &cert)
        .args(["--url", &url, "--json", "incr", "tls"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let update: serde_json::Value = serde_json::from_str(&watch.line()).expect("update");
    assert_eq!((update["value"].clone(), update["version"].clone()), (json!(6), json!(2)));
    let (status, _) = watch.interrupt();
    assert!(status.success(), "{status}");

    let got = json_lines(&run_ok(&url, &["--ca-cert", &ca, "--json", "get", "tls"]));
    assert_eq!(got[0]["value"], 6);
}

#[tokio::test]
async fn an_untrusted_server_exits_3_and_a_bad_ca_file_exits_2() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, _) = start_tls(dir.path());
    let url = format!("https://{}", server.addr);
    let error = run_err(&url, &["get", "tls"], 3);
    assert!(error.to_lowercase().contains("certificate"), "{error}");

    let missing = dir.path().join("missing.pem").display().to_string();
    let error = run_err(&url, &["--ca-cert", &missing, "get", "tls"], 2);
    assert!(error.contains("missing.pem"), "{error}");
    let not_pem = dir.path().join("tally.db").display().to_string();
    let error = run_err(&url, &["--ca-cert", &not_pem, "get", "tls"], 2);
    assert!(error.contains("--ca-cert") && error.contains("certificate"), "{error}");
}

#[test]
fn serve_with_bad_tls_files_fails_at_once_naming_the_file() {
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = certificate(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello\n").expect("write");
    for (cert, key, named) in [(&garbage, &key, "garbage.pem"), (&cert, &garbage, "garbage.pem")] {
        let output = command()
            .args(["serve", "--listen", "127.0.0.1:0", "--database"])
            .arg(dir.path().join("tally.db"))
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .expect("run tally serve");
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(named), "{stderr}");
    }
}
