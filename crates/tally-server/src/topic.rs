//! A counter's fan-out to its watchers: the latest updates in a ring that grows only as far as
//! it is used, wake-ups for the sockets that watch it, and who watches (presence).
//!
//! Why not `tokio::sync::broadcast`: its ring is allocated whole when the channel is made, about
//! 39 KB at the default `--watch-buffer` of 1024, for every watched counter, even one that never
//! changes. When every socket watches its own counter that ring was ten times the socket.
//! Here the ring is a `VecDeque` that grows with the updates actually published, up to
//! `--watch-buffer`, so an idle watched counter costs a few hundred bytes.
//!
//! Updates have consecutive versions, so a watcher needs no cursor of its own here: it reads
//! the updates after the last version it sent. When that version has left the ring, the read
//! says `Read::Lagged`, and the watcher catches up from history itself: nothing is ever skipped
//! silently.
//!
//! Why not a `watch` channel per subscription for the wake-ups: a socket with a thousand
//! subscriptions would have to keep a thousand `changed()` futures and poll them. Instead each
//! socket has one `Wakes` list, and a publish puts the key of each waiting subscription on
//! its socket's list and wakes that socket's task once: the socket then looks only at the
//! subscriptions whose counters changed. A subscription is on its topic's waiting list only
//! between the moment its socket looked at it and the next publish, so a publish touches only
//! the subscriptions that are not already due a look, as `tokio::sync::Notify` does.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tally_proto::Presence;

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

/// One socket's wake-ups: the keys of its subscriptions whose topics changed since the socket
/// last looked at them, and the socket's task to wake when one is added.
#[derive(Debug, Default)]
pub(crate) struct Wakes {
    /// Each key at most once until the socket takes them (a subscription is put here only as
    /// it leaves its topic's waiting list).
    ready: Mutex<Vec<u32>>,
    /// The task of the socket.
    waker: AtomicWaker,
}

impl Wakes {
    /// An empty list.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Waits until at least one subscription was woken, then moves the woken keys to `keys`.
    pub(crate) async fn take(&self, keys: &mut Vec<u32>) {
        poll_fn(|cx| self.poll_take(cx, keys)).await;
    }

    fn poll_take(&self, cx: &mut Context<'_>, keys: &mut Vec<u32>) -> Poll<()> {
        // Registered before looking, so a key added after the look wakes the task again.
        self.waker.register(cx.waker());
        let mut ready = lock(&self.ready);
        if ready.is_empty() {
            return Poll::Pending;
        }
        keys.append(&mut ready);
        Poll::Ready(())
    }

    fn wake(&self, key: u32) {
        lock(&self.ready).push(key);
        self.waker.wake();
    }
}

/// Where a subscription's wake-ups go. Shared between the subscription and, while it waits,
/// its topic's waiting list.
#[derive(Debug)]
struct Listener {
    /// True while the subscription is due a look (so not on the waiting list); its socket
    /// clears it, and joins the waiting list again, just before it looks.
    due: AtomicBool,
    wakes: Arc<Wakes>,
    key: u32,
    /// Whether presence changes wake it too.
    presence: bool,
}

impl Listener {
    fn new(wakes: Arc<Wakes>, key: u32, presence: bool, due: bool) -> Arc<Self> {
        Arc::new(Self { due: AtomicBool::new(due), wakes, key, presence })
    }

    /// Marks the subscription due and wakes its socket, unless it already was.
    fn notify(&self) {
        if !self.due.swap(true, Ordering::AcqRel) {
            self.wakes.wake(self.key);
        }
    }

    /// Whether the subscription that made this listener still uses it: a dropped or
    /// re-attached subscription leaves its old listener on the waiting list alone.
    fn is_abandoned(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) == 1
    }
}

