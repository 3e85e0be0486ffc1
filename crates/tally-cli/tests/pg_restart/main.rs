//! A cluster of real `tally serve` processes while the PostgreSQL server they share restarts.
//!
//! A test binary of its own: the restart breaks every connection to that PostgreSQL, so it must
//! not run beside other tests using it (cargo runs test binaries one after another). It uses the
//! `it` binary's helpers as they are.

#[allow(dead_code)]
#[path = "../it/fleet.rs"]
mod fleet;
#[allow(dead_code)]
#[path = "../it/postgres.rs"]
mod postgres;
#[allow(dead_code)]
#[path = "../it/process.rs"]
mod process;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use fleet::{Cluster, Load, check_counter, wait_for_writes};

const COUNTERS: [&str; 2] = ["load", "spare"];
const WRITERS: usize = 6;
const WRITES_BEFORE: usize = 200;
const WRITES_AFTER: usize = 200;

/// Fails when clients of other databases than `ours` are connected: a restart would cut them
/// (another test run, a benchmark, a developer's server on the same machine), and a test must
/// not break what it did not start. `TALLY_PG_RESTART_ANYWAY=1` restarts all the same.
async fn refuse_if_others_use_postgresql(ours: &str) {
    if std::env::var_os("TALLY_PG_RESTART_ANYWAY").is_some_and(|value| value == "1") {
        return;
    }
    let client = postgres::connect("postgres").await.expect("connect to PostgreSQL");
    let rows = client
        .query(
            "SELECT datname, count(*) FROM pg_stat_activity WHERE datname IS NOT NULL AND datname NOT IN ($1, 'postgres') AND pid <> pg_backend_pid() GROUP BY datname",
            &[&ours],
        )
        .await
        .expect("list other sessions");
    let others: Vec<String> = rows
        .iter()
        .map(|row| format!("{} ({} sessions)", row.get::<_, String>(0), row.get::<_, i64>(1)))
        .collect();
    assert!(
        others.is_empty(),
        "not restarting PostgreSQL under other clients: {others:?}; run this test alone, or set TALLY_PG_RESTART_ANYWAY=1"
    );
}

/// Three nodes, watchers of two counters on each, six writers sending keyed increments spread
/// over the nodes; PostgreSQL restarts mid-stream. Writers keep going (a temporary refusal, or
/// no answer, is sent again with the same key). Afterwards: no false acknowledgement (every
/// answered write holds its own stored version, and the value is the number of keys answered),
/// and every watcher on every node saw every version once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_postgresql_under_load_acknowledges_nothing_falsely_and_every_watcher_resumes() {
    let started = Instant::now();
    let cluster = Cluster::start(3).await;
    refuse_if_others_use_postgresql(&cluster.database.name).await;
    let addrs = cluster.addrs();
    let load = Load::start(&addrs, &COUNTERS, WRITERS).await;
    let writes = Arc::clone(&load.writes);
    wait_for_writes(&writes, WRITES_BEFORE).await;
    let before = writes.count();
    let restart_started = Instant::now();
    let restarted =
        tokio::task::spawn_blocking(|| pg_ctlcluster("restart")).await.expect("restart");
    assert!(restarted.starts_with("exit status: 0"), "pg_ctlcluster restart: {restarted}");
    let restart_took = restart_started.elapsed();
    let during = writes.count() - before;
    tokio::task::spawn_blocking(postgres::ensure_running).await.expect("PostgreSQL is back");
    let after_restart = writes.count();
    wait_for_writes(&writes, after_restart + WRITES_AFTER).await;
    let (watchers, writes) = load.stop_writers().await;
    let retried = writes.retried.load(Ordering::Relaxed);
    assert!(retried > 0, "no write was refused or lost in the restart: it proved nothing");

    // The watchers first, before any read could make a node look at storage for them.
    let mut resubscribed = 0;
    for watcher in watchers {
        let name = watcher.name.clone();
        let seen = watcher.finish(writes.count_of(&name)).await;
        resubscribed += seen.subscriptions.len() - 1;
    }
    let mut lasts = std::collections::BTreeMap::new();
    for counter in COUNTERS {
        let last = check_counter(&cluster.nodes[0], counter, &writes).await;
        for node in &cluster.nodes[1..] {
            assert_eq!(check_counter(node, counter, &writes).await, last);
        }
        lasts.insert(counter, last);
    }
    eprintln!(
        "PostgreSQL restart ({:.1} s, {during} writes answered meanwhile): {} keyed writes answered, {retried} resent; watchers resubscribed {resubscribed} times, versions {lasts:?} seen once each by every watcher; {:.1} s",
        restart_took.as_secs_f64(),
        writes.count(),
        started.elapsed().as_secs_f64()
    );
}

/// Runs `pg_ctlcluster VERSION main ACTION` (start, restart, …) and says how it went.
pub(crate) fn pg_ctlcluster(action: &str) -> String {
    let output = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version(), "main", action])
        .output();
    match output {
        Ok(output) => format!(
            "{} ({})",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim().replace('\n', "; ")
        ),
        Err(error) => format!("not run: {error}"),
    }
}

/// The installed PostgreSQL's major version: the one directory in /etc/postgresql.
fn version() -> String {
    let versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .map(|entries| {
            entries.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into()).collect()
        })
        .unwrap_or_default();
    match versions.as_slice() {
        [one] => one.clone(),
        other => panic!("expected one PostgreSQL version in /etc/postgresql, found {other:?}"),
    }
}
