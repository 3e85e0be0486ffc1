//! The counter procedures, answered the same way whether they came as an RPC (`http`) or as a
//! socket `call` (`session`): one place checks grants and write rate, applies, and frames the
//! answer, so both transports give the same answers and the same errors.

use axum::body::Bytes;
use serde::Serialize;
use tally_proto::limits::{HISTORY_PAGE_MAX, LIST_PAGE_MAX};
use tally_proto::{
    Action, CounterList, CounterName, Deleted, Entry, HistoryPage, IdempotencyKey, ListedCounter,
    ProtocolError, Request, ValueAnswer,
};

use crate::access::{Principal, name_after};
use crate::clock;
use crate::counter::ApplyError;
use crate::state::AppState;
use crate::store::{HistoryRecord, NamedRecord};

/// The rate meter's window: `opsLastMinute` counts the operations of the last minute.
const RATE_WINDOW_MS: i64 = 60_000;

/// Answers a counter procedure's validated `request` for `principal`: checks its grants (and
/// for a write the write rate), then applies or reads, and answers the JSON the RPC answers.
/// A write is answered only once committed; with `key`, a retry gets the first answer.
///
/// # Errors
/// The refusal, or why the counter could not be changed or read. The key procedures are not
/// answered here (they are RPC-only): `http` answers them.
pub(crate) async fn counter_call(
    state: &AppState,
    principal: &Principal,
    action: Action,
    request: Request,
    key: Option<&IdempotencyKey>,
) -> Result<Bytes, ProtocolError> {
    let access = &state.access;
    let to_protocol = |error: ApplyError| error.to_protocol();
    Ok(match request {
        Request::Apply { name, op, expected_version } => {
            let permissions = access.authorize(principal, &name, action, Some(op))?;
            access.check_write_rate(principal)?;
            let registry = &state.registry;
            let published = registry
                .apply(&name, op, expected_version, &principal.id, key)
                .await
                .map_err(to_protocol)?;
            Bytes::from(published.json_for(permissions.allows(Action::Admin)))
        }
        Request::GetValue { name } => {
            access.authorize(principal, &name, action, None)?;
            let counter = state.registry.read(&name).await.map_err(to_protocol)?;
            json(&ValueAnswer { value: counter.value, version: counter.version })
        }
        Request::GetMetadata { name } => {
            access.authorize(principal, &name, action, None)?;
            let counter = state.registry.read(&name).await.map_err(to_protocol)?;
            let mut metadata = counter.metadata(&name);
            // The rate meter, from history rather than from the actor: it counts every node's
            // writes and survives the actor's hibernation, and an idle counter keeps no meter.
            let since_ms = clock::now_ms() - RATE_WINDOW_MS;
            let recent = state.store.recent_operations(&name, since_ms).await;
            let recent = recent.map_err(|error| ApplyError::from(error).to_protocol())?;
            metadata.ops_last_minute = Some(recent);
            metadata.bounds = Some(counter.bounds);
            json(&metadata)
        }
        Request::Configure { name, bounds } => {
            access.authorize(principal, &name, action, None)?;
            // A change of bounds is a commit like a write's, so it counts against the rate.
            access.check_write_rate(principal)?;
            let counter = state.registry.configure(&name, bounds).await.map_err(to_protocol)?;
            let mut metadata = counter.metadata(&name);
            metadata.bounds = Some(counter.bounds);
            json(&metadata)
        }
        Request::GetPresence { name } => {
            access.authorize(principal, &name, action, None)?;
            let presence = state.registry.read_presence(&name).await.map_err(|error| {
                ProtocolError::new(
                    tally_proto::ErrorCode::Unavailable,
                    format!("{error}; try again shortly"),
                )
            })?;
            json(&presence)
        }
        Request::GetHistory { name, limit, before } => {
            let permissions = access.authorize(principal, &name, action, None)?;
            let admin = permissions.allows(Action::Admin);
            json(&history_page(state, &name, limit, before, admin).await?)
        }
        Request::List { prefix, after, limit } => {
            json(&list_page(state, principal, &prefix, after.as_ref(), limit).await?)
        }
        Request::Delete { name } => {
            access.authorize(principal, &name, action, None)?;
            let outcome = state.registry.delete(&name).await.map_err(to_protocol)?;
            let (deleted, version) = (outcome.deleted, outcome.version);
            json(&Deleted { name: name.to_string(), deleted, version })
        }
        Request::KeyCreate { .. } | Request::KeyList | Request::KeyRevoke { .. } => {
            return Err(ProtocolError::new(
                tally_proto::ErrorCode::UnknownProcedure,
                "the key procedures are RPC-only",
            ));
        }
    })
}

