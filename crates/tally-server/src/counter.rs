//! One actor per counter: the only code that changes a counter.
//!
//! A [`CounterHandle`] sends `Command`s to the counter's `CounterActor`, which applies them one
//! at a time in arrival order. Writes are committed in batches: while one batch is being
//! committed, new operations queue up, and they become the next batch the moment the first is
//! durable. Each batch goes commit → broadcast → reply, so an answer or an update is only ever
//! seen for a write that is on disk, and watchers see versions in order.
//!
//! An operation with an idempotency key is answered once per key: the actor remembers the
//! keys of its counter (see `idempotency`), so a retry of a committed operation gets the first
//! answer again, a duplicate of one still in flight waits for it, and storage is never asked on
//! the write path. The key is stored in the batch's own transaction.

mod idempotency;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tally_proto::{
    Action, Bounded, Bounds, CounterName, Epoch, ErrorCode, IdempotencyKey, Metadata, Op,
    ProtocolError, Snapshot,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;

use crate::clock;
use crate::config::Config;
use crate::framing::Published;
use crate::metrics::Metrics;
use crate::store::{
    AppendBatch, BatchRules, CommitResult, Committing, CounterRecord, DeleteOutcome, HistoryRecord,
    Retention, Store, StoreError,
};
use crate::topic::{Subscription, Topic, User};
use idempotency::{Arrival, KeyId, Keys, key_ref};

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
    /// When the latest write was committed (or, for a counter configured but never written,
    /// when it was configured).
    pub updated_at_ms: Option<i64>,
    /// The counter's epoch ([`Epoch::bits`]) when its name was ever deleted; `None` for the
    /// database's. As a number, so that the state stays `Copy`.
    pub epoch: Option<u64>,
    /// Its bounds (`counter.configure`).
    pub bounds: Bounds,
    /// How many times its bounds were configured (see `BatchRules`).
    pub rules_version: u64,
}

impl CounterState {
    /// The state a stored record holds.
    pub(crate) fn from_record(record: CounterRecord) -> Self {
        Self {
            id: Some(record.id),
            value: record.value,
            version: record.version,
            created_at_ms: Some(record.created_at_ms),
            updated_at_ms: Some(record.updated_at_ms),
            epoch: record.epoch,
            bounds: record.bounds,
            rules_version: record.rules_version,
        }
    }

    /// The epoch of this counter's history: its own after a delete, else `database`'s.
    pub fn epoch(&self, database: &Epoch) -> Epoch {
        self.epoch.map_or_else(|| database.clone(), Epoch::from_bits)
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
            ops_last_minute: None,
            bounds: None,
        }
    }

    /// A snapshot of this state, taken now, for a principal who `can` do these actions, of a
    /// database of epoch `database` (the snapshot carries the counter's own epoch if it has one).
    pub fn snapshot(
        &self,
        name: &CounterName,
        resync: bool,
        can: Vec<Action>,
        database: &Epoch,
    ) -> Snapshot {
        Snapshot {
            value: self.value,
            version: self.version,
            metadata: self.metadata(name),
            timestamp: clock::format_ms(clock::now_ms()),
            resync,
            can,
            epoch: Some(self.epoch(database)),
        }
    }
}

