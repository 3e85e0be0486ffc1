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
