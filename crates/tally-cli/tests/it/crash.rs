//! Crash safety under repeated SIGKILL: the real binary is killed at random moments while
//! writers and a watcher are busy, and restarted on the same database each time; and keyed
//! writes retried through the kills count exactly once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tally_client::{Backoff, Client, WatchEvent, WatchOptions};

use crate::process::{Answered, PATIENCE, Tally, check_storage, write_until_killed};

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
            check_storage(&server, &COUNTERS, &so_far).await;
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
    check_storage(&server, &COUNTERS, &answered).await;
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

/// A watcher task ends by being aborted; if it panicked instead (a failed check), fail the test.
fn surface_panic(ended: Result<(), tokio::task::JoinError>) {
    if let Err(error) = ended
        && error.is_panic()
    {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// Keyed increments in this test, and how many are in flight at once.
const KEYED_WRITES: usize = 10_000;
const KEYED_IN_FLIGHT: usize = 16;

/// Exactly-once writes: 16 clients send 10 000 increments, each with its own idempotency key,
/// over plain HTTP (no Tally client, whose retrying is tested on its own). The server is
/// killed with SIGKILL twice mid-stream and restarted on the same database at a new address;
/// every request whose answer was lost is sent again with the same key until it is answered.
/// The counter must end at exactly 10 000, every write having its own version, and after the
/// last restart every one of the 10 000 sent once more must be answered its first answer, byte
/// for byte, without counting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_increments_retried_through_two_sigkills_count_exactly_once() {
    let dir = tempfile::tempdir().expect("dir");
    let database = dir.path().join("tally.db");
    let mut server = Tally::start(&database, &[]);
    let (address_tx, address) = tokio::sync::watch::channel(server.addr);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let retried = Arc::new(AtomicUsize::new(0));
    // Each write's answer, as sent by the server.
    let answers: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(vec![None; KEYED_WRITES]));
    let http = reqwest::Client::builder().timeout(PATIENCE).build().expect("http client");

    let mut clients = Vec::new();
    for _ in 0..KEYED_IN_FLIGHT {
        let (http, mut address) = (http.clone(), address.clone());
        let (next, done, retried) = (Arc::clone(&next), Arc::clone(&done), Arc::clone(&retried));
        let answers = Arc::clone(&answers);
        clients.push(tokio::spawn(async move {
            loop {
                let write = next.fetch_add(1, Ordering::Relaxed);
                if write >= KEYED_WRITES {
                    return;
                }
                let answer = send_until_answered(&http, &mut address, write, &retried).await;
                answers.lock().expect("lock")[write] = Some(answer);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for kill_after in [KEYED_WRITES * 3 / 10, KEYED_WRITES * 65 / 100] {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while done.load(Ordering::Relaxed) < kill_after {
            assert!(tokio::time::Instant::now() < deadline, "writes stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.signal("KILL");
        server.wait();
        server = Tally::start(&database, &[]);
        address_tx.send(server.addr).expect("clients listen");
    }
    for client in clients {
        tokio::time::timeout(PATIENCE, client).await.expect("clients finish").expect("client");
    }

    let retried = retried.load(Ordering::Relaxed);
    assert!(retried > 0, "no answer was lost in the kills: the test proved nothing");
    let answers: Vec<String> =
        answers.lock().expect("lock").iter().map(|a| a.clone().expect("answered")).collect();
    let mut versions: Vec<u64> = answers.iter().map(|text| version_of(text)).collect();
    versions.sort_unstable();
    let highest = versions.last().copied().unwrap_or_default();
    versions.dedup();
    assert!(
        versions.iter().copied().eq(1..=KEYED_WRITES as u64),
        "{KEYED_WRITES} writes were answered {} distinct versions up to {highest}: one write counted twice or a version was answered twice",
        versions.len()
    );
    let value = server.ok("getValue", json!({"name": "once"})).await;
    assert_eq!((value["value"].as_u64(), value["version"].as_u64()), (Some(10_000), Some(10_000)));

    // Every key survived the kills: all of them again, each answered its first answer.
    let answers = Arc::new(answers);
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..KEYED_IN_FLIGHT {
        let (http, mut address, next) = (http.clone(), address.clone(), Arc::clone(&next));
        let answers = Arc::clone(&answers);
        clients.push(tokio::spawn(async move {
            let unused = AtomicUsize::new(0);
            loop {
                let write = next.fetch_add(1, Ordering::Relaxed);
                if write >= KEYED_WRITES {
                    return;
                }
                let answer = send_until_answered(&http, &mut address, write, &unused).await;
                assert_eq!(answer, answers[write], "write {write} answered differently");
            }
        }));
    }
    for client in clients {
        tokio::time::timeout(PATIENCE, client).await.expect("clients finish").expect("client");
    }
    let value = server.ok("getValue", json!({"name": "once"})).await;
    assert_eq!(value["version"].as_u64(), Some(10_000), "a retry counted again");
    eprintln!("{KEYED_WRITES} keyed writes through 2 kills: {retried} sent again, value 10000");
}

/// Sends keyed increment `write` until the server answers 200, following the server to its new
/// address when it died; counts each resend in `retried`.
async fn send_until_answered(
    http: &reqwest::Client,
    address: &mut tokio::sync::watch::Receiver<SocketAddr>,
    write: usize,
    retried: &AtomicUsize,
) -> String {
    let key = format!("write-{write}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let target = *address.borrow_and_update();
        let sent = http
            .post(format!("http://{target}/rpc/counter.increment"))
            .header("content-type", "application/json")
            .header("idempotency-key", &key)
            .body(json!({"name": "once", "amount": 1}).to_string())
            .send()
            .await;
        match sent {
            Ok(response) if response.status() == 200 => {
                if let Ok(text) = response.text().await {
                    return text;
                }
            }
            Ok(response) if response.status().is_server_error() => {}
            Ok(response) => panic!("write {write} refused: {}", response.status()),
            Err(_) => {}
        }
        // The answer was lost (or the server was going down): wait for the server to be back,
        // then send the same request with the same key.
        assert!(tokio::time::Instant::now() < deadline, "write {write} never answered");
        retried.fetch_add(1, Ordering::Relaxed);
        if *address.borrow() == target {
            let _ = tokio::time::timeout(Duration::from_millis(200), address.changed()).await;
        }
    }
}

fn version_of(answer: &str) -> u64 {
    let answer: serde_json::Value = serde_json::from_str(answer).expect("JSON answer");
    answer["version"].as_u64().expect("version")
}