/// Why a command to a counter failed. Cloneable: the duplicates of an operation (same
/// idempotency key) that waited for it get its answer, errors included.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    /// The operation was refused (its result would be out of range); nothing was stored.
    #[error(transparent)]
    Rejected(#[from] ProtocolError),
    /// Storage failed; nothing of the operation is stored. Every operation of a failed batch
    /// shares the one error.
    #[error("storage failed: {0}")]
    Store(Arc<StoreError>),
    /// The idempotency key was used by the same principal on this counter for another
    /// operation; nothing was stored.
    #[error("idempotency key {key} was used for {} and now for {}", describe(*.first), describe(*.op))]
    KeyReused {
        /// The key.
        key: IdempotencyKey,
        /// The operation the key was first used for.
        first: Op,
        /// The operation refused.
        op: Op,
    },
    /// The counter's actor stopped before taking the command (it hibernated); the command was not
    /// applied and may be sent again to a fresh actor.
    #[error("the counter's actor has stopped")]
    Retired,
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl From<StoreError> for ApplyError {
    fn from(error: StoreError) -> Self {
        ApplyError::Store(Arc::new(error))
    }
}

impl ApplyError {
    /// The wire error this becomes: the one mapping of counter and storage failures to what
    /// clients are told. Every answer says that nothing was stored, since that is what the
    /// client must know to decide on a retry.
    pub fn to_protocol(&self) -> ProtocolError {
        match self {
            ApplyError::Rejected(error) => error.clone(),
            ApplyError::Store(error) => match &**error {
                // Only a bug makes a batch meet another version (logged as one where it
                // happens); the actor reads the counter again, so sending again works.
                StoreError::Conflict { .. } => ProtocolError::new(
                    ErrorCode::Internal,
                    "the stored counter was not at the version this server built the write on (a server fault, logged); nothing was stored and the counter is read again: send the write again",
                ),
                StoreError::Unavailable(cause) => ProtocolError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "storage is unavailable ({cause}); nothing was stored: try again shortly"
                    ),
                ),
                StoreError::CommitUncertain(cause) => ProtocolError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "the connection to storage was lost while committing ({cause}), so the write may or may not be stored: send it again with the same Idempotency-Key (Tally's clients do), which counts it once"
                    ),
                ),
                StoreError::Stopped { reason, uncertain: true } => ProtocolError::new(
                    ErrorCode::StoreStopped,
                    format!(
                        "the store stopped taking writes after {reason}: this write may or may not be stored, and no later fsync could prove it; the server must be restarted, then send it again with the same Idempotency-Key (Tally's clients do), which counts it once"
                    ),
                ),
                StoreError::Stopped { reason, uncertain: false } => ProtocolError::new(
                    ErrorCode::StoreStopped,
                    format!(
                        "the store stopped taking writes after {reason}, since a later fsync could not prove the data before it reached the disk; nothing was stored: the server must be restarted before it takes writes again (reads still work)"
                    ),
                ),
                StoreError::QuotaExceeded(message) => {
                    ProtocolError::new(ErrorCode::QuotaExceeded, message.clone())
                }
                StoreError::Closed => ProtocolError::new(
                    ErrorCode::Unavailable,
                    "the server is shutting down; nothing was stored: try again shortly",
                ),
                _ => ProtocolError::new(
                    ErrorCode::Internal,
                    "storage failed (the server logged why); nothing was stored",
                ),
            },
            ApplyError::KeyReused { key, first, op } => ProtocolError::new(
                ErrorCode::IdempotencyKeyReused,
                format!(
                    "idempotency key {key:?} was already used on this counter for {}, so it cannot be used for {}; nothing was stored: send a new key with a new operation, and the first body when retrying one",
                    describe(*first),
                    describe(*op)
                ),
            ),
            ApplyError::Retired | ApplyError::ShuttingDown => ProtocolError::new(
                ErrorCode::Unavailable,
                "the server is shutting down; try again shortly",
            ),
        }
    }
}

/// An operation in words, for messages: "increment by 2", "setValue to 5", "reset".
fn describe(op: Op) -> String {
    match op {
        Op::Increment(amount) | Op::Decrement(amount) => {
            format!("{} by {amount}", op.kind().as_str())
        }
        Op::SetValue(value) => format!("{} to {value}", op.kind().as_str()),
        Op::Reset => op.kind().as_str().to_owned(),
    }
}

type Reply<T> = oneshot::Sender<Result<T, ApplyError>>;

/// What a counter's actor can be asked. The larger commands are boxed, so that the command is
/// two words: a tokio `mpsc` channel allocates its first block of 32 slots when it is made, and
/// with 80-byte commands that block was about 3 KB of every counter in memory (an idle counter
/// one user watches is the common case); one small allocation per write costs less.
enum Command {
    /// Apply an operation; answered once it is committed.
    Apply(Box<ApplyCommand>),
    /// The committed state.
    Read { respond_to: Reply<CounterState> },
    /// The committed state and a subscription to later updates, in one step, so that no update
    /// can fall between them.
    Watch(Box<(User, Reply<(CounterState, Subscription)>)>),
    /// Another node committed this counter up to this version (or may have: `u64::MAX` after
    /// missed notifications); storage is read again if it is ahead of this actor.
    Changed(u64),
    /// Delete the counter (`counter.delete`), after the operations taken before this command
    /// and before any taken after it; answered once the delete is durable.
    Delete { respond_to: Reply<DeleteOutcome> },
    /// Another node deleted this counter: its watchers here are unsubscribed, and the state is
    /// read again from storage.
    DeletedElsewhere,
    /// Replace the counter's bounds; answered with the committed state once they are stored.
    Configure(Box<(Bounds, Reply<CounterState>)>),
}

// Two words, as said above; a new unboxed variant would widen every counter's inbox again.
const _: () = assert!(std::mem::size_of::<Command>() <= 16);

/// An operation to apply on behalf of `by`.
struct ApplyCommand {
    op: Op,
    /// Apply only at this version (`expectedVersion`).
    expected_version: Option<u64>,
    by: Arc<str>,
    key: Option<IdempotencyKey>,
    received: Instant,
    respond_to: Reply<Arc<Published>>,
}

