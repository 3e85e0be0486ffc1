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
