//! Crash safety under repeated SIGKILL: the real binary is killed at random moments while
//! writers and a watcher are busy, and restarted on the same database each time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tally_client::{Backoff, Client, WatchEvent, WatchOptions};

use crate::process::{Answered, PATIENCE, Tally, write_until_killed};

/// Kills per run in CI; `TALLY_CRASH_KILLS=N` asks for a longer run (docs/RELIABILITY.md).
const KILLS: usize = 20;
const COUNTERS: [&str; 3] = ["c0", "c1", "c2"];
/// The counter the watcher follows across every crash.
const WATCHED: &str = "c0";
/// Keep all history, so every version can be checked after the last crash.
const SERVE_FLAGS: [&str; 2] = ["--history-limit", "1000000"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sigkill_loses_no_answered_write_and_watchers_see_every_version_once() {
    let dir = tempfile::tempdir().expect("dir");
    let database = dir.path().join("tally.db");
    let answered: Answered = Arc::default();
    // Versions of WATCHED delivered to the watcher, across all its reconnects.
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();

    let kills =
        std::env::var("TALLY_CRASH_KILLS").ok().and_then(|n| n.parse().ok()).unwrap_or(KILLS);
    for round in 0..kills {
        let server = Arc::new(Tally::start(&database, &SERVE_FLAGS));
        if round > 0 {
            let so_far = answered.lock().expect("lock").clone();
            check_storage(&server, &so_far).await;
        }
        // The watcher is subscribed before the writes start, so it sees some of them live and
        // the rest by resuming after the crash.
        let (subscribed, is_subscribed) = tokio::sync::oneshot::channel();
        let watcher =
            tokio::spawn(follow(server.addr.to_string(), Arc::clone(&seen), Some(subscribed)));
        tokio::time::timeout(PATIENCE, is_subscribed)
            .await
            .expect("watcher subscribed in time")
            .expect("watcher");
        let mut writers = Vec::new();
        for writer in 0..4 {
            writers.push(tokio::spawn(write_until_killed(
                Arc::clone(&server),
                &COUNTERS,
                writer,
                Arc::clone(&answered),
            )));
        }
        // Kill at a random moment, mid-stream.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(50..400))).await;
        server.signal("KILL");
        for writer in writers {
            writer.await.expect("writer");
        }
        // Wait until the old watcher has really stopped, so it cannot record a version after
        // the next one has read where to resume.
        watcher.abort();
        surface_panic(watcher.await);
    }

    let server = Tally::start(&database, &SERVE_FLAGS);
    let answered = answered.lock().expect("lock").clone();
    check_storage(&server, &answered).await;
    assert!(
        answered.len() > kills * 10,
        "too few writes were answered to mean anything: {}",
        answered.len()
    );

    // The watcher resumes once more and catches up: it must have seen every version of the
    // counter exactly once, in order.
    let final_version =
        server.ok("getValue", json!({"name": WATCHED})).await["version"].as_u64().expect("version");
    let catch_up = tokio::spawn(follow(server.addr.to_string(), Arc::clone(&seen), None));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while seen.lock().expect("lock").last().copied().unwrap_or(0) < final_version {
        assert!(tokio::time::Instant::now() < deadline, "the watcher did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(final_version as usize > kills, "too few versions to mean anything: {final_version}");
    eprintln!(
        "{kills} kills: {} answered writes checked, watcher saw versions 1..={final_version} once each",
        answered.len()
    );
    catch_up.abort();
    surface_panic(catch_up.await);
    let seen = seen.lock().expect("lock").clone();
    assert!(
        seen == (1..=final_version).collect::<Vec<_>>(),
        "the watcher saw versions missing, repeated or out of order"
    );
}

/// Watches WATCHED on the server at `addr`, resuming after the last version in `seen`, and
/// appends each delivered version to `seen`; says on `subscribed` when the first message came.
async fn follow(
    addr: String,
    seen: Arc<Mutex<Vec<u64>>>,
    mut subscribed: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let client = Client::new(&format!("http://{addr}")).expect("client");
    let since = seen.lock().expect("lock").last().copied();
    let backoff =
        Backoff { min: Duration::from_millis(20), max: Duration::from_millis(100), factor: 2.0 };
    let mut watch =
        client.watch_with(WATCHED, WatchOptions { since, backoff, ..WatchOptions::default() });
    while let Some(event) = watch.next().await {
        if matches!(event, WatchEvent::Snapshot(_) | WatchEvent::Resumed { .. })
            && let Some(subscribed) = subscribed.take()
        {
            let _ = subscribed.send(());
        }
        match event {
            WatchEvent::Update(update) => seen.lock().expect("lock").push(update.version),
            WatchEvent::Snapshot(snapshot) => {
                // Only the very first connection starts from a snapshot: every later one
                // resumes, and history is kept in full, so a resync would be a fault.
                assert!(!snapshot.resync, "resync after a crash at version {}", snapshot.version);
                assert!(since.is_none());
                assert_eq!(snapshot.version, 0);
            }
            WatchEvent::Failed(error) => panic!("watch failed: {error}"),
            _ => {}
        }
    }
}

/// After a restart: every answered write is stored with the value it was answered with, versions
/// have no gap, history chains from 0, and the current value is the last entry's.
async fn check_storage(server: &Tally, answered: &BTreeMap<(String, u64), i64>) {
    for name in COUNTERS {
        let history = server.history(name).await;
        let mut running = 0;
        for (expected_version, entry) in (1_u64..).zip(&history) {
            assert_eq!(
                entry["version"].as_u64(),
                Some(expected_version),
                "{name}: versions have a gap"
            );
            assert_eq!(
                entry["previousValue"].as_i64(),
                Some(running),
                "{name}: history does not chain"
            );
            running = entry["value"].as_i64().expect("value");
            if let Some(value) = answered.get(&(name.to_owned(), expected_version)) {
                assert_eq!(
                    running, *value,
                    "{name} v{expected_version}: stored value differs from the answer"
                );
            }
        }
        let stored_versions = history.len() as u64;
        let last_answered =
            answered.range((name.to_owned(), 0)..=(name.to_owned(), u64::MAX)).next_back();
        if let Some(((_, version), _)) = last_answered {
            assert!(*version <= stored_versions, "{name}: answered version {version} lost");
        }
        let current = server.ok("getValue", json!({"name": name})).await;
        assert_eq!(
            (current["value"].as_i64(), current["version"].as_u64()),
            (Some(running), Some(stored_versions))
        );
    }
}

/// A watcher task ends by being aborted; if it panicked instead (a failed check), fail the test.
fn surface_panic(ended: Result<(), tokio::task::JoinError>) {
    if let Err(error) = ended
        && error.is_panic()
    {
        std::panic::resume_unwind(error.into_panic());
    }
}
