//! Finds the actor of a counter by name, starting one on first write, and keeps each counter's
//! fan-out ([`Topic`]) for as long as someone watches it, even while the counter hibernates.
//!
//! Reads and watches of a counter with no actor here do not start one: a read answers from
//! storage (one row, or none for a counter never written), and a watch takes a topic in the
//! counter's slot, which the counter's next actor publishes on. So names that are only read or
//! watched cost one row read each, and a watched one a topic while it is watched: 60 000 reads
//! of names never written used to start 60 000 actors, each alive for `--idle-timeout`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;
use tally_proto::{Bounds, CounterName, IdempotencyKey, Op, Presence};
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::counter::{self, ActorContext, ApplyError, CounterHandle, CounterState, Home};
use crate::framing::Published;
use crate::metrics::Metrics;
use crate::presence::{LocalPresence, PresenceError, PresenceManager, WatchedTopic};
use crate::store::{DeleteOutcome, Store};
use crate::topic::{Subscription, Topic, User};

/// How many times a command follows a counter to its next actor after the previous one
/// hibernated under it. Hibernation takes `--idle-timeout` of silence, so one retry is almost
/// always enough.
const MAX_RETRIES: usize = 8;

/// How many reads of storage for counters with no actor (`Registry::read_stored`) run at once;
/// the others wait their turn here. Each runs on a tokio blocking thread: 10 000 watches of one
/// counter opened at once started about a hundred of them (each with its malloc arena and a
/// read connection), and the server kept about 2 KB per watcher more (docs/BENCHMARKS.md).
/// A row read takes tens of microseconds, so a few at a time keep up with any storm.
const MAX_STORED_READS: usize = 8;

/// What the registry keeps per counter name.
#[derive(Default)]
struct Slot {
    /// The live actor, with its generation; `None` while the counter hibernates.
    actor: Option<(u64, CounterHandle)>,
    /// The fan-out, created on the first watch and kept while anyone watches.
    topic: Option<Arc<Topic>>,
    /// The highest version another node was heard to commit (`u64::MAX` after missed
    /// notifications) since the actor last declined to hibernate: an actor behind it may not
    /// hibernate while the counter is watched (see [`Home::hibernate`]).
    heard: u64,
    /// The epoch the name was given by the last delete this node made or heard of: the
    /// notification of a delete reaches its own node too, and must not end the watches of the
    /// counter started afresh since.
    deleted_epoch: Option<u64>,
}

/// The slots, which actors reach through [`Home`].
struct Slots {
    /// Sharded, so lookups of different counters do not contend; no shard lock is ever held
    /// across an `.await`.
    slots: DashMap<CounterName, Slot>,
    watch_buffer: usize,
}

struct Shared {
    slots: Arc<Slots>,
    /// What every actor is started with.
    context: ActorContext,
    /// What presence is announced: this node's counts, or the cluster's.
    presence: Arc<dyn PresenceManager>,
    next_generation: AtomicU64,
    closed: AtomicBool,
    /// Bounds the reads of storage for counters with no actor (`MAX_STORED_READS`).
    stored_reads: tokio::sync::Semaphore,
}

/// The counters of one server. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<Shared>,
}

impl Home for Slots {
    /// Unregisters actor `generation` of `name`; called by the actor as it hibernates. The
    /// slot stays while watchers hold subscriptions to its topic.
    fn retire(&self, name: &CounterName, generation: u64) {
        self.slots.remove_if_mut(name, |_, slot| {
            if slot.actor.as_ref().is_some_and(|(current, _)| *current == generation) {
                slot.actor = None;
            }
            slot.actor.is_none() && !has_watchers(slot)
        });
    }

    fn hibernate(&self, name: &CounterName, generation: u64, version: u64) -> bool {
        let mut stays = false;
        self.slots.remove_if_mut(name, |_, slot| {
            if slot.actor.as_ref().is_some_and(|(current, _)| *current == generation) {
                if slot.heard > version && has_watchers(slot) {
                    // The actor reads storage now, which holds everything heard so far.
                    slot.heard = 0;
                    stays = true;
                    return false;
                }
                slot.actor = None;
            }
            slot.actor.is_none() && !has_watchers(slot)
        });
        !stays
    }

