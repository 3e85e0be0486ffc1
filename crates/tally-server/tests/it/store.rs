//! The SQLite store on its own, on a real file: what a group commit does with a batch that is
//! refused while the batches around it, in the same transaction, are not.

use prometheus_client::registry::Registry;
use tally_proto::{CounterName, OpKind};
use tally_server::store::{AppendBatch, HistoryRecord};
use tally_server::{SqliteOptions, SqliteStore, Store, StoreError};

fn name(text: &str) -> CounterName {
    CounterName::parse(text).expect("a valid name")
}

/// `count` increments of `counter` by `amount`, after `expected_version`.
fn increments(counter: &str, expected_version: u64, count: u64, amount: i64) -> AppendBatch {
    let entries = (1..=count)
        .map(|step| {
            let version = expected_version + step;
            let before = (version - 1) as i64 * amount;
            HistoryRecord {
                version,
                kind: OpKind::Increment,
                amount: Some(amount),
                previous_value: before,
                value: before + amount,
                at_ms: 1_700_000_000_000,
                by: Some("tester".into()),
            }
        })
        .collect();
    AppendBatch { name: name(counter), expected_version, entries }
}

/// How many transactions the store has committed, from its own metrics.
fn transactions(metrics: &Registry) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, metrics).expect("metrics encode");
    crate::harness::sample(&text, "store_transactions_total")
        .expect("the store counts its transactions") as u64
}

#[tokio::test]
async fn a_refused_batch_writes_nothing_and_the_batches_around_it_in_its_transaction_are_stored() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("tally.db");
    let store = SqliteStore::open(&path, SqliteOptions::default()).expect("store opens");
    let mut metrics = Registry::default();
    store.register_metrics(&mut metrics);

    // The three batches are queued back to back, so the writer thread normally finds all of them
    // waiting and commits them in one transaction; tries until that happened at least once.
    let mut grouped = 0;
    for attempt in 0..20 {
        let counter = format!("kept-{attempt}");
        let before = transactions(&metrics);
        // Versions 1..=3, by 1.
        let first = store.append(increments(&counter, 0, 3, 1)).await.expect("queued");
        // Built on version 1, which is no longer the stored one, and by 100: if any of it were
        // written, versions 2 and 3 would exist twice or the values would show it.
        let stale = store.append(increments(&counter, 1, 2, 100)).await.expect("queued");
        // Versions 4..=5, by 1.
        let second = store.append(increments(&counter, 3, 2, 1)).await.expect("queued");

        let id = first.await.expect("the first batch is stored");
        match stale.await {
            Err(StoreError::Conflict { expected: 1, found: 3, .. }) => {}
            other => panic!("expected a conflict at version 1 over 3, got {other:?}"),
        }
        assert_eq!(second.await.expect("the batch after the refused one is stored"), id);
        if transactions(&metrics) == before + 1 {
            grouped += 1;
        }

        let record = store.load(&name(&counter)).await.expect("load").expect("stored");
        assert_eq!((record.value, record.version), (5, 5));
        let history = store.history(&name(&counter), None, 10).await.expect("history");
        let kept: Vec<(u64, i64)> = history.iter().map(|e| (e.version, e.value)).collect();
        assert_eq!(kept, [(5, 5), (4, 4), (3, 3), (2, 2), (1, 1)]);
        if grouped > 0 {
            break;
        }
    }
    assert!(grouped > 0, "the three batches never shared a transaction in 20 tries");

    // And all of it is on disk, as committed.
    store.close().await;
    drop(store);
    let store = SqliteStore::open(&path, SqliteOptions::default()).expect("store reopens");
    let versions: Vec<u64> = store
        .history(&name("kept-0"), None, 10)
        .await
        .expect("history")
        .iter()
        .map(|entry| entry.version)
        .collect();
    assert_eq!(versions, [5, 4, 3, 2, 1]);
}
