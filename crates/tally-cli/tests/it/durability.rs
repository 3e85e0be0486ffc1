//! What is answered is on disk: across a clean restart, and across SIGKILL under load.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::process::{Answered, Tally, write_until_killed};

#[tokio::test]
async fn restart_keeps_every_counter_with_its_metadata_and_history() {
    let dir = tempfile::tempdir().expect("dir");
    let database = dir.path().join("tally.db");
    let mut server = Tally::start(&database, &[]);
    server.ok("increment", json!({"name": "likes", "amount": 3})).await;
    server.ok("decrement", json!({"name": "likes"})).await;
    server.ok("setValue", json!({"name": "seats", "value": 120})).await;
    server.ok("reset", json!({"name": "votes"})).await;
    let names = ["likes", "seats", "votes"];
    let mut before = Vec::new();
    for name in names {
        before.push((
            server.ok("getMetadata", json!({"name": name})).await,
            server.history(name).await,
        ));
    }
    server.signal("TERM");
    assert_eq!(server.wait().code(), Some(0));

    let server = Tally::start(&database, &[]);
    for (name, (metadata, history)) in names.into_iter().zip(before) {
        assert_eq!(server.ok("getMetadata", json!({"name": name})).await, metadata, "{name}");
        assert_eq!(server.history(name).await, history, "{name}");
    }
    let next = server.ok("increment", json!({"name": "likes"})).await;
    assert_eq!((next["value"].as_i64(), next["version"].as_u64()), (Some(3), Some(3)));
}

/// Writers hammer four counters; the server is killed with SIGKILL mid-stream; after a restart
/// every answered write is there with the value it was answered with, and versions have no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_write_load_loses_no_answered_write() {
    const COUNTERS: [&str; 4] = ["k0", "k1", "k2", "k3"];
    let dir = tempfile::tempdir().expect("dir");
    let database = dir.path().join("tally.db");
    let server = Arc::new(Tally::start(&database, &[]));
    // (counter, version) -> value, for every answered write.
    let answered: Answered = Arc::default();
    let mut writers = Vec::new();
    for writer in 0..8 {
        writers.push(tokio::spawn(write_until_killed(
            Arc::clone(&server),
            &COUNTERS,
            writer,
            Arc::clone(&answered),
        )));
    }
    // Let a good number of writes be answered, then kill at an arbitrary moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while answered.lock().expect("lock").len() < 400 {
        assert!(tokio::time::Instant::now() < deadline, "writes are not being answered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.signal("KILL");
    for writer in writers {
        writer.await.expect("writer");
    }
    let answered = answered.lock().expect("lock").clone();
    drop(server);

    let server = Tally::start(&database, &[]);
    for name in COUNTERS {
        let history = server.history(name).await;
        let versions: Vec<u64> =
            history.iter().map(|entry| entry["version"].as_u64().expect("version")).collect();
        let expected: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, expected, "{name}: versions have a gap");
        let stored: BTreeMap<u64, &Value> = history
            .iter()
            .map(|entry| (entry["version"].as_u64().unwrap_or(0), &entry["value"]))
            .collect();
        let mut running = 0;
        for entry in &history {
            assert_eq!(
                entry["previousValue"].as_i64(),
                Some(running),
                "{name}: history does not chain"
            );
            running = entry["value"].as_i64().expect("value");
        }
        for ((counter, version), value) in
            answered.range((name.to_owned(), 0)..=(name.to_owned(), u64::MAX))
        {
            assert_eq!(counter, name);
            assert_eq!(
                stored.get(version).and_then(|v| v.as_i64()),
                Some(*value),
                "{name}: answered version {version} lost"
            );
        }
        let current = server.ok("getValue", json!({"name": name})).await;
        assert_eq!(current["value"].as_i64(), Some(running), "{name}");
        assert_eq!(current["version"].as_u64(), Some(versions.len() as u64), "{name}");
    }
    assert!(answered.len() >= 400);
}
