//! Updates rebuilt from history, for a socket that resumes with `since` or has to catch one of
//! its subscriptions up: read a page at a time, and built through the same framing as live
//! updates, so a replayed update is byte for byte the one first broadcast.
//!
//! Replays are bounded ([`ReplayLimits`]): a request of a few hundred bytes can ask for
//! megabytes of history (a `since=0` resume of a counter with 10 000 updates is about 2.5 MB),
//! and a client that asks and never reads leaves them in the kernel's socket buffers. So at
//! most `--max-replays` replays run at once, at most `--max-replays-per-address` of them for
//! one client address, and together they send at most `--replay-bytes-per-second`. A resume
//! past a bound waits for a place, in arrival order, up to `--send-timeout` (so that a
//! reconnect storm, or many clients behind one proxy, still get their replays, one after the
//! other), and past that is closed 1013 with a reconnect delay on version 1 (the client was
//! resuming, so it reconnects anyway, and one that never reads is gone within the timeout) or
//! answered a `resync` snapshot on version 2 (the protocol's answer when history cannot fill
//! the gap, which every client handles; closing would end the socket's other subscriptions
//! too). A version-2 catch-up does not
//! wait, since its socket's other subscriptions would wait with it: it resyncs at once; and a
//! version-2 socket's resumes wait, all together, at most `--send-timeout`, since its commands
//! wait behind each (a socket re-subscribing 50 counters in a storm must not stall for 50 of
//! them). A
//! replay that cannot send (its client stopped reading) stalls, and is dropped after
//! `--send-timeout` like any stalled send, which gives its place back.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::{DefaultDirectRateLimiter, Quota};
use tally_proto::{CounterName, Epoch, ProtocolError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use axum::extract::ws::Utf8Bytes;

use crate::access::RateKey;
use crate::clock;
use crate::connection::{End, Link, Transport};
use crate::counter::{ApplyError, CounterState};
use crate::framing::Published;
use crate::metrics::Metrics;
use crate::state::AppState;

/// The bounds on replays, shared by every socket.
pub(crate) struct ReplayLimits {
    /// One permit per replay that may run at once (`--max-replays`).
    total: Arc<Semaphore>,
    /// One semaphore per client address with replays running or waiting (IPv6 by /64, as the
    /// write rate keys them), of `--max-replays-per-address` permits; an address leaves the
    /// map with its last replay.
    per_address: DashMap<IpAddr, Arc<Semaphore>>,
    max_per_address: usize,
    /// Bytes all replays together may send per second; `None` for no bound.
    rate: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
    metrics: Arc<Metrics>,
}

/// Why a replay was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `--max-replays` replays run already.
    Total,
    /// `--max-replays-per-address` replays run already for this client's address.
    PerAddress,
}

/// One running replay's place in the bounds, given back when dropped.
pub(crate) struct ReplayPermit {
    limits: Arc<ReplayLimits>,
    /// The place for its address, with the address.
    address: Option<(IpAddr, OwnedSemaphorePermit)>,
    _total: OwnedSemaphorePermit,
}

impl ReplayLimits {
    /// At most `total` replays at once, `per_address` for one client address, and
    /// `bytes_per_second` sent by all of them (0 for no bound on bytes).
    pub(crate) fn new(
        total: usize,
        per_address: usize,
        bytes_per_second: u32,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let rate = NonZeroU32::new(bytes_per_second).map(|rate| {
            // A second's worth at most at once: a pause of the server does not turn into a
            // burst above the rate.
            (DefaultDirectRateLimiter::direct(Quota::per_second(rate)), rate)
        });
        Arc::new(Self {
            total: Arc::new(Semaphore::new(total)),
            per_address: DashMap::new(),
            max_per_address: per_address,
            rate,
            metrics,
        })
    }

    /// A place for a replay to the client at `peer` (`None`: not known, as for a router served
    /// without the accept loop, counted only in the total), waiting up to `wait` for one (in
    /// arrival order), or which bound refused it.
    pub(crate) async fn start(
        self: &Arc<Self>,
        peer: Option<IpAddr>,
        wait: Duration,
    ) -> Result<ReplayPermit, Refused> {
        let deadline = Instant::now() + wait;
        let address = peer.map(|ip| match RateKey::address(ip) {
            RateKey::Address(address) => address,
            RateKey::Principal(_) => ip,
        });
        // The address's place first: a client over its bound waits behind its own replays
        // without holding one of everybody's places meanwhile.
        let address = match address {
            None => None,
            Some(address) => {
                let semaphore = Arc::clone(
                    &self
                        .per_address
                        .entry(address)
                        .or_insert_with(|| Arc::new(Semaphore::new(self.max_per_address))),
                );
                let place = acquire(semaphore, deadline).await;
                match place {
                    Some(place) => Some((address, place)),
                    None => {
                        self.forget_address(address);
                        return Err(self.refused(Refused::PerAddress));
                    }
                }
            }
        };
        let Some(total) = acquire(Arc::clone(&self.total), deadline).await else {
            if let Some((address, place)) = address {
                drop(place);
                self.forget_address(address);
            }
            return Err(self.refused(Refused::Total));
        };
        self.metrics.replays_running.inc();
        Ok(ReplayPermit { limits: Arc::clone(self), address, _total: total })
    }

