//! What a counter's actor remembers of idempotency keys, so that a retry is answered without
//! asking storage: the keys of its committed operations (loaded with the counter, bounded by
//! `--idempotency-keys` and `--idempotency-window`) and the keys of operations still pending
//! or being committed, with the duplicates waiting for them.
//!
//! The actor is the only writer of its counter, so what it remembers is what storage holds:
//! a key enters `committed` only once its batch is durable, and leaves it in commit order
//! (oldest first) when the window or the bound is passed; storage is told in the next batch.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tally_proto::{IdempotencyKey, Op};

use super::{ApplyError, Reply};
use crate::framing::Published;
use crate::store::{HistoryRecord, IdempotencyRecord, KeyRef};

/// A key as it is scoped: per principal (and per counter, since each actor has its own).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct KeyId {
    /// The principal that sent it (what history's `by` records).
    pub(super) by: Arc<str>,
    /// The key.
    pub(super) key: IdempotencyKey,
}

/// What to do with a keyed operation that just arrived.
pub(super) enum Arrival {
    /// A key not seen (or forgotten): apply the operation; the key is now in flight.
    New(Arc<KeyId>, Reply<Arc<Published>>),
    /// The key's operation was committed and is the same: answer its update again.
    Replay(HistoryRecord, Reply<Arc<Published>>),
    /// The key's operation, the same, is pending or being committed: the reply was queued and
    /// gets the first one's answer.
    Waiting,
    /// The key was used for another operation: refuse with this error; nothing is stored.
    Reused(ApplyError, Reply<Arc<Published>>),
}

/// An operation in flight with its key, and the replies of duplicates that wait for it.
struct InFlight {
    op: Op,
    duplicates: Vec<Reply<Arc<Published>>>,
}

/// One counter's idempotency keys.
pub(super) struct Keys {
    /// Committed keyed operations: what a retry is answered with.
    committed: HashMap<Arc<KeyId>, HistoryRecord>,
    /// The committed keys in version order, oldest first, for forgetting the oldest. An entry
    /// whose version is not its key's in `committed` is stale (the key was forgotten early
    /// and used again) and is skipped.
    order: VecDeque<(u64, Arc<KeyId>)>,
    /// Keys of operations pending or in a batch being committed.
    in_flight: HashMap<Arc<KeyId>, InFlight>,
    /// How many duplicates wait in `in_flight`, which counts against the actor's pending bound.
    waiting: usize,
    /// Records forgotten here and not yet deleted from storage: sent with the next batch.
    forget: Vec<KeyRef>,
    /// `--idempotency-keys`: committed keys remembered at most.
    limit: usize,
    /// `--idempotency-window`, in milliseconds.
    window_ms: i64,
}

