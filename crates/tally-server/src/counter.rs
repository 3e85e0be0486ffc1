//! One actor per counter: the only code that changes a counter.
//!
//! A [`CounterHandle`] sends `Command`s to the counter's `CounterActor`, which applies them one
//! at a time in arrival order. Writes are committed in batches: while one batch is being
//! committed, new operations queue up, and they become the next batch the moment the first is
//! durable. Each batch goes commit → broadcast → reply, so an answer or an update is only ever
//! seen for a write that is on disk, and watchers see versions in order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tally_proto::{
    Action, CounterName, ErrorCode, IdempotencyKey, Metadata, Op, ProtocolError, Snapshot,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;

use crate::clock;
use crate::config::Config;
use crate::framing::Published;
use crate::metrics::Metrics;
use crate::store::{AppendBatch, Committing, CounterRecord, HistoryRecord, Store, StoreError};
use crate::topic::{Subscription, Topic, User};

/// How many commands may wait in one counter's inbox before callers wait too.
pub(crate) const INBOX_CAPACITY: usize = 1024;
/// How many batches of one counter may be queued in the store at once. Two already keep the
/// writer from waiting on this actor (one commits while the next waits behind it); a few more
/// let bursts split into batches without waiting a whole commit.
const MAX_IN_FLIGHT: usize = 4;
/// How many operations may wait for the next batch; past this the actor stops taking commands
/// from its inbox until the commit in flight is done, so the inbox pushes back on callers.
const MAX_PENDING: usize = 4096;

/// A counter's committed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterState {
    /// Storage id; `None` until the first write.
    pub id: Option<i64>,
    /// The value.
    pub value: i64,
    /// The number of operations applied.
    pub version: u64,
    /// When the first write was committed.
    pub created_at_ms: Option<i64>,
    /// When the latest write was committed.
    pub updated_at_ms: Option<i64>,
}

impl CounterState {
    fn from_record(record: CounterRecord) -> Self {
        Self {
            id: Some(record.id),
            value: record.value,
            version: record.version,
            created_at_ms: Some(record.created_at_ms),
            updated_at_ms: Some(record.updated_at_ms),
        }
    }

    /// The counter's metadata in the seed's shape.
    pub fn metadata(&self, name: &CounterName) -> Metadata {
        Metadata {
            id: self.id,
            name: name.to_string(),
            value: self.value,
            created_at: self.created_at_ms.map(clock::format_ms),
            updated_at: self.updated_at_ms.map(clock::format_ms),
            operation_count: self.version,
        }
    }

    /// A snapshot of this state, taken now, for a principal who `can` do these actions.
    pub fn snapshot(&self, name: &CounterName, resync: bool, can: Vec<Action>) -> Snapshot {
        Snapshot {
            value: self.value,
            version: self.version,
            metadata: self.metadata(name),
            timestamp: clock::format_ms(clock::now_ms()),
            resync,
            can,
        }
    }
}

