//! A counter's fan-out to its watchers: the latest updates in a ring that grows only as far as
//! it is used, a version that wakes watchers, and who watches (presence).
//!
//! Why not `tokio::sync::broadcast`: its ring is allocated whole when the channel is made, about
//! 39 KB at the default `--watch-buffer` of 1024, for every watched counter, even one that never
//! changes. When every socket watches its own counter that ring was ten times the socket.
//! Here the ring is a `VecDeque` that grows with the updates actually published, up to
//! `--watch-buffer`, so an idle watched counter costs a few hundred bytes.
//!
//! Updates have consecutive versions, so a watcher needs no cursor of its own here: it reads
//! the updates after the last version it sent. When that version has left the ring, the read
//! says [`Lagged`], and the watcher catches up from history itself: nothing is ever skipped
//! silently.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tally_proto::Presence;
use tokio::sync::watch;

use crate::framing::Published;

/// Who a subscription counts as, for `users` in presence.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum User {
    /// A credentialed principal: all its subscriptions count as one user.
    Principal(Arc<str>),
    /// An anonymous socket, which counts as a user of its own (anonymous sockets cannot be
    /// told apart otherwise).
    Anonymous(u64),
}

impl User {
    /// Who a socket counts as: its principal when it has credentials, else itself (`socket`
    /// is a number no other live socket has).
    pub(crate) fn of(principal: &crate::access::Principal, socket: u64) -> Self {
        if principal.credentialed {
            User::Principal(Arc::clone(&principal.id))
        } else {
            User::Anonymous(socket)
        }
    }
}

/// A number for each socket, told apart in presence.
pub(crate) fn next_socket_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A watched counter's fan-out.
#[derive(Debug)]
pub struct Topic {
    /// The latest updates, oldest first, at most `capacity`.
    ring: Mutex<VecDeque<Arc<Published>>>,
    capacity: usize,
    /// The latest published version: wakes every subscription.
    tip: watch::Sender<u64>,
    /// Subscriptions per user.
    users: Mutex<HashMap<User, u32>>,
    watchers: AtomicU64,
    /// The presence last pushed; the presence ticker updates it at most once a second.
    presence: watch::Sender<Presence>,
    /// Set when the counts changed since the last tick.
    presence_dirty: AtomicBool,
}

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// The updates after the version asked for are these (possibly none yet).
    Ok,
    /// Updates after the version asked for have left the ring: versions up to `oldest - 1`
    /// must come from history (`oldest` is the first version the ring still holds).
    Lagged {
        /// The oldest version the ring holds.
        oldest: u64,
    },
}

impl Topic {
    /// A topic keeping at most `capacity` (at least 1) recent updates, at `version` now.
    pub(crate) fn new(capacity: usize, version: u64) -> Arc<Self> {
        Arc::new(Self {
            ring: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            tip: watch::Sender::new(version),
            users: Mutex::new(HashMap::new()),
            watchers: AtomicU64::new(0),
            presence: watch::Sender::new(Presence::default()),
            presence_dirty: AtomicBool::new(false),
        })
    }

    /// Publishes a committed update, in version order. Called only by the counter's actor.
    pub(crate) fn publish(&self, update: Arc<Published>) {
        let version = update.version();
        {
            let mut ring = lock(&self.ring);
            if ring.len() == self.capacity {
                ring.pop_front();
            }
            ring.push_back(update);
        }
        self.tip.send_replace(version);
    }

    /// The latest published version.
    #[allow(dead_code)] // the v2 session's first user lands next
    pub(crate) fn version(&self) -> u64 {
        *self.tip.borrow()
    }

    /// Appends to `out` up to `max` updates with versions above `after`, oldest first.
    pub(crate) fn read_after(&self, after: u64, max: usize, out: &mut Vec<Arc<Published>>) -> Read {
        let ring = lock(&self.ring);
        let Some(oldest) = ring.front().map(|update| update.version()) else {
            return Read::Ok;
        };
        if oldest > after + 1 {
            return Read::Lagged { oldest };
        }
        // Versions are consecutive, but a commit reported failed that reached the disk anyway
        // can leave a jump; a search is correct either way.
        let start = ring.partition_point(|update| update.version() <= after);
        out.extend(ring.iter().skip(start).take(max).cloned());
        Read::Ok
    }

    /// The latest update, if the ring holds any.
    #[allow(dead_code)] // the v2 session's first user lands next
    pub(crate) fn latest(&self) -> Option<Arc<Published>> {
        lock(&self.ring).back().cloned()
    }

    /// Subscribes `user`; the subscription leaves when dropped.
    pub(crate) fn subscribe(self: &Arc<Self>, user: User) -> Subscription {
        *lock(&self.users).entry(user.clone()).or_default() += 1;
        self.watchers.fetch_add(1, Ordering::Relaxed);
        self.presence_dirty.store(true, Ordering::Release);
        Subscription { tip: self.tip.subscribe(), topic: Arc::clone(self), user }
    }

    /// How many subscriptions the topic has now.
    pub(crate) fn watchers(&self) -> u64 {
        self.watchers.load(Ordering::Relaxed)
    }