/// A watched counter's fan-out.
#[derive(Debug)]
pub struct Topic {
    /// The latest updates, oldest first, at most `capacity`.
    ring: Mutex<VecDeque<Arc<Published>>>,
    capacity: usize,
    /// The latest published version.
    version: AtomicU64,
    /// The subscriptions that looked since the last publish, to be woken by the next one.
    waiting: Mutex<Vec<Arc<Listener>>>,
    /// Subscriptions per user.
    users: Mutex<HashMap<User, u32>>,
    watchers: AtomicU64,
    /// The presence last announced, numbered, and the other nodes' counts it includes; the
    /// presence ticker changes them at most once a second.
    presence: Mutex<Shown>,
    /// Set when the counts changed since the last tick.
    presence_dirty: AtomicBool,
    /// Set when this node's counts changed since the presence ticker last took them to share
    /// with other nodes (`crate::presence`); unused on a node of its own.
    share_dirty: AtomicBool,
    /// Set when the counter was deleted: readers get what was published before, then
    /// [`Read::Deleted`]. The topic is no longer its counter's (a fresh one replaces it).
    deleted: AtomicBool,
}

/// What the presence ticker last made of a topic's counts.
#[derive(Debug, Default)]
struct Shown {
    /// The last announcement.
    announced: Announced,
    /// The other nodes' counts (sums over every other live node), as of the ticker's last
    /// exchange with them; zero on a node of its own.
    others: Presence,
}

/// Presence as the ticker announced it. A subscription pushes an announcement numbered above
/// the last one it saw, and only that: its first push (the counts when it subscribed) may be
/// fresher than the last announcement, which must then not follow it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Announced {
    /// Counts up with each announcement.
    pub(crate) number: u64,
    /// The counts announced.
    pub(crate) presence: Presence,
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
    /// The counter was deleted, and every update published before was read: the
    /// subscription ends (nothing of this topic follows).
    Deleted,
}

impl Topic {
    /// A topic keeping at most `capacity` (at least 1) recent updates, at `version` now.
    pub(crate) fn new(capacity: usize, version: u64) -> Arc<Self> {
        Arc::new(Self {
            ring: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            version: AtomicU64::new(version),
            waiting: Mutex::new(Vec::new()),
            users: Mutex::new(HashMap::new()),
            watchers: AtomicU64::new(0),
            presence: Mutex::new(Shown::default()),
            presence_dirty: AtomicBool::new(false),
            share_dirty: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
        })
    }

    /// Ends the topic because its counter was deleted, and wakes every subscription, each of
    /// which then reads [`Read::Deleted`]. Called by the counter's actor or the registry, as
    /// the topic is taken out of its slot.
    pub(crate) fn end_deleted(&self) {
        // Stored before the wake-ups, so that a woken socket sees it.
        self.deleted.store(true, Ordering::Release);
        let woken = std::mem::take(&mut *lock(&self.waiting));
        for listener in &woken {
            if !listener.is_abandoned() {
                listener.notify();
            }
        }
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
        // Stored before the wake-ups, so that a woken socket reads the update.
        self.version.store(version, Ordering::Release);
        let woken = std::mem::take(&mut *lock(&self.waiting));
        for listener in &woken {
            if !listener.is_abandoned() {
                listener.notify();
            }
        }
    }

    /// Empties the ring before a publish that does not follow the latest version (a cluster
    /// node whose history no longer holds what other nodes committed meanwhile): every reader
    /// behind it is then told it lagged, instead of being handed the jump.
    pub(crate) fn forget_before_next(&self) {
        lock(&self.ring).clear();
    }

    /// The latest published version.
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Appends to `out` up to `max` updates with versions above `after`, oldest first.
    pub(crate) fn read_after(&self, after: u64, max: usize, out: &mut Vec<Arc<Published>>) -> Read {
        let ring = lock(&self.ring);
        // Read under the ring's lock, after which nothing more is published here.
        let deleted = self.deleted.load(Ordering::Acquire);
        let Some(oldest) = ring.front().map(|update| update.version()) else {
            return if deleted { Read::Deleted } else { Read::Ok };
        };
        if oldest > after + 1 {
            // History went with the counter: there is nothing to catch up from.
            return if deleted { Read::Deleted } else { Read::Lagged { oldest } };
        }
        // Versions are consecutive, but a commit reported failed that reached the disk anyway
        // can leave a jump; a search is correct either way.
        let start = ring.partition_point(|update| update.version() <= after);
        let before = out.len();
        out.extend(ring.iter().skip(start).take(max).cloned());
        if deleted && out.len() == before { Read::Deleted } else { Read::Ok }
    }