impl Keys {
    pub(super) fn new(limit: usize, window: std::time::Duration) -> Self {
        Self {
            committed: HashMap::new(),
            order: VecDeque::new(),
            in_flight: HashMap::new(),
            waiting: 0,
            forget: Vec::new(),
            limit: limit.max(1),
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Operations committed before this time (ms since the epoch) are past the window.
    pub(super) fn cutoff(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.window_ms)
    }

    /// `--idempotency-keys`.
    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    /// How many duplicates wait for an operation in flight.
    pub(super) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Replaces what is remembered as committed with `records` (oldest first), as loaded from
    /// storage. Keys in flight stay: their operations are still pending.
    pub(super) fn load(&mut self, records: Vec<IdempotencyRecord>) {
        self.committed.clear();
        self.order.clear();
        // Storage still holds whatever was to be forgotten: the load decides afresh.
        self.forget.clear();
        for record in records {
            let Some(by) = record.entry.by.clone() else { continue };
            let id = Arc::new(KeyId { by, key: record.key });
            self.order.push_back((record.entry.version, Arc::clone(&id)));
            self.committed.insert(id, record.entry);
        }
    }

    /// Sorts out a keyed operation `op` that just arrived with `reply`, at `now_ms`.
    pub(super) fn arrive(
        &mut self,
        id: KeyId,
        op: Op,
        now_ms: i64,
        reply: Reply<Arc<Published>>,
    ) -> Arrival {
        if let Some(entry) = self.committed(&id, now_ms) {
            let first = entry.op();
            if first == op {
                return Arrival::Replay(entry.clone(), reply);
            }
            return Arrival::Reused(ApplyError::KeyReused { key: id.key, first, op }, reply);
        }
        if let Some(in_flight) = self.in_flight.get_mut(&id) {
            if in_flight.op == op {
                in_flight.duplicates.push(reply);
                self.waiting += 1;
                return Arrival::Waiting;
            }
            let first = in_flight.op;
            return Arrival::Reused(ApplyError::KeyReused { key: id.key, first, op }, reply);
        }
        let id = Arc::new(id);
        self.in_flight.insert(Arc::clone(&id), InFlight { op, duplicates: Vec::new() });
        Arrival::New(id, reply)
    }

    /// The committed operation of `id`, if it is remembered and within the window at `now_ms`;
    /// one past the window is forgotten here.
    pub(super) fn committed(&mut self, id: &KeyId, now_ms: i64) -> Option<&HistoryRecord> {
        let cutoff = self.cutoff(now_ms);
        if self.committed.get(id).is_some_and(|entry| entry.at_ms < cutoff) {
            if let Some((id, entry)) = self.committed.remove_entry(id) {
                self.forget.push(key_ref(&id, entry.version));
            }
            return None;
        }
        self.committed.get(id)
    }

    /// The operation of `id` ended without being stored: the duplicates waiting for it, to be
    /// given the same answer. The key is not remembered, so a later retry applies it.
    pub(super) fn settle(&mut self, id: &KeyId) -> Vec<Reply<Arc<Published>>> {
        let duplicates = self.in_flight.remove(id).map(|in_flight| in_flight.duplicates);
        let duplicates = duplicates.unwrap_or_default();
        self.waiting -= duplicates.len();
        duplicates
    }

    /// The operation of `id` is durable as `entry`: it is remembered, the oldest key is
    /// forgotten if that passes the bound, and the duplicates waiting are returned.
    pub(super) fn commit(
        &mut self,
        id: Arc<KeyId>,
        entry: &HistoryRecord,
    ) -> Vec<Reply<Arc<Published>>> {
        let duplicates = self.settle(&id);
        self.order.push_back((entry.version, Arc::clone(&id)));
        self.committed.insert(id, entry.clone());
        while self.committed.len() > self.limit && self.forget_oldest() {}
        duplicates
    }

    /// Forgets the committed keys whose operations are past the window at `now_ms`, oldest
    /// first (commit order is time order, but for a clock set back).
    pub(super) fn forget_expired(&mut self, now_ms: i64) {
        let cutoff = self.cutoff(now_ms);
        while let Some((version, id)) = self.order.front() {
            match self.committed.get(id).filter(|entry| entry.version == *version) {
                Some(entry) if entry.at_ms >= cutoff => break,
                Some(_) => {
                    self.forget_oldest();
                }
                None => {
                    self.order.pop_front();
                }
            }
        }
    }

    /// Records forgotten since the last batch, for storage to delete with the next one.
    pub(super) fn take_forgotten(&mut self) -> Vec<KeyRef> {
        std::mem::take(&mut self.forget)
    }

    /// Forgets the oldest committed key (skipping stale entries of `order`); `false` when
    /// none is left.
    fn forget_oldest(&mut self) -> bool {
        while let Some((version, id)) = self.order.pop_front() {
            if self.committed.get(&id).is_some_and(|entry| entry.version == version) {
                self.committed.remove(&id);
                self.forget.push(key_ref(&id, version));
                return true;
            }
        }
        false
    }

    /// How many committed keys are remembered.
    #[cfg(test)]
    pub(super) fn remembered(&self) -> usize {
        self.committed.len()
    }
}

/// The storage name of `id`'s record at `version`.
pub(super) fn key_ref(id: &KeyId, version: u64) -> KeyRef {
    KeyRef { principal: Arc::clone(&id.by), key: id.key.clone(), version }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tally_proto::OpKind;
    use tokio::sync::oneshot;

    use super::*;

    const HOUR_MS: i64 = 3_600_000;
    const NOW: i64 = 1_736_942_400_000;

    fn id(key: &str) -> KeyId {
        KeyId { by: Arc::from("alice"), key: IdempotencyKey::parse(key).expect("a valid key") }
    }

    fn increment(version: u64, at_ms: i64) -> HistoryRecord {
        HistoryRecord {
            version,
            kind: OpKind::Increment,
            amount: Some(1),
            previous_value: version as i64 - 1,
            value: version as i64,
            at_ms,
            by: Some(Arc::from("alice")),
        }
    }

    fn reply() -> Reply<Arc<Published>> {
        oneshot::channel().0
    }

    fn record(key: &str, version: u64, at_ms: i64) -> IdempotencyRecord {
        IdempotencyRecord { key: id(key).key, entry: increment(version, at_ms) }
    }

    #[test]
    fn a_key_past_the_window_is_forgotten_when_asked_and_counts_again() {
        let mut keys = Keys::new(100, Duration::from_secs(3600));
        keys.load(vec![record("old", 1, NOW - 2 * HOUR_MS), record("new", 2, NOW - 10)]);
        assert!(matches!(
            keys.arrive(id("new"), Op::Increment(1), NOW, reply()),
            Arrival::Replay(..)
        ));
        // Past the window: a new write, and storage is told to forget the old record.
        assert!(matches!(keys.arrive(id("old"), Op::Increment(1), NOW, reply()), Arrival::New(..)));
        let forgotten = keys.take_forgotten();
        assert_eq!(forgotten, [key_ref(&id("old"), 1)]);
        assert_eq!(keys.remembered(), 1);
    }

    #[test]
    fn expired_keys_are_forgotten_oldest_first_before_a_batch() {
        let mut keys = Keys::new(100, Duration::from_secs(3600));
        keys.load(vec![
            record("a", 1, NOW - 3 * HOUR_MS),
            record("b", 2, NOW - 2 * HOUR_MS),
            record("c", 3, NOW - HOUR_MS / 2),
        ]);
        keys.forget_expired(NOW);
        assert_eq!(keys.take_forgotten(), [key_ref(&id("a"), 1), key_ref(&id("b"), 2)]);
        assert_eq!(keys.remembered(), 1);
    }

    #[test]
    fn past_the_bound_the_oldest_key_is_forgotten_and_a_key_used_again_keeps_its_new_record() {
        let mut keys = Keys::new(2, Duration::from_secs(3600));
        for (version, key) in [(1, "a"), (2, "b"), (3, "c")] {
            let Arrival::New(new, _) = keys.arrive(id(key), Op::Increment(1), NOW, reply()) else {
                panic!("{key} is new")
            };
            assert!(keys.commit(new, &increment(version, NOW)).is_empty());
        }
        assert_eq!(keys.take_forgotten(), [key_ref(&id("a"), 1)]);
        // "a" again is a new write now; "b" goes when it commits, and the stale queue entry of
        // the first "a" is skipped rather than forgetting the new one.
        let Arrival::New(again, _) = keys.arrive(id("a"), Op::Increment(1), NOW, reply()) else {
            panic!("a was forgotten")
        };
        keys.commit(again, &increment(4, NOW));
        assert_eq!(keys.take_forgotten(), [key_ref(&id("b"), 2)]);
        assert!(
            matches!(keys.arrive(id("a"), Op::Increment(1), NOW, reply()), Arrival::Replay(entry, _) if entry.version == 4)
        );
        assert_eq!(keys.remembered(), 2);
    }

    #[test]
    fn duplicates_wait_and_count_until_the_first_is_settled() {
        let mut keys = Keys::new(10, Duration::from_secs(3600));
        let Arrival::New(first, _) = keys.arrive(id("k"), Op::SetValue(3), NOW, reply()) else {
            panic!("new")
        };
        assert!(matches!(keys.arrive(id("k"), Op::SetValue(3), NOW, reply()), Arrival::Waiting));
        assert!(matches!(
            keys.arrive(id("k"), Op::SetValue(4), NOW, reply()),
            Arrival::Reused(
                ApplyError::KeyReused { first: Op::SetValue(3), op: Op::SetValue(4), .. },
                _
            )
        ));
        assert_eq!(keys.waiting(), 1);
        assert_eq!(keys.settle(&first).len(), 1);
        assert_eq!(keys.waiting(), 0);
        // Settled without a commit: not remembered.
        assert!(matches!(keys.arrive(id("k"), Op::SetValue(3), NOW, reply()), Arrival::New(..)));
    }
}
