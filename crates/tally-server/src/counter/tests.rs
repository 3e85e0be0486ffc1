//! The counter actor on its own, over the real SQLite store in a temporary folder, with tokio's
//! clock paused: batch pipelining, reload after a failed commit, retirement after the idle
//! timeout, and idempotency keys (in flight, committed, reused, across hibernation and
//! restart). No test sleeps for real: paused time jumps to the next timer when all is idle.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tally_proto::{CounterName, ErrorCode, IdempotencyKey, Op};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::*;
use crate::store::{HistoryRecord, KeyRecord, LoadedCounter, SqliteOptions, SqliteStore};

const IDLE: Duration = Duration::from_secs(10);

/// Where test actors live: records their retirements instead of a registry.
#[derive(Default)]
struct TestHome {
    retired: Mutex<Vec<u64>>,
}

impl Home for TestHome {
    fn retire(&self, _name: &CounterName, generation: u64) {
        self.retired.lock().expect("lock").push(generation);
    }

    fn topic(&self, _name: &CounterName, version: u64) -> Arc<Topic> {
        Topic::new(16, version)
    }

    fn deleted(&self, _name: &CounterName, _epoch: Option<u64>) {}
}

/// A commit held back in `Faulty`, with whether it is to fail.
type Held = (AppendBatch, oneshot::Sender<CommitResult>, bool);

/// The real store with two faults that cannot be caused for real here: a disk that stalls
/// (commits wait until `release`, so batches pile up in flight deterministically) and a commit
/// that fails (an I/O error; the batch never reaches SQLite). Everything else passes through.
struct Faulty {
    /// The real store; `None` only for a moment while a restart opens the file again.
    inner: Mutex<Option<Arc<SqliteStore>>>,
    /// `Some` while commits are held, with the held ones in order. A tokio mutex, held across
    /// forwarding, so that a commit can never overtake the held ones.
    held: tokio::sync::Mutex<Option<Vec<Held>>>,
    /// How many of the next appends fail.
    fail_next: AtomicUsize,
    /// How many appends were made, and their sizes (operations per batch), in order.
    appended: watch::Sender<Vec<usize>>,
    /// The file's epoch, which a restart keeps.
    epoch: tally_proto::Epoch,
}

impl Faulty {
    fn new(inner: SqliteStore) -> Arc<Self> {
        Arc::new(Self {
            epoch: inner.epoch().clone(),
            inner: Mutex::new(Some(Arc::new(inner))),
            held: tokio::sync::Mutex::new(None),
            fail_next: AtomicUsize::new(0),
            appended: watch::Sender::new(Vec::new()),
        })
    }

    fn inner(&self) -> Arc<SqliteStore> {
        // Only `restart` empties it, and it fills it again before returning.
        self.inner.lock().expect("lock").clone().expect("a store is open")
    }

    /// Closes the store and opens its file again, as a server restart does.
    async fn restart(&self, dir: &tempfile::TempDir) {
        self.inner().close().await;
        // The old store must be gone first: it holds the file's lock.
        self.inner.lock().expect("lock").take();
        *self.inner.lock().expect("lock") = Some(Arc::new(open(dir)));
    }

    async fn hold(&self) {
        *self.held.lock().await = Some(Vec::new());
    }

    fn fail_next(&self, count: usize) {
        self.fail_next.store(count, Ordering::SeqCst);
    }

    /// Lets the held commits through, in order, and stops holding.
    async fn release(&self) {
        let mut held = self.held.lock().await;
        for (batch, respond_to, fail) in held.take().unwrap_or_default() {
            self.forward(batch, respond_to, fail).await;
        }
    }

    /// Waits until `count` appends were made in all.
    async fn appended(&self, count: usize) {
        let mut appended = self.appended.subscribe();
        appended.wait_for(|sizes| sizes.len() >= count).await.expect("the store lives");
    }

    fn sizes(&self) -> Vec<usize> {
        self.appended.borrow().clone()
    }

    async fn forward(
        &self,
        batch: AppendBatch,
        respond_to: oneshot::Sender<CommitResult>,
        fail: bool,
    ) {
        if fail {
            let error = std::io::Error::other("disk I/O error (injected)");
            let _ = respond_to.send(Err(Arc::new(StoreError::Unavailable(Box::new(error)))));
            return;
        }
        let queued = self.inner().append(batch).await;
        tokio::spawn(async move {
            let result = match queued {
                Ok(committing) => committing.await,
                Err(error) => Err(Arc::new(error)),
            };
            let _ = respond_to.send(result);
        });
    }
}