    /// The latest update, if the ring holds any.
    pub(crate) fn latest(&self) -> Option<Arc<Published>> {
        lock(&self.ring).back().cloned()
    }

    /// Subscribes `user`; the subscription leaves when dropped. Until it is attached to a
    /// socket's list ([`Subscription::attach`]) it wakes a list of its own, which
    /// [`Subscription::changed`] waits on. It starts due a look, off the waiting list, so that
    /// attaching it leaves nothing behind there.
    pub(crate) fn subscribe(self: &Arc<Self>, user: User) -> Subscription {
        *lock(&self.users).entry(user.clone()).or_default() += 1;
        self.watchers.fetch_add(1, Ordering::Relaxed);
        self.counts_changed();
        let listener = Listener::new(Wakes::new(), 0, false, true);
        Subscription { topic: Arc::clone(self), listener, user }
    }

    /// How many live subscriptions wait on this topic's next publish (tests only: that a
    /// parked conflated subscription is off the list).
    #[cfg(test)]
    pub(crate) fn waiting_listeners(&self) -> usize {
        lock(&self.waiting).iter().filter(|listener| !listener.is_abandoned()).count()
    }

    /// Puts `listener` on the waiting list, dropping abandoned listeners now and then: an idle
    /// topic has no publish to clear them, and subscriptions may come and go on it forever.
    fn wait(&self, listener: Arc<Listener>) {
        let mut waiting = lock(&self.waiting);
        // Looked at under the list's lock, which `end_deleted` takes after setting it: a
        // subscription that joins an ended topic (a conflated one back from its slot, say)
        // would wait for a publish that never comes, so it is due a look at once instead, and
        // that look reads `Read::Deleted`.
        if self.deleted.load(Ordering::Acquire) {
            drop(waiting);
            listener.notify();
            return;
        }
        if waiting.len() >= 2 * self.watchers() as usize + 16 {
            waiting.retain(|listener| !listener.is_abandoned());
        }
        waiting.push(listener);
    }

    /// Whether the counter was deleted ([`Topic::end_deleted`]): nothing more is published here.
    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// How many subscriptions the topic has now.
    pub(crate) fn watchers(&self) -> u64 {
        self.watchers.load(Ordering::Relaxed)
    }

    /// This node's counts now: its own subscriptions only.
    pub(crate) fn local_presence(&self) -> Presence {
        let users = lock(&self.users).len() as u64;
        Presence { watchers: self.watchers(), users }
    }

    /// The counts now: this node's own, plus the other nodes' as of the presence ticker's
    /// last exchange with them (none on a node of its own).
    pub(crate) fn presence_now(&self) -> Presence {
        let local = self.local_presence();
        let others = lock(&self.presence).others;
        Presence {
            watchers: local.watchers.saturating_add(others.watchers),
            users: local.users.saturating_add(others.users),
        }
    }

    /// The counts last announced by [`Topic::tick_presence`], with their number.
    pub(crate) fn presence_announced(&self) -> Announced {
        lock(&self.presence).announced
    }

    /// Whether this node's counts changed since the last call (the first call after a
    /// subscription came or went says true).
    pub(crate) fn take_share_changed(&self) -> bool {
        self.share_dirty.swap(false, Ordering::AcqRel)
    }

    /// Announces the counts if they changed since the last call, waking the subscriptions that
    /// asked for presence; the presence ticker calls it once a second, which bounds presence
    /// pushes to one a second per counter. `others` is what the other nodes count now, when
    /// the ticker heard from them (`None` on a node of its own: nothing to add).
    pub(crate) fn tick_presence(&self, others: Option<Presence>) {
        if let Some(others) = others {
            let mut shown = lock(&self.presence);
            if shown.others != others {
                shown.others = others;
                self.presence_dirty.store(true, Ordering::Release);
            }
        }
        if !self.presence_dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let now = self.presence_now();
        {
            let mut shown = lock(&self.presence);
            if shown.announced.presence == now {
                return;
            }
            shown.announced = Announced { number: shown.announced.number + 1, presence: now };
        }
        // Only those waiting need a wake-up: the others are due a look anyway, and look at
        // presence when they do.
        lock(&self.waiting).retain(|listener| {
            if listener.is_abandoned() {
                return false;
            }
            if listener.presence {
                listener.notify();
                return false;
            }
            true
        });
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
        self.counts_changed();
    }