    /// `name`'s topic, created on first use at `version`. Called by the counter's actor.
    fn topic(&self, name: &CounterName, version: u64) -> Arc<Topic> {
        let mut slot = self.slots.entry(name.clone()).or_default();
        Arc::clone(slot.topic.get_or_insert_with(|| Topic::new(self.watch_buffer, version)))
    }

    fn deleted(&self, name: &CounterName, epoch: Option<u64>) {
        self.slots.remove_if_mut(name, |_, slot| {
            if let Some(topic) = slot.topic.take() {
                topic.end_deleted();
            }
            // What was heard of the old history says nothing of the new one.
            slot.heard = 0;
            slot.deleted_epoch = epoch;
            slot.actor.is_none()
        });
    }
}

impl Registry {
    /// A registry over `store`.
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>, config: Arc<Config>) -> Self {
        let presence = store.shared_presence().unwrap_or_else(|| Arc::new(LocalPresence));
        let slots = Arc::new(Slots { slots: DashMap::new(), watch_buffer: config.watch_buffer });
        let context = ActorContext {
            store,
            metrics,
            config,
            home: Arc::clone(&slots) as Arc<dyn Home>,
            tracker: TaskTracker::new(),
        };
        Self {
            shared: Arc::new(Shared {
                slots,
                context,
                presence,
                next_generation: AtomicU64::new(1),
                closed: AtomicBool::new(false),
                stored_reads: tokio::sync::Semaphore::new(MAX_STORED_READS),
            }),
        }
    }

    /// The handle of `name`'s actor if it has one now; `None` if the counter is not in memory.
    fn resident(&self, name: &CounterName) -> Result<Option<CounterHandle>, ApplyError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(ApplyError::ShuttingDown);
        }
        Ok(self
            .shared
            .slots
            .slots
            .get(name)
            .and_then(|slot| slot.actor.as_ref().map(|(_, handle)| handle.clone())))
    }

    /// The committed state of `name` as storage holds it (its zero state if it was never
    /// written). Every answered write is committed, so without an actor this is the truth.
    async fn read_stored(&self, name: &CounterName) -> Result<CounterState, ApplyError> {
        // The semaphore is never closed, so the error cannot come.
        let _turn =
            self.shared.stored_reads.acquire().await.map_err(|_| ApplyError::ShuttingDown)?;
        let record = self.shared.context.store.load_record(name).await?;
        Ok(record.map(CounterState::from_record).unwrap_or_default())
    }

    /// The handle of `name`'s actor, starting the actor if the counter is not in memory.
    fn handle(&self, name: &CounterName) -> Result<CounterHandle, ApplyError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(ApplyError::ShuttingDown);
        }
        if let Some(slot) = self.shared.slots.slots.get(name)
            && let Some((_, handle)) = &slot.actor
        {
            return Ok(handle.clone());
        }
        let mut slot = self.shared.slots.slots.entry(name.clone()).or_default();
        if let Some((_, handle)) = &slot.actor {
            return Ok(handle.clone());
        }
        // Checked again under the slot's lock: `shutdown` sets `closed` before it clears the
        // map, so no actor can be started behind its back.
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(ApplyError::ShuttingDown);
        }
        let generation = self.shared.next_generation.fetch_add(1, Ordering::Relaxed);
        let handle =
            counter::spawn(name.clone(), generation, slot.topic.clone(), &self.shared.context);
        slot.actor = Some((generation, handle.clone()));
        Ok(handle)
    }

    /// Sends a command to `name`'s actor, following the counter to a fresh actor if the one it
    /// found hibernated before taking the command.
    async fn with_actor<T, F, Fut>(&self, name: &CounterName, mut ask: F) -> Result<T, ApplyError>
    where
        F: FnMut(CounterHandle) -> Fut,
        Fut: Future<Output = Result<T, ApplyError>>,
    {
        for _ in 0..MAX_RETRIES {
            match ask(self.handle(name)?).await {
                Err(ApplyError::Retired) => continue,
                other => return other,
            }
        }
        Err(ApplyError::Retired)
    }

    /// Applies `op` to counter `name` on behalf of `by` (recorded in history); answers once it
    /// is committed and broadcast. With an idempotency `key` (scoped to `by` and `name`), an
    /// operation already committed with that key is answered its first update again and not
    /// applied, and one still in flight is waited for.
    ///
    /// # Errors
    /// `Rejected` for a result out of range or a version other than `expected_version`; `KeyReused` when `key` was used for another
    /// operation; `Store` when storage failed; `ShuttingDown`.
    pub async fn apply(
        &self,
        name: &CounterName,
        op: Op,
        expected_version: Option<u64>,
        by: &Arc<str>,
        key: Option<&IdempotencyKey>,
    ) -> Result<Arc<Published>, ApplyError> {
        self.with_actor(name, |handle| {
            let by = Arc::clone(by);
            let key = key.cloned();
            async move { handle.apply(op, expected_version, by, key).await }
        })
        .await
    }

    /// Replaces the bounds of counter `name` with `bounds`, through its actor, so that the
    /// change is ordered with the writes pending there; answers the committed state with them.
    ///
    /// # Errors
    /// `Rejected` (`out_of_bounds`) when the counter's value lies outside `bounds`; `Store` when
    /// they could not be stored; `ShuttingDown`.
    pub async fn configure(
        &self,
        name: &CounterName,
        bounds: Bounds,
    ) -> Result<CounterState, ApplyError> {
        self.with_actor(name, |handle| async move { handle.configure(bounds).await }).await
    }

    /// Deletes counter `name` through its actor (started if need be), after the operations
    /// sent to it before; see [`crate::store::Store::delete`].
    pub async fn delete(&self, name: &CounterName) -> Result<DeleteOutcome, ApplyError> {
        self.with_actor(name, |handle| async move { handle.delete().await }).await
    }

    /// Another node deleted counter `name`: this node's watchers of it are unsubscribed, and
    /// its actor, if it has one, forgets the counter and reads storage again.
    pub fn deleted_elsewhere(&self, name: &CounterName, epoch: u64) {
        let handle = match self.shared.slots.slots.get(name) {
            // This node made that delete (the notification comes back to it too), or heard of
            // it already: its watchers now watch the counter afresh.
            Some(slot) if slot.deleted_epoch == Some(epoch) => return,
            Some(slot) => slot.actor.as_ref().map(|(_, handle)| handle.clone()),
            // Nothing of it here: nobody to tell.
            None => return,
        };
        // Ended here, at once, for a counter with no actor too (its topic is the slot's).
        self.shared.slots.deleted(name, Some(epoch));
        if let Some(handle) = handle
            && !handle.deleted_elsewhere()
        {
            // A full inbox: wait for room rather than drop the word (a closed one means the
            // actor hibernated, and the next actor reads storage anyway).
            tokio::spawn(async move {
                handle.deleted_elsewhere_later().await;
            });
        }
    }

    /// The committed state of counter `name` (its zero state if it was never written).
    ///
    /// # Errors
    /// `Store` when the counter could not be loaded; `ShuttingDown`.
    pub async fn read(&self, name: &CounterName) -> Result<CounterState, ApplyError> {
        for _ in 0..MAX_RETRIES {
            // Without an actor, storage holds every answered write: no actor is started for a
            // read (a name never written would otherwise hold one for `--idle-timeout`).
            let Some(handle) = self.resident(name)? else {
                return self.read_stored(name).await;
            };
            match handle.read().await {
                Err(ApplyError::Retired) => continue,
                other => return other,
            }
        }
        Err(ApplyError::Retired)
    }

    /// The committed state of counter `name` and a subscription to its later updates,
    /// counted as `user`'s in presence. Call [`Registry::unwatch`] after dropping the
    /// subscription.
    ///
    /// # Errors
    /// `Store` when the counter could not be loaded; `ShuttingDown`.
    pub(crate) async fn watch(
        &self,
        name: &CounterName,
        user: User,
    ) -> Result<(CounterState, Subscription), ApplyError> {
        for _ in 0..MAX_RETRIES {
            let handle = match self.resident(name)? {
                Some(handle) => handle,
                None => match self.watch_stored(name, &user).await? {
                    Ok(watched) => return Ok(watched),
                    // An actor started meanwhile: it answers, so that no update of its falls
                    // between the state and the subscription.
                    Err(handle) => handle,
                },
            };
            match handle.watch(user.clone()).await {
                Err(ApplyError::Retired) => continue,
                other => return other,
            }
        }
        Err(ApplyError::Retired)
    }

    /// Watches `name`, which had no actor, without starting one: reads its state from storage,
    /// then subscribes to the topic in its slot, where the counter's next actor will find it
    /// (and publish on it, catching up from history first on what the topic lacks). Answers
    /// the handle of an actor found in the slot by then instead.
    ///
    /// A write between the read and the subscription would be missed by both, so the state is
    /// read again when one may have happened: always on a shared store (other nodes write, and
    /// word of their commit finds no slot to note it in before the subscription), and here
    /// when any actor started meanwhile (a write needs an actor). If storage is then ahead of
    /// the topic, the counter's actor is started to publish what it lacks, as for word from the
    /// broker. The watcher's seam (`last_version`) drops what it already has.
    async fn watch_stored(
        &self,
        name: &CounterName,
        user: &User,
    ) -> Result<Result<(CounterState, Subscription), CounterHandle>, ApplyError> {
        let started = self.shared.next_generation.load(Ordering::Acquire);
        // Looked at after `started`: an actor started before it is found here, one after it
        // changes the generation.
        if let Some(handle) = self.resident(name)? {
            return Ok(Err(handle));
        }
        let state = self.read_stored(name).await?;
        let (subscription, topic) = {
            let mut slot = self.shared.slots.slots.entry(name.clone()).or_default();
            if let Some((_, handle)) = &slot.actor {
                return Ok(Err(handle.clone()));
            }
            // Checked under the slot's lock, as in `handle`: nothing is added after `shutdown`
            // cleared the map.
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(ApplyError::ShuttingDown);
            }
            let buffer = self.shared.slots.watch_buffer;
            let topic =
                Arc::clone(slot.topic.get_or_insert_with(|| Topic::new(buffer, state.version)));
            (topic.subscribe(user.clone()), topic)
        };
        let maybe_written = self.shared.context.store.is_shared()
            || self.shared.next_generation.load(Ordering::Acquire) != started;
        let latest = if maybe_written {
            match self.read_stored(name).await {
                Ok(latest) => latest.version,
                Err(error) => {
                    drop(subscription);
                    self.unwatch(name);
                    return Err(error);
                }
            }
        } else {
            state.version
        };
        if latest > topic.version() {
            self.note_change(name, latest);
        }
        Ok(Ok((state, subscription)))
    }

    /// How many subscriptions `name` has now.
    pub fn watchers(&self, name: &CounterName) -> usize {
        self.shared
            .slots
            .slots
            .get(name)
            .and_then(|slot| slot.topic.as_ref().map(|topic| topic.watchers() as usize))
            .unwrap_or(0)
    }

    /// `name`'s topic, if it has one (tests only).
    #[cfg(test)]
    pub(crate) fn topic_of(&self, name: &CounterName) -> Option<Arc<Topic>> {
        self.shared.slots.slots.get(name).and_then(|slot| slot.topic.clone())
    }

    /// Who watches `name` now, as far as this node knows without asking: its own watchers,
    /// plus in a cluster the other nodes' as of the last presence tick (all zero when nobody
    /// watches it here).
    pub fn presence(&self, name: &CounterName) -> Presence {
        self.topic_presence(name).unwrap_or_default()
    }

    fn topic_presence(&self, name: &CounterName) -> Option<Presence> {
        self.shared
            .slots
            .slots
            .get(name)
            .and_then(|slot| slot.topic.as_ref().map(|topic| topic.presence_now()))
    }

    /// Who watches `name` now, on every node: [`Registry::presence`] for a counter watched
    /// here, else what the other nodes count (asked of the shared presence, in a cluster).
    ///
    /// # Errors
    /// When the other nodes' counts cannot be read.
    pub async fn read_presence(&self, name: &CounterName) -> Result<Presence, PresenceError> {
        match self.topic_presence(name) {
            Some(presence) => Ok(presence),
            None => self.shared.presence.others(name).await,
        }
    }

    /// Pushes each watched counter's presence, if it changed, once a second until shutdown;
    /// this is what bounds presence pushes to one a second per counter however fast sockets
    /// come and go. In a cluster each tick is also the node's one exchange of counts with the
    /// other nodes (`crate::presence`).
    pub fn spawn_presence_ticker(&self) {
        let slots = Arc::downgrade(&self.shared.slots);
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (Some(slots), Some(shared)) = (slots.upgrade(), shared.upgrade()) else {
                    break;
                };
                if shared.closed.load(Ordering::Acquire) {
                    break;
                }
                // Topics are cloned out first: no shard lock is held while pushing.
                let watched: Vec<WatchedTopic> = slots
                    .slots
                    .iter()
                    .filter_map(|slot| {
                        let topic = slot.topic.clone()?;
                        Some(WatchedTopic::new(slot.key().clone(), topic))
                    })
                    .collect();
                drop(slots);
                let presence = Arc::clone(&shared.presence);
                drop(shared);
                presence.tick(watched).await;
            }
        });
    }

    /// Another node committed `name` up to `version`: its actor (if it lives here) reads it
    /// again, and so does a watched counter's, started for it if it hibernated, so this node's
    /// watchers get the update. A counter this node neither holds nor watches costs nothing.
    pub fn changed(&self, name: &CounterName, version: u64) {
        if self.note_change(name, version) {
            self.shared.context.metrics.remote_changes.inc();
        }
    }

    /// [`Registry::changed`]: tells `name`'s actor (started if the counter is watched here and
    /// hibernated) that storage holds it up to `version`. Whether an actor was told.
    fn note_change(&self, name: &CounterName, version: u64) -> bool {
        // Noted under the slot's lock, which `hibernate` takes too: either the actor found
        // here has not left yet and will not leave before reading storage, or it is gone.
        let (handle, watched) = match self.shared.slots.slots.get_mut(name) {
            Some(mut slot) => {
                slot.heard = slot.heard.max(version);
                (slot.actor.as_ref().map(|(_, handle)| handle.clone()), has_watchers(&slot))
            }
            None => return false,
        };
        let handle = match handle {
            Some(handle) => handle,
            None if watched => match self.handle(name) {
                Ok(handle) => handle,
                Err(_) => return false,
            },
            None => return false,
        };
        if !handle.changed(version) {
            // A full inbox: wait for room rather than drop the word (a closed one means the
            // actor hibernated, and the next actor reads storage anyway).
            tokio::spawn(async move {
                handle.changed_later(version).await;
            });
        }
        true
    }

    /// How many counters the registry holds now: with a live actor, or watched.
    pub fn held(&self) -> usize {
        self.shared.slots.slots.len()
    }

    /// Notifications may have been missed: every counter held or watched here is read again.
    pub fn changed_all(&self) {
        let names: Vec<CounterName> = self
            .shared
            .slots
            .slots
            .iter()
            .filter(|slot| slot.actor.is_some() || has_watchers(slot.value()))
            .map(|slot| slot.key().clone())
            .collect();
        for name in names {
            self.changed(&name, u64::MAX);
        }
    }

    /// Forgets `name`'s slot if nothing needs it any more: no actor, and no watcher.
    pub fn unwatch(&self, name: &CounterName) {
        self.shared
            .slots
            .slots
            .remove_if(name, |_, slot| slot.actor.is_none() && !has_watchers(slot));
    }

    /// Stops taking commands, lets every actor finish its pending commits, and waits for them.
    pub async fn shutdown(&self) {
        self.shared.closed.store(true, Ordering::Release);
        // Dropping every handle ends each actor's inbox; each finishes what it took, then stops.
        self.shared.slots.slots.clear();
        self.shared.context.tracker.close();
        self.shared.context.tracker.wait().await;
        // After the actors, before the store closes: this node's share of presence goes now,
        // rather than expire.
        self.shared.presence.leave().await;
    }
}

fn has_watchers(slot: &Slot) -> bool {
    slot.topic.as_ref().is_some_and(|topic| topic.watchers() > 0)
}
