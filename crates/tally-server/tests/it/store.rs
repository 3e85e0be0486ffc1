//! The SQLite store on its own, on a real file: what a group commit does with a batch that is
//! refused while the batches around it are not.

use tally_proto::{CounterName, OpKind};
use tally_server::store::{AppendBatch, HistoryRecord};
use tally_server::{SqliteOptions, SqliteStore, Store, StoreError};

fn increments(name: &str, expected_version: u64, count: u64) -> AppendBatch {
    let entries = (1..=count)
        .map(|step| {
            let version = expected_version + step;
            HistoryRecord {
                version,
                kind: OpKind::Increment,
                amount: Some(1),
                previous_value: version as i64 - 1,
                value: version as i64,
                at_ms: 1_700_000_000_000,
            }
        })
        .collect();
    AppendBatch { name: CounterName::parse(name).expect("a valid name"), expected_version, entries }
}

#[tokio::test]
async fn a_refused_batch_writes_nothing_and_the_batches_around_it_are_stored() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("tally.db");
    let store = SqliteStore::open(&path, SqliteOptions::default()).expect("store opens");

    // Queued back to back, so that the writer usually takes them into one transaction.
    let first = store.append(increments("kept", 0, 3)).await.expect("queued");
    let refused = store.append(increments("refused", 5, 2)).await.expect("queued");
    let second = store.append(increments("kept", 3, 2)).await.expect("queued");
    let first = first.await.expect("the first batch is stored");
    let refused = refused.await;
    assert_eq!(second.await.expect("the batch after the refused one is stored"), first);
    match refused {
        Err(StoreError::Conflict { expected: 5, found: 0, .. }) => {}
        other => panic!("expected a conflict at version 5 over 0, got {other:?}"),
    }

    store.close().await;
    drop(store);
    let store = SqliteStore::open(&path, SqliteOptions::default()).expect("store reopens");
    let kept = CounterName::parse("kept").expect("a valid name");
    let record = store.load(&kept).await.expect("load").expect("stored");
    assert_eq!((record.value, record.version), (5, 5));
    let versions: Vec<u64> =
        store.history(&kept, None, 10).await.expect("history").iter().map(|e| e.version).collect();
    assert_eq!(versions, [5, 4, 3, 2, 1]);
    let refused = CounterName::parse("refused").expect("a valid name");
    assert_eq!(store.load(&refused).await.expect("load"), None);
    assert!(store.history(&refused, None, 10).await.expect("history").is_empty());
}