#[async_trait]
impl Store for Faulty {
    async fn load(
        &self,
        name: &CounterName,
        retention: Retention,
    ) -> Result<Option<LoadedCounter>, StoreError> {
        self.inner().load(name, retention).await
    }

    async fn append(&self, batch: AppendBatch) -> Result<Committing, StoreError> {
        let fail = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        self.appended.send_modify(|sizes| sizes.push(batch.entries.len()));
        let (respond_to, answer) = oneshot::channel();
        let mut held = self.held.lock().await;
        match held.as_mut() {
            Some(held) => held.push((batch, respond_to, fail)),
            None => self.forward(batch, respond_to, fail).await,
        }
        Ok(Committing::new(answer))
    }

    async fn delete(&self, name: &CounterName) -> Result<crate::store::DeleteOutcome, StoreError> {
        self.inner().delete(name).await
    }

    async fn history(
        &self,
        name: &CounterName,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        self.inner().history(name, before, limit).await
    }

    async fn history_range(
        &self,
        name: &CounterName,
        after: u64,
        up_to: u64,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        self.inner().history_range(name, after, up_to).await
    }

    async fn recent_operations(
        &self,
        name: &CounterName,
        since_ms: i64,
    ) -> Result<u64, StoreError> {
        self.inner().recent_operations(name, since_ms).await
    }

    async fn list(
        &self,
        start: &str,
        end: Option<&str>,
        limit: u32,
    ) -> Result<Vec<crate::store::NamedRecord>, StoreError> {
        self.inner().list(start, end, limit).await
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner().keys().await
    }

    async fn create_key(&self, key: KeyRecord) -> Result<(), StoreError> {
        self.inner().create_key(key).await
    }

    async fn revoke_key(&self, name: &str, at_ms: i64) -> Result<Option<KeyRecord>, StoreError> {
        self.inner().revoke_key(name, at_ms).await
    }

    async fn close(&self) {
        self.inner().close().await;
    }

    fn describe(&self) -> String {
        self.inner().describe()
    }

    fn epoch(&self) -> &tally_proto::Epoch {
        &self.epoch
    }
}

/// One test's world: a database file, the store over it, and actors of counter `c`.
struct World {
    dir: tempfile::TempDir,
    store: Arc<Faulty>,
    home: Arc<TestHome>,
    context: ActorContext,
    generation: u64,
}

impl World {
    fn new(config: Config) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Faulty::new(open(&dir));
        let home = Arc::new(TestHome::default());
        let context = ActorContext {
            store: Arc::clone(&store) as Arc<dyn Store>,
            metrics: Arc::new(Metrics::new()),
            config: Arc::new(Config { idle_timeout: IDLE, ..config }),
            home: Arc::clone(&home) as Arc<dyn Home>,
            tracker: tokio_util::task::TaskTracker::new(),
        };
        Self { dir, store, home, context, generation: 0 }
    }

    /// A fresh actor of counter `c`, as the registry starts one on first use.
    fn actor(&mut self) -> CounterHandle {
        self.generation += 1;
        spawn(name(), self.generation, None, &self.context)
    }

    /// Closes the store and opens the file again, as a restart does.
    async fn restart(&self) {
        self.store.restart(&self.dir).await;
    }

    fn loads(&self) -> u64 {
        self.context.metrics.counter_loads.get()
    }

    async fn history(&self) -> Vec<(u64, i64)> {
        let history = self.store.history(&name(), None, 100).await.expect("history");
        history.iter().rev().map(|entry| (entry.version, entry.value)).collect()
    }
}

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("tally.db"), SqliteOptions::default()).expect("store")
}

fn name() -> CounterName {
    CounterName::parse("c").expect("a valid name")
}

fn key(text: &str) -> Option<IdempotencyKey> {
    Some(IdempotencyKey::parse(text).expect("a valid key"))
}

fn by(principal: &str) -> Arc<str> {
    Arc::from(principal)
}

/// Applies `op` as `alice` in a task of its own, and lets it run until it waits for its
/// answer (the command is then in the actor's inbox, behind every command sent before).
async fn send(
    handle: &CounterHandle,
    op: Op,
    key: Option<IdempotencyKey>,
) -> JoinHandle<Result<Arc<Published>, ApplyError>> {
    let handle = handle.clone();
    let task = tokio::spawn(async move { handle.apply(op, None, by("alice"), key).await });
    tokio::task::yield_now().await;
    task
}