    fn counts_changed(&self) {
        self.presence_dirty.store(true, Ordering::Release);
        self.share_dirty.store(true, Ordering::Release);
    }
}

/// One watcher's subscription to a topic.
#[derive(Debug)]
pub struct Subscription {
    topic: Arc<Topic>,
    /// Where its wake-ups go; replaced by `attach`.
    listener: Arc<Listener>,
    user: User,
}

impl Subscription {
    /// Waits until a version later than the last one this subscription was woken for is
    /// published (at once if one already was, and at once the first time), and answers the
    /// latest version. For a subscription that is not attached to a socket's list.
    pub(crate) async fn changed(&mut self) -> u64 {
        poll_fn(|cx| {
            let wakes = &self.listener.wakes;
            wakes.waker.register(cx.waker());
            if !self.rearm() {
                return Poll::Pending;
            }
            // The list is this subscription's own: its one key says nothing more.
            lock(&wakes.ready).clear();
            Poll::Ready(self.topic.version())
        })
        .await
    }

    /// Sends this subscription's wake-ups to the socket list `wakes` as `key` from now on
    /// (`presence`: presence changes wake it too), and wakes it there once, so that the socket
    /// looks at what was published since the subscription was made.
    pub(crate) fn attach(&mut self, wakes: &Arc<Wakes>, key: u32, presence: bool) {
        // Were the old listener on the waiting list, it would stay there abandoned, waking
        // nobody, until the next publish.
        self.listener = Listener::new(Arc::clone(wakes), key, presence, true);
        wakes.wake(key);
    }

    /// Whether the subscription is due a look: woken, and so off its topic's waiting list until
    /// `rearm` (publishes meanwhile cost it nothing).
    pub(crate) fn is_due(&self) -> bool {
        self.listener.due.load(Ordering::Acquire)
    }

    /// Has the socket look at this subscription again soon, as if its topic had published:
    /// for a socket that stopped reading a busy topic to give its other subscriptions a turn.
    pub(crate) fn wake_again(&self) {
        self.listener.notify();
    }

    /// Called just before the socket looks at the topic: if the subscription was due a look,
    /// it waits for the next publish again, and the answer is true. Waiting starts before the
    /// look, so a publish during the look wakes it again rather than being missed.
    pub(crate) fn rearm(&self) -> bool {
        if !self.listener.due.swap(false, Ordering::AcqRel) {
            return false;
        }
        self.topic.wait(Arc::clone(&self.listener));
        true
    }

