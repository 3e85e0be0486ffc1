//! The store conformance suite: each store on its own (SQLite on a real file in the `it`
//! target, PostgreSQL on a fresh database in `it_postgres`), held to one contract: what a group
//! commit does with a batch that is refused while the batches around it, in the same
//! transaction, are not; the version check of a batch that names its counter's id; idempotency
//! records written, loaded, forgotten and swept; a delete.

use prometheus_client::registry::Registry;
use tally_proto::{CounterName, IdempotencyKey, OpKind};
use tally_server::store::{AppendBatch, HistoryRecord, KeyRef, Retention};
use tally_server::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore, Store, StoreError};
use tempfile::TempDir;

use crate::harness::POSTGRES;
use crate::postgres::TestDatabase;

/// The store under test, with what keeps its storage alive.
pub(crate) struct TestStore {
    store: Box<dyn Store>,
    folder: TempDir,
    database: Option<TestDatabase>,
    options: SqliteOptions,
}

impl std::ops::Deref for TestStore {
    type Target = dyn Store;

    fn deref(&self) -> &Self::Target {
        &*self.store
    }
}

impl TestStore {
    /// This target's store, empty, with `options` (PostgreSQL takes the same two settings).
    pub(crate) async fn open(options: SqliteOptions) -> Self {
        let folder = tempfile::tempdir().expect("temporary folder");
        let database = if POSTGRES { Some(TestDatabase::create().await) } else { None };
        let store = Self::open_on(&folder, database.as_ref(), options).await;
        Self { store, folder, database, options }
    }

    async fn open_on(
        folder: &TempDir,
        database: Option<&TestDatabase>,
        options: SqliteOptions,
    ) -> Box<dyn Store> {
        match database {
            Some(database) => {
                let options = PostgresOptions {
                    history_limit: options.history_limit,
                    idempotency_window: options.idempotency_window,
                    pool_size: 2,
                    quotas: options.quotas,
                };
                Box::new(PostgresStore::open(&database.url, options).await.expect("store opens"))
            }
            None => Box::new(
                SqliteStore::open(&folder.path().join("tally.db"), options).expect("store opens"),
            ),
        }
    }

    /// Closes the store and opens its storage again, as a restarted server would.
    async fn reopen(self) -> Self {
        let Self { store, folder, database, options } = self;
        store.close().await;
        // Dropped first: a SQLite store holds its file's lock until it is gone.
        drop(store);
        let store = Self::open_on(&folder, database.as_ref(), options).await;
        Self { store, folder, database, options }
    }

    /// How many idempotency records storage holds, read beside the store as another program
    /// would.
    async fn stored_records(&self) -> i64 {
        const SQL: &str = "SELECT count(*) FROM idempotency";
        match &self.database {
            Some(database) => database.count(SQL).await,
            None => {
                let conn =
                    rusqlite::Connection::open(self.folder.path().join("tally.db")).expect("open");
                conn.query_row(SQL, [], |row| row.get(0)).expect("count")
            }
        }
    }
}

/// A retention that keeps every idempotency record.
pub(crate) const EVERY_KEY: Retention = Retention { since_ms: 0, limit: usize::MAX };

pub(crate) fn name(text: &str) -> CounterName {
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
    AppendBatch::new(name(counter), expected_version, entries)
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
    let store = TestStore::open(SqliteOptions::default()).await;
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
            Err(error) if matches!(*error, StoreError::Conflict { expected: 1, found: 3, .. }) => {}
            other => panic!("expected a conflict at version 1 over 3, got {other:?}"),
        }
        assert_eq!(second.await.expect("the batch after the refused one is stored"), id);
        if transactions(&metrics) == before + 1 {
            grouped += 1;
        }

        let record = store.load(&name(&counter), EVERY_KEY).await.expect("load").expect("stored");
        let record = record.record;
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
    let store = store.reopen().await;
    let versions: Vec<u64> = store
        .history(&name("kept-0"), None, 10)
        .await
        .expect("history")
        .iter()
        .map(|entry| entry.version)
        .collect();
    assert_eq!(versions, [5, 4, 3, 2, 1]);
}

/// A batch that names its counter's storage id (as an actor does once it knows it) is checked
/// against the stored version just the same: refused whole when stale, stored when not.
#[tokio::test]
async fn a_batch_with_the_counters_id_is_checked_against_the_stored_version() {
    let store = TestStore::open(SqliteOptions::default()).await;
    let id = store.append(increments("by-id", 0, 2, 1)).await.expect("queued").await;
    let id = id.expect("the first batch is stored");

    let mut stale = increments("by-id", 1, 1, 100);
    stale.id = Some(id);
    match store.append(stale).await.expect("queued").await {
        Err(error) if matches!(*error, StoreError::Conflict { expected: 1, found: 2, .. }) => {}
        other => panic!("expected a conflict at version 1 over 2, got {other:?}"),
    }
    let mut next = increments("by-id", 2, 2, 1);
    next.id = Some(id);
    assert_eq!(store.append(next).await.expect("queued").await.expect("stored"), id);

    let loaded = store.load(&name("by-id"), EVERY_KEY).await.expect("load").expect("stored");
    assert_eq!((loaded.record.value, loaded.record.version), (4, 4));
    let history = store.history(&name("by-id"), None, 10).await.expect("history");
    let kept: Vec<(u64, i64)> = history.iter().map(|e| (e.version, e.value)).collect();
    assert_eq!(kept, [(4, 4), (3, 3), (2, 2), (1, 1)]);
}