async fn answer(task: JoinHandle<Result<Arc<Published>, ApplyError>>) -> Arc<Published> {
    task.await.expect("task").expect("applied")
}

async fn refusal(task: JoinHandle<Result<Arc<Published>, ApplyError>>) -> ApplyError {
    match task.await.expect("task") {
        Ok(published) => panic!("applied as version {}", published.version()),
        Err(error) => error,
    }
}

#[tokio::test(start_paused = true)]
async fn batches_pipeline_while_commits_wait_and_are_answered_in_arrival_order() {
    let mut world = World::new(Config::default());
    let handle = world.actor();
    world.store.hold().await;

    // Each of the first four becomes a batch of its own at once: a batch waits for no other.
    let mut tasks = Vec::new();
    for batch in 1..=MAX_IN_FLIGHT {
        tasks.push(send(&handle, Op::Increment(1), None).await);
        world.store.appended(batch).await;
    }
    // With four batches in flight the next ones wait, and become one batch.
    for _ in 0..10 {
        tasks.push(send(&handle, Op::Increment(1), None).await);
    }
    // The read comes after every apply in the inbox: once it is answered, the actor has
    // taken them all. Nothing is committed yet, so nothing is seen and nothing answered.
    assert_eq!(handle.read().await.expect("read").version, 0);
    assert_eq!(world.store.sizes(), [1, 1, 1, 1]);
    assert!(tasks.iter().all(|task| !task.is_finished()), "answered before its commit");

    world.store.release().await;
    let mut versions = Vec::new();
    for task in tasks {
        let published = answer(task).await;
        assert_eq!(published.value(), published.version() as i64);
        versions.push(published.version());
    }
    assert_eq!(versions, (1..=14).collect::<Vec<_>>(), "versions follow arrival order");
    assert_eq!(world.store.sizes(), [1, 1, 1, 1, 10]);
    assert_eq!(world.history().await, (1..=14).map(|v| (v, v as i64)).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_failed_commit_fails_the_batches_behind_it_and_the_counter_is_read_again() {
    let mut world = World::new(Config::default());
    let handle = world.actor();
    answer(send(&handle, Op::Increment(1), None).await).await;
    assert_eq!(world.loads(), 1);

    world.store.hold().await;
    world.store.fail_next(1);
    // Version 2 fails on the disk; version 3 was built on it, so SQLite refuses it for real.
    let failed = send(&handle, Op::Increment(10), None).await;
    world.store.appended(2).await;
    let behind = send(&handle, Op::Increment(100), None).await;
    world.store.appended(3).await;
    world.store.release().await;
    for task in [failed, behind] {
        let error = refusal(task).await;
        // The one behind is answered with the first failure, not as a conflict (a bug).
        assert!(
            matches!(&error, ApplyError::Store(cause) if matches!(**cause, StoreError::Unavailable(_))),
            "{error:?}"
        );
        let wire = error.to_protocol();
        assert_eq!(wire.code, ErrorCode::Unavailable);
        assert!(wire.message.contains("nothing was stored"), "{}", wire.message);
    }

    // The next write is built on what storage holds (version 1), not on the failed tip.
    let next = answer(send(&handle, Op::Increment(1000), None).await).await;
    assert_eq!((next.version(), next.value()), (2, 1001));
    assert_eq!(world.loads(), 2, "the counter was read again after the failure");
    assert_eq!(world.history().await, [(1, 1), (2, 1001)]);
}

/// A compare-and-set is refused only against a committed version: one whose expected version
/// is behind a batch in flight waits for it, and when that batch fails, it is applied on the
/// version storage holds instead of refused with a version that was never stored.
#[tokio::test(start_paused = true)]
async fn a_compare_and_set_behind_a_batch_in_flight_is_decided_on_what_is_committed() {
    let mut world = World::new(Config::default());
    let handle = world.actor();
    answer(send(&handle, Op::Increment(1), None).await).await;

    world.store.hold().await;
    world.store.fail_next(1);
    let failed = send(&handle, Op::Increment(10), None).await;
    world.store.appended(2).await;
    let compare = {
        let handle = handle.clone();
        let task =
            tokio::spawn(
                async move { handle.apply(Op::SetValue(5), Some(1), by("alice"), None).await },
            );
        tokio::task::yield_now().await;
        task
    };
    world.store.release().await;
    assert!(matches!(refusal(failed).await, ApplyError::Store(_)));
    let applied = answer(compare).await;
    assert_eq!((applied.version(), applied.value()), (2, 5), "applied on version 1, as asked");
    assert_eq!(world.history().await, [(1, 1), (2, 5)]);

    // Against a committed version it is refused at once, naming that version.
    let stale = handle.apply(Op::SetValue(7), Some(1), by("alice"), None).await;
    match stale {
        Err(ApplyError::Rejected(error)) => {
            assert_eq!(error.code, ErrorCode::VersionConflict);
            assert_eq!(error.current_version, Some(2));
        }
        other => panic!("expected a version conflict, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_counter_nobody_touches_retires_after_the_idle_timeout() {
    let mut world = World::new(Config::default());
    let handle = world.actor();
    answer(send(&handle, Op::Increment(1), None).await).await;

    tokio::time::sleep(IDLE - Duration::from_millis(1)).await;
    assert!(world.home.retired.lock().expect("lock").is_empty(), "retired early");
    // A read is a touch: the timeout starts again from it.
    assert_eq!(handle.read().await.expect("read").version, 1);
    tokio::time::sleep(IDLE - Duration::from_millis(1)).await;
    assert!(world.home.retired.lock().expect("lock").is_empty(), "retired early");

    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(*world.home.retired.lock().expect("lock"), [1]);
    assert!(matches!(handle.read().await, Err(ApplyError::Retired)));
    assert_eq!(world.context.metrics.counter_hibernations.get(), 1);
    // The next actor finds the counter as it was left.
    assert_eq!(world.actor().read().await.expect("read").version, 1);
}

#[tokio::test(start_paused = true)]
async fn a_retry_of_a_committed_write_gets_the_first_answer_and_stores_nothing() {
    let mut world = World::new(Config::default());
    let handle = world.actor();
    let first = answer(send(&handle, Op::Increment(2), key("k1")).await).await;
    let retry = answer(send(&handle, Op::Increment(2), key("k1")).await).await;
    assert_eq!(retry.json(), first.json(), "the same bytes");
    assert_eq!(retry.json_for(true), first.json_for(true));
    assert_eq!(world.store.sizes(), [1], "the retry reached no store");

    // The key is alice's: bob's same key is another write.
    let bob = handle.apply(Op::Increment(2), None, by("bob"), key("k1")).await.expect("applied");
    assert_eq!((bob.version(), bob.value()), (2, 4));
    assert_eq!(world.history().await, [(1, 2), (2, 4)]);
}

#[tokio::test(start_paused = true)]
async fn a_key_used_for_another_operation_is_refused_and_nothing_is_stored() {
    let mut world = World::new(Config::default());
    let handle = world.actor();
    answer(send(&handle, Op::Increment(1), key("k1")).await).await;
    for other in [Op::Increment(2), Op::Decrement(1), Op::SetValue(1), Op::Reset] {
        let error = refusal(send(&handle, other, key("k1")).await).await;
        assert!(
            matches!(error, ApplyError::KeyReused { first: Op::Increment(1), .. }),
            "{error:?}"
        );
        let wire = error.to_protocol();
        assert_eq!((wire.code, wire.code.http_status()), (ErrorCode::IdempotencyKeyReused, 422));
        assert!(wire.message.contains("increment by 1"), "{}", wire.message);
        assert!(wire.message.contains("nothing was stored"), "{}", wire.message);
    }

    // Also while the first is still being committed.
    world.store.hold().await;
    let first = send(&handle, Op::SetValue(7), key("k2")).await;
    world.store.appended(2).await;
    let error = refusal(send(&handle, Op::SetValue(8), key("k2")).await).await;
    assert!(matches!(error, ApplyError::KeyReused { first: Op::SetValue(7), .. }), "{error:?}");
    world.store.release().await;
    assert_eq!(answer(first).await.value(), 7);
    assert_eq!(world.history().await, [(1, 1), (2, 7)]);
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_in_flight_waits_for_the_first_and_gets_its_answer() {
    let mut world = World::new(Config::default());
    let handle = world.actor();
    world.store.hold().await;
    let first = send(&handle, Op::Increment(5), key("k1")).await;
    world.store.appended(1).await;
    let duplicates = [
        send(&handle, Op::Increment(5), key("k1")).await,
        send(&handle, Op::Increment(5), key("k1")).await,
    ];
    handle.read().await.expect("read");
    assert_eq!(world.store.sizes(), [1], "a duplicate made no batch of its own");
    world.store.release().await;
    let first = answer(first).await;
    for duplicate in duplicates {
        assert!(Arc::ptr_eq(&answer(duplicate).await, &first), "the very same update");
    }

    // When the first fails, its duplicates are told the same, and the key is not remembered:
    // the next retry is applied.
    world.store.hold().await;
    world.store.fail_next(1);
    let failing = send(&handle, Op::Increment(1), key("k2")).await;
    world.store.appended(2).await;
    let duplicate = send(&handle, Op::Increment(1), key("k2")).await;
    handle.read().await.expect("read");
    world.store.release().await;
    for task in [failing, duplicate] {
        assert_eq!(refusal(task).await.to_protocol().code, ErrorCode::Unavailable);
    }
    let retry = answer(send(&handle, Op::Increment(1), key("k2")).await).await;
    assert_eq!((retry.version(), retry.value()), (2, 6));
    assert_eq!(world.history().await, [(1, 5), (2, 6)]);
}

#[tokio::test(start_paused = true)]
async fn keys_are_remembered_across_hibernation_and_a_restart() {
    let mut world = World::new(Config::default());
    let handle = world.actor();
    let first = answer(send(&handle, Op::Decrement(3), key("k1")).await).await;
    tokio::time::sleep(IDLE + Duration::from_secs(1)).await;
    assert_eq!(*world.home.retired.lock().expect("lock"), [1], "hibernated");

    // A fresh actor loads the key with the counter.
    let handle = world.actor();
    let retry = answer(send(&handle, Op::Decrement(3), key("k1")).await).await;
    assert_eq!(retry.json(), first.json());
    assert!(matches!(
        refusal(send(&handle, Op::Decrement(4), key("k1")).await).await,
        ApplyError::KeyReused { .. }
    ));

    // And after the store is closed and opened again.
    tokio::time::sleep(IDLE + Duration::from_secs(1)).await;
    world.restart().await;
    let handle = world.actor();
    let retry = answer(send(&handle, Op::Decrement(3), key("k1")).await).await;
    assert_eq!(retry.json(), first.json());
    assert_eq!(world.history().await, [(1, -3)]);
}

#[tokio::test(start_paused = true)]
async fn only_the_newest_keys_are_kept_and_a_forgotten_key_counts_again() {
    let mut world = World::new(Config { idempotency_keys: 3, ..Config::default() });
    let handle = world.actor();
    for n in 1..=5 {
        answer(send(&handle, Op::Increment(1), key(&format!("k{n}"))).await).await;
    }
    // k3..=k5 are kept: their retries are answered from memory.
    let kept = answer(send(&handle, Op::Increment(1), key("k3")).await).await;
    assert_eq!(kept.version(), 3);

    // After a restart, the store gives back the newest three.
    tokio::time::sleep(IDLE + Duration::from_secs(1)).await;
    world.restart().await;
    let handle = world.actor();
    let kept = answer(send(&handle, Op::Increment(1), key("k5")).await).await;
    assert_eq!(kept.version(), 5);
    let again = answer(send(&handle, Op::Increment(1), key("k2")).await).await;
    assert_eq!((again.version(), again.value()), (6, 6), "k2 was forgotten: it counts again");
    assert_eq!(world.history().await.len(), 6);
}

/// A delete takes one place in the counter's order: the writes sent before it commit first (it
/// waits for their held commits), the writes sent after it wait for it and start the counter
/// again at version 1, and a key used before it counts again after it.
#[tokio::test(start_paused = true)]
async fn a_delete_waits_for_the_writes_before_it_and_the_writes_after_it_start_afresh() {
    let mut world = World::new(Config::default());
    let handle = world.actor();
    world.store.hold().await;
    let before = send(&handle, Op::Increment(5), key("k")).await;
    world.store.appended(1).await;
    let second = send(&handle, Op::Increment(1), None).await;
    let deleting = {
        let handle = handle.clone();
        let task = tokio::spawn(async move { handle.delete().await });
        tokio::task::yield_now().await;
        task
    };
    let after = send(&handle, Op::Increment(5), key("k")).await;
    assert!(!deleting.is_finished(), "the delete waits for the commits before it");
    world.store.release().await;

    assert_eq!(answer(before).await.version(), 1);
    assert_eq!(answer(second).await.version(), 2);
    let outcome = deleting.await.expect("task").expect("deleted");
    assert_eq!((outcome.deleted, outcome.version), (true, 2));
    assert!(outcome.epoch.is_some(), "the name has an epoch of its own now");
    let again = answer(after).await;
    assert_eq!((again.version(), again.value()), (1, 5), "the key counts again, from 0");
    assert_eq!(world.history().await, [(1, 5)]);
    let state = handle.read().await.expect("read");
    assert_eq!((state.version, state.epoch), (1, outcome.epoch));
}