/// Why a command to a counter failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The operation was refused (its result would be out of range); nothing was stored.
    #[error(transparent)]
    Rejected(#[from] ProtocolError),
    /// Storage failed; nothing of the operation is stored.
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
    /// The counter's actor stopped before taking the command (it hibernated); the command was not
    /// applied and may be sent again to a fresh actor.
    #[error("the counter's actor has stopped")]
    Retired,
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl ApplyError {
    /// A storage failure given in words, for each operation of a failed batch or load
    /// (`StoreError` is not `Clone`).
    fn store_failed(reason: &str) -> Self {
        ApplyError::Store(StoreError::WriteFailed { reason: reason.to_owned() })
    }

    /// The wire error this becomes.
    pub fn to_protocol(&self) -> ProtocolError {
        match self {
            ApplyError::Rejected(error) => error.clone(),
            ApplyError::Store(error) => ProtocolError::new(
                ErrorCode::Unavailable,
                format!("storage is unavailable, nothing was stored: {error}"),
            ),
            ApplyError::Retired | ApplyError::ShuttingDown => ProtocolError::new(
                ErrorCode::Unavailable,
                "the server is shutting down; try again shortly",
            ),
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, ApplyError>>;

/// What a counter's actor can be asked.
enum Command {
    /// Apply an operation on behalf of `by`; answered once it is committed.
    Apply {
        op: Op,
        by: Arc<str>,
        key: Option<IdempotencyKey>,
        received: Instant,
        respond_to: Reply<Arc<Published>>,
    },
    /// The committed state.
    Read { respond_to: Reply<CounterState> },
    /// The committed state and a subscription to later updates, in one step, so that no update
    /// can fall between them.
    Watch { user: User, respond_to: Reply<(CounterState, Subscription)> },
}

impl Command {
    /// Answers with `error` without doing anything.
    fn refuse(self, error: impl Fn() -> ApplyError) {
        // The caller may have left; that is normal.
        let _ = match self {
            Command::Apply { respond_to, .. } => respond_to.send(Err(error())).map_err(drop),
            Command::Read { respond_to } => respond_to.send(Err(error())).map_err(drop),
            Command::Watch { respond_to, .. } => respond_to.send(Err(error())).map_err(drop),
        };
    }
}

/// A cheap, cloneable way to reach one counter's actor.
#[derive(Debug, Clone)]
pub struct CounterHandle {
    inbox: mpsc::Sender<Command>,
}

impl CounterHandle {
    async fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, ApplyError> {
        let (respond_to, answer) = oneshot::channel();
        // A closed inbox means the actor hibernated before taking the command: not applied.
        self.inbox.send(command(respond_to)).await.map_err(|_| ApplyError::Retired)?;
        // The actor answers every command it takes (it has no panicking path); a dropped reply
        // can only come from the runtime shutting down.
        answer.await.map_err(|_| ApplyError::ShuttingDown)?
    }

    /// Applies `op` on behalf of `by`; answers with the update once it is durable and
    /// broadcast. With an idempotency `key`, a retry answers the first application's update.
    pub(crate) async fn apply(
        &self,
        op: Op,
        by: Arc<str>,
        key: Option<IdempotencyKey>,
    ) -> Result<Arc<Published>, ApplyError> {
        let received = Instant::now();
        self.ask(|respond_to| Command::Apply { op, by, key, received, respond_to }).await
    }

    /// The committed state.
    pub(crate) async fn read(&self) -> Result<CounterState, ApplyError> {
        self.ask(|respond_to| Command::Read { respond_to }).await
    }

    /// The committed state and a subscription (counted as `user`) to every later update.
    pub(crate) async fn watch(
        &self,
        user: User,
    ) -> Result<(CounterState, Subscription), ApplyError> {
        self.ask(|respond_to| Command::Watch { user, respond_to }).await
    }
}

/// An operation waiting for its batch.
struct PendingOp {
    op: Op,
    by: Arc<str>,
    /// Not yet acted on: the idempotency issue adds the dedup.
    #[allow(dead_code)]
    key: Option<IdempotencyKey>,
    received: Instant,
    respond_to: Reply<Arc<Published>>,
}

/// The batch being committed: each entry with the caller waiting for it.
struct InFlight {
    entries: Vec<(HistoryRecord, PendingOp)>,
}

/// What an actor needs from the registry that started it: where it is registered and where
/// its broadcast channel lives. A trait, so that this module does not depend on the registry
/// (which depends on it).
pub(crate) trait Home: Send + Sync + 'static {
    /// Unregisters actor `generation` of `name` as it stops.
    fn retire(&self, name: &CounterName, generation: u64);
    /// `name`'s fan-out to its watchers, created on first use at `version`.
    fn topic(&self, name: &CounterName, version: u64) -> Arc<Topic>;
}

/// What every actor shares.
#[derive(Clone)]
pub(crate) struct ActorContext {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: Arc<Config>,
    pub(crate) home: Arc<dyn Home>,
    /// Every actor task, so shutdown can wait for them to finish their last commits.
    pub(crate) tracker: tokio_util::task::TaskTracker,
}

/// Owns one counter's state. Only this actor changes it.
struct CounterActor {
    /// Shared with every update it publishes.
    name: Arc<CounterName>,
    /// Tells this actor's registration apart from a later actor's for the same name.
    generation: u64,
    /// The committed state: what is on disk.
    state: CounterState,
    store: Arc<dyn Store>,
    context: ActorContext,
    /// The counter's fan-out, taken from the registry on the first watch; it outlives the actor
    /// while watchers hold subscriptions, so watchers survive hibernation.
    topic: Option<Arc<Topic>>,
    /// Operations waiting to be queued as the next batch.
    pending: Vec<PendingOp>,
    /// Value and version after the last queued batch: where the next batch starts. Equal to the
    /// committed state when nothing is in flight.
    tip: (i64, u64),
    /// Set after a failed commit: the next batch first reloads the state from storage.
    reload: bool,
}

/// Starts the actor of `name` on the context's task tracker and returns its handle.
pub(crate) fn spawn(
    name: CounterName,
    generation: u64,
    topic: Option<Arc<Topic>>,
    context: &ActorContext,
) -> CounterHandle {
    let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_CAPACITY);
    let actor = CounterActor {
        name: Arc::new(name),
        generation,
        state: CounterState::default(),
        store: Arc::clone(&context.store),
        context: context.clone(),
        topic,
        pending: Vec::new(),
        tip: (0, 0),
        reload: true,
    };
    context.tracker.spawn(run(actor, inbox_rx));
    CounterHandle { inbox: inbox_tx }
}

async fn run(mut actor: CounterActor, mut inbox: mpsc::Receiver<Command>) {
    let metrics = Arc::clone(&actor.context.metrics);
    metrics.counters_in_memory.inc();
    let idle_timeout = actor.context.config.idle_timeout;
    // Batches queued in the store, oldest first; they complete in this order.
    let mut in_flight: VecDeque<(InFlight, Committing)> = VecDeque::new();
    let mut idle_deadline = deadline_after(idle_timeout);
    // Set when every handle is gone (the registry shut down): finish what was taken, then stop.
    let mut handles_gone = false;

    loop {
        // After a failure, the batches queued behind it fail too (their base version is gone);
        // storage is read again only once they are all answered.
        if actor.reload && in_flight.is_empty() {
            if let Err(error) = actor.reload().await {
                tracing::error!(counter = %actor.name, %error, "cannot load counter");
                // Nothing can be answered without the state: leave, so that the next request
                // starts a fresh actor that tries again.
                actor.context.home.retire(&actor.name, actor.generation);
                inbox.close();
                let reason = error.reason();
                let failed = || ApplyError::store_failed(&reason);
                for op in actor.pending.drain(..) {
                    let _ = op.respond_to.send(Err(failed()));
                }
                while let Some(command) = inbox.recv().await {
                    command.refuse(failed);
                }
                break;
            }
            metrics.counter_loads.inc();
        }
        // One batch takes every pending operation.
        if !actor.reload
            && in_flight.len() < MAX_IN_FLIGHT
            && !actor.pending.is_empty()
            && let Some(queued) = actor.start_batch().await
        {
            in_flight.push_back(queued);
        }
        let idle = in_flight.is_empty() && actor.pending.is_empty();
        if handles_gone && idle {
            break;
        }
        tokio::select! {
            command = inbox.recv(), if !handles_gone && actor.pending.len() < MAX_PENDING => match command {
                Some(command) => {
                    idle_deadline = deadline_after(idle_timeout);
                    actor.handle(command);
                }
                None => handles_gone = true,
            },
            // Only the oldest batch is awaited: the store commits in queue order. The branch is
            // only polled while a batch is in flight, so the `expect` holds.
            result = async { (&mut in_flight.front_mut().expect("a batch is in flight").1).await }, if !in_flight.is_empty() => {
                idle_deadline = deadline_after(idle_timeout);
                if let Some((batch, _)) = in_flight.pop_front() {
                    actor.finish_batch(batch, result);
                }
            }
            () = sleep_until(idle_deadline), if idle && !handles_gone => {
                actor.context.home.retire(&actor.name, actor.generation);
                actor.topic = None;
                // Commands sent before the retirement are refused as `Retired` (not applied), so
                // their callers go to the next actor; this one never writes again.
                inbox.close();
                while let Some(command) = inbox.recv().await {
                    command.refuse(|| ApplyError::Retired);
                }
                metrics.counter_hibernations.inc();
                tracing::debug!(counter = %actor.name, "counter hibernated");
                break;
            }
        }
    }
    metrics.counters_in_memory.dec();
}

/// `after` from now, at most a year ahead: an enormous --idle-timeout means "never", and a year
/// neither overflows an `Instant` nor leaves the timer's range.
fn deadline_after(after: std::time::Duration) -> tokio::time::Instant {
    const YEAR: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);
    tokio::time::Instant::now() + after.min(YEAR)
}

impl CounterActor {
    async fn reload(&mut self) -> Result<(), StoreError> {
        self.state = match self.store.load(&self.name).await? {
            Some(record) => CounterState::from_record(record),
            None => CounterState::default(),
        };
        self.tip = (self.state.value, self.state.version);
        self.reload = false;
        tracing::debug!(counter = %self.name, version = self.state.version, "counter loaded");
        Ok(())
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Apply { op, by, key, received, respond_to } => {
                self.pending.push(PendingOp { op, by, key, received, respond_to })
            }
            Command::Read { respond_to } => {
                let _ = respond_to.send(Ok(self.state));
            }
            Command::Watch { user, respond_to } => {
                let version = self.state.version;
                let topic =
                    self.topic.get_or_insert_with(|| self.context.home.topic(&self.name, version));
                let _ = respond_to.send(Ok((self.state, topic.subscribe(user))));
            }
        }
    }

    /// Applies every pending operation on top of the last queued batch (or the committed state)
    /// and queues them in the store as one batch. Operations whose result would be out of range
    /// are refused here and left out.
    async fn start_batch(&mut self) -> Option<(InFlight, Committing)> {
        let at_ms = clock::now_ms();
        let (mut value, mut version) = self.tip;
        let base_version = version;
        let mut entries = Vec::with_capacity(self.pending.len());
        for pending in self.pending.drain(..) {
            match pending.op.apply(value) {
                Ok(next) => {
                    version += 1;
                    let entry = HistoryRecord {
                        version,
                        kind: pending.op.kind(),
                        amount: pending.op.amount(),
                        previous_value: value,
                        value: next,
                        at_ms,
                        by: Some(Arc::clone(&pending.by)),
                    };
                    value = next;
                    entries.push((entry, pending));
                }
                Err(error) => {
                    let _ = pending.respond_to.send(Err(ApplyError::Rejected(error)));
                }
            }
        }
        if entries.is_empty() {
            return None;
        }
        let batch = AppendBatch {
            name: CounterName::clone(&self.name),
            expected_version: base_version,
            entries: entries.iter().map(|(entry, _)| entry.clone()).collect(),
        };
        match self.store.append(batch).await {
            Ok(committing) => {
                self.tip = (value, version);
                Some((InFlight { entries }, committing))
            }
            Err(error) => {
                let reason = error.reason();
                for (_, pending) in entries {
                    let failed = ApplyError::store_failed(&reason);
                    let _ = pending.respond_to.send(Err(failed));
                }
                None
            }
        }
    }

    /// The batch is durable (or failed): broadcast and answer each operation in order.
    fn finish_batch(&mut self, batch: InFlight, result: Result<i64, StoreError>) {
        let id = match result {
            Ok(id) => id,
            Err(error) => {
                tracing::error!(counter = %self.name, %error, "commit failed");
                let reason = error.reason();
                for (_, pending) in batch.entries {
                    let _ = pending.respond_to.send(Err(ApplyError::store_failed(&reason)));
                }
                // Storage is the truth; read it again before building on it (once every batch
                // queued behind this one, which fails too, has been answered).
                self.reload = true;
                return;
            }
        };
        let metrics = &self.context.metrics;
        metrics.batch_operations.observe(batch.entries.len() as f64);
        // `start_batch` never starts an empty batch, and all its entries share one timestamp.
        let created_at: Arc<str> = Arc::from(clock::format_ms(
            *self.state.created_at_ms.get_or_insert(batch.entries[0].0.at_ms),
        ));
        self.state.id = Some(id);
        // Published whenever a topic exists, watched or not: it is the history a watcher
        // arriving between two updates reads, and a topic outlives its last watcher only until
        // the registry forgets it.
        let topic = self.topic.as_ref();
        for (entry, pending) in batch.entries {
            self.state.value = entry.value;
            self.state.version = entry.version;
            self.state.updated_at_ms = Some(entry.at_ms);
            metrics.operation(entry.kind, pending.received.elapsed().as_secs_f64());
            // The change as data: its JSON is made by framing, on first use, outside this task.
            let published = Arc::new(Published::new(
                Arc::clone(&self.name),
                id,
                Arc::clone(&created_at),
                entry,
            ));
            if let Some(topic) = topic {
                topic.publish(Arc::clone(&published));
            }
            let _ = pending.respond_to.send(Ok(published));
        }
    }
}
