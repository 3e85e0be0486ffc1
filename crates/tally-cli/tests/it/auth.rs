//! Access control from the command line: `tally token` makes tokens the server accepts, and
//! the client subcommands send them with `--token` / `TALLY_TOKEN`.

use std::path::Path;

use serde_json::Value;

use crate::cli::{Watcher, command, json_lines, run_err, run_ok};
use crate::process::Tally;

/// A 32-byte-plus secret in `dir/secret`, with a trailing newline as `echo` writes it.
fn secret_file(dir: &Path) -> (std::path::PathBuf, &'static str) {
    let secret = "0123456789abcdef0123456789abcdef-test";
    let path = dir.join("secret");
    std::fs::write(&path, format!("{secret}\n")).expect("write secret");
    (path, secret)
}

/// Runs `tally token <args>` with no TALLY_JWT_SECRET from the environment.
fn token(args: &[&str]) -> std::process::Output {
    command().env_remove("TALLY_JWT_SECRET").arg("token").args(args).output().expect("run")
}

fn decode(token: &str, secret: &str) -> Value {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_aud = false;
    let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()).expect("key");
    jsonwebtoken::decode::<Value>(token, &key, &validation).expect("a valid token").claims
}

#[test]
fn tally_token_prints_a_signed_jwt_with_the_grants() {
    let dir = tempfile::tempdir().expect("dir");
    let (path, secret) = secret_file(dir.path());
    let path = path.display().to_string();
    let output = token(&[
        "--secret-file",
        &path,
        "--sub",
        "alice",
        "--grant",
        "likes:*=read,increment<=1",
        "--grant",
        "user:{sub}:*=read",
        "--ttl",
        "2h",
        "--aud",
        "tally-test",
        "--iss",
        "backend",
    ]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let printed = String::from_utf8(output.stdout).expect("UTF-8");
    assert!(printed.ends_with('\n') && printed.lines().count() == 1, "{printed:?}");
    let claims = decode(printed.trim(), secret);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], "tally-test");
    assert_eq!(claims["iss"], "backend");
    assert_eq!(
        claims["tally"]["grants"],
        serde_json::json!(["likes:*=read,increment<=1", "user:{sub}:*=read"])
    );
    let (iat, exp) = (claims["iat"].as_u64().expect("iat"), claims["exp"].as_u64().expect("exp"));
    assert_eq!(exp - iat, 7200);

    // TALLY_JWT_SECRET stands in for --secret-file; --json says when it expires.
    let output = command()
        .env("TALLY_JWT_SECRET", secret)
        .args(["--json", "token", "--sub", "bob", "--ttl", "30s"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let printed: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let claims = decode(printed["token"].as_str().expect("token"), secret);
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["tally"]["grants"], serde_json::json!([]));
    assert!(claims.get("aud").is_none(), "{claims}");
    assert!(printed["expiresAt"].as_str().expect("expiresAt").ends_with('Z'));
}