    /// The place a resume after `since` of a counter at `version` needs: none when there is
    /// nothing to replay (`Ok(None)`), else as [`start`](Self::start) gives it.
    pub(crate) async fn for_resume(
        self: &Arc<Self>,
        since: u64,
        version: u64,
        peer: Option<IpAddr>,
        wait: Duration,
    ) -> Result<Option<ReplayPermit>, Refused> {
        if since >= version {
            return Ok(None);
        }
        self.start(peer, wait).await.map(Some)
    }

    fn refused(&self, refused: Refused) -> Refused {
        self.metrics.replay_refused(match refused {
            Refused::Total => "total",
            Refused::PerAddress => "per_address",
        });
        refused
    }

    /// Drops `address`'s semaphore when nobody holds or waits for it any more: the map's is
    /// then its only reference (everyone else clones it under the same shard lock).
    fn forget_address(&self, address: IpAddr) {
        self.per_address.remove_if(&address, |_, semaphore| Arc::strong_count(semaphore) == 1);
    }
}

/// A permit of `semaphore`, waiting until `deadline` at most (not at all if it passed).
async fn acquire(semaphore: Arc<Semaphore>, deadline: Instant) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = Arc::clone(&semaphore).try_acquire_owned() {
        return Some(permit);
    }
    if Instant::now() >= deadline {
        return None;
    }
    // The semaphores are never closed, so an error cannot come.
    tokio::time::timeout_at(deadline, semaphore.acquire_owned()).await.ok()?.ok()
}

impl ReplayPermit {
    /// How much of the rate `bytes` take: at most a second's worth (the burst), so that an
    /// update larger than that still goes; `None` when there is no bound.
    fn cells(&self, bytes: usize) -> Option<(&DefaultDirectRateLimiter, NonZeroU32)> {
        let (limiter, rate) = self.limits.rate.as_ref()?;
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX).min(rate.get());
        NonZeroU32::new(bytes).map(|cells| (limiter, cells))
    }

    /// Takes `bytes` of `--replay-bytes-per-second` if they are there now.
    fn try_take(&self, bytes: usize) -> bool {
        let taken = self
            .cells(bytes)
            .is_none_or(|(limiter, cells)| limiter.check_n(cells).is_ok_and(|fits| fits.is_ok()));
        if taken {
            self.limits.metrics.replay_bytes.inc_by(bytes as u64);
        }
        taken
    }

    /// Waits until `bytes` of `--replay-bytes-per-second` are there, and takes them.
    async fn take(&self, bytes: usize) {
        if let Some((limiter, cells)) = self.cells(bytes) {
            self.limits.metrics.replay_waits.inc();
            // `cells` is at most the burst, so it always fits in time: the error is impossible.
            let _ = limiter.until_n_ready(cells).await;
        }
        self.limits.metrics.replay_bytes.inc_by(bytes as u64);
    }
}

/// Queues `text` on `link`; within a replay (`permit`), once `--replay-bytes-per-second`
/// allows it. A replay that must wait first sends what it queued, so the client has it
/// meanwhile.
///
/// # Errors
/// When the send fails or stalls.
pub(crate) async fn paced_feed<T: Transport>(
    link: &mut Link<T>,
    permit: Option<&ReplayPermit>,
    text: Utf8Bytes,
) -> Result<(), End> {
    if let Some(permit) = permit
        && !permit.try_take(text.len())
    {
        link.flush().await?;
        permit.take(text.len()).await;
    }
    link.feed(text).await
}

impl Drop for ReplayPermit {
    fn drop(&mut self) {
        if let Some((address, place)) = self.address.take() {
            drop(place);
            self.limits.forget_address(address);
        }
        self.limits.metrics.replays_running.dec();
    }
}

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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn limits(total: usize, per_address: usize) -> Arc<ReplayLimits> {
        ReplayLimits::new(total, per_address, 0, Arc::new(Metrics::new()))
    }

    const A: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    const B: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));

    #[tokio::test(start_paused = true)]
    async fn a_replay_past_a_bound_waits_its_turn_then_is_refused() {
        let limits = limits(2, 1);
        let first = limits.start(A, Duration::ZERO).await.expect("a place");
        assert_eq!(limits.start(A, Duration::ZERO).await.err(), Some(Refused::PerAddress));
        let other = limits.start(B, Duration::ZERO).await.expect("another address has its own");
        assert_eq!(limits.start(None, Duration::ZERO).await.err(), Some(Refused::Total));

        // A waiting replay gets the place given back within its wait.
        let waiting = tokio::spawn({
            let limits = Arc::clone(&limits);
            async move { limits.start(A, Duration::from_secs(5)).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(first);
        assert!(waiting.await.expect("no panic"));

        // One that waits longer than its wait is refused, and leaves nothing behind.
        assert_eq!(limits.start(B, Duration::from_secs(2)).await.err(), Some(Refused::PerAddress));
        drop(other);
        assert!(limits.per_address.is_empty(), "every address left with its last replay");
        assert_eq!(limits.total.available_permits(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_over_its_bound_holds_no_place_of_everybody_meanwhile() {
        let limits = limits(2, 1);
        let _first = limits.start(A, Duration::ZERO).await.expect("a place");
        let waiting = tokio::spawn({
            let limits = Arc::clone(&limits);
            async move { limits.start(A, Duration::from_secs(5)).await.err() }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A waits for its own place, not for one of the total: B still gets one.
        let _other = limits.start(B, Duration::ZERO).await.expect("a place for B");
        assert_eq!(waiting.await.expect("no panic"), Some(Refused::PerAddress));
    }
}
