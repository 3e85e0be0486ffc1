//! Access control from the command line: `tally token` makes tokens the server accepts, and
//! the client subcommands send them with `--token` / `TALLY_TOKEN`.

use std::path::Path;

use serde_json::Value;

use crate::cli::{command, run_err};

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