impl Command {
    /// Answers with `error` without doing anything.
    fn refuse(self, error: impl Fn() -> ApplyError) {
        // The caller may have left; that is normal.
        let _ = match self {
            Command::Apply(apply) => apply.respond_to.send(Err(error())).map_err(drop),
            Command::Read { respond_to } => respond_to.send(Err(error())).map_err(drop),
            Command::Watch(watch) => watch.1.send(Err(error())).map_err(drop),
            Command::Delete { respond_to } => respond_to.send(Err(error())).map_err(drop),
            Command::Configure(configure) => configure.1.send(Err(error())).map_err(drop),
            Command::Changed(_) | Command::DeletedElsewhere => Ok(()),
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
        expected_version: Option<u64>,
        by: Arc<str>,
        key: Option<IdempotencyKey>,
    ) -> Result<Arc<Published>, ApplyError> {
        let received = Instant::now();
        self.ask(|respond_to| {
            let apply = ApplyCommand { op, expected_version, by, key, received, respond_to };
            Command::Apply(Box::new(apply))
        })
        .await
    }

    /// Replaces the counter's bounds with `bounds`, after the operations already sent and
    /// before those sent later; answers the committed state with them once they are durable.
    pub(crate) async fn configure(&self, bounds: Bounds) -> Result<CounterState, ApplyError> {
        self.ask(|respond_to| Command::Configure(Box::new((bounds, respond_to)))).await
    }

    /// The committed state.
    pub(crate) async fn read(&self) -> Result<CounterState, ApplyError> {
        self.ask(|respond_to| Command::Read { respond_to }).await
    }

    /// Tells the actor that another node committed its counter up to `version`. Never waits:
    /// `false` when the inbox is full or closed (the caller then sends it with
    /// [`CounterHandle::changed_later`]).
    pub(crate) fn changed(&self, version: u64) -> bool {
        self.inbox.try_send(Command::Changed(version)).is_ok()
    }

    /// [`CounterHandle::changed`], waiting for room in the inbox.
    pub(crate) async fn changed_later(&self, version: u64) -> bool {
        self.inbox.send(Command::Changed(version)).await.is_ok()
    }

    /// Deletes the counter once the operations sent before are answered; operations sent after
    /// start it afresh at version 1.
    pub(crate) async fn delete(&self) -> Result<DeleteOutcome, ApplyError> {
        self.ask(|respond_to| Command::Delete { respond_to }).await
    }

    /// Tells the actor that another node deleted its counter. Never waits: `false` when the
    /// inbox is full or closed.
    pub(crate) fn deleted_elsewhere(&self) -> bool {
        self.inbox.try_send(Command::DeletedElsewhere).is_ok()
    }

    /// [`CounterHandle::deleted_elsewhere`], waiting for room in the inbox.
    pub(crate) async fn deleted_elsewhere_later(&self) -> bool {
        self.inbox.send(Command::DeletedElsewhere).await.is_ok()
    }

    /// The committed state and a subscription (counted as `user`) to every later update.
    pub(crate) async fn watch(
        &self,
        user: User,
    ) -> Result<(CounterState, Subscription), ApplyError> {
        self.ask(|respond_to| Command::Watch(Box::new((user, respond_to)))).await
    }
}

/// An operation waiting for its batch.
struct PendingOp {
    op: Op,
    /// Apply only if the counter is at this version when the operation's turn comes.
    expected_version: Option<u64>,
    by: Arc<str>,
    /// Its idempotency key, in flight in `CounterActor::keys` until the operation is answered.
    key: Option<Arc<KeyId>>,
    received: Instant,
    respond_to: Reply<Arc<Published>>,
    /// How many times another node's commit got in first (a shared store only).
    conflicts: u32,
    /// Whether it was found out of bounds once already and the counter read again since (a
    /// shared store only; see `CounterActor::start_batch`).
    rechecked: bool,
}

/// A change of the counter's bounds waiting for its batch: the batch that takes it ends with it,
/// so operations before it are checked against the old bounds and those after against the new.
struct PendingConfigure {
    bounds: Bounds,
    respond_to: Reply<CounterState>,
    /// How many times another node's commit got in first (a shared store only).
    conflicts: u32,
    /// As for [`PendingOp::rechecked`]: found to leave out the value once already.
    rechecked: bool,
}

/// What waits for the next batch, in arrival order.
enum Pending {
    Op(PendingOp),
    Configure(PendingConfigure),
}

/// How many times an operation is sent again after other nodes' commits got ahead of it,
/// before it is answered `unavailable` (a counter written that hard from several nodes needs
/// its writers on fewer nodes).
const MAX_CONFLICTS: u32 = 64;

/// The batch being committed: each entry with the caller waiting for it, and the change of
/// bounds it ends with, if any.
struct InFlight {
    entries: Vec<(HistoryRecord, PendingOp)>,
    configure: Option<PendingConfigure>,
    /// The rules the batch stores.
    rules: BatchRules,
}

/// What an actor needs from the registry that started it: where it is registered and where
/// its broadcast channel lives. A trait, so that this module does not depend on the registry
/// (which depends on it).
pub(crate) trait Home: Send + Sync + 'static {
    /// Unregisters actor `generation` of `name` as it stops.
    fn retire(&self, name: &CounterName, generation: u64);
    /// Unregisters actor `generation` of `name`, idle at `version`, as it hibernates, unless
    /// word came meanwhile (from the broker) that another node committed past `version` and
    /// someone here watches the counter: then `false`, and the actor reads storage instead of
    /// leaving. Checked and done in one step, so that word is never lost between an actor
    /// deciding to leave and leaving: it either stops the actor leaving, or finds no actor and
    /// starts one.
    fn hibernate(&self, name: &CounterName, generation: u64, version: u64) -> bool {
        let _ = version;
        self.retire(name, generation);
        true
    }
    /// `name`'s fan-out to its watchers, created on first use at `version`.
    fn topic(&self, name: &CounterName, version: u64) -> Arc<Topic>;
    /// `name` was deleted: its topic (if any) is ended, which unsubscribes its watchers, and
    /// taken out of its slot, so the next watch gets a fresh one at version 0.
    fn deleted(&self, name: &CounterName, epoch: Option<u64>);
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
    /// Operations (and changes of bounds) waiting to be queued as the next batch.
    pending: Vec<Pending>,
    /// Value and version after the last queued batch: where the next batch starts. Equal to the
    /// committed state when nothing is in flight.
    tip: (i64, u64),
    /// Bounds and rules version after the last queued batch: what the next batch's operations
    /// are checked against and its rules version check expects.
    tip_rules: (Bounds, u64),
    /// Set after a failed commit: the next batch first reloads the state from storage.
    reload: bool,
    /// The failure that set `reload`: the batches queued behind it fail with a conflict (their
    /// base version was never stored), which is its consequence, not a bug, and they are
    /// answered with it.
    failure: Option<Arc<StoreError>>,
    /// The idempotency keys this counter remembers, committed and in flight.
    keys: Keys,
    /// Whether other nodes write the same store (see [`Store::is_shared`]).
    shared: bool,
    /// Reads and watches waiting for the next reload (a shared store only): what this actor
    /// last saw may be behind what other nodes committed.
    deferred: Vec<Command>,
    /// How many operations at the front of `pending` were sent back by conflicts, so the next
    /// conflicted batch's go after them, in the order they first came.
    requeued: usize,
    /// A delete waiting for the batches taken before it: while it waits, no command is taken
    /// from the inbox, so every operation sent after it applies to the deleted counter.
    deleting: Option<Reply<DeleteOutcome>>,
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
        tip_rules: (Bounds::NONE, 0),
        reload: true,
        failure: None,
        keys: Keys::new(context.config.idempotency_keys, context.config.idempotency_window),
        shared: context.store.is_shared(),
        deferred: Vec::new(),
        requeued: 0,
        deleting: None,
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
                if let Some(suppressed) =
                    crate::log_limit::storage().allow(("cannot load counter", ""))
                {
                    tracing::error!(counter = %actor.name, %error, suppressed, "cannot load counter");
                }
                // Nothing can be answered without the state: leave, so that the next request
                // starts a fresh actor that tries again.
                actor.context.home.retire(&actor.name, actor.generation);
                inbox.close();
                let failed = ApplyError::from(error);
                for pending in std::mem::take(&mut actor.pending) {
                    actor.refuse(pending, &failed);
                }
                for command in std::mem::take(&mut actor.deferred) {
                    command.refuse(|| failed.clone());
                }
                if let Some(respond_to) = actor.deleting.take() {
                    let _ = respond_to.send(Err(failed.clone()));
                }
                while let Some(command) = inbox.recv().await {
                    command.refuse(|| failed.clone());
                }
                break;
            }
            metrics.counter_loads.inc();
            for command in std::mem::take(&mut actor.deferred) {
                actor.answer_now(command);
            }
        }
        // One batch takes every pending operation.
        if !actor.reload
            && in_flight.len() < actor.max_in_flight()
            && !actor.pending.is_empty()
            && let Some(queued) = actor.start_batch().await
        {
            in_flight.push_back(queued);
        }
        if in_flight.is_empty()
            && actor.pending.is_empty()
            && !actor.reload
            && let Some(respond_to) = actor.deleting.take()
        {
            actor.delete(respond_to).await;
            idle_deadline = deadline_after(idle_timeout);
            continue;
        }
        // The batch stopped at an operation to check again on a fresh read (a shared store's
        // bounds): read now if nothing is in flight, rather than wait for the next command.
        if actor.reload && in_flight.is_empty() && !actor.pending.is_empty() {
            continue;
        }
        let idle = in_flight.is_empty()
            && actor.pending.is_empty()
            && actor.deferred.is_empty()
            && actor.deleting.is_none();
        if handles_gone && idle {
            break;
        }
        tokio::select! {
            command = inbox.recv(), if !handles_gone && actor.deleting.is_none() && actor.pending.len() + actor.keys.waiting() < MAX_PENDING => match command {
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
                if !actor.context.home.hibernate(&actor.name, actor.generation, actor.state.version) {
                    // Another node moved the counter and this node's watchers wait for it.
                    actor.reload = true;
                    idle_deadline = deadline_after(idle_timeout);
                    continue;
                }
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
    /// How many batches may be queued at once. On a shared store, one: a batch built on another
    /// still in flight could meet the version it expects by chance (another node committed as
    /// many operations as the first batch held) and be stored on top of values it never saw.
    /// A batch built on the committed state is safe: versions are never reused, so finding
    /// the version it was built on means nothing was committed since.
    fn max_in_flight(&self) -> usize {
        if self.shared { 1 } else { MAX_IN_FLIGHT }
    }

    /// Deletes the counter in storage, with nothing of it in flight, and starts over: version
    /// 0 under the epoch the store gave the name, no idempotency key remembered, and a fresh
    /// topic for later watchers; the watchers of the old one are unsubscribed.
    async fn delete(&mut self, respond_to: Reply<DeleteOutcome>) {
        match self.store.delete(&self.name).await {
            Ok(outcome) => {
                if outcome.deleted {
                    self.forget_counter();
                    self.context.home.deleted(&self.name, outcome.epoch);
                    self.context.metrics.counter_deletes.inc();
                    tracing::info!(counter = %self.name, version = outcome.version, "counter deleted");
                }
                self.state.epoch = outcome.epoch;
                let _ = respond_to.send(Ok(outcome));
            }
            Err(error) => {
                // Nothing changed; storage is read again before the next batch all the same,
                // as after any failure.
                self.reload = true;
                let _ = respond_to.send(Err(ApplyError::from(error)));
            }
        }
    }

    /// Drops everything this actor knew of its counter, which storage no longer holds: state,
    /// keys and topic (its watchers are unsubscribed; the registry's slot is told by the
    /// caller). Only with nothing in flight, so no key is in flight either.
    fn forget_counter(&mut self) {
        self.state = CounterState::default();
        self.tip = (0, 0);
        // The bounds went with the row.
        self.tip_rules = (self.state.bounds, self.state.rules_version);
        self.keys =
            Keys::new(self.context.config.idempotency_keys, self.context.config.idempotency_window);
        if let Some(topic) = self.topic.take() {
            topic.end_deleted();
        }
    }

    /// Reads the counter and the idempotency keys to remember from storage, the truth.
    async fn reload(&mut self) -> Result<(), StoreError> {
        if !self.unchanged_in_storage().await? {
            let retention =
                Retention { since_ms: self.keys.cutoff(clock::now_ms()), limit: self.keys.limit() };
            let (state, records) = match self.store.load(&self.name, retention).await? {
                Some(loaded) => (CounterState::from_record(loaded.record), loaded.idempotency),
                None => (CounterState::default(), Vec::new()),
            };
            self.state = state;
            self.keys.load(records);
        }
        self.tip = (self.state.value, self.state.version);
        self.tip_rules = (self.state.bounds, self.state.rules_version);
        self.reload = false;
        self.failure = None;
        self.requeued = 0;
        self.catch_up_topic().await?;
        // A commit reported failed may still have reached the disk; if storage shows a pending
        // operation's key as committed, that operation is answered from it, not applied again.
        let now_ms = clock::now_ms();
        for pending in std::mem::take(&mut self.pending) {
            let (pending, id) = match pending {
                Pending::Op(pending) => match pending.key.clone() {
                    Some(id) => (pending, id),
                    None => {
                        self.pending.push(Pending::Op(pending));
                        continue;
                    }
                },
                configure @ Pending::Configure(_) => {
                    self.pending.push(configure);
                    continue;
                }
            };
            match self.keys.committed(&id, now_ms).cloned() {
                Some(entry) if entry.op() == pending.op => {
                    let published = self.republish(entry);
                    self.answer(pending, Ok(published));
                }
                Some(entry) => {
                    let (key, first, op) = (id.key.clone(), entry.op(), pending.op);
                    self.answer(pending, Err(ApplyError::KeyReused { key, first, op }));
                }
                None => self.pending.push(Pending::Op(pending)),
            }
        }
        tracing::debug!(counter = %self.name, version = self.state.version, "counter loaded");
        Ok(())
    }

    /// Whether storage still holds the counter at the version this actor knows (a shared store
    /// only, where reads and watches reload the counter): then its idempotency records are the
    /// ones in memory too, since only a commit changes them, and the read costs one row instead
    /// of up to `--idempotency-keys` of them.
    async fn unchanged_in_storage(&mut self) -> Result<bool, StoreError> {
        let Some(id) = self.state.id.filter(|_| self.shared) else { return Ok(false) };
        match self.store.load_record(&self.name).await? {
            Some(record) if record.id == id && record.version == self.state.version => {
                self.state = CounterState::from_record(record);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Publishes what other nodes committed since the topic's latest update, read from
    /// history, so that this node's watchers get every version in order. Versions that left the
    /// history (`--history-limit`) cannot be sent: the topic then starts over after them, and a
    /// watcher behind it is told it lagged, as for any update it missed (it catches up from
    /// history, or gets a resync), never skipped silently.
    async fn catch_up_topic(&mut self) -> Result<(), StoreError> {
        let Some(topic) = self.topic.clone().filter(|topic| topic.watchers() > 0) else {
            return Ok(());
        };
        let published = topic.version();
        if published >= self.state.version {
            return Ok(());
        }
        let entries = self.store.history_range(&self.name, published, self.state.version).await?;
        let contiguous = entries.first().is_some_and(|entry| entry.version == published + 1);
        if !contiguous {
            topic.forget_before_next();
        }
        for entry in entries {
            topic.publish(self.republish(entry));
        }
        Ok(())
    }

    /// Answers a read or watch with the committed state as it is now.
    fn answer_now(&mut self, command: Command) {
        match command {
            Command::Read { respond_to } => {
                let _ = respond_to.send(Ok(self.state));
            }
            Command::Watch(watch) => {
                let (user, respond_to) = *watch;
                let version = self.state.version;
                let topic =
                    self.topic.get_or_insert_with(|| self.context.home.topic(&self.name, version));
                let _ = respond_to.send(Ok((self.state, topic.subscribe(user))));
            }
            other => self.handle(other),
        }
    }

    /// Answers whatever `pending` is with `error`.
    fn refuse(&mut self, pending: Pending, error: &ApplyError) {
        match pending {
            Pending::Op(pending) => self.answer(pending, Err(error.clone())),
            Pending::Configure(configure) => {
                let _ = configure.respond_to.send(Err(error.clone()));
            }
        }
    }

    /// Answers `pending`, and every duplicate waiting on its key, with `result`. A key whose
    /// operation failed is not remembered: a later retry applies the operation.
    fn answer(&mut self, pending: PendingOp, result: Result<Arc<Published>, ApplyError>) {
        let duplicates = match &pending.key {
            Some(id) => self.keys.settle(id),
            None => Vec::new(),
        };
        for duplicate in duplicates {
            let _ = duplicate.send(result.clone());
        }
        // The caller may have left; that is normal.
        let _ = pending.respond_to.send(result);
    }

    /// The update `entry` made, built again for a retry: the same bytes as the first answer,
    /// since the update's JSON is made from exactly these fields.
    fn republish(&self, entry: HistoryRecord) -> Arc<Published> {
        // A committed entry means the counter is stored, so both are set; the fallbacks only
        // keep a bug from panicking.
        let id = self.state.id.unwrap_or_default();
        let created_at_ms = self.state.created_at_ms.unwrap_or(entry.at_ms);
        let created_at = Arc::from(clock::format_ms(created_at_ms));
        Arc::new(Published::new(Arc::clone(&self.name), id, created_at, entry))
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Apply(apply) => self.take(*apply),
            Command::Configure(configure) => {
                let (bounds, respond_to) = *configure;
                self.pending.push(Pending::Configure(PendingConfigure {
                    bounds,
                    respond_to,
                    conflicts: 0,
                    rechecked: false,
                }));
            }
            // Other nodes may have moved the counter: answered after the next reload, which
            // every read waiting meanwhile shares.
            command @ (Command::Read { .. } | Command::Watch(_)) if self.shared => {
                self.deferred.push(command);
                self.reload = true;
            }
            command @ (Command::Read { .. } | Command::Watch(_)) => self.answer_now(command),
            // At or below the tip, it is this actor's own commit (its notification can come
            // before the commit's answer) or one its batch in flight will conflict with.
            Command::Changed(version) => {
                if version > self.tip.1 {
                    self.reload = true;
                }
            }
            // Taken by the run loop once the batches before it are answered.
            Command::Delete { respond_to } => self.deleting = Some(respond_to),
            Command::DeletedElsewhere => {
                // Batches in flight were built on the deleted version and fail their version
                // check; the reload (once they are answered) reads what storage holds now, and
                // replaces the committed keys with storage's, where the delete left none. The
                // keys in flight stay, with the duplicates waiting on them.
                if let Some(topic) = self.topic.take() {
                    topic.end_deleted();
                }
                self.reload = true;
            }
        }
    }

    /// Takes an operation: into the next batch, or, for a key it already knows, answered from
    /// what that key did.
    fn take(&mut self, apply: ApplyCommand) {
        let ApplyCommand { op, expected_version, by, key, received, respond_to } = apply;
        match key {
            None => self.pending.push(Pending::Op(PendingOp {
                op,
                expected_version,
                by,
                key: None,
                received,
                respond_to,
                conflicts: 0,
                rechecked: false,
            })),
            Some(key) => {
                let id = KeyId { by: Arc::clone(&by), key };
                match self.keys.arrive(id, op, clock::now_ms(), respond_to) {
                    Arrival::New(id, respond_to) => {
                        self.pending.push(Pending::Op(PendingOp {
                            op,
                            expected_version,
                            by,
                            key: Some(id),
                            received,
                            respond_to,
                            conflicts: 0,
                            rechecked: false,
                        }));
                    }
                    Arrival::Replay(entry, respond_to) => {
                        let _ = respond_to.send(Ok(self.republish(entry)));
                    }
                    Arrival::Waiting => {}
                    Arrival::Reused(error, respond_to) => {
                        let _ = respond_to.send(Err(error));
                    }
                }
            }
        }
    }

    /// Applies every pending operation on top of the last queued batch (or the committed state)
    /// and queues them in the store as one batch. Operations whose result would be out of range
    /// or out of the counter's bounds are refused here and left out (or, in clamp mode, stopped
    /// at the bound). A change of bounds ends the batch, so the operations after it are checked
    /// against the new bounds in the next one.
    ///
    /// On a shared store, what this actor knows of the bounds (and the value) may be behind
    /// another node's: a batch built on it is stored only if the row's versions still match, so
    /// a stale write or clamp never commits, but a refusal is never sent to storage. So an
    /// operation (or change of bounds) found out of bounds ends the batch there instead, and
    /// waits, with those after it, for the counter to be read again; it is refused only if it
    /// is still out of bounds on what storage holds then.
    async fn start_batch(&mut self) -> Option<(InFlight, Committing)> {
        let at_ms = clock::now_ms();
        self.keys.forget_expired(at_ms);
        let (mut value, mut version) = self.tip;
        let (bounds, rules_version) = self.tip_rules;
        let base_version = version;
        let mut entries = Vec::with_capacity(self.pending.len());
        let mut remember = Vec::new();
        let mut configure = None;
        // An operation (or change) to check again once the counter is read again.
        let mut recheck = None;
        // A compare-and-set to decide once what is before it is committed.
        let mut held = None;
        let mut pending_all = std::mem::take(&mut self.pending).into_iter();
        for pending in pending_all.by_ref() {
            let pending = match pending {
                Pending::Op(pending) => pending,
                Pending::Configure(mut change) => {
                    if change.bounds.contains(value) {
                        configure = Some(change);
                        break;
                    }
                    if self.shared && !change.rechecked {
                        change.rechecked = true;
                        recheck = Some(Pending::Configure(change));
                        break;
                    }
                    let refusal = change.bounds.refuse_value(&self.name, value);
                    let _ = change.respond_to.send(Err(ApplyError::Rejected(refusal)));
                    continue;
                }
            };
            if let Some(expected) = pending.expected_version
                && expected != version
            {
                // Refused only against a committed version: with a batch in flight (or an
                // entry of this one) before it, the version the refusal would name may never be
                // stored, so it waits, with everything after it, until they are answered.
                if version != self.state.version {
                    held = Some(Pending::Op(pending));
                    break;
                }
                let refusal = version_conflict(&self.name, expected, version);
                self.answer(pending, Err(ApplyError::Rejected(refusal)));
                continue;
            }
            let kind = pending.op.kind();
            let bounded = pending
                .op
                .apply(value)
                .and_then(|next| bounds.check(&self.name, kind, value, next));
            match bounded {
                Ok(Bounded::Within(next) | Bounded::Clamped(next)) => {
                    version += 1;
                    // A clamped entry keeps the amount asked with the bound as its value: that
                    // difference is how history (and a replay's bytes) tells it was clamped.
                    let entry = HistoryRecord {
                        version,
                        kind,
                        amount: pending.op.amount(),
                        previous_value: value,
                        value: next,
                        at_ms,
                        by: Some(Arc::clone(&pending.by)),
                    };
                    value = next;
                    if let Some(id) = &pending.key {
                        remember.push(key_ref(id, version));
                    }
                    entries.push((entry, pending));
                }
                Err(error)
                    if self.shared
                        && error.code == ErrorCode::OutOfBounds
                        && !pending.rechecked =>
                {
                    let mut pending = pending;
                    pending.rechecked = true;
                    recheck = Some(Pending::Op(pending));
                    break;
                }
                Err(error) => self.answer(pending, Err(ApplyError::Rejected(error))),
            }
        }
        // What the change of bounds or the one to check again left for the next batch, in
        // order.
        if let Some(recheck) = recheck {
            self.pending.push(recheck);
            self.reload = true;
        }
        self.pending.extend(held);
        self.pending.extend(pending_all);
        if entries.is_empty() && configure.is_none() {
            return None;
        }
        let rules = BatchRules {
            expected_version: rules_version,
            bounds: configure.as_ref().map_or(bounds, |change| change.bounds),
            configure: configure.is_some(),
            at_ms,
        };
        let batch = AppendBatch {
            name: CounterName::clone(&self.name),
            id: self.state.id,
            expected_version: base_version,
            entries: entries.iter().map(|(entry, _)| entry.clone()).collect(),
            remember,
            forget: self.keys.take_forgotten(),
            rules,
        };
        match self.store.append(batch).await {
            Ok(committing) => {
                self.tip = (value, version);
                self.tip_rules = (rules.bounds, rules.version_after());
                Some((InFlight { entries, configure, rules }, committing))
            }
            Err(error) => {
                let failed = ApplyError::from(error);
                for (_, pending) in entries {
                    self.answer(pending, Err(failed.clone()));
                }
                if let Some(change) = configure {
                    let _ = change.respond_to.send(Err(failed));
                }
                None
            }
        }
    }

    /// Another node committed first: the batch's operations go back to the front of the queue,
    /// in their order, to be applied again on the counter as storage has it. Their keys stay
    /// in flight, so the reload finds one already committed (by a retry that reached another
    /// node) and answers it from there instead of applying it twice.
    fn send_again(&mut self, batch: InFlight) {
        let gave_up = || {
            ApplyError::Store(Arc::new(StoreError::Unavailable(
                format!(
                    "other nodes' writes to this counter got ahead of this one {MAX_CONFLICTS} times"
                )
                .into(),
            )))
        };
        let mut again = Vec::with_capacity(batch.entries.len() + 1);
        for (_, mut pending) in batch.entries {
            pending.conflicts += 1;
            if pending.conflicts > MAX_CONFLICTS {
                self.answer(pending, Err(gave_up()));
            } else {
                again.push(Pending::Op(pending));
            }
        }
        if let Some(mut change) = batch.configure {
            change.conflicts += 1;
            if change.conflicts > MAX_CONFLICTS {
                let _ = change.respond_to.send(Err(gave_up()));
            } else {
                again.push(Pending::Configure(change));
            }
        }
        self.context.metrics.batch_conflicts.inc();
        let at = self.requeued.min(self.pending.len());
        self.requeued = at + again.len();
        self.pending.splice(at..at, again);
        self.reload = true;
    }

    /// The batch is durable (or failed): broadcast and answer each operation in order.
    fn finish_batch(&mut self, batch: InFlight, result: CommitResult) {
        let id = match result {
            Ok(id) => id,
            Err(error) => {
                if self.shared
                    && self.failure.is_none()
                    && matches!(*error, StoreError::Conflict { .. })
                {
                    self.send_again(batch);
                    return;
                }
                let error = match (&self.failure, &*error) {
                    // Built on a batch that failed: the first failure is the answer.
                    (Some(first), StoreError::Conflict { .. }) => Arc::clone(first),
                    (None, StoreError::Conflict { .. }) => {
                        if let Some(suppressed) =
                            crate::log_limit::storage().allow(("version conflict", ""))
                        {
                            tracing::error!(
                                counter = %self.name, %error, suppressed,
                                "version conflict: storage does not hold what this actor committed (a bug, or another writer on the database); reloading the counter"
                            );
                        }
                        error
                    }
                    // A quota is a refusal, not a failure: the writer left the batch out and
                    // nothing is wrong with storage (the reload below still realigns the tip).
                    (_, StoreError::QuotaExceeded(_)) => error,
                    _ => {
                        // Every counter's batch of a failed group commit fails alike: one line
                        // a second, with how many were left out.
                        if let Some(suppressed) =
                            crate::log_limit::storage().allow(("commit failed", ""))
                        {
                            tracing::error!(counter = %self.name, %error, suppressed, "commit failed");
                        }
                        error
                    }
                };
                self.failure.get_or_insert_with(|| Arc::clone(&error));
                let failed = ApplyError::Store(error);
                for (_, pending) in batch.entries {
                    self.answer(pending, Err(failed.clone()));
                }
                if let Some(change) = batch.configure {
                    let _ = change.respond_to.send(Err(failed));
                }
                // Storage is the truth; read it again before building on it (once every batch
                // queued behind this one, which fails too, has been answered).
                self.reload = true;
                return;
            }
        };
        let metrics = &self.context.metrics;
        metrics.batch_operations.observe(batch.entries.len() as f64);
        // All of a batch's entries share its timestamp, which a batch that only configures the
        // counter created a new row at.
        let created_at: Arc<str> =
            Arc::from(clock::format_ms(*self.state.created_at_ms.get_or_insert(batch.rules.at_ms)));
        self.state.updated_at_ms.get_or_insert(batch.rules.at_ms);
        self.state.id = Some(id);
        // Published only while someone watches: a watcher subscribes through this actor, at
        // the state it then gets, so it never needs an update published before it came, and an
        // unwatched topic (kept while the actor lives) would only hold updates in its ring.
        let topic = self.topic.as_ref().filter(|topic| topic.watchers() > 0);
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
            if let Some(id) = &pending.key {
                // Duplicates that waited get the very same update (the same bytes).
                for duplicate in self.keys.commit(Arc::clone(id), published.entry()) {
                    let _ = duplicate.send(Ok(Arc::clone(&published)));
                }
            }
            let _ = pending.respond_to.send(Ok(published));
        }
        if let Some(change) = batch.configure {
            self.state.bounds = batch.rules.bounds;
            self.state.rules_version = batch.rules.version_after();
            let _ = change.respond_to.send(Ok(self.state));
        }
    }
}

/// The refusal of an operation whose `expectedVersion` is not the counter's version.
fn version_conflict(name: &CounterName, expected: u64, current: u64) -> ProtocolError {
    let mut refusal = ProtocolError::new(
        ErrorCode::VersionConflict,
        format!(
            "counter {name} is at version {current}, not the expected {expected}: someone else wrote first, and nothing was changed; read it again and send the write with expectedVersion {current} if it still applies"
        ),
    );
    refusal.current_version = Some(current);
    refusal
}