#[test]
fn bad_grants_short_secrets_and_missing_secrets_exit_2() {
    let dir = tempfile::tempdir().expect("dir");
    let (path, _) = secret_file(dir.path());
    let path = path.display().to_string();
    for (grant, says) in [
        ("likes", "no '='"),
        ("likes:*=jump", "allowed: read, increment"),
        ("a*b=read", "only a trailing *"),
        ("likes=read<=5", "only increment, decrement and set take a cap"),
    ] {
        let output = token(&["--secret-file", &path, "--sub", "alice", "--grant", grant]);
        assert_eq!(output.status.code(), Some(2), "{grant}: {output:?}");
        assert!(output.stdout.is_empty(), "{grant}: printed a token");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("error: ") && stderr.contains(says), "{grant}: {stderr}");
    }

    let short = dir.path().join("short");
    std::fs::write(&short, "too-short-secret\n\n").expect("write");
    let output = token(&["--secret-file", &short.display().to_string(), "--sub", "alice"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("16 bytes") && stderr.contains("at least 32"), "{stderr}");

    let output = token(&["--sub", "alice"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--secret-file"), "{output:?}");

    let missing = dir.path().join("nope").display().to_string();
    let output = token(&["--secret-file", &missing, "--sub", "alice"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("nope"), "{output:?}");
}

#[test]
fn the_token_flag_is_never_echoed() {
    // An unreachable server: the error names the URL, never the token.
    let error =
        run_err("http://127.0.0.1:1", &["--token", "tally_supersecretvalue", "get", "likes"], 3);
    assert!(!error.contains("supersecret"), "{error}");
    let help = command().env("TALLY_TOKEN", "tally_supersecretvalue").arg("--help").output();
    let help = String::from_utf8(help.expect("help").stdout).expect("UTF-8");
    assert!(help.contains("--token") && !help.contains("supersecret"), "{help}");
}

/// A token made by `tally token` with the secret in `secret`.
fn make_token(secret: &Path, sub: &str, grants: &[&str]) -> String {
    let mut args = vec!["--secret-file", secret.to_str().expect("UTF-8 path"), "--sub", sub];
    for grant in grants {
        args.extend(["--grant", grant]);
    }
    let output = token(&args);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    String::from_utf8(output.stdout).expect("UTF-8").trim().to_owned()
}

/// A `tally serve` that verifies tokens with the secret in `dir/secret`.
fn start_with_secret(dir: &Path) -> (Tally, std::path::PathBuf, String) {
    let (secret, _) = secret_file(dir);
    let server = Tally::start(
        &dir.join("tally.db"),
        &["--jwt-secret-file", secret.to_str().expect("UTF-8 path")],
    );
    let url = format!("http://{}", server.addr);
    (server, secret, url)
}

#[test]
fn the_cli_sends_its_token_and_says_what_was_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let (_server, secret, url) = start_with_secret(dir.path());
    let writer = make_token(&secret, "alice", &["likes:*=read,increment"]);
    let reader = make_token(&secret, "bob", &["likes:*=read"]);

    let line = run_ok(&url, &["--token", &writer, "incr", "likes:1", "2"]);
    assert!(line.starts_with("likes:1: 0 → 2"), "{line}");

    let error = run_err(&url, &["--token", &reader, "incr", "likes:1"], 1);
    assert!(error.contains("forbidden") && error.contains("likes:1"), "{error}");
    assert!(error.contains("increment"), "names the missing action: {error}");
    assert!(!error.contains(&reader), "{error}");

    // TALLY_TOKEN stands in for the flag.
    let output = command()
        .env("TALLY_TOKEN", &reader)
        .args(["--url", &url, "--json", "get", "likes:1"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let got: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(got["value"], 2);

    let error = run_err(&url, &["get", "likes:1"], 1);
    assert!(error.contains("not authenticated") && error.contains("--token"), "{error}");
    let error = run_err(&url, &["--token", "not-a-token", "get", "likes:1"], 1);
    assert!(error.contains("unauthenticated"), "{error}");

    // A watch with a token that may read: snapshot, then live updates.
    let mut watch = Watcher::start(&url, &["likes:1", "--json", "--token", &reader], None);
    let snapshot: Value = serde_json::from_str(&watch.line()).expect("snapshot");
    assert_eq!(snapshot["value"], 2);
    assert_eq!(snapshot["can"], serde_json::json!(["read"]));
    run_ok(&url, &["--token", &writer, "incr", "likes:1"]);
    let update: Value = serde_json::from_str(&watch.line()).expect("update");
    assert_eq!(update["value"], 3);
    let (status, _) = watch.interrupt();
    assert!(status.success(), "{status}");

    // A watch the token may not read ends at once with the refusal (exit 1).
    let outsider = make_token(&secret, "eve", &["other=read"]);
    let ran = crate::cli::run(&url, &["--token", &outsider, "watch", "likes:1"]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    let last = ran.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: forbidden") && last.contains("likes:1"), "{ran:?}");
}

#[test]
fn keys_are_created_listed_and_revoked_from_the_cli() {
    let dir = tempfile::tempdir().expect("dir");
    let (_server, secret, url) = start_with_secret(dir.path());
    let admin = make_token(&secret, "root", &["*=admin"]);

    let created = crate::cli::run(
        &url,
        &["--token", &admin, "key", "create", "backend", "--grant", "likes:*=read,increment"],
    );
    assert_eq!(created.code, Some(0), "{created:?}");
    let key = created.stdout.trim().to_owned();
    assert!(key.starts_with("tally_") && created.stdout.lines().count() == 1, "{created:?}");
    assert!(created.stderr.contains("shown only this once"), "{created:?}");

    let json = run_ok(
        &url,
        &["--token", &admin, "--json", "key", "create", "reporting", "--grant", "*=read"],
    );
    let json = json_lines(&json);
    assert!(json[0]["key"].as_str().is_some_and(|key| key.starts_with("tally_")), "{json:?}");
    assert_eq!(json[0]["name"], "reporting");
    assert_eq!(json[0]["grants"], serde_json::json!(["*=read"]));

    let line = run_ok(&url, &["--token", &key, "incr", "likes:7"]);
    assert!(line.starts_with("likes:7: 0 → 1"), "{line}");

    let table = run_ok(&url, &["--token", &admin, "key", "list"]);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows[0].starts_with("NAME") && rows[1].starts_with("backend"), "{table}");
    assert!(!table.contains("tally_"), "a listing never shows keys: {table}");
    let listed = json_lines(&run_ok(&url, &["--token", &admin, "--json", "key", "list"]));
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|key| key.get("revokedAt").is_none()), "{listed:?}");

    let line = run_ok(&url, &["--token", &admin, "key", "revoke", "backend"]);
    assert!(line.starts_with("revoked key backend"), "{line}");
    let error = run_err(&url, &["--token", &key, "incr", "likes:7"], 1);
    assert!(error.contains("unauthenticated"), "a revoked key is refused at once: {error}");
    let listed = json_lines(&run_ok(&url, &["--token", &admin, "--json", "key", "list"]));
    assert!(listed[0]["revokedAt"].is_string(), "{listed:?}");

    // Mistakes: a bad grant exits 2 before anything is sent; others are the server's (1).
    let error = run_err(&url, &["--token", &admin, "key", "create", "x", "--grant", "x=fly"], 2);
    assert!(error.contains("x=fly"), "{error}");
    let error = run_err(&url, &["--token", &admin, "key", "revoke", "nobody"], 1);
    assert!(error.contains("nobody"), "{error}");
    let error = run_err(&url, &["--token", &key, "key", "list"], 1);
    assert!(error.contains("unauthenticated"), "{error}");
    let reader = make_token(&secret, "bob", &["likes:*=read"]);
    let error = run_err(&url, &["--token", &reader, "key", "list"], 1);
    assert!(error.contains("forbidden"), "{error}");
}