    /// The topic.
    pub(crate) fn topic(&self) -> &Arc<Topic> {
        &self.topic
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

    /// The versions read after `after`, or where the reader must go: the oldest version the
    /// ring holds when it lagged, 0 when the counter was deleted (no ring holds version 0).
    fn versions(topic: &Topic, after: u64, max: usize) -> Result<Vec<u64>, u64> {
        let mut out = Vec::new();
        match topic.read_after(after, max, &mut out) {
            Read::Ok => Ok(out.iter().map(|update| update.version()).collect()),
            Read::Lagged { oldest } => Err(oldest),
            Read::Deleted => Err(0),
        }
    }

    #[test]
    fn a_deleted_topic_hands_out_what_it_published_then_says_deleted_and_wakes_everyone() {
        let topic = Topic::new(4, 0);
        for version in 1..=3 {
            topic.publish(update(version));
        }
        let wakes = Wakes::new();
        let mut subscription = topic.subscribe(User::Anonymous(1));
        subscription.attach(&wakes, 7, false);
        assert_eq!(take_now(&wakes), vec![7]);
        assert!(subscription.rearm(), "waiting for the next publish");
        topic.end_deleted();
        assert_eq!(take_now(&wakes), vec![7], "the delete wakes the waiting subscription");
        assert_eq!(versions(&topic, 1, 10), Ok(vec![2, 3]), "what was published comes first");
        assert_eq!(versions(&topic, 3, 10), Err(0), "then the end");
        let small = Topic::new(2, 0);
        for version in 1..=3 {
            small.publish(update(version));
        }
        small.end_deleted();
        assert_eq!(versions(&small, 0, 10), Err(0), "a lagging reader has no history to read");
        let empty = Topic::new(4, 0);
        empty.end_deleted();
        assert_eq!(versions(&empty, 0, 10), Err(0));
        // A subscription that looks again after the end is due at once, not left waiting.
        assert!(subscription.rearm(), "it was woken by the end");
        assert_eq!(take_now(&wakes), vec![7], "joining an ended topic wakes it again");
    }

    fn take_now(wakes: &Wakes) -> Vec<u32> {
        let mut keys = Vec::new();
        let waker = futures_util::task::noop_waker();
        let _ = wakes.poll_take(&mut Context::from_waker(&waker), &mut keys);
        keys
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
        let wakes = Wakes::new();
        let mut a = topic.subscribe(alice());
        a.attach(&wakes, 7, true);
        let b = topic.subscribe(alice());
        let c = topic.subscribe(User::Anonymous(1));
        let d = topic.subscribe(User::Anonymous(2));
        assert_eq!(topic.presence_now(), Presence { watchers: 4, users: 3 });
        assert_eq!(take_now(&wakes), vec![7], "attaching wakes once");
        assert!(a.rearm());
        topic.tick_presence(None);
        assert_eq!(topic.presence_announced().presence, Presence { watchers: 4, users: 3 });
        assert_eq!(take_now(&wakes), vec![7], "a change wakes who asked for presence");
        topic.tick_presence(None);
        assert!(a.rearm());
        topic.tick_presence(None);
        assert_eq!(take_now(&wakes), Vec::<u32>::new(), "no change, no wake-up");
        drop((b, d));
        topic.tick_presence(None);
        assert_eq!(
            topic.presence_announced(),
            Announced { number: 2, presence: Presence { watchers: 2, users: 2 } }
        );
        assert_eq!(take_now(&wakes), vec![7]);
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

    #[test]
    fn a_publish_wakes_each_socket_once_with_the_keys_of_its_changed_subscriptions() {
        let (one, two) = (Topic::new(8, 0), Topic::new(8, 0));
        let wakes = Wakes::new();
        let mut subscriptions = Vec::new();
        for (key, topic) in [(1, &one), (2, &two)] {
            let mut subscription = topic.subscribe(User::Anonymous(1));
            subscription.attach(&wakes, key, false);
            subscriptions.push(subscription);
        }
        let mut keys = take_now(&wakes);
        keys.sort_unstable();
        assert_eq!(keys, vec![1, 2]);
        // Not looked at yet: still due, so more publishes add nothing.
        one.publish(update(1));
        assert!(take_now(&wakes).is_empty());
        for subscription in &subscriptions {
            assert!(subscription.rearm());
            assert!(!subscription.rearm(), "a second look without a wake-up is not due");
        }
        one.publish(update(2));
        one.publish(update(3));
        assert_eq!(take_now(&wakes), vec![1], "one key however many publishes");
        // A dropped subscription is woken no more, and its listener is let go.
        subscriptions.remove(1);
        two.publish(update(1));
        assert!(take_now(&wakes).is_empty());
        assert!(lock(&two.waiting).is_empty());
    }

    #[test]
    fn subscriptions_that_come_and_go_on_an_idle_topic_leave_nothing_behind() {
        let topic = Topic::new(8, 0);
        let wakes = Wakes::new();
        for _ in 0..1000 {
            let mut subscription = topic.subscribe(User::Anonymous(1));
            subscription.attach(&wakes, 0, false);
            subscription.rearm();
        }
        assert!(lock(&topic.waiting).len() <= 16 + 2, "{}", lock(&topic.waiting).len());
        assert_eq!(topic.watchers(), 0);
    }
}
