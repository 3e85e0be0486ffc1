//! Updates rebuilt from history, for a socket that resumes with `since` or has to catch one of
//! its subscriptions up: read a page at a time, and built through the same framing as live
//! updates, so a replayed update is byte for byte the one first broadcast.

use std::sync::Arc;

use tally_proto::{CounterName, Epoch, ProtocolError};

use crate::clock;
use crate::counter::{ApplyError, CounterState};
use crate::framing::Published;
use crate::state::AppState;

/// How many history entries a replay reads and sends at a time.
pub(crate) const PAGE: u64 = 500;

/// How a watch (a v1 socket, or a v2 subscription) asked to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// With a snapshot: no `since`.
    Snapshot,
    /// By resuming after this version, of this database's history.
    After(u64),
    /// The client resumes a history of another database (its `epoch` is not this one's: the
    /// database was replaced or restored): whatever its version, only a resync snapshot is
    /// right.
    OtherEpoch,
}

impl Start {
    /// What a client asking for `since` of `epoch` gets from a database of epoch `ours`. A
    /// resume without an epoch (a client older than epochs) is taken on trust, as before;
    /// an epoch without `since` means nothing.
    pub(crate) fn asked(since: Option<u64>, epoch: Option<&Epoch>, ours: &Epoch) -> Self {
        match (since, epoch) {
            (None, _) => Start::Snapshot,
            (Some(_), Some(epoch)) if epoch != ours => Start::OtherEpoch,
            (Some(since), _) => Start::After(since),
        }
    }
}

/// What every update of one counter shares: its name, storage id and creation time.
pub(crate) struct Origin {
    name: Arc<CounterName>,
    id: i64,
    created_at: Arc<str>,
}

impl Origin {
    /// The origin of counter `name` in `state`; `None` for a counter never written, which has
    /// no history to replay.
    pub(crate) fn of_state(name: &CounterName, state: &CounterState) -> Option<Self> {
        let (id, created_at_ms) = state.id.zip(state.created_at_ms)?;
        Some(Self {
            name: Arc::new(name.clone()),
            id,
            created_at: Arc::from(clock::format_ms(created_at_ms)),
        })
    }

    /// The origin of the counter that `update` changed.
    pub(crate) fn of_update(update: &Published) -> Self {
        let (name, id, created_at) = update.origin();
        Self { name: Arc::clone(name), id, created_at: Arc::clone(created_at) }
    }
}

/// The updates `after + 1..=up_to` (at most [`PAGE`] are asked for at a time), oldest first;
/// `None` when history no longer holds every one of them (it was trimmed). `origin` is `None`
/// for a counter never written, which holds no history at all.
///
/// # Errors
/// When storage cannot be read (`unavailable`).
pub(crate) async fn page(
    state: &AppState,
    origin: Option<&Origin>,
    after: u64,
    up_to: u64,
) -> Result<Option<Vec<Published>>, ProtocolError> {
    if after >= up_to {
        return Ok(Some(Vec::new()));
    }
    let Some(origin) = origin else { return Ok(None) };
    let records = state
        .store
        .history_range(&origin.name, after, up_to)
        .await
        .map_err(|error| ApplyError::from(error).to_protocol())?;
    let complete = records.len() as u64 == up_to - after
        && records.first().is_some_and(|record| record.version == after + 1);
    if !complete {
        return Ok(None);
    }
    Ok(Some(
        records
            .into_iter()
            .map(|record| {
                Published::new(
                    Arc::clone(&origin.name),
                    origin.id,
                    Arc::clone(&origin.created_at),
                    record,
                )
            })
            .collect(),
    ))
}
