//! Real `tally serve` processes sharing one PostgreSQL database: a node stopped (SIGKILL,
//! SIGTERM) under write load, notification connections cut, a counter that hibernates between
//! other nodes' writes, and one keyed write sent to two nodes at once. (A PostgreSQL restart is
//! in its own test binary, `pg_restart`, since it would break every other test using the
//! server at the same time.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::json;

use crate::fleet::{Cluster, Load, Watcher, Writes, check_counter, wait_for_writes};

const COUNTERS: [&str; 2] = ["hits", "misses"];
const WRITERS: usize = 6;
/// Answered writes before the kill, and after it, before the writers stop.
const WRITES_BEFORE_KILL: usize = 300;
const WRITES_AFTER_KILL: usize = 300;

/// Three nodes; watchers of two counters on each; six writers sending keyed increments spread
/// over the nodes. One node is killed with SIGKILL mid-stream. Its watchers must resume on the
/// other nodes and, like every other watcher, see each version once, in order; every answered
/// write must be stored (its answer's version, with no gap), the writes whose answers died with
/// the node are retried with their keys on another node and count once, and every write the
/// dead node answered, sent again to the survivors with its key, gets its first answer byte
/// for byte and counts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_kill_9_of_a_node_under_load_loses_no_write_and_its_watchers_resume_elsewhere() {
    stop_one_node_under_load("KILL").await;
}

/// The same with SIGTERM: the node finishes what it took and closes its sockets (1012); what
/// it answered "nothing was stored" must not have been stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_sigterm_of_a_node_under_load_loses_no_write_and_its_watchers_resume_elsewhere() {
    stop_one_node_under_load("TERM").await;
}

