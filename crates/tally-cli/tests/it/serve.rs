//! `tally serve`: its flags, its start, its refusals, its shutdown.

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::process::{PATIENCE, Tally, serve_once, tally};

#[test]
fn help_documents_every_flag() {
    let output = tally().args(["serve", "--help"]).output().expect("run");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).expect("utf-8");
    for flag in [
        "--listen",
        "TALLY_LISTEN",
        "127.0.0.1:8094",
        "--database",
        "TALLY_DATABASE",
        "tally.db",
        "--idle-timeout",
        "--ping-interval",
        "--history-limit",
        "--watch-buffer",
        "--send-timeout",
        "--shutdown-grace",
        "--allow-origin",
        "TALLY_ALLOW_ORIGINS",
        "--max-connections",
        "--max-connections-per-ip",
        "--header-timeout",
        "--request-timeout",
        "--max-watchers-per-counter",
        "--max-messages-per-second",
        "--jwt-secret-file",
        "TALLY_JWT_SECRET",
        "--jwt-public-key",
        "--jwt-jwks",
        "--jwt-audience",
        "--jwt-issuer",
        "--jwt-leeway",
        "--anonymous",
        "--public-host",
        "--insecure-open",
        "--write-rate",
        "--write-burst",
        "--auth-timeout",
        "--tls-cert",
        "--tls-key",
        "--max-counters",
        "TALLY_MAX_COUNTERS",
        "--max-database-size",
        "TALLY_MAX_DATABASE_SIZE",
    ] {
        assert!(help.contains(flag), "serve --help does not mention {flag}:\n{help}");
    }
    let output = tally().arg("--help").output().expect("run");
    assert!(String::from_utf8_lossy(&output.stdout).contains("serve"));
}

#[test]
fn bad_flags_are_refused_with_what_is_allowed() {
    let output = tally().args(["serve", "--ping-interval", "0s"]).output().expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("more than zero"));
    let output = tally().args(["serve", "--history-limit", "0"]).output().expect("run");
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn a_file_that_is_not_a_tally_database_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let database = dir.path().join("notes.txt");
    let text = "these are my notes, not a database\n".repeat(200);
    std::fs::write(&database, &text).expect("write");
    let output = serve_once(&database);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a SQLite database"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&database).expect("read"), text, "the file was changed");
}

#[test]
fn a_sqlite_database_of_another_program_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("dir");
    let database = dir.path().join("app.db");
    {
        let other = rusqlite::Connection::open(&database).expect("create");
        other
            .execute_batch(
                "CREATE TABLE orders (id INTEGER PRIMARY KEY); INSERT INTO orders VALUES (7);",
            )
            .expect("fill");
    }
    let before = std::fs::read(&database).expect("read");
    let output = serve_once(&database);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another program") && stderr.contains("will not write"), "{stderr}");
    assert_eq!(
        std::fs::read(&database).expect("read"),
        before,
        "the other program's database was changed"
    );
}

