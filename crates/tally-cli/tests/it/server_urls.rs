//! `--url` with several servers (the nodes of a cluster): `tally watch` moves to the next node
//! when its node is lost and goes on there; the RPC subcommands use the next URL when the first
//! refuses connections; the list is comma-separated, the flag may be repeated, and `TALLY_URL`
//! takes the same list.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cli::{Watcher, command, run_err, run_ok};
use crate::process::{PATIENCE, Tally};

/// An address on which nothing listens: connections to it are refused.
fn refusing_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// The watch's next line that is not a `resumed` marker, as JSON.
fn next_change(watcher: &Watcher) -> Value {
    loop {
        let line = watcher.line();
        let message: Value =
            serde_json::from_str(&line).unwrap_or_else(|error| panic!("{error}: {line}"));
        if message["type"] != "resumed" {
            return message;
        }
    }
}

/// Issue 14, losing a node: `tally --url A,B watch` is on A; A stops; the watch comes up on B
/// (each node has its own database here) and prints B's changes.
#[tokio::test]
async fn issue_14_watch_moves_to_the_next_url_when_its_node_is_lost() {
    let dir = tempfile::tempdir().expect("dir");
    let quick = ["--reconnect-spread", "0s"];
    let mut a = Tally::start(&dir.path().join("a.db"), &quick);
    let b = Tally::start(&dir.path().join("b.db"), &quick);
    let (url_a, url_b) = (format!("http://{}", a.addr), format!("http://{}", b.addr));
    let watcher = Watcher::start(&format!("{url_a},{url_b}"), &["node-loss", "--json"], None);
    let snapshot = next_change(&watcher);
    assert_eq!(
        (snapshot["type"].as_str(), snapshot["version"].as_u64()),
        (Some("snapshot"), Some(0))
    );

    a.signal("TERM");
    assert_eq!(a.wait().code(), Some(0), "a's exit status");
    let deadline = Instant::now() + PATIENCE;
    while !watcher.stderr().contains(&format!("connected to {url_b}")) {
        assert!(Instant::now() < deadline, "not on b in time: {}", watcher.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    b.ok("increment", json!({"name": "node-loss", "amount": 4})).await;
    let mut change = next_change(&watcher);
    if change["type"] == "snapshot" {
        // A server that tells its storage from a's starts the watch over with b's state.
        change = next_change(&watcher);
    }
    assert_eq!((change["type"].as_str(), change["value"].as_i64()), (Some("increment"), Some(4)));
    let stderr = watcher.stderr();
    assert!(stderr.contains(&format!("connected to {url_a}")), "{stderr}");
    assert!(!stderr.lines().any(|line| line.starts_with("error")), "{stderr}");
}

/// The RPC subcommands move on from a URL that refuses connections, and the three spellings of
/// a list (commas, the flag repeated, `TALLY_URL`) are one.
#[tokio::test]
async fn rpcs_use_the_next_url_when_the_first_refuses_connections() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Tally::start(&dir.path().join("tally.db"), &[]);
    let (dead, live) = (format!("http://{}", refusing_addr()), format!("http://{}", server.addr));

    let line = run_ok(&format!("{dead},{live}"), &["incr", "likes", "2"]);
    assert!(line.contains('2'), "{line}");
    let output = command()
        .args(["--url", &dead, "--url", &live, "--json", "get", "likes"])
        .output()
        .expect("run tally");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(metadata["value"], 2, "{metadata}");
    let output = command()
        .env("TALLY_URL", format!("{dead},{live}"))
        .args(["--json", "incr", "likes"])
        .output()
        .expect("run tally");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let update: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!((update["value"].as_i64(), update["version"].as_u64()), (Some(3), Some(2)));
    assert_eq!(server.ok("getValue", json!({"name": "likes"})).await["version"], 2, "once each");
}

/// No URL of the list can be reached: the commands exit 3 as for one server, `watch` once it
/// tried each, and the error names them.
#[test]
fn no_reachable_url_exits_3_naming_them() {
    let (first, second) = (refusing_addr(), refusing_addr());
    let urls = format!("http://{first},http://{second}");
    for args in [&["get", "likes"][..], &["incr", "likes"], &["watch", "likes"]] {
        let error = run_err(&urls, args, 3);
        assert!(error.contains(&second.to_string()), "tally {args:?}: {error}");
        assert!(error.contains("tally serve"), "tally {args:?}: {error}");
    }
}