    /// The counts now.
    pub(crate) fn presence_now(&self) -> Presence {
        let users = lock(&self.users).len() as u64;
        Presence { watchers: self.watchers(), users }
    }

    /// Publishes the counts if they changed since the last call; the presence ticker calls it
    /// once a second, which bounds presence pushes to one a second per counter.
    pub(crate) fn tick_presence(&self) {
        if self.presence_dirty.swap(false, Ordering::AcqRel) {
            let now = self.presence_now();
            self.presence.send_if_modified(|last| std::mem::replace(last, now) != now);
        }
    }

    fn leave(&self, user: &User) {
        let mut users = lock(&self.users);
        if let Some(count) = users.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                users.remove(user);
            }
        }
        drop(users);
        self.watchers.fetch_sub(1, Ordering::Relaxed);
        self.presence_dirty.store(true, Ordering::Release);
    }
}

/// One watcher's subscription to a topic.
#[derive(Debug)]
pub struct Subscription {
    tip: watch::Receiver<u64>,
    topic: Arc<Topic>,
    user: User,
}

impl Subscription {
    /// Waits until a version later than the last one this subscription was woken for is
    /// published (at once if one already was), and answers it.
    pub(crate) async fn changed(&mut self) -> u64 {
        // The sender lives in the topic, which this subscription keeps alive: never closed.
        let _ = self.tip.changed().await;
        *self.tip.borrow_and_update()
    }

    /// The topic.
    pub(crate) fn topic(&self) -> &Arc<Topic> {
        &self.topic
    }

    /// A receiver of the topic's presence pushes (at most one a second).
    #[allow(dead_code)] // the v2 session's first user lands next
    pub(crate) fn presence(&self) -> watch::Receiver<Presence> {
        self.topic.presence.subscribe()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.topic.leave(&self.user);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds consistent data.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::HistoryRecord;
    use tally_proto::{CounterName, OpKind};

    fn update(version: u64) -> Arc<Published> {
        let entry = HistoryRecord {
            version,
            kind: OpKind::Increment,
            amount: Some(1),
            previous_value: version as i64 - 1,
            value: version as i64,
            at_ms: 0,
            by: None,
        };
        let name = Arc::new(CounterName::parse("c").unwrap());
        Arc::new(Published::new(name, 1, Arc::from("t"), entry))
    }

    fn versions(topic: &Topic, after: u64, max: usize) -> Result<Vec<u64>, u64> {
        let mut out = Vec::new();
        match topic.read_after(after, max, &mut out) {
            Read::Ok => Ok(out.iter().map(|update| update.version()).collect()),
            Read::Lagged { oldest } => Err(oldest),
        }
    }

    #[test]
    fn the_ring_grows_only_with_use_and_says_when_a_reader_lagged() {
        let topic = Topic::new(4, 0);
        assert_eq!(lock(&topic.ring).capacity(), 0, "an idle topic allocates no ring");
        assert_eq!(versions(&topic, 0, 10), Ok(vec![]));
        for version in 1..=6 {
            topic.publish(update(version));
        }
        assert_eq!(topic.version(), 6);
        assert_eq!(versions(&topic, 2, 10), Ok(vec![3, 4, 5, 6]));
        assert_eq!(versions(&topic, 3, 2), Ok(vec![4, 5]));
        assert_eq!(versions(&topic, 6, 10), Ok(vec![]));
        // Versions 2 (and 1) left the ring: the reader must say so, never skip them.
        assert_eq!(versions(&topic, 1, 10), Err(3));
        assert_eq!(topic.latest().map(|update| update.version()), Some(6));
    }

    #[test]
    fn presence_counts_users_and_watchers_and_ticks_only_on_change() {
        let topic = Topic::new(4, 0);
        let alice = || User::Principal(Arc::from("alice"));
        let a = topic.subscribe(alice());
        let b = topic.subscribe(alice());
        let c = topic.subscribe(User::Anonymous(1));
        let d = topic.subscribe(User::Anonymous(2));
        assert_eq!(topic.presence_now(), Presence { watchers: 4, users: 3 });
        let mut pushes = a.presence();
        topic.tick_presence();
        assert!(pushes.has_changed().unwrap());
        assert_eq!(*pushes.borrow_and_update(), Presence { watchers: 4, users: 3 });
        topic.tick_presence();
        assert!(!pushes.has_changed().unwrap(), "no change, no push");
        drop((b, d));
        topic.tick_presence();
        assert_eq!(*pushes.borrow_and_update(), Presence { watchers: 2, users: 2 });
        drop(c);
        assert_eq!(topic.presence_now(), Presence { watchers: 1, users: 1 });
    }

    #[tokio::test]
    async fn a_subscription_wakes_for_each_new_tip() {
        let topic = Topic::new(4, 0);
        let mut subscription = topic.subscribe(User::Anonymous(1));
        topic.publish(update(1));
        topic.publish(update(2));
        assert_eq!(subscription.changed().await, 2);
        let waiting = tokio::spawn(async move { subscription.changed().await });
        tokio::task::yield_now().await;
        topic.publish(update(3));
        assert_eq!(waiting.await.unwrap(), 3);
    }
}