#[tokio::test]
async fn a_second_server_on_the_same_database_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let database = dir.path().join("tally.db");
    let _first = Tally::start(&database, &[]);
    let output = serve_once(&database);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("another Tally server"));
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1012_and_exits_0() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = Tally::start(&dir.path().join("tally.db"), &[]);
    let mut sockets = Vec::new();
    for name in ["a", "b", "c"] {
        let url = format!("ws://{}/ws/counter/{name}", server.addr);
        let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.expect("connect");
        let first = socket.next().await.expect("snapshot").expect("message");
        assert!(matches!(first, Message::Text(_)));
        sockets.push(socket);
    }
    server.ok("increment", serde_json::json!({"name": "a"})).await;
    server.signal("TERM");
    for socket in &mut sockets {
        let code = loop {
            match tokio::time::timeout(PATIENCE, socket.next()).await.expect("closed in time") {
                Some(Ok(Message::Close(frame))) => break frame.map(|frame| u16::from(frame.code)),
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        assert_eq!(code, Some(1012));
    }
    let status = server.wait();
    assert_eq!(status.code(), Some(0), "exit status");
    // Give the log reader a moment to pass on the last lines the process wrote.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let log = server.drain_log();
    assert!(log.iter().any(|line| line.contains("SIGTERM")), "{log:?}");
    assert!(log.last().is_some_and(|line| line.contains("tally stopped")), "{log:?}");
}

#[test]
fn without_auth_it_refuses_a_non_loopback_address_and_says_how_to_configure_it() {
    let dir = tempfile::tempdir().expect("dir");
    let output = tally()
        .args(["serve", "--listen", "0.0.0.0:0", "--database"])
        .arg(dir.path().join("tally.db"))
        .env_remove("TALLY_JWT_SECRET")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for says in ["non-loopback", "--jwt-secret-file", "--anonymous", "--insecure-open"] {
        assert!(stderr.contains(says), "{stderr} should mention {says}");
    }
}

#[test]
fn a_short_or_missing_jwt_secret_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "too short\n").expect("write");
    let output = tally()
        .args(["serve", "--listen", "127.0.0.1:0", "--database"])
        .arg(dir.path().join("tally.db"))
        .arg("--jwt-secret-file")
        .arg(&secret)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("at least 32"));
    let output =
        tally().args(["serve", "--jwt-secret-file", "/nonexistent/secret"]).output().expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/secret"));
    let output = tally().args(["serve", "--anonymous", "public:*=fly"]).output().expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("fly"));
}

#[tokio::test]
async fn the_start_line_says_who_may_do_what() {
    let dir = tempfile::tempdir().expect("dir");
    let open = Tally::start(&dir.path().join("open.db"), &[]);
    let log = access_line(&open);
    assert!(log.contains("open: no auth configured") && log.contains("loopback only"), "{log}");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef-and-more\n").expect("write");
    let guarded = Tally::start(
        &dir.path().join("guarded.db"),
        &["--jwt-secret-file", secret.to_str().expect("utf-8"), "--anonymous", "public:*=read"],
    );
    let log = access_line(&guarded);
    assert!(
        log.contains("auth on: JWTs (HS256, HS384, HS512); anonymous grants: public:*=read"),
        "{log}"
    );
    assert!(!log.contains("0123456789abcdef"), "the secret reached the log: {log}");
    let (status, answer) =
        guarded.call("increment", serde_json::json!({"name": "public:x"})).await.expect("call");
    assert_eq!(status, 401, "{answer}");
}

/// The log line that says who may do what (it follows the start line).
fn access_line(server: &Tally) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut log = Vec::new();
    while std::time::Instant::now() < deadline {
        log.extend(server.drain_log());
        if let Some(line) = log.iter().find(|line| line.contains("access ")) {
            return line.clone();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("no access line in {log:?}");
}

/// Issue 16: the database holds key hashes and who changed what, so its files (the database,
/// its `-wal` and `-shm`, and the lock file) are created readable by their owner only, whatever
/// the umask.
#[tokio::test]
async fn issue_16_database_files_are_created_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let database = dir.path().join("fresh.db");
    let server = Tally::start(&database, &[]);
    // A write makes SQLite create the `-wal` and `-shm` files.
    server.ok("increment", serde_json::json!({"name": "modes"})).await;
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let path = dir.path().join(format!("fresh.db{suffix}"));
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|error| panic!("{} should exist: {error}", path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{} has mode {:o}", path.display(), mode & 0o777);
    }
}

/// Issue 16: `--max-counters` from the command line, across a restart (the count is read from
/// the file at start): the counters stored keep working, a new one is refused 507.
#[tokio::test]
async fn issue_16_max_counters_holds_across_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let database = dir.path().join("quota.db");
    let mut server = Tally::start(&database, &["--max-counters", "2"]);
    server.ok("increment", serde_json::json!({"name": "a"})).await;
    server.ok("increment", serde_json::json!({"name": "b"})).await;
    server.signal("TERM");
    assert_eq!(server.wait().code(), Some(0));

    let server = Tally::start(&database, &["--max-counters", "2"]);
    let (status, answer) =
        server.call("increment", serde_json::json!({"name": "c"})).await.expect("answer");
    assert_eq!((status, &answer["error"]["code"]), (507, &serde_json::json!("quota_exceeded")));
    assert_eq!(server.ok("increment", serde_json::json!({"name": "a"})).await["value"], 2);
}
