//! One socket's subscriptions: what each knows (the last version it dealt with, its filters,
//! its conflation rate, the presence it last pushed, whether its principal sees `by`), kept in
//! a slab owned by the socket's task, and the due times of conflated updates.
//!
//! The shared update bytes stay shared: a subscription decides only whether to send an
//! update, and which copy (`by` for admins, `conflated` for a `maxRate`).

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tally_proto::{CounterName, OpKind};
use tokio::time::{Instant, Sleep};

use crate::framing::Published;
use crate::topic::{Announced, Subscription};

/// The update types a subscription delivers, one bit per type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Types(u8);

impl Types {
    /// Every type.
    pub(super) const ALL: Types = Types(u8::MAX);

    /// Only `kinds` (every type, when `kinds` names them all).
    pub(super) fn only(kinds: &[OpKind]) -> Self {
        let bits = kinds.iter().fold(0, |bits, kind| bits | Self::bit(*kind));
        let every = OpKind::ALL.iter().fold(0, |bits, kind| bits | Self::bit(*kind));
        if bits == every { Self::ALL } else { Types(bits) }
    }

    fn bit(kind: OpKind) -> u8 {
        // Four kinds: each has a bit of its own.
        1 << (kind as u8)
    }

    fn allows(self, kind: OpKind) -> bool {
        self.0 & Self::bit(kind) != 0
    }
}

/// A `maxRate` subscription's state: when it may send next, and the latest update it holds
/// until then.
#[derive(Debug)]
pub(super) struct Conflation {
    /// The least time between two sends (1 / maxRate).
    interval: Duration,
    /// The earliest time the next update may be sent.
    next_at: Instant,
    /// The latest update not sent yet.
    pending: Option<Arc<Published>>,
    /// When the pending update is due, if the schedule holds it.
    pub(super) scheduled: Option<Instant>,
    /// The version of the last conflated update sent.
    sent: u64,
}

impl Conflation {
    /// At most `rate` updates a second (0 < rate ≤ 1000, checked by the parser).
    pub(super) fn new(rate: f64) -> Box<Self> {
        Box::new(Self {
            interval: Duration::from_secs_f64(1.0 / rate),
            next_at: Instant::now(),
            pending: None,
            scheduled: None,
            sent: 0,
        })
    }
}

/// What a subscription does with an update it was offered.
#[derive(Debug)]
pub(super) enum Offer {
    /// Nothing now (filtered out, or held for a send already scheduled).
    Nothing,
    /// Send these bytes now.
    Send(Utf8Bytes),
    /// Held: schedule the subscription's conflated send at this time.
    Schedule(Instant),
}

/// When a parked conflated subscription may send (see [`Watched::park`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Slot {
    /// Now: look at the topic.
    Now,
    /// At this time: schedule it.
    Schedule(Instant),
    /// Its next slot is already scheduled.
    Scheduled,
}

/// One subscription of the socket.
#[derive(Debug)]
pub(super) struct Watched {
    pub(super) name: Arc<CounterName>,
    /// The topic subscription (leaves the topic when dropped).
    pub(super) subscription: Subscription,
    /// The last version this subscription dealt with: sent, filtered out, or held for a
    /// conflated send. The next update it takes is `seen + 1`.
    pub(super) seen: u64,
    pub(super) types: Types,
    /// Whether the socket's principal holds `admin` on the counter (and so sees `by`).
    pub(super) admin: bool,
    /// For a subscription that asked for presence, the announcement it last saw.
    pub(super) presence: Option<Announced>,
    /// For a `maxRate` subscription, its conflation (boxed: most subscriptions have none).
    pub(super) rate: Option<Box<Conflation>>,
}

impl Watched {
    /// Whether the subscription delivers every type at most `maxRate` times a second, and so
    /// needs only the latest update, never the ones before it.
    pub(super) fn wants_latest_only(&self) -> bool {
        self.rate.is_some() && self.types == Types::ALL
    }

    /// Takes update `seen + 1`; says what to send.
    pub(super) fn offer(&mut self, update: Arc<Published>, now: Instant) -> Offer {
        self.seen = update.version();
        if !self.types.allows(update.kind()) {
            return Offer::Nothing;
        }
        let Some(rate) = &mut self.rate else {
            return Offer::Send(update.v2_json_for(self.admin, false));
        };
        if rate.scheduled.is_none() && now >= rate.next_at {
            rate.next_at = now + rate.interval;
            rate.sent = update.version();
            return Offer::Send(update.v2_json_for(self.admin, true));
        }
        rate.pending = Some(update);
        if rate.scheduled.is_some() {
            return Offer::Nothing;
        }
        rate.scheduled = Some(rate.next_at);
        Offer::Schedule(rate.next_at)
    }