pub(crate) fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    i64::try_from(since_epoch.expect("after 1970").as_millis()).expect("in range")
}

pub(crate) fn key_ref(key: &str, version: u64) -> KeyRef {
    KeyRef {
        principal: "tester".into(),
        key: IdempotencyKey::parse(key).expect("a valid key"),
        version,
    }
}

/// `count` increments by 1 after `expected_version`, made at `at_ms`.
pub(crate) fn increments_at(
    counter: &str,
    expected_version: u64,
    count: u64,
    at_ms: i64,
) -> AppendBatch {
    let mut batch = increments(counter, expected_version, count, 1);
    for entry in &mut batch.entries {
        entry.at_ms = at_ms;
    }
    batch
}

/// The keys and versions of `counter`'s idempotency records within `retention`.
pub(crate) async fn remembered(
    store: &dyn Store,
    counter: &str,
    retention: Retention,
) -> Vec<(String, u64)> {
    let loaded = store.load(&name(counter), retention).await.expect("load").expect("stored");
    loaded.idempotency.iter().map(|r| (r.key.to_string(), r.entry.version)).collect()
}

#[tokio::test]
async fn idempotency_records_are_stored_with_their_batch_and_outlive_its_history() {
    // History keeps one entry: the records must not depend on it.
    let options = SqliteOptions { history_limit: 1, ..SqliteOptions::default() };
    let store = TestStore::open(options).await;
    let at_ms = now_ms();

    let mut batch = increments_at("c", 0, 3, at_ms);
    batch.remember = vec![key_ref("k1", 1), key_ref("k3", 3)];
    store.append(batch.clone()).await.expect("queued").await.expect("stored");
    let loaded = store.load(&name("c"), EVERY_KEY).await.expect("load").expect("stored");
    assert_eq!(loaded.idempotency[0].entry, batch.entries[0], "the whole answer, kept");
    assert_eq!(loaded.idempotency[1].entry, batch.entries[2]);
    assert_eq!(store.history(&name("c"), None, 10).await.expect("history").len(), 1);

    // A refused batch stores none of its records.
    let mut stale = increments_at("c", 1, 1, at_ms);
    stale.remember = vec![key_ref("k-stale", 2)];
    assert!(store.append(stale).await.expect("queued").await.is_err());
    assert_eq!(remembered(&*store, "c", EVERY_KEY).await, [("k1".into(), 1), ("k3".into(), 3)]);

    // The newest first, and only as many as asked, and only from `since_ms` on.
    let newest = Retention { since_ms: 0, limit: 1 };
    assert_eq!(remembered(&*store, "c", newest).await, [("k3".into(), 3)]);
    let later = Retention { since_ms: at_ms + 1, limit: 10 };
    assert!(remembered(&*store, "c", later).await.is_empty());

    // Forgetting deletes a record only if it still names that version.
    let mut next = increments_at("c", 3, 1, at_ms);
    next.forget = vec![key_ref("k1", 1), key_ref("k3", 2)];
    store.append(next).await.expect("queued").await.expect("stored");
    assert_eq!(remembered(&*store, "c", EVERY_KEY).await, [("k3".into(), 3)]);
    assert_eq!(store.stored_records().await, 1);
}

#[tokio::test]
async fn the_writer_deletes_records_past_the_window() {
    let hour = std::time::Duration::from_secs(3600);
    let options = SqliteOptions { idempotency_window: hour, ..SqliteOptions::default() };
    let store = TestStore::open(options).await;

    // One counter written two hours ago (as if restored), one just now; nobody forgets the
    // old record but the writer's sweep.
    let mut old = increments_at("old", 0, 1, now_ms() - 2 * 3_600_000);
    old.remember = vec![key_ref("k", 1)];
    let mut new = increments_at("new", 0, 1, now_ms());
    new.remember = vec![key_ref("k", 1)];
    let old = store.append(old).await.expect("queued");
    let new = store.append(new).await.expect("queued");
    old.await.expect("stored");
    new.await.expect("stored");
    // The first commit sweeps; the old record went in the same transaction it came in.
    assert_eq!(store.stored_records().await, 1);
    assert_eq!(remembered(&*store, "new", EVERY_KEY).await, [("k".into(), 1)]);
}