/// A JSON answer from any serializable value.
pub(crate) fn json<T: Serialize>(value: &T) -> Bytes {
    // Our answer types are plain data and always serialize.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// Reads one page of history straight from storage: only committed operations are there, and
/// every answered write is committed, so no actor is needed.
async fn history_page(
    state: &AppState,
    name: &CounterName,
    limit: u32,
    before: Option<u64>,
    admin: bool,
) -> Result<HistoryPage, ProtocolError> {
    debug_assert!(limit <= HISTORY_PAGE_MAX);
    // One more than asked tells whether older entries remain.
    let mut records = state
        .store
        .history(name, before, limit + 1)
        .await
        .map_err(|error| ApplyError::from(error).to_protocol())?;
    let more = records.len() > limit as usize;
    records.truncate(limit as usize);
    let next = if more { records.last().map(|record| record.version) } else { None };
    Ok(HistoryPage { entries: records.iter().map(|record| entry(record, admin)).collect(), next })
}

/// How many rows one listing reads at most, as a multiple of the rows it answers: rows it may
/// not show are not read at all (the ranges come from the grants), so this only bounds a
/// listing if that ever failed to hold; past it, the page ends early with a `next`.
const LIST_SCAN_FACTOR: usize = 4;

/// One page of `counter.list`: the counters named `prefix…` after `after` that `principal` may
/// read, in name order, read from storage (only committed state is there, and every answered
/// write is committed, so values are current without asking any actor) with this node's
/// watcher counts.
async fn list_page(
    state: &AppState,
    principal: &Principal,
    prefix: &str,
    after: Option<&CounterName>,
    limit: u32,
) -> Result<CounterList, ProtocolError> {
    debug_assert!((1..=LIST_PAGE_MAX).contains(&limit));
    let to_protocol = |error| ApplyError::from(error).to_protocol();
    let ranges = state.access.list_ranges(principal, prefix)?;
    let start_after = after.map(name_after);
    // One more than asked tells whether more remain.
    let want = limit as usize + 1;
    let scan_budget = want * LIST_SCAN_FACTOR;
    let (mut listed, mut scanned) = (Vec::with_capacity(want), 0usize);
    // The last row read, shown or not: where the next page starts when this one ends early.
    let mut last_read: Option<CounterName> = None;
    'ranges: for range in ranges {
        let mut start = match &start_after {
            Some(first) if *first > range.start => first.clone(),
            _ => range.start,
        };
        if range.end.as_ref().is_some_and(|end| *end <= start) {
            continue;
        }
        loop {
            let asked = want - listed.len();
            // At most `LIST_PAGE_MAX + 1`, so the cast cannot truncate.
            let rows = state
                .store
                .list(&start, range.end.as_deref(), asked as u32)
                .await
                .map_err(to_protocol)?;
            let full = rows.len() == asked;
            scanned += rows.len();
            for row in rows {
                last_read = Some(row.name.clone());
                if state.access.may_list(principal, &row.name) {
                    listed.push(row);
                }
            }
            if listed.len() >= want {
                break 'ranges;
            }
            if scanned >= scan_budget {
                let next = last_read.map(|name| name.to_string());
                return Ok(CounterList { counters: listed_counters(state, listed).await?, next });
            }
            match (&last_read, full) {
                (Some(last), true) => start = name_after(last),
                _ => break,
            }
        }
    }
    let more = listed.len() > limit as usize;
    listed.truncate(limit as usize);
    let next = if more { listed.last().map(|row| row.name.to_string()) } else { None };
    Ok(CounterList { counters: listed_counters(state, listed).await?, next })
}

/// The page's rows as answered, with their watchers and rate meters. A counter whose last
/// write is older than the meter's window made no operation in it, so only the counters
/// written in the last minute are read, and those in one read for the page
/// (`Store::recent_operations_of`): a page of idle counters costs no read at all.
async fn listed_counters(
    state: &AppState,
    rows: Vec<NamedRecord>,
) -> Result<Vec<ListedCounter>, ProtocolError> {
    let since_ms = clock::now_ms() - RATE_WINDOW_MS;
    // The rows read for, in order; the counts come back in the same order.
    let written_recently = |row: &NamedRecord| row.record.updated_at_ms >= since_ms;
    let recent: Vec<CounterName> =
        rows.iter().filter(|row| written_recently(row)).map(|row| row.name.clone()).collect();
    let mut counts = if recent.is_empty() {
        Vec::new()
    } else {
        let counts = state.store.recent_operations_of(recent, since_ms).await;
        counts.map_err(|error| ApplyError::from(error).to_protocol())?
    }
    .into_iter();
    Ok(rows
        .into_iter()
        .map(|row| {
            let ops_last_minute =
                if written_recently(&row) { counts.next().unwrap_or_default() } else { 0 };
            ListedCounter {
                watchers: state.registry.watchers(&row.name) as u64,
                name: row.name.to_string(),
                value: row.record.value,
                version: row.record.version,
                updated_at: clock::format_ms(row.record.updated_at_ms),
                ops_last_minute,
                bounds: row.record.bounds.is_set().then_some(row.record.bounds),
            }
        })
        .collect())
}

/// A history entry as answered: with `by` only for principals with `admin` on the counter.
fn entry(record: &HistoryRecord, admin: bool) -> Entry {
    Entry {
        version: record.version,
        kind: record.kind,
        amount: record.amount,
        previous_value: record.previous_value,
        value: record.value,
        timestamp: clock::format_ms(record.at_ms),
        by: if admin { record.by.as_deref().map(str::to_owned) } else { None },
    }
}