    /// The held update, now that its time came (`None` if there is none). A latest-only
    /// subscription sends its topic's latest update instead, if it is newer than the last one
    /// it sent, and listens to its topic again.
    pub(super) fn due(&mut self, now: Instant) -> Option<Utf8Bytes> {
        let latest_only = self.wants_latest_only();
        let rate = self.rate.as_mut()?;
        rate.scheduled = None;
        let update = if latest_only {
            rate.pending = None;
            self.subscription.rearm();
            self.subscription.topic().latest().filter(|update| update.version() > rate.sent)?
        } else {
            rate.pending.take()?
        };
        rate.next_at = now + rate.interval;
        rate.sent = update.version();
        self.seen = self.seen.max(update.version());
        Some(update.v2_json_for(self.admin, true))
    }

    /// For a latest-only subscription its topic woke: when its next slot is still ahead, parks
    /// it until then (it stays off the topic's waiting list, so the writes meanwhile cost this
    /// subscription nothing: about `maxRate` looks a second, however hot the counter) and
    /// says when to look again; or says it may send now, its `seen` moved to just before the
    /// latest version so that the look reads only the latest.
    pub(super) fn park(&mut self, now: Instant) -> Slot {
        let tip = self.subscription.topic().version();
        // Nothing more comes of a deleted counter's topic: look now, which ends the subscription.
        if self.subscription.topic().is_deleted() {
            return Slot::Now;
        }
        let Some(rate) = self.rate.as_mut().filter(|_| self.types == Types::ALL) else {
            return Slot::Now;
        };
        if rate.scheduled.is_some() {
            return Slot::Scheduled;
        }
        if now < rate.next_at {
            rate.scheduled = Some(rate.next_at);
            return Slot::Schedule(rate.next_at);
        }
        self.seen = self.seen.max(tip.saturating_sub(1));
        Slot::Now
    }

    /// Forgets a held update: the subscription starts over from a snapshot.
    pub(super) fn drop_pending(&mut self) {
        if let Some(rate) = &mut self.rate {
            rate.pending = None;
        }
    }

    /// The presence to push, if the topic announced counts this subscription has not seen.
    pub(super) fn presence_to_push(&mut self) -> Option<tally_proto::Presence> {
        let last = self.presence.as_mut()?;
        let announced = self.subscription.topic().presence_announced();
        if announced.number <= last.number {
            return None;
        }
        let changed = announced.presence != last.presence;
        *last = announced;
        changed.then_some(announced.presence)
    }
}

/// The socket's subscriptions, by key (the key its topic wakes it with) and by name.
#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    entries: Vec<Option<Watched>>,
    /// Keys of empty entries, reused first.
    free: Vec<u32>,
    by_name: HashMap<Arc<CounterName>, u32>,
}

impl Subscriptions {
    pub(super) fn len(&self) -> usize {
        self.by_name.len()
    }

    pub(super) fn contains(&self, name: &CounterName) -> bool {
        self.by_name.contains_key(name)
    }

    /// The key the next inserted subscription gets.
    pub(super) fn next_key(&self) -> u32 {
        // At most `--max-subscriptions` entries, far below `u32::MAX`.
        self.free.last().copied().unwrap_or(self.entries.len() as u32)
    }

    /// Adds `watched` at [`Subscriptions::next_key`].
    pub(super) fn insert(&mut self, watched: Watched) -> u32 {
        let key = self.next_key();
        self.by_name.insert(Arc::clone(&watched.name), key);
        if self.free.last() == Some(&key) {
            self.free.pop();
            self.entries[key as usize] = Some(watched);
        } else {
            self.entries.push(Some(watched));
        }
        key
    }

    pub(super) fn get_mut(&mut self, key: u32) -> Option<&mut Watched> {
        self.entries.get_mut(key as usize)?.as_mut()
    }

    pub(super) fn key_of(&self, name: &CounterName) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// Removes the subscription at `key`.
    pub(super) fn remove(&mut self, key: u32) -> Option<Watched> {
        let watched = self.entries.get_mut(key as usize)?.take()?;
        self.by_name.remove(&*watched.name);
        self.free.push(key);
        Some(watched)
    }

    /// Every key in use.
    pub(super) fn keys(&self) -> Vec<u32> {
        self.by_name.values().copied().collect()
    }

    /// Removes every subscription.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = Watched> + '_ {
        self.by_name.clear();
        self.free.clear();
        self.entries.drain(..).flatten()
    }
}

/// When the held updates of conflated subscriptions are due, earliest first, with one timer
/// for the earliest (made on first use: most sockets never conflate).
#[derive(Debug, Default)]
pub(super) struct Schedule {
    due: BTreeSet<(Instant, u32)>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Schedule {
    pub(super) fn add(&mut self, at: Instant, key: u32) {
        self.due.insert((at, key));
    }

    pub(super) fn remove(&mut self, at: Instant, key: u32) {
        self.due.remove(&(at, key));
    }

    /// Waits until the earliest entry is due (forever while there is none).
    pub(super) async fn next(&mut self) {
        let Some(&(at, _)) = self.due.first() else {
            return std::future::pending().await;
        };
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        timer.as_mut().await;
    }

    /// Removes the entries due at `now`, answering their keys.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<u32> {
        let mut keys = Vec::new();
        while let Some(&(at, key)) = self.due.first() {
            if at > now {
                break;
            }
            self.due.pop_first();
            keys.push(key);
        }
        keys
    }
}