/// `list` reads a name range in byte order with each counter's committed state: the range's
/// start is in it, its end is not, and names that only look alike under a locale's rules
/// (`:`, `-`, `.`, upper and lower case) stay where bytes put them.
#[tokio::test]
async fn list_reads_a_name_range_in_byte_order_with_committed_state() {
    let store = TestStore::open(SqliteOptions::default()).await;
    let names =
        ["likes", "likes-x", "likes.x", "likes:", "likes:a", "likes:b", "likes_", "LIKES:a", "z"];
    let mut pending = Vec::new();
    for (index, counter) in names.iter().enumerate() {
        // Counter i holds i+1 increments by 1.
        pending
            .push(store.append(increments(counter, 0, index as u64 + 1, 1)).await.expect("queued"));
    }
    for committing in pending {
        committing.await.expect("stored");
    }
    let listed = |start: &'static str, end: Option<&'static str>, limit| {
        let store = &store;
        async move {
            let rows = store.list(start, end, limit).await.expect("list");
            rows.iter()
                .map(|row| (row.name.to_string(), row.record.value, row.record.version))
                .collect::<Vec<_>>()
        }
    };
    let everything: Vec<String> =
        listed("", None, 100).await.into_iter().map(|row| row.0).collect();
    let mut sorted: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    sorted.sort();
    assert_eq!(everything, sorted, "byte order, every counter");
    assert_eq!(sorted[0], "LIKES:a", "upper case sorts before lower case in bytes");

    // The prefix `likes:` is the range `likes:`..`likes;`.
    assert_eq!(
        listed("likes:", Some("likes;"), 100).await,
        [("likes:".into(), 4, 4), ("likes:a".into(), 5, 5), ("likes:b".into(), 6, 6)]
    );
    // A limit, and a start after a name (`likes:a` followed by `-`, the smallest character).
    assert_eq!(listed("likes:", Some("likes;"), 1).await, [("likes:".into(), 4, 4)]);
    assert_eq!(listed("likes:a-", Some("likes;"), 100).await, [("likes:b".into(), 6, 6)]);
    // One name alone is the range up to it followed by `-`.
    assert_eq!(listed("likes", Some("likes-"), 100).await, [("likes".into(), 1, 1)]);
    assert!(listed("nothing:", Some("nothing;"), 100).await.is_empty());
    // The value is the committed one after later writes.
    store.append(increments("z", 9, 1, 1)).await.expect("queued").await.expect("stored");
    assert_eq!(listed("z", None, 100).await, [("z".into(), 10, 10)]);
}

/// `Store::delete` removes the row, the history and the idempotency records together and gives
/// the name a fresh epoch, which the name's next row is loaded with; a batch built on the
/// deleted version is refused (a batch creates a counter only at version 0); deleting what is
/// not stored changes nothing; all of it survives a reopen.
#[tokio::test]
async fn a_delete_removes_the_counter_whole_and_its_name_starts_again_under_a_new_epoch() {
    use tally_server::store::DeleteOutcome;
    let store = TestStore::open(SqliteOptions::default()).await;
    let mut batch = increments("doomed", 0, 3, 1);
    batch.remember = vec![key_ref("k", 3)];
    store.append(batch).await.expect("queued").await.expect("stored");
    store.append(increments("other", 0, 1, 1)).await.expect("queued").await.expect("stored");
    let loaded = store.load(&name("doomed"), EVERY_KEY).await.expect("load").expect("stored");
    assert_eq!(loaded.record.epoch, None, "never deleted: the database's epoch");

    let outcome = store.delete(&name("doomed")).await.expect("delete");
    let DeleteOutcome { deleted, version, epoch } = outcome;
    assert_eq!((deleted, version), (true, 3));
    let epoch = epoch.expect("a deleted name has an epoch of its own");
    assert_ne!(tally_proto::Epoch::from_bits(epoch), *store.epoch());
    assert!(store.load(&name("doomed"), EVERY_KEY).await.expect("load").is_none());
    assert!(store.history(&name("doomed"), None, 10).await.expect("history").is_empty());
    assert_eq!(store.stored_records().await, 0);
    assert!(store.load(&name("other"), EVERY_KEY).await.expect("load").is_some(), "untouched");

    // A batch built on the deleted version is refused and writes nothing.
    match store.append(increments("doomed", 3, 1, 1)).await.expect("queued").await {
        Err(error) if matches!(*error, StoreError::Conflict { expected: 3, found: 0, .. }) => {}
        other => panic!("expected a conflict at version 3 over 0, got {other:?}"),
    }
    assert!(store.load(&name("doomed"), EVERY_KEY).await.expect("load").is_none());
    // Deleting again changes nothing and names the epoch the delete gave.
    let again = store.delete(&name("doomed")).await.expect("delete");
    assert_eq!(again, DeleteOutcome { deleted: false, version: 0, epoch: Some(epoch) });
    let never = store.delete(&name("never")).await.expect("delete");
    assert_eq!(never, DeleteOutcome { deleted: false, version: 0, epoch: None });

    store.append(increments("doomed", 0, 1, 1)).await.expect("queued").await.expect("stored");
    let store = store.reopen().await;
    let loaded = store.load(&name("doomed"), EVERY_KEY).await.expect("load").expect("stored");
    assert_eq!((loaded.record.version, loaded.record.epoch), (1, Some(epoch)));
    assert!(loaded.idempotency.is_empty(), "no key of the deleted counter is loaded");
    let second = store.delete(&name("doomed")).await.expect("delete");
    assert!(second.deleted && second.epoch != Some(epoch), "a second delete, another epoch");
}