/// Stops node 0 of three with `signal` while six writers and six watchers are busy, then checks
/// everything the two tests above say.
async fn stop_one_node_under_load(signal: &str) {
    let started = Instant::now();
    let mut cluster = Cluster::start(3).await;
    let addrs = cluster.addrs();
    let load = Load::start(&addrs, &COUNTERS, WRITERS).await;
    let writes = Arc::clone(&load.writes);
    wait_for_writes(&writes, WRITES_BEFORE_KILL).await;
    let killed = addrs[0];
    cluster.nodes[0].signal(signal);
    cluster.nodes[0].wait();
    let at_kill = writes.count();
    wait_for_writes(&writes, at_kill + WRITES_AFTER_KILL).await;
    let (watchers, writes) = load.stop_writers().await;
    let moved = writes.moved.load(Ordering::Relaxed);
    assert!(moved > 0, "no write in flight at the kill was retried on another node");

    // The watchers first, before any read could make a node look at storage for them.
    let (mut resumed_elsewhere, mut replayed) = (0, 0);
    for watcher in watchers {
        let home = watcher.home;
        let name = watcher.name.clone();
        let seen = watcher.finish(writes.count_of(&name)).await;
        if home == killed {
            assert!(
                seen.subscriptions.iter().any(|(node, since)| *node != killed && since.is_some()),
                "a watcher of {name} on the killed node never resumed elsewhere: {:?}",
                seen.subscriptions
            );
            resumed_elsewhere += 1;
            replayed += seen.replayed;
        }
    }
    assert_eq!(resumed_elsewhere, COUNTERS.len());

    // Every write the dead node answered, again, on a survivor (both in turn): its first
    // answer, and no new version.
    let from_killed: BTreeMap<String, (String, String)> = writes
        .answered
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, (_, node, _))| *node == killed)
        .map(|(key, (counter, _, text))| (key.clone(), (counter.clone(), text.clone())))
        .collect();
    assert!(!from_killed.is_empty(), "the killed node answered nothing");
    let http = reqwest::Client::new();
    for (index, (key, (counter, first))) in from_killed.iter().enumerate() {
        let survivor = addrs[1 + index % 2];
        let response = http
            .post(format!("http://{survivor}/rpc/counter.increment"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(json!({"name": counter, "amount": 1}).to_string())
            .send()
            .await
            .expect("retry");
        assert_eq!(response.status(), 200, "retry of {key} on {survivor}");
        let again = response.text().await.expect("answer");
        assert_eq!(
            &again, first,
            "{key}, answered by the killed node, answered differently by {survivor}"
        );
    }

    let mut lasts = BTreeMap::new();
    for counter in COUNTERS {
        let last = check_counter(&cluster.nodes[1], counter, &writes).await;
        assert_eq!(check_counter(&cluster.nodes[2], counter, &writes).await, last);
        lasts.insert(counter, last);
    }
    eprintln!(
        "SIG{signal}: {} keyed writes answered ({at_kill} before the signal), {} resent, {moved} answered by another node than first asked, {} of the stopped node's answers replayed by survivors; its watchers resumed elsewhere with {replayed} versions from history; versions {lasts:?} seen once each by every watcher; {:.1} s",
        writes.count(),
        writes.retried.load(Ordering::Relaxed),
        from_killed.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Rounds of: every node's notification connection is terminated, and node A commits a burst
/// of writes at once, before the others can be listening again. B and C hear nothing of them;
/// once they listen again they must read every watched counter, and their watchers must get
/// every version once, in order. The last burst is followed by nothing, so nothing but that
/// catch-up can deliver it. B keeps only 2 updates per counter (`--watch-buffer 2`), so a burst
/// caught up at once overflows its ring and its watchers are caught up from history; on C the
/// counter hibernates between bursts (`--idle-timeout 1ms`), so the catch-up must wake it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_node_that_missed_notifications_catches_up_from_history() {
    const ROUNDS: usize = 12;
    const BURST: usize = 5;
    let started = Instant::now();
    let cluster =
        Cluster::start_with(&[&[], &["--watch-buffer", "2"], &["--idle-timeout", "1ms"]]).await;
    let addrs = cluster.addrs();
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut watchers = Vec::new();
    for home in [1, 1, 2, 0] {
        watchers.push(Watcher::start("c", addrs.clone(), home).await);
    }
    let mut deaf_bursts = 0;
    let mut written = 0_u64;
    for _ in 0..ROUNDS {
        cluster.database.wait_for_listeners(3).await;
        let cut = cluster.database.cut_listeners().await;
        assert_eq!(cut, 3, "terminated {cut} of 3 listening connections");
        for _ in 0..BURST {
            let answer = a.ok("increment", json!({"name": "c"})).await;
            written += 1;
            assert_eq!(answer["version"].as_u64(), Some(written), "{answer}");
        }
        // Nobody listening at the burst's end: all of it was committed while both were deaf.
        if cluster.database.listeners().await == 0 {
            deaf_bursts += 1;
        }
    }
    assert!(deaf_bursts > 0, "every burst ended after a node listened again: nothing was missed");
    for watcher in watchers {
        let home = watcher.home;
        let seen = watcher.finish(written).await;
        assert_eq!(seen.subscriptions.len(), 1, "watcher on {home} had to resubscribe");
    }
    for node in &cluster.nodes {
        let value = node.ok("getValue", json!({"name": "c"})).await;
        assert_eq!(value["version"].as_u64(), Some(written), "{value}");
    }
    let slept = metric(&cluster.nodes[2], "tally_counter_hibernations_total").await;
    assert!(slept >= ROUNDS as u64 / 2, "C's counter hibernated only {slept} times");
    let log = b.drain_log();
    assert!(
        log.iter().any(|line| line.contains("lost the notification connection")),
        "node B did not notice that its connection was cut: {log:?}"
    );
    eprintln!(
        "missed notifications: {ROUNDS} cuts, {written} writes on A ({deaf_bursts} bursts committed while nobody listened); the watchers on B and C saw 1..={written} once each; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A counter whose actor hibernates (`--idle-timeout` of a few milliseconds) between the writes
/// of another node: its watchers stay subscribed, so each word of a commit must wake an actor
/// to read it. One write at a time, each waited for on both watching nodes, so a lost word
/// shows as a watcher stuck one version short (a later write would otherwise cover it up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_watchers_of_a_counter_that_hibernates_between_writes_miss_none() {
    const WRITES: u64 = 400;
    let started = Instant::now();
    let cluster =
        Cluster::start_with(&[&[], &["--idle-timeout", "1ms"], &["--idle-timeout", "3ms"]]).await;
    let addrs = cluster.addrs();
    let writer = &cluster.nodes[0];
    let mut watchers = Vec::new();
    for home in [1, 2] {
        watchers.push(Watcher::start("sleepy", addrs.clone(), home).await);
    }
    for version in 1..=WRITES {
        let answer = writer.ok("increment", json!({"name": "sleepy"})).await;
        assert_eq!(answer["version"].as_u64(), Some(version), "{answer}");
        let deadline = tokio::time::Instant::now() + crate::process::PATIENCE / 4;
        for watcher in &watchers {
            while watcher.latest() < version {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "watcher on {} stuck at version {} after write {version} on another node: the word of it was lost",
                    watcher.home,
                    watcher.latest()
                );
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    }
    for watcher in watchers {
        watcher.finish(WRITES).await;
    }
    // It proves something only if the counter really slept between the writes.
    let hibernations = metric(&cluster.nodes[1], "tally_counter_hibernations_total").await;
    assert!(hibernations >= WRITES / 2, "node B's counter hibernated only {hibernations} times");
    eprintln!(
        "hibernating counter: {WRITES} writes on A, each seen once in order on both other nodes (the counter hibernated {hibernations} times on B); {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The value of `node`'s metric `name` (a counter without labels).
async fn metric(node: &crate::process::Tally, name: &str) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", node.addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
}

/// The same keyed write sent to two nodes at once (a client that gave up on one node too early
/// and asked another): both nodes race to commit it, and whichever loses must find the key
/// committed by the other. Both get the same answer, byte for byte, and it counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_keyed_write_sent_to_two_nodes_at_once_counts_once() {
    const WRITES: usize = 300;
    let started = Instant::now();
    let cluster = Cluster::start(2).await;
    let addrs = cluster.addrs();
    let http = reqwest::Client::new();
    let send = |addr: std::net::SocketAddr, key: String| {
        let http = http.clone();
        async move {
            let response = http
                .post(format!("http://{addr}/rpc/counter.increment"))
                .header("content-type", "application/json")
                .header("idempotency-key", &key)
                .body(json!({"name": "twice", "amount": 1}).to_string())
                .send()
                .await
                .expect("request");
            (response.status().as_u16(), response.text().await.expect("answer"))
        }
    };
    let writes = Writes::default();
    for write in 0..WRITES {
        let key = format!("both-{write}");
        let (first, second) =
            tokio::join!(send(addrs[0], key.clone()), send(addrs[1], key.clone()));
        assert_eq!(first.0, 200, "{key} on {}: {}", addrs[0], first.1);
        assert_eq!(second.0, 200, "{key} on {}: {}", addrs[1], second.1);
        assert_eq!(first.1, second.1, "{key} answered differently by the two nodes");
        writes.answered.lock().expect("lock").insert(key, ("twice".into(), addrs[0], first.1));
    }
    for node in &cluster.nodes {
        assert_eq!(check_counter(node, "twice", &writes).await, WRITES as u64);
    }
    eprintln!(
        "{WRITES} keyed writes each sent to both nodes at once: each answered the same by both, counted once; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
